"""A run's folder: what a run writes (whole files: mmlib.files), its lock, and the one reader of its state.

    config.json        every resolved parameter, mmlib / torch versions, device, git commit
    class_counts.json  the training set's class names, counts, many/medium/few groups, description
    checkpoint.pt      model, optimizer, completed epochs, every RNG state, history so far, the resolved
                       configuration it was trained with (the authority on resume)
    checkpoint.prev.pt the checkpoint before, kept until the new one is complete
    checkpoint.json    the latest checkpoint's epoch and configuration, readable without loading it
    checkpoint.corrupt-<UTC time>.pt   a corrupt checkpoint.pt, set aside by the trainer that found it
    .lock              held (flock) by the process training the run; holds "<pid> on <host>"
    metrics.json       final and best epoch results, per-epoch history
    per_class.csv      per-class training count, group, final and best error
    FINISHED           written last: the run is complete
    FAILED             the run stopped for good: why, at which epoch and step (a diverging run of a fused group)
    train.ipynb        the executed notebook of the job that trained it (a sweep's notebook runner)
    papermill.log, train.log   the output of the job that last trained it (notebook or python runner), ending
                       with its exit code

``state`` reads all of it the one way every reader needs it (the trainer, a sweep's plan, the executors,
collect): finished, failed and why, the epoch it resumes from, the configuration it was trained with, and
the process holding it.
"""

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import socket
import time
import warnings
from pathlib import Path

from mmlib.errors import CorruptFileError, RunDirBusyError, StoppedError
from mmlib.files import atomic_write, read_json, set_aside, write_json

SEED_FOLDER = re.compile(r"seed(\d+)")  # a run's folder under its table cell's: runs/<table>/<setting>/<run>/seed<k>
CONFIG, COUNTS, CHECKPOINT, METRICS, PER_CLASS, FINISHED = (
    "config.json",
    "class_counts.json",
    "checkpoint.pt",
    "metrics.json",
    "per_class.csv",
    "FINISHED",
)
PREVIOUS_CHECKPOINT, CHECKPOINT_INFO, LOCK = "checkpoint.prev.pt", "checkpoint.json", ".lock"
NOTEBOOK = "train.ipynb"  # the executed notebook of the job that trained the run
LOGS = {"notebook": "papermill.log", "python": "train.log"}  # a job's log, by how it ran (mmlib.sweep.jobs)
EXIT_LINE = "exit code "  # a job's log ends with its process's: "exit code 0"
FAILED = "FAILED"  # a run that failed for good (a diverged fused run): why, at which epoch and step
BUSY_RETRY = 1.0  # seconds a lock attempt retries before it calls the run busy (outlasting any probe)
# Seconds a Ray task waits for its run's lock (--lock-wait): on NFSv4 a dead node's lock outlives it by the
# server's lease, 90 s by default.
LOCK_WAIT = 120


