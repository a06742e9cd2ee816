"""The report: every notebook of it executed on a fixture tree of records (clean, its tables and summary right),
`python -m mmlib report` of the committed results/ (which must render the committed figures/), and the quick
preset's sweep and report on real runs (train.ipynb executed with progress bars on)."""

import json
import subprocess
import sys

import matplotlib
import matplotlib.image
import numpy as np
import pandas as pd
import PIL.Image
import pytest
from helpers.fixture_runs import cell_of, write_run
from helpers.notebook_checks import assert_clean, assert_readable, assert_same_drawing

from mmlib import files, paper
from mmlib.report import render, results, tables
from mmlib.train import run_folder

SETTING = "cifar10-step-100"
ERRORS = {  # (method, variant): top-1 error (%) of each seed; 10 classes of 1000 test images
    ("cb-rw", "equations"): [38.36, 38.56],
    ("mm-drw", "equations"): [23.83, 24.03],
    ("ldam-drw", "equations"): [23.00],
}


COMPUTED_ON_THE_CPU = ("fig2_toy.",)  # the toy of Fig. 2 is trained as the report renders it
EVERY_REPORT_NOTEBOOK = ["ablation.ipynb", "beyond.ipynb", "compare.ipynb", "fig1_class_counts.ipynb", "fig2_toy.ipynb",
                         "fig3_per_class.ipynb", "table1.ipynb", "table2.ipynb", "table3.ipynb"]  # as executed


def correct_for(error: float) -> list[int]:
    """Per-class correct counts (of 1000) whose top-1 error over 10000 images is ``error``."""
    total = round(10000 * (1 - error / 100))
    return [total // 10 + (c < total % 10) for c in range(10)]


@pytest.fixture(scope="module")
def results_tree(tmp_path_factory):
    """Runs of a few cells collected into records, and what ``report`` renders from them: every notebook of the
    report executed on records, each clean (no error, no warning) and every file it wrote readable."""
    root = tmp_path_factory.mktemp("report")
    for (method, variant), errors in ERRORS.items():
        cell = cell_of("table1", SETTING, method, variant)
        for seed, error in enumerate(errors):
            write_run(cell.path(root / "runs") / f"seed{seed}", cell.run_params(seed=seed), 1000, correct_for(error))
    [table2_cell] = [c for c in paper.cells("table2", [SETTING]) if c.params["beta"] == 1.3]
    write_run(table2_cell.path(root / "runs") / "seed0", table2_cell.run_params(seed=0), 1000, correct_for(22.50))
    assert len(results.collect(root / "runs", root / "results").written) == 6
    # the paper's tables (beyond and ablation are table1.ipynb again) and the figures: no notebook failed
    assert render.report(root / "results", root / "figures", tables=("table1", "table2", "table3")) == []
    executed = sorted((root / "figures" / "notebooks").iterdir())
    assert [p.name for p in executed] == [name for name in EVERY_REPORT_NOTEBOOK if name not in (
        "ablation.ipynb", "beyond.ipynb")]
    for notebook in executed:
        assert_clean(notebook)
    assert_readable(p for p in (root / "figures").rglob("*") if p.is_file())
    return root


def cells_of(md: str, section: str) -> dict[str, list[str]]:
    """{row label: its cells} of the Markdown table under ``### section``."""
    lines = md.split(f"### {section}\n\n", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return {row[0]: row[1:] for row in rows}


@pytest.mark.slow  # the report's notebooks, executed once for the module
def test_table_cells_show_mean_std_n_the_paper_and_the_difference(results_tree):
    root = results_tree
    md = (root / "figures" / "table1.md").read_text()
    column = list(paper.SETTINGS).index(SETTING)
    final = cells_of(md, tables.EPOCH_TITLES["final"])
    for (method, variant), errors in ERRORS.items():
        label = cell_of("table1", SETTING, method, variant).label + (" [equations]" if method.startswith("mm") else "")
        theirs = paper.TABLE1_ERRORS[method][column]
        mean = np.mean(errors)
        spread = f" ± {np.std(errors, ddof=1):.2f}" if len(errors) > 1 else ""
        assert final[label][column] == f"{mean:.2f}{spread} (n={len(errors)}) [{theirs:.2f}, {mean - theirs:+.2f}]"
    assert final["ERM"][column] == f"missing [{paper.TABLE1_ERRORS['erm'][column]:.2f}]"
    assert "MM-DRW (ours) [released code]" not in final  # no released run: no released row

    table2 = cells_of((root / "figures" / "table2.md").read_text(), paper.SETTINGS[SETTING].label)
    row = table2["MM-DRW (ours) beta=1.3 / delta-=0.6 [equations]"]
    assert row[:5] == ["22.50 (n=1)", "22.50 (n=1)", "22.83", "-0.33", "-0.33"]
    assert table2["MM-DRW (ours) beta=1.2 / delta-=0.6 [equations]"][:2] == ["missing", "missing"]
    csv = pd.read_csv(root / "figures" / "table1.csv")
    assert csv.loc[(csv["method"] == "cb-rw") & (csv["setting"] == SETTING), "seeds"].item() == 2


@pytest.mark.slow  # the report's notebooks, executed once for the module
def test_reproduction_counts_cells_near_the_paper_and_the_rank_order(results_tree):
    root = results_tree
    summary = (root / "figures" / "reproduction.md").read_text()
    column = list(paper.SETTINGS).index(SETTING)
    gaps = [abs(np.mean(e) - paper.TABLE1_ERRORS[m][column]) for (m, _), e in ERRORS.items()]
    within = [sum(g <= x for g in gaps) for x in (0.5, 1.0)]
    cells = sum(paper.TABLE1_ERRORS[m][column] is not None for m in paper.TABLE1_ERRORS)
    assert (f"| CIFAR-10 step 100 | equations | {cells} | 3 | {within[0]} | {within[1]} | {np.mean(gaps):.2f} |"
            in summary)
    assert "| CIFAR-10 long-tailed 100 | equations | 16 | 0 | 0 | 0 | — |" in summary
    assert ("| CIFAR-10 step 100 | equations | LDAM-DRW 23.00 < MM-DRW 23.93 | MM-DRW 22.83 < LDAM-DRW 23.08 | no |"
            in summary)


@pytest.mark.slow
def test_quick_preset_with_only_some_runs_reports_what_exists(tmp_path):
    """Two seeds of one cell, fused in pairs as the preset does: one notebook trains both runs."""
    out = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "mmlib", "sweep", "--preset", "quick", "--settings", "digits-exp-10",
                           "--methods", "mm-drw", "--seeds", "0", "1", "--epochs", "2", "--out", str(out),
                           "--set", "quiet=false"],  # progress bars on, as a Jupyter user has them: no warning
                          capture_output=True, text=True)

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("quick: 2 runs to do in 1 notebooks, 0 finished runs skipped\n")
    for seed in (0, 1):  # each fused run in its own directory, the executed notebook beside it (its provenance)
        run_dir = out / "quick" / "digits-exp-10" / "mm-drw" / f"seed{seed}"
        assert run_folder.load_results(run_dir)["config"]["config"]["seed"] == seed
        notebook = json.loads((run_dir / "train.ipynb").read_text())
        assert any("injected-parameters" in c["metadata"].get("tags", []) for c in notebook["cells"])
        assert_clean(run_dir / "train.ipynb")
        assert_readable(p for p in run_dir.iterdir() if p.is_file())
        assert "Warning" not in (run_dir / "papermill.log").read_text()  # nor from its kernel
    figures = out / "quick" / "figures"
    md = (figures / "quick.md").read_text()
    assert md.count("missing") >= 5  # every cell but the one trained
    assert "| MM-DRW (ours) [equations] | " in md and "(n=2)" in md
    assert matplotlib.image.imread(figures / "fig3_quick.png").ndim == 3
    assert "missing: every method on digits step 10" in done.stdout
    assert "table1.ipynb {'table': 'quick'}: quick.md, quick.csv, quick.tex" in done.stdout
    assert sorted(p.name for p in (figures / "notebooks").iterdir()) == ["fig3_quick.ipynb", "quick.ipynb"]
    assert not (files.FIGURES / "quick.md").exists()


