"""Sweeps: every (cell, seed) of a table planned into jobs of notebooks/train.ipynb, then run by an executor.

Each run lands in <out>/<table>/<setting>/<run name>/seed<k>/ with the executed notebook beside its
results (the notebook is the provenance). Finished runs are skipped, interrupted ones resume from
their checkpoints (the trainer does that), a failed run does not stop the others. Runs of one
setting that can train as one fused model (mmlib.train.fusion.fusion_key) are grouped, up to ``fuse``
runs a job. The executor (mmlib.sweep.local_executor.LocalExecutor: worker threads, one per GPU; or
mmlib.sweep.ray_executor.RayExecutor: Ray tasks) runs the jobs.
"""

import itertools
from dataclasses import dataclass
from pathlib import Path

from mmlib import files, paper, stopping
from mmlib.config import RunConfig, describe, differences
from mmlib.data import sources
from mmlib.errors import RunDirBusyError, did_you_mean
from mmlib.sweep import jobs, timing
from mmlib.sweep.local_executor import LocalExecutor
from mmlib.train import run_folder
from mmlib.train.fusion import fusion_key

# The README's main job: a few minutes offline on a CPU, into a folder of its own.
QUICK_PRESET = {"table": "quick", "seeds": [0, 1], "fuse": 2, "overrides": paper.PROTOCOLS["quick"]}
# Run parameters a sweep sets itself, and the option that sets them.
SWEEP_OWNED = {"seed": "--seeds", "data_root": "--data-root", "run_dir": "--out"}
# Where the table's cells set a parameter, the option that chooses among them.
CELL_OPTIONS = {"method": "--methods", "dataset": "--settings", "imb_type": "--settings", "ratio": "--settings",
                "mm_variant": "--mm-variants", "s": "--mm-scale (MM cells)"}


def parse_data_roots(values: list[str] | None) -> dict[str | None, str]:
    """``PATH`` (for every dataset), ``cifar10=PATH cifar100=PATH``, or a setting's own dataset file
    (``cifar10-exp-100=FILE.npz``) -> {setting, dataset or None: path}; a setting's entry wins over its dataset's."""
    roots = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if sep and (name in ("cifar10", "cifar100") or name in paper.SETTINGS):
            roots[name] = path
        else:
            roots[None] = value
    return roots


@dataclass
class Plan:
    """What a sweep will do: its jobs, in the order they run, and the runs it leaves as they are or must ask about."""

    jobs: list[jobs.Job]
    finished: list[Path]  # finished runs of the planned configuration: skipped
    failed: list[tuple[str, Path, str]]  # (label, run, why) failed runs (FAILED marker): in jobs only if retried
    changed: list[tuple[str, Path, str]]  # (label, run, differences) runs of another configuration in a planned folder


