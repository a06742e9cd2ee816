"""Finished runs gathered into the paper's tables, Fig. 3's numbers, and the report that renders them.

``collect`` turns a results root (results/<table>/<setting>/<run name>/seed<k>, mmlib.results's
records, or a runs/ folder of the same layout) into one row per cell of a paper table: mean and
std over seeds of the final-epoch error, and beside it of the best-epoch error (chosen on the test
set, as the released code reports it, hence optimistic), with the paper's number and the
difference. ``render`` / ``write_table`` lay that out as Markdown, CSV and LaTeX; ``reproduction``
sums up how close each setting lies to the paper. ``per_class`` gives Fig. 3's numbers
(mmlib.figures draws them). ``report`` executes the table and figure notebooks into figures/.

Only finished runs (with a FINISHED file) count; a cell without any is kept and shown as missing.
"""

import concurrent.futures
import dataclasses
import json
import math
import re
from pathlib import Path

import pandas as pd

import mmlib.notebook
from mmlib import paper, results, rundir
from mmlib.config import MM_VARIANTS
from mmlib.methods import get_method
from mmlib.results import EPOCHS, GROUPS

COLUMNS = [
    "table", "setting", "setting_label", "method", "row", "variant", "run_name", "beta", "delta_neg", "seeds",
    "final_mean", "final_std", "best_mean", "best_std", "many_mean", "medium_mean", "few_mean", "paper", "diff",
    "note",
]
NOTE_SEPARATOR = " | "  # between a cell's notes in the "note" column

TITLES = {
    "table1": "Table 1: top-1 error (%) on imbalanced CIFAR-10 and CIFAR-100",
    "table2": "Table 2: MM-DRW's top-1 error (%) over beta and delta- on CIFAR-10",
    "table3": "Table 3: MM-DRW's top-1 error (%) over beta and delta- on CIFAR-100",
    "quick": "Quick check: top-1 error (%) on imbalanced digits",
    "beyond": "Beyond the paper: logit adjustment (Menon et al. 2021) and SAM on DRW (Rangwani et al. 2022), "
              "top-1 error (%) under the same protocol",
    "ablation": "Ablation: the released MM code's two departures one at a time, top-1 error (%)",
}
EPOCH_TITLES = {"final": "final epoch", "best": "best epoch (optimistic: chosen on the test set)"}
LEGENDS = {
    "wide": "Each cell: our top-1 error, mean ± std over n seeds [the paper's error, ours - paper]; "
            "MM rows name their variant: [equations] as the paper writes MM, [released code] as its code behaves; "
            "missing: no finished run; —: the paper has no such cell.",
    "grouped": "Our top-1 error, mean ± std over n seeds; MM rows name their variant ([equations] or [released code]); "
               "the best epoch is chosen on the test set (optimistic); "
               "many / medium / few: final-epoch error of the classes with > 100, 20-100, < 20 training images; "
               "missing: no finished run; —: no number.",
}


# ---------------------------------------------------------------- collecting runs

def finished_runs(cell: paper.Cell, results_root) -> list[dict]:
    """``results.load`` (without history and confusion) of every finished seed<k> folder of the cell
    (a record or a run), in seed order."""
    folder = cell.path(results_root)
    if not folder.is_dir():
        return []
    seeds = sorted(
        (int(match.group(1)), path)
        for path in folder.iterdir()
        if (match := results.SEED_FOLDER.fullmatch(path.name)) and rundir.is_finished(path)
    )
    return [results.load(path, details=False) for _, path in seeds]


def collect(table: str, results_root=None, settings=None, methods=None, mm_variants=MM_VARIANTS) -> pd.DataFrame:
    """One row per cell of ``paper.cells(table, ...)`` (columns: COLUMNS), from the finished runs under
    results_root (default: the repository's results/; a runs/ folder reads the same).

    Every MM variant is collected by default so that runs of either show up; cells without a finished
    run are kept with seeds=0 and NaN numbers, so that a missing cell shows as missing.
    """
    root = existing_folder(results_root)
    cells = paper.cells(table, settings, methods, mm_variants)
    return pd.DataFrame([_summary(cell, finished_runs(cell, root)) for cell in cells], columns=COLUMNS)


def existing_folder(path) -> Path:
    path = rundir.RESULTS if path is None else Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"results root {path} does not exist (or is not a folder): give a results/ "
                                "or runs/ folder")
    return path


def _mean_std(values) -> tuple[float, float]:
    """Mean and sample std (ddof=1) of values, None counting as missing; NaN where too few values."""
    series = pd.Series(values, dtype=float)
    return series.mean(), series.std(ddof=1)


