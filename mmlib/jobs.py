"""Jobs and the executors that run them: the interface between a sweep's plan and the machines.

A ``Job`` is one execution of notebooks/train.ipynb: one run, or several trained as one fused model.
An executor runs a list of jobs and returns the runs that failed, logging one line per run as its
job ends. ``LocalExecutor`` (here) runs them on worker threads of this machine, one per GPU;
mmlib.ray_backend.RayExecutor runs each as a Ray task. Both execute a job with ``run_job`` and
report it with ``record_outcome``, so a run's files and lines are the same whichever ran it.
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

import mmlib.notebook
from mmlib import rundir

TRAIN_NOTEBOOK = rundir.REPOSITORY / "notebooks" / "train.ipynb"
OUTPUT_NOTEBOOK = "train.ipynb"  # the executed notebook, in every run directory of the job
LOG = "papermill.log"
# What a run directory holds for its readers, less what only its trainer needs (checkpoints, checkpoint.json,
# .lock): the files collect takes (mmlib.results.record_files), FAILED, the executed notebook and its log,
# the figures the notebook saves beside them (curves, per_class, confusion; .png and .pdf) and TensorBoard's
# scalars. Glob patterns, relative to the run directory.
OUTPUTS = (rundir.CONFIG, rundir.COUNTS, rundir.METRICS, rundir.PER_CLASS, rundir.FINISHED, rundir.FAILED,
           OUTPUT_NOTEBOOK, LOG, "*.png", "*.pdf", "tensorboard/*")


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

    def moved(self, run_dirs: list[Path]) -> "Job":
        """The same job training into other run directories (e.g. a node's scratch folder)."""
        return Job(self.labels, run_dirs, self.params)


def outputs(run_dir: Path) -> list[Path]:
    """The run directory's files that OUTPUTS names, sorted."""
    return sorted({path for pattern in OUTPUTS for path in Path(run_dir).glob(pattern) if path.is_file()})


def run_job(job: Job, gpu: int | None = None) -> bool:
    """Execute the job's notebook in a fresh process (its own GPUs, its own failures); True if it succeeded.

    The executed notebook and papermill's log land in the first run directory, the notebook copied to
    the others. A run another process is training (e.g. a second sweep over the same folder) is left
    alone: its notebook and log are that process's.
    """
    if any(rundir.lock_owner(d) is not None for d in job.run_dirs):
        return False
    first = job.run_dirs[0]
    first.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    done = mmlib.notebook.run(TRAIN_NOTEBOOK, first / OUTPUT_NOTEBOOK, job.notebook_parameters(), env=env)
    rundir.write_text(first / LOG, done.stdout + done.stderr)
    for other in job.run_dirs[1:]:
        other.mkdir(parents=True, exist_ok=True)
        if (first / OUTPUT_NOTEBOOK).exists():
            shutil.copyfile(first / OUTPUT_NOTEBOOK, other / OUTPUT_NOTEBOOK)
    return done.returncode == 0


def failure_reason(run_dir: Path) -> str:
    """One line on why a run failed: another process holds it, else the failing cell's error, else the
    log's last line."""
    owner = rundir.lock_owner(run_dir)
    if owner is not None:
        return f"{run_dir} is in use by process {owner}"
    error = mmlib.notebook.error_of(Path(run_dir) / OUTPUT_NOTEBOOK)
    if error is not None:
        return error
    with contextlib.suppress(OSError):
        lines = [line for line in (Path(run_dir) / LOG).read_text().splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()
    return "no error recorded (the notebook did not run)"


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


class LocalExecutor:
    """Jobs on this machine: one worker thread per GPU of ``gpus`` (each job seeing only its GPU), or one."""

    def __init__(self, gpus: list[int] | None = None):
        self.gpus = gpus or [None]

    def run(self, jobs: list[Job], log=print) -> list[tuple[str, Path]]:
        """Run the jobs; returns the failed runs and their notebooks."""
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
                ok = run_job(job, gpu)
                seconds = time.perf_counter() - start
                with lock:
                    failures.extend(record_outcome(job, ok, seconds, done, total, log))

        workers = [threading.Thread(target=worker, args=(gpu,)) for gpu in self.gpus]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return failures