def plan(table: str, out: str | Path, seeds=(0,), settings=None, methods=None, mm_variants=("equations",),
         mm_scale=None, data_roots: dict | None = None, overrides: dict | None = None, fuse: int = 1,
         retry_failed: bool = False) -> Plan:
    """Every (cell, seed) of the table as jobs, seed-major: seed 0 of every cell before seed 1, fused groups
    filled within the lowest seed first, so that an interrupted sweep leaves whole tables of fewer seeds.

    Every config is validated here. A run folder already holding a run (finished, or interrupted with a
    checkpoint) is compared with the planned configuration (mmlib.config.differences): a run of other parameters
    goes to ``changed`` (and into a job, to train anew once the sweep has moved it aside), one of the same
    is skipped when finished and resumed otherwise. A failed run is left alone unless ``retry_failed`` (then
it resumes from its last good checkpoint).
    """
    if fuse < 1:
        raise ValueError(f"fuse must be >= 1, got {fuse}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct integers, got {list(seeds)}")
    data_roots = {k: str(Path(v).resolve()) for k, v in (data_roots or {}).items()}
    out = Path(out).resolve()
    cells = paper.cells(table, settings, methods, mm_variants, mm_scale)
    check_overrides(overrides or {}, cells)
    result = Plan([], [], [], [])
    pending = []
    for seed, cell in itertools.product(seeds, cells):
        run_dir = cell.path(out) / f"seed{seed}"
        root = data_roots.get(cell.setting.name, data_roots.get(cell.setting.dataset, data_roots.get(None)))
        params = cell.run_params(**{"quiet": True, **(overrides or {})}, seed=seed,
                                 **({"data_root": root} if root else {}))
        config = RunConfig.from_dict(params)
        sources.check(config)
        label = f"{table} {cell.setting.name} {cell.run_name} seed{seed}"
        held = run_folder.state(run_dir)
        # an unusable folder (epoch -1) trains alone, so that its job fails with the reason and holds back no other
        epoch = -1 if held.epoch is None else held.epoch
        changed = held.config is not None and differences(held.config, config.resolve().to_dict())
        if changed:
            result.changed.append((label, run_dir, describe(changed)))
            epoch = 0
        elif held.finished:
            result.finished.append(run_dir)
            continue
        elif held.diverged is not None:
            result.failed.append((label, run_dir, held.diverged["reason"]))
            if not retry_failed:
                continue
        # every parameter, defaults included: the notebook's own defaults (a one-minute digits run) never apply
        pending.append((fusion_key(config), epoch, label, run_dir, config.to_dict()))
    groups = {}  # (fusion key, epoch) -> runs, in seed-major order
    for run in pending:
        groups.setdefault(run[:2], []).append(run)
    chunks = [group[start:start + size] for (_, epoch), group in groups.items()
              for size in [fuse if epoch >= 0 else 1] for start in range(0, len(group), size)]
    order = {run[3]: i for i, run in enumerate(pending)}  # a job runs when its first run's turn comes
    for chunk in sorted(chunks, key=lambda chunk: order[chunk[0][3]]):
        result.jobs.append(jobs.Job([c[2] for c in chunk], [c[3] for c in chunk], [c[4] for c in chunk]))
    return result


def check_overrides(overrides: dict, cells: list[paper.Cell]) -> None:
    """Refuse --set keys that are no run parameter, that the sweep sets itself, or that the table's cells set."""
    for key in overrides:
        if key in SWEEP_OWNED:
            raise ValueError(f"--set {key}: the sweep sets {key} for every run; use {SWEEP_OWNED[key]}")
        if key not in RunConfig.names():
            raise ValueError(f"--set {key}: unknown parameter{did_you_mean(key, RunConfig.names())}; "
                             f"python -m mmlib train --help lists the run parameters")
        if any(key in cell.run_params() for cell in cells):
            option = f"; choose them with {CELL_OPTIONS[key]}" if key in CELL_OPTIONS else ""
            raise ValueError(f"--set {key}: the table's cells set {key} themselves{option}")


