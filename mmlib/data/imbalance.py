"""LDAM-DRW's imbalanced subsets (Cao et al. 2019): how many training images each class keeps, and which.

A dataset is the full balanced test set plus a long-tailed ("exp") or step-imbalanced subset of the
training set, selected exactly as LDAM-DRW's IMBALANCECIFAR10/100 do it; classes are then many-,
medium- or few-shot by their training images. mmlib.data.sources reads the images from wherever they are.
"""

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mmlib.choices import IMBALANCE_TYPES

MANY_SHOT_ABOVE, FEW_SHOT_BELOW = 100, 20  # many-shot: > 100 training images; few-shot: < 20


@dataclass
class ImbalancedDataset:
    """An imbalanced training subset and the full balanced test set, as uint8 NHWC arrays."""

    name: str
    imb_type: str
    ratio: float
    rand_number: int
    classes: list[str]
    train_images: np.ndarray  # uint8 (N, 32, 32, 3), in selection order
    train_labels: np.ndarray  # int64 (N,)
    test_images: np.ndarray  # uint8 (M, 32, 32, 3)
    test_labels: np.ndarray  # int64 (M,)
    indices: np.ndarray  # int64 (N,), positions of the selected images in the full training set
    cls_num_list: list[int]
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def groups(self) -> dict[str, list[int]]:
        """Class indices by training-set size: many (>100), medium (20..100) and few (<20) shots."""
        return groups(self.cls_num_list)

    @property
    def description(self) -> str:
        return (
            f"{self.name} {self.imb_type} ratio {self.ratio:g}: {len(self.train_labels)} train / "
            f"{len(self.test_labels)} test images, {max(self.cls_num_list)}..{min(self.cls_num_list)} "
            f"train images per class, from {self.source}"
        )



def groups(counts: Sequence[int]) -> dict[str, list[int]]:
    """Class indices by training-set size: many (>100), medium (20..100) and few (<20) shots."""
    return {
        "many": [c for c, n in enumerate(counts) if n > MANY_SHOT_ABOVE],
        "medium": [c for c, n in enumerate(counts) if FEW_SHOT_BELOW <= n <= MANY_SHOT_ABOVE],
        "few": [c for c, n in enumerate(counts) if n < FEW_SHOT_BELOW],
    }


def class_counts(n_max: int, num_classes: int, imb_type: str, ratio: float) -> list[int]:
    """Training images per class, exactly as LDAM-DRW's get_img_num_per_cls computes them."""
    if imb_type not in IMBALANCE_TYPES:
        raise ValueError(f"imb_type must be one of {IMBALANCE_TYPES}, got {imb_type!r}")
    if not math.isfinite(ratio) or ratio < 1:
        raise ValueError(f"ratio must be a finite number >= 1 (n_max / n_min), got {ratio!r}")
    imb_factor = 1.0 / ratio
    if imb_type == "exp":
        counts = [int(n_max * imb_factor ** (i / (num_classes - 1.0))) for i in range(num_classes)]
    elif imb_type == "step":
        half = num_classes // 2
        counts = [int(n_max)] * half + [int(n_max * imb_factor)] * (num_classes - half)
    else:
        if ratio != 1:
            raise ValueError(f"ratio has no meaning for imb_type='balanced', use ratio=1 (got ratio={ratio!r})")
        counts = [n_max] * num_classes
    if min(counts) < 1:
        raise ValueError(f"ratio={ratio!r} leaves a class with no training images; it must be at most n_max={n_max}")
    return counts


def select_indices(labels: np.ndarray, counts: Sequence[int], rand_number: int = 0) -> np.ndarray:
    """Positions of LDAM-DRW's imbalanced subset: per class in ascending order, a seeded shuffle's first n_i.

    One RandomState seeded once produces the same stream as LDAM's np.random.seed + np.random.shuffle,
    without touching numpy's global state.
    """
    labels = np.asarray(labels)
    rng = np.random.RandomState(rand_number)
    selected = []
    for cls, n in enumerate(counts):
        idx = np.where(labels == cls)[0]
        if len(idx) < n:
            raise ValueError(f"counts asks for {n} images of class {cls}, but labels has only {len(idx)}")
        rng.shuffle(idx)
        selected.append(idx[:n])
    return np.concatenate(selected).astype(np.int64)