@contextlib.contextmanager
def locked(folder: Path, wait: bool = False):
    """Hold ``folder``'s lock: an OS lock (flock), released on exit and by the OS if the process dies.

    The lock file records the holder as "<pid> on <host>". Another holder makes this fail within
    BUSY_RETRY seconds with RunDirBusyError naming it, or with ``wait``, wait for it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            _lock_exclusively(fd, wait)
        except BlockingIOError:
            raise RunDirBusyError(f"{folder} is in use by process {_holder(fd)} (lock {folder / LOCK}): wait for it "
                                  "to end, or give another run directory") from None
        # Written over the old text, then cut to length: a reader never finds the file empty or half a line.
        holder = f"{os.getpid()} on {socket.gethostname()}\n".encode()
        os.pwrite(fd, holder, 0)
        os.ftruncate(fd, len(holder))
        yield
    finally:
        os.close(fd)


def _lock_exclusively(fd: int, wait: bool) -> None:
    """flock ``fd`` exclusively; without ``wait``, BlockingIOError if it stays held for BUSY_RETRY seconds.

    Retried because a probe (lock_owner) holds the lock shared for microseconds, which alone would make
    a trainer's first attempt fail as if the run were busy.
    """
    if wait:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + BUSY_RETRY
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _holder(fd: int) -> str:
    """The holder a lock file records: "<pid> on <host>" (an older mmlib wrote "<pid>" alone), else "unknown"."""
    lines = os.pread(fd, 512, 0).decode(errors="replace").strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def lock_owner(folder: Path) -> str | None:
    """The holder of ``folder``'s lock, "<pid> on <host>"; None if it is free (a snapshot: it may change right
    after)."""
    try:
        fd = os.open(Path(folder) / LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        # A probe: shared, so it never blocks another probe, and held for microseconds, which a trainer's
        # exclusive attempt outlasts (_lock_exclusively).
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _holder(fd)
    finally:
        os.close(fd)


def remove_stale_temp_files(folder: Path) -> None:
    """Remove temporary files a killed writer left behind (call only while holding the folder's lock)."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _file_signature(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns]


def save_checkpoint(folder: Path, state: dict) -> None:
    """Write ``state`` (holding "epoch", and "config" for a run) as the folder's checkpoint.

    The checkpoint before stays as checkpoint.prev.pt; checkpoint.json then records the new one's epoch,
    config and last epoch's seconds (for sweeps' time estimates) with the file's signature, so that a stale
    checkpoint.json is recognised as such.
    """
    import torch

    folder = Path(folder)
    atomic_write(folder / CHECKPOINT, lambda f: torch.save(state, f), keep_previous=folder / PREVIOUS_CHECKPOINT)
    write_json(folder / CHECKPOINT_INFO, {
        "epoch": state["epoch"], "config": state.get("config"), "file": _file_signature(folder / CHECKPOINT),
        "seconds": state["history"][-1]["seconds"] if state.get("history") else None,  # its last epoch's
    })


def load_checkpoint(folder: Path, set_aside_corrupt: bool = False) -> dict | None:
    """The folder's latest usable checkpoint, None if it has none.

    A corrupt checkpoint.pt falls back to checkpoint.prev.pt; with neither usable, CorruptFileError names
    them and what to do. ``set_aside_corrupt`` is the trainer's, holding the folder's lock, before it
    writes anything there: the corrupt checkpoint.pt is first renamed to checkpoint.corrupt-<UTC time>.pt,
    so that the next save keeps checkpoint.prev.pt, the good copy, and a warning names both files and
    where the corrupt one went. Without it (planning, reports) nothing is moved and nothing is said.
    """
    import torch

    folder = Path(folder)
    present = [p for p in (folder / CHECKPOINT, folder / PREVIOUS_CHECKPOINT) if p.exists()]
    problems = []
    for path in present:
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            if not isinstance(state, dict) or "epoch" not in state:
                raise ValueError("not an mmlib checkpoint")
        except OSError:
            raise
        except Exception as err:  # any other failure to unpickle means the bytes are not a checkpoint
            problems.append(f"{path} ({type(err).__name__}: {str(err).split('. ')[0][:120]})")
            continue
        if problems and set_aside_corrupt:
            aside = set_aside(folder / CHECKPOINT, "corrupt")
            warnings.warn(f"{problems[0]} is unusable, moved to {aside}; resuming from the previous checkpoint "
                          f"{path} (epoch {state['epoch']})", stacklevel=2)
        return state
    if problems:
        raise CorruptFileError(f"no usable checkpoint in {folder}: {'; '.join(problems)}. Delete "
                               f"{' and '.join(p.name for p in present)} there to train this run from scratch")
    return None


def checkpoint_info(folder: Path) -> dict | None:
    """{"epoch", "config"} of the checkpoint load_checkpoint would return (None without one).

    Read from checkpoint.json when it describes the current checkpoint.pt, so that planning a sweep
    does not load every checkpoint; otherwise from the checkpoint itself.
    """
    folder = Path(folder)
    with contextlib.suppress(OSError, CorruptFileError, KeyError, TypeError):
        info = read_json(folder / CHECKPOINT_INFO)
        if info["file"] == _file_signature(folder / CHECKPOINT):
            return {"epoch": info["epoch"], "config": info["config"]}
    state = load_checkpoint(folder)
    return None if state is None else {"epoch": state["epoch"], "config": state.get("config")}


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / FINISHED).exists()


def load_results(run_dir: Path) -> dict:
    """A finished run's config, class counts and metrics, as one dict."""
    run_dir = Path(run_dir)
    if not is_finished(run_dir):
        raise FileNotFoundError(f"{run_dir} holds no finished run (no {FINISHED} file)")
    return {
        "run_dir": str(run_dir),
        "config": read_json(run_dir / CONFIG),
        "class_counts": read_json(run_dir / COUNTS),
        **read_json(run_dir / METRICS),
    }


