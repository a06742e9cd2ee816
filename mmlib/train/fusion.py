"""Fusing runs into one model: which runs can (``fusion_key``), and how many on a GPU (sweep --fuse auto).

Runs fuse when they share every parameter outside FUSABLE, their head and SSP pre-training, and
whether they use SAM. benchmarks/throughput.py --save-curve measures images/s and peak reserved memory
for K = 1, 2, 4, ... fused runs on one GPU and saves the curve here; ``auto_fuse`` takes the fastest K
that fits the GPUs' free memory. Nothing here imports Jupyter or, at import, torch.
"""

import json
from pathlib import Path

from mmlib import files
from mmlib.choices import get_method
from mmlib.config import RunConfig
from mmlib.data.cache import cache_dir

# Parameters that may differ between runs trained as one fused model.
FUSABLE = {
    "method", "seed", "data_seed", "s", "max_m", "margin", "delta_neg", "beta", "mm_variant", "tau",
    "focal_gamma", "cb_beta", "sam_rho", "quiet", "tensorboard",
}

FUSE_CURVE = "fuse_curve.json"  # in mmlib.data.cache.cache_dir(), written by benchmarks/throughput.py --save-curve
FUSE_MEMORY_SHARE = 0.8  # of a GPU's free memory, what --fuse auto lets a job's measured peak take


def save_fuse_curve(device_name: str, settings: dict, points: list[dict]) -> Path:
    """The benchmark's K curve on this GPU: points of {"runs", "images_per_second", "peak_mib"}."""
    path = cache_dir() / FUSE_CURVE
    files.write_json(path, {"device_name": device_name, "settings": settings, "points": points})
    return path


def auto_fuse(gpus: list[int] | None = None) -> int:
    """--fuse auto: 1 on the CPU; on CUDA, the K of the measured curve with the most images/s whose peak
    memory fits in FUSE_MEMORY_SHARE of the free memory of every GPU the sweep uses."""
    import torch

    if not torch.cuda.is_available():
        return 1
    gpus = gpus or [0]
    name = torch.cuda.get_device_name(gpus[0])
    path, curve = cache_dir() / FUSE_CURVE, saved_curve()
    remedy = "run python benchmarks/throughput.py --save-curve on this GPU once, or give --fuse K"
    if curve is None:
        raise ValueError(f"--fuse auto needs the K curve measured on this GPU ({name}), and {path} does not exist: "
                         f"{remedy}")
    if curve["device_name"] != name:
        raise ValueError(f"--fuse auto: {path} was measured on {curve['device_name']}, this GPU is {name}: {remedy}")
    return fuse_from_curve(curve["points"], min(torch.cuda.mem_get_info(g)[0] for g in gpus))


def saved_curve() -> dict | None:
    """The K curve benchmarks/throughput.py --save-curve saved (its GPU's name, its points), or None."""
    path = cache_dir() / FUSE_CURVE
    return files.read_json(path) if path.exists() else None


def curve_here() -> dict[int, float] | None:
    """{K: images/s} of the curve measured on this machine's GPU, None without a GPU or such a curve."""
    curve = saved_curve()
    if curve is None:  # before importing torch: planning without a curve stays torch-free
        return None
    import torch

    if not torch.cuda.is_available() or curve["device_name"] != torch.cuda.get_device_name(0):
        return None
    return {p["runs"]: p["images_per_second"] for p in curve["points"]}


def fuse_from_curve(points: list[dict], free_bytes: int) -> int:
    """The K of the curve with the most images/s among those whose peak fits FUSE_MEMORY_SHARE of free_bytes
    (else 1)."""
    fits = [p for p in points if p["peak_mib"] * 2**20 <= FUSE_MEMORY_SHARE * free_bytes]
    return max(fits, key=lambda p: p["images_per_second"])["runs"] if fits else 1


def fusion_key(config: RunConfig) -> tuple:
    """What runs must share to train as one fused model (SAM runs fuse with SAM runs of any rho only)."""
    resolved = config.resolve()
    method = get_method(config.method)
    shared = {k: v for k, v in resolved.to_dict().items() if k not in FUSABLE}
    return (json.dumps(shared, sort_keys=True), method.head, method.ssp, resolved.sam_rho > 0)
