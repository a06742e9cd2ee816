"""Finished runs gathered into the cells of the paper's tables: one row per cell, and per-class errors.

``gather`` turns a results root (results/<table>/<setting>/<run name>/seed<k>, mmlib.report.results's
results, or a runs/ folder of the same layout) into one row per cell of a paper table: mean and
std over seeds of the final-epoch error, and beside it of the best-epoch error (chosen on the test
set, as the released code reports it, hence optimistic), with the paper's number and the
difference. ``per_class`` gives Fig. 3's numbers (mmlib.report.figures draws them). mmlib.report.tables lays
the rows out, mmlib.report.reproduction sums them up.

Only finished runs (with a FINISHED file) count; a cell without any is kept and shown as missing.
"""

import dataclasses
import math
from pathlib import Path

import pandas as pd

from mmlib import files, paper
from mmlib.choices import MM_VARIANTS
from mmlib.config import SPEED, RunConfig, describe
from mmlib.report import results
from mmlib.report.results import EPOCHS, GROUPS
from mmlib.train import run_folder

COLUMNS = [
    "table", "setting", "setting_label", "method", "row", "variant", "run_name", "beta", "delta_neg", "seeds",
    "final_mean", "final_std", "best_mean", "best_std", "many_mean", "medium_mean", "few_mean", "paper", "diff",
    "note", "left_out",
]
NOTE_SEPARATOR = " | "  # between a cell's notes in the "note" column


@dataclasses.dataclass
class CellRuns:
    """A cell's seeds: the finished runs of its protocol configuration, and those its folder holds that are not."""

    runs: list[dict]  # results.load (without history and confusion) of each seed, in seed order
    left_out: list[tuple[Path, str]]  # (run folder, how it departs from the cell's protocol)


def cell_runs(cell: paper.Cell, results_root, protocol: dict | None = None) -> CellRuns:
    """The finished seed<k> folders of the cell (results or runs) that are its seeds, and those that are another
    experiment (mmlib.paper.departures: trained with other parameters), in seed order: the one rule that
    decides what a table, a figure and a comparison count. ``protocol``: run parameters the seeds took beyond
    the cell's (default: its table's protocol, paper.PROTOCOLS), e.g. {"epochs": 30} to gather a shortened sweep."""
    folder = cell.path(results_root)
    found = CellRuns([], [])
    if not folder.is_dir():
        return found
    seeds = sorted(
        (int(match.group(1)), path)
        for path in folder.iterdir()
        if (match := run_folder.SEED_FOLDER.fullmatch(path.name)) and run_folder.is_finished(path)
    )
    for seed, path in seeds:
        run = results.load(path, details=False)
        departed = paper.departures(cell, run["config"]["config"], seed, protocol)
        if departed:
            found.left_out.append((path, describe(departed) + " (the run's -> the cell's)"))
        else:
            found.runs.append(run)
    return found


def finished_runs(cell: paper.Cell, results_root, protocol: dict | None = None) -> list[dict]:
    """The cell's seeds (cell_runs(...).runs)."""
    return cell_runs(cell, results_root, protocol).runs


def gather(table: str, results_root=None, settings=None, methods=None, mm_variants=MM_VARIANTS,
           protocol: dict | None = None) -> pd.DataFrame:
    """One row per cell of ``paper.cells(table, ...)`` (columns: COLUMNS), from the finished runs under
    results_root (default: the repository's results/; a runs/ folder reads the same).

    Every MM variant is collected by default so that runs of either show up; cells without a finished
    run are kept with seeds=0 and NaN numbers, so that a missing cell shows as missing. Runs of other
    parameters in a cell's folder are not counted: its "left_out" column names each and how it departs.
    ``protocol``: as cell_runs'.
    """
    root = existing_folder(results_root)
    cells = paper.cells(table, settings, methods, mm_variants)
    return pd.DataFrame([_summary(cell, cell_runs(cell, root, protocol)) for cell in cells], columns=COLUMNS)


def existing_folder(path) -> Path:
    path = files.RESULTS if path is None else Path(path)
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


def _summary(cell: paper.Cell, found: CellRuns) -> dict:
    """The COLUMNS of one cell: its identity, then mean/std over its runs, the paper's error and the difference."""
    runs = found.runs
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
        "note": NOTE_SEPARATOR.join([*cell.notes, *speed_notes(runs)]),
        "left_out": NOTE_SEPARATOR.join(f"{path}: {why}" for path, why in found.left_out),
    }


def speed_notes(runs: list[dict]) -> list[str]:
    """How the seeds were computed where it is not the default: "bf16=True: 3 of 3 seeds", "fused: 2 of 3 seeds"."""
    notes, n = [], len(runs)
    for name in sorted(SPEED):
        default = RunConfig.__dataclass_fields__[name].default
        values = [r["config"]["config"][name] for r in runs]
        for value in dict.fromkeys(v for v in values if v != default):
            notes.append(f"{name}={value}: {values.count(value)} of {n} seeds")
    fused = sum((r.get("fused_runs") or 1) > 1 for r in runs)
    if fused:
        notes.append(f"trained fused with other runs: {fused} of {n} seeds")
    return notes


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


def per_class(table: str, results_root=None, settings=None, methods=None, epoch: str = "final",
              protocol: dict | None = None) -> PerClass:
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
        spec = cell.name + ("" if cell.variant == "equations" else f"@{cell.variant}")
        if specs and (cell.name, cell.variant) not in specs:
            continue
        runs = finished_runs(cell, root, protocol)
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


def _row_key(spec: str, cell: paper.Cell, runs: list[dict], epoch: str) -> dict:
    return {"method": spec, "row": row_label(cell), "setting": cell.setting.name,
            "setting_label": cell.setting.label, "epoch": epoch, "seeds": len(runs)}


def _per_class_frame(spec: str, cell: paper.Cell, runs: list[dict], epoch: str) -> pd.DataFrame:
    errors = pd.DataFrame([r[epoch]["per_class_error"] for r in runs])  # seeds x classes
    counts = runs[0]["class_counts"]
    group_of = {c: group for group, classes in counts["groups"].items() for c in classes}
    frame = pd.DataFrame({
        **_row_key(spec, cell, runs, epoch),
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
            rows.append({**_row_key(spec, cell, runs, epoch), "group": group, "classes": len(members[group]),
                         "error_mean": mean, "error_std": std})
    return pd.DataFrame(rows)


