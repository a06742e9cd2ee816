"""Reports: finished runs gathered into the paper's tables, per-class errors and the figures."""

import io
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
from helpers.fixture_runs import cell_of, protocol_config
from matplotlib.container import BarContainer

from mmlib import files, paper
from mmlib.choices import MM_VARIANTS
from mmlib.data import imbalance, sources
from mmlib.report import cells, compare, figures, reproduction, tables
from mmlib.train import run_folder, trainer

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)

DIGITS = [str(d) for d in range(10)]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def label_of(cell: paper.Cell) -> str:
    """The row label a table shows: the paper's, MM rows with their variant."""
    mm = cell.method.startswith("mm")
    return cell.label + (" [equations]" if mm and cell.variant == "equations" else "")


def write_run(run_dir, final_error: float, best_error: float, per_class=None, group_error=None, counts=None,
              finished: bool = True, fused_runs: int = 1, **config) -> None:
    """A run directory as the trainer leaves it, holding the numbers given: a run of its cell's protocol, its
    configuration changed by ``config``."""
    counts = counts or imbalance.class_counts(120, 10, "exp", 10.0)
    per_class = per_class or [final_error] * len(counts)
    group_error = group_error or {"many": final_error, "medium": final_error, "few": None}
    groups = imbalance.groups(counts)
    record = {"epoch": 2, "error": final_error, "per_class_error": per_class, "group_error": group_error,
              "confusion": []}
    best = {**record, "epoch": 1, "error": best_error, "per_class_error": [best_error] * len(counts)}
    files.write_json(run_dir / run_folder.CONFIG, {"config": {**protocol_config(run_dir), **config}, "device": "cpu",
                                                 "git_commit": None})
    files.write_json(run_dir / run_folder.COUNTS, {"classes": DIGITS[:len(counts)], "cls_num_list": counts,
                                                 "groups": groups, "description": "test"})
    files.write_json(run_dir / run_folder.METRICS, {"final": record, "best": best, "history": [], "seconds": 1.0,
                                                  "fused_runs": fused_runs})
    if finished:
        files.write_text(run_dir / run_folder.FINISHED, "finished\n")


def row_of(df: pd.DataFrame, cell: paper.Cell) -> pd.Series:
    [index] = df.index[(df["setting"] == cell.setting.name) & (df["run_name"] == cell.run_name)]
    return df.loc[index]


# ---------------------------------------------------------------- collect

def test_collect_means_and_stds_over_finished_seeds(tmp_path):
    erm = cell_of("quick", "digits-exp-10", "erm")
    finals, bests, manys = [10.0, 14.0, 12.5], [9.0, 11.0, 12.0], [5.0, 7.0, 9.5]
    for seed, (final, best, many) in enumerate(zip(finals, bests, manys)):
        write_run(erm.path(tmp_path) / f"seed{seed}", final, best, group_error={"many": many, "medium": 20.0, "few": None})
    write_run(erm.path(tmp_path) / "seed3", 99.0, 99.0, finished=False)  # interrupted: ignored
    released = cell_of("quick", "digits-exp-10", "mm-drw", "released")
    write_run(released.path(tmp_path) / "seed0", 30.0, 25.0)

    df = cells.gather("quick", tmp_path)

    assert list(df.columns) == cells.COLUMNS
    assert len(df) == len(paper.cells("quick", mm_variants=MM_VARIANTS))
    row = row_of(df, erm)
    assert row["seeds"] == 3
    assert row["final_mean"] == pytest.approx(np.mean(finals))
    assert row["final_std"] == pytest.approx(np.std(finals, ddof=1))
    assert row["best_mean"] == pytest.approx(np.mean(bests))
    assert row["best_std"] == pytest.approx(np.std(bests, ddof=1))
    assert row["many_mean"] == pytest.approx(np.mean(manys))
    assert row["medium_mean"] == pytest.approx(20.0)
    assert math.isnan(row["few_mean"]) and math.isnan(row["paper"]) and math.isnan(row["diff"])
    assert math.isnan(row["beta"]) and math.isnan(row["delta_neg"])

    one_seed = row_of(df, released)
    assert (one_seed["seeds"], one_seed["final_mean"], one_seed["variant"]) == (1, 30.0, "released")
    assert math.isnan(one_seed["final_std"])
    assert (one_seed["beta"], one_seed["delta_neg"]) == (released.params["beta"], released.params["delta_neg"])

    missing = row_of(df, cell_of("quick", "digits-step-10", "ldam-drw"))
    assert missing["seeds"] == 0 and missing[["final_mean", "best_mean", "final_std"]].isna().all()


