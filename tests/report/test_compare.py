"""Paired comparisons over seeds, on run folders written here with chosen errors."""

import math

import matplotlib
import matplotlib.image
import pandas as pd
import pytest
from helpers.fixture_runs import protocol_config

from mmlib import files, paper
from mmlib.report import compare
from mmlib.train import run_folder

matplotlib.use("Agg")

# Student's t quantiles t_{0.975, df} from a printed table (df = 1, 2, 3).
T975 = {1: 12.706, 2: 4.303, 3: 3.182}


def write_run(run_dir, final_error: float, best_error: float | None = None) -> None:
    """A finished run directory as the trainer leaves it, with the given final (and best) error."""
    record = {"epoch": 2, "error": final_error, "per_class_error": [final_error], "group_error": {}, "confusion": []}
    best = {**record, "epoch": 1, "error": final_error if best_error is None else best_error}
    files.write_json(run_dir / run_folder.CONFIG, {"config": protocol_config(run_dir)})
    files.write_json(run_dir / run_folder.COUNTS, {"classes": ["0"], "cls_num_list": [1], "groups": {}, "description": "t"})
    files.write_json(run_dir / run_folder.METRICS, {"final": record, "best": best, "history": [], "seconds": 1.0})
    files.write_text(run_dir / run_folder.FINISHED, "finished\n")


def cell(setting: str, method: str) -> paper.Cell:
    return paper.cells("quick", [setting], [method])[0]


@pytest.fixture
def runs(tmp_path):
    """digits-step-10: mm-drw seeds 0-2, erm seeds 0-3 (seed 3 unpaired); digits-exp-10: one seed each."""
    for seed, error in enumerate([20.0, 22.0, 27.0]):
        write_run(cell("digits-step-10", "mm-drw").path(tmp_path) / f"seed{seed}", error, error - 5)
    for seed, error in enumerate([19.0, 20.0, 24.0, 50.0]):
        write_run(cell("digits-step-10", "erm").path(tmp_path) / f"seed{seed}", error, error - 1)
    write_run(cell("digits-exp-10", "mm-drw").path(tmp_path) / "seed0", 30.0)
    write_run(cell("digits-exp-10", "erm").path(tmp_path) / "seed0", 31.5)
    write_run(cell("digits-exp-10", "erm").path(tmp_path) / "seed1", 33.0)  # unpaired
    (cell("digits-exp-10", "mm-drw").path(tmp_path) / "seed1").mkdir()  # unfinished: not counted
    return tmp_path


def row(df, pair, setting):
    [index] = df.index[(df["pair"] == pair) & (df["setting"] == setting)]
    return df.loc[index]


def test_mean_paired_difference_and_t_interval_over_the_shared_seeds(runs):
    df = compare.paired_differences(runs, [("mm-drw", "erm"), ("ldam-drw", "erm")], tables=["quick"])
    assert list(df.columns) == compare.COLUMNS and len(df) == 4
    step = row(df, "mm-drw − erm", "digits-step-10")
    # differences 1, 2, 3: mean 2, std 1, half-width t_{0.975,2} / sqrt(3)
    assert (step["n"], step["seeds"], step["a_mean"], step["b_mean"]) == (3, "0 1 2", 23.0, 21.0)
    assert step["mean_diff"] == pytest.approx(2.0) and step["std_diff"] == pytest.approx(1.0)
    assert step["t_quantile"] == pytest.approx(T975[2], abs=1e-3)
    half = T975[2] / math.sqrt(3)
    assert (step["ci_low"], step["ci_high"]) == pytest.approx((2.0 - half, 2.0 + half), abs=1e-3)
    assert step["note"] == "" and step["a_run"] == "quick/digits-step-10/mm-drw"

    one = row(df, "mm-drw − erm", "digits-exp-10")
    assert (one["n"], one["mean_diff"], one["note"]) == (1, -1.5, compare.TOO_FEW)
    assert math.isnan(one["ci_low"]) and math.isnan(one["std_diff"])
    none = row(df, "ldam-drw − erm", "digits-step-10")
    assert (none["n"], none["note"]) == (0, compare.NO_RUNS) and math.isnan(none["mean_diff"])

    best = compare.paired_differences(runs, [("mm-drw", "erm")], settings=["digits-step-10"], tables=["quick"],
                                      epoch="best")
    assert len(best) == 1 and best["mean_diff"].iloc[0] == pytest.approx(2.0 - 4.0)  # bests: -5 and -1


