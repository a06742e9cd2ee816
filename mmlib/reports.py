"""Finished runs gathered into the paper's tables, and the paper's figures drawn from them.

``collect`` turns a runs root (<runs_root>/<table>/<setting>/<run name>/seed<k>, as the sweep writes
it) into one row per cell of a paper table: mean and std over seeds of the final-epoch error, and
beside it of the best-epoch error (chosen on the test set, as the released code reports it, hence
optimistic), with the paper's number and the difference. ``render`` / ``write_table`` lay that out
as Markdown, CSV and LaTeX. ``per_class`` and ``plot_per_class`` draw Fig. 3 (per-class error);
``plot_class_counts`` draws Fig. 1-style class-size curves of the imbalanced training sets.

Only finished runs (with a FINISHED file) count; a cell without any is kept and shown as missing.
"""

import math
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from mmlib import data, paper, rundir
from mmlib.config import MM_VARIANTS

COLUMNS = [
    "table", "setting", "setting_label", "method", "row", "variant", "run_name", "beta", "delta_neg", "seeds",
    "final_mean", "final_std", "best_mean", "best_std", "many_mean", "medium_mean", "few_mean", "paper", "diff",
    "note",
]
GROUPS = ("many", "medium", "few")
NOTE_SEPARATOR = " | "  # between a cell's notes in the "note" column
EPOCHS = ("final", "best")
SEED_FOLDER = re.compile(r"seed(\d+)")

TITLES = {
    "table1": "Table 1: top-1 error (%) on imbalanced CIFAR-10 and CIFAR-100",
    "table2": "Table 2: MM-DRW's top-1 error (%) over beta and delta- on CIFAR-10",
    "table3": "Table 3: MM-DRW's top-1 error (%) over beta and delta- on CIFAR-100",
    "quick": "Quick check: top-1 error (%) on imbalanced digits",
    "beyond": "Beyond the paper: logit adjustment (Menon et al. 2021), top-1 error (%) under the same protocol",
    "ablation": "Ablation: the released MM code's two departures one at a time, top-1 error (%)",
}
EPOCH_TITLES = {"final": "final epoch", "best": "best epoch (optimistic: chosen on the test set)"}
LEGENDS = {
    "wide": "Each cell: our mean ± std over n seeds (the paper's error, ours - paper); "
            "missing: no finished run; —: the paper has no such cell.",
    "grouped": "Our mean ± std over n seeds; the best epoch is chosen on the test set (optimistic); "
               "many / medium / few: final-epoch error of the classes with > 100, 20-100, < 20 training images; "
               "missing: no finished run; —: no number.",
}


# ---------------------------------------------------------------- collecting runs

def finished_runs(cell: paper.Cell, runs_root) -> list[dict]:
    """``rundir.load_results`` of every finished seed<k> folder of the cell, in seed order."""
    folder = cell.path(runs_root)
    if not folder.is_dir():
        return []
    seeds = sorted(
        (int(match.group(1)), path)
        for path in folder.iterdir()
        if (match := SEED_FOLDER.fullmatch(path.name)) and rundir.is_finished(path)
    )
    return [rundir.load_results(path) for _, path in seeds]


def collect(table: str, runs_root=None, settings=None, methods=None, mm_variants=MM_VARIANTS) -> pd.DataFrame:
    """One row per cell of ``paper.cells(table, ...)`` (columns: COLUMNS), from the finished runs under runs_root
    (default: the repository's runs/).

    Every MM variant is collected by default so that runs of either show up; cells without a finished
    run are kept with seeds=0 and NaN numbers, so that a missing cell shows as missing.
    """
    root = _existing_folder(runs_root)
    cells = paper.cells(table, settings, methods, mm_variants)
    return pd.DataFrame([_summary(cell, finished_runs(cell, root)) for cell in cells], columns=COLUMNS)


def _existing_folder(path) -> Path:
    path = rundir.RUNS if path is None else Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"runs root {path} does not exist (or is not a folder)")
    return path


def _mean_std(values) -> tuple[float, float]:
    """Mean and sample std (ddof=1) of values, None counting as missing; NaN where too few values."""
    series = pd.Series(values, dtype=float)
    return series.mean(), series.std(ddof=1)


