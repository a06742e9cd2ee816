"""Sweeps: planning, skipping finished runs, resuming, isolating failures, fusing, GPU workers."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mmlib.notebook
from mmlib.config import RunConfig
from mmlib.errors import RunDirBusyError
from mmlib.sweep import plan
from mmlib.sweep.jobs import Outcome
from mmlib.sweep.local_executor import LocalExecutor
from mmlib.train import run_folder, trainer

TINY = {"arch": "resnet8", "epochs": 2, "checkpoint_every": 1}
IN_PROCESS = LocalExecutor(runner="python")  # python -m mmlib.sweep.jobs: the same training, no notebook kernel


def quick_plan(out, **kwargs):
    params = dict(settings=["digits-step-10"], methods=["erm", "mm-drw"], overrides=TINY)
    return plan.plan("quick", out, **{**params, **kwargs})


def test_plan_covers_cells_times_seeds_with_validated_parameters(tmp_path):
    planned = quick_plan(tmp_path, seeds=[0, 1, 2], mm_variants=("equations", "released"))
    jobs = planned.jobs
    assert planned.finished == planned.changed == planned.failed == [] and len(jobs) == 3 * 3  # no fusion by default
    dirs = {d.relative_to(tmp_path).as_posix() for j in jobs for d in j.run_dirs}
    assert "quick/digits-step-10/mm-drw-released/seed2" in dirs
    params = next(j.params[0] for j in jobs if str(j.run_dirs[0]).endswith("mm-drw-released/seed2"))
    assert (params["mm_variant"], params["seed"], params["arch"], params["quiet"]) == ("released", 2, "resnet8", True)


def test_plan_fuses_runs_of_one_setting_that_share_everything_but_seeds_and_loss_seed_major(tmp_path):
    jobs = quick_plan(tmp_path, seeds=[0, 1, 2], mm_variants=("equations", "released"), fuse=4).jobs
    # erm's 3 seeds; the 6 MM runs (both variants), filled within the lowest seed first: 4 (seeds 0, 0, 1, 1) + 2
    assert [[label.rsplit(" ", 2)[1:] for label in job.labels] for job in jobs] == [
        [["erm", "seed0"], ["erm", "seed1"], ["erm", "seed2"]],
        [["mm-drw", "seed0"], ["mm-drw-released", "seed0"], ["mm-drw", "seed1"], ["mm-drw-released", "seed1"]],
        [["mm-drw", "seed2"], ["mm-drw-released", "seed2"]],
    ]
    mm_job = jobs[1]
    assert {p["method"] for p in mm_job.params} == {"mm-drw"}
    parameters = mm_job.notebook_parameters()
    assert len(parameters["fused_runs"]) == 3 and parameters["run_dir"] == str(mm_job.run_dirs[0])


def test_unfused_plans_run_seed_0_of_every_cell_first(tmp_path):
    jobs = quick_plan(tmp_path, seeds=[0, 1]).jobs
    assert [job.labels[0].split(" ", 2)[2] for job in jobs] == ["erm seed0", "mm-drw seed0", "erm seed1", "mm-drw seed1"]


def test_a_job_carries_every_parameter_so_the_notebooks_own_defaults_never_apply(tmp_path):
    """train.ipynb's defaults are a one-minute digits run (ResNet-8, 10 epochs); a table's run must get the
    protocol's ResNet-32 and 200 epochs although its cell names neither."""
    (tmp_path / "c10").mkdir()
    job = plan.plan("table1", tmp_path / "runs", settings=["cifar10-exp-100"], methods=["ldam-drw"],
                      data_roots={None: str(tmp_path / "c10")}).jobs[0]
    parameters = job.notebook_parameters()
    assert set(RunConfig.names()) <= set(parameters)
    assert (parameters["arch"], parameters["epochs"], parameters["checkpoint_every"]) == ("resnet32", 200, 10)