def test_t_interval_of_two_and_four_differences():
    mean, std, quantile, half = compare.t_interval([1.0, 4.0])
    assert (mean, std, quantile) == pytest.approx((2.5, math.sqrt(4.5), T975[1]), abs=1e-3)
    assert half == pytest.approx(T975[1] * math.sqrt(4.5) / math.sqrt(2), abs=1e-2)
    mean, std, quantile, half = compare.t_interval([0.5, -0.25, 1.0, 0.75])
    sd = math.sqrt(((0.5 - 0.5) ** 2 + (-0.75) ** 2 + 0.5 ** 2 + 0.25 ** 2) / 3)
    assert (mean, std, half) == pytest.approx((0.5, sd, T975[3] * sd / 2), abs=1e-3)


def test_table_and_forest_plot_are_written(runs, tmp_path):
    df = compare.paired_differences(runs, [("mm-drw", "erm"), ("ldam-drw", "erm")], tables=["quick"])
    md = compare.render(df)["md"]
    assert "### mm-drw − erm" in md and "+2.00 [-0.48, +4.48]" in md
    assert "-1.50, n=1: fewer than 2 paired seeds: no interval" in md and "no paired runs" in md
    paths = compare.write(df, tmp_path / "figures", "compare")
    assert sorted(p.name for p in paths) == ["compare.csv", "compare.md", "compare.pdf", "compare.png"]
    assert len(pd.read_csv(tmp_path / "figures" / "compare.csv")) == 4
    assert matplotlib.image.imread(tmp_path / "figures" / "compare.png").ndim == 3


def test_bad_requests_name_the_problem(runs, tmp_path):
    with pytest.raises(ValueError, match="la: no such cell"):
        compare.paired_differences(runs, [("la", "erm")], tables=["quick"])
    with pytest.raises(ValueError, match="no cell of these pairs in quick on cifar10-exp-100"):
        compare.paired_differences(runs, [("mm-drw", "erm")], settings=["cifar10-exp-100"], tables=["quick"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        compare.paired_differences(tmp_path / "nowhere", tables=["quick"])
    with pytest.raises(ValueError, match="epoch must be one of"):
        compare.paired_differences(runs, tables=["quick"], epoch="last")


def test_mm_drw_is_paired_with_ldam_drw_plus_sam_of_the_beyond_table(tmp_path):
    """The default pairs hold MM-DRW against LDAM-DRW + SAM (Rangwani et al. 2022), looked up in table1 and beyond."""
    mm = paper.cells("table1", ["cifar10-exp-100"], ["mm-drw"])[0]
    sam = paper.cells("beyond", ["cifar10-exp-100"], ["ldam-drw-sam"])[0]
    for seed, (a, b) in enumerate([(22.0, 18.5), (21.0, 18.0)]):
        write_run(mm.path(tmp_path) / f"seed{seed}", a)
        write_run(sam.path(tmp_path) / f"seed{seed}", b)
    df = compare.paired_differences(tmp_path, settings=["cifar10-exp-100"])
    found = row(df, "mm-drw − ldam-drw-sam", "cifar10-exp-100")
    assert (found.n, found.b_run) == (2, "beyond/cifar10-exp-100/ldam-drw-sam")
    assert found.mean_diff == pytest.approx(3.25) and found.std_diff == pytest.approx(math.sqrt(0.125))
    assert row(df, "mm-drw-sam − mm-drw", "cifar10-exp-100").note == compare.NO_RUNS
