"""A job's evidence and failure reason, and the local executor going on past a job it could not run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from mmlib import files
from mmlib.sweep import jobs, plan
from mmlib.sweep.local_executor import LocalExecutor
from mmlib.train import run_folder

TINY = {"arch": "resnet8", "epochs": 2}


def two_jobs(out):
    return plan.plan("quick", out, seeds=[0, 1], settings=["digits-exp-10"], methods=["erm"], overrides=TINY).jobs


def test_a_job_the_sweep_cannot_run_fails_alone_and_the_next_runs(tmp_path, monkeypatch):
    planned, started = two_jobs(tmp_path), []

    def execute_job(job, *args, **kwargs):
        started.append(job.labels[0])
        if len(started) == 1:
            raise OSError(28, "No space left on device")
        return "done"

    monkeypatch.setattr("mmlib.sweep.jobs.execute_job", execute_job)
    lines = []
    outcome = LocalExecutor(runner="python").execute(planned, log=lines.append)
    assert started == [job.labels[0] for job in planned]
    assert outcome.failed[0] == (planned[0].labels[0], run_folder.state(planned[0].run_dirs[0]).evidence)
    assert lines[0] == (f"[1/2] {planned[0].labels[0]}: FAILED: the sweep could not run its job: OSError: [Errno 28] "
                        "No space left on device")


def test_a_job_failing_while_the_sweep_stops_is_reported_failed_not_stopped(tmp_path, monkeypatch):
    planned = two_jobs(tmp_path)

    def execute_job(job, *args, **kwargs):  # the sweep is signalled while its job fails for a reason of its own
        os.kill(os.getpid(), signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while not Path(job.stop_file).exists() and time.monotonic() < deadline:  # the main thread's handler ran
            time.sleep(0.05)
        return "failed"

    monkeypatch.setattr("mmlib.sweep.jobs.execute_job", execute_job)
    outcome = LocalExecutor(runner="python").execute(planned, log=print)
    assert [label for label, _ in outcome.failed] == planned[0].labels and outcome.stopped == []
    assert outcome.not_started == planned[1].labels


def write_log(run_dir, text):
    run_dir.mkdir(parents=True, exist_ok=True)
    files.write_text(run_dir / jobs.RUNNERS["python"], text)


@pytest.mark.parametrize("log, reason", [
    ("epoch 1\nerror: r: the loss became NaN\nexit code 6\n", "error: r: the loss became NaN"),
    ("error: r: stopped before epoch 2 because it received SIGTERM\nexit code 75\n", None),  # it resumes
    ("done\nexit code 0\n", None),
    ("killed\nexit code -9\n", "killed"),
])
def test_a_python_jobs_log_tells_whether_it_failed(tmp_path, log, reason):
    write_log(tmp_path / "r", log)
    assert run_folder.state(tmp_path / "r").failure == reason


def write_notebook(run_dir, ename, evalue):
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(outputs=[nbformat.v4.new_output(
        "error", ename=ename, evalue=evalue, traceback=[])])]), run_dir / run_folder.NOTEBOOK)


def test_the_last_jobs_log_speaks_for_a_run_whose_runner_changed(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    write_notebook(run_dir, "ValueError", "bad lr")  # a notebook-runner attempt
    files.write_text(run_dir / jobs.RUNNERS["notebook"], "error: r.ipynb failed in cell 3\nexit code 1\n")
    assert run_folder.state(run_dir).failure == "ValueError: bad lr" and run_folder.state(run_dir).evidence.name == "train.ipynb"
    old = time.time() - 60
    os.utime(run_dir / jobs.RUNNERS["notebook"], (old, old))
    write_log(run_dir, "error: r: the loss became NaN\nexit code 6\n")  # then one on the python runner
    assert run_folder.state(run_dir).evidence == run_dir / jobs.RUNNERS["python"]
    assert run_folder.state(run_dir).why() == "error: r: the loss became NaN"

    os.utime(run_dir / jobs.RUNNERS["python"], (old - 60, old - 60))  # the notebook runner's again, stopped early
    write_notebook(run_dir, "StoppedError", "r: stopped")
    files.write_text(run_dir / jobs.RUNNERS["notebook"], "error: r.ipynb failed in cell 3\nexit code 75\n")
    assert run_folder.state(run_dir).failure is None


def test_a_notebook_jobs_log_tells_why_it_failed_where_its_notebook_does_not(tmp_path):
    """A kernel that never started leaves a notebook without an error cell: the log says why (the driver of a
    Ray sweep without a shared filesystem receives both, in any order)."""
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    files.write_text(run_dir / jobs.RUNNERS["notebook"], "Traceback ...\nRuntimeError: Kernel died before replying "
                                                          "to kernel_info\nexit code 1\n")
    nbformat.write(nbformat.v4.new_notebook(), run_dir / run_folder.NOTEBOOK)  # written after the log
    assert run_folder.state(run_dir).failure == "RuntimeError: Kernel died before replying to kernel_info"
    assert run_folder.state(run_dir).evidence == run_dir / jobs.RUNNERS["notebook"]


def test_a_process_whose_parent_is_killed_acts_on_it(tmp_path):
    """when_orphaned, as a job's process (python runner, or the notebook runner's) uses it: its parent, here a
    process that starts it and is then killed, is gone, and the action (touching the stop file) follows."""
    stop_file = tmp_path / "stop"
    child = ("import pathlib, sys, time\nfrom mmlib.stopping import when_orphaned\n"
             f"when_orphaned(pathlib.Path({str(stop_file)!r}).touch)\nprint('watching', flush=True)\ntime.sleep(30)")
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', {child!r}], stdout=subprocess.PIPE, text=True)\n"
        "print(child.pid, child.stdout.readline().strip(), flush=True)\ntime.sleep(30)")],
        stdout=subprocess.PIPE, text=True)
    pid, state = parent.stdout.readline().split()
    assert state == "watching" and not stop_file.exists()
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while not stop_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(int(pid), signal.SIGKILL)
    assert stop_file.exists()