def row_label(cell: paper.Cell) -> str:
    """The cell's row as the paper writes it; an MM row names its variant."""
    equations = cell.method.startswith("mm") and cell.variant == "equations"
    return cell.label + (" [equations]" if equations else "")


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
        "method": cell.name,
        "row": row_label(cell),
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
    """"mean ± std (n=k)" of one cell at the final or best epoch, or "missing"."""
    if cell.seeds == 0:
        return "missing"
    mean, std = getattr(cell, f"{epoch}_mean"), getattr(cell, f"{epoch}_std")
    spread = "" if math.isnan(std) else f" ± {std:.2f}"
    return f"{mean:.2f}{spread} (n={cell.seeds})"


def _compared_text(cell, epoch: str) -> str:
    """The result followed by "[paper, ours - paper]" where the paper has a number."""
    text = _result_text(cell, epoch)
    if math.isnan(cell.paper):
        return text
    if cell.seeds == 0:
        return f"{text} [{cell.paper:.2f}]"
    difference = getattr(cell, f"{epoch}_mean") - cell.paper
    return f"{text} [{cell.paper:.2f}, {difference:+.2f}]"


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

@dataclasses.dataclass
class PerClass:
    """Per-class and per-group errors over seeds of some series (cells) on some settings, and what is missing.

    classes: a row per (series, class), classes ordered by training images (largest first); columns
    method, row (the series' label), setting, setting_label, epoch, seeds, class (0-based), name,
    train_count, group, error_mean, error_std.
    groups: a row per (series, many / medium / few group with classes); columns method, row, setting,
    setting_label, epoch, seeds, group, classes (how many), error_mean, error_std.
    missing: "<series> on <setting>" for each asked-for series without a finished run.
    """

    classes: pd.DataFrame
    groups: pd.DataFrame
    missing: list[str]


def parse_method(spec: str) -> tuple[str, str]:
    """"mm-drw@released" -> ("mm-drw", "released"); a bare method name means the equations variant."""
    method, sep, variant = spec.partition("@")
    return method, variant if sep else "equations"


def per_class(table: str, results_root=None, settings=None, methods=None, epoch: str = "final") -> PerClass:
    """Per-class and many / medium / few errors (%) over seeds, per cell, of a table's finished runs.

    results_root None means the repository's results/ (a runs/ folder reads the same). settings
    None: every setting of the table. methods: names, each optionally "@released" for the
    released-code MM variant (e.g. ["cb-rw", "mm-drw", "mm-drw@released"]), each reported missing
    where it has no finished run; None: every cell that has one (tables 2 and 3 have a cell per
    (beta, delta-)).
    """
    if epoch not in EPOCHS:
        raise ValueError(f"epoch must be one of {', '.join(EPOCHS)}, got {epoch!r}")
    root = existing_folder(results_root)
    if isinstance(settings, str):
        settings = [settings]
    specs = [parse_method(spec) for spec in methods or ()]
    wanted = {method for method, _ in specs} or None
    cells = paper.cells(table, settings, wanted, MM_VARIANTS)
    for method, variant in specs:
        if not any(c.name == method and c.variant == variant for c in cells):
            raise ValueError(f"{method}@{variant}: {table} has no such cell (only MM methods have a released variant)")
    classes, groups, missing = [], [], []
    for cell in cells:
        spec = cell.name + ("@released" if cell.variant == "released" else "")
        if specs and (cell.name, cell.variant) not in specs:
            continue
        runs = finished_runs(cell, root)
        if runs:
            classes.append(_per_class_frame(spec, cell, runs, epoch))
            groups.append(_group_frame(spec, cell, runs, epoch))
        elif specs:
            missing.append(f"{row_label(cell)} on {cell.setting.label} (searched {cell.path(root)}/seed*)")
    trained = {frame["setting"].iloc[0] for frame in classes}
    if not specs:
        missing = [f"every method on {s.label} (searched {root / table / s.name})"
                   for s in dict.fromkeys(c.setting for c in cells) if s.name not in trained]
    return PerClass(_concat(classes), _concat(groups), missing)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _identity(spec: str, cell: paper.Cell, runs: list[dict], epoch: str) -> dict:
    return {"method": spec, "row": row_label(cell), "setting": cell.setting.name,
            "setting_label": cell.setting.label, "epoch": epoch, "seeds": len(runs)}


