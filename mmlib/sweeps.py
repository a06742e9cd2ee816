"""Papermill batches: every (cell, seed) of a table run through notebooks/train.ipynb.

Each run lands in <out>/<table>/<setting>/<run name>/seed<k>/ with the executed notebook beside its
results (the notebook is the provenance). Finished runs are skipped, interrupted ones resume from
their checkpoints (the trainer does that), a failed run does not stop the others. Runs of one
setting that can train as one fused model (mmlib.training.fusion_key) are grouped, up to ``fuse``
runs a notebook; on several GPUs there is one worker per GPU, each seeing only its own.
"""

import contextlib
import itertools
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat

import mmlib.notebook
from mmlib import paper, rundir
from mmlib.config import RunConfig, did_you_mean
from mmlib.errors import CorruptFileError
from mmlib.training import fusion_key

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
TRAIN_NOTEBOOK = NOTEBOOKS / "train.ipynb"
OUTPUT_NOTEBOOK = "train.ipynb"

# The README's main job: a few minutes offline on a CPU, into a folder of its own.
QUICK_PRESET = {"table": "quick", "seeds": [0, 1], "fuse": 2,
                "overrides": {"arch": "resnet8", "epochs": 20, "batch_size": 32}}
# Run parameters a sweep sets itself, and the option that sets them.
SWEEP_OWNED = {"seed": "--seeds", "data_root": "--data-root", "run_dir": "--out"}
# Where the table's cells set a parameter, the option that chooses among them.
CELL_OPTIONS = {"method": "--methods", "dataset": "--settings", "imb_type": "--settings", "ratio": "--settings",
                "mm_variant": "--mm-variants", "s": "--mm-scale (MM cells)"}


@dataclass
class Job:
    """One execution of train.ipynb: one run, or several trained as one fused model."""

    labels: list[str]  # "<table> <setting> <run name> seed<k>", one per run
    run_dirs: list[Path]
    params: list[dict]  # every run's notebook parameters (RunConfig fields)

    def notebook_parameters(self) -> dict:
        first = {**self.params[0], "run_dir": str(self.run_dirs[0])}
        others = [{**p, "run_dir": str(d)} for p, d in zip(self.params[1:], self.run_dirs[1:])]
        return {**first, "fused_runs": others}


def parse_data_roots(values: list[str] | None) -> dict[str | None, str]:
    """``PATH`` (for every dataset), ``cifar10=PATH cifar100=PATH``, or a setting's own dataset file
    (``cifar10-exp-100=FILE.npz``) -> {setting, dataset or None: path}; a setting's entry wins over its dataset's."""
    roots = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if sep and (name in ("cifar10", "cifar100") or name in paper.SETTINGS):
            roots[name] = path
        else:
            roots[None] = value
    return roots


def plan(table: str, out: str | Path, seeds=(0,), settings=None, methods=None, mm_variants=("equations",),
         mm_scale=None, data_roots: dict | None = None, overrides: dict | None = None, fuse: int = 1):
    """The jobs to run and the run directories already finished; every config is validated here."""
    if fuse < 1:
        raise ValueError(f"fuse must be >= 1, got {fuse}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct integers, got {list(seeds)}")
    data_roots = {k: str(Path(v).resolve()) for k, v in (data_roots or {}).items()}
    out = Path(out).resolve()
    check_overrides(overrides or {}, paper.cells(table, settings, methods, mm_variants, mm_scale))
    pending, finished = [], []
    for cell, seed in itertools.product(paper.cells(table, settings, methods, mm_variants, mm_scale), seeds):
        run_dir = cell.path(out) / f"seed{seed}"
        if rundir.is_finished(run_dir):
            finished.append(run_dir)
            continue
        root = data_roots.get(cell.setting.name, data_roots.get(cell.setting.dataset, data_roots.get(None)))
        params = cell.run_params(**{"quiet": True, **(overrides or {})}, seed=seed, **({"data_root": root} if root else {}))
        config = RunConfig.from_dict(params)
        label = f"{table} {cell.setting.name} {cell.run_name} seed{seed}"
        pending.append((fusion_key(config), _planned_epoch(run_dir), label, run_dir, params))
    jobs = []
    for (_, epoch), group in itertools.groupby(sorted(pending, key=lambda p: p[:2]), key=lambda p: p[:2]):
        group = list(group)
        for start in range(0, len(group), fuse if epoch >= 0 else 1):
            chunk = group[start:start + fuse]
            jobs.append(Job([c[2] for c in chunk], [c[3] for c in chunk], [c[4] for c in chunk]))
    return jobs, finished


