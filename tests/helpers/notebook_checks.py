"""What an executed notebook must show, and what the files it wrote must be: no error, no warning, readable; and\nwhen two renderings of a figure computed on the CPU are the same."""

import json
import re
import zlib
from pathlib import Path

import matplotlib.image
import nbformat
import numpy as np
import pandas as pd
import PIL.Image

# A figure computed on the CPU (fig2's toy is trained there) moves below a pixel between processors, whose float
# rounding differs: such figures are compared within these tolerances rather than byte for byte.
PIXEL_TOLERANCE = 16  # of 255, in any channel of any pixel: an anti-aliased edge moved by a small fraction of a pixel
PIXELS_DIFFERING = 0.01  # at most this share of the pixels may differ at all
POINTS_TOLERANCE = 0.5  # PDF units (1/72 inch): every coordinate of every drawing operator


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


def assert_same_drawing(ours: Path, theirs: Path) -> None:
    """Two renderings of one figure are the same within the tolerances above: a PNG pixel by pixel, a PDF operator
    by operator (its streams decompressed, their numbers within POINTS_TOLERANCE, everything else equal)."""
    if ours.suffix == ".png":
        a, b = (np.asarray(PIL.Image.open(path).convert("RGBA"), dtype=int) for path in (ours, theirs))
        assert a.shape == b.shape, (ours.name, a.shape, b.shape)
        difference = np.abs(a - b).max(axis=2)
        assert difference.max() <= PIXEL_TOLERANCE, f"{ours.name}: a pixel differs by {difference.max()}/255"
        assert (difference > 0).mean() <= PIXELS_DIFFERING, f"{ours.name}: {(difference > 0).mean():.2%} of pixels differ"
        return
    a, b = _pdf_streams(ours), _pdf_streams(theirs)
    assert len(a) == len(b), f"{ours.name}: {len(a)} streams against {len(b)}"
    for mine, other in zip(a, b):
        assert _NUMBER.sub(b"#", mine) == _NUMBER.sub(b"#", other), f"{ours.name}: the drawing's operators differ"
        numbers = [np.array([float(n) for n in _NUMBER.findall(s)]) for s in (mine, other)]
        assert np.abs(numbers[0] - numbers[1]).max(initial=0) <= POINTS_TOLERANCE, f"{ours.name}: a coordinate moved"


_NUMBER = re.compile(rb"-?\d+\.?\d*")


def _pdf_streams(path: Path) -> list[bytes]:
    """A PDF's streams (matplotlib writes them Flate-compressed), decompressed: each ends where its zlib data does."""
    data = path.read_bytes()
    return [zlib.decompressobj().decompress(data[m.end():]) for m in re.finditer(rb"(?<!end)stream\r?\n", data)]