def test_collect_compares_with_the_paper(tmp_path):
    cell = cell_of("table1", "cifar10-exp-100", "erm")
    finals = [30.0, 31.0]
    for seed, final in enumerate(finals):
        write_run(cell.path(tmp_path) / f"seed{seed}", final, final - 1)

    row = row_of(cells.gather("table1", tmp_path, settings=["cifar10-exp-100"], methods=["erm"]), cell)

    assert row["paper"] == paper.TABLE1_ERRORS["erm"][0]
    assert row["diff"] == pytest.approx(np.mean(finals) - paper.TABLE1_ERRORS["erm"][0])


def test_a_cell_counts_only_runs_of_its_protocol_and_notes_how_its_seeds_were_computed(tmp_path):
    cell = cell_of("table1", "cifar10-exp-100", "mm-drw")
    write_run(cell.path(tmp_path) / "seed0", 20.0, 19.0, bf16=True, compile="graphs", fused_runs=4)
    write_run(cell.path(tmp_path) / "seed1", 22.0, 21.0, data_root="/elsewhere", quiet=False)  # incidental
    write_run(cell.path(tmp_path) / "seed2", 60.0, 50.0, lr=0.5)  # another experiment: left out
    write_run(cell.path(tmp_path) / "seed3", 70.0, 60.0, seed=4, data_seed=4)  # not this folder's seed

    df = cells.gather("table1", tmp_path, settings=["cifar10-exp-100"], methods=["mm-drw"])

    row = row_of(df, cell)
    assert (row["seeds"], row["final_mean"]) == (2, 21.0)
    assert row["note"].split(cells.NOTE_SEPARATOR)[-3:] == [
        "bf16=True: 1 of 2 seeds", "compile=graphs: 1 of 2 seeds", "trained fused with other runs: 1 of 2 seeds"]
    assert tables.left_out(df) == [
        f"{cell.path(tmp_path) / 'seed2'}: lr: 0.5 -> 0.1 (the run's -> the cell's)",
        f"{cell.path(tmp_path) / 'seed3'}: seed: 4 -> 3, data_seed: 4 -> 3 (the run's -> the cell's)"]
    md = tables.render(df, "table1")["md"]
    assert "### Left out" in md and f"- {cell.path(tmp_path) / 'seed2'}: lr: 0.5 -> 0.1" in md
    assert "- bf16=True: 1 of 2 seeds: MM-DRW (ours) [equations]\n" in md
    assert cells.finished_runs(cell, tmp_path, protocol={"lr": 0.5})[0]["final"]["error"] == 60.0  # asked for


def test_a_record_older_than_a_parameter_counts_as_the_parameters_default(tmp_path):
    cell = cell_of("table1", "cifar10-exp-100", "ldam-drw")
    write_run(cell.path(tmp_path) / "seed0", 20.0, 19.0)  # written before sam_rho existed: the plain step
    write_run(cell.path(tmp_path) / "seed1", 30.0, 29.0, sam_rho=0.5)  # another experiment
    config_file = cell.path(tmp_path) / "seed0" / run_folder.CONFIG
    recorded = files.read_json(config_file)
    del recorded["config"]["sam_rho"]
    files.write_json(config_file, recorded)

    df = cells.gather("table1", tmp_path, settings=["cifar10-exp-100"], methods=["ldam-drw"])

    assert (row_of(df, cell)["seeds"], row_of(df, cell)["final_mean"]) == (1, 20.0)
    assert tables.left_out(df) == [f"{cell.path(tmp_path) / 'seed1'}: sam_rho: 0.5 -> 0.0 (the run's -> the cell's)"]


