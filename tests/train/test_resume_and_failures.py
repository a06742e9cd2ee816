"""Faults a week-long unattended sweep meets: a second process, kills, corrupt files, a full disk, bad inputs.

Lock and kill cases use real processes and signals; corrupt files are real truncated or random bytes;
the full disk is os.write raising ENOSPC (no filesystem can be made small here without root).
"""

import datetime
import errno
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from helpers.processes import checkpointed, cli_args, finish, kill, same_results, start, wait_for
from helpers.tiny import quick

from mmlib import __main__ as cli
from mmlib import errors
from mmlib.config import RunConfig
from mmlib.data.sources import load_dataset
from mmlib.sweep import plan
from mmlib.sweep.local_executor import LocalExecutor
from mmlib.train import losses, run_folder, trainer


def tiny(**overrides) -> dict:
    """quick's run, checkpointed after every epoch: what the kill-and-resume tests need."""
    return quick(**{"checkpoint_every": 1, **overrides})


# --- one process per run directory; kills resume exactly -------------------------------------------


@pytest.mark.slow
def test_a_second_process_on_a_run_dir_fails_at_once_and_a_kill_releases_the_lock(tmp_path):
    params, run_dir = tiny(epochs=100), tmp_path / "run"  # killed long before its end
    owner = start(cli_args(params) + ["--run-dir", str(run_dir)], tmp_path)
    lock = run_dir / run_folder.LOCK
    holder = f"{owner.pid} on {socket.gethostname()}"  # an older mmlib's reader shows "process <this>" too
    wait_for(lambda: lock.exists() and lock.read_text() == holder + "\n", owner, "the lock")
    others = [start(cli_args(p) + ["--run-dir", str(run_dir)], tmp_path) for p in (params, tiny(epochs=100, seed=1))]
    for other in others:  # an identical run, and one of another seed
        _, err = other.communicate(timeout=240)
        assert other.returncode == errors.RunDirBusyError.exit_code
        assert err.splitlines() == [
            f"error: {run_dir} is in use by process {holder} (lock {lock}): wait for it to end, or give another run directory"
        ]
    wait_for(checkpointed(run_dir), owner, "the first checkpoint")
    kill(owner)
    # The OS released the dead owner's lock; without config.json the checkpoint still knows its parameters.
    (run_dir / run_folder.CONFIG).unlink()
    with pytest.raises(ValueError, match=r"other parameters \(lr: 0.1 -> 0.05, seed: 0 -> 1, data_seed: 0 -> 1; "
                                         r"recorded in checkpoint.pt\)"):
        trainer.train(tiny(epochs=100, seed=1, lr=0.05), run_dir)


FUSED = """
import sys
from mmlib.train import trainer
params = dict({tiny}, method="mm-drw")
trainer.train_many([dict(params, seed=0), dict(params, seed=1, beta=1.2)], sys.argv[1:])
"""


