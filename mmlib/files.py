"""Files written whole and the repository's folders: a crash or a full disk never leaves half a file.

Every file mmlib writes (run folders, results, caches, dataset files, figures, tables) goes through
``atomic_write``: a temporary file beside the target, fsync'ed, then renamed over it. Nothing is
deleted to make room: ``set_aside`` renames a file or folder out of the way instead.
"""

import datetime
import io
import itertools
import json
import os
import tempfile
from pathlib import Path

from mmlib.errors import CorruptFileError, NoSpaceError, is_no_space

# Defaults of the notebooks and the CLI, the same wherever they are started from: the checkout's folders.
REPOSITORY = Path(__file__).resolve().parent.parent
RUNS = REPOSITORY / "runs"
RESULTS = REPOSITORY / "results"  # finished runs' results (mmlib.report.results), committed
FIGURES = REPOSITORY / "figures"


class _FdWriter(io.RawIOBase):
    """Writes through os.write, the one place a test can stand in for a full disk (ENOSPC)."""

    def __init__(self, fd: int):
        self._fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def write(self, data) -> int:
        return os.write(self._fd, data)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def atomic_write(path: Path, write, keep_previous: Path | None = None) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``.

    With ``keep_previous``, the file ``path`` held is first renamed to it, once the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the result should be an ordinary file
    try:
        with io.BufferedWriter(_FdWriter(fd), 1 << 20) as f:
            write(f)
            f.flush()
            os.fsync(fd)
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if is_no_space(err):  # torch reports it as "unexpected pos", the cause buried in the chain
            raise NoSpaceError(f"no space left on the device writing {path}: free some space there and run the "
                               "same command again (what was written before is kept)") from err
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=1) + "\n")


def save_torch(path: Path, obj) -> None:
    import torch  # here, not at the top: reading results and planning need no torch (a second's import)

    atomic_write(path, lambda f: torch.save(obj, f))


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{path} is not readable JSON ({err}); restore it, or delete it and rerun "
                               "to write it again") from err


def set_aside(path: Path, why: str) -> Path:
    """Rename a file or folder to <stem>.<why>-<UTC time>[-n]<suffix> beside it (checkpoint.corrupt-...pt,
    seed0.replaced-...): nothing is deleted. Call it holding the folder's lock (or the sweep's plan), so that
    nobody else names files there. Returns the new path."""
    path = Path(path)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for n in itertools.count(1):
        aside = path.with_name(f"{path.stem}.{why}-{stamp}{f'-{n}' if n > 1 else ''}{path.suffix}")
        if not aside.exists():
            os.replace(path, aside)
            return aside