def mark_failed(run_dir: Path, failure: dict) -> None:
    """Mark a run failed for good: ``failure`` holds at least "reason"; it stays until retried or moved."""
    write_json(Path(run_dir) / FAILED, failure)


def failure(run_dir: Path) -> dict | None:
    """Why a run failed (its FAILED marker), None if it has not."""
    path = Path(run_dir) / FAILED
    return read_json(path) if path.exists() else None


@dataclasses.dataclass(frozen=True)
class State:
    """What a run folder holds, as every reader needs it (``state``)."""

    path: Path
    finished: bool
    epoch: int | None  # epochs its checkpoint completed (0: none yet); None: no usable checkpoint (see unreadable)
    config: dict | None  # the resolved configuration it was trained with: config.json's once finished, else the
    # checkpoint's (None without either, or from an mmlib that did not record it)
    failure: str | None  # why its last job failed, as its files tell (None: no failure told)
    evidence: Path | None  # where its last job tells what happened (unfinished runs): the executed notebook where a
    # cell failed, else the job's log
    holder: str | None  # "<pid> on <host>" of the process training it now, None if none
    diverged: dict | None  # its FAILED marker: it failed for good (a diverged run), left alone until retried
    unreadable: str | None = None  # why its checkpoint could not be read

    def why(self) -> str:
        """One line on why the run did not finish: another process holds it, else what its files tell."""
        if self.holder is not None:
            return f"{self.path} is in use by process {self.holder}"
        return self.failure or self.unreadable or "no error recorded (the job did not run)"


def state(run_dir: Path) -> State:
    """The run folder's state, without loading a checkpoint where checkpoint.json describes it and without
    raising for a folder that is broken: that is said in ``failure`` or ``unreadable``.

    A failure is, in this order: the FAILED marker's reason (it diverged), the error the executed notebook
    ended with (the notebook runner), or the last line of the job's log before an exit code other than 0 and
    StoppedError's; a job that stopped early (a time limit, a signal) did not fail, it resumes.
    """
    run_dir = Path(run_dir)
    finished = is_finished(run_dir)
    epoch, config, unreadable = 0, None, None
    try:
        if finished:
            config = read_json(run_dir / CONFIG)["config"]
        else:
            info = checkpoint_info(run_dir)
            epoch, config = (0, None) if info is None else (info["epoch"], info["config"])
    except (OSError, CorruptFileError, KeyError, TypeError) as err:
        epoch, unreadable = None, str(err)
    marker = failure(run_dir)
    failure_told, evidence = (None, None) if finished else _failure(run_dir, marker)
    return State(run_dir, finished, epoch, config, failure_told, evidence, lock_owner(run_dir), marker, unreadable)


def _failure(run_dir: Path, marker: dict | None) -> tuple[str | None, Path | None]:
    logs = [run_dir / name for name in LOGS.values() if (run_dir / name).exists()]
    log = max(logs, key=lambda path: path.stat().st_mtime) if logs else None  # the last job's (its runner may vary)
    error = notebook_error(run_dir / NOTEBOOK) if log is None or log.name == LOGS["notebook"] else None
    error = None if error is not None and error.startswith(f"{StoppedError.__name__}:") else error
    evidence = run_dir / NOTEBOOK if error is not None else log or run_dir / NOTEBOOK
    if marker is not None:
        return marker["reason"], evidence
    if error is not None:
        return error, evidence
    with contextlib.suppress(OSError, ValueError):
        lines = [line.strip() for line in log.read_text().splitlines() if line.strip()] if log else []
        if lines and lines[-1].startswith(EXIT_LINE):
            code = int(lines[-1].removeprefix(EXIT_LINE))
            if code not in (0, StoppedError.exit_code):
                return (lines[-2] if len(lines) > 1 else f"exit code {code}"), evidence
    return None, evidence


def notebook_error(executed: Path) -> str | None:
    """"Name: message" (first line) of the error an executed notebook ended with; None if it has none or
    cannot be read."""
    with contextlib.suppress(OSError, ValueError, AttributeError, KeyError, TypeError):
        for cell in json.loads(Path(executed).read_text())["cells"]:
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    return f"{output['ename']}: {output['evalue']}".splitlines()[0]
    return None
