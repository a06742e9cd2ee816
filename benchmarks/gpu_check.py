"""The device check: one command, at most about 8 minutes on one GPU, from a dataset exported to one file.

  1. the CUDA tests (pytest -m cuda): the graph path against eager over 64 steps, fused against separate
     runs, every method's captured step checked against the eager step (fp32 and bf16), a faulty graph
     caught, deterministic runs, the losses on CUDA, a SAM step captured against the eager one;
  2. the throughput benchmark: the reference loop, then the graph and eager paths for K = 1 ... 32 fused
     runs (images/s, ratio to the reference, peak reserved memory; the curve saved for sweep --fuse auto);
  3. real data, bf16, the default step (graphs on CUDA, self-checked): one MM-DRW run alone, then LDAM-DRW
     and both MM-DRW variants (equations, released) fused, the protocol's schedule shape over --epochs;

then a report against the targets (printed, and written to <out>/report.txt beside each stage's full log).
It needs torch, numpy, pillow, pyyaml, tqdm, scikit-learn, torchvision and pytest, and neither Jupyter nor
an installed mmlib (it imports this checkout's).

    python -m mmlib export-data --dataset cifar10 --data-root PATH --imb-type exp --ratio 100 --out c10.npz
    python benchmarks/gpu_check.py --data-root c10.npz --out gpu_check
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # mmlib from this checkout, installed or not
# Seconds each stage may take: about 8 minutes in all.
TIME_LIMITS = {"tests": 150, "throughput": 230, "real": 100}
TARGETS = [("graphs", 1, 10.0), ("graphs", 8, 40.0), ("graphs", 16, 60.0)]  # (path, K, least ratio to the reference)
TARGET_SECONDS_200_EPOCHS = 60.0  # one CIFAR-10-LT-100 run of the protocol's 200 epochs, evaluation included
FUSED = [("ldam-drw", {}), ("mm-drw", {"mm_variant": "equations"}), ("mm-drw", {"mm_variant": "released"})]
ALONE = ("mm-drw", {"mm_variant": "equations"})


def run_logged(title: str, command: list[str], timeout: int, log: Path, lines: list[str]) -> bool:
    """Run a command with a time limit, its whole output into `log`; its status (and tail on failure) into the report."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        ok, status, output = done.returncode == 0, f"rc {done.returncode}", done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        output = "".join(o.decode(errors="replace") if isinstance(o, bytes) else o or "" for o in (expired.stdout, expired.stderr))
        ok, status = False, f"TIMED OUT after {timeout} s"
    log.write_text(output)
    added = [f"## {title}: {status}, {time.perf_counter() - start:.0f} s (full output: {log})"]
    if not ok:
        added += ["last lines:", *output.strip().splitlines()[-25:]]
    lines += added
    print("\n".join(added), flush=True)
    return ok


def cuda_tests_summary(junit: Path) -> list[str]:
    """The CUDA tests' outcomes, every failure's message, and each self-check's largest difference."""
    if not junit.exists():
        return ["(no test report was written)"]
    outcomes, failures, checks = {"passed": 0, "failed": 0, "skipped": 0}, [], []
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        failed = case.find("failure") if case.find("failure") is not None else case.find("error")
        outcome = "failed" if failed is not None else "skipped" if case.find("skipped") is not None else "passed"
        outcomes[outcome] += 1
        if failed is not None:
            failures.append(f"  FAILED {case.get('name')}: {(failed.get('message') or '').splitlines()[0][:300]}")
        for prop in case.iter("property"):
            if prop.get("name") == "largest_difference":
                checks.append(f"  {case.get('name').removeprefix('test_every_methods_captured_step_passes_its_check'):<28} "
                              f"{outcome:<7} largest difference {prop.get('value')}")
    lines = [f"{outcomes['passed']} passed, {outcomes['failed']} failed, {outcomes['skipped']} skipped", *failures]
    if checks:
        lines += ["self-check of every method's captured step against the eager step (full batch 128 and partial 102):", *checks]
    return lines


def throughput_summary(rows_file: Path) -> list[str]:
    """The K curve's rows, and the targets' ratios to the reference loop."""
    if not rows_file.exists():
        return ["(no throughput rows were written)"]
    measured = json.loads(rows_file.read_text())
    lines = [f"{measured['dataset']}; {measured['settings']}",
             f"(a) reference loop: {measured['reference_images_per_second']:,.0f} images/s",
             f"{'path':<7} {'K':>3} {'images/s':>10} {'x (a)':>7} {'peak reserved MiB':>18} {'200 epochs of the K runs, s':>28}"]
    for row in measured["rows"]:
        lines.append(f"{row['path']:<7} {row['runs']:>3} {row['images_per_second']:>10,.0f} {row['ratio']:>7.1f} "
                     f"{row['peak_mib']:>18,.0f} {row['seconds_200_epochs']:>28.1f}")
    by_key = {(row["path"], row["runs"]): row for row in measured["rows"]}
    for path, runs, least in TARGETS:
        row = by_key.get((path, runs))
        verdict = "not measured" if row is None else f"{row['ratio']:.1f}x: {'met' if row['ratio'] >= least else 'NOT met'}"
        lines.append(f"target: {path}, {runs} run(s) >= {least:g}x the reference loop -> {verdict}")
    return lines


