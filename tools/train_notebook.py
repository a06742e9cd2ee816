"""notebooks/train.ipynb's parameters cell, written from RunConfig: one line per run parameter, its help as
papermill's help comment, so the notebook cannot drift from the command line.

    python tools/train_notebook.py          # rewrite the cell
    python tools/train_notebook.py --check  # exit 1 if the committed cell differs (tests/test_notebooks.py)
"""

import dataclasses
import sys
from pathlib import Path

import nbformat

from mmlib.config import RunConfig

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "train.ipynb"
HEADER = ("# Every run parameter (python -m mmlib train --help describes each), written by tools/train_notebook.py.\n"
          "# The defaults are a one-minute offline run on digits; the sweep injects the paper's settings.\n")
# The notebook's own defaults where they differ from the command line's: a run that needs neither CIFAR nor time.
NOTEBOOK_DEFAULTS = {"dataset": "digits", "ratio": 10.0, "arch": "resnet8", "epochs": 10}
# The notebook's parameters beyond a run's: where it writes, and what a sweep's job adds (mmlib.sweep.jobs.Job).
BEFORE = [("run_dir", None, "the run directory (results, checkpoints, figures); None: runs/notebook in the repository")]
AFTER = [
    ("fused_runs", [], "other runs trained with this one as one fused model: dicts of parameter overrides, each with "
                       "its run_dir"),
    ("deadline", None, "time.time() to stop before, checkpoint written (StoppedError; the same call resumes): "
                       "sweeps set it from --time-limit"),
    ("stop_file", None, "stop at the end of the epoch once this file exists (a sweep that got SIGTERM or SIGUSR1)"),
]


def parameters_source() -> str:
    fields = [(f.name, NOTEBOOK_DEFAULTS.get(f.name, f.default), f.metadata["help"])
              for f in dataclasses.fields(RunConfig)]
    return HEADER + "\n".join(f"{name} = {value!r}  # {help}" for name, value, help in BEFORE + fields + AFTER)


def parameters_cell(notebook) -> nbformat.NotebookNode:
    return next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))


def main() -> int:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    cell = parameters_cell(notebook)
    if "--check" in sys.argv[1:]:
        if cell.source != parameters_source():
            print(f"{NOTEBOOK}: its parameters cell differs from RunConfig's; python tools/train_notebook.py "
                  "rewrites it", file=sys.stderr)
            return 1
        return 0
    cell.source = parameters_source()
    NOTEBOOK.write_text(nbformat.writes(notebook) + "\n")  # the final newline the committed notebooks end with
    return 0


if __name__ == "__main__":
    sys.exit(main())