@pytest.mark.slow
def test_the_committed_figures_are_what_report_renders_from_the_committed_results(tmp_path):
    """figures/ is `python -m mmlib report` of results/: run it again (and commit what it writes) whenever the
    results or the code that renders them change. Byte for byte, except Fig. 2, whose toy the CPU trains as it is
    drawn: within notebook_checks' stated tolerances, which hold across processors. Images are compared where this
    matplotlib is the one that drew the committed ones (its version is in each file); another draws other bytes."""
    done = subprocess.run([sys.executable, "-m", "mmlib", "report", "--out", str(tmp_path)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in (tmp_path / "notebooks").iterdir()) == EVERY_REPORT_NOTEBOOK
    assert "missing: MM-DRW (ours) [released code] on CIFAR-10 step 100" in done.stdout  # fig3 says what it lacks
    committed = {p.name for p in files.FIGURES.iterdir() if p.is_file()}
    assert committed == {p.name for p in tmp_path.iterdir() if p.is_file()}
    for name in sorted(committed):
        ours, theirs = tmp_path / name, files.FIGURES / name
        if not _drawn_by_this_matplotlib(theirs):
            continue
        if name.startswith(COMPUTED_ON_THE_CPU):  # another processor rounds otherwise: within stated tolerances
            assert_same_drawing(ours, theirs)
        else:  # drawn from results/ alone: deterministic to the byte
            assert ours.read_bytes() == theirs.read_bytes(), f"figures/{name} is not what report renders now: run " \
                                                             "python -m mmlib report"


def _drawn_by_this_matplotlib(path) -> bool:
    """Whether a committed file is text, or an image this matplotlib drew (the version its metadata names)."""
    if path.suffix == ".png":
        return PIL.Image.open(path).info.get("Software", "").startswith(f"Matplotlib version{matplotlib.__version__},")
    if path.suffix == ".pdf":
        return f"(Matplotlib pdf backend v{matplotlib.__version__})".encode() in path.read_bytes()
    return True