def real_runs(data_root: str, epochs: int, out: str) -> None:
    """Stage 3 (run in its own process): one run alone, then three fused; a JSON line per group."""
    from mmlib.train.trainer import train_many

    shutil.rmtree(Path(out) / "runs", ignore_errors=True)  # an earlier check's finished runs would be skipped
    groups = {"alone": [ALONE], "fused": FUSED}
    for label, methods in groups.items():
        configs = [dict(method=method, dataset="cifar10", data_root=data_root, imb_type="exp", ratio=100.0,
                        epochs=epochs, bf16=True, quiet=True, **extra) for method, extra in methods]
        names = [c["method"] + (f"-{c['mm_variant']}" if "mm_variant" in c else "") for c in configs]
        start = time.perf_counter()
        results = train_many(configs, [Path(out) / "runs" / label / name for name in names])
        print(json.dumps({
            "group": label, "wall": time.perf_counter() - start, "epoch_seconds": [h["seconds"] for h in results[0]["history"]],
            "runs": [{"name": n, "final": r["final"]["error"], "best": r["best"]["error"], "step": r["step"]}
                     for n, r in zip(names, results)],
        }), flush=True)


def real_summary(log: Path) -> list[str]:
    """Per group: epoch times, the extrapolated 200-epoch time, final and best errors, the step path that trained."""
    lines = []
    for line in log.read_text().splitlines() if log.exists() else []:
        if not line.startswith("{"):
            continue
        group = json.loads(line)
        seconds = group["epoch_seconds"]  # an epoch with its evaluation; the first one captures the graphs
        median = sorted(seconds[1:])[len(seconds[1:]) // 2]
        total = seconds[0] + 199 * median
        lines.append(f"{group['group']}: {len(group['runs'])} run(s), {len(seconds)} epochs in {group['wall']:.0f} s "
                     f"wall (data loading included); an epoch with evaluation: first {seconds[0]:.2f} s, then median "
                     f"{median:.2f} s, so 200 epochs ~ {total:.0f} s for the {len(group['runs'])} run(s)")
        if group["group"] == "alone":
            verdict = "met" if total <= TARGET_SECONDS_200_EPOCHS else "NOT met"
            lines.append(f"target: a 200-epoch CIFAR-10-LT-100 run <= {TARGET_SECONDS_200_EPOCHS:g} s -> ~{total:.0f} s: {verdict}")
        for run in group["runs"]:
            step = "; ".join(f"{p['path']} ({p['reason']})" for p in run["step"])
            lines.append(f"  {run['name']:<20} final {run['final']:6.2f}%  best {run['best']:6.2f}%  step: {step}")
    return lines or ["(no run finished)"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="CIFAR-10-LT-100 exported with python -m mmlib export-data")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the real-data runs (default 20)")
    parser.add_argument("--out", default="gpu_check", help="folder for the report, the logs and the runs (default gpu_check)")
    args = parser.parse_args()
    if args.epochs < 10:
        parser.error("--epochs must be at least 10: the runs keep the protocol's warm-up, decays and DRW switch")
    data_root = Path(args.data_root).resolve()
    if not data_root.is_file():
        parser.error(f"--data-root {data_root} is no file: export one with python -m mmlib export-data (see above)")
    if not torch.cuda.is_available():
        sys.exit("error: the device check needs a CUDA GPU")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    lines = [f"# gpu_check on {torch.cuda.get_device_name()}: torch {torch.__version__}, CUDA {torch.version.cuda}, "
             f"cuDNN {torch.backends.cudnn.version()}; data {data_root}", ""]
    print(lines[0], flush=True)

    junit = out / "cuda_tests.xml"
    run_logged("CUDA tests", [sys.executable, "-m", "pytest", "tests/train/test_step.py", "tests/train/test_losses.py",
                              "tests/train/test_models.py", "tests/train/test_sam.py", "-m", "cuda", "-q", "-rs",
                              "-p", "no:cacheprovider", f"--junitxml={junit}", "-o", "junit_family=xunit1"],
               TIME_LIMITS["tests"], out / "cuda_tests.log", lines)
    lines += [*cuda_tests_summary(junit), ""]

    # 6,000 images: 46 full batches and a partial one, so both graphs are captured, checked and timed.
    rows = out / "throughput.json"
    run_logged("throughput (bf16, graphs then eager, K = 1 ... 32)",
               [sys.executable, "benchmarks/throughput.py", "--data-root", str(data_root), "--bf16", "--images", "6000",
                "--epochs", "1", "--workers", "4", "--compile", "graphs", "off", "--save-curve", "--json", str(rows)],
               TIME_LIMITS["throughput"], out / "throughput.log", lines)
    lines += [*throughput_summary(rows), ""]

    run_logged(f"real data (CIFAR-10-LT-100, bf16, {args.epochs} epochs)",
               [sys.executable, "-c", f"import gpu_check; gpu_check.real_runs({str(data_root)!r}, {args.epochs}, {str(out)!r})"],
               TIME_LIMITS["real"], out / "real_runs.log", lines)
    lines += [*real_summary(out / "real_runs.log"), "", f"gpu_check took {time.perf_counter() - start:.0f} s"]
    (out / "report.txt").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
