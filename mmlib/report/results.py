"""Results: the files of finished runs, small enough to commit: results/<table>/<setting>/<run name>/seed<k>/.

A result keeps what a reader needs to check a run against the paper, in the run directory's layout:

    config.json            the run's: every resolved parameter, mmlib / torch / CUDA versions, device, commit
    class_counts.json      the run's: class names, training counts, many / medium / few groups
    metrics.json           final and best epoch: error, per-class and many / medium / few errors; wall time
                           (seconds), fused_runs, finished_at, step (the step paths that trained it: graphs or
                           eager, and why); numbers to 6 significant digits
    history.csv            per epoch: lr, training loss and error, test error and its groups, seconds
    confusion_final.csv.gz, confusion_best.csv.gz   test confusion matrices (row: true class, column: predicted)
    per_class.csv          the run's
    FINISHED               written last

No checkpoint and no notebook; a CIFAR-100 result is about 40 KB. ``load`` reads a result or a run
directory into the same dict (``run_folder.load_results``'s), so one report code reads either tree.

``collect`` copies every finished run of a runs root into a results root. A run that is not a seed of
its cell (mmlib.paper.departures: it was trained with other parameters than the cell's protocol)
is filed apart from the paper's tables: under <results>/short/ when only its schedule is shorter
(e.g. ``sweep --epochs 30``), under <results>/other/ otherwise. The quick preset's runs are never
collected.
"""

import dataclasses
import gzip
import json
import math
from pathlib import Path

import pandas as pd

from mmlib import files, paper
from mmlib.config import SCHEDULE, describe, differences
from mmlib.train import run_folder

SHORT = "short"  # <results>/short/<table>/...: results of the protocol shortened (only the schedule differs)
OTHER = "other"  # <results>/other/<table>/...: results of other experiments (any other departure from the cell)
NOT_COLLECTED = {"quick"}  # tables whose runs stay in runs/ (the quick preset)
HISTORY = "history.csv"
CONFUSION = "confusion_{}.csv.gz"
EPOCHS = ("final", "best")
GROUPS = ("many", "medium", "few")
HISTORY_COLUMNS = ["epoch", "lr", "train_loss", "train_error", "test_error",
                   *(f"{g}_error" for g in GROUPS), "seconds"]


def load(run_dir, details: bool = True) -> dict:
    """A finished run directory's or result's results, as ``run_folder.load_results`` gives a run's.

    details False leaves out a result's history and confusion matrices (the tables need neither).
    """
    results = run_folder.load_results(run_dir)
    run_dir = Path(run_dir)
    if not details:
        return results
    if "history" not in results:
        history = pd.read_csv(run_dir / HISTORY)
        results["history"] = [_history_entry(row) for row in history.to_dict("records")]
    for epoch in EPOCHS:
        path = run_dir / CONFUSION.format(epoch)
        if "confusion" not in results[epoch] and path.exists():
            text = gzip.decompress(path.read_bytes()).decode()
            results[epoch]["confusion"] = [[int(v) for v in line.split(",")] for line in text.splitlines()]
    return results


def _history_entry(row: dict) -> dict:
    """A history.csv row as the trainer's history entry: test error and groups only where evaluated."""
    entry = {k: row[k] for k in ("epoch", "lr", "train_loss", "train_error", "seconds")}
    entry["epoch"] = int(entry["epoch"])
    if not math.isnan(row["test_error"]):
        entry["test_error"] = row["test_error"]
        entry["group_error"] = {g: None if math.isnan(row[f"{g}_error"]) else row[f"{g}_error"] for g in GROUPS}
    return entry


def result_files(run_dir) -> dict[str, bytes]:
    """The files of a finished run's result, by name (FINISHED last), deterministic to the byte."""
    results = run_folder.load_results(run_dir)
    run_dir = Path(run_dir)
    metrics = {epoch: {k: v for k, v in results[epoch].items() if k != "confusion"} for epoch in EPOCHS}
    metrics.update({k: results.get(k) for k in ("seconds", "fused_runs", "finished_at", "step")})
    history = pd.DataFrame([_history_row(entry) for entry in results["history"]], columns=HISTORY_COLUMNS)
    contents = {
        run_folder.CONFIG: (run_dir / run_folder.CONFIG).read_bytes(),
        run_folder.COUNTS: (run_dir / run_folder.COUNTS).read_bytes(),
        run_folder.METRICS: (json.dumps(_rounded(metrics), indent=1) + "\n").encode(),
        HISTORY: history.to_csv(index=False, float_format="%.6g").encode(),
        run_folder.PER_CLASS: (run_dir / run_folder.PER_CLASS).read_bytes(),
    }
    for epoch in EPOCHS:
        rows = "".join(",".join(str(int(v)) for v in row) + "\n" for row in results[epoch]["confusion"])
        contents[CONFUSION.format(epoch)] = gzip.compress(rows.encode(), mtime=0)
    contents[run_folder.FINISHED] = (run_dir / run_folder.FINISHED).read_bytes()
    return contents


def _history_row(entry: dict) -> dict:
    groups = entry.get("group_error") or {}
    return {**{k: entry.get(k) for k in HISTORY_COLUMNS}, **{f"{g}_error": groups.get(g) for g in GROUPS}}


