"""Paired comparisons over seeds: is the difference between two methods real?

Runs of two methods with the same seed start from the same initialisation and see the same data
order (README, "Paired comparisons"), so the per-seed difference of their errors removes much of the
seed-to-seed variation the two share. For a pair (A, B) on a setting, with the n seeds that have a
finished run of both, d_k = error_A(seed k) - error_B(seed k) (final epoch by default), the table
gives mean(d), its sample std s, and the 95% interval mean(d) ± t_{0.975, n-1} s / sqrt(n)
(Student's t, two-sided). Negative means A has the lower error. With fewer than 2 paired seeds
there is no interval, and the table and the plot say so.

A method is written as in cells.per_class: "mm-drw", or "mm-drw@released" (any MM variant after
the @), or a row's name ("ldam-drw-sam", "mm-drw-sam@released": the beyond table's SAM rows). Its
runs are looked up in the tables given, in order (default: table1, then beyond, then ablation); the
first cell of the method on the setting that has finished runs is used.
"""

import math
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from scipy import stats

from mmlib import files, paper
from mmlib.choices import MM_VARIANTS
from mmlib.report import cells, figures, tables
from mmlib.report.results import EPOCHS

DEFAULT_PAIRS = (
    ("mm-drw", "ldam-drw"),
    ("mm-ldam-drw", "ldam-drw"),
    ("mm-drw@released", "mm-drw"),
    ("mm-ldam-drw@released", "mm-ldam-drw"),
    ("la", "mm-drw"),
    ("mm-drw", "ldam-drw-sam"),  # is MM better than a change of optimizer? (Rangwani et al. 2022)
    ("mm-drw-sam", "mm-drw"),  # does SAM add to MM?
)
DEFAULT_TABLES = ("table1", "beyond", "ablation")
CONFIDENCE = 0.95
COLUMNS = [
    "pair", "a", "b", "setting", "setting_label", "epoch", "n", "seeds", "a_mean", "b_mean", "mean_diff", "std_diff",
    "t_quantile", "ci_low", "ci_high", "a_run", "b_run", "note",
]
TOO_FEW = "fewer than 2 paired seeds: no interval"
NO_RUNS = "no paired runs"


def paired_differences(results_root, pairs=None, settings=None, tables=None, epoch: str = "final",
                       protocol: dict | None = None) -> pd.DataFrame:
    """One row per (pair, setting) (columns: COLUMNS): paired seeds, mean difference A - B and its 95% t-interval.

    pairs: (A, B) method specs (None: DEFAULT_PAIRS); settings: setting names (None: every setting of
    the tables where A or B has a cell); tables: where runs are looked up, in order (None:
    DEFAULT_TABLES). results_root: the results (None: the repository's results/) or a runs/ folder. protocol:
    run parameters the runs took beyond their cells' (mmlib.report.cells.cell_runs).
    """
    pairs = DEFAULT_PAIRS if pairs is None else pairs
    tables = DEFAULT_TABLES if tables is None else tables
    if epoch not in EPOCHS:
        raise ValueError(f"epoch must be one of {', '.join(EPOCHS)}, got {epoch!r}")
    if not pairs:
        raise ValueError("give at least one pair of methods to compare")
    root = cells.existing_folder(results_root)
    searched = [c for table in tables for c in paper.cells(table, mm_variants=MM_VARIANTS)]
    rows = []
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"a pair is two methods (A, B), got {pair!r}")
        a, b = (_matching(searched, spec) for spec in pair)
        names = list(dict.fromkeys(c.setting.name for c in a + b if c.setting.name in (settings or [c.setting.name])))
        for setting in names:
            rows.append(_paired_row(pair, setting, a, b, root, epoch, protocol))
    if settings:
        unknown = sorted(set(settings) - {row["setting"] for row in rows})
        if unknown:
            raise ValueError(f"no cell of these pairs in {', '.join(tables)} on {', '.join(unknown)}")
    return pd.DataFrame(rows, columns=COLUMNS)


def _matching(searched: list[paper.Cell], spec: str) -> list[paper.Cell]:
    method, variant = cells.parse_method(spec)
    found = [c for c in searched if c.name == method and c.variant == variant]
    if not found:
        raise ValueError(f"{spec}: no such cell in the tables searched "
                         f"(a method, optionally @{'/@'.join(list(MM_VARIANTS)[1:])})")
    return found


def _runs_by_seed(candidates: list[paper.Cell], setting: str, root: Path, epoch: str,
                  protocol: dict | None) -> tuple[dict[int, float], str]:
    """{seed: error} of the first cell on the setting with finished runs, and that cell's folder ("" if none)."""
    for cell in candidates:
        if cell.setting.name != setting:
            continue
        runs = cells.finished_runs(cell, root, protocol)
        if runs:
            # a cell's runs are of their folder's seed (cells.cell_runs): their recorded seed is it
            return ({r["config"]["config"]["seed"]: r[epoch]["error"] for r in runs},
                    str(cell.path(root).relative_to(root)))
    return {}, ""


def t_interval(differences: list[float], confidence: float = CONFIDENCE) -> tuple[float, float, float, float]:
    """(mean, sample std, t quantile, half-width) of the mean of paired differences; NaN spread below 2 values."""
    n = len(differences)
    mean = sum(differences) / n if n else math.nan
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    std = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    quantile = float(stats.t.ppf((1 + confidence) / 2, n - 1))
    return mean, std, quantile, quantile * std / math.sqrt(n)