def sweep(table: str, out: str | Path = "runs", seeds=(0,), settings=None, methods=None, mm_variants=("equations",),
          mm_scale=None, data_roots=None, overrides=None, fuse: int = 1, executor=None, dry_run=False,
          rerun_changed: bool = False, retry_failed: bool = False, deadline: float | None = None,
          log=print) -> jobs.Outcome:
    """Plan, then run a table's cells with ``executor`` (default: mmlib.sweep.local_executor.LocalExecutor, one worker);
    returns what did not finish (jobs.Outcome): failed runs (now, or before and not retried), and runs stopped
    early or not started (a time limit, a signal), which the same call resumes.

    Runs of other parameters in the planned folders stop the sweep before anything trains, unless
    ``rerun_changed``: each is then moved aside (<run>.replaced-<UTC time>, never deleted) and trained anew.
    ``deadline`` (time.time(), --time-limit after the process started): every job stops, checkpoint written,
    before it, and no job starts that could not reach its first checkpoint in the time left (mmlib.sweep.timing).
    The dry run prints the plan's estimated wall time from what was measured.
    """
    planned = plan(table, out, seeds, settings, methods, mm_variants, mm_scale, data_roots, overrides, fuse,
                   retry_failed)
    if planned.changed and not rerun_changed:
        raise ValueError("\n".join(
            [f"{len(planned.changed)} planned runs were trained with other parameters (recorded -> planned):"]
            + [f"  {run_dir}: {differences}" for _, run_dir, differences in planned.changed]
            + ["give another --out, or --rerun-changed to move them aside (<run>.replaced-<UTC time>) and train "
               "them anew"]))
    runs = sum(len(j.run_dirs) for j in planned.jobs)
    log(f"{table}: {runs} runs to do in {len(planned.jobs)} notebooks, {len(planned.finished)} finished runs skipped")
    for label, run_dir, why in planned.failed:
        log(f"{label}: failed before ({why}); " + ("retried from its last checkpoint" if retry_failed else
                                                   "not retried (--retry-failed retries it)"))
    times = timing.EpochTimes(out) if dry_run or deadline is not None else None
    if dry_run:
        for job in planned.jobs:
            log(("fused: " if len(job.labels) > 1 else "") + " | ".join(job.labels))
        log(estimate(planned.jobs, times, getattr(executor, "workers", 1)))
        return jobs.Outcome()
    busy = [held.why() for _, run_dir, _ in planned.changed for held in [run_folder.state(run_dir)] if held.holder]
    if busy:
        raise RunDirBusyError("; ".join(busy) + ": --rerun-changed moves no run another process trains; wait for it "
                              "to end, or give another --out")
    for _, run_dir, _ in planned.changed:
        with run_folder.locked(run_dir):  # held while it moves: no trainer starts in it meanwhile
            aside = files.set_aside(run_dir, "replaced")
        log(f"moved {run_dir} aside to {aside}: it was trained with other parameters")
    for _, run_dir, _ in planned.failed if retry_failed else ():
        files.set_aside(run_dir / run_folder.FAILED, "retried")
    outcome = (executor or LocalExecutor()).execute(planned.jobs, log=log, deadline=deadline, times=times)
    outcome.failed += [] if retry_failed else [(label, run_folder.state(run_dir).evidence)
                                               for label, run_dir, _ in planned.failed]
    for line in summary(outcome):
        log(line)
    return outcome


def estimate(planned: list[jobs.Job], times: timing.EpochTimes, workers: int) -> str:
    """One line: the plan's estimated wall time over ``workers``, from the epoch times measured so far."""
    seconds = [times.job_seconds(job) for job in planned]
    known = [s for s in seconds if s is not None]
    if not planned:
        return "estimated wall time: nothing to do"
    if not known:
        return ("estimated wall time: unknown (no epoch measured yet for these jobs: on a GPU run "
                "benchmarks/throughput.py --save-curve once, or run a job first)")
    unknown = len(seconds) - len(known)
    return (f"estimated wall time: {timing.describe(sum(known) / workers)} for {len(known)} of {len(planned)} jobs "
            f"on {workers} worker{'s' if workers > 1 else ''}, from the epoch times measured so far"
            + (f"; {unknown} jobs of no measured rate not counted" if unknown else ""))


def summary(outcome: jobs.Outcome) -> list[str]:
    """What is left to do after a sweep, and why: failed runs with their reasons, runs to resume."""
    lines = []
    if outcome.interrupted:
        lines.append(f"stopped early: {len(outcome.stopped)} runs stopped with their checkpoints written and "
                     f"{len(outcome.not_started)} not started; the same command resumes them")
    for labels, seconds in outcome.too_long:
        lines.append(f"not started: {' | '.join(labels)}: its first checkpoint needs about {timing.describe(seconds)} "
                     f"(measured, times {stopping.MARGIN} for safety), more than the whole --time-limit; "
                     "give a longer one")
    if outcome.failed:
        lines.append(f"{len(outcome.failed)} runs failed:")
        lines += [f"  {label}: {run_folder.state(where.parent).why()} (see {where})" for label, where in outcome.failed]
    return lines
