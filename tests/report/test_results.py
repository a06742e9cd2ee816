"""Metrics of finished runs: collect (finished, unfinished, failed, conflicting, idempotent, small) and load."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers.fixture_runs import cell_of, confusion, write_run

from mmlib import files
from mmlib.config import resolved
from mmlib.report import results
from mmlib.train import run_folder, trainer

CELL = cell_of("table1", "cifar10-exp-100", "mm-drw")
CORRECT = [900, 880, 850, 800, 760, 700, 650, 600, 550, 500]  # of 1000 test images a class


def protocol_run(root, seed=0, correct=CORRECT, **params):
    """A finished 200-epoch run of CELL under root, as the trainer leaves it, with a checkpoint and a notebook."""
    run_dir = CELL.path(root) / f"seed{seed}"
    write_run(run_dir, CELL.run_params(seed=seed, **params), 1000, correct)
    torch.save({"epoch": 200}, run_dir / run_folder.CHECKPOINT)
    (run_dir / "train.ipynb").write_text(json.dumps({"cells": []}))
    return run_dir


def same_groups(ours: dict, theirs: dict) -> bool:
    """Group errors equal to 6 significant digits, None (a group without classes) alike."""
    return ours.keys() == theirs.keys() and all(
        (ours[g] is None and theirs[g] is None) or ours[g] == pytest.approx(theirs[g], rel=1e-5) for g in ours)


def test_a_record_holds_the_run_without_checkpoints_and_loads_as_the_run(tmp_path):
    run_dir = protocol_run(tmp_path / "runs")

    done = results.collect(tmp_path / "runs", tmp_path / "results")

    record = tmp_path / "results" / "table1" / "cifar10-exp-100" / CELL.run_name / "seed0"
    assert done.written == [(run_dir, record)] and not done.refused
    assert sorted(p.name for p in record.iterdir()) == sorted([
        "config.json", "class_counts.json", "metrics.json", "history.csv", "per_class.csv",
        "confusion_final.csv.gz", "confusion_best.csv.gz", "FINISHED"])
    ours, theirs = results.load(record), results.load(run_dir)
    assert ours["config"] == theirs["config"] and ours["class_counts"] == theirs["class_counts"]
    for epoch in ("final", "best"):
        assert ours[epoch]["confusion"] == confusion(CORRECT, 1000).tolist() == theirs[epoch]["confusion"]
        assert ours[epoch]["error"] == pytest.approx(100 * (1 - sum(CORRECT) / 10000), rel=1e-6)
        assert ours[epoch]["per_class_error"] == pytest.approx([100 * (1 - c / 1000) for c in CORRECT], rel=1e-6)
        assert same_groups(ours[epoch]["group_error"], theirs[epoch]["group_error"])
    assert len(ours["history"]) == 200
    for mine, original in zip(ours["history"], theirs["history"]):
        assert mine.keys() == original.keys()
        assert mine["lr"] == pytest.approx(original["lr"], rel=1e-5)
        assert mine["test_error"] == pytest.approx(original["test_error"], rel=1e-5)
        assert same_groups(mine["group_error"], original["group_error"])
    assert ours["seconds"] == 300.0 and ours["fused_runs"] == 1 and ours["finished_at"].startswith("2026-01-01")
    assert (record / "per_class.csv").read_bytes() == (run_dir / "per_class.csv").read_bytes()


def test_collecting_twice_changes_nothing(tmp_path):
    protocol_run(tmp_path / "runs")
    results.collect(tmp_path / "runs", tmp_path / "results")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp_path / "results").rglob("*") if p.is_file()}

    again = results.collect(tmp_path / "runs", tmp_path / "results")

    assert not again.written and len(again.unchanged) == 1 and not again.refused
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in before} == before


def test_unfinished_and_failed_runs_are_refused_and_listed(tmp_path):
    runs = tmp_path / "runs"
    protocol_run(runs, seed=0)
    interrupted = CELL.path(runs) / "seed1"
    write_run(interrupted, CELL.run_params(seed=1), 1000, CORRECT, finished=False)
    torch.save({"epoch": 37, "config": resolved(CELL.run_params(seed=1))}, interrupted / run_folder.CHECKPOINT)
    failed = CELL.path(runs) / "seed2"
    failed.mkdir(parents=True)
    error = {"output_type": "error", "ename": "FileNotFoundError", "evalue": "no data root given", "traceback": []}
    (failed / "train.ipynb").write_text(json.dumps({"cells": [{"cell_type": "code", "outputs": [error]}]}))

    done = results.collect(runs, tmp_path / "results")

    assert [run for run, _ in done.written] == [CELL.path(runs) / "seed0"]
    assert done.unfinished == [(interrupted, "not finished: 37 of 200 epochs checkpointed")]
    assert done.failed == [(failed, f"FileNotFoundError: no data root given (see {failed / 'train.ipynb'})")]
    assert not (tmp_path / "results" / CELL.path(".") / "seed1").exists()
    lines = done.lines()
    assert lines[0] == "1 results written, 0 unchanged, 1 unfinished, 1 failed and 0 conflicting runs refused"
    assert any(str(interrupted) in line and "37 of 200" in line for line in lines[1:])


def test_another_experiment_goes_apart_and_a_record_of_another_configuration_is_kept_unless_replace(tmp_path):
    protocol_run(tmp_path / "runs")
    results.collect(tmp_path / "runs", tmp_path / "results")
    record = tmp_path / "results" / CELL.path(".") / "seed0"
    kept = (record / "metrics.json").read_bytes()
    # the same cell folder, another beta: another experiment, filed under other/, never in the paper's table
    protocol_run(tmp_path / "beta", beta=1.7)
    done = results.collect(tmp_path / "beta", tmp_path / "results")
    apart = tmp_path / "results" / "other" / CELL.path(".") / "seed0"
    assert [target for _, target in done.written] == [apart] and (record / "metrics.json").read_bytes() == kept
    # there, a run of yet another beta (and data root and device, which do not count) is refused unless --replace
    protocol_run(tmp_path / "again", beta=1.8, data_root=str(tmp_path), device="cpu")

    refused = results.collect(tmp_path / "again", tmp_path / "results")

    [(_, why)] = refused.conflicting
    assert "another configuration (beta: 1.7 -> 1.8: there -> here)" in why and "--replace" in why
    assert results.load(apart)["config"]["config"]["beta"] == 1.7
    replaced = results.collect(tmp_path / "again", tmp_path / "results", replace=True)
    assert len(replaced.written) == 1
    assert results.load(apart)["config"]["config"]["beta"] == 1.8


def test_a_rerun_of_the_same_configuration_is_kept_unless_replace(tmp_path):
    protocol_run(tmp_path / "runs")
    results.collect(tmp_path / "runs", tmp_path / "results")
    protocol_run(tmp_path / "rerun", correct=[c - 10 for c in CORRECT])

    refused = results.collect(tmp_path / "rerun", tmp_path / "results")

    [(_, why)] = refused.conflicting
    assert "same configuration with other results" in why


def test_short_schedules_go_apart_and_the_quick_preset_is_not_collected(tmp_path):
    runs = tmp_path / "runs"
    write_run(CELL.path(runs) / "seed0", CELL.run_params(seed=0, epochs=20), 1000, CORRECT)
    quick = cell_of("quick", "digits-exp-10", "erm")
    write_run(quick.path(runs) / "seed0", quick.run_params(seed=0, epochs=200), 10, [5] * 10)

    done = results.collect(runs, tmp_path / "results")

    assert [record for _, record in done.written] == [tmp_path / "results" / "short" / CELL.path(".") / "seed0"]
    assert not (tmp_path / "results" / "table1").exists() and not (tmp_path / "results" / "quick").exists()


def test_a_cifar100_record_stays_under_60_kb(tmp_path):
    cell = cell_of("table1", "cifar100-exp-100", "mm-ldam-drw")
    run_dir = cell.path(tmp_path / "runs") / "seed0"
    write_run(run_dir, cell.run_params(seed=0), 100, [50] * 100)
    # the worst case: every class's errors spread over the other classes, not piled on one
    rng = np.random.default_rng(0)
    metrics = files.read_json(run_dir / run_folder.METRICS)
    for epoch in ("final", "best"):
        dense = np.zeros((100, 100), dtype=int)
        for c in range(100):
            wrong = rng.integers(5, 95)
            dense[c, c] = 100 - wrong
            np.add.at(dense[c], rng.choice([j for j in range(100) if j != c], wrong), 1)
        metrics[epoch]["confusion"] = dense.tolist()
    files.write_json(run_dir / run_folder.METRICS, metrics)

    [(_, record)] = results.collect(tmp_path / "runs", tmp_path / "results").written

    size = sum(p.stat().st_size for p in record.iterdir())
    assert size < 60_000, f"{size} bytes"
    assert results.load(record)["final"]["confusion"] == metrics["final"]["confusion"]


@pytest.mark.slow
def test_a_real_run_round_trips_and_the_cli_collects(tmp_path, monkeypatch):
    monkeypatch.setenv("MMLIB_CACHE", str(tmp_path / "cache"))
    quick = cell_of("quick", "digits-step-10", "mm-drw")
    # a real digits run, put where a table1 run would be so that collect takes it: another experiment, filed apart
    run_dir = CELL.path(tmp_path / "runs") / "seed0"
    trained = trainer.train(quick.run_params(seed=0, arch="resnet8", epochs=2, quiet=True), run_dir)
    unfinished = CELL.path(tmp_path / "runs") / "seed1"
    unfinished.mkdir()

    done = subprocess.run([sys.executable, "-m", "mmlib", "collect", "--from", str(tmp_path / "runs"),
                           "--to", str(tmp_path / "results")], capture_output=True, text=True)

    assert done.returncode == 1, done.stderr
    record = tmp_path / "results" / "other" / CELL.path(".") / "seed0"
    assert f"collected {run_dir} -> {record}" in done.stdout
    assert f"unfinished: {unfinished}: not finished: 0 of ? epochs checkpointed" in done.stdout
    loaded = results.load(record)
    assert loaded["final"]["error"] == pytest.approx(trained["final"]["error"], rel=1e-5)
    assert loaded["final"]["confusion"] == trained["final"]["confusion"]
    assert loaded["fused_runs"] == 1 and loaded["config"]["cuda_version"] == torch.version.cuda
    assert [h["epoch"] for h in loaded["history"]] == [1, 2]