def _summary(cell: paper.Cell, runs: list[dict]) -> dict:
    """The COLUMNS of one cell: its identity, then mean/std over its runs, the paper's error and the difference."""
    final_mean, final_std = _mean_std([r["final"]["error"] for r in runs])
    best_mean, best_std = _mean_std([r["best"]["error"] for r in runs])
    groups = {f"{g}_mean": _mean_std([r["final"]["group_error"][g] for r in runs])[0] for g in GROUPS}
    paper_error = math.nan if cell.paper_error is None else cell.paper_error
    return {
        "table": cell.table,
        "setting": cell.setting.name,
        "setting_label": cell.setting.label,
        "method": cell.method,
        "row": cell.label,
        "variant": cell.variant,
        "run_name": cell.run_name,
        "beta": cell.params.get("beta", math.nan),
        "delta_neg": cell.params.get("delta_neg", math.nan),
        "seeds": len(runs),
        "final_mean": final_mean,
        "final_std": final_std,
        "best_mean": best_mean,
        "best_std": best_std,
        **groups,
        "paper": paper_error,
        "diff": final_mean - paper_error,
        "note": NOTE_SEPARATOR.join(cell.notes),
    }


# ---------------------------------------------------------------- rendering tables

def render(df: pd.DataFrame, table: str) -> dict[str, str]:
    """The "md", "csv" and "tex" texts of a collected table.

    Table 1 is laid out as the paper's: methods down, settings across, once for the final and once
    for the best epoch. Tables 2, 3 and quick are grouped by setting, one row per (beta, delta-) or
    method. The released-code MM rows are shown (under their equations rows) once any of their runs
    exists: they are an alternative to the paper's equations, not part of its tables. The csv is
    the long DataFrame as it is.
    """
    if table not in paper.TABLES:
        raise ValueError(f"unknown table {table!r}; valid: {', '.join(paper.TABLES)}")
    others = sorted(set(df["table"]) - {table})
    if others:
        raise ValueError(f"asked to render {table}, but the rows are of {', '.join(others)}")
    shown = _shown_rows(df)
    if table in ("table1", "beyond"):
        legend = LEGENDS["wide"]
        blocks = [(EPOCH_TITLES[epoch], *_wide_grid(shown, epoch)) for epoch in EPOCHS]
    else:
        legend = LEGENDS["grouped"]
        blocks = [(label, *_setting_grid(rows)) for label, rows in shown.groupby("setting_label", sort=False)]
    md = [f"## {TITLES[table]}", "", legend, ""]
    tex = [f"% {TITLES[table]} (written by mmlib.reports)", f"\\textbf{{{_tex_escape(TITLES[table])}}}\\\\",
           _tex_escape(legend), ""]
    for title, header, rows in blocks:
        md += [f"### {title}", "", _markdown(header, rows), ""]
        tex += [f"\\textit{{{_tex_escape(title)}}}\\\\", _tabular(header, rows), ""]
    md += _notes(shown)
    return {"md": "\n".join(md), "csv": df.to_csv(index=False), "tex": "\n".join(tex)}


def write_table(df: pd.DataFrame, table: str, out_dir=None) -> list[Path]:
    """Write out_dir/<table>.md, .csv and .tex (default: the repository's figures/), each atomically; returns their paths."""
    paths = []
    for kind, text in render(df, table).items():
        path = Path(out_dir or rundir.FIGURES) / f"{table}.{kind}"
        rundir.write_text(path, text)
        paths.append(path)
    return paths


def _shown_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows to display: all but other MM variants' rows none of whose cells has a finished run (not in the ablation)."""
    row_has_runs = df.groupby("row")["seeds"].transform("sum") > 0
    return df[(df["variant"] == "equations") | (df["table"] == "ablation") | row_has_runs]


def _result_text(cell, epoch: str) -> str:
    """"mean ± std n=k" of one cell at the final or best epoch, or "missing"."""
    if cell.seeds == 0:
        return "missing"
    mean, std = getattr(cell, f"{epoch}_mean"), getattr(cell, f"{epoch}_std")
    spread = "" if math.isnan(std) else f" ± {std:.2f}"
    return f"{mean:.2f}{spread} n={cell.seeds}"


def _compared_text(cell, epoch: str) -> str:
    """The result followed by "(paper, ours - paper)" where the paper has a number."""
    text = _result_text(cell, epoch)
    if math.isnan(cell.paper):
        return text
    if cell.seeds == 0:
        return f"{text} ({cell.paper:.2f})"
    difference = getattr(cell, f"{epoch}_mean") - cell.paper
    return f"{text} ({cell.paper:.2f}, {difference:+.2f})"


def _number(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}"


