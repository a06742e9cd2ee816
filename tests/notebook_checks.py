"""What an executed notebook must show, and what the files it wrote must be: no error, no warning, readable."""

import json
from pathlib import Path

import matplotlib.image
import nbformat
import pandas as pd


def assert_clean(executed: Path) -> None:
    """No error output, and nothing that looks like a failure: no warning printed in any cell."""
    outputs = [o for c in nbformat.read(executed, as_version=4).cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"], executed
    assert not [o["text"] for o in outputs if o.get("name") == "stderr" and "Warning" in o["text"]], executed


def assert_readable(paths) -> None:
    """Every file opens as what its suffix says, and is not empty."""
    for path in paths:
        if path.suffix == ".png":
            assert matplotlib.image.imread(path).ndim == 3, path
        elif path.suffix == ".pdf":
            assert path.read_bytes().startswith(b"%PDF"), path
        elif path.suffix == ".csv":
            assert len(pd.read_csv(path)) > 0, path
        elif path.suffix in (".json", ".ipynb"):
            json.loads(path.read_text())
        elif path.suffix in (".md", ".tex", ".log"):
            assert path.read_text().strip() or path.suffix == ".log", path
