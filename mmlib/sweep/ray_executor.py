"""The Ray executor of sweeps: every job is one Ray task, on this machine or across a cluster.

A task executes notebooks/train.ipynb through papermill on its worker exactly as the local executor
does (mmlib.sweep.jobs.execute_job), on the GPUs Ray assigns it (Ray sets CUDA_VISIBLE_DEVICES). With a
filesystem that every node mounts, tasks write straight into the run directories under ``out``.
Without one (``shared_fs=False``) a task trains in a node-local scratch folder and returns its runs'
outputs (mmlib.sweep.jobs.OUTPUTS: its result's files, notebook, log, figures; no checkpoint); the driver writes them under
``out``. A task whose worker dies is retried (MAX_RETRIES) and resumes from its checkpoint where that
survives; a notebook that fails for its own reasons is not retried. Ctrl-C cancels every pending task.
"""

import hashlib
import itertools
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path

from tqdm import tqdm

from mmlib import files
from mmlib.sweep import jobs
from mmlib.train import run_folder

try:
    import ray
except ModuleNotFoundError as err:
    raise ValueError('--backend ray needs Ray: pip install -e ".[ray]"') from err

MAX_RETRIES = 3  # retries of a task whose worker or node died; a failing notebook is never retried
MARKER_WAIT = 60  # seconds a worker waits to see the driver's marker under --out (NFS caches a miss ~30 s)


class NotSharedError(ValueError):
    """A worker cannot see the driver's --out: the filesystem is not shared."""


def check_gpus_per_job(gpus_per_job: float) -> None:
    if gpus_per_job < 0 or (gpus_per_job > 1 and gpus_per_job != int(gpus_per_job)):
        raise ValueError(f"--gpus-per-job must be a fraction of one GPU (0 to 1) or a whole number, "
                         f"got {gpus_per_job:g}")


def scratch_root(out: Path) -> Path:
    """A worker's node-local folder for the runs of sweeps into ``out`` (kept across retries on that node)."""
    return Path(tempfile.gettempdir()) / "mmlib-ray" / hashlib.sha1(str(out).encode()).hexdigest()[:12]


@ray.remote(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False)
def _execute_job(job: jobs.Job, out: Path, marker: Path | None, runner: str,
                 lock_wait: float) -> tuple[str, float, list[dict] | None]:
    """Execute one job on a worker; returns (execute_job's status, seconds, each run's files or None if shared)."""
    if marker is not None and not _wait_for(marker.exists, MARKER_WAIT):
        raise NotSharedError(f"--out {out} is not shared with node {socket.gethostname()}: put it on a filesystem "
                             "every node mounts, or give --no-shared-fs")
    local = job
    if marker is None:
        scratch = scratch_root(out)
        local = job.moved([scratch / d.relative_to(out) for d in job.run_dirs])
    # A retried task's killed attempt is reaped a moment late, a dead node's lock on NFS outlives it by the
    # lease; still held after lock_wait, a run is another live process's: execute_job leaves it alone and says so.
    _wait_for(lambda: all(run_folder.lock_owner(d) is None for d in local.run_dirs), lock_wait)
    start = time.perf_counter()
    status = jobs.execute_job(local, runner=runner)
    seconds = time.perf_counter() - start
    if marker is not None:
        return status, seconds, None
    outputs = [_output_files(d) for d in local.run_dirs]
    for run_dir in local.run_dirs:
        if run_folder.is_finished(run_dir):  # its files are on their way to the driver
            shutil.rmtree(run_dir)
    return status, seconds, outputs


def _wait_for(condition, seconds: float) -> bool:
    """Whether ``condition()`` holds within ``seconds``, asked once a second."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return True


def _output_files(run_dir: Path) -> dict[str, bytes]:
    """A run directory's outputs (mmlib.sweep.jobs.OUTPUTS) by relative path, with their contents."""
    return {path.relative_to(run_dir).as_posix(): path.read_bytes() for path in jobs.outputs(run_dir)}


def _write_outputs(run_dir: Path, contents: dict[str, bytes]) -> None:
    """Write a run's files under the driver's run directory, FINISHED last (as a run writes them)."""
    for name in sorted(contents, key=lambda n: n == run_folder.FINISHED):
        files.atomic_write(run_dir / name, lambda f, data=contents[name]: f.write(data))