def _wide_grid(df: pd.DataFrame, epoch: str) -> tuple[list[str], list[list[str]]]:
    """Table 1's layout: a row per method (the cells' order), a column per setting, "—" where there is no cell."""
    labels = dict(zip(df["setting"], df["setting_label"]))
    texts = {(cell.row, cell.setting): _compared_text(cell, epoch) for cell in df.itertuples()}
    header = ["Method"] + list(labels.values())
    rows = [[row] + [texts.get((row, s), "—") for s in labels] for row in dict.fromkeys(df["row"])]
    return header, rows


def _setting_grid(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """One setting of Tables 2, 3 or quick: a row per cell with both epochs, the paper and the group errors."""
    header = ["Method", "final epoch", "best epoch", "paper", "final - paper", "best - paper",
              "many (final)", "medium (final)", "few (final)"]
    rows = [
        [cell.row, _result_text(cell, "final"), _result_text(cell, "best"), _number(cell.paper),
         _signed(cell.final_mean - cell.paper), _signed(cell.best_mean - cell.paper),
         _number(cell.many_mean), _number(cell.medium_mean), _number(cell.few_mean)]
        for cell in df.itertuples()
    ]
    return header, rows


def _signed(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:+.2f}"


def _notes(df: pd.DataFrame) -> list[str]:
    """A Markdown list of the cells' notes, each note once with the rows (and settings) it concerns."""
    concerns: dict[str, dict[str, list[str]]] = {}
    for cell in df[df["note"] != ""].itertuples():
        for note in cell.note.split(NOTE_SEPARATOR):
            concerns.setdefault(note, {}).setdefault(cell.row, []).append(cell.setting_label)
    if not concerns:
        return []
    lines = ["### Notes", ""]
    for note, rows in concerns.items():
        where = [
            row if len(labels) == (df["row"] == row).sum() else f"{row} ({', '.join(labels)})"
            for row, labels in rows.items()
        ]
        lines.append(f"- {note}: {'; '.join(where)}")
    return lines + [""]


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


TEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "—": "---",
}


def _tex_escape(text: str) -> str:
    """Plain text as LaTeX source: special characters escaped, ± and — as LaTeX writes them."""
    return re.sub("|".join(map(re.escape, TEX_ESCAPES)), lambda match: TEX_ESCAPES[match.group()], text)


def _tex_row(cells: list[str]) -> str:
    return " & ".join(map(_tex_escape, cells)) + r" \\"


def _tabular(header: list[str], rows: list[list[str]]) -> str:
    """A plain LaTeX tabular (no packages needed): first column left, the others centred, ruled header."""
    body = [r"\begin{tabular}{l" + "c" * (len(header) - 1) + "}", r"\hline", _tex_row(header), r"\hline"]
    return "\n".join(body + [_tex_row(row) for row in rows] + [r"\hline", r"\end{tabular}"])


# ---------------------------------------------------------------- per-class errors (Fig. 3)

def parse_method(spec: str) -> tuple[str, str]:
    """"mm-drw@released" -> ("mm-drw", "released"); a bare method name means the equations variant."""
    method, sep, variant = spec.partition("@")
    return method, variant if sep else "equations"


def per_class(table: str, runs_root, setting: str, methods, epoch: str = "final") -> pd.DataFrame:
    """Per-class error (%) mean and std over seeds, per method, on one setting of a table.

    runs_root None means the repository's runs/.
    methods are method names, each optionally "@released" for the released-code MM variant
    (e.g. ["cb-rw", "mm-drw", "mm-drw@released"]). In tables 2 and 3 a method has one cell per
    (beta, delta-); each becomes its own series. Every cell must have a finished run.
    Columns: method (as given), row (the cell's label), setting, setting_label, epoch, seeds, class
    (0-based), name, train_count, group, error_mean, error_std.
    """
    if epoch not in EPOCHS:
        raise ValueError(f"epoch must be one of {', '.join(EPOCHS)}, got {epoch!r}")
    if not methods:
        raise ValueError("give at least one method")
    root = _existing_folder(runs_root)
    frames = []
    for spec in methods:
        method, variant = parse_method(spec)
        cells = [c for c in paper.cells(table, [setting], [method], (variant,)) if c.variant == variant]
        if not cells:
            raise ValueError(f"{spec}: {method} has no {variant!r} variant (only MM methods have a released one)")
        for cell in cells:
            runs = finished_runs(cell, root)
            if not runs:
                raise ValueError(f"no finished run of {spec} on {setting}: searched {cell.path(root)}/seed*")
            frames.append(_per_class_frame(spec, cell, runs, epoch))
    return pd.concat(frames, ignore_index=True)