def test_plan_fails_before_any_work_on_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="no data root given"):
        plan.plan("table1", tmp_path, settings=["cifar10-exp-100"], methods=["erm"])
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        quick_plan(tmp_path, overrides={"epochs": 0})
    with pytest.raises(ValueError, match="unknown parameter"):
        quick_plan(tmp_path, overrides={"epoch": 3})
    with pytest.raises(ValueError, match="seeds must be distinct"):
        quick_plan(tmp_path, seeds=[0, 0])
    assert not (tmp_path / "quick").exists() and not (tmp_path / "table1").exists()


def test_data_roots_per_dataset(tmp_path):
    assert plan.parse_data_roots(["/data"]) == {None: "/data"}
    assert plan.parse_data_roots(["cifar10=/a", "cifar100=/b"]) == {"cifar10": "/a", "cifar100": "/b"}
    (tmp_path / "c10").mkdir()
    (tmp_path / "c100").mkdir()
    roots = {"cifar10": str(tmp_path / "c10"), "cifar100": str(tmp_path / "c100")}
    jobs = plan.plan("table1", tmp_path / "runs", settings=["cifar10-exp-100", "cifar100-exp-100"],
                       methods=["erm"], data_roots=roots).jobs
    assert {j.params[0]["dataset"]: j.params[0]["data_root"] for j in jobs} == roots


