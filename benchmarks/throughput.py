"""Training images per second, side by side on one model, dataset and device, and each path's share of the
device's arithmetic limit (a 4096^2 float32 matrix product, timed first; a training image's FLOPs counted from
the model):

  (a) reference: the released code's loop: torchvision Dataset + PIL transforms + DataLoader with
      workers, fp32, a host sync (.item()) every step;
  (b)/(c) mmlib's training step (mmlib.train.step.TrainStep) on the on-device pipeline, for each step path
      (--compile: off = eager, graphs = the whole step as CUDA graphs, or a torch.compile mode of the
      model, its start-up printed) and each K of --fuse (K runs fused into one model of grouped
      convolutions, counted as K x the images): K = 1 is (b), K > 1 is (c);
  (d) --split P (CPU): P runs at once in P processes of cores / P threads each, against (b) on every core;
  (e) --eval-batch-sizes: the trainer's evaluation of the whole test set at each batch size.

Each of (a)-(d) measures whole epochs over the first --images training images (all by default), after one
warm-up epoch (which includes a graph path's captures and their checks, and a compiled path's compilation)
and one evaluation batch, and prints the aggregate images/s, the ratios to (a) and to (b) off, peak memory,
and the time a 200-epoch run of each of the K runs would take at that rate. On CUDA the peak is of reserved
memory over all of it: a graph's activations live in its private pool, reserved but not allocated between replays.
--sam-rho RHO also times each (b)/(c) with sharpness-aware minimization (sam_rho: two forward and backward
passes a step) against the same plain step, epochs of the two taken in turn (so that a load changing
meanwhile falls on both), and prints the ratios of their fastest and of their median epoch times (on a
machine shared with other jobs the fastest epochs are the least disturbed: short epochs, many of them).
--save-curve keeps the graph path's curve (with --fuse 1 2 4 8 16 32 and the sweep's settings, e.g.
--bf16) for `sweep --fuse auto`; --json writes the rows measured so far after each one.

    python benchmarks/throughput.py --data-root PATH --images 2560 --epochs 3 --fuse 1 2 \\
        --compile off default max-autotune --split 2 --eval-batch-sizes 1024 256 128 64                     # CPU
    python benchmarks/throughput.py --data-root /path/to/cifar10 --images 256 --epochs 20 --fuse 1 --sam-rho 0.8  # SAM
    python benchmarks/throughput.py --data-root /path/to/cifar10 --bf16 --compile graphs off --save-curve  # GPU
"""

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from reference import ReferenceDataset
from torch.utils.data import DataLoader

from mmlib.choices import ARCHS, COMPILE_MODES, DATASETS
from mmlib.data.pipeline import TrainStream, eval_batches, to_device
from mmlib.data.sources import load_dataset
from mmlib.train import fusion
from mmlib.train.losses import LDAMLoss
from mmlib.train.models import build_model, merge_state_dicts
from mmlib.train.step import TrainStep
from mmlib.train.trainer import confusions

BATCH_SIZE = 128


def reference_epoch(model, loader, criterion, optimizer, device) -> None:
    model.train()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = criterion(model(x), y)
        loss.item()  # the released loop logs every step's loss, which waits for the device
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def reference_rate(args, dataset, images, labels, device: torch.device) -> tuple[float, float]:
    """(a): the released loop's images per second and peak memory over ``images``."""
    torch.manual_seed(0)
    model = build_model(args.arch, dataset.num_classes, normed=True).to(device)
    loader = DataLoader(ReferenceDataset(images, labels), batch_size=BATCH_SIZE, shuffle=True, num_workers=args.workers,
                        persistent_workers=args.workers > 0, pin_memory=device.type == "cuda")
    criterion, optimizer = LDAMLoss(dataset.cls_num_list).to(device), sgd(model)
    return timed(lambda: reference_epoch(model, loader, criterion, optimizer, device), len(labels), args.epochs,
                 device)[:2]