class RayExecutor:
    """Jobs as Ray tasks, on the cluster at ``address`` (None: a new local Ray instance), each asking for
    ``gpus_per_job`` GPUs (None: 1 where the cluster has GPUs, else 0) and one CPU; run directories under
    ``out``, written by the tasks (``shared_fs``) or sent back to the driver; each job run by ``runner``
    (mmlib.sweep.jobs.execute_job). A task finding one of its runs locked waits up to ``lock_wait`` seconds for it, then
    fails it naming the holder's pid and host."""

    def __init__(self, out: str | Path, address: str | None = None, gpus_per_job: float | None = None,
                 shared_fs: bool = True, runner: str = "notebook", lock_wait: float = run_folder.LOCK_WAIT):
        if gpus_per_job is not None:
            check_gpus_per_job(gpus_per_job)
        jobs.check_runner(runner)
        if not lock_wait >= 0:
            raise ValueError(f"--lock-wait must be a number of seconds >= 0, got {lock_wait:g}")
        self.out, self.address, self.gpus_per_job, self.shared_fs = (Path(out).resolve(), address, gpus_per_job,
                                                                     shared_fs)
        self.runner, self.lock_wait = runner, lock_wait

    def execute(self, planned: list[jobs.Job], log=print, deadline: float | None = None, times=None) -> jobs.Outcome:
        """Run the jobs; with ``deadline`` (time.time(), the nodes' clocks agreeing) each job stops before it, its
        checkpoint written (one starting too late stops before its first epoch). ``times`` goes unused: Ray
        schedules every task at once."""
        started = not ray.is_initialized()
        if started:
            try:
                ray.init(address=self.address or "local")  # "local": a new instance, even where a cluster runs
            except ConnectionError as err:
                raise ValueError(f"--address {self.address}: {err}") from None
        marker = self.out / f".ray-sweep-{uuid.uuid4().hex}" if self.shared_fs else None
        pending = {}
        try:
            task = _execute_job.options(num_gpus=self._gpus_per_job())
            if marker is not None:
                files.write_text(marker, "a sweep's workers check that they see this file\n")
            for job in planned:
                job.deadline = deadline
            pending = {task.remote(job, self.out, marker, self.runner, self.lock_wait): job for job in planned}
            outcome, total, done = jobs.Outcome(), sum(len(j.run_dirs) for j in planned), itertools.count(1)
            with tqdm(total=total, unit="run", desc="runs", disable=None) as bar:
                while pending:
                    [ref], _ = ray.wait(list(pending), num_returns=1)
                    job = pending.pop(ref)
                    status, seconds, outputs = _outcome(ref, job, log)
                    for run_dir, contents in zip(job.run_dirs, outputs or []):
                        _write_outputs(run_dir, contents)
                    with tqdm.external_write_mode():
                        jobs.log_outcome(job, status, seconds, done, total, log, outcome)
                    bar.update(len(job.run_dirs))
            return outcome
        except KeyboardInterrupt:
            log(f"interrupted: cancelled {len(pending)} notebooks; finished runs are kept, and the same command "
                "resumes")
            raise
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if marker is not None:
                marker.unlink(missing_ok=True)
            if started:
                ray.shutdown()

    def _gpus_per_job(self) -> float:
        """The GPUs a task asks for: as given (refused beyond the cluster's), else 1 with GPUs, 0 without."""
        gpus = ray.cluster_resources().get("GPU", 0)
        if self.gpus_per_job is None:
            return 1 if gpus else 0
        if self.gpus_per_job > gpus:
            raise ValueError(f"--gpus-per-job {self.gpus_per_job:g}, but the Ray cluster has {gpus:g} GPUs; "
                             "give --gpus-per-job 0 to run on CPUs, or leave it out to choose from the cluster")
        return self.gpus_per_job


def _outcome(ref, job: jobs.Job, log) -> tuple[str, float, list[dict] | None]:
    """A finished task's result; a task that Ray gave up on (its worker died every try) counts as failed."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:  # the task's own code raised (never retried)
        if isinstance(err.cause, NotSharedError):
            raise ValueError(str(err.cause)) from None
        reason = repr(err.cause)
    except ray.exceptions.RayError as err:
        reason = f"its worker died on each of {MAX_RETRIES + 1} tries ({str(err).splitlines()[0]})"
    with tqdm.external_write_mode():
        log(f"{' | '.join(job.labels)}: {reason}")
    return "failed", 0.0, None
