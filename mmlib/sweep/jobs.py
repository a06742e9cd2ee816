"""Jobs and the executors that run them: the interface between a sweep's plan and the machines.

A ``Job`` trains one run, or several as one fused model, in a fresh process: by default it executes
notebooks/train.ipynb with papermill (the executed notebook is the run's provenance); with the
"python" runner it runs ``python -m mmlib.sweep.jobs PARAMS.yaml``, the same training without a notebook
kernel, for machines where Jupyter is not installed (its output goes to train.log).

An executor runs a list of jobs, logging one line per run as its job ends, and returns an ``Outcome``:
the runs that failed, stopped early (time limit, signal: they resume) or were not started.
mmlib.sweep.local_executor.LocalExecutor runs them on worker threads of this machine, one per GPU;
mmlib.sweep.ray_executor.RayExecutor runs each as a Ray task. Both execute a job with ``execute_job`` and report
it with ``log_outcome``, so a run's files and lines are the same whichever ran it.
"""

import os
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import mmlib.notebook
from mmlib import errors, files
from mmlib.config import RunConfig
from mmlib.data import sources
from mmlib.stopping import Stop, when_orphaned
from mmlib.train import run_folder

TRAIN_NOTEBOOK = files.REPOSITORY / "notebooks" / "train.ipynb"
RUNNERS = run_folder.LOGS  # how a job runs -> its log, written into every run directory of the job
# What a run directory holds for its readers, less what only its trainer needs (checkpoints, checkpoint.json,
# .lock): the files collect takes (mmlib.report.results.result_files), FAILED, the executed notebook and the job's log,
# the figures the notebook saves beside them (curves, per_class, confusion; .png and .pdf) and TensorBoard's
# scalars. Glob patterns, relative to the run directory.
OUTPUTS = (run_folder.CONFIG, run_folder.COUNTS, run_folder.METRICS, run_folder.PER_CLASS, run_folder.FINISHED,
           run_folder.FAILED, run_folder.NOTEBOOK, *RUNNERS.values(), "*.png", "*.pdf", "tensorboard/*")


@dataclass
class Job:
    """One execution of train.ipynb: one run, or several trained as one fused model."""

    labels: list[str]  # "<table> <setting> <run name> seed<k>", one per run
    run_dirs: list[Path]
    params: list[dict]  # every run's notebook parameters (RunConfig fields)
    deadline: float | None = None  # time.time() before which the job stops, checkpoint written (--time-limit)
    stop_file: str | None = None  # once this file exists, the job stops at the end of its epoch (a signalled sweep)

    def notebook_parameters(self) -> dict:
        first = {**self.params[0], "run_dir": str(self.run_dirs[0])}
        others = [{**p, "run_dir": str(d)} for p, d in zip(self.params[1:], self.run_dirs[1:])]
        return {**first, "fused_runs": others, "deadline": self.deadline, "stop_file": self.stop_file}

    def moved(self, run_dirs: list[Path]) -> "Job":
        """The same job training into other run directories (e.g. a node's scratch folder)."""
        return Job(self.labels, run_dirs, self.params, self.deadline, self.stop_file)


@dataclass
class Outcome:
    """What a sweep's runs came to, beyond those that finished."""

    failed: list[tuple[str, Path]] = field(default_factory=list)  # (label, its notebook or log): failed, see why
    stopped: list[str] = field(default_factory=list)  # labels of runs stopped early, checkpointed: they resume
    not_started: list[str] = field(default_factory=list)  # labels of runs not started: too little time, or a signal
    # (labels, seconds to its first checkpoint) of jobs not started because they need more than the whole time limit
    too_long: list[tuple[list[str], float]] = field(default_factory=list)

    @property
    def interrupted(self) -> bool:
        """Whether the same command has more to do for a reason of time (a time limit, a signal)."""
        return bool(self.stopped or self.not_started)


def outputs(run_dir: Path) -> list[Path]:
    """The run directory's files that OUTPUTS names, sorted."""
    return sorted({path for pattern in OUTPUTS for path in Path(run_dir).glob(pattern) if path.is_file()})


def execute_job(job: Job, gpu: int | None = None, runner: str = "notebook", started=None) -> str:
    """Train the job in a fresh process (its own GPUs, its own failures); returns "done", "stopped" (early, its
    checkpoints written: StoppedError's exit code) or "failed".

    runner "notebook": execute train.ipynb; "python": ``python -m mmlib.sweep.jobs`` (no notebook kernel needed).
    The executed notebook and the job's log land in every run directory of the job. ``started(process)``, if
    given, receives the job's process as it starts (to stop it at once). A run another process is training
    (e.g. a second sweep over the same folder) is left alone: its files are that process's.
    """
    check_runner(runner)
    if any(run_folder.lock_owner(d) is not None for d in job.run_dirs):
        return "failed"
    first = job.run_dirs[0]
    first.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    if runner == "notebook":
        done = mmlib.notebook.execute_in_new_process(TRAIN_NOTEBOOK, first / run_folder.NOTEBOOK,
                                                     job.notebook_parameters(), env, started=started)
    else:
        done = mmlib.notebook.call_module("mmlib.sweep.jobs", [], job.notebook_parameters(), env, started=started)
    files.write_text(first / RUNNERS[runner], done.stdout + done.stderr + f"{run_folder.EXIT_LINE}{done.returncode}\n")
    for other in job.run_dirs[1:]:  # every run of the job keeps its record of what happened
        other.mkdir(parents=True, exist_ok=True)
        for name in (run_folder.NOTEBOOK, RUNNERS[runner]) if runner == "notebook" else (RUNNERS[runner],):
            shutil.copyfile(first / name, other / name)
    return {0: "done", errors.StoppedError.exit_code: "stopped"}.get(done.returncode, "failed")