def test_every_mm_variant_renders_in_tables_the_summary_figures_and_comparisons(tmp_path):
    setting = "cifar10-exp-100"
    for table in ("table1", "ablation"):
        for seed in (0, 1):
            if table == "table1":
                write_run(cell_of(table, setting, "ldam-drw").path(tmp_path) / f"seed{seed}", 23.0 + seed, 22.0)
            for k, variant in enumerate(MM_VARIANTS):
                for method in ("mm-drw", "mm-ldam-drw"):
                    cell = cell_of(table, setting, method, variant)
                    write_run(cell.path(tmp_path) / f"seed{seed}", 20.0 + k + seed, 19.0)
    gathered = {table: cells.gather(table, tmp_path, settings=[setting]) for table in ("table1", "ablation")}
    for table, df in gathered.items():
        md = tables.render(df, table)["md"]
        for variant in MM_VARIANTS:
            label = label_of(cell_of(table, setting, "mm-drw", variant))
            assert f"| {label} | " in md, (table, variant)
    summary = reproduction.reproduction(gathered)
    for name in paper.VARIANT_NAMES.values():
        assert summary.count(f"| CIFAR-10 long-tailed 100 | {name} | ") == 3  # Table 1, its rank row, the ablation
    specs = ["mm-drw@first-label", "mm-drw@mask-zero", "mm-ldam-drw@released"]
    errors = cells.per_class("table1", tmp_path, setting, specs)
    assert set(errors.classes["method"]) == set(specs) and errors.missing == []
    differences = compare.paired_differences(tmp_path, pairs=[("mm-drw@mask-zero", "mm-drw@first-label")],
                                             settings=[setting])
    assert differences[["n", "mean_diff"]].values.tolist() == [[2, 1.0]]  # 20 + 2 + seed against 20 + 1 + seed


