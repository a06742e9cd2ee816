"""The notebooks' parameters as papermill reads them, and the parameters every notebook refuses in its first
code cell.

The notebooks are executed in tests/report/test_report_notebooks.py, as the sweeps and ``report`` run them: train.ipynb by the
quick preset's sweep (progress bars on), the report's notebooks (tables, Fig. 1-3, compare) on a fixture tree
of records and on the committed results/.
"""

import dataclasses
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml
from papermill.translators import PythonTranslator

import mmlib.notebook
from mmlib.config import RunConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import train_notebook  # noqa: E402  (tools/train_notebook.py writes train.ipynb's parameters cell)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_every_notebook_has_parameters_papermill_can_read():
    assert NOTEBOOKS
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, path.name
        names = [p.name for p in PythonTranslator.inspect(tagged[0])]
        assert names == [line.split(" =")[0] for line in tagged[0].source.splitlines() if " = " in line and not line.startswith("#")], path.name
        assert path.name == "walkthrough.ipynb" or all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), f"{path.name} holds outputs"


def test_every_parameter_of_every_notebook_has_its_help_for_papermill():
    """`papermill --help-notebook NOTEBOOK` lists each parameter with the comment on its line."""
    for path in NOTEBOOKS:
        undocumented = [name for name, p in papermill.inspect_notebook(str(path)).items() if not p["help"]]
        assert undocumented == [], path.name


def test_the_train_notebooks_parameters_are_runconfigs_with_their_help():
    """The cell is written by tools/train_notebook.py from RunConfig: every run parameter, its help, in order."""
    notebook = nbformat.read(ROOT / "notebooks" / "train.ipynb", as_version=4)
    declared = papermill.inspect_notebook(str(ROOT / "notebooks" / "train.ipynb"))
    fields = {f.name: f.metadata["help"] for f in dataclasses.fields(RunConfig)}
    assert [name for name in declared if name in fields] == list(fields)
    assert {name: declared[name]["help"] for name in fields} == fields
    assert next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])).source == \
        train_notebook.parameters_source(), "python tools/train_notebook.py rewrites the cell"


def test_train_notebook_rejects_a_bad_parameter_in_its_first_cells(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        papermill.execute_notebook(str(ROOT / "notebooks" / "train.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters={"run_dir": str(tmp_path / "run"), "ratio": 0.5},
                                   kernel_name="python3", progress_bar=False)
    assert failure.value.evalue == "ratio must be >= 1, got 0.5"
    assert failure.value.traceback == ["ParameterError: ratio must be >= 1, got 0.5"]
    assert failure.value.exec_count <= 4  # the validation cell, before any data is loaded
    assert not (tmp_path / "run").exists()


# ---- parameters the notebooks refuse, in their first code cell -----------------------------


@pytest.mark.slow
def test_a_misspelled_parameter_stops_the_notebook_naming_the_closest_one(tmp_path):
    """As a user types it: the papermill command line, which on its own only warns and goes on."""
    done = subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "train.ipynb"),
                           str(tmp_path / "out.ipynb"), "-p", "epoch", "2", "-p", "run_dir", str(tmp_path / "run")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode != 0
    assert "ParameterError: unknown parameter epoch (did you mean epochs?)\n" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_wrong_type_is_the_notebooks_first_failure_in_one_line(tmp_path):
    """Through python -m mmlib.notebook (the sweeps' runner), whose kernel also runs encrypted, so it does not warn."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"epochs": "three", "run_dir": str(tmp_path / "run")}))
    done = subprocess.run([sys.executable, "-m", "mmlib.notebook", str(ROOT / "notebooks" / "train.ipynb"),
                           str(tmp_path / "out.ipynb"), str(params)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'out.ipynb'} failed in cell 3: ParameterError: "
        "parameter epochs must be of type int like its default 10, got 'three'")
    assert "without encryption" not in done.stderr
    errors = [o for c in nbformat.read(tmp_path / "out.ipynb", as_version=4).cells for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert [e["traceback"] for e in errors] == [
        ["ParameterError: parameter epochs must be of type int like its default 10, got 'three'"]]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_every_notebook_checks_its_injected_parameters(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        mmlib.notebook.execute(ROOT / "notebooks" / "table1.ipynb", tmp_path / "out.ipynb", {"tabel": "quick"})
    assert failure.value.ename == "ParameterError"
    assert failure.value.evalue == "unknown parameter tabel (did you mean table?)"
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        mmlib.notebook.execute(ROOT / "notebooks" / "fig1_class_counts.ipynb", tmp_path / "out.ipynb", {"log": "yes"})
    assert failure.value.evalue == "parameter log must be of type bool like its default True, got 'yes'"
    assert failure.value.exec_count == 3  # parameters, injected parameters, then the check


def test_a_kernel_dying_as_it_starts_is_started_again_and_other_errors_are_not(tmp_path, monkeypatch, capsys):
    calls = []

    def execute_notebook(*args, **kwargs):  # two kernels lost to a port taken meanwhile, then one that runs
        calls.append(args)
        if len(calls) < 3:
            raise RuntimeError("Kernel died before replying to kernel_info")
        return "executed"

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    assert mmlib.notebook.execute("in.ipynb", tmp_path / "out.ipynb") == "executed" and len(calls) == 3
    assert capsys.readouterr().err.count("in.ipynb: the kernel died as it started") == 2

    for message, tries in [("Kernel died before replying to kernel_info", mmlib.notebook.KERNEL_STARTS),
                           ("another error", 1)]:
        def fails(*args, message=message, **kwargs):
            calls.append(args)
            raise RuntimeError(message)

        calls.clear()
        monkeypatch.setattr(papermill, "execute_notebook", fails)
        with pytest.raises(RuntimeError, match=message):
            mmlib.notebook.execute("in.ipynb", tmp_path / "out.ipynb")
        assert len(calls) == tries
