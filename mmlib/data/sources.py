"""Where the images come from: the datasets' sources, read into the imbalanced setting a run trains on.

CIFAR images are read from the official python pickles, from an image-folder tree (decoded once into
mmlib.data.cache), or downloaded by torchvision on request; "digits" (scikit-learn's handwritten digits)
is a small real dataset that needs no files at all. A data root ending in .npz is one setting
exported to a single file (mmlib.data.datafile). ``load_dataset`` then keeps LDAM-DRW's imbalanced
training subset (mmlib.data.imbalance) and the full test set.
"""

import contextlib
import gzip
import importlib.util
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from mmlib.choices import DATASETS
from mmlib.data import cache, datafile
from mmlib.data.imbalance import ImbalancedDataset, class_counts, select_indices

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
IMAGE_SIZE = 32
_CACHED_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")  # of a decoded image folder
DIGITS_TRAIN_PER_CLASS = 120  # load_digits has 174..183 images a class, so every class keeps >= 54 test images


@dataclass(frozen=True)
class CifarSpec:
    """What a complete copy of one CIFAR dataset looks like on disk."""

    num_classes: int
    train_per_class: int  # n_max of the imbalanced subsets
    test_per_class: int
    pickle_folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: bytes
    names_key: bytes


# Module-level so that tests can shrink the expected counts to tiny fixtures.
CIFAR_SPECS = {
    "cifar10": CifarSpec(
        num_classes=10, train_per_class=5000, test_per_class=1000, pickle_folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)), test_files=("test_batch",),
        meta_file="batches.meta", label_key=b"labels", names_key=b"label_names",
    ),
    "cifar100": CifarSpec(
        num_classes=100, train_per_class=500, test_per_class=100, pickle_folder="cifar-100-python",
        train_files=("train",), test_files=("test",),
        meta_file="meta", label_key=b"fine_labels", names_key=b"fine_label_names",
    ),
}


@dataclass
class _BalancedSplit:
    """A full training set (in its original order) and test set, before any imbalance is applied."""

    classes: list[str]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str



def check_dataset_args(name, root, imb_type, ratio, download) -> None:
    """Validate dataset arguments without reading any images, so configs can fail early."""
    if name not in DATASETS:
        raise ValueError(f"dataset name must be one of {DATASETS}, got {name!r}")
    n_max, num_classes = dataset_size(name)
    class_counts(n_max, num_classes, imb_type, ratio)
    if datafile.is_dataset_file(root):
        if not Path(root).is_file():
            raise FileNotFoundError(f"dataset file {root} does not exist; write it with `python -m mmlib export-data "
                                    f"--dataset {name} --imb-type {imb_type} --ratio {ratio:g} --data-root PATH "
                                    f"--out {root}`")
        return
    if name == "digits":
        return
    if root is None:
        raise _missing_data(name, None, "no data root given (root=None)")
    if not download and not Path(root).exists():
        raise _missing_data(name, Path(root), f"data root {root} does not exist")


def check(config) -> None:
    """A run's data (a RunConfig's dataset, imbalance, data root), checked without reading any images: every
    route into training calls it before anything is written (the command line, a sweep's plan, the trainer)."""
    check_dataset_args(config.dataset, config.data_root, config.imb_type, config.ratio, config.download)


def load_dataset(name: str, root: str | os.PathLike | None = None, imb_type: str = "exp", ratio: float = 100.0,
                 rand_number: int = 0, download: bool = False) -> ImbalancedDataset:
    """Load `name`, keep LDAM-DRW's imbalanced training subset and the full test set.

    root and download are ignored for "digits", which ships with scikit-learn, unless root is a dataset
    file (.npz, written by ``export-data``): that is read for any dataset, and must hold this setting.
    """
    check_dataset_args(name, root, imb_type, ratio, download)
    if datafile.is_dataset_file(root):
        return ImbalancedDataset(**datafile.read(root, name, imb_type, float(ratio), rand_number))
    split = _load_digits() if name == "digits" else _load_cifar(name, Path(root), download)
    n_max, num_classes = dataset_size(name)
    counts = class_counts(n_max, num_classes, imb_type, ratio)
    indices = select_indices(split.train_labels, counts, rand_number)
    return ImbalancedDataset(
        name=name, imb_type=imb_type, ratio=float(ratio), rand_number=rand_number, classes=split.classes,
        train_images=split.train_images[indices], train_labels=split.train_labels[indices],
        test_images=split.test_images, test_labels=split.test_labels,
        indices=indices, cls_num_list=counts, source=split.source,
    )


def dataset_size(name: str) -> tuple[int, int]:
    """(n_max, num_classes) of a dataset: its largest class's training images and its number of classes."""
    if name == "digits":
        return DIGITS_TRAIN_PER_CLASS, 10
    spec = CIFAR_SPECS[name]
    return spec.train_per_class, spec.num_classes