def _rounded(value):
    """Floats to 6 significant digits, recursively (0.01 % of error is below any test set's resolution)."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


@dataclasses.dataclass
class Collection:
    """What ``collect`` did: each list holds (run folder, result folder or reason)."""

    written: list = dataclasses.field(default_factory=list)
    unchanged: list = dataclasses.field(default_factory=list)
    unfinished: list = dataclasses.field(default_factory=list)
    failed: list = dataclasses.field(default_factory=list)
    conflicting: list = dataclasses.field(default_factory=list)

    @property
    def refused(self) -> list:
        return self.unfinished + self.failed + self.conflicting

    def lines(self) -> list[str]:
        """A summary line, then one line per refused run."""
        out = [f"{len(self.written)} results written, {len(self.unchanged)} unchanged, {len(self.unfinished)} "
               f"unfinished, {len(self.failed)} failed and {len(self.conflicting)} conflicting runs refused"]
        for kind, items in (("unfinished", self.unfinished), ("failed", self.failed),
                            ("conflicting", self.conflicting)):
            out += [f"  {kind}: {run}: {why}" for run, why in items]
        return out


def run_folders(runs_root) -> list[Path]:
    """Every <table>/<setting>/<run>/seed<k> folder of a runs root whose table is collected, sorted."""
    root = Path(runs_root)
    if not root.is_dir():
        raise FileNotFoundError(f"runs root {root} does not exist (or is not a folder)")
    return sorted(
        path for table in paper.TABLES if table not in NOT_COLLECTED
        for path in root.glob(f"{table}/*/*/seed*") if path.is_dir() and run_folder.SEED_FOLDER.fullmatch(path.name)
    )


def result_folder(run: Path, runs_root, results_root) -> Path:
    """Where a finished run's result goes: the same relative path; under short/ for the protocol shortened (its
    schedule alone departs from its cell's), under other/ for any other departure or a folder of no cell."""
    relative = Path(run).relative_to(runs_root)
    table, setting, run_name = relative.parts[:3]
    cell = paper.cell_at(table, setting, run_name)
    recorded = files.read_json(Path(run) / run_folder.CONFIG)["config"]
    seed = int(run_folder.SEED_FOLDER.fullmatch(relative.parts[3]).group(1))
    departed = {k for k, _, _ in paper.departures(cell, recorded, seed)} if cell else {"cell"}
    apart = None if not departed else SHORT if departed <= SCHEDULE else OTHER
    return Path(results_root) / (Path(apart) / relative if apart else relative)


def collect(runs_root=None, results_root=None, replace: bool = False) -> Collection:
    """Copy every finished run's result from runs_root (default runs/) into results_root (default results/).

    Unfinished and failed runs are refused and listed. A result already there is left as it is when
    identical (so collecting twice changes nothing), and otherwise refused (listing what differs)
    unless ``replace``.
    """
    runs_root = Path(runs_root or files.RUNS)
    results_root = Path(results_root or files.RESULTS)
    done = Collection()
    for run in run_folders(runs_root):
        held = run_folder.state(run)
        if held.failure is not None:
            done.failed.append((run, f"{held.failure} (see {held.evidence})"))
            continue
        if not held.finished:
            epochs = held.config["epochs"] if held.config else "?"
            done.unfinished.append((run, f"not finished: {'?' if held.epoch is None else held.epoch} of {epochs} "
                                         "epochs checkpointed"))
            continue
        target = result_folder(run, runs_root, results_root)
        contents = result_files(run)
        conflict = _conflict(contents, target)
        if conflict is None:
            done.unchanged.append((run, target))
        elif conflict and not replace:
            done.conflicting.append((run, f"{target} holds {conflict}; --replace to overwrite it"))
        else:
            _write_result(contents, target)
            done.written.append((run, target))
    return done


def _write_result(contents: dict[str, bytes], target: Path) -> None:
    """Write the result's files atomically, FINISHED last (removed first), and drop files it no longer has."""
    (target / run_folder.FINISHED).unlink(missing_ok=True)
    for name, content in contents.items():
        files.atomic_write(target / name, lambda f, content=content: f.write(content))
    for stale in set(p.name for p in target.iterdir() if p.is_file()) - set(contents):
        (target / stale).unlink()


def _conflict(contents: dict[str, bytes], target: Path) -> str | None:
    """None if target holds exactly this result, "" if it holds none, else what differs."""
    if not target.exists() or not any(target.iterdir()):
        return ""
    existing = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()}
    if existing == contents:
        return None
    if run_folder.CONFIG not in existing:
        return "other files (no config.json)"
    ours = json.loads(contents[run_folder.CONFIG])["config"]
    theirs = json.loads(existing[run_folder.CONFIG])["config"]
    differing = differences(theirs, ours)
    if differing:
        return f"a result of another configuration ({describe(differing)}: there -> here)"
    return "a result of the same configuration with other results (another run of it)"


def summarize_runs(runs: list[dict]) -> pd.DataFrame:
    """One row per run: method, seed, MM variant, SAM's rho, final and best error, final many / medium / few-shot
    errors, and the step paths that trained it (graphs or eager; the reasons are in its metrics.json)."""
    rows = []
    for r in runs:
        config = r["config"]["config"]
        rows.append({
            "run_dir": r["run_dir"], "method": config["method"], "seed": config["seed"],
            "mm_variant": config["mm_variant"] if config["method"].startswith("mm") else "",
            "sam_rho": config.get("sam_rho") or 0.0,  # SAM's radius; 0: plain SGD
            "final_error": r["final"]["error"], "final_epoch": r["final"]["epoch"],
            "best_error": r["best"]["error"], "best_epoch": r["best"]["epoch"],
            **{f"{g}_error": r["final"]["group_error"][g] for g in GROUPS},
            "step": ", then ".join(p["path"] for p in r.get("step") or []),
        })
    return pd.DataFrame(rows)


