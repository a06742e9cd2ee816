"""The on-device input pipeline: the whole training set as one uint8 tensor, augmented a batch at a time.

No DataLoader and no per-sample Python: each epoch draws its order, crop offsets and flip bits at once
from the stream's own torch.Generator (on the data's device), and each batch is padded, cropped and
flipped with a single gather, then normalised. It is the same augmentation as torchvision's
RandomCrop(32, padding=4) + RandomHorizontalFlip() + ToTensor() + Normalize(mean, std) on PIL images.
"""

from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mmlib.choices import CIFAR_MEAN, CIFAR_STD


def to_device(images: np.ndarray, labels: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NHWC images and their labels -> contiguous uint8 (N, 3, H, W) and int64 (N,) tensors on device."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if len(images) != len(labels):
        raise ValueError(f"images and labels must have the same length, got {len(images)} and {len(labels)}")
    images = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).contiguous()
    return images, torch.as_tensor(labels, dtype=torch.int64).to(device)


def normalize(images_uint8: torch.Tensor, mean: Sequence[float] | torch.Tensor = CIFAR_MEAN,
              std: Sequence[float] | torch.Tensor = CIFAR_STD) -> torch.Tensor:
    """(x / 255 - mean) / std per channel, as float32; the same as ToTensor() + Normalize(mean, std).

    mean and std may be float32 (1, C, 1, 1) tensors already on the images' device: that skips a
    host-to-device copy per call, which on CUDA would wait for the queued work.
    """
    mean = _channel_constant(mean, images_uint8.device)
    std = _channel_constant(std, images_uint8.device)
    return images_uint8.float().div_(255.0).sub_(mean).div_(std)  # torchvision's arithmetic, in place


def _channel_constant(values: Sequence[float] | torch.Tensor, device) -> torch.Tensor:
    """Per-channel constants as a float32 (1, C, 1, 1) tensor on device; a no-op for one already made."""
    return torch.as_tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)


def eval_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024,
                 mean: Sequence[float] | torch.Tensor = CIFAR_MEAN,
                 std: Sequence[float] | torch.Tensor = CIFAR_STD) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised batches in order, without augmentation, for evaluation."""
    _check_images_and_labels(images, labels)
    _check_batch_size(batch_size)
    mean, std = _channel_constant(mean, images.device), _channel_constant(std, images.device)
    for start in range(0, len(images), batch_size):
        yield normalize(images[start:start + batch_size], mean, std), labels[start:start + batch_size]


def _check_images_and_labels(images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a uint8 (N, 3, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
    if labels.dtype != torch.int64 or labels.dim() != 1:
        raise ValueError(f"labels must be a 1-D int64 tensor, got {labels.dtype} {tuple(labels.shape)}")
    if len(images) != len(labels):
        raise ValueError(f"images and labels must have the same length, got {len(images)} and {len(labels)}")
    if images.device != labels.device:
        raise ValueError(f"images and labels must be on the same device, got {images.device} and {labels.device}")


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


class TrainStream:
    """One run's stream of augmented, normalised training batches, generated on the device.

    Every epoch is drawn from one torch.Generator seeded with `seed`: the same seed gives the same
    batches, and state_dict() taken between epochs lets a resumed run continue with identical ones.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int,
                 augment: bool = True, padding: int = 4, mean: Sequence[float] = CIFAR_MEAN,
                 std: Sequence[float] = CIFAR_STD):
        _check_images_and_labels(images, labels)
        _check_batch_size(batch_size)
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.images, self.labels = images, labels
        self.batch_size, self.augment, self.padding = batch_size, augment, padding
        self.mean, self.std = _channel_constant(mean, images.device), _channel_constant(std, images.device)
        self.num_classes = int(labels.max()) + 1
        self.generator = torch.Generator(device=images.device)
        self.generator.manual_seed(seed)
        self.set_class_weights(None)

    def set_class_weights(self, class_weights: torch.Tensor | None) -> None:
        """None: each epoch a permutation of all N samples. C per-class weights: each epoch N draws with
        replacement, a sample's probability proportional to its class's weight (class-balanced re-sampling)."""
        if class_weights is None:
            self.class_weights = self.sample_weights = None
            return
        class_weights = torch.as_tensor(class_weights, dtype=torch.float32)
        if class_weights.shape != (self.num_classes,):
            raise ValueError(f"class_weights must hold one weight per class ({self.num_classes}), "
                             f"got shape {tuple(class_weights.shape)}")
        if not torch.isfinite(class_weights).all() or (class_weights < 0).any() or class_weights.sum() <= 0:
            raise ValueError(f"class_weights must be finite, >= 0 and not all zero, got {class_weights.tolist()}")
        self.class_weights = class_weights.to(self.labels.device)
        self.sample_weights = self.class_weights[self.labels]

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Draw this epoch's order, crop offsets and flips now, then yield float32 (B,3,H,W), int64 (B,) batches.

        The last partial batch is kept.
        """
        order, offsets, flips = self.draw()
        for start in range(0, len(order), self.batch_size):
            window = slice(start, start + self.batch_size)
            idx = order[window]
            images = self.gather(idx, None if offsets is None else offsets[window],
                                 None if flips is None else flips[window])
            yield images, self.labels.index_select(0, idx)

    def draw(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """One epoch's random draws: sample order (N,), crop offsets (N, 2) and flips (N,) (None without
        augmentation)."""
        n, device = len(self.labels), self.labels.device
        if self.sample_weights is None:
            order = torch.randperm(n, generator=self.generator, device=device)
        else:
            order = torch.multinomial(self.sample_weights, n, replacement=True, generator=self.generator)
        offsets = flips = None
        if self.augment:
            offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=self.generator, device=device)
            flips = torch.randint(0, 2, (n,), generator=self.generator, device=device).bool()
        return order, offsets, flips

    def gather(self, idx: torch.Tensor, offsets: torch.Tensor | None, flips: torch.Tensor | None) -> torch.Tensor:
        """The normalised float32 images of sample indices idx, each cropped at its offset and flipped where drawn."""
        images = self.images.index_select(0, idx)  # much faster than images[idx] on CPU
        if self.augment:
            images = self._crop_and_flip(images, offsets, flips)
        return normalize(images, self.mean, self.std)

    def _crop_and_flip(self, images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Zero-pad, then take each image's HxW crop at its (row, col) offset, mirrored where flipped, in one gather."""
        b, c, h, w = images.shape
        padded = F.pad(images, (self.padding,) * 4)
        padded_w = w + 2 * self.padding
        rows = offsets[:, :1] + torch.arange(h, device=images.device)  # (B, H) source rows
        cols = torch.arange(w, device=images.device).expand(b, w)
        cols = torch.where(flips[:, None], w - 1 - cols, cols) + offsets[:, 1:]  # (B, W) source cols
        flat_index = (rows[:, :, None] * padded_w + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
        return padded.view(b, c, -1).gather(2, flat_index).view(b, c, h, w)

    def state_dict(self) -> dict:
        """The generator state and class weights; take it between epochs."""
        return {
            "generator": self.generator.get_state(),
            "class_weights": None if self.class_weights is None else self.class_weights.cpu(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.set_class_weights(state["class_weights"])