def _paired_row(pair, setting: str, a_cells, b_cells, root: Path, epoch: str, protocol: dict | None) -> dict:
    (a_errors, a_run), (b_errors, b_run) = (_runs_by_seed(found, setting, root, epoch, protocol)
                                            for found in (a_cells, b_cells))
    seeds = sorted(set(a_errors) & set(b_errors))
    differences = [a_errors[s] - b_errors[s] for s in seeds]
    mean, std, quantile, half = t_interval(differences)
    label = next(c.setting.label for c in a_cells + b_cells if c.setting.name == setting)
    return {
        "pair": f"{pair[0]} − {pair[1]}", "a": pair[0], "b": pair[1], "setting": setting, "setting_label": label,
        "epoch": epoch, "n": len(seeds), "seeds": " ".join(map(str, seeds)),
        "a_mean": sum(a_errors[s] for s in seeds) / len(seeds) if seeds else math.nan,
        "b_mean": sum(b_errors[s] for s in seeds) / len(seeds) if seeds else math.nan,
        "mean_diff": mean, "std_diff": std, "t_quantile": quantile, "ci_low": mean - half, "ci_high": mean + half,
        "a_run": a_run, "b_run": b_run, "note": NO_RUNS if not seeds else TOO_FEW if len(seeds) < 2 else "",
    }


# ---------------------------------------------------------------- table and forest plot

def _difference_text(row) -> str:
    if row.n == 0:
        return NO_RUNS
    if row.n < 2:
        return f"{row.mean_diff:+.2f}, n=1: {TOO_FEW}"
    return f"{row.mean_diff:+.2f} [{row.ci_low:+.2f}, {row.ci_high:+.2f}]"


def render(df: pd.DataFrame) -> dict[str, str]:
    """The "md" and "csv" texts: one block per pair, a row per setting."""
    epoch = df["epoch"].iloc[0] if len(df) else "final"
    md = [f"## Paired differences of top-1 error (%), {tables.EPOCH_TITLES[epoch]}", "",
          f"A − B over the seeds both have (n): mean and {CONFIDENCE:.0%} t-interval (Student's t, n − 1 degrees "
          "of freedom). Negative: A has the lower error. An interval that excludes 0 is a difference these seeds "
          "resolve; with n < 2 there is no interval.", ""]
    for pair, rows in df.groupby("pair", sort=False):
        header = ["Setting", "n", "A", "B", "A − B [95% CI]", "seeds"]
        body = [[r.setting_label, str(r.n), tables.number(r.a_mean), tables.number(r.b_mean), _difference_text(r),
                 r.seeds or "—"] for r in rows.itertuples()]
        md += [f"### {pair}", "", tables.markdown(header, body), ""]
    return {"md": "\n".join(md), "csv": df.to_csv(index=False)}


def plot(df: pd.DataFrame):
    """Forest plot: one panel per pair, one row per setting, the mean difference with its 95% interval.

    Rows with fewer than 2 paired seeds show their single difference as a hollow marker and say so;
    rows without paired runs say that. Returns the figure.
    """
    pairs = list(dict.fromkeys(df["pair"]))
    heights = [max(1, (df["pair"] == p).sum()) for p in pairs]
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(len(pairs), 1, figsize=(8.5, 1.0 + 0.45 * sum(heights) + 0.6 * len(pairs)),
                                 sharex=True, squeeze=False, gridspec_kw={"height_ratios": heights},
                                 layout="constrained")  # which, unlike tight_layout, leaves the title its room
    for ax, pair in zip(axes[:, 0], pairs):
        rows = df[df["pair"] == pair].reset_index(drop=True)
        y = list(range(len(rows)))[::-1]
        for yi, row in zip(y, rows.itertuples()):
            if row.n >= 2:
                ax.errorbar(row.mean_diff, yi, xerr=[[row.mean_diff - row.ci_low], [row.ci_high - row.mean_diff]],
                            fmt="o", color="C0", ecolor="C0", capsize=3)
            elif row.n == 1:
                ax.plot(row.mean_diff, yi, "o", mfc="none", color="C1")
            text = _difference_text(row)
            ax.annotate(f"n={row.n}: {text}" if row.n >= 2 else text, (1.01, yi), xycoords=("axes fraction", "data"),
                        va="center", fontsize=8)
        ax.axvline(0, color="0.3", linewidth=1)
        ax.set_yticks(y, rows["setting_label"])
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.set_title(pair, fontsize=10, loc="left")
    axes[-1, 0].set_xlabel(f"difference of {df['epoch'].iloc[0]}-epoch top-1 error, A − B (percentage points)")
    fig.suptitle(f"Paired differences over seeds, mean and {CONFIDENCE:.0%} t-interval", x=0.02, ha="left")
    return fig


def write(df: pd.DataFrame, out_dir=None, name: str = "compare", figure=None) -> list[Path]:
    """out_dir/<name>.md, .csv, .png and .pdf (out_dir None: the repository's figures/); returns their paths.

    figure: plot(df) if already drawn (a notebook shows it), else it is drawn here and closed."""
    paths = []
    for kind, text in render(df).items():
        paths.append(Path(out_dir or files.FIGURES) / f"{name}.{kind}")
        files.write_text(paths[-1], text)
    drawn = plot(df) if figure is None else figure
    paths += figures.save_figure(drawn, out_dir, name)
    if figure is None:
        plt.close(drawn)
    return paths
