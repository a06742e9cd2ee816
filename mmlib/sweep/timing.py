"""How long a sweep's jobs take, from what was measured: for --time-limit and the dry run's estimate.

A job's epoch (its K fused runs, with their evaluation) is taken to last as long as the last one measured
for it: its own runs' last checkpointed epoch (checkpoint.json), else the median epoch of finished runs
of the same setting, fusion and step (SAM or plain) in the sweep's folder (metrics.json), else, on a
GPU, the K curve that benchmarks/throughput.py --save-curve measured on it (mmlib.train.fusion). Each job's process
adds STARTUP seconds before its first epoch. Nothing measured, a job's time is unknown (None).
"""

import contextlib
import statistics
from pathlib import Path

from mmlib import files
from mmlib.config import RunConfig
from mmlib.data import imbalance, sources
from mmlib.errors import CorruptFileError
from mmlib.train import fusion, run_folder

STARTUP = 30.0  # seconds before a job's first epoch: process start, imports, data on the device, graph capture


class EpochTimes:
    """Measured epoch times of the runs under a sweep's folder, by (setting, fused runs, SAM or not)."""

    def __init__(self, out: Path):
        self.by_setting: dict[tuple[str, int], list[float]] = {}
        for metrics in Path(out).glob("*/*/*/seed*/" + run_folder.METRICS):
            if run_folder.SEED_FOLDER.fullmatch(metrics.parent.name):  # not a run set aside (seed0.replaced-...)
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError, CorruptFileError):
                    self.learn(metrics.parent)
        self.curve = fusion.curve_here()

    def learn(self, run_dir: Path) -> None:
        """Take a finished run's median epoch time (its setting's folder name, its fused runs)."""
        results = files.read_json(Path(run_dir) / run_folder.METRICS)
        seconds = [entry["seconds"] for entry in results["history"]]
        sam = _sam(files.read_json(Path(run_dir) / run_folder.CONFIG)["config"])
        key = (Path(run_dir).parent.parent.name, results.get("fused_runs") or 1, sam)
        self.by_setting.setdefault(key, []).append(statistics.median(seconds))

    def learn_job(self, job) -> None:
        """Take the epoch times of a job's runs that finished."""
        for run_dir in job.run_dirs:
            if run_folder.is_finished(run_dir):
                self.learn(run_dir)

    def epoch_seconds(self, job) -> float | None:
        """Seconds one epoch of the job takes, or None if nothing measured tells."""
        for run_dir in job.run_dirs:
            with contextlib.suppress(OSError, CorruptFileError):
                info = files.read_json(run_dir / run_folder.CHECKPOINT_INFO)
                if info.get("seconds"):
                    return info["seconds"]
        sam = _sam(job.params[0])
        measured = self.by_setting.get((job.run_dirs[0].parent.parent.name, len(job.run_dirs), sam))
        if measured:
            return statistics.median(measured)
        rate = self.curve.get(len(job.run_dirs)) if self.curve else None
        # the curve is the plain step's; SAM's two passes take about twice as long (1.98-2.24x measured on a CPU)
        return None if rate is None else _train_images(job.params[0]) * len(job.run_dirs) / rate * (2 if sam else 1)

    def job_seconds(self, job) -> float | None:
        """Seconds the whole job takes (its epochs left, from its checkpoint), or None."""
        epoch = self.epoch_seconds(job)
        if epoch is None:
            return None
        with contextlib.suppress(OSError, CorruptFileError):
            done = min((run_folder.checkpoint_info(d) or {"epoch": 0})["epoch"] for d in job.run_dirs)
            return STARTUP + (_epochs(job.params[0]) - done) * epoch
        return STARTUP + _epochs(job.params[0]) * epoch

    def first_checkpoint_seconds(self, job) -> float | None:
        """Seconds until the job's first checkpoint (the earliest it can stop at having saved anything), or None."""
        epoch = self.epoch_seconds(job)
        return None if epoch is None else STARTUP + epoch


def _sam(params: dict) -> bool:
    """Whether a run takes SAM's two passes a step (its epochs are timed apart from plain runs')."""
    return (params.get("sam_rho") or 0.0) > 0


def _epochs(params: dict) -> int:
    return RunConfig.from_dict(params).epochs


def _train_images(params: dict) -> int:
    """The training set's size of a run's setting."""
    n_max, classes = sources.dataset_size(params["dataset"])
    return sum(imbalance.class_counts(n_max, classes, params["imb_type"], params["ratio"]))


def describe(seconds: float) -> str:
    """'2 h 05 min', '14 min 30 s', '45 s'."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"