def _planned_epoch(run_dir: Path) -> int:
    """The epoch a run resumes from, for grouping; -1 if its directory is unusable: it then runs alone,
    so that its notebook fails with the reason and the others are not held back."""
    with contextlib.suppress(OSError, CorruptFileError):
        info = rundir.checkpoint_info(run_dir)
        return 0 if info is None else info["epoch"]
    return -1


def failure_reason(run_dir: Path) -> str:
    """One line on why a run's notebook failed: another process holds the run, else the failing cell's
    error, else papermill.log's last line."""
    owner = rundir.lock_owner(run_dir)
    if owner is not None:
        return f"{run_dir} is in use by process {owner}"
    with contextlib.suppress(OSError, ValueError, AttributeError, KeyError):
        notebook = nbformat.read(Path(run_dir) / OUTPUT_NOTEBOOK, as_version=4)
        for cell in notebook.cells:
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    return f"{output['ename']}: {output['evalue']}".splitlines()[0]
    with contextlib.suppress(OSError):
        lines = [line for line in (Path(run_dir) / "papermill.log").read_text().splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()
    return "no error recorded (the notebook did not run)"


def check_overrides(overrides: dict, cells: list[paper.Cell]) -> None:
    """Refuse --set keys that are no run parameter, that the sweep sets itself, or that the table's cells set."""
    for key in overrides:
        if key in SWEEP_OWNED:
            raise ValueError(f"--set {key}: the sweep sets {key} for every run; use {SWEEP_OWNED[key]}")
        if key not in RunConfig.names():
            raise ValueError(f"--set {key}: unknown parameter{did_you_mean(key, RunConfig.names())}; "
                             f"python -m mmlib train --help lists the run parameters")
        if any(key in cell.run_params() for cell in cells):
            option = f"; choose them with {CELL_OPTIONS[key]}" if key in CELL_OPTIONS else ""
            raise ValueError(f"--set {key}: the table's cells set {key} themselves{option}")


def execute(jobs: list[Job], gpus: list[int] | None = None, notebook: Path = TRAIN_NOTEBOOK, log=print) -> list[tuple[str, Path]]:
    """Run the jobs, one worker per GPU (or one on the CPU); returns the failed runs and their notebooks."""
    todo = queue.Queue()
    for job in jobs:
        todo.put(job)
    failures, lock = [], threading.Lock()
    total, done = sum(len(j.run_dirs) for j in jobs), itertools.count(1)

    def worker(gpu: int | None):
        while True:
            try:
                job = todo.get_nowait()
            except queue.Empty:
                return
            start = time.perf_counter()
            ok = _run_notebook(job, notebook, gpu)
            seconds = time.perf_counter() - start
            with lock:
                failures.extend(record_outcome(job, ok, seconds, done, total, log))

    workers = [threading.Thread(target=worker, args=(gpu,)) for gpu in (gpus or [None])]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return failures


def record_outcome(job: Job, ok: bool, seconds: float, done, total: int, log) -> list[tuple[str, Path]]:
    """Log one line per run of a finished job (``done`` counts runs); returns its failed runs and their notebooks."""
    failures = []
    for label, run_dir in zip(job.labels, job.run_dirs):
        line = f"[{next(done)}/{total}] {label}: "
        if ok and rundir.is_finished(run_dir):
            metrics = rundir.read_json(run_dir / rundir.METRICS)
            line += f"final {metrics['final']['error']:.2f}%, best {metrics['best']['error']:.2f}% ({seconds:.0f} s)"
        else:
            failures.append((label, run_dir / OUTPUT_NOTEBOOK))
            line += f"FAILED: {failure_reason(run_dir)} (see {run_dir / OUTPUT_NOTEBOOK})"
        log(line)
    return failures


def _run_notebook(job: Job, notebook: Path, gpu: int | None) -> bool:
    """Execute the notebook in a fresh process (so each worker sees only its GPU); copy it to every run.

    A run another process is training (e.g. a second sweep over the same folder) is left alone: its
    notebook and papermill.log are that process's.
    """
    if any(rundir.lock_owner(d) is not None for d in job.run_dirs):
        return False
    first = job.run_dirs[0]
    first.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    done = mmlib.notebook.run(notebook, first / OUTPUT_NOTEBOOK, job.notebook_parameters(), env=env)
    rundir.write_text(first / "papermill.log", done.stdout + done.stderr)
    for other in job.run_dirs[1:]:
        other.mkdir(parents=True, exist_ok=True)
        if (first / OUTPUT_NOTEBOOK).exists():
            shutil.copyfile(first / OUTPUT_NOTEBOOK, other / OUTPUT_NOTEBOOK)
    return done.returncode == 0


def sweep(table: str, out: str | Path = "runs", seeds=(0,), settings=None, methods=None, mm_variants=("equations",),
          mm_scale=None, data_roots=None, overrides=None, fuse: int = 1, gpus=None, dry_run=False, log=print,
          backend: str = "local", ray_options: dict | None = None) -> list:
    """Plan, then run a table's cells; returns the failed runs (label, notebook path).

    backend "local": one worker per GPU of ``gpus``; "ray": one Ray task per job, ``ray_options`` being
    mmlib.ray_backend.execute's address, gpus_per_job and shared_fs."""
    if backend == "ray":
        if gpus:
            raise ValueError("--gpus picks local GPUs; with --backend ray give --gpus-per-job and Ray assigns them")
        from mmlib import ray_backend  # Ray is an optional extra

        ray_backend.check_gpus_per_job((ray_options or {}).get("gpus_per_job", 1))
    elif ray_options:
        raise ValueError("--address, --gpus-per-job and --no-shared-fs (ray_options) need --backend ray")
    if not TRAIN_NOTEBOOK.exists():
        raise FileNotFoundError(f"{TRAIN_NOTEBOOK} not found: sweeps execute the repository's notebooks, so install "
                                "mmlib from a checkout (pip install -e .)")
    jobs, finished = plan(table, out, seeds, settings, methods, mm_variants, mm_scale, data_roots, overrides, fuse)
    runs = sum(len(j.run_dirs) for j in jobs)
    log(f"{table}: {runs} runs to do in {len(jobs)} notebooks, {len(finished)} finished runs skipped")
    if dry_run:
        for job in jobs:
            log(("fused: " if len(job.labels) > 1 else "") + " | ".join(job.labels))
        return []
    if backend == "ray":
        failures = ray_backend.execute(jobs, out, **(ray_options or {}), log=log)
    else:
        failures = execute(jobs, gpus, log=log)
    if failures:
        log(f"{len(failures)} runs failed:")
        for label, notebook in failures:
            log(f"  {label}: {failure_reason(notebook.parent)} (see {notebook})")
    return failures


def report_quick(runs_root: str | Path, log=print) -> list[Path]:
    """The quick preset's table and per-class figure (every trained method on every quick setting, what is
    missing said so) into <runs_root>/quick/figures, never figures/; returns the notebooks that failed."""
    from mmlib import reports

    return reports.run_notebooks(reports.QUICK_NOTEBOOKS, runs_root, Path(runs_root) / "quick" / "figures", log)
