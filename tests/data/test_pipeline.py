"""Tests of mmlib.data.pipeline: the augmentation's semantics and statistics, determinism, sampling, resuming."""

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from mmlib.data.pipeline import TrainStream, eval_batches, normalize, to_device

MEAN = np.array([0.4914, 0.4822, 0.4465])  # the protocol's constants, from methods.md
STD = np.array([0.2023, 0.1994, 0.2010])
NUM_IMAGES, NUM_CLASSES = 200, 5


def position_images(n=NUM_IMAGES):
    """NHWC uint8 images whose pixels name their source: channel 0 = row + 1, 1 = col + 1, 2 = image id + 1.

    A zero in channel 0 can then only be padding, and every output pixel reveals where it came from.
    """
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    images = np.empty((n, 32, 32, 3), dtype=np.uint8)
    images[..., 0] = rows + 1
    images[..., 1] = cols + 1
    images[..., 2] = (np.arange(n) + 1)[:, None, None]
    return images


def position_data(n=NUM_IMAGES):
    images = position_images(n)
    labels = np.arange(n) % NUM_CLASSES
    return images, labels, *to_device(images, labels, "cpu")


def to_pixels(batch: torch.Tensor) -> np.ndarray:
    """Undo the normalisation: float (B,3,H,W) back to the integer pixel values it came from."""
    values = (batch.numpy() * STD[None, :, None, None] + MEAN[None, :, None, None]) * 255
    return np.round(values).astype(np.int64)


def image_ids(pixels: np.ndarray) -> np.ndarray:
    return pixels[:, 2, 16, 16] - 1  # the centre pixel is never padding


def collect(stream, epochs=1):
    return [[(x.clone(), y.clone()) for x, y in stream.epoch()] for _ in range(epochs)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def torchvision_crop_and_flip(image: np.ndarray, top: int, left: int, flip: bool) -> np.ndarray:
    """The reference: RandomCrop(32, padding=4) with the given offsets, then the flip, on a PIL image (CHW out)."""
    pil = TF.crop(TF.pad(Image.fromarray(image), 4, fill=0), top, left, 32, 32)
    if flip:
        pil = TF.hflip(pil)
    return np.asarray(pil).transpose(2, 0, 1)


def test_to_device_gives_contiguous_nchw_uint8():
    images, labels, device_images, device_labels = position_data(3)
    assert device_images.dtype == torch.uint8 and device_images.shape == (3, 3, 32, 32)
    assert device_images.is_contiguous() and device_labels.dtype == torch.int64
    np.testing.assert_array_equal(device_images.numpy(), images.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(device_labels.numpy(), labels)
    with pytest.raises(ValueError, match="images must be uint8"):
        to_device(images.astype(np.float32), labels, "cpu")
    with pytest.raises(ValueError, match="same length"):
        to_device(images, labels[:2], "cpu")


def test_augmentation_is_torchvisions_crop_and_flip_with_uniform_offsets():
    images, labels, device_images, device_labels = position_data()
    stream = TrainStream(device_images, device_labels, batch_size=64, seed=0)
    tops, lefts, flips = [], [], []
    for batches in collect(stream, epochs=10):
        for x, y in batches:
            pixels = to_pixels(x)
            ids = image_ids(pixels)
            np.testing.assert_array_equal(y.numpy(), labels[ids])
            for image, source in zip(pixels, ids):
                # Read the offsets off the centre pixels, then demand every pixel match torchvision's result.
                flip = image[1, 16, 17] < image[1, 16, 16]
                top = image[0, 16, 16] - 1 - 16 + 4
                left = image[1, 16, 16] - 1 - (15 if flip else 16) + 4
                np.testing.assert_array_equal(image, torchvision_crop_and_flip(images[source], top, left, flip))
                tops.append(top), lefts.append(left), flips.append(flip)

    draws = len(flips)
    assert draws == 10 * NUM_IMAGES
    for offsets in (tops, lefts):
        counts = np.bincount(offsets, minlength=9)
        assert len(counts) == 9  # offsets 0..8 only
        expected, sigma = draws / 9, np.sqrt(draws * (1 / 9) * (8 / 9))
        assert np.all(np.abs(counts - expected) < 5 * sigma)
    assert len(set(zip(tops, lefts))) == 81  # independent axes: ~25 draws expected in each (top, left) cell
    assert abs(np.sum(flips) - draws / 2) < 5 * np.sqrt(draws / 4)


def test_unaugmented_output_is_normalised_with_the_protocols_constants():
    images, labels, device_images, device_labels = position_data(10)
    stream = TrainStream(device_images, device_labels, batch_size=4, seed=0, augment=False)
    batches = collect(stream)[0]
    assert len(stream) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    x = torch.cat([x for x, _ in batches]).numpy()
    ids = image_ids(to_pixels(torch.from_numpy(x)))
    expected = (images[ids].transpose(0, 3, 1, 2) / 255.0 - MEAN[None, :, None, None]) / STD[None, :, None, None]
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, expected, atol=1e-5)
    np.testing.assert_allclose(normalize(device_images).numpy(),
                               (images.transpose(0, 3, 1, 2) / 255.0 - MEAN[None, :, None, None]) / STD[None, :, None, None],
                               atol=1e-5)


def test_every_sample_once_per_epoch_and_the_last_partial_batch_is_kept():
    _, labels, device_images, device_labels = position_data(10)
    stream = TrainStream(device_images, device_labels, batch_size=4, seed=1)
    assert len(stream) == 3
    for batches in collect(stream, epochs=3):
        assert [len(y) for _, y in batches] == [4, 4, 2]
        ids = np.concatenate([image_ids(to_pixels(x)) for x, _ in batches])
        np.testing.assert_array_equal(np.sort(ids), np.arange(10))
        np.testing.assert_array_equal(torch.cat([y for _, y in batches]).numpy(), labels[ids])


def test_same_seed_same_batches_different_seed_different_batches():
    _, _, device_images, device_labels = position_data()

    def run(seed):
        return collect(TrainStream(device_images, device_labels, batch_size=64, seed=seed), epochs=2)

    def order(batches):
        return np.concatenate([image_ids(to_pixels(x)) for x, _ in batches])

    first, again, other = run(5), run(5), run(6)
    for a, b in zip(first, again):
        assert_same_batches(a, b)
    assert not torch.equal(first[0][0][0], other[0][0][0])
    # The order itself is random: it differs between seeds and between epochs, and is not the stored one.
    orders = [order(first[0]), order(first[1]), order(other[0]), np.arange(NUM_IMAGES)]
    assert all(not np.array_equal(a, b) for i, a in enumerate(orders) for b in orders[i + 1:])


def test_state_dict_round_trip_resumes_identically():
    _, _, device_images, device_labels = position_data()
    stream = TrainStream(device_images, device_labels, batch_size=64, seed=3)
    collect(stream)
    for weights in (None, torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])):
        stream.set_class_weights(weights)
        state = stream.state_dict()
        expected = collect(stream, epochs=2)
        resumed = TrainStream(device_images, device_labels, batch_size=64, seed=99)
        resumed.load_state_dict(state)
        for a, b in zip(expected, collect(resumed, epochs=2)):
            assert_same_batches(a, b)


