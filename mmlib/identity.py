"""A run's identity is its configuration: which parameters decide what a run computes, and which do not.

Runs are compared by their resolved configurations (RunConfig.resolve().to_dict(), as config.json
and the checkpoint record them), leaving out the parameters that change how or where, not what, a
run computes. Three users share these rules: the trainer (may a run resume with these parameters?),
a sweep's plan (is the finished or interrupted run in a folder the run planned there?) and a table's
cells: a cell's seeds are the runs of its protocol configuration (``departures`` finds none), whatever
their seed, incidental and speed parameters; anything else is another experiment, which mmlib.cells
leaves out of the cell and mmlib.results files apart.
"""

import dataclasses

from mmlib import paper
from mmlib.config import RESUMABLE_CHANGES, RunConfig

# How or where a run computes, not what: they may change on resume and never make two runs differ.
INCIDENTAL = RESUMABLE_CHANGES | {"data_root", "download"}
# Free among a table cell's seeds, each shown in the table's notes ("bf16: 3 of 3 seeds"): speed options
# whose results agree with the plain path's within rounding (tests check each against it).
SPEED = {"bf16", "compile", "channels_last", "deterministic"}
# A schedule's length and the milestones it implies: runs departing only here are a shortened protocol.
SCHEDULE = {"epochs", "warmup_epochs", "lr_milestones", "switch_epoch", "ssp_epochs"}


def differences(recorded: dict, planned: dict, free=INCIDENTAL) -> list[tuple[str, object, object]]:
    """(name, recorded value, planned value) of every parameter outside ``free`` in which two resolved
    configurations differ, in the order of RunConfig's fields. A parameter a record lacks (written by an
    mmlib older than the parameter, e.g. sam_rho) counts as its default, which keeps the old behaviour."""
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig) if f.default is not dataclasses.MISSING}
    names = RunConfig.names() + sorted((set(recorded) | set(planned)) - set(RunConfig.names()))
    found = [(k, recorded.get(k, defaults.get(k)), planned.get(k, defaults.get(k))) for k in names if k not in free]
    return [(k, old, new) for k, old, new in found if old != new]


def describe(found: list[tuple[str, object, object]]) -> str:
    """"epochs: 30 -> 200, lr: 0.5 -> 0.1": what differences() found, recorded value first."""
    return ", ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in found)


def resolved(params: dict) -> dict:
    """The resolved configuration of run parameters, without checking that their data exists.

    Used to compare a record with what its cell or plan expects, on any machine: the data root and
    the download flag are incidental, so a root that exists here (".") stands in for them while the
    parameters are validated and resolved.
    """
    return RunConfig.from_dict({**params, "data_root": ".", "download": False}).resolve().to_dict()


def protocol(cell: paper.Cell, seed: int, overrides: dict | None = None) -> dict:
    """The resolved configuration a cell's run of ``seed`` trains with under its table's protocol
    (paper.PROTOCOLS), or under ``overrides`` of the cell's parameters where given (e.g. {"epochs": 30})."""
    extra = paper.PROTOCOLS.get(cell.table, {}) if overrides is None else overrides
    return resolved(cell.run_params(**extra, seed=seed))


def departures(cell: paper.Cell, recorded: dict, seed: int, overrides: dict | None = None) -> list[tuple[str, object, object]]:
    """How a run's recorded configuration departs from its cell's protocol for ``seed`` (the seed its folder names):
    differences() of the two, incidental and speed parameters free; none for that seed of the cell."""
    return differences(recorded, protocol(cell, seed, overrides), free=INCIDENTAL | SPEED)
