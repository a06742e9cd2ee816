"""The run directory: what a run writes, written so that a crash never leaves a half file.

    config.json        every resolved parameter, mmlib / torch versions, device, git commit
    class_counts.json  the training set's class names, counts, many/medium/few groups, description
    checkpoint.pt      model, optimizer, completed epochs, every RNG state, history so far
    metrics.json       final and best epoch results, per-epoch history
    per_class.csv      per-class training count, group, final and best error
    FINISHED           written last: the run is complete
"""

import json
import os
import tempfile
from pathlib import Path

import torch

# Defaults of the notebooks and the CLI, the same wherever they are started from: the checkout's folders.
REPOSITORY = Path(__file__).resolve().parent.parent
RUNS = REPOSITORY / "runs"
RESULTS = REPOSITORY / "results"  # finished runs' records (mmlib.results), committed
FIGURES = REPOSITORY / "figures"

CONFIG, COUNTS, CHECKPOINT, METRICS, PER_CLASS, FINISHED = (
    "config.json",
    "class_counts.json",
    "checkpoint.pt",
    "metrics.json",
    "per_class.csv",
    "FINISHED",
)


def atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the result should be an ordinary file
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=1) + "\n")


def save_torch(path: Path, obj) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def read_json(path: Path):
    return json.loads(Path(path).read_text())


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