def test_collect_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        cells.gather("table1", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown table"):
        cells.gather("table9", tmp_path)
    with pytest.raises(ValueError, match="no settings cifar10-exp-7"):
        cells.gather("table1", tmp_path, settings=["cifar10-exp-7"])
    with pytest.raises(ValueError, match="no methods nope"):
        cells.gather("table2", tmp_path, methods=["nope"])


# ---------------------------------------------------------------- render

def markdown_rows(md: str, section: str) -> list[list[str]]:
    """The body rows of the Markdown table under ``### section``, as lists of cell texts."""
    lines = md.split(f"### {section}\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def test_render_table1_as_the_paper_lays_it_out(tmp_path):
    erm = cell_of("table1", "cifar10-exp-100", "erm")
    finals, bests = [30.0, 31.0], [28.0, 28.5]
    for seed, (final, best) in enumerate(zip(finals, bests)):
        write_run(erm.path(tmp_path) / f"seed{seed}", final, best)
    released = cell_of("table1", "cifar10-step-10", "mm-drw", "released")
    write_run(released.path(tmp_path) / "seed0", 12.0, 11.0)

    df = cells.gather("table1", tmp_path)
    texts = tables.render(df, "table1")
    md = texts["md"]

    labels = [paper.SETTINGS[s].label for s in paper.SETTINGS]
    assert f"| Method | {' | '.join(labels)} |" in md
    final_rows = markdown_rows(md, tables.EPOCH_TITLES["final"])
    best_rows = markdown_rows(md, tables.EPOCH_TITLES["best"])
    mm_drw = label_of(cell_of("table1", "cifar10-exp-100", "mm-drw"))
    assert mm_drw == "MM-DRW (ours) [equations]" and released.label == "MM-DRW (ours) [released code]"
    expected_order = [label_of(cell_of("table1", "cifar10-exp-100", m)) for m in paper.TABLE1_ERRORS]
    expected_order.insert(expected_order.index(mm_drw) + 1, released.label)  # the only released row with a run
    assert [r[0] for r in final_rows] == expected_order == [r[0] for r in best_rows]

    ours, theirs = dict(zip(["Method"] + labels, final_rows[0])), paper.TABLE1_ERRORS["erm"][0]
    mean, std = np.mean(finals), np.std(finals, ddof=1)
    assert ours[labels[0]] == f"{mean:.2f} ± {std:.2f} (n=2) [{theirs:.2f}, {mean - theirs:+.2f}]"
    assert ours[labels[1]] == f"missing [{paper.TABLE1_ERRORS['erm'][1]:.2f}]"
    best = dict(zip(["Method"] + labels, best_rows[0]))[labels[0]]
    assert best == f"{np.mean(bests):.2f} ± {np.std(bests, ddof=1):.2f} (n=2) [{theirs:.2f}, {np.mean(bests) - theirs:+.2f}]"
    hg = dict(zip(["Method"] + labels, final_rows[expected_order.index(label_of(cell_of("table1", "cifar10-exp-100", "hg-drs")))]))
    assert [hg[label] for label in labels[4:]] == ["—"] * 4
    released_row = dict(zip(["Method"] + labels, final_rows[expected_order.index(released.label)]))
    mm_paper = paper.TABLE1_ERRORS["mm-drw"][3]
    assert released_row[labels[3]] == f"12.00 (n=1) [{mm_paper:.2f}, {12.0 - mm_paper:+.2f}]"

    tex = texts["tex"]
    assert tex.count(r"\begin{tabular}") == 2 == tex.count(r"\end{tabular}")
    assert "±" not in tex and "—" not in tex and tex.count("{") == tex.count("}")
    body = [line for line in tex.splitlines() if line.endswith(r" \\") and " & " in line]
    assert {line.count(" & ") for line in body} == {len(labels)}
    assert len(body) == 2 * (len(expected_order) + 1)

    assert pd.read_csv(io.StringIO(texts["csv"]))["final_mean"].equals(df["final_mean"])


def test_render_grouped_tables_and_write_table(tmp_path):
    [cell] = [c for c in paper.cells("table2", ["cifar10-step-10"]) if c.params["beta"] == 1.1]
    write_run(cell.path(tmp_path) / "seed0", 11.0, 10.5, group_error={"many": 4.0, "medium": 18.0, "few": None})
    df = cells.gather("table2", tmp_path)

    texts = tables.render(df, "table2")

    for setting in paper.BETA_GRIDS["table2"]:
        assert f"### {paper.SETTINGS[setting].label}" in texts["md"]
    rows = {r[0]: r for r in markdown_rows(texts["md"], paper.SETTINGS["cifar10-step-10"].label)}
    assert set(rows) == {label_of(c) for c in paper.cells("table2", ["cifar10-step-10"])}
    assert rows[label_of(cell)][1:] == ["11.00 (n=1)", "10.50 (n=1)", f"{cell.paper_error:.2f}",
                                    f"{11.0 - cell.paper_error:+.2f}", f"{10.5 - cell.paper_error:+.2f}",
                                    "4.00", "18.00", "—"]
    assert texts["tex"].count(r"\begin{tabular}") == len(paper.BETA_GRIDS["table2"])

    paths = tables.write_table(df, "table2", tmp_path / "out")
    assert sorted(p.name for p in paths) == ["table2.csv", "table2.md", "table2.tex"]
    for path in paths:
        assert path.read_text() == texts[path.suffix[1:]]

    with pytest.raises(ValueError, match="rows are of table2"):
        tables.render(df, "table3")
    with pytest.raises(ValueError, match="unknown table"):
        tables.render(df, "table4")


# ---------------------------------------------------------------- per-class errors and figures

def test_per_class_means_over_seeds_and_groups(tmp_path):
    counts = imbalance.class_counts(120, 10, "step", 10.0)
    erm = cell_of("quick", "digits-step-10", "erm")
    per_seed = [[float(c) for c in range(10)], [float(3 * c) for c in range(10)]]
    manys = [4.0, 6.0]
    for seed, (errors, many) in enumerate(zip(per_seed, manys)):
        write_run(erm.path(tmp_path) / f"seed{seed}", 20.0, 19.0, per_class=errors, counts=counts,
                  group_error={"many": many, "medium": None, "few": 30.0})
    released = cell_of("quick", "digits-step-10", "mm-drw", "released")
    write_run(released.path(tmp_path) / "seed0", 15.0, 14.0, per_class=[15.0] * 10, counts=counts,
              group_error={"many": 5.0, "medium": None, "few": 25.0})

    found = cells.per_class("quick", tmp_path, "digits-step-10", ["erm", "mm-drw@released", "mm-drw"])

    df = found.classes
    erm_rows = df[df["method"] == "erm"]
    assert erm_rows["error_mean"].tolist() == pytest.approx(np.mean(per_seed, axis=0))
    assert erm_rows["error_std"].tolist() == pytest.approx(np.std(per_seed, axis=0, ddof=1))
    assert erm_rows["train_count"].tolist() == counts and erm_rows["name"].tolist() == DIGITS
    assert erm_rows["group"].tolist() == ["many"] * 5 + ["few"] * 5  # 120 and 12 training images
    released_rows = df[df["method"] == "mm-drw@released"]
    assert released_rows["row"].unique().tolist() == [released.label]
    assert released_rows["error_mean"].tolist() == [15.0] * 10 and released_rows["error_std"].isna().all()
    groups = found.groups[found.groups["method"] == "erm"]
    assert groups["group"].tolist() == ["many", "few"] and groups["classes"].tolist() == [5, 5]  # no medium class
    assert groups["error_mean"].tolist() == pytest.approx([np.mean(manys), 30.0])
    assert groups["error_std"].iloc[0] == pytest.approx(np.std(manys, ddof=1))
    equations = cell_of("quick", "digits-step-10", "mm-drw")
    assert found.missing == [f"{label_of(equations)} on digits step 10 (searched {equations.path(tmp_path)}/seed*)"]
    best = cells.per_class("quick", tmp_path, "digits-step-10", ["erm"], epoch="best")
    assert best.classes["error_mean"].tolist() == [19.0] * 10


def test_per_class_orders_classes_by_training_images_and_finds_every_trained_method(tmp_path):
    counts = [12, 120, 50, 120, 20, 12, 30, 120, 12, 60]  # not sorted: the figure must sort them
    for method in ("erm", "ldam-drw"):
        cell = cell_of("quick", "digits-exp-10", method)
        write_run(cell.path(tmp_path) / "seed0", 20.0, 19.0, per_class=[float(c) for c in range(10)], counts=counts)

    found = cells.per_class("quick", tmp_path)

    for method in ("erm", "ldam-drw"):
        rows = found.classes[found.classes["method"] == method]
        assert rows["train_count"].tolist() == sorted(counts, reverse=True)
        assert rows["class"].tolist() == [1, 3, 7, 9, 2, 6, 4, 0, 5, 8]  # ties keep the class order
    assert set(found.classes["method"]) == {"erm", "ldam-drw"}
    assert found.missing == [f"every method on digits step 10 (searched {tmp_path / 'quick' / 'digits-step-10'})"]


def test_per_class_errors(tmp_path):
    empty = cells.per_class("quick", tmp_path, "digits-exp-10", ["mm-drw"])
    assert empty.classes.empty and len(empty.missing) == 1
    with pytest.raises(ValueError, match="erm@released: quick has no such cell"):
        cells.per_class("quick", tmp_path, "digits-exp-10", ["erm@released"])
    with pytest.raises(ValueError, match="mm-drw@paper: quick has no such cell"):
        cells.per_class("quick", tmp_path, "digits-exp-10", ["mm-drw@paper"])
    with pytest.raises(ValueError, match="no settings cifar10-exp-100"):
        cells.per_class("quick", tmp_path, "cifar10-exp-100", ["erm"])
    with pytest.raises(ValueError, match="epoch must be"):
        cells.per_class("quick", tmp_path, "digits-exp-10", ["erm"], epoch="last")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        cells.per_class("quick", tmp_path / "nowhere", "digits-exp-10", ["erm"])


# ---------------------------------------------------------------- figures read on their own

def legend_outside_axes(fig) -> bool:
    """Every legend's box lies outside every axes' box (so it covers no data)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert legends
    return all(not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
               for legend in legends for ax in fig.axes)


def test_fig3_draws_one_group_per_trained_method_with_named_error_bars(tmp_path):
    counts = imbalance.class_counts(120, 10, "step", 10.0)
    errors = {"erm": 30.0, "ldam-drw": 20.0, "mm-drw": 10.0}
    for setting in ("digits-exp-10", "digits-step-10"):
        for method, error in errors.items():
            cell = cell_of("quick", setting, method)
            for seed in (0, 1):
                write_run(cell.path(tmp_path) / f"seed{seed}", error, error, per_class=[error + seed] * 10,
                          counts=counts, group_error={"many": error, "medium": None, "few": error + 1})

    fig = figures.plot_per_class(cells.per_class("quick", tmp_path))

    class_axes, group_axes = fig.axes[0::2], fig.axes[1::2]
    assert len(class_axes) == 2  # a row of panels per setting
    for ax in fig.axes:
        assert ax.get_ylabel() == "top-1 error (%)" and ax.get_xlabel() and ax.get_title()
    for ax in class_axes:
        assert len(ax.patches) == 3 * 10  # three methods side by side on ten classes
        assert [t.get_text() for t in ax.get_xticklabels()][0] == "C1 0 (120)"  # one line per class
        assert all("\n" not in t.get_text() for t in ax.get_xticklabels())
        heights = [b.get_height() for b in ax.patches]
        assert heights == pytest.approx([v + 0.5 for v in errors.values() for _ in range(10)])
        bars = [c for c in ax.containers if isinstance(c, BarContainer)]
        assert len(bars) == 3 and all(c.errorbar is not None for c in bars)
        [segments] = [c.errorbar.lines[2][0].get_segments() for c in bars[:1]]
        assert [seg[1][1] - seg[0][1] for seg in segments] == pytest.approx([2 * np.std([0, 1], ddof=1)] * 10)
    for ax in group_axes:
        assert [b.get_height() for b in ax.patches] == pytest.approx([30, 31, 20, 21, 10, 11])
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == [f"{label_of(cell_of('quick', 'digits-exp-10', m))} (n = 2 seeds)" for m in errors]
    assert "±1 std over the n seeds" in fig.get_suptitle()
    assert legend_outside_axes(fig)
    paths = figures.save_figure(fig, tmp_path / "figures", "fig3")
    assert [p.name for p in paths] == ["fig3.png", "fig3.pdf"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"


def test_fig3_names_what_is_missing_and_refuses_an_empty_figure(tmp_path):
    counts = imbalance.class_counts(120, 10, "step", 10.0)
    cell = cell_of("quick", "digits-step-10", "erm")
    write_run(cell.path(tmp_path) / "seed0", 20.0, 19.0, counts=counts)

    fig = figures.plot_per_class(cells.per_class("quick", tmp_path, "digits-step-10", ["erm", "ldam-drw"]))

    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts == ["ERM (n = 1 seed)", "missing (no finished run): LDAM-DRW on digits step 10"]
    with pytest.raises(ValueError, match="nothing to draw: every method on digits long-tailed 10"):
        figures.plot_per_class(cells.per_class("quick", tmp_path, "digits-exp-10"))


def test_plot_class_counts():
    settings = ["cifar10-exp-100", "cifar10-step-10", "cifar100-exp-10"]
    fig = figures.plot_class_counts(settings)
    ax = fig.axes[0]
    curves = [line for line in ax.lines if len(line.get_ydata()) > 2]
    expected = []
    for name in settings:
        setting = paper.SETTINGS[name]
        spec = sources.CIFAR_SPECS[setting.dataset]
        counts = imbalance.class_counts(spec.train_per_class, spec.num_classes, setting.imb_type, setting.ratio)
        expected.append(sorted(counts, reverse=True))
    assert [line.get_ydata().tolist() for line in curves] == expected
    bounds = {line.get_ydata()[0] for line in ax.lines if len(line.get_ydata()) == 2}
    assert bounds == {100, 20}
    assert ax.get_yscale() == "log"
    with pytest.raises(ValueError, match="unknown setting"):
        figures.plot_class_counts(["cifar10-exp-7"])


# ---------------------------------------------------------------- real runs

@pytest.mark.slow
def test_reports_of_real_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MMLIB_CACHE", str(tmp_path / "cache"))
    runs = tmp_path / "runs"
    results = {}
    for method in ("erm", "mm-drw"):
        cell = cell_of("quick", "digits-step-10", method)
        config = cell.run_params(arch="resnet8", epochs=2, quiet=True)
        results[method] = trainer.train(config, cell.path(runs) / "seed0")

    assert cells.gather("quick", runs, settings=["digits-step-10"], methods=["erm", "mm-drw"])["seeds"].sum() == 0
    trained = {"arch": "resnet8", "epochs": 2}  # not the quick table's protocol (20 epochs of batch 32): say so
    df = cells.gather("quick", runs, settings=["digits-step-10"], methods=["erm", "mm-drw"], protocol=trained)
    per_class = cells.per_class("quick", runs, "digits-step-10", ["erm", "mm-drw"], protocol=trained).classes

    for method, result in results.items():
        row = row_of(df, cell_of("quick", "digits-step-10", method))
        assert row["seeds"] == 1
        assert row["final_mean"] == pytest.approx(result["final"]["error"])
        assert row["best_mean"] == pytest.approx(result["best"]["error"])
        assert row["many_mean"] == pytest.approx(result["final"]["group_error"]["many"])
        errors = per_class[per_class["method"] == method]["error_mean"].tolist()
        assert errors == pytest.approx(result["final"]["per_class_error"])
    md = tables.render(df, "quick")["md"]
    for method, result in results.items():
        label = label_of(cell_of("quick", "digits-step-10", method))
        assert f"| {label} | {result['final']['error']:.2f} (n=1) | {result['best']['error']:.2f} (n=1) |" in md


def test_run_curves_read_on_their_own():
    epochs = 20
    result = {
        "config": {"config": {"method": "mm-drw", "mm_variant": "equations", "seed": 0, "arch": "resnet8",
                              "epochs": epochs}},
        "class_counts": {"description": "digits step ratio 10: 10 classes"},
        "history": [{"epoch": e, "lr": 0.1 * 0.01 ** (e > 16) * 0.01 ** (e > 18), "train_loss": 6.0 / e,
                     "train_error": 50.0 / e, "test_error": 60.0 / e, "seconds": 1.0} for e in range(1, epochs + 1)],
    }

    fig = figures.plot_history(result)

    assert fig.get_suptitle() == "Learning curves of mm-drw, seed 0, resnet8, 20 epochs: digits step ratio 10"
    for ax in fig.axes:
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel() and ax.get_title()
    loss_ax, lr_ax, error_ax = fig.axes
    assert loss_ax.get_yscale() == lr_ax.get_yscale() == "log"  # both span more than a decade
    fig.canvas.draw()
    ticks = [t.get_text() for ax in (loss_ax, lr_ax) for t in ax.get_yticklabels() if t.get_text()]
    assert "0.01" in ticks and "1e-05" in ticks and not [t for t in ticks if "times" in t or "^" in t]
    assert error_ax.get_ylabel() == "top-1 error (%)"
    assert legend_outside_axes(fig)