def _per_class_frame(spec: str, cell: paper.Cell, runs: list[dict], epoch: str) -> pd.DataFrame:
    errors = pd.DataFrame([r[epoch]["per_class_error"] for r in runs])  # seeds x classes
    counts = runs[0]["class_counts"]
    group_of = {c: group for group, classes in counts["groups"].items() for c in classes}
    frame = pd.DataFrame({
        **_identity(spec, cell, runs, epoch),
        "class": range(errors.shape[1]),
        "name": counts["classes"],
        "train_count": counts["cls_num_list"],
        "group": [group_of[c] for c in range(errors.shape[1])],
        "error_mean": errors.mean().to_numpy(),
        "error_std": errors.std(ddof=1).to_numpy(),
    })
    return frame.sort_values("train_count", ascending=False, kind="stable", ignore_index=True)


def _group_frame(spec: str, cell: paper.Cell, runs: list[dict], epoch: str) -> pd.DataFrame:
    members = runs[0]["class_counts"]["groups"]
    rows = []
    for group in GROUPS:
        if members.get(group):
            mean, std = _mean_std([r[epoch]["group_error"][group] for r in runs])
            rows.append({**_identity(spec, cell, runs, epoch), "group": group, "classes": len(members[group]),
                         "error_mean": mean, "error_std": std})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- one run's summary (train.ipynb)

def summarize_runs(runs: list[dict]) -> pd.DataFrame:
    """One row per run: method, seed, final and best error, final many / medium / few-shot errors."""
    rows = []
    for r in runs:
        config = r["config"]["config"]
        rows.append({
            "run_dir": r["run_dir"], "method": config["method"], "seed": config["seed"],
            "mm_variant": config["mm_variant"] if config["method"].startswith("mm") else "",
            "final_error": r["final"]["error"], "final_epoch": r["final"]["epoch"],
            "best_error": r["best"]["error"], "best_epoch": r["best"]["epoch"],
            **{f"{g}_error": r["final"]["group_error"][g] for g in GROUPS},
        })
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- how close to the paper

RANKED = ("ldam-drw", "mm-drw", "mm-ldam-drw")  # the paper's claim: MM-LDAM-DRW < MM-DRW < LDAM-DRW
CLOSE = (0.5, 1.0)  # points of error


def reproduction(tables: dict[str, pd.DataFrame]) -> str:
    """Markdown: per table, setting and MM variant, how many cells have results and how close they lie to
    the paper; where a table holds LDAM-DRW and the MM rows, their order against the paper's."""
    lines = ["# Reproduction summary", "",
             "Final-epoch top-1 error, mean over seeds, against the paper's number; a cell is within x points "
             "when |ours - paper| <= x. Rows \"equations\" count the paper's cells (the MM rows as its equations "
             "write MM); rows \"released code\" the MM cells run as its released code behaves, against the same "
             "numbers. Generated by `python -m mmlib report` from the records it was given.", ""]
    for table, df in tables.items():
        compared = df[df["paper"].notna()]
        if compared.empty:
            continue
        lines += [f"## {TITLES.get(table, table)}", ""]
        header = ["setting", "variant", "cells", "with results", *(f"within {x:g}" for x in CLOSE),
                  "mean gap (points)"]
        rows, ranks = [], []
        for label, cells in compared.groupby("setting_label", sort=False):
            for variant in MM_VARIANTS:
                chosen = cells[cells["variant"] == variant]
                found = chosen[chosen["seeds"] > 0]
                if variant != "equations" and found.empty:
                    continue
                gaps = (found["final_mean"] - found["paper"]).abs()
                rows.append([label, _VARIANT_NAMES[variant], str(len(chosen)), str(len(found)),
                             *(str(int((gaps <= x).sum())) for x in CLOSE), _number(gaps.mean())])
                ranks += _rank_row(label, variant, cells)
        lines += [_markdown(header, rows), ""]
        if set(RANKED) <= set(df["method"]):
            lines += ["Rank order of " + ", ".join(_short(m) for m in RANKED) + " (lowest error first), over "
                      "the rows with results:", ""]
            lines += [_markdown(["setting", "MM variant", "ours", "paper", "same order"], ranks)
                      if ranks else "no setting has two of them with results", ""]
    return "\n".join(lines)


_VARIANT_NAMES = {"equations": "equations", "released": "released code"}


def _short(method: str) -> str:
    return get_method(method).label.replace(" (ours)", "")


