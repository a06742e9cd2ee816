"""Stopping cleanly: a time limit, SIGTERM and SIGUSR1 for real train and sweep processes, resumed exactly; the
sweep's time estimates and the jobs it does not start."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.tiny import quick

import mmlib
from mmlib import files, stopping
from mmlib.errors import StoppedError
from mmlib.sweep import plan, timing
from mmlib.sweep.local_executor import LocalExecutor
from mmlib.train import run_folder

EPOCHS = 12
RUN = quick(method="erm", epochs=EPOCHS, checkpoint_every=100)  # checkpoints only when stopped, and after the last
TINY = {"arch": "resnet8", "epochs": EPOCHS, "checkpoint_every": 100, "eval_batch_size": 512}  # RUN, as a sweep's


def train(run_dir, *options, quiet=True) -> subprocess.Popen:
    args = [f"--{k.replace('_', '-')}={v}" for k, v in RUN.items() if k != "quiet"] + (["--quiet"] if quiet else [])
    return subprocess.Popen([sys.executable, "-m", "mmlib", "train", "--run-dir", str(run_dir), *args, *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def signal_in_epoch(run_dir, epoch: int, *signals) -> tuple[int, str]:
    """Train, send ``signals`` once the progress bar shows ``epoch`` (1-based) begun, and return the exit code and
    standard error: watching the bar, not the clock, keeps the signal inside training however loaded the machine."""
    process = train(run_dir, quiet=False)
    seen = ""
    while not any(int(n) >= epoch for n in re.findall(r"epoch (\d+)/", seen)):
        char = process.stderr.read(1)
        assert char, f"the run ended before epoch {epoch}: {seen}"
        seen += char
    for sig in signals:
        process.send_signal(sig)
    _, err = process.communicate()
    return process.returncode, seen + err


def checkpointed_epoch(run_dir) -> int:
    info = run_folder.checkpoint_info(run_dir)
    return 0 if info is None else info["epoch"]


def same_run(run_dir, reference) -> None:
    """Byte-identical results but for the clock: metrics less seconds, per-class file, final weights."""
    def metrics(d):
        found = files.read_json(Path(d) / run_folder.METRICS)
        for entry in found["history"]:
            del entry["seconds"]
        for key in ("seconds", "finished_at", "step"):
            found.pop(key, None)
        return found

    assert metrics(run_dir) == metrics(reference)
    assert (Path(run_dir) / run_folder.PER_CLASS).read_bytes() == (Path(reference) / run_folder.PER_CLASS).read_bytes()
    ours, theirs = (torch.load(Path(d) / run_folder.CHECKPOINT, weights_only=False)["model"] for d in (run_dir, reference))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The run trained without interruption, and how long its process took to start and to train."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    start = time.monotonic()
    process = train(run_dir)
    assert process.wait() == 0, process.communicate()
    wall = time.monotonic() - start
    training = sum(entry["seconds"] for entry in files.read_json(run_dir / run_folder.METRICS)["history"])
    return run_dir, wall - training, training


def test_durations_and_when_a_stop_says_to_stop(tmp_path):
    assert [stopping.parse_duration(t) for t in ("90s", "14m", "2h", "30", "1.5m")] == [90, 840, 7200, 30, 90]
    for bad in ("abc", "0m", "-5s", "3d"):
        with pytest.raises(ValueError, match=rf"--time-limit '{bad}': give a duration such as 90s, 14m or 2h"):
            stopping.parse_duration(bad)
    stop = stopping.Stop(deadline=time.time() + 10, stop_file=str(tmp_path / "stop"))
    assert stop.reason(5.0) is None  # 6 s (5 s and its 20% margin) fit in the 10 s left
    assert stop.reason(9.0).startswith("the time limit is ") and stop.reason(9.0).endswith("(11 s)")  # 9 s, +20%
    (tmp_path / "stop").touch()
    assert stop.reason(0.0) == f"its sweep asked it to ({tmp_path / 'stop'})"
    before = signal.getsignal(signal.SIGTERM)
    with stop.catching_signals():
        os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler before the next statement
        assert stop.reason(0.0) == "it received SIGTERM"
        with pytest.raises(StoppedError, match="stopped at once by a second signal"):
            os.kill(os.getpid(), signal.SIGUSR1)
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers before are back


@pytest.mark.slow
def test_a_train_process_stopped_by_its_time_limit_and_by_signals_resumes_to_the_uninterrupted_run(reference, tmp_path):
    reference_dir, startup, training = reference
    run_dir = tmp_path / "run"
    # 1. a time limit reached about a third of the way through training (the start-up as measured for the reference)
    limited = train(run_dir, f"--time-limit={startup + training / 3:.1f}s")
    _, err = limited.communicate()
    assert limited.returncode == StoppedError.exit_code, err
    stopped = checkpointed_epoch(run_dir)
    assert err.startswith(f"error: {run_dir}: stopped ") and "the time limit is " in err
    assert err.rstrip().endswith("the same command resumes from it" if stopped else "the same command starts it")
    assert stopped < EPOCHS and not run_folder.is_finished(run_dir)
    # 2. SIGTERM after a few epochs: the run finishes its epoch, checkpoints and stops
    code, err = signal_in_epoch(run_dir, stopped + 2, signal.SIGTERM)  # one epoch done in this process
    assert code == StoppedError.exit_code, err
    assert "because it received SIGTERM; the checkpoint is written" in err
    assert stopped < checkpointed_epoch(run_dir) < EPOCHS
    stopped = checkpointed_epoch(run_dir)
    # 3. SIGUSR1, then SIGTERM (two of one kind may arrive as one): the second stops it at once, the last
    # checkpoint kept whole
    code, err = signal_in_epoch(run_dir, stopped + 1, signal.SIGUSR1, signal.SIGTERM)
    assert code == StoppedError.exit_code, err
    assert "stopped at once by a second signal (SIGTERM)" in err
    assert checkpointed_epoch(run_dir) == stopped and torch.load(run_dir / run_folder.CHECKPOINT, weights_only=False)
    # 4. to the end: the uninterrupted run's results, bit for bit
    last = train(run_dir)
    assert last.wait() == 0, last.communicate()
    same_run(run_dir, reference_dir)


def test_a_job_that_cannot_reach_its_first_checkpoint_in_time_is_not_started(tmp_path, monkeypatch):
    planned = plan.plan("quick", tmp_path, seeds=[0, 1], settings=["digits-exp-10"], methods=["erm"],
                          overrides=TINY).jobs
    started = []
    monkeypatch.setattr("mmlib.sweep.jobs.execute_job", lambda *args, **kwargs: started.append(args) or "done")

    class Measured:  # an epoch of 60 s measured: with 30 s of start-up, 90 s before a first checkpoint
        def first_checkpoint_seconds(self, job):
            return timing.STARTUP + 60.0

        def learn_job(self, job):
            pass

    monkeypatch.setattr(mmlib, "STARTED", time.time() - 3600)  # the sweep started an hour ago
    outcome = LocalExecutor().execute(planned, log=print, deadline=time.time() + 80, times=Measured())
    assert started == [] and outcome.not_started == [label for job in planned for label in job.labels]
    assert outcome.interrupted and plan.summary(outcome) == [
        "stopped early: 0 runs stopped with their checkpoints written and 2 not started; the same command resumes them"]
    outcome = LocalExecutor().execute(planned, log=print, deadline=time.time() + 120, times=Measured())  # 108 s fit
    assert len(started) == 2 and outcome.not_started == []

    started.clear()
    monkeypatch.setattr(mmlib, "STARTED", time.time())  # a limit of 80 s in all: no rerun would start them
    outcome = LocalExecutor().execute(planned, log=print, deadline=time.time() + 80, times=Measured())
    assert started == [] and not outcome.interrupted and outcome.too_long == [(job.labels, 108.0) for job in planned]
    assert plan.summary(outcome) == [
        f"not started: {job.labels[0]}: its first checkpoint needs about 1 min 48 s (measured, times 1.2 for safety), "
        "more than the whole --time-limit; give a longer one" for job in planned]


def test_the_dry_run_estimates_the_wall_time_from_the_epochs_measured(tmp_path, capsys):
    from helpers.fixture_runs import write_run

    out = tmp_path / "runs"
    done = plan.plan("quick", out, seeds=[0], settings=["digits-exp-10"], methods=["erm"], overrides=TINY).jobs[0]
    write_run(done.run_dirs[0], done.params[0], 10, [5] * 10)  # epochs of 1.5 s each, as the fixture writes them
    plan.sweep("quick", out, [0, 1, 2], ["digits-exp-10", "digits-step-10"], ["erm"], overrides=TINY, dry_run=True)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "quick: 5 runs to do in 5 notebooks, 1 finished runs skipped"
    # the 2 jobs left on digits-exp-10 (a run of the same setting and fusion measured): 30 s of start-up and
    # EPOCHS epochs of 1.5 s each; the 3 on digits-step-10: nothing measured
    assert lines[-1] == (f"estimated wall time: {timing.describe(2 * (timing.STARTUP + EPOCHS * 1.5))} for 2 of 5 jobs "
                         "on 1 worker, from the epoch times measured so far; 3 jobs of no measured rate not counted")


def wait_for_checkpoint(sweep: subprocess.Popen, run_dir: Path, after: int) -> None:
    """Until the run (checkpointing every epoch) has a checkpoint later than epoch ``after``."""
    while checkpointed_epoch(run_dir) <= after:
        assert sweep.poll() is None, sweep.communicate()
        time.sleep(0.05)


@pytest.mark.slow
def test_a_sweep_stopped_by_signals_stops_its_jobs_cleanly_and_resumes_them(reference, tmp_path):
    out = tmp_path / "runs"
    command = [sys.executable, "-m", "mmlib", "sweep", "quick", "--settings", "digits-exp-10", "--methods", "erm",
               "--runner", "python", "--out", str(out), "--set", *(f"{k}={v}" for k, v in TINY.items()),
               "checkpoint_every=1", "--seeds", "0"]  # a checkpoint an epoch, to see its progress
    seed0, seed1 = (out / "quick" / "digits-exp-10" / "erm" / f"seed{k}" for k in (0, 1))
    sweep = subprocess.Popen(command + ["1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(sweep, seed0, 0)  # its first job has trained an epoch
    sweep.send_signal(signal.SIGUSR1)
    stdout, stderr = sweep.communicate()
    assert sweep.returncode == StoppedError.exit_code, stdout + stderr
    assert "SIGUSR1: no job starts any more; the running ones stop at the end of their epoch" in stdout
    assert ("stopped early: 1 runs stopped with their checkpoints written and 1 not started; the same command resumes "
            "them") in stdout
    assert 0 < checkpointed_epoch(seed0) < EPOCHS and not seed1.exists()

    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = checkpointed_epoch(seed0)
    wait_for_checkpoint(sweep, seed0, first)
    sweep.send_signal(signal.SIGUSR1)
    sweep.send_signal(signal.SIGTERM)  # the second kills the job at once: its last checkpoint stays
    stdout, stderr = sweep.communicate()
    assert sweep.returncode == StoppedError.exit_code, stdout + stderr
    assert checkpointed_epoch(seed0) > first and torch.load(seed0 / run_folder.CHECKPOINT, weights_only=False)

    done = subprocess.run(command, capture_output=True, text=True)  # seed 0 alone, to compare
    assert done.returncode == 0, done.stdout + done.stderr
    same_run(seed0, reference[0])  # the same configuration as the reference run, trained in three pieces


def test_ssp_pretraining_stops_between_its_epochs_with_its_checkpoint_and_resumes(tmp_path):
    from mmlib.config import RunConfig
    from mmlib.data.cache import cache_dir
    from mmlib.train import trainer

    config = RunConfig.from_dict(quick(method="ldam-drw-ssp", epochs=1, switch_epoch=0, ssp_epochs=3))
    stop_file = tmp_path / "stop"
    stop_file.touch()  # its sweep asked its jobs to stop before this one started
    with pytest.raises(StoppedError, match=r"SSP pre-training stopped before its first epoch because its sweep asked "
                                           r"it to .*; nothing was trained, and the same command starts it$"):
        trainer.train_many([config], [tmp_path / "run"], stopping.Stop(stop_file=str(stop_file)))

    class AfterOneEpoch(stopping.Stop):  # a stop asked for while the first epoch trains
        def reason(self, next_epoch_seconds):
            self.asked = getattr(self, "asked", 0) + 1
            return None if self.asked == 1 else "it was asked to"

    with pytest.raises(StoppedError, match=r"SSP pre-training stopped after epoch 1 of 3 because it was asked to; "
                                           r"the checkpoint is written, and the same command resumes from it$"):
        trainer.train_many([config], [tmp_path / "run"], AfterOneEpoch())
    [folder] = (cache_dir() / "ssp").iterdir()
    assert run_folder.checkpoint_info(folder)["epoch"] == 1 and not (folder / "backbone.pt").exists()
    trainer.train_many([config], [tmp_path / "run"], stopping.Stop())
    assert run_folder.is_finished(tmp_path / "run") and (folder / "backbone.pt").exists()
