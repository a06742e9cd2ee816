"""Sweeps: planning, skipping finished runs, resuming, isolating failures, fusing, GPU workers."""

import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch

import mmlib.notebook
from mmlib import rundir, sweeps, training
from mmlib.jobs import LocalExecutor

TINY = {"arch": "resnet8", "epochs": 2, "checkpoint_every": 1}


def quick_plan(out, **kwargs):
    params = dict(settings=["digits-step-10"], methods=["erm", "mm-drw"], overrides=TINY)
    return sweeps.plan("quick", out, **{**params, **kwargs})


def test_plan_covers_cells_times_seeds_with_validated_parameters(tmp_path):
    jobs, finished = quick_plan(tmp_path, seeds=[0, 1, 2], mm_variants=("equations", "released"))
    assert finished == [] and len(jobs) == 3 * 3  # erm, mm-drw, mm-drw-released; no fusion by default
    dirs = {d.relative_to(tmp_path).as_posix() for j in jobs for d in j.run_dirs}
    assert "quick/digits-step-10/mm-drw-released/seed2" in dirs
    params = next(j.params[0] for j in jobs if str(j.run_dirs[0]).endswith("mm-drw-released/seed2"))
    assert (params["mm_variant"], params["seed"], params["arch"], params["quiet"]) == ("released", 2, "resnet8", True)


def test_plan_fuses_runs_of_one_setting_that_share_everything_but_seeds_and_loss(tmp_path):
    jobs, _ = quick_plan(tmp_path, seeds=[0, 1, 2], mm_variants=("equations", "released"), fuse=4)
    sizes = sorted(len(j.run_dirs) for j in jobs)
    assert sizes == [3, 4, 2] or sizes == [2, 3, 4]  # erm's 3 seeds; the 6 MM runs (both variants) in 4 + 2
    mm_job = next(j for j in jobs if len(j.run_dirs) == 4)
    assert {p["method"] for p in mm_job.params} == {"mm-drw"}
    parameters = mm_job.notebook_parameters()
    assert len(parameters["fused_runs"]) == 3 and parameters["run_dir"] == str(mm_job.run_dirs[0])


def test_plan_fails_before_any_work_on_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="no data root given"):
        sweeps.plan("table1", tmp_path, settings=["cifar10-exp-100"], methods=["erm"])
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        quick_plan(tmp_path, overrides={"epochs": 0})
    with pytest.raises(ValueError, match="unknown parameter"):
        quick_plan(tmp_path, overrides={"epoch": 3})
    with pytest.raises(ValueError, match="seeds must be distinct"):
        quick_plan(tmp_path, seeds=[0, 0])
    assert not (tmp_path / "quick").exists() and not (tmp_path / "table1").exists()


def test_data_roots_per_dataset(tmp_path):
    assert sweeps.parse_data_roots(["/data"]) == {None: "/data"}
    assert sweeps.parse_data_roots(["cifar10=/a", "cifar100=/b"]) == {"cifar10": "/a", "cifar100": "/b"}
    (tmp_path / "c10").mkdir()
    (tmp_path / "c100").mkdir()
    roots = {"cifar10": str(tmp_path / "c10"), "cifar100": str(tmp_path / "c100")}
    jobs, _ = sweeps.plan("table1", tmp_path / "runs", settings=["cifar10-exp-100", "cifar100-exp-100"],
                          methods=["erm"], data_roots=roots)
    assert {j.params[0]["dataset"]: j.params[0]["data_root"] for j in jobs} == roots


def test_sweep_runs_notebooks_skips_finished_resumes_interrupted_and_isolates_failures(tmp_path, monkeypatch):
    out = tmp_path / "runs"
    jobs, _ = quick_plan(out, seeds=[0, 1])
    erm0, erm1, mm0, mm1 = sorted((d for j in jobs for d in j.run_dirs), key=str)

    # erm seed 0 was interrupted after one of its two epochs.
    real_save, saves = rundir.save_checkpoint, []

    def crash(path, obj):
        if saves:
            raise KeyboardInterrupt
        saves.append(path)
        real_save(path, obj)

    monkeypatch.setattr(rundir, "save_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        training.run(next(j.params[0] for j in jobs if j.run_dirs[0] == erm0), erm0)
    monkeypatch.setattr(rundir, "save_checkpoint", real_save)
    first_epoch = torch.load(erm0 / rundir.CHECKPOINT, weights_only=False)["history"][0]
    # mm-drw seed 1's folder holds a checkpoint of random bytes: planning goes on, its notebook fails, alone.
    mm1.mkdir(parents=True)
    (mm1 / rundir.CHECKPOINT).write_bytes(bytes(range(256)) * 8)

    lines = []
    failures = sweeps.sweep("quick", out, [0, 1], ["digits-step-10"], ["erm", "mm-drw"], overrides=TINY, log=lines.append)
    assert failures == [("quick digits-step-10 mm-drw seed1", mm1 / "train.ipynb")]
    assert lines[0] == "quick: 4 runs to do in 4 notebooks, 0 finished runs skipped"
    assert sum("final" in line and "best" in line for line in lines) == 3
    reason = f"CorruptFileError: no usable checkpoint in {mm1}: {mm1 / rundir.CHECKPOINT} (UnpicklingError"
    assert any(f"mm-drw seed1: FAILED: {reason}" in line for line in lines)
    assert any(line.startswith(f"  quick digits-step-10 mm-drw seed1: {reason}") for line in lines)  # the summary
    for run_dir in (erm0, erm1, mm0):
        assert rundir.is_finished(run_dir)
        notebook = nbformat.read(run_dir / "train.ipynb", as_version=4)  # the executed notebook is the provenance
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in notebook.cells)
    assert "Delete checkpoint.pt there to train this run from scratch" in (mm1 / "train.ipynb").read_text()
    resumed = rundir.load_results(erm0)["history"]
    assert len(resumed) == 2 and resumed[0] == first_epoch

    lines.clear()
    sweeps.sweep("quick", out, [0, 1], ["digits-step-10"], ["erm", "mm-drw"], overrides=TINY, log=lines.append)
    assert lines[0] == "quick: 1 runs to do in 1 notebooks, 3 finished runs skipped"


def test_fused_sweep_lands_in_each_runs_own_directory(tmp_path):
    out = tmp_path / "runs"
    failures = sweeps.sweep("quick", out, [0, 1], ["digits-exp-10"], ["mm-drw"], overrides=TINY, fuse=2, log=print)
    assert failures == []
    for seed in (0, 1):
        run_dir = out / "quick" / "digits-exp-10" / "mm-drw" / f"seed{seed}"
        assert rundir.is_finished(run_dir) and (run_dir / "train.ipynb").exists()
        assert rundir.load_results(run_dir)["config"]["config"]["seed"] == seed


def test_one_worker_per_gpu_each_seeing_only_its_own(tmp_path, monkeypatch):
    seen = []

    def fake_run(command, env, **kwargs):
        seen.append(env.get("CUDA_VISIBLE_DEVICES"))
        time.sleep(0.2)  # long enough for both workers to take jobs
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(mmlib.notebook.subprocess, "run", fake_run)  # the notebook runner sweeps call
    jobs, _ = quick_plan(tmp_path, seeds=[0, 1, 2])
    failures = LocalExecutor([0, 1]).run(jobs, log=lambda line: None)
    assert set(seen) == {"0", "1"} and len(seen) == len(jobs)
    assert len(failures) == len(jobs)  # the fake ran nothing, so no run finished
    seen.clear()
    LocalExecutor().run(jobs, log=lambda line: None)
    assert seen == [None] * len(jobs)


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
