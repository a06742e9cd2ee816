"""Regenerates the committed walkthrough's outputs: python tools/walkthrough.py

Executes notebooks/walkthrough.ipynb with its default parameters (mmlib.notebook.execute: papermill on an
encrypted kernel, from the repository's root) and writes it back with its outputs, once it ran through; papermill's
timings are left out, so that the file changes only where the outputs do. The notebook's metadata then records what
the outputs were computed from: a digest of its code cells and one of the results in results/ that its section 6
reads. tests/test_walkthrough.py recomputes both: a code cell edited, or results/ changed, since the last
regeneration fails the test, which names this command.
"""

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

import nbformat

from mmlib import files, notebook

NOTEBOOK = files.REPOSITORY / "notebooks" / "walkthrough.ipynb"
PROVENANCE = "walkthrough"  # the notebook metadata's key for the digests
COMMAND = "python tools/walkthrough.py"


def code_digest(executed: nbformat.NotebookNode) -> str:
    """SHA-256 of the code cells' sources, in order (markdown and outputs aside)."""
    digest = hashlib.sha256()
    for cell in executed.cells:
        if cell.cell_type == "code":
            digest.update(cell.source.encode() + b"\0")
    return digest.hexdigest()


def results_digest(results_root: Path = files.RESULTS) -> str:
    """SHA-256 of every result file below results_root (names and contents; the folder's own README aside)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(results_root).rglob("*") if p.is_file() and p.parent != Path(results_root)):
        digest.update(path.relative_to(results_root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def regenerate(path: Path = NOTEBOOK) -> None:
    """Execute the notebook at ``path`` with its defaults and write it back, outputs and digests included."""
    with tempfile.TemporaryDirectory(prefix="mmlib-walkthrough-") as scratch:
        executed_path = Path(scratch) / path.name
        notebook.execute(path, executed_path, cwd=files.REPOSITORY)
        executed = nbformat.read(executed_path, as_version=4)
    executed.metadata.pop("papermill", None)
    for cell in executed.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    executed.metadata[PROVENANCE] = {"regenerate": COMMAND, "code_sha256": code_digest(executed),
                                     "results_sha256": results_digest()}
    files.write_text(path, nbformat.writes(executed) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    regenerate()
    print(f"wrote {NOTEBOOK.relative_to(files.REPOSITORY)} ({NOTEBOOK.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
