"""--idle: a command's work behind everything else on the CPU, so a campaign can train while people work.

On Linux the work runs at SCHED_IDLE (it gets a core only when nothing else wants it) in a session of its
own whose scheduling group (autogroup) is at nice 19. SCHED_IDLE alone is not enough: with autogroups (on by
default) the scheduler first shares the CPU between sessions, so an idle process in one session still takes
about half of the CPU from work in another (measured: a matrix product at 75 against 161 GFLOP/s alone; 135
with the session at nice 19). The work gets a session of its own rather than lowering the caller's, which
would also slow the shell it was typed in. Elsewhere it runs at nice 19. Processes it starts inherit all of it,
but for one thing: a process started in a session of its own (jupyter_client starts every notebook kernel so)
gets a new scheduling group at nice 0, so the trainer calls ``follow`` to put its session at nice 19 as well.
"""

import os
import signal
import sys
import traceback
from pathlib import Path

from mmlib.stopping import when_orphaned

AUTOGROUP = Path("/proc/self/autogroup")
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)


def run_idle(work) -> int:
    """``work()``'s exit code, the work done at idle priority in a session of its own.

    A child process does the work (a process typed in a shell leads its process group, and a group leader
    cannot start a session); this one passes on the signals it gets (SIGINT, SIGTERM, SIGUSR1, SIGHUP: the
    work stops as it would have) and returns the child's exit code. A child whose parent was killed stops as
    on SIGTERM. Call it before any thread is started (a fork copies only the calling thread).
    """
    child = os.fork()
    if child == 0:
        code = 1
        try:
            os.setsid()
            print(f"--idle: process {os.getpid()} works {_lower()}", file=sys.stderr, flush=True)
            when_orphaned(lambda: os.kill(os.getpid(), signal.SIGTERM))
            code = work()
        except SystemExit as exit:  # sys.exit(n) in the work: n is its exit code
            code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    for number in FORWARDED:
        signal.signal(number, lambda number, frame: os.kill(child, number))
    _, status = os.waitpid(child, 0)  # Python retries a wait that a handled signal interrupts (PEP 475)
    return os.waitstatus_to_exitcode(status)


def follow() -> None:
    """Put this process's session at nice 19 where the process runs at SCHED_IDLE and leads the session (a notebook
    kernel that an idle sweep started): otherwise its new scheduling group would compete with interactive work as
    an equal (measured: the fast test tier took 211-231 s beside such a kernel, 105 s without it)."""
    if (hasattr(os, "SCHED_IDLE") and os.sched_getscheduler(0) == os.SCHED_IDLE and os.getsid(0) == os.getpid()
            and AUTOGROUP.exists()):
        AUTOGROUP.write_text("19")


def _lower() -> str:
    """This process, its threads to come and its children at the lowest CPU priority the system offers; how, in
    words."""
    if not hasattr(os, "SCHED_IDLE"):
        os.nice(19 - os.nice(0))
        return "at nice 19"
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    if not AUTOGROUP.exists():
        return "at SCHED_IDLE in a session of its own"
    AUTOGROUP.write_text("19")
    return "at SCHED_IDLE in a session of its own, scheduled at nice 19"
