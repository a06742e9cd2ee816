"""Seconds to write one epoch's checkpoints (the cost that run parameter checkpoint_every spreads out).

Builds K runs of a network fused into one model on the device, gives its optimizer momentum, then
times what mmlib.train.trainer writes after an epoch: each run's state split out of the fused model,
copied to the host and saved by run_folder.save_checkpoint (write, fsync, rename, checkpoint.json),
into --dir (default: a temporary folder on the disk that holds /tmp).

    python benchmarks/checkpoint_write.py --arch resnet32 --fuse 1 --repeats 20
    python benchmarks/checkpoint_write.py --arch resnet32 --fuse 8 --device cuda --dir runs/bench
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mmlib.choices import ARCHS
from mmlib.train import run_folder
from mmlib.train.models import build_model, split_optimizer_state, split_state_dict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet32", choices=ARCHS)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--fuse", type=int, default=1, help="runs fused into one model (K)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dir", help="where to write (default: a temporary folder)")
    args = parser.parse_args()

    model = build_model(args.arch, args.classes, runs=args.fuse).to(args.device)
    optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)
    model(torch.randn(2, 3 * args.fuse, 32, 32, device=args.device)).sum().backward()
    optimizer.step()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        dirs = [Path(folder) / f"run{k}" for k in range(args.fuse)]
        times = []
        for epoch in range(args.repeats + 1):  # the first is a warm-up
            start = time.perf_counter()
            models = split_state_dict(model.state_dict(), args.fuse)
            optimizers = split_optimizer_state(optimizer.state_dict(), args.fuse)
            for k, run_dir in enumerate(dirs):
                run_folder.save_checkpoint(run_dir, {"epoch": epoch, "model": models[k], "optimizer": optimizers[k]})
            times.append(time.perf_counter() - start)
        size = (dirs[0] / run_folder.CHECKPOINT).stat().st_size
    times = sorted(times[1:])
    print(f"{args.arch}, {args.fuse} run(s) on {args.device}: {size / 2**20:.1f} MB a run; one epoch's checkpoints "
          f"take {1e3 * times[len(times) // 2]:.0f} ms (median of {args.repeats}; fastest "
          f"{1e3 * times[0]:.0f}, slowest {1e3 * times[-1]:.0f})")


if __name__ == "__main__":
    main()
