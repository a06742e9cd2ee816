"""Stopping a run cleanly before its end: at a time limit, on a signal, or when a sweep asks.

GPU time comes with a wall-time limit (a lent window, a Slurm allocation) and with pre-emption. A
``Stop`` tells the trainer, at the end of each epoch, whether to write its checkpoint and stop: before
the next epoch could overrun the ``deadline`` (judged from the epochs and checkpoints measured so far),
once SIGTERM or SIGUSR1 arrived (what Slurm sends with --signal=USR1@120 before an allocation ends, and
what pre-emption sends), or once ``stop_file`` exists (a sweep that was itself signalled creates it for
its jobs). A second signal stops at once, between two steps: the previous checkpoint stays intact. Either
way the run raises StoppedError (exit code 75, EX_TEMPFAIL: try again) and the same command resumes it.
"""

import contextlib
import os
import re
import signal
import tempfile
import threading
import time
import uuid
from pathlib import Path

from mmlib.errors import StoppedError

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
MARGIN = 1.2  # an epoch is taken to last up to 20% longer than the last one measured
UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """'90s', '14m', '2h' (or plain seconds) as seconds; one error line naming the format otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"--time-limit {text!r}: give a duration such as 90s, 14m or 2h")
    return float(match.group(1)) * UNITS[match.group(2) or "s"]


class Stop:
    """When a run must stop early: a deadline (time.time() seconds), a stop file, the signals it catches."""

    def __init__(self, deadline: float | None = None, stop_file: str | None = None):
        self.deadline, self.stop_file = deadline, stop_file
        self.signalled: str | None = None  # the first signal's name, once one arrived

    def catching_signals(self):
        """A context catching SIGTERM and SIGUSR1 while the runs train."""
        return handling(self._on_signal)

    def _on_signal(self, number, frame) -> None:
        if self.signalled is not None:
            raise StoppedError(f"stopped at once by a second signal ({signal.Signals(number).name}); the last "
                               "checkpoint is kept, and the same command resumes from it")
        self.signalled = signal.Signals(number).name

    def reason(self, next_epoch_seconds: float) -> str | None:
        """Why the run must stop now rather than train one more epoch (about next_epoch_seconds, with its
        checkpoint), or None."""
        if self.signalled is not None:
            return f"it received {self.signalled}"
        if self.stop_file is not None and os.path.exists(self.stop_file):
            return f"its sweep asked it to ({self.stop_file})"
        if self.deadline is not None and time.time() + MARGIN * next_epoch_seconds > self.deadline:
            left = max(0.0, self.deadline - time.time())
            return (f"the time limit is {left:.0f} s away, less than another epoch and its checkpoint take with "
                    f"{MARGIN:g} times the last one's time ({MARGIN * next_epoch_seconds:.0f} s)")
        return None


def new_stop_file() -> Path:
    """A fresh path in the system's temp folder whose creation asks runs to stop at their epoch's end (Stop's
    stop_file); its owner deletes it when done."""
    return Path(tempfile.gettempdir()) / f"mmlib-stop-{uuid.uuid4().hex}"


def when_orphaned(action) -> None:
    """Call ``action`` (on a daemon thread) once the process that started this one is gone: a job's process whose
    sweep or Ray worker was killed must stop rather than train on unwatched, holding its runs' locks."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1)
        action()

    threading.Thread(target=watch, daemon=True).start()


@contextlib.contextmanager
def handling(handler):
    """``handler(number, frame)`` for SIGTERM and SIGUSR1 meanwhile, the handlers before restored after; in the main
    thread only (Python delivers signals to it alone, and elsewhere none can be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, before in previous.items():
            signal.signal(s, before)
