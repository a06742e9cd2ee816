"""Training images per second: mmlib's on-device TrainStream against the reference-style DataLoader pipeline.

The reference is what LDAM-DRW does: a Dataset returning PIL images through RandomCrop(32, padding=4),
RandomHorizontalFlip, ToTensor and Normalize, batched by a DataLoader(batch_size=128, shuffle=True,
num_workers=2). Both read the same imbalanced training set; each gets one warm-up epoch, then is timed.

    python benchmarks/input_pipeline.py --data-root /path/to/cifar10 --epochs 3
"""

import argparse
import time

import torch
from reference import ReferenceDataset
from torch.utils.data import DataLoader

from mmlib.choices import DATASETS, IMBALANCE_TYPES
from mmlib.data.pipeline import TrainStream, to_device
from mmlib.data.sources import load_dataset

BATCH_SIZE = 128


def images_per_second(batches_of_one_epoch, epochs: int, device: torch.device) -> float:
    """Consume one warm-up epoch, then time `epochs` epochs, moving each batch to device."""
    def run_epoch() -> int:
        seen = 0
        for x, y in batches_of_one_epoch():
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            seen += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return seen

    run_epoch()
    start = time.perf_counter()
    seen = sum(run_epoch() for _ in range(epochs))
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar10", choices=DATASETS)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--imb-type", default="exp", choices=IMBALANCE_TYPES)
    parser.add_argument("--ratio", type=float, default=100.0)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per pipeline, after one warm-up epoch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    dataset = load_dataset(args.dataset, args.data_root, args.imb_type, args.ratio)
    device = torch.device(args.device)
    print(dataset.description)
    print(f"device {device}, batch size {BATCH_SIZE}, {args.epochs} timed epochs after one warm-up epoch, "
          f"{torch.get_num_threads()} torch threads")

    images, labels = to_device(dataset.train_images, dataset.train_labels, device)
    stream = TrainStream(images, labels, batch_size=BATCH_SIZE, seed=0)
    ours = images_per_second(stream.epoch, args.epochs, device)
    print(f"TrainStream:              {ours:12,.0f} images/s")

    loader = DataLoader(ReferenceDataset(dataset.train_images, dataset.train_labels), batch_size=BATCH_SIZE,
                        shuffle=True, num_workers=2, drop_last=False, pin_memory=device.type == "cuda",
                        persistent_workers=True)
    reference = images_per_second(lambda: iter(loader), args.epochs, device)
    print(f"DataLoader + torchvision: {reference:12,.0f} images/s")
    print(f"speed-up: {ours / reference:.1f}x")


if __name__ == "__main__":
    main()
