"""--idle: the work runs at the CPU's idle priority in a session of its own (real processes), stops on the
signals its caller gets, and leaves its caller's priority alone."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

linux_only = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")


def autogroup(pid) -> str:
    path = Path(f"/proc/{pid}/autogroup")
    return path.read_text().strip() if path.exists() else ""


def wait_for(condition, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@linux_only
def test_the_work_runs_idle_in_its_own_session_and_gets_its_callers_signals(tmp_path):
    """The work writes what it sees of itself, then waits for SIGTERM (passed on by the caller) and exits 75."""
    seen = tmp_path / "seen"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from mmlib.train.idle import run_idle

        def work():
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(75))
            me = os.getpid()
            open({str(seen)!r}, "w").write(f"{{os.sched_getscheduler(me)}} {{os.getsid(me)}} {{me}}")
            while True:
                signal.pause()

        sys.exit(run_idle(work))
    """)
    caller = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    wait_for(lambda: seen.exists() and seen.read_text().count(" ") == 2)
    policy, session, worker = (int(v) for v in seen.read_text().split())
    assert policy == os.SCHED_IDLE and session == worker != os.getsid(caller.pid)
    assert os.sched_getscheduler(caller.pid) == os.SCHED_OTHER  # the caller, like the shell it came from, is untouched
    if autogroup(worker):  # Linux with autogroups: the worker's session scheduled at nice 19, the caller's as before
        assert autogroup(worker).endswith("nice 19") and autogroup(caller.pid) == autogroup(os.getpid())
    caller.send_signal(signal.SIGTERM)
    assert caller.wait(timeout=30) == 75, caller.stderr.read()


@pytest.mark.parametrize("command, error", [(["sweep"], "error: give a table"),
                                            (["train", "--epochs", "0"], "error: epochs must be >= 1")])
def test_train_and_sweep_do_their_work_idle_and_return_its_exit_code(command, error, tmp_path):
    """Each said by the idle child, with how it was lowered, and its exit code passed on (2: a bad parameter). The
    work is an error said at once: an idle child that trained would wait behind every other process (a campaign)."""
    place = ["--out", str(tmp_path)] if command[0] == "sweep" else ["--run-dir", str(tmp_path / "r")]
    done = subprocess.run([sys.executable, "-m", "mmlib", *command, *place, "--idle"], capture_output=True, text=True)
    lowered = "at SCHED_IDLE in a session of its own" if hasattr(os, "SCHED_IDLE") else "at nice 19"
    assert done.returncode == 2 and f"works {lowered}" in done.stderr and error in done.stderr, done.stderr


@linux_only
@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no autogroups here")
def test_an_idle_process_in_a_session_of_its_own_keeps_that_session_idle():
    """As jupyter_client starts a kernel: a new session, whose fresh scheduling group would be at nice 0."""
    script = ("import os; from mmlib.train import idle; idle.follow(); "
              "print(open('/proc/self/autogroup').read().strip())")
    for policy, expected in ((os.SCHED_IDLE, "nice 19"), (os.SCHED_OTHER, "nice 0")):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, start_new_session=True,
                              preexec_fn=lambda policy=policy: os.sched_setscheduler(0, policy, os.sched_param(0)))
        assert done.stdout.strip().endswith(expected), (policy, done.stdout, done.stderr)