def _load_digits() -> _BalancedSplit:
    """scikit-learn's 8x8 digits as 32x32 RGB: the first DIGITS_TRAIN_PER_CLASS of each class train, the rest test.

    Each pixel (0..16) is scaled to 0..255 and becomes a 4x4 block (nearest-neighbour upsampling: no
    invented intensities, and the protocol's 4-pixel crop jitter is exactly one source pixel), copied
    to all three channels.
    """
    # load_digits() reads this file of scikit-learn's; importing scikit-learn for it takes 1.5 s a process.
    path = (Path(importlib.util.find_spec("sklearn").submodule_search_locations[0])
            / "datasets" / "data" / "digits.csv.gz")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    images = np.round(table[:, :-1].reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)
    images = images.repeat(IMAGE_SIZE // 8, axis=1).repeat(IMAGE_SIZE // 8, axis=2)
    images = np.repeat(images[..., None], 3, axis=3)
    labels = table[:, -1].astype(np.int64)
    # Rank of each image within its class, in the dataset's order.
    rank = np.zeros(len(labels), dtype=np.int64)
    for cls in range(10):
        members = labels == cls
        rank[members] = np.arange(members.sum())
    is_train = rank < DIGITS_TRAIN_PER_CLASS
    return _BalancedSplit(
        classes=[str(d) for d in range(10)],
        train_images=images[is_train], train_labels=labels[is_train],
        test_images=images[~is_train], test_labels=labels[~is_train],
        source="scikit-learn load_digits (8x8 upsampled to 32x32)",
    )


def _load_cifar(name: str, root: Path, download: bool) -> _BalancedSplit:
    """Read CIFAR from the first layout found under root: pickles, then image folder, then a download."""
    spec = CIFAR_SPECS[name]
    pickle_folder = _find_pickle_folder(root, spec)
    if pickle_folder is not None:
        return _read_pickle_layout(name, pickle_folder, "python pickles")
    if (root / "train").is_dir() or (root / "test").is_dir():
        return _read_image_folder(name, root)
    if download:
        return _download(name, root)
    raise _missing_data(name, root, f"no {name} data found in {root}")


class MissingDataError(FileNotFoundError):
    """Absent or unusable data; the message names ``download_option``, the calling command's way to download."""

    def __init__(self, before: str, after: str):
        super().__init__(before, after)
        self.download_option = "download=True"

    def __str__(self) -> str:
        return f"{self.args[0]}{self.download_option}{self.args[1]}"


@contextlib.contextmanager
def download_option(spelling: str):
    """Missing-data errors raised inside name ``spelling`` (e.g. --download) as the way to download the data."""
    try:
        yield
    except MissingDataError as err:
        err.download_option = spelling
        raise


def _missing_data(name: str, root: Path | None, problem: str) -> MissingDataError:
    """The one error for absent or unusable data: what was wrong, where we looked, how to get the data."""
    spec = CIFAR_SPECS[name]
    where = "ROOT" if root is None else str(root)
    return MissingDataError(
        f"{problem}. Looked for {name} as the official python pickles ({where}/{spec.pickle_folder}/, or "
        f"{where} being that folder) or as an image folder ({where}/train/<class>/<image> and "
        f"{where}/test/<class>/<image>, images {'/'.join(IMAGE_SUFFIXES)}). To get the data, pass ",
        ", or point the data root at an existing copy.",
    )


def _find_pickle_folder(root: Path, spec: CifarSpec) -> Path | None:
    """The folder holding the official pickles: ROOT/<pickle folder> or ROOT itself; None if neither does."""
    names = spec.train_files + spec.test_files + (spec.meta_file,)
    for folder in (root / spec.pickle_folder, root):
        if any((folder / f).is_file() for f in names):
            return folder
    return None


def _read_pickle_layout(name: str, folder: Path, source: str) -> _BalancedSplit:
    """Decode the official CIFAR python pickles in `folder` (training batches in their official order)."""
    spec = CIFAR_SPECS[name]
    meta_path = folder / spec.meta_file
    meta = _read_pickle(name, meta_path)
    if spec.names_key not in meta:
        raise ValueError(f"{meta_path}: no {spec.names_key!r} entry, so not a {name} meta file")
    classes = [n.decode() for n in meta[spec.names_key]]
    if len(classes) != spec.num_classes:
        raise ValueError(f"{meta_path}: found {len(classes)} class names, expected {spec.num_classes} for {name}")
    train_images, train_labels = _read_batches(name, folder, spec.train_files)
    test_images, test_labels = _read_batches(name, folder, spec.test_files)
    _check_per_class(train_labels, spec.train_per_class, classes, f"{folder} (training batches)")
    _check_per_class(test_labels, spec.test_per_class, classes, f"{folder} (test batches)")
    return _BalancedSplit(classes, train_images, train_labels, test_images, test_labels, f"{source} {folder}")


def _read_pickle(name: str, path: Path) -> dict:
    if not path.is_file():
        raise _missing_data(name, path.parent, f"missing file {path}")
    try:
        with open(path, "rb") as f:
            content = pickle.load(f, encoding="bytes")
    except Exception as err:  # a damaged pickle can fail in many ways; all mean the same to the user
        raise ValueError(str(_missing_data(name, path.parent,
                                           f"{path} is not a readable CIFAR pickle ({err!r})"))) from err
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a dict, found {type(content).__name__}")
    return content


def _read_batches(name: str, folder: Path, files: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the images (as NHWC) and labels of the given pickle batches, in order."""
    spec = CIFAR_SPECS[name]
    images, labels = [], []
    for file in files:
        path = folder / file
        batch = _read_pickle(name, path)
        for key in (b"data", spec.label_key):
            if key not in batch:
                raise ValueError(f"{path}: no {key!r} entry in this CIFAR batch")
        data = np.asarray(batch[b"data"])
        pixels = 3 * IMAGE_SIZE * IMAGE_SIZE
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
            raise ValueError(f"{path}: b'data' must be uint8 (N, {pixels}), found {data.dtype} {data.shape}")
        if len(batch[spec.label_key]) != len(data):
            raise ValueError(f"{path}: {len(data)} images but {len(batch[spec.label_key])} labels")
        images.append(data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[spec.label_key], dtype=np.int64))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def _check_per_class(labels: np.ndarray, expected: int, classes: list[str], where: str) -> None:
    if labels.min() < 0 or labels.max() >= len(classes):
        raise ValueError(f"{where}: labels must lie in 0..{len(classes) - 1}, found {labels.min()}..{labels.max()}")
    found = np.bincount(labels, minlength=len(classes))
    for cls, n in enumerate(found):
        if n != expected:
            raise ValueError(f"{where}: class {cls} ({classes[cls]}) has {n} images, expected {expected}")


def _download(name: str, root: Path) -> _BalancedSplit:
    """Let torchvision download and extract the official archive into root, then read its pickles."""
    import torchvision

    dataset_class = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    dataset_class(str(root), train=True, download=True)
    return _read_pickle_layout(name, root / CIFAR_SPECS[name].pickle_folder, "python pickles (downloaded)")


def _read_image_folder(name: str, root: Path) -> _BalancedSplit:
    """Read ROOT/{train,test}/<class>/<image>; the decoded arrays are cached, named by the images' content."""
    spec = CIFAR_SPECS[name]
    train_files = _list_image_folder(name, root / "train", spec.train_per_class)
    test_files = _list_image_folder(name, root / "test", spec.test_per_class)
    if list(train_files) != list(test_files):
        differ = sorted(set(train_files) ^ set(test_files))
        raise ValueError(f"{root}/test: class folders differ from {root}/train: {differ} are in only one of them")
    cache_path = cache.image_folder_file(root, train_files, test_files)
    if cache_path.is_file():
        classes, arrays = cache.read_arrays(cache_path, _CACHED_ARRAYS)
        return _BalancedSplit(classes, *arrays, source=f"image folder {root}")
    split = _decode_image_folder(train_files, test_files, source=f"image folder {root}")
    cache.write_arrays(cache_path, split.classes, {key: getattr(split, key) for key in _CACHED_ARRAYS})
    return split


def _list_image_folder(name: str, split_dir: Path, per_class: int) -> dict[str, list[Path]]:
    """Class name -> sorted image files of one split, after checking the class and image counts."""
    if not split_dir.is_dir():
        raise _missing_data(name, split_dir.parent, f"missing folder {split_dir}")
    class_dirs = sorted(d for d in split_dir.iterdir() if d.is_dir())
    expected_classes = CIFAR_SPECS[name].num_classes
    if len(class_dirs) != expected_classes:
        raise ValueError(f"{split_dir}: found {len(class_dirs)} class folders, expected {expected_classes} for {name}")
    files = {}
    for class_dir in class_dirs:
        images = sorted(f for f in class_dir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if len(images) != per_class:
            raise ValueError(f"{class_dir}: found {len(images)} images, expected {per_class} for {name}")
        files[class_dir.name] = images
    return files


def _decode_image_folder(train_files: dict[str, list[Path]], test_files: dict[str, list[Path]],
                         source: str) -> _BalancedSplit:
    """Decode both splits, class by class; a label is its class's position in the sorted class names."""
    arrays = []
    for split in (train_files, test_files):
        images = [decode_image(path) for files in split.values() for path in files]
        labels = [cls for cls, files in enumerate(split.values()) for _ in files]
        arrays += [np.stack(images), np.array(labels, dtype=np.int64)]
    return _BalancedSplit(list(train_files), *arrays, source=source)


def decode_image(path: Path) -> np.ndarray:
    """One image as uint8 (32, 32, 3), refusing anything that is not a 32x32 RGB image."""
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path}: cannot be decoded as an image ({err})") from err
    if image.mode != "RGB":
        raise ValueError(f"{path}: image mode is {image.mode!r}, expected 'RGB'")
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"{path}: image is {image.size[0]}x{image.size[1]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    return np.asarray(image)


