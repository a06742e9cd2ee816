"""Training images per second, side by side on one model, dataset and device:

  (a) reference: the released code's loop: torchvision Dataset + PIL transforms + DataLoader with
      workers, fp32, a host sync (.item()) every step;
  (b) mmlib, one run: the trainer's own epoch (mmlib.training.train_epoch) on the on-device pipeline;
  (c) mmlib, K runs fused into one model (grouped convolutions), counted as K x the images.

Each measures whole epochs over the first --images training images (all by default), after one
warm-up epoch, and prints images/s, the ratio to (a), peak memory, and the time a 200-epoch run
would take at that rate.

    python benchmarks/throughput.py --data-root /path/to/cifar10 --images 2560       # CPU
    python benchmarks/throughput.py --data-root /path/to/cifar10 --bf16 --fuse 8                   # GPU
"""

import argparse
import resource
import time

import torch
from torch.utils.data import DataLoader

from mmlib.data import DATASETS, load_dataset
from mmlib.losses import LDAMLoss
from mmlib.models import ARCHS, build_model, merge_state_dicts
from mmlib.pipeline import TrainStream, to_device
from mmlib.training import train_epoch
from reference import ReferenceDataset


def reference_epoch(model, loader, criterion, optimizer, device) -> None:
    model.train()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = criterion(model(x), y)
        loss.item()  # the released loop logs every step's loss, which waits for the device
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def timed(epoch, images: int, epochs: int, device: torch.device) -> tuple[float, float]:
    """(images per second, peak memory in MiB) over `epochs` epochs after one warm-up epoch."""
    epoch()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(epochs):
        epoch()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # the process's RSS, Linux KiB
    return images * epochs / (time.perf_counter() - start), peak


def sgd(model, lr=0.1):
    return torch.optim.SGD(model.parameters(), lr, momentum=0.9, weight_decay=2e-4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar10", choices=DATASETS)
    parser.add_argument("--data-root")
    parser.add_argument("--ratio", type=float, default=100.0, help="long-tailed imbalance ratio (default 100)")
    parser.add_argument("--arch", default="resnet32", choices=list(ARCHS))
    parser.add_argument("--images", type=int, help="train on the first N images of the imbalanced set (default: all)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up epoch")
    parser.add_argument("--fuse", type=int, default=4, help="K, the runs of (c)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of (a)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast in (b) and (c)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="channels-last in (b) and (c), as a run's default")
    parser.add_argument("--compile", default="off", help="torch.compile mode of (b) and (c), e.g. reduce-overhead")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    dataset = load_dataset(args.dataset, args.data_root, "exp", args.ratio)
    train_images, train_labels = dataset.train_images[:args.images], dataset.train_labels[:args.images]
    n, counts = len(train_labels), dataset.cls_num_list
    print(f"{dataset.description}; timing {n} images, {args.arch}, batch 128, device {device}, "
          f"{torch.get_num_threads()} threads; (b)/(c): bf16={args.bf16} channels_last={args.channels_last} "
          f"compile={args.compile}")

    torch.manual_seed(0)
    model = build_model(args.arch, dataset.num_classes, normed=True).to(device)
    loader = DataLoader(ReferenceDataset(train_images, train_labels), batch_size=128, shuffle=True,
                        num_workers=args.workers, persistent_workers=args.workers > 0, pin_memory=device.type == "cuda")
    optimizer = sgd(model)
    criterion = LDAMLoss(counts).to(device)
    reference, reference_memory = timed(lambda: reference_epoch(model, loader, criterion, optimizer, device),
                                        n, args.epochs, device)

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    memory_format = torch.channels_last if args.channels_last else torch.preserve_format
    x, y = to_device(train_images, train_labels, device)

    def mmlib_rate(runs: int) -> tuple[float, float]:
        singles = []
        for seed in range(runs):
            torch.manual_seed(seed)
            singles.append(build_model(args.arch, dataset.num_classes, normed=True))
        fused = build_model(args.arch, dataset.num_classes, normed=True, runs=runs)
        fused.load_state_dict(merge_state_dicts([m.state_dict() for m in singles]))
        fused.to(device, memory_format=memory_format)
        step_model = fused if args.compile == "off" else torch.compile(fused, mode=args.compile)
        streams = [TrainStream(x, y, 128, seed) for seed in range(runs)]
        criteria = [LDAMLoss(counts).to(device) for _ in range(runs)]
        optimizer = sgd(fused)
        rate, memory = timed(
            lambda: train_epoch(step_model, streams, criteria, optimizer, autocast, args.channels_last),
            n, args.epochs, device,
        )
        return rate * runs, memory

    single, single_memory = mmlib_rate(1)
    fused, fused_memory = mmlib_rate(args.fuse)
    full_run = len(dataset.train_labels) * 200
    memory_unit = "MiB peak allocated" if device.type == "cuda" else "MiB peak process RSS"
    for name, rate, memory in [
        ("(a) reference loop", reference, reference_memory),
        ("(b) mmlib, one run", single, single_memory),
        (f"(c) mmlib, {args.fuse} runs fused", fused, fused_memory),
    ]:
        runs = args.fuse if name.startswith("(c)") else 1
        print(f"{name:<28} {rate:10,.0f} images/s  {rate / reference:6.2f}x (a)  {memory:8,.0f} {memory_unit}  "
              f"200 epochs on the whole set: {full_run * runs / rate / 60:7.1f} min for {runs} run(s)")


if __name__ == "__main__":
    main()