def test_class_balanced_resampling_follows_the_weights():
    class_sizes = np.array([60, 25, 10, 4, 1])
    labels = np.repeat(np.arange(5), class_sizes)
    images, labels_t = to_device(position_images(len(labels)), labels, "cpu")
    stream = TrainStream(images, labels_t, batch_size=32, seed=0, augment=False)

    def label_counts(epochs):
        return [np.bincount(torch.cat([y for _, y in batches]).numpy(), minlength=5)
                for batches in collect(stream, epochs)]

    for counts in label_counts(3):  # uniform: every sample exactly once
        np.testing.assert_array_equal(counts, class_sizes)

    weights = np.array([1.0, 2.0, 4.0, 8.0, 30.0])
    stream.set_class_weights(torch.tensor(weights))
    epochs = 30
    total = np.sum(label_counts(epochs), axis=0)
    draws = epochs * len(labels)
    p = weights * class_sizes / np.sum(weights * class_sizes)
    assert total.sum() == draws
    assert np.all(np.abs(total - draws * p) < 5 * np.sqrt(draws * p * (1 - p)))

    stream.set_class_weights(None)
    np.testing.assert_array_equal(label_counts(1)[0], class_sizes)


def test_eval_batches_in_order_without_augmentation():
    images, labels, device_images, device_labels = position_data(10)
    batches = list(eval_batches(device_images, device_labels, batch_size=4))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    x = torch.cat([x for x, _ in batches]).numpy()
    expected = (images.transpose(0, 3, 1, 2) / 255.0 - MEAN[None, :, None, None]) / STD[None, :, None, None]
    np.testing.assert_allclose(x, expected, atol=1e-5)
    np.testing.assert_array_equal(torch.cat([y for _, y in batches]).numpy(), labels)


def test_bad_arguments_name_the_argument():
    _, _, images, labels = position_data(10)
    with pytest.raises(ValueError, match="batch_size"):
        TrainStream(images, labels, batch_size=0, seed=0)
    with pytest.raises(ValueError, match="same length"):
        TrainStream(images, labels[:9], batch_size=4, seed=0)
    with pytest.raises(ValueError, match=r"images must be a uint8 \(N, 3, H, W\)"):
        TrainStream(images.float(), labels, batch_size=4, seed=0)
    with pytest.raises(ValueError, match=r"images must be a uint8 \(N, 3, H, W\)"):
        TrainStream(images.permute(0, 2, 3, 1), labels, batch_size=4, seed=0)
    stream = TrainStream(images, labels, batch_size=4, seed=0)
    with pytest.raises(ValueError, match="class_weights must hold one weight per class"):
        stream.set_class_weights(torch.ones(4))
    with pytest.raises(ValueError, match="class_weights must be finite, >= 0"):
        stream.set_class_weights(torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0]))