def _per_class_frame(spec: str, cell: paper.Cell, runs: list[dict], epoch: str) -> pd.DataFrame:
    errors = pd.DataFrame([r[epoch]["per_class_error"] for r in runs])  # seeds x classes
    counts = runs[0]["class_counts"]
    group_of = {c: group for group, classes in counts["groups"].items() for c in classes}
    return pd.DataFrame({
        "method": spec,
        "row": cell.label,
        "setting": cell.setting.name,
        "setting_label": cell.setting.label,
        "epoch": epoch,
        "seeds": len(runs),
        "class": range(errors.shape[1]),
        "name": counts["classes"],
        "train_count": counts["cls_num_list"],
        "group": [group_of[c] for c in range(errors.shape[1])],
        "error_mean": errors.mean().to_numpy(),
        "error_std": errors.std(ddof=1).to_numpy(),
    })


def plot_per_class(df: pd.DataFrame, ax=None):
    """Fig. 3: grouped bars of per-class top-1 error, one bar per series (std over seeds as error bars).

    df is ``per_class``'s output; classes are labelled C1..CN with their name and training count.
    Returns the figure.
    """
    series = list(dict.fromkeys(df["row"]))
    classes = df.drop_duplicates("class").sort_values("class")
    if ax is None:
        with sns.axes_style("whitegrid"):
            _, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(classes) * max(1, len(series) / 2)), 4.0))
    width = 0.8 / len(series)
    for i, (label, color) in enumerate(zip(series, sns.color_palette(n_colors=len(series)))):
        bars = df[df["row"] == label].sort_values("class")
        spread = bars["error_std"] if bars["error_std"].notna().any() else None
        ax.bar(np.arange(len(bars)) + (i - (len(series) - 1) / 2) * width, bars["error_mean"], width, yerr=spread,
               capsize=2, error_kw={"elinewidth": 1, "ecolor": "0.3"}, color=color,
               label=f"{label} (n={bars['seeds'].iloc[0]})")
    many_classes = len(classes) > 20
    ticks = [f"C{c + 1}" if many_classes else f"C{c + 1}\n{name}\n{count}"
             for c, name, count in zip(classes["class"], classes["name"], classes["train_count"])]
    ax.set_xticks(np.arange(len(classes)), ticks, rotation=90 if many_classes else 0, fontsize=7 if many_classes else 8)
    ax.set_xlabel("class" if many_classes else "class (name, training images)")
    ax.set_ylabel("top-1 error (%)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{classes['setting_label'].iloc[0]}: per-class error, {classes['epoch'].iloc[0]} epoch")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), title="method (seeds)")
    ax.figure.tight_layout()
    return ax.figure


def save_figure(fig, out_dir, name: str) -> list[Path]:
    """Write out_dir/<name>.png and .pdf (out_dir None: the repository's figures/), each atomically; returns their paths."""
    paths = []
    for kind in ("png", "pdf"):
        path = Path(out_dir or rundir.FIGURES) / f"{name}.{kind}"
        rundir.atomic_write(path, lambda f, kind=kind: fig.savefig(f, format=kind, dpi=150, bbox_inches="tight"))
        paths.append(path)
    return paths


# ---------------------------------------------------------------- class sizes (Fig. 1)

KNOWN_SETTINGS = {**paper.SETTINGS, **{s.name: s for s in paper.QUICK_SETTINGS}}


def setting_class_counts(setting: str) -> list[int]:
    """Training images per class of a paper setting (or a quick one), by LDAM-DRW's rule; no images needed."""
    if setting not in KNOWN_SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; valid: {', '.join(KNOWN_SETTINGS)}")
    chosen = KNOWN_SETTINGS[setting]
    return data.class_counts(*data.dataset_size(chosen.dataset), chosen.imb_type, chosen.ratio)


def plot_class_counts(settings, ax=None, log: bool = True):
    """Fig. 1-style curves: training images per class, largest class first, one line per setting.

    settings: a setting name or a list of them. The many / medium / few-shot boundaries (100, 20)
    are drawn as dashed lines. Returns the figure.
    """
    names = [settings] if isinstance(settings, str) else list(settings)
    if not names:
        raise ValueError("give at least one setting")
    counts = {name: sorted(setting_class_counts(name), reverse=True) for name in names}
    if ax is None:
        with sns.axes_style("whitegrid"):
            _, ax = plt.subplots(figsize=(8.0, 4.0))
    for name, color in zip(names, sns.color_palette(n_colors=len(names))):
        ax.plot(np.arange(1, len(counts[name]) + 1), counts[name], marker="o", markersize=3, color=color,
                drawstyle="steps-mid", label=KNOWN_SETTINGS[name].label)
    for bound, text, side in ((data.MANY_SHOT_ABOVE, f"many-shot: > {data.MANY_SHOT_ABOVE}", "bottom"),
                              (data.FEW_SHOT_BELOW, f"few-shot: < {data.FEW_SHOT_BELOW}", "top")):
        ax.axhline(bound, color="grey", linestyle="--", linewidth=1)
        ax.text(0.99, bound, text, transform=ax.get_yaxis_transform(), ha="right", va=side, fontsize=8, color="grey")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("class, sorted by training images")
    ax.set_ylabel("training images")
    ax.set_title("Training images per class")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.figure.tight_layout()
    return ax.figure