def check_runner(runner: str) -> None:
    """Refuse an unknown runner, and the notebook runner where the repository's notebook is not (a wheel install)."""
    if runner not in RUNNERS:
        raise ValueError(f"unknown runner {runner!r}; valid: {', '.join(RUNNERS)}")
    if runner != "notebook":
        return
    if not TRAIN_NOTEBOOK.exists():
        raise FileNotFoundError(f"{TRAIN_NOTEBOOK} not found: the notebook runner executes the repository's notebooks, "
                                "so install mmlib from a checkout (pip install -e .), or use --runner python")
    try:
        import papermill  # noqa: F401  (the notebook runner's; a machine without Jupyter has none)
    except ImportError:
        raise ValueError("the notebook runner needs papermill and a Jupyter kernel (pip install -e .); on a machine "
                         "without them use --runner python") from None


def configs_of(parameters: dict) -> tuple[list[RunConfig], list[Path]]:
    """A job's parameters (``Job.notebook_parameters``, as train.ipynb receives them) as its runs' configs and
    run directories: the first run's parameters, each fused run's overriding them."""
    first = {k: v for k, v in parameters.items() if k not in ("run_dir", "fused_runs", "deadline", "stop_file")}
    runs = [{"run_dir": parameters["run_dir"]}] + list(parameters.get("fused_runs", []))
    configs = [RunConfig.from_dict({**first, **{k: v for k, v in run.items() if k != "run_dir"}}) for run in runs]
    for config in configs:
        sources.check(config)
    return configs, [Path(run["run_dir"]) for run in runs]


def log_outcome(job: Job, status: str, seconds: float, done, total: int, log, outcome: Outcome) -> None:
    """Log one line per run of a job that ended with ``status`` (execute_job's; ``done`` counts runs), and add its
    unfinished runs to ``outcome``. A run is judged by its own folder (run_folder.state): in a fused job one run
    can fail (diverge) while the others finish."""
    states = [run_folder.state(d) for d in job.run_dirs]
    for label, state in zip(job.labels, states):
        line = f"[{next(done)}/{total}] {label}: "
        if state.finished:
            metrics = files.read_json(state.path / run_folder.METRICS)
            line += f"final {metrics['final']['error']:.2f}%, best {metrics['best']['error']:.2f}% ({seconds:.0f} s)"
            if status == "failed" and not any(s.diverged for s in states):  # not a fused run diverging
                line += f"; its notebook then failed: {states[0].why()}"
        elif status == "stopped" and state.diverged is None:
            outcome.stopped.append(label)
            line += f"stopped early after epoch {state.epoch or 0}; it resumes ({seconds:.0f} s)"
        else:
            outcome.failed.append((label, state.evidence))
            line += f"FAILED: {state.why()} (see {state.evidence})"
        log(line)


def log_error(job: Job, error: Exception, done, total: int, log, outcome: Outcome) -> None:
    """Log and record as failed every run of a job the sweep could not run or judge (``error``, e.g. a full disk
    as it wrote the job's log): the job fails alone, and the sweep goes on."""
    for label, run_dir in zip(job.labels, job.run_dirs):
        outcome.failed.append((label, run_folder.state(run_dir).evidence))
        log(f"[{next(done)}/{total}] {label}: FAILED: the sweep could not run its job: "
            f"{type(error).__name__}: {error}")


def main(argv: list[str] | None = None) -> int:
    """python -m mmlib.sweep.jobs PARAMS.yaml: train a job (its parameters as train.ipynb takes them) in this process;
    one line per finished run, or "error: ..." and the command line's exit code (mmlib.errors)."""
    import yaml

    from mmlib.train import trainer

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mmlib.sweep.jobs PARAMETERS.yaml", file=sys.stderr)
        return 2
    # a killed sweep or Ray worker must not leave its job training on: it stops as on SIGTERM (at the epoch's end)
    when_orphaned(lambda: os.kill(os.getpid(), signal.SIGTERM))

    def train() -> int:
        parameters = yaml.safe_load(Path(args[0]).read_text())
        configs, run_dirs = configs_of(parameters)
        results = trainer.train_many(configs, run_dirs, Stop(parameters.get("deadline"), parameters.get("stop_file")))
        for result in results:
            print(f"{result['run_dir']}: final {result['final']['error']:.2f}%, best {result['best']['error']:.2f}%")
        return 0

    return errors.exit_status(train)


if __name__ == "__main__":
    sys.exit(main())
