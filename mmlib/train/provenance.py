"""What besides its parameters decides a run's numbers: versions, device, threads, commit, determinism.

``environment`` is recorded in each run's config.json beside its parameters. On the CPU, runs give the
same numbers only at the same thread count (torch's reductions sum in another order with more
threads): a Ray task gets one thread (one CPU), a local run all the cores; set OMP_NUM_THREADS to
compare. ``determinism`` and ``deterministic_cublas`` make deterministic=True hold on CUDA.
"""

import contextlib
import os
import platform
import subprocess
from pathlib import Path

import torch

import mmlib

CUBLAS_WORKSPACE_CONFIG = ":4096:8"  # one of the two settings that make cuBLAS deterministic (CUDA's docs)


def environment(device: torch.device) -> dict:
    """What besides the parameters determines a run's results: versions, device, commit."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(mmlib.__file__).parent, capture_output=True, text=True, timeout=10
        ).stdout.strip() or None
    except OSError:
        commit = None
    return {
        "mmlib_version": mmlib.__version__,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "python_version": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch_threads": torch.get_num_threads(),  # CPU results depend on it: reductions sum in another order
        "git_commit": commit,
    }


def deterministic_cublas(deterministic: bool, device: torch.device) -> None:
    """deterministic=True on CUDA: cuBLAS is deterministic only with CUBLAS_WORKSPACE_CONFIG set before its first
    use (torch refuses its matrix products otherwise). Set it while CUDA has not started, else refuse with the
    remedy."""
    if not deterministic or device.type != "cuda" or os.environ.get("CUBLAS_WORKSPACE_CONFIG"):
        return
    if torch.cuda.is_initialized():
        raise ValueError(f"deterministic=True on CUDA needs CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE_CONFIG} set "
                         f"before CUDA starts, and this process has started it: export CUBLAS_WORKSPACE_CONFIG="
                         f"{CUBLAS_WORKSPACE_CONFIG} and start it again (or train with deterministic=False)")
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE_CONFIG


@contextlib.contextmanager
def determinism(deterministic: bool, device: torch.device):
    """Deterministic algorithms (or cuDNN autotuning) for the run, restored afterwards. The switch is set only
    where it changes: setting it imports torch's compiler configuration, a second and more a process."""
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    if deterministic != before[0]:
        torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    try:
        yield
    finally:
        if deterministic != before[0]:
            torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]
