"""The device check: one command, at most about 8 minutes on one GPU, from a dataset exported to one file.

  1. the CUDA tests (pytest -m cuda: graph path against eager, fused against separate runs, losses on CUDA);
  2. the throughput benchmark: the reference loop, eager and graph paths, K = 1 ... 32 (saving the
     curve for sweep --fuse auto);
  3. a short real-data run: LDAM-DRW and both MM-DRW variants (equations, released) fused as one model,
     bf16, the default step (graphs on CUDA), the protocol's schedule shape over --epochs;

then a report (printed, and written to <out>/report.txt).

    python -m mmlib export-data --dataset cifar10 --data-root PATH --imb-type exp --ratio 100 --out c10.npz
    python benchmarks/gpu_check.py --data-root c10.npz --out gpu_check
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # mmlib from this checkout, installed or not
METHODS = [("ldam-drw", {}), ("mm-drw", {"mm_variant": "equations"}), ("mm-drw", {"mm_variant": "released"})]


def run_logged(title: str, command: list[str], timeout: int, lines: list[str]) -> None:
    """Run a command with a time limit; its output's tail goes into the report."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        status, output = f"rc {done.returncode}", done.stdout + done.stderr
    except subprocess.TimeoutExpired as timeout_error:
        output = timeout_error.stdout or ""
        status, output = f"TIMED OUT after {timeout} s", output.decode(errors="replace") if isinstance(output, bytes) else output
    lines += [f"## {title} ({status}, {time.perf_counter() - start:.0f} s)", *output.strip().splitlines()[-40:], ""]
    print("\n".join(lines[-3:]), flush=True)


def real_run(data_root: str, epochs: int, out: Path, lines: list[str]) -> None:
    from mmlib.training import run_many

    configs = [dict(method=method, dataset="cifar10", data_root=data_root, imb_type="exp", ratio=100.0, epochs=epochs,
                    bf16=True, quiet=True, **extra) for method, extra in METHODS]
    names = [c["method"] + (f"-{c['mm_variant']}" if "mm_variant" in c else "") for c in configs]
    start = time.perf_counter()
    results = run_many(configs, [out / "runs" / name for name in names])
    wall = time.perf_counter() - start
    seconds = [h["seconds"] for h in results[0]["history"]]  # an epoch of the fused model, with evaluation
    median = sorted(seconds[1:])[len(seconds[1:]) // 2]
    lines.append(f"## real data: {len(configs)} runs fused, {epochs} epochs, bf16, {wall:.0f} s wall with data loading; "
                 f"an epoch with evaluation: first {seconds[0]:.2f} s (graph capture), then median {median:.2f} s, "
                 f"so 200 epochs ~ {(seconds[0] + 199 * median) / 60:.1f} min for the {len(configs)} runs")
    for name, result in zip(names, results):
        lines.append(f"{name:<20} final error {result['final']['error']:6.2f}%  best {result['best']['error']:6.2f}%")
    lines.append("")
    print("\n".join(lines[-len(names) - 2:]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="CIFAR-10-LT-100 exported with python -m mmlib export-data")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the real-data run (default 30)")
    parser.add_argument("--out", default="gpu_check", help="folder for the report and the runs (default gpu_check)")
    args = parser.parse_args()
    if args.epochs < 10:
        parser.error("--epochs must be at least 10: the run keeps the protocol's warm-up, decays and DRW switch")
    if not torch.cuda.is_available():
        sys.exit("error: the device check needs a CUDA GPU")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# gpu_check on {torch.cuda.get_device_name()}, torch {torch.__version__}, data {args.data_root}", ""]
    # These two files only: the others import papermill and Jupyter, which a bare CUDA image may lack.
    run_logged("CUDA tests", [sys.executable, "-m", "pytest", "tests/test_step.py", "tests/test_losses.py", "-m", "cuda",
                              "-q", "-rs"], 150, lines)
    # 6,000 images: 46 full batches and a partial one, so both graphs are captured and timed.
    run_logged("throughput (bf16, eager and graphs, K curve)",
               [sys.executable, "benchmarks/throughput.py", "--data-root", args.data_root, "--bf16", "--images", "6000",
                "--epochs", "1", "--workers", "4", "--compile", "off", "graphs", "--save-curve"], 270, lines)
    real_run(args.data_root, args.epochs, out, lines)
    (out / "report.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