# ---------------------------------------------------------------- one run (train.ipynb)

def summarize_runs(results: list[dict]) -> pd.DataFrame:
    """One row per run: method, seed, final and best error, final many / medium / few-shot errors."""
    rows = []
    for r in results:
        config = r["config"]["config"]
        rows.append({
            "run_dir": r["run_dir"], "method": config["method"], "seed": config["seed"],
            "mm_variant": config["mm_variant"] if config["method"].startswith("mm") else "",
            "final_error": r["final"]["error"], "final_epoch": r["final"]["epoch"],
            "best_error": r["best"]["error"], "best_epoch": r["best"]["epoch"],
            **{f"{g}_error": r["final"]["group_error"][g] for g in GROUPS},
        })
    return pd.DataFrame(rows)


def plot_history(result: dict):
    """Learning curves of one run: training loss, learning rate, training and test error per epoch."""
    history = pd.DataFrame(result["history"])
    with sns.axes_style("whitegrid"):
        fig, (loss_ax, lr_ax, error_ax) = plt.subplots(1, 3, figsize=(13.0, 3.5))
    loss_ax.plot(history["epoch"], history["train_loss"])
    loss_ax.set(xlabel="epoch", ylabel="training loss", yscale="log")
    lr_ax.plot(history["epoch"], history["lr"])
    lr_ax.set(xlabel="epoch", ylabel="learning rate", yscale="log")
    error_ax.plot(history["epoch"], history["train_error"], label="training (augmented, as sampled)")
    evaluated = history.dropna(subset=["test_error"]) if "test_error" in history else history.iloc[:0]
    error_ax.plot(evaluated["epoch"], evaluated["test_error"], marker=".", label="test")
    error_ax.set(xlabel="epoch", ylabel="top-1 error (%)")
    error_ax.legend()
    fig.suptitle(_run_title(result))
    fig.tight_layout()
    return fig


def plot_run_per_class(result: dict):
    """Per-class test error of one run at the final and the best epoch, classes by training count."""
    counts = result["class_counts"]
    order = np.argsort(counts["cls_num_list"], kind="stable")[::-1]
    frame = pd.DataFrame([
        {"class": f"{counts['classes'][c]} ({counts['cls_num_list'][c]})", "epoch": epoch,
         "error": result[epoch]["per_class_error"][c]}
        for epoch in EPOCHS for c in order
    ])
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(order)), 4.0))
    sns.barplot(frame, x="class", y="error", hue="epoch", ax=ax)
    ax.set(xlabel="class (training images)", ylabel="top-1 error (%)")
    ax.tick_params(axis="x", rotation=90)
    ax.set_title(_run_title(result))
    fig.tight_layout()
    return fig


def plot_confusion(result: dict, epoch: str = "final"):
    """Confusion matrix of one run (rows: true class, columns: predicted), normalised per true class."""
    confusion = np.asarray(result[epoch]["confusion"], dtype=float)
    confusion /= np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    classes = result["class_counts"]["classes"]
    size = min(12.0, 2.0 + 0.45 * len(classes))
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    sns.heatmap(confusion, ax=ax, cmap="viridis", vmin=0, vmax=1, square=True,
                xticklabels=classes if len(classes) <= 20 else False,
                yticklabels=classes if len(classes) <= 20 else False, cbar_kws={"label": "share of the true class"})
    ax.set(xlabel="predicted class", ylabel="true class", title=f"{_run_title(result)}, {epoch} epoch")
    fig.tight_layout()
    return fig


def _run_title(result: dict) -> str:
    config = result["config"]["config"]
    variant = " (released code)" if config["method"].startswith("mm") and config["mm_variant"] == "released" else ""
    return f"{config['method']}{variant}, seed {config['seed']}: {result['class_counts']['description'].split(':')[0]}"