@pytest.mark.slow
def test_sweep_skips_finished_resumes_interrupted_and_isolates_failures(tmp_path, monkeypatch):
    """Through the python runner (the notebook runner: the quick preset's test, tests/report/test_report_notebooks.py)."""
    out = tmp_path / "runs"
    erm = dict(settings=["digits-step-10"], methods=["erm"], overrides=TINY, executor=IN_PROCESS)
    erm0, erm1 = (out / "quick" / "digits-step-10" / "erm" / f"seed{k}" for k in (0, 1))

    # erm seed 0 was interrupted after one of its two epochs.
    real_save, saves = run_folder.save_checkpoint, []

    def crash(path, obj):
        if saves:
            raise KeyboardInterrupt
        saves.append(path)
        real_save(path, obj)

    monkeypatch.setattr(run_folder, "save_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(quick_plan(out, methods=["erm"]).jobs[0].params[0], erm0)
    monkeypatch.setattr(run_folder, "save_checkpoint", real_save)
    first_epoch = torch.load(erm0 / run_folder.CHECKPOINT, weights_only=False)["history"][0]
    # erm seed 1's folder holds a checkpoint of random bytes: planning goes on, its job fails, alone.
    erm1.mkdir(parents=True)
    (erm1 / run_folder.CHECKPOINT).write_bytes(bytes(range(256)) * 8)

    lines = []
    outcome = plan.sweep("quick", out, [0, 1], log=lines.append, **erm)
    assert outcome.failed == [("quick digits-step-10 erm seed1", erm1 / "train.log")] and not outcome.interrupted
    assert lines[0] == "quick: 2 runs to do in 2 notebooks, 0 finished runs skipped"
    reason = f"error: no usable checkpoint in {erm1}: {erm1 / run_folder.CHECKPOINT} (UnpicklingError"
    assert lines[1].startswith("[1/2] quick digits-step-10 erm seed0: final ")
    assert lines[2].startswith(f"[2/2] quick digits-step-10 erm seed1: FAILED: {reason}")
    assert lines[-1].startswith(f"  quick digits-step-10 erm seed1: {reason}")  # the summary
    assert "Delete checkpoint.pt there to train this run from scratch" in (erm1 / "train.log").read_text()
    assert run_folder.is_finished(erm0) and "final" in (erm0 / "train.log").read_text()
    resumed = run_folder.load_results(erm0)["history"]
    assert len(resumed) == 2 and resumed[0] == first_epoch  # resumed, not started again

    lines.clear()
    plan.sweep("quick", out, [0, 1], log=lines.append, **erm)
    assert lines[0] == "quick: 1 runs to do in 1 notebooks, 1 finished runs skipped"


def test_one_worker_per_gpu_each_seeing_only_its_own(tmp_path, monkeypatch):
    seen = []

    def fake_call_module(module, args, parameters, env=None, cwd=None, started=None):
        seen.append(env.get("CUDA_VISIBLE_DEVICES"))
        time.sleep(0.2)  # long enough for both workers to take jobs
        return subprocess.CompletedProcess([module], 0, "", "")

    monkeypatch.setattr(mmlib.notebook, "call_module", fake_call_module)  # what every runner starts its process with
    jobs = quick_plan(tmp_path, seeds=[0, 1, 2]).jobs
    outcome = LocalExecutor([0, 1]).execute(jobs, log=lambda line: None)
    assert set(seen) == {"0", "1"} and len(seen) == len(jobs)
    assert len(outcome.failed) == len(jobs)  # the fake ran nothing, so no run finished
    seen.clear()
    LocalExecutor().execute(jobs, log=lambda line: None)
    assert seen == [None] * len(jobs)


@pytest.mark.slow
def test_cli_dry_run_prints_the_plan(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mmlib", "sweep", "quick", "--settings", "digits-exp-10", "--seeds", "0", "1",
         "--out", str(tmp_path), "--fuse", "2", "--dry-run", "--set", "arch=resnet8"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    assert out[0] == "quick: 6 runs to do in 3 notebooks, 0 finished runs skipped"
    assert "fused: quick digits-exp-10 erm seed0 | quick digits-exp-10 erm seed1" in out
    assert not any(Path(tmp_path).iterdir())


def test_cli_sweep_without_data_is_one_clear_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mmlib", "sweep", "table1", "--out", str(tmp_path), "--dry-run"],
                          capture_output=True, text=True)
    assert done.returncode == 3 and done.stderr.startswith("error: no data root given")


# --- a run's identity is its configuration; failed runs stay failed until retried ---------------------------

ERM = dict(settings=["digits-step-10"], methods=["erm"])


@pytest.mark.slow
def test_a_smoke_sweep_then_the_real_one_stops_before_training_and_rerun_changed_replaces_the_old_runs(tmp_path):
    out = tmp_path / "runs"
    for job in plan.plan("quick", out, [0, 1], **ERM, overrides={**TINY, "epochs": 1}).jobs:  # the smoke sweep's
        trainer.train(job.params[0], job.run_dirs[0])  # runs, trained here (a sweep's jobs: the tests above)
    seed0, seed1 = (out / "quick" / "digits-step-10" / "erm" / f"seed{k}" for k in (0, 1))
    (seed1 / run_folder.FINISHED).unlink()  # seed 1 now reads as interrupted after its one epoch: resumable
    before = {p: p.read_bytes() for d in (seed0, seed1) for p in d.rglob("*") if p.is_file()}

    with pytest.raises(ValueError) as refused:
        plan.sweep("quick", out, [0, 1], **ERM, overrides=TINY, executor=IN_PROCESS, log=print)
    assert str(refused.value).splitlines() == [
        "2 planned runs were trained with other parameters (recorded -> planned):",
        f"  {seed0}: epochs: 1 -> 2, lr_milestones: [] -> [1], switch_epoch: 0 -> 1, ssp_epochs: 1 -> 2",
        f"  {seed1}: epochs: 1 -> 2, lr_milestones: [] -> [1], switch_epoch: 0 -> 1, ssp_epochs: 1 -> 2",
        "give another --out, or --rerun-changed to move them aside (<run>.replaced-<UTC time>) and train them anew",
    ]
    lines = []
    plan.sweep("quick", out, [0, 1], **ERM, overrides=TINY, dry_run=True, rerun_changed=True, log=lines.append)
    assert lines[0] == "quick: 2 runs to do in 2 notebooks, 0 finished runs skipped"
    assert before == {p: p.read_bytes() for d in (seed0, seed1) for p in d.rglob("*") if p.is_file()}  # untouched
    with run_folder.locked(seed1):  # another process trains seed 1: nothing is moved
        with pytest.raises(RunDirBusyError, match=rf"^{seed1} is in use by process {os.getpid()} on .*: --rerun-changed "
                                                  "moves no run another process trains; wait for it to end, or give "
                                                  "another --out$"):
            plan.sweep("quick", out, [0, 1], **ERM, overrides=TINY, executor=IN_PROCESS, rerun_changed=True)
    assert not list(out.rglob("*.replaced-*"))

    lines.clear()
    assert plan.sweep("quick", out, [0, 1], **ERM, overrides=TINY, executor=IN_PROCESS, rerun_changed=True,
                        log=lines.append) == Outcome()
    for run_dir in (seed0, seed1):
        [old] = run_dir.parent.glob(f"{run_dir.name}.replaced-*")
        assert any(line == f"moved {run_dir} aside to {old}: it was trained with other parameters" for line in lines)
        assert {p: b for p, b in before.items() if p.is_relative_to(run_dir)} == {
            run_dir / p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()}  # kept whole
        assert run_folder.load_results(run_dir)["config"]["config"]["epochs"] == 2  # trained anew
        assert (run_dir / "train.log").exists() and not (run_dir / "train.ipynb").exists()
    lines.clear()
    plan.sweep("quick", out, [0, 1], **ERM, overrides=TINY, executor=IN_PROCESS, log=lines.append)
    assert lines == ["quick: 0 runs to do in 0 notebooks, 2 finished runs skipped"]


@pytest.mark.slow
def test_a_diverging_run_fails_alone_and_is_left_alone_until_retried(tmp_path):
    """ldam-drw fused with an MM run whose scale overflows float32 (its loss is NaN from the first step)."""
    out = tmp_path / "runs"
    both = dict(settings=["digits-exp-10"], methods=["ldam-drw", "mm-drw"], mm_scale=1e39, overrides={**TINY, "epochs": 1},
                fuse=2, executor=IN_PROCESS)
    lines = []
    failures = plan.sweep("quick", out, [0], **both, log=lines.append).failed
    ldam, mm = out / "quick" / "digits-exp-10" / "ldam-drw" / "seed0", out / "quick" / "digits-exp-10" / "mm-drw-s1e+39" / "seed0"
    assert lines[0] == "quick: 2 runs to do in 1 notebooks, 0 finished runs skipped"
    assert failures == [("quick digits-exp-10 mm-drw-s1e+39 seed0", mm / "train.log")]
    assert run_folder.is_finished(ldam) and not run_folder.is_finished(mm)
    reason = run_folder.failure(mm)["reason"]
    assert reason.startswith(f"non-finite loss in run {mm} (mm-drw) at epoch 1, step 1 of ")
    assert any(line.startswith("[1/2] quick digits-exp-10 ldam-drw seed0: final ") and "notebook" not in line
               for line in lines)
    assert f"[2/2] quick digits-exp-10 mm-drw-s1e+39 seed0: FAILED: {reason} (see {mm / 'train.log'})" in lines
    assert lines[-1] == f"  quick digits-exp-10 mm-drw-s1e+39 seed0: {reason} (see {mm / 'train.log'})"

    lines.clear()
    failures = plan.sweep("quick", out, [0], **both, log=lines.append).failed
    assert failures == [("quick digits-exp-10 mm-drw-s1e+39 seed0", mm / "train.log")]
    assert lines[:2] == ["quick: 0 runs to do in 0 notebooks, 1 finished runs skipped",
                         f"quick digits-exp-10 mm-drw-s1e+39 seed0: failed before ({reason}); not retried "
                         "(--retry-failed retries it)"]
    lines.clear()
    plan.sweep("quick", out, [0], **both, retry_failed=True, log=lines.append)
    assert lines[0] == "quick: 1 runs to do in 1 notebooks, 1 finished runs skipped"
    assert len(list(mm.glob("FAILED.retried-*"))) == 1 and run_folder.failure(mm) is not None  # it diverged again
