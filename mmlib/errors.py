"""mmlib's own errors, each with the exit code of the command line (python -m mmlib).

Bad parameters stay ValueError and missing or inaccessible files OSError, as Python code expects;
``exit_code`` maps those too, so every kind of failure the user can act on has a code of its own:

    1  a sweep finished with failed runs (or an unexpected error, shown as a traceback)
    2  a bad parameter (ValueError)
    3  a file or folder is missing or inaccessible, e.g. the dataset (OSError)
    4  the run directory is in use by another process
    5  a corrupt file (checkpoint, JSON)
    6  the loss became NaN or infinite
    7  no space left on the device
    8  the CUDA graph step failed its check against the eager step (compile='graphs')
   75  stopped early, at the time limit or by a signal (SIGTERM, SIGUSR1), its checkpoint written: the same
       command resumes (75 is EX_TEMPFAIL, "try again", in sysexits.h)
"""

import difflib
import errno
import sys


class MMLibError(Exception):
    """An error the user can act on; its message names the file or parameter and the remedy."""

    exit_code = 1


class RunDirBusyError(MMLibError):
    exit_code = 4


class CorruptFileError(MMLibError):
    exit_code = 5


class NonFiniteLossError(MMLibError, RuntimeError):
    """The loss became NaN or infinite; the run's checkpoints are kept as they were."""

    exit_code = 6


class NoSpaceError(MMLibError, OSError):
    exit_code = 7


class StepCheckError(MMLibError, RuntimeError):
    """compile='graphs' asked for CUDA graphs, and a captured step failed to capture or differs from the eager step."""

    exit_code = 8


class StoppedError(MMLibError):
    """A run or sweep stopped before its end (time limit, signal) with its checkpoints written: run it again."""

    exit_code = 75


def _chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def is_no_space(err: BaseException) -> bool:
    """Whether ENOSPC is anywhere in the exception's chain (torch wraps it in its own RuntimeError)."""
    return any(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in _chain(err))


def exit_code(err: BaseException) -> int | None:
    """The command line's exit code for ``err``; None for an unexpected error (a bug: show the traceback)."""
    if isinstance(err, MMLibError):
        return err.exit_code
    if is_no_space(err):
        return NoSpaceError.exit_code
    if isinstance(err, ValueError):
        return 2
    if isinstance(err, OSError):
        return 3
    return None


def exit_status(command, debug: bool = False) -> int:
    """``command()``'s exit code; an error the user can act on as one line on stderr ("error: ...") and its exit
    code; an unexpected one (or any, with debug) raised, so that its traceback shows. Every command line of
    mmlib (python -m mmlib, mmlib.sweep.jobs, mmlib.notebook) ends through here."""
    try:
        return command()
    except Exception as err:
        code = exit_code(err)
        if code is None or debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return code


def did_you_mean(name: str, valid) -> str:
    """' (did you mean X?)' with the closest valid name, or '' when none is close."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]}?)" if close else ""
