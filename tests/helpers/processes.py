"""Real processes for the fault tests: start `python -m mmlib train` or a script, wait for a checkpoint, kill it
with SIGKILL, and compare its results with an uninterrupted run's."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mmlib import errors, files
from mmlib.train import run_folder


def cli_args(params: dict) -> list[str]:
    args = []
    for key, value in params.items():
        flag = "--" + key.replace("_", "-")
        args += ([flag] if value else [f"--no-{key.replace('_', '-')}"]) if isinstance(value, bool) else [flag, str(value)]
    return args


def start(code_or_args, tmp_path, cache="cache") -> subprocess.Popen:
    """A real process: `python -m mmlib train ARGS`, or `python -c CODE`."""
    env = {**os.environ, "MMLIB_CACHE": str(tmp_path / cache), "OMP_NUM_THREADS": "1"}
    command = ["-c", code_or_args] if isinstance(code_or_args, str) else ["-m", "mmlib", "train", *code_or_args]
    return subprocess.Popen([sys.executable, *command], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, process: subprocess.Popen, what: str, timeout=240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the process ended before {what}: {process.communicate()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def checkpointed(folder: Path, epoch: int = 1):
    def done() -> bool:
        try:
            return files.read_json(folder / run_folder.CHECKPOINT_INFO)["epoch"] >= epoch
        except (OSError, errors.CorruptFileError):
            return False
    return done


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL


def finish(process: subprocess.Popen) -> None:
    out, err = process.communicate()
    assert process.returncode == 0, err


def same_results(a: Path, b: Path) -> None:
    """Byte-identical results but for wall-clock seconds."""
    ra, rb = run_folder.load_results(a), run_folder.load_results(b)
    strip = lambda history: [{k: v for k, v in e.items() if k != "seconds"} for e in history]  # noqa: E731
    assert strip(ra["history"]) == strip(rb["history"])
    assert ra["final"] == rb["final"] and ra["best"] == rb["best"]
    assert (a / run_folder.PER_CLASS).read_bytes() == (b / run_folder.PER_CLASS).read_bytes()