@pytest.mark.slow
def test_a_killed_fused_run_resumes_exactly(tmp_path):
    code = FUSED.format(tiny=tiny(epochs=2))
    dirs, straight = [str(tmp_path / "f0"), str(tmp_path / "f1")], [str(tmp_path / "s0"), str(tmp_path / "s1")]
    reference = subprocess.Popen([sys.executable, "-c", code, *straight],
                                 env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)
    fused = subprocess.Popen([sys.executable, "-c", code, *dirs],
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)
    wait_for(checkpointed(Path(dirs[1])), fused, "the fused run's first checkpoint")
    kill(fused)
    assert not any(run_folder.is_finished(d) for d in dirs)
    done = subprocess.run([sys.executable, "-c", code, *dirs], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    finish(reference)
    for d, s in zip(dirs, straight):
        same_results(Path(d), Path(s))


@pytest.mark.slow
def test_a_run_killed_during_ssp_pretraining_resumes_exactly(tmp_path):
    params = tiny(method="ldam-drw-ssp", epochs=1, switch_epoch=0, ssp_epochs=2)
    reference = start(cli_args(params) + ["--run-dir", str(tmp_path / "straight")], tmp_path, cache="cache_straight")
    run = start(cli_args(params) + ["--run-dir", str(tmp_path / "run")], tmp_path, cache="cache_killed")
    ssp = tmp_path / "cache_killed" / "ssp"
    wait_for(lambda: ssp.exists() and any(checkpointed(d)() for d in ssp.iterdir()), run, "the SSP checkpoint")
    kill(run)
    folder = next(ssp.iterdir())
    assert not (folder / "backbone.pt").exists()
    finish(start(cli_args(params) + ["--run-dir", str(tmp_path / "run")], tmp_path, cache="cache_killed"))
    finish(reference)
    same_results(tmp_path / "run", tmp_path / "straight")
    straight_backbone = torch.load(next((tmp_path / "cache_straight" / "ssp").iterdir()) / "backbone.pt")
    for name, tensor in torch.load(folder / "backbone.pt").items():
        assert torch.equal(tensor, straight_backbone[name]), name


# --- checkpoints: every N epochs, previous kept, corrupt ones ----------------------------------------


@pytest.mark.slow
def test_checkpoint_every_n_epochs_and_after_the_last_and_resume_from_any(tmp_path, monkeypatch):
    params = tiny(epochs=3, checkpoint_every=2)
    straight = trainer.train(params, tmp_path / "straight")
    real_save, saved = run_folder.save_checkpoint, []

    def crash_at_epoch_3(folder, state):
        if state["epoch"] == 3:
            raise KeyboardInterrupt
        saved.append(state["epoch"])
        real_save(folder, state)

    monkeypatch.setattr(run_folder, "save_checkpoint", crash_at_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(params, tmp_path / "run")
    assert saved == [2]
    monkeypatch.setattr(run_folder, "save_checkpoint", real_save)
    resumed = trainer.train({**params, "checkpoint_every": 3}, tmp_path / "run")  # may change on resume
    assert [e["train_loss"] for e in resumed["history"]] == [e["train_loss"] for e in straight["history"]]
    assert resumed["final"] == straight["final"]
    assert run_folder.load_checkpoint(tmp_path / "run")["epoch"] == 3  # after the last epoch
    assert torch.load(tmp_path / "run" / run_folder.PREVIOUS_CHECKPOINT, weights_only=False)["epoch"] == 2


def interrupted_run(tmp_path, epochs=2) -> Path:
    """A run whose checkpoints (epoch N and N-1) exist, as if killed just before writing its results."""
    run_dir = tmp_path / "run"
    trainer.train(tiny(epochs=epochs), run_dir)
    for name in (run_folder.FINISHED, run_folder.METRICS, run_folder.PER_CLASS):
        (run_dir / name).unlink()
    return run_dir


def test_a_truncated_checkpoint_falls_back_to_the_previous_with_a_warning(tmp_path):
    run_dir = interrupted_run(tmp_path)
    straight = run_folder.load_checkpoint(run_dir)
    latest = run_dir / run_folder.CHECKPOINT
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    stale = run_dir / ".checkpoint.pt.x1y2z3.tmp"  # what a kill during a write leaves
    stale.write_bytes(latest.read_bytes())
    with pytest.warns(UserWarning, match=rf"{latest} \(RuntimeError: PytorchStreamReader.*\) is unusable, moved to "
                                         rf"{run_dir}/checkpoint.corrupt-.*\.pt; resuming from the previous checkpoint "
                                         rf"{run_dir / run_folder.PREVIOUS_CHECKPOINT} \(epoch 1\)"):
        resumed = trainer.train(tiny(), run_dir)
    assert [e["train_loss"] for e in resumed["history"]] == [e["train_loss"] for e in straight["history"]]
    assert resumed["final"] == straight["final"]
    assert not stale.exists()


@pytest.mark.slow
def test_a_corrupt_checkpoint_twice_in_a_row_is_set_aside_and_the_good_previous_one_kept(tmp_path, monkeypatch):
    params, run_dir = tiny(), tmp_path / "run"  # two epochs, a checkpoint after each
    latest, previous = run_dir / run_folder.CHECKPOINT, run_dir / run_folder.PREVIOUS_CHECKPOINT
    real_save = run_folder.save_checkpoint

    def stop_after_epoch_2(folder, state):  # checkpointed, but killed before its results are written
        real_save(folder, state)
        if state["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_folder, "save_checkpoint", stop_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(params, run_dir)
    epoch_1 = previous.read_bytes()
    for attempt in (1, 2):
        latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # the epoch-2 checkpoint, truncated
        corrupt = latest.read_bytes()
        # Planning and reports read without the lock: they move nothing and warn of nothing.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert run_folder.checkpoint_info(run_dir)["epoch"] == 1 and run_folder.load_checkpoint(run_dir)["epoch"] == 1
        assert latest.read_bytes() == corrupt and previous.read_bytes() == epoch_1
        before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        with pytest.warns(UserWarning) as caught:
            if attempt == 1:  # resumes from epoch 1, checkpoints epoch 2 again and is interrupted again
                with pytest.raises(KeyboardInterrupt):
                    trainer.train(params, run_dir)
            else:
                monkeypatch.setattr(run_folder, "save_checkpoint", real_save)
                resumed = trainer.train(params, run_dir)
        after = datetime.datetime.now(datetime.timezone.utc)
        set_aside = sorted(run_dir.glob("checkpoint.corrupt-*.pt"), key=lambda p: p.stat().st_mtime_ns)
        assert len(set_aside) == attempt and set_aside[-1].read_bytes() == corrupt
        stamp = re.fullmatch(r"checkpoint\.corrupt-(\d{8}T\d{6}Z)(-\d+)?\.pt", set_aside[-1].name).group(1)
        assert before <= datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%S%z") <= after
        [message] = [str(w.message) for w in caught if "unusable" in str(w.message)]
        assert message.startswith(f"{latest} (RuntimeError: ") and message.endswith(
            f") is unusable, moved to {set_aside[-1]}; resuming from the previous checkpoint {previous} (epoch 1)")
        if attempt == 1:  # the interrupted resume's save of epoch 2 left the good epoch-1 copy where it was
            assert previous.read_bytes() == epoch_1 and run_folder.load_checkpoint(run_dir)["epoch"] == 2
    trainer.train(params, tmp_path / "straight")
    assert [e["epoch"] for e in resumed["history"]] == [1, 2]
    same_results(run_dir, tmp_path / "straight")


def test_no_usable_checkpoint_is_one_error_line_naming_the_files(tmp_path, capsys):
    run_dir = interrupted_run(tmp_path)
    (run_dir / run_folder.CHECKPOINT).write_bytes(os.urandom(4096))
    (run_dir / run_folder.PREVIOUS_CHECKPOINT).write_bytes(b"")
    assert cli.main(["train", "--run-dir", str(run_dir), *cli_args(tiny())]) == errors.CorruptFileError.exit_code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: no usable checkpoint in {run_dir}: {run_dir / run_folder.CHECKPOINT} (")
    assert f"{run_dir / run_folder.PREVIOUS_CHECKPOINT} (EOFError" in err
    assert err.rstrip().endswith("Delete checkpoint.pt and checkpoint.prev.pt there to train this run from scratch")
    with pytest.raises(errors.CorruptFileError):
        cli.main(["train", "--debug", "--run-dir", str(run_dir), *cli_args(tiny())])


PLAN = dict(settings=["digits-step-10"], methods=["erm"], fuse=3,
            overrides={"arch": "resnet8", "epochs": 2, "checkpoint_every": 1})


def test_planning_reads_the_epoch_without_loading_checkpoints_and_survives_corrupt_ones(tmp_path, monkeypatch):
    jobs = plan.plan("quick", tmp_path, seeds=[0, 1, 2], **PLAN).jobs
    assert [len(j.run_dirs) for j in jobs] == [3]
    seed0, seed1, seed2 = jobs[0].run_dirs
    trainer.train(jobs[0].params[0], seed0)
    (seed0 / run_folder.FINISHED).unlink()
    (seed1 / run_folder.CHECKPOINT).parent.mkdir(parents=True)
    (seed1 / run_folder.CHECKPOINT).write_bytes(os.urandom(2048))

    def no_load(*args, **kwargs):
        raise AssertionError("planning loaded a checkpoint")

    monkeypatch.setattr(torch, "load", no_load)
    assert run_folder.checkpoint_info(seed0)["epoch"] == 2
    monkeypatch.undo()
    jobs = plan.plan("quick", tmp_path, seeds=[0, 1, 2], **PLAN).jobs
    assert sorted([d.name for d in j.run_dirs] for j in jobs) == [["seed0"], ["seed1"], ["seed2"]]
    os.utime(seed0 / run_folder.CHECKPOINT)  # checkpoint.json no longer describes it: the checkpoint is read
    assert run_folder.checkpoint_info(seed0)["epoch"] == 2


def test_a_sweep_leaves_a_run_another_process_holds_alone(tmp_path):
    jobs = plan.plan("quick", tmp_path, seeds=[0], **PLAN).jobs
    run_dir = jobs[0].run_dirs[0]
    holder = start(f"import time\nfrom mmlib.train import run_folder\nwith run_folder.locked({str(run_dir)!r}):\n"
                   "    print('held', flush=True)\n    time.sleep(120)", tmp_path)
    assert holder.stdout.readline() == "held\n"
    lines = []
    try:
        failures = LocalExecutor().execute(jobs, log=lines.append).failed
    finally:
        kill(holder)
    assert failures == [(jobs[0].labels[0], run_dir / "train.ipynb")]
    assert lines == [f"[1/1] {jobs[0].labels[0]}: FAILED: {run_dir} is in use by process {holder.pid} on "
                     f"{socket.gethostname()} (see {run_dir / 'train.ipynb'})"]
    assert sorted(p.name for p in run_dir.iterdir()) == [run_folder.LOCK]  # nothing of the holder's was touched


OLD_HOLDER = """
import fcntl, os, sys, time
fd = os.open(os.path.join(sys.argv[1], ".lock"), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.pwrite(fd, b"%d\\n" % os.getpid(), 0)
print("held", flush=True)
time.sleep(120)
"""


def test_a_lock_an_older_mmlib_holds_names_its_pid(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", OLD_HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert run_folder.lock_owner(run_dir) == str(holder.pid)
        with pytest.raises(errors.RunDirBusyError, match=rf"^{run_dir} is in use by process {holder.pid} \(lock "):
            with run_folder.locked(run_dir):
                pass
    finally:
        kill(holder)


PROBER = """
import sys
from pathlib import Path
from mmlib import files
from mmlib.train import run_folder
run_dir, stop = Path(sys.argv[1]), Path(sys.argv[2])
probes = held = 0
print("probing", flush=True)
while not stop.exists():
    for _ in range(100):
        held += run_folder.lock_owner(run_dir) is not None
    probes += 100
print(probes, held)
"""


@pytest.mark.slow
def test_probing_a_lock_in_a_tight_loop_never_makes_a_trainer_fail_to_take_it(tmp_path):
    run_dir, stop = tmp_path / "run", tmp_path / "stop"
    with run_folder.locked(run_dir):  # the lock file exists, free
        pass
    prober = subprocess.Popen([sys.executable, "-c", PROBER, str(run_dir), str(stop)], stdout=subprocess.PIPE, text=True)
    assert prober.stdout.readline() == "probing\n"
    taken, deadline = 0, time.monotonic() + 1
    try:
        while time.monotonic() < deadline:  # the trainer's way in, thousands of times under the probes
            with run_folder.locked(run_dir):
                taken += 1
    finally:
        stop.touch()
    out, _ = prober.communicate(timeout=60)
    probes, held = map(int, out.split())
    assert taken > 100 and 0 < held < probes  # the probes ran, and found the trainer holding it, meanwhile
    assert run_folder.lock_owner(run_dir) is None


# --- errors: one line, an exit code per kind -----------------------------------------------------------


def test_non_finite_loss_in_the_first_epoch_says_no_checkpoint_exists(tmp_path, monkeypatch, capsys):
    real_forward = losses.CrossEntropyLoss.forward
    monkeypatch.setattr(losses.CrossEntropyLoss, "forward", lambda self, x, y: real_forward(self, x, y) * math.nan)
    run_dir = tmp_path / "run"
    steps = math.ceil(len(load_dataset("digits", imb_type="exp", ratio=10.0).train_labels) / tiny()["batch_size"])
    assert cli.main(["train", "--run-dir", str(run_dir), *cli_args(tiny(method="erm"))]) == 6
    assert capsys.readouterr().err == (
        f"error: non-finite loss in run {run_dir} (erm) at epoch 1, step 1 of {steps}; no checkpoint was written yet. "
        "Try a lower lr (or check the data), in another run_dir\n"
    )
    assert not (run_dir / run_folder.CHECKPOINT).exists()
    monkeypatch.setenv("MMLIB_DEBUG", "1")
    with pytest.raises(errors.NonFiniteLossError):
        cli.main(["train", "--run-dir", str(run_dir), *cli_args(tiny(method="erm"))])


@pytest.mark.slow
def test_a_full_disk_is_one_error_line_and_the_run_resumes_once_space_is_free(tmp_path, monkeypatch, capsys):
    run_dir, real_write = tmp_path / "run", os.write
    writes = []

    def full_after_the_first_checkpoint(fd, data):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if target.startswith(str(run_dir)) and "checkpoint.pt" in target:
            writes.append(target)
            if run_folder.checkpoint_info(run_dir) is not None:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_after_the_first_checkpoint)
    assert cli.main(["train", "--run-dir", str(run_dir), *cli_args(tiny())]) == errors.NoSpaceError.exit_code
    assert capsys.readouterr().err == (f"error: no space left on the device writing {run_dir / run_folder.CHECKPOINT}: free "
                                       "some space there and run the same command again (what was written before is kept)\n")
    assert writes and run_folder.load_checkpoint(run_dir)["epoch"] == 1
    assert not list(run_dir.glob(".*.tmp"))
    monkeypatch.setattr(os, "write", real_write)
    assert cli.main(["train", "--run-dir", str(run_dir), *cli_args(tiny())]) == 0
    trainer.train(tiny(), tmp_path / "straight")
    same_results(run_dir, tmp_path / "straight")


def test_exit_codes_per_kind_of_error():
    assert errors.exit_code(ValueError("bad parameter")) == 2
    assert errors.exit_code(FileNotFoundError("no data")) == 3
    assert [errors.exit_code(e("x")) for e in (errors.RunDirBusyError, errors.CorruptFileError,
                                                errors.NonFiniteLossError, errors.NoSpaceError)] == [4, 5, 6, 7]
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as cause:
            raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos") from cause
    except RuntimeError as wrapped:
        assert errors.exit_code(wrapped) == 7
    assert errors.exit_code(KeyError("a bug")) is None  # shown as a traceback


def test_an_unreadable_json_file_is_named(tmp_path):
    run_dir = tmp_path / "run"
    trainer.train(tiny(method="erm", epochs=1), run_dir)
    (run_dir / run_folder.CONFIG).write_text("{'not': json")
    with pytest.raises(errors.CorruptFileError, match=rf"{run_dir / run_folder.CONFIG} is not readable JSON \(Expecting"):
        run_folder.load_results(run_dir)


# --- bad inputs: one ValueError naming the parameter ---------------------------------------------------


@pytest.mark.parametrize("name", list(losses.LOSSES))
def test_every_loss_refuses_an_empty_batch_integer_logits_and_float_targets(name):
    loss = losses.build_loss(name, [5, 3, 2], **({"delta_neg": 0.6, "beta": 1.5} if name.startswith("mm") else {}))
    logits, target = torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])
    assert torch.isfinite(loss(logits, target))
    with pytest.raises(ValueError, match="the batch is empty"):
        loss(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="logits must be floating point, got torch.int64"):
        loss(logits.long(), target)
    with pytest.raises(ValueError, match="target must hold class labels as int64, got torch.float32"):
        loss(logits, target.float())


@pytest.mark.parametrize("counts, shown", [([10, 1.5], "1.5"), ([2.7, 1], "2.7"), ([10, math.nan], "nan"),
                                           (["10", 1], "'10'"), ([10, 0], "0"), ([10, None], "None")])
def test_class_counts_must_be_positive_whole_numbers(counts, shown):
    with pytest.raises(ValueError, match=rf"cls_num_list must hold positive whole class counts; class \d has {shown}"):
        losses.build_loss("ldam", counts)
    assert losses.ldam_margins([10.0, 1.0]).tolist() == pytest.approx([0.5 * 10**-0.25, 0.5])  # 10.0 is whole


@pytest.mark.parametrize("overrides, message", [
    ({"momentum": 5.0}, r"momentum must be in \[0, 1\), got 5.0"),
    ({"lr_decay": 0.0}, r"lr_decay must be in \(0, 1\], got 0.0"),
    ({"lr_decay": -1.0}, r"lr_decay must be in \(0, 1\], got -1.0"),
    ({"lr_decay": math.nan}, r"lr_decay must be in \(0, 1\], got nan"),
    ({"seed": -1}, r"seed must be in \[0, 2\*\*32\), got -1"),
    ({"seed": 2**70}, r"seed must be in \[0, 2\*\*32\), got 1180591620717411303424"),
    ({"rand_number": -5}, r"rand_number must be in \[0, 2\*\*32\), got -5"),
    ({"method": "ldam-drw-ssp", "ssp_epochs": 0}, "ssp_epochs must be >= 1, got 0"),
    ({"checkpoint_every": 0}, "checkpoint_every must be >= 1, got 0"),
])
def test_bad_run_parameters_name_themselves(overrides, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**tiny(**overrides))


def test_parameters_must_be_a_dict():
    with pytest.raises(ValueError, match="run parameters must be a dict of name: value, got list"):
        RunConfig.from_dict([("epochs", 2)])


def test_a_resumed_run_accepts_only_resumable_changes(tmp_path):
    run_dir = tmp_path / "run"
    trainer.train(tiny(method="erm", epochs=1), run_dir)
    assert json.loads((run_dir / run_folder.CHECKPOINT_INFO).read_text())["config"]["epochs"] == 1
    trainer.train(tiny(method="erm", epochs=1, checkpoint_every=5, eval_batch_size=64), run_dir)  # how, not what
    with pytest.raises(ValueError, match=r"other parameters \(epochs: 1 -> 2, .*; recorded in config.json\)"):
        trainer.train(tiny(method="erm", epochs=2), run_dir)  # finished: its results were written with config.json
    (run_dir / run_folder.FINISHED).unlink()
    with pytest.raises(ValueError, match=r"other parameters \(epochs: 1 -> 2, .*; recorded in checkpoint.pt\)"):
        trainer.train(tiny(method="erm", epochs=2), run_dir)
