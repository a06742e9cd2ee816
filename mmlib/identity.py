"""A run's identity is its configuration: which parameters decide what a run computes, and which do not.

Runs are compared by their resolved configurations (RunConfig.resolve().to_dict(), as config.json
and the checkpoint record them), leaving out the parameters that change how or where, not what, a
run computes. Three users share these rules: the trainer (may a run resume with these parameters?),
a sweep's plan (is the finished or interrupted run in a folder the run planned there?) and a table's
cells (mmlib.cells: which finished runs are a cell's seeds; mmlib.results files the others apart).
"""

from mmlib.config import RESUMABLE_CHANGES, RunConfig

# How or where a run computes, not what: they may change on resume and never make two runs differ.
INCIDENTAL = RESUMABLE_CHANGES | {"data_root", "download"}
# Free among a table cell's seeds, each shown in the table's notes ("bf16: 3 of 3 seeds"): speed options
# whose results agree with the plain path's within rounding (tests check each against it).
SPEED = {"bf16", "compile", "channels_last", "deterministic"}
# What tells a cell's seeds apart.
SEEDS = {"seed", "data_seed"}


def differences(recorded: dict, planned: dict, free=INCIDENTAL) -> list[tuple[str, object, object]]:
    """(name, recorded value, planned value) of every parameter outside ``free`` in which two resolved
    configurations differ, in the order of RunConfig's fields."""
    names = RunConfig.names() + sorted((set(recorded) | set(planned)) - set(RunConfig.names()))
    return [(k, recorded.get(k), planned.get(k)) for k in names
            if k not in free and recorded.get(k) != planned.get(k)]


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