def _rank_row(label: str, variant: str, cells: pd.DataFrame) -> list[list[str]]:
    """[setting, variant, our order, the paper's order, same?] of RANKED (MM rows of this variant), if two have results."""
    chosen = cells[cells["method"].isin(RANKED) & (cells["seeds"] > 0)
                   & ((cells["method"] == RANKED[0]) | (cells["variant"] == variant))]
    if len(chosen) < 2:
        return []
    ours = chosen.sort_values("final_mean")
    theirs = chosen.sort_values("paper")
    same = list(ours["method"]) == list(theirs["method"])
    return [[label, _VARIANT_NAMES[variant],
             " < ".join(f"{_short(m)} {e:.2f}" for m, e in zip(ours["method"], ours["final_mean"])),
             " < ".join(f"{_short(m)} {e:.2f}" for m, e in zip(theirs["method"], theirs["paper"])),
             "yes" if same else "no"]]


# ---------------------------------------------------------------- the report: notebooks into figures/

NOTEBOOKS = rundir.REPOSITORY / "notebooks"
REPORT_TABLES = tuple(t for t in paper.TABLES if t != "quick")
FIGURE_NOTEBOOKS = [("fig1_class_counts.ipynb", {}), ("fig2_toy.ipynb", {}), ("fig3_per_class.ipynb", {}),
                    ("compare.ipynb", {})]
QUICK_NOTEBOOKS = [("table1.ipynb", {"table": "quick"}),
                   ("fig3_per_class.ipynb", {"table": "quick", "settings": None, "methods": None,
                                             "name": "fig3_quick"})]
REPRODUCTION = "reproduction.md"


def report_notebooks(tables=REPORT_TABLES) -> list[tuple[str, dict]]:
    """The notebooks of the report and their parameters: a table notebook per table (notebooks/<table>.ipynb,
    else table1.ipynb rendering it), then the figures' notebooks."""
    return [((f"{t}.ipynb" if (NOTEBOOKS / f"{t}.ipynb").exists() else "table1.ipynb"), {"table": t})
            for t in tables] + FIGURE_NOTEBOOKS


def run_notebooks(notebooks: list[tuple[str, dict]], results_root, out_dir, log=print, workers: int = 2) -> list[Path]:
    """Execute each notebook with papermill against results_root, writing into out_dir; the executed
    notebooks land in out_dir/notebooks. A failing notebook does not stop the others; returns the failed ones."""
    results_root, out_dir = Path(results_root).resolve(), Path(out_dir).resolve()
    existing_folder(results_root)
    executed_dir = out_dir / "notebooks"
    executed_dir.mkdir(parents=True, exist_ok=True)

    def execute(item: tuple[str, dict]) -> Path | None:
        notebook, params = item
        name = params.get("name", params.get("table", Path(notebook).stem))  # fig3 of a table has a name of its own
        executed = executed_dir / f"{name}.ipynb"
        parameters = {"out_dir": str(out_dir), **params}
        if "results_root" in _parameter_names(NOTEBOOKS / notebook):
            parameters["results_root"] = str(results_root)
        done = mmlib.notebook.run(NOTEBOOKS / notebook, executed, parameters, cwd=rundir.REPOSITORY)
        if done.returncode:
            error = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["no message"]
            log(f"FAILED {notebook} {params or ''}: {error[0]} (see {executed})")
            return executed
        log(f"{notebook} {params or ''}: {', '.join(_written(executed)) or 'nothing written'}")
        return None

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return [path for path in pool.map(execute, notebooks) if path is not None]


def _parameter_names(notebook: Path) -> set[str]:
    """The names assigned in a notebook's cell tagged "parameters"."""
    cells = json.loads(notebook.read_text())["cells"]
    source = "".join("".join(c["source"]) for c in cells if "parameters" in c["metadata"].get("tags", []))
    return set(re.findall(r"^(\w+)\s*=", source, flags=re.M))


def _written(executed: Path) -> list[str]:
    """What an executed notebook says it wrote ("wrote PATH" lines) or found missing ("missing: ...")."""
    lines = []
    for cell in json.loads(executed.read_text())["cells"]:
        for output in cell.get("outputs", []):
            text = output.get("text", "")
            for line in (text if isinstance(text, str) else "".join(text)).splitlines():
                if line.startswith("wrote "):
                    lines.append(Path(line[len("wrote "):]).name)
                elif line.startswith("missing"):
                    lines.append(line)
    return lines


def report(results_root=None, out_dir=None, tables=REPORT_TABLES, log=print) -> list[Path]:
    """Every table, figure and the reproduction summary from results_root (default results/) into out_dir
    (default figures/); returns the failed notebooks."""
    results_root = existing_folder(results_root)
    out_dir = Path(out_dir or rundir.FIGURES)
    failed = run_notebooks(report_notebooks(tables), results_root, out_dir, log)
    summary = reproduction({t: collect(t, results_root) for t in tables})
    rundir.write_text(out_dir / REPRODUCTION, summary)
    log(f"wrote {out_dir / REPRODUCTION}")
    return failed
