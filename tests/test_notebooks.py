"""Every notebook runs through papermill with the tiny parameters of tests/notebooks/<name>.yaml.

Placeholders in those files: "{runs}" becomes a runs root holding finished tiny runs of the quick
table (digits-step-10, erm and mm-drw, seeds 0 and 1; its other cells are missing), "{out}" an
empty output folder.
"""

import json
from pathlib import Path

import matplotlib.image
import nbformat
import pandas as pd
import papermill
import pytest
import yaml
from papermill.translators import PythonTranslator

from mmlib import paper, training

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PARAMETERS = ROOT / "tests" / "notebooks"


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for cell in paper.cells("quick", settings=["digits-step-10"], methods=["erm", "mm-drw"]):
        for seed in (0, 1):
            params = cell.run_params(seed=seed, arch="resnet8", epochs=2, quiet=True)
            training.run(params, cell.path(root) / f"seed{seed}")
    return root


def substitute(value, places: dict[str, str]):
    if isinstance(value, str):
        return value.format(**places)
    if isinstance(value, list):
        return [substitute(v, places) for v in value]
    return value


def test_every_notebook_has_parameters_papermill_can_read():
    assert NOTEBOOKS
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, path.name
        names = [p.name for p in PythonTranslator.inspect(tagged[0])]
        assert names == [line.split(" =")[0] for line in tagged[0].source.splitlines() if " = " in line and not line.startswith("#")], path.name
        assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), f"{path.name} holds outputs"
        assert (PARAMETERS / f"{path.stem}.yaml").exists(), f"no tiny parameters for {path.name}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_and_writes_readable_outputs(notebook, quick_runs, tmp_path, monkeypatch):
    monkeypatch.setenv("MMLIB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    out.mkdir()
    params = yaml.safe_load((PARAMETERS / f"{notebook.stem}.yaml").read_text()) or {}
    params = {k: substitute(v, {"runs": str(quick_runs), "out": str(out)}) for k, v in params.items()}
    papermill.execute_notebook(str(notebook), str(tmp_path / notebook.name), parameters=params,
                               kernel_name="python3", progress_bar=False, cwd=str(ROOT))
    executed = nbformat.read(tmp_path / notebook.name, as_version=4)
    assert not [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    written = [p for p in out.rglob("*") if p.is_file()]
    assert written, f"{notebook.name} wrote nothing into {out}"
    for path in written:
        if path.suffix == ".png":
            assert matplotlib.image.imread(path).ndim == 3
        elif path.suffix == ".pdf":
            assert path.read_bytes().startswith(b"%PDF")
        elif path.suffix == ".csv":
            assert len(pd.read_csv(path)) > 0
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix in (".md", ".tex"):
            assert path.read_text().strip()


def test_train_notebook_rejects_a_bad_parameter_in_its_first_cells(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        papermill.execute_notebook(str(ROOT / "notebooks" / "train.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters={"run_dir": str(tmp_path / "run"), "ratio": 0.5},
                                   kernel_name="python3", progress_bar=False)
    assert "ratio must be >= 1, got 0.5" in str(failure.value)
    assert failure.value.exec_count <= 4  # the validation cell, before any data is loaded
    assert not (tmp_path / "run").exists()
