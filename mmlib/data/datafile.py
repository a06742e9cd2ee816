"""One imbalanced setting in one file: ``python -m mmlib export-data`` writes it, ``data_root=FILE.npz`` reads it.

Takes a setting to a GPU node or a machine without internet without the full dataset. The file is an
``.npz`` holding the imbalanced training subset, the full test set, class names and counts, the
selected indices, the setting it was built for, and a SHA-256 checksum of every array. Images are
stored as lossless WebP mosaics (256 images a row): CIFAR-10-LT-100 takes 37 MiB, against 69 MB
raw and 59 MiB with zlib, and encodes in seconds at WebP's lowest effort (higher efforts gain 3%
for 20x the time). Reading refuses a file built for another setting, or one whose arrays do not match
their checksums.
"""

import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from mmlib.files import atomic_write

FORMAT = "mmlib dataset file v1"
MOSAIC_COLUMNS = 256
WEBP_MAX_SIDE = 16383
IMAGE_ARRAYS = ("train_images", "test_images")
PLAIN_ARRAYS = ("train_labels", "test_labels", "indices")
SETTING = ("name", "imb_type", "ratio", "rand_number")  # what a run's configuration must agree with


def is_dataset_file(root) -> bool:
    """Whether a data root names a dataset file rather than a folder."""
    return root is not None and Path(root).suffix == ".npz"


def export(dataset, path) -> Path:
    """Write an ``mmlib.data.imbalance.ImbalancedDataset`` to ``path`` (written atomically); returns the path."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"--out {path}: a dataset file's name must end in .npz")
    arrays = {name: np.ascontiguousarray(getattr(dataset, name)) for name in IMAGE_ARRAYS + PLAIN_ARRAYS}
    meta = {
        "format": FORMAT,
        **{key: getattr(dataset, key) for key in SETTING},
        "classes": dataset.classes,
        "cls_num_list": dataset.cls_num_list,
        "source": dataset.source,
        "shapes": {name: list(array.shape) for name, array in arrays.items()},
        "sha256": {name: _checksum(array) for name, array in arrays.items()},
    }
    stored = {name: arrays[name] for name in PLAIN_ARRAYS}
    stored.update({name: encode_mosaic(arrays[name]) for name in IMAGE_ARRAYS})
    stored["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **stored))
    return path


def read(path, name: str, imb_type: str, ratio: float, rand_number: int) -> dict:
    """The arrays and metadata of a dataset file, after checking its setting and checksums.

    Returns the keyword arguments of ``mmlib.data.imbalance.ImbalancedDataset``.
    """
    path = Path(path)
    remedy = (f"write it again with `python -m mmlib export-data --dataset {name} --imb-type {imb_type} "
              f"--ratio {ratio:g} --rand-number {rand_number} --data-root PATH --out FILE.npz`")
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist; {remedy}")
    try:
        with np.load(path) as stored:
            meta = json.loads(stored["meta"].tobytes())
            arrays = {key: stored[key] for key in PLAIN_ARRAYS}
            arrays.update({key: decode_mosaic(stored[key], meta["shapes"][key]) for key in IMAGE_ARRAYS})
    except Exception as err:  # a truncated or foreign file fails in many ways; all mean the same to the user
        raise ValueError(f"dataset file {path} is unreadable ({type(err).__name__}: {err}); {remedy}") from err
    if meta.get("format") != FORMAT:
        raise ValueError(f"dataset file {path} is not an {FORMAT} file (format {meta.get('format')!r}); {remedy}")
    wanted = {"name": name, "imb_type": imb_type, "ratio": float(ratio), "rand_number": rand_number}
    differ = [f"{key} {meta[key]!r} (the run asks for {wanted[key]!r})" for key in SETTING if meta[key] != wanted[key]]
    if differ:
        raise ValueError(f"dataset file {path} holds another setting: {', '.join(differ)}; point data_root at "
                         f"the file of this setting, or {remedy}")
    damaged = [key for key, array in arrays.items() if _checksum(array) != meta["sha256"][key]]
    if damaged:
        raise ValueError(f"dataset file {path} is damaged: {', '.join(damaged)} do not match their checksums; {remedy}")
    return {
        **{key: meta[key] for key in SETTING},
        **arrays,
        "classes": meta["classes"],
        "cls_num_list": meta["cls_num_list"],
        "source": f"dataset file {path} (exported from {meta['source']})",
    }


def _checksum(array: np.ndarray) -> str:
    digest = hashlib.sha256(f"{array.dtype.str} {array.shape}\n".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def encode_mosaic(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) images as one lossless WebP picture, MOSAIC_COLUMNS images a row (padded with black)."""
    n, height, width, channels = images.shape
    rows = max(1, math.ceil(n / MOSAIC_COLUMNS))
    if rows * height > WEBP_MAX_SIDE:
        raise ValueError(f"{n} images do not fit one WebP mosaic (at most {WEBP_MAX_SIDE // height * MOSAIC_COLUMNS})")
    padded = np.zeros((rows * MOSAIC_COLUMNS, height, width, channels), dtype=np.uint8)
    padded[:n] = images
    mosaic = padded.reshape(rows, MOSAIC_COLUMNS, height, width, channels).swapaxes(1, 2)
    buffer = io.BytesIO()
    Image.fromarray(mosaic.reshape(rows * height, MOSAIC_COLUMNS * width, channels)).save(
        buffer, "WEBP", lossless=True, quality=0, method=0)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def decode_mosaic(encoded: np.ndarray, shape: list[int]) -> np.ndarray:
    n, height, width, channels = shape
    with Image.open(io.BytesIO(encoded.tobytes())) as picture:
        mosaic = np.asarray(picture.convert("RGB"))
    rows = mosaic.shape[0] // height
    tiles = mosaic.reshape(rows, height, MOSAIC_COLUMNS, width, channels).swapaxes(1, 2)
    return np.ascontiguousarray(tiles.reshape(rows * MOSAIC_COLUMNS, height, width, channels)[:n])