def timed(epoch, images: int, epochs: int, device: torch.device, evaluate=None) -> tuple[float, float, float]:
    """(images per second over `epochs` epochs after a warm-up epoch and an evaluation, peak memory in MiB, the
    warm-up epoch's seconds: a compiled path's start-up shows there).

    On CUDA, the peak of reserved memory from before the warm-up (graph captures and their checks included);
    on the CPU, the process's peak RSS.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()  # what earlier measurements left cached
        torch.cuda.reset_peak_memory_stats(device)
    warm_up = time.perf_counter()
    epoch()
    if evaluate is not None:
        evaluate()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(epochs):
        epoch()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_reserved(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # the process's RSS, Linux KiB
    seconds = time.perf_counter() - start
    return images * epochs / seconds, peak, start - warm_up


def forward_flops(arch: str, num_classes: int) -> float:
    """Floating-point operations of one image's forward pass: two per multiply-add of every convolution and of the
    head (BatchNorm, ReLU and the additions are a few per activation: left out). A training image costs about three
    times this (the backward pass computes two products of each forward one's size)."""
    model, total = build_model(arch, num_classes), 0

    def count(conv, inputs, output):
        nonlocal total
        total += 2 * output.numel() * conv.weight[0].numel()  # (C_in / groups) * k * k multiply-adds an output

    for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
        conv.register_forward_hook(count)
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    return total + 2 * model.fc.weight.numel()


def matmul_peak(device: torch.device, size: int = 4096, repeats: int = 5) -> float:
    """The device's float32 GFLOP/s on a size x size matrix product, the best of `repeats`: what its arithmetic
    can reach, against which each path's share is reported."""
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    best = float("inf")
    for _ in range(repeats + 1):  # the first: warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


@torch.inference_mode()
def evaluate(model, runs: int, images: torch.Tensor, labels: torch.Tensor, bf16: bool, memory_format) -> None:
    """The K runs' forward over one evaluation batch as the trainer evaluates (1024 test images, the default
    batch): an evaluation's memory is one batch's."""
    model.eval()
    x, _ = next(eval_batches(images, labels, 1024))
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
        model(x.repeat(1, runs, 1, 1).contiguous(memory_format=memory_format)).argmax(-1)


def sgd(model, lr=0.1):
    return torch.optim.SGD(model.parameters(), lr, momentum=0.9, weight_decay=2e-4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar10", choices=DATASETS)
    parser.add_argument("--data-root", help="the dataset's folder, or an exported .npz file")
    parser.add_argument("--ratio", type=float, default=100.0, help="long-tailed imbalance ratio (default 100)")
    parser.add_argument("--arch", default="resnet32", choices=list(ARCHS))
    parser.add_argument("--images", type=int, help="train on the first N images of the imbalanced set (default: all)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up epoch")
    parser.add_argument("--fuse", type=int, nargs="+",
                        help="the K of (b)/(c) (default: 1 2 4 8 16 32 on CUDA, 1 2 on the CPU)")
    parser.add_argument("--compile", nargs="+", choices=[m for m in COMPILE_MODES if m != "auto"],
                        help="step paths to measure (default: off graphs on CUDA, off on the CPU)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of (a)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast in (b) and (c)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="channels-last in (b) and (c), as a run's default")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--split", type=int, metavar="P",
                        help="CPU: also (d) P runs at once, each in a process of its own with cores / P threads, "
                             "against (b) one run on every core (the sweep's placement of jobs)")
    parser.add_argument("--eval-batch-sizes", type=int, nargs="+", default=[],
                        help="also (e) evaluation of the whole test set at these batch sizes (eager, as the trainer)")
    parser.add_argument("--sam-rho", type=float,
                        help="also time (b)/(c) with SAM at this rho against the plain step (epochs in turn)")
    parser.add_argument("--save-curve", action="store_true",
                        help="save the graph path's K curve for sweep --fuse auto (CUDA only)")
    parser.add_argument("--json", help="write the rows measured so far to this file, after each")
    parser.add_argument("--one-rate", action="store_true", help=argparse.SUPPRESS)  # (d)'s worker: (b) off, as JSON
    args = parser.parse_args()

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    runs_list = args.fuse or ([1, 2, 4, 8, 16, 32] if cuda else [1, 2])
    paths = args.compile or (["graphs", "off"] if cuda else ["off"])
    if args.save_curve and not cuda:
        parser.error("--save-curve needs a CUDA device: sweep --fuse auto is 1 on the CPU")
    if args.save_curve and "graphs" not in paths:
        parser.error("--save-curve saves the graph path's curve (the runs' step on CUDA): add graphs to --compile")
    if args.split and (cuda or args.split < 2):
        parser.error("--split P: P >= 2 processes on the CPU")
    dataset = load_dataset(args.dataset, args.data_root, "exp", args.ratio)
    train_images, train_labels = dataset.train_images[:args.images], dataset.train_labels[:args.images]
    n, counts = len(train_labels), dataset.cls_num_list
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    x, y = to_device(train_images, train_labels, device)
    test_x, test_y = to_device(dataset.test_images, dataset.test_labels, device)

    def mmlib_step(runs: int, path: str, sam_rho: float = 0.0) -> TrainStep:
        singles = []
        for seed in range(runs):
            torch.manual_seed(seed)
            singles.append(build_model(args.arch, dataset.num_classes, normed=True))
        fused = build_model(args.arch, dataset.num_classes, normed=True, runs=runs)
        fused.load_state_dict(merge_state_dicts([m.state_dict() for m in singles]))
        fused.to(device, memory_format=memory_format)
        streams = [TrainStream(x, y, BATCH_SIZE, seed) for seed in range(runs)]
        criteria = [LDAMLoss(counts).to(device) for _ in range(runs)]
        for criterion in criteria:  # as the trainer builds them: weighted from the start, for DRW
            criterion.weight = torch.ones(dataset.num_classes, device=device)
        return TrainStep(fused, streams, criteria, sgd(fused), args.bf16, args.channels_last, path,
                         sam_rho=[sam_rho] * runs)

    def mmlib_rate(runs: int, path: str) -> tuple[float, float, float]:
        step = mmlib_step(runs, path)
        rate, memory, warm_up = timed(step.epoch, n, args.epochs, device,
                                      lambda: evaluate(step.model, runs, test_x, test_y, args.bf16, memory_format))
        if step.paths[-1]["path"] != ("graphs" if path == "graphs" else "eager"):
            print(f"  ({path}, {runs} runs: {step.paths[-1]['reason']})")
        return rate * runs, memory, warm_up

    def sam_ratio(runs: int, path: str) -> tuple[float, float, float]:
        """SAM epoch time / plain epoch time of the fastest and of the median epochs, and SAM images/s (fastest)."""
        steps = {"plain": mmlib_step(runs, path), "sam": mmlib_step(runs, path, args.sam_rho)}
        seconds = {name: [] for name in steps}
        for epoch in range(args.epochs + 1):  # the first: warm-up (and a graph path's capture)
            for name, step in steps.items():
                start = time.perf_counter()
                step.epoch()
                if cuda:
                    torch.cuda.synchronize(device)
                if epoch:
                    seconds[name].append(time.perf_counter() - start)
        fastest, median = ({name: f(times) for name, times in seconds.items()} for f in (min, statistics.median))
        return fastest["sam"] / fastest["plain"], median["sam"] / median["plain"], n * runs / fastest["sam"]

    def split_rate(processes: int) -> float:
        """(d): runs of the eager step in ``processes`` processes at once, each with cores / processes threads;
        their images/s added up. Each measures as (b) does, in a fresh process (this script with --one-rate)."""
        threads = max(1, torch.get_num_threads() // processes)
        command = [sys.executable, __file__, *sys.argv[1:], "--one-rate"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        started = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
        return sum(json.loads(p.communicate()[0].splitlines()[-1])["images_per_second"] for p in started)

    eval_rates = {}

    def eval_rate(batch: int) -> float:
        """(e): test images per second of the trainer's evaluation (mmlib.train.trainer's, eager) at this batch size."""
        torch.manual_seed(0)
        model = build_model(args.arch, dataset.num_classes, normed=True).to(device, memory_format=memory_format)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
        confusions(model, test_x, test_y, 1, dataset.num_classes, batch, autocast, args.channels_last)  # warm-up
        start = time.perf_counter()
        confusions(model, test_x, test_y, 1, dataset.num_classes, batch, autocast, args.channels_last)  # syncs at its end
        return len(test_y) / (time.perf_counter() - start)

    if args.one_rate:
        print(json.dumps({"images_per_second": mmlib_rate(1, "off")[0]}))
        return

    peak = matmul_peak(device)
    training_flops = 3 * forward_flops(args.arch, dataset.num_classes)
    print(f"{dataset.description}; timing {n} images, {args.arch}, batch {BATCH_SIZE}, device {device} "
          f"({torch.cuda.get_device_name(device) if cuda else f'{torch.get_num_threads()} threads'}); "
          f"(b)/(c): bf16={args.bf16} channels_last={args.channels_last}")
    print(f"the limit: a 4096^2 float32 matrix product at {peak:,.0f} GFLOP/s; a training image "
          f"{training_flops / 1e9:.3f} GFLOP (3x the forward pass's convolutions and head), so at most "
          f"{peak * 1e9 / training_flops:,.0f} training images/s")

    def share(rate: float, flops: float = training_flops) -> str:
        return f"{rate * flops / 1e9:6,.0f} GFLOP/s, {100 * rate * flops / 1e9 / peak:3.0f}% of the limit"

    reference, reference_memory = reference_rate(args, dataset, train_images, train_labels, device)
    memory_unit = "MiB peak reserved" if cuda else "MiB peak process RSS"
    full_run = len(dataset.train_labels) * 200
    print(f"{'(a) reference loop':<34} {reference:10,.0f} images/s  {1:6.2f}x (a)  {reference_memory:8,.0f} "
          f"{memory_unit}  200 epochs on the whole set: {full_run / reference / 60:7.1f} min for 1 run  {share(reference)}")
    settings = {"arch": args.arch, "batch_size": BATCH_SIZE, "bf16": args.bf16, "channels_last": args.channels_last,
                "images": n, "memory": memory_unit, "peak_gflops": peak}
    rows = []

    def report(row: dict, name: str, extra: str = "") -> None:
        rows.append(row)
        rate, runs = row["images_per_second"], row["runs"]
        baseline = next(r["images_per_second"] for r in rows if r["path"] == "off" and r["runs"] == 1) \
            if any(r["path"] == "off" and r["runs"] == 1 for r in rows) else None
        today = f"  {rate / baseline:5.2f}x (b) off" if baseline else ""
        memory = "-" if row["peak_mib"] is None else f"{row['peak_mib']:,.0f}"
        print(f"{name:<34} {rate:10,.0f} images/s  {rate / reference:6.2f}x (a){today}  {memory:>8} "
              f"{memory_unit}  200 epochs: {full_run * runs / rate / 60:7.1f} min for {runs} run(s)  {share(rate)}"
              + extra, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({
                "dataset": dataset.description, "training_images": len(dataset.train_labels), "settings": settings,
                "reference_images_per_second": reference, "rows": rows}, indent=1) + "\n")

    for path in sorted(paths, key=lambda p: p != "off"):  # the eager step first: the others' ratios are to it
        for runs in runs_list:
            name = f"({'b' if runs == 1 else 'c'}) {path}, {runs} run{'s' * (runs > 1)}"
            try:
                rate, memory, warm_up = mmlib_rate(runs, path)
            except torch.cuda.OutOfMemoryError:
                print(f"{name:<34} out of memory; larger K skipped")
                break
            finally:
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
            epoch_seconds = n * runs / rate
            startup = f"; start-up {warm_up - epoch_seconds:.0f} s" if path not in ("off", "graphs") else ""
            report({"path": path, "runs": runs, "images_per_second": rate, "ratio": rate / reference,
                    "peak_mib": memory, "seconds_200_epochs": full_run * runs / rate}, name, startup)
            if args.sam_rho:
                fastest, median, sam_rate = sam_ratio(runs, path)
                print(f"{'    with SAM, rho ' + f'{args.sam_rho:g}':<34} {sam_rate:10,.0f} images/s  "
                      f"{sam_rate / reference:6.2f}x (a)  epoch time: {fastest:.2f}x the plain step's "
                      f"(fastest epochs), {median:.2f}x (median), {args.epochs} epochs each in turn")
    if args.split:
        rate = split_rate(args.split)
        report({"path": f"off, {args.split} processes", "runs": args.split, "images_per_second": rate,
                "ratio": rate / reference, "peak_mib": None, "seconds_200_epochs": full_run * args.split / rate},
               f"(d) off, {args.split} runs in {args.split} processes")
    for batch in args.eval_batch_sizes:
        rate = eval_rate(batch)
        first = eval_rates.setdefault("first", rate)
        print(f"{f'(e) evaluation, batch {batch}':<34} {rate:10,.0f} images/s  {rate / first:5.2f}x batch "
              f"{args.eval_batch_sizes[0]}  the test set ({len(test_y):,} images): {len(test_y) / rate:5.1f} s an epoch  "
              f"{share(rate, training_flops / 3)}", flush=True)
    if args.save_curve:
        curve = [{k: row[k] for k in ("runs", "images_per_second", "peak_mib")} for row in rows if row["path"] == "graphs"]
        path = fusion.save_fuse_curve(torch.cuda.get_device_name(device), {**settings, "compile": "graphs"}, curve)
        print(f"K curve of the graph path saved to {path}")


if __name__ == "__main__":
    main()
