"""One run's parameters: defaults, help, validation. The CLI and the notebooks share this.

Defaults are the LDAM-DRW CIFAR protocol (ResNet-32, SGD 0.9 / 2e-4, batch 128, lr 0.1 with 5
warm-up epochs, x0.01 at epochs 160 and 180, re-balancing switch at 160, 200 epochs). Parameters
left at None are derived from the others by ``resolve`` (the schedule keeps its shape at any
length: ``default_schedule``).
"""

import argparse
import copy
import dataclasses
import importlib.util
import math
import re
from dataclasses import dataclass, field

from mmlib.choices import ARCHS, COMPILE_MODES, DATASETS, IMBALANCE_TYPES, LOSSES, METHODS, MM_VARIANTS, get_method
from mmlib.errors import did_you_mean

# Which parameters decide what a run computes (a run's identity): the trainer (may a run resume with these?), a
# sweep's plan (is the run in a folder the one planned there?) and a table's cells (mmlib.paper.departures) compare
# resolved configurations (RunConfig.resolve().to_dict(), as config.json and the checkpoint record them) by them.
# How or where a run computes, not what: these may change on resume and never make two runs differ.
RESUMABLE_CHANGES = {
    "quiet", "tensorboard", "device", "compile", "eval_batch_size", "channels_last", "deterministic",
    "checkpoint_every",
}
INCIDENTAL = RESUMABLE_CHANGES | {"data_root", "download"}
# Free among a table cell's seeds, each shown in the table's notes ("bf16: 3 of 3 seeds"): speed options
# whose results agree with the plain path's within rounding (tests check each against it).
SPEED = {"bf16", "compile", "channels_last", "deterministic"}
# A schedule's length and the milestones it implies: runs departing only here are a shortened protocol.
SCHEDULE = {"epochs", "warmup_epochs", "lr_milestones", "switch_epoch", "ssp_epochs"}


def _param(default, help, choices=None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class RunConfig:
    # what to train
    method: str = _param("mm-drw", "method of Table 1", tuple(METHODS))
    dataset: str = _param("cifar10", "cifar10, cifar100, or digits (offline, ships with scikit-learn)", DATASETS)
    imb_type: str = _param("exp", "imbalance: exp (long-tailed), step, balanced", IMBALANCE_TYPES)
    ratio: float = _param(100.0, "imbalance ratio n_max / n_min, at least 1 (1 for balanced)")
    data_root: str | None = _param(None, "folder holding CIFAR (pickle layout, or train/ and test/ image "
                                             "folders) or a dataset file (.npz) written by export-data")
    download: bool = _param(False, "download CIFAR into data_root with torchvision")
    rand_number: int = _param(0, "seed of the imbalanced subset's selection (LDAM-DRW's rand_number)")
    arch: str = _param("resnet32", "network", tuple(ARCHS))
    # schedule
    epochs: int = _param(200, "training epochs")
    batch_size: int = _param(128, "batch size")
    lr: float = _param(0.1, "base learning rate")
    momentum: float = _param(0.9, "SGD momentum")
    weight_decay: float = _param(2e-4, "weight decay, on all parameters")
    sam_rho: float = _param(0.0, "SAM's radius rho (Foret et al. 2021; with DRW as Rangwani et al. 2022): a "
                                 "second pass a step; 0: plain SGD")
    warmup_epochs: int | None = _param(None, "linear warm-up epochs (default: 5; a tenth of a shorter run, at "
                                                 "least 2; none under 5 epochs)")
    lr_milestones: list[int] | None = _param(None, "epochs where the lr is multiplied by lr_decay (default: 0.8 "
                                                      "and 0.9 of the run, each phase at least one epoch)")
    lr_decay: float = _param(0.01, "lr factor at each milestone")
    switch_epoch: int | None = _param(None, "epoch where DRW / DRS switch on (default: the first milestone)")
    # losses
    s: float | None = _param(None, "logit scale of the margin losses (default: 30 for LDAM, hinge and M-DRW; 10 "
                                            "for MM, as the paper states)")
    max_m: float = _param(0.5, "LDAM's largest margin (that of the rarest class)")
    margin: float = _param(0.5, "uniform margin of HG-DRS and M-DRW (unpublished; LDAM's largest margin by default)")
    delta_neg: float = _param(0.6, "MM's delta^- (Eq. 3; default: Table 2's best for CIFAR-10 long-tailed 100)")
    beta: float = _param(1.5, "MM's beta: delta^+ is beta times delta^- (Eq. 5)")
    mm_variant: str = _param("equations", "MM as the paper's equations, as the released code, or with one of its "
                                        "two departures alone (first-label, mask-zero)", tuple(MM_VARIANTS))
    tau: float = _param(1.0, "logit adjustment's tau: la / la-drw train on z + tau log(prior), erm-posthoc "
                             "predicts with z - tau log(prior)")
    focal_gamma: float = _param(1.0, "focal loss gamma (1, as the released LDAM-DRW code)")
    cb_beta: float = _param(0.9999, "class-balanced weights' beta (Cui et al.; LDAM-DRW's 0.9999; 1 gives "
                                    "inverse class frequency, Algorithm 1's n_y^-1)")
    ssp_epochs: int | None = _param(None, "rotation pre-training epochs of ldam-drw-ssp (default: the run's epochs)")
    ssp_seed: int = _param(0, "seed of ldam-drw-ssp's pre-training (runs of any seed share one pre-trained backbone)")
    # randomness and hardware
    seed: int = _param(0, "seed of the model's initialisation")
    data_seed: int | None = _param(None, "seed of the data order and augmentation (default: seed)")
    device: str = _param("auto", "auto (CUDA when present), cpu, cuda, cuda:N")
    bf16: bool = _param(False, "bf16 autocast (the classifier head and the losses stay in float32)")
    channels_last: bool = _param(True, "channels-last memory format (faster convolutions on CPU and with bf16 on GPU)")
    deterministic: bool = _param(False, "deterministic algorithms only")
    compile: str = _param("auto", "the step: auto (graphs on CUDA, off on the CPU), off (eager), graphs (whole "
                                   "step as CUDA graphs), or a torch.compile mode",
                           COMPILE_MODES)
    # evaluation and output
    eval_every: int = _param(1, "evaluate on the test set every this many epochs (and at the end)")
    eval_batch_size: int | None = _param(None, "evaluation batch size (default: 1024 on CUDA, 128 on the CPU, "
                                               "where a smaller batch's activations stay in the caches)")
    checkpoint_every: int = _param(10, "write the checkpoint every this many epochs and after the last; a killed "
                                       "run redoes at most this many")
    quiet: bool = _param(False, "no progress bar")
    tensorboard: bool = _param(False, "write TensorBoard scalars into the run directory")

    def __post_init__(self):
        validate(self)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, params: dict) -> "RunConfig":
        """From a dict (e.g. a notebook's parameters); unknown keys are an error, not ignored."""
        if not isinstance(params, dict):
            raise ValueError(f"run parameters must be a dict of name: value, got {type(params).__name__}")
        unknown = sorted(set(params) - set(cls.names()))
        if unknown:
            raise ValueError(f"unknown parameter(s) {', '.join(unknown)}{did_you_mean(unknown[0], cls.names())}; "
                             f"valid: {', '.join(cls.names())}")
        return cls(**params)

    @classmethod
    def from_namespace(cls, namespace: dict) -> "RunConfig":
        """From a notebook's variables (its parameters cell, as papermill injected them)."""
        missing = [name for name in cls.names() if name not in namespace]
        if missing:
            raise ValueError(f"the notebook defines no parameter(s) {', '.join(missing)}")
        return cls(**{name: namespace[name] for name in cls.names()})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def resolve(self) -> "RunConfig":
        """This configuration with every derived parameter filled in (itself once resolved). Not validated again:
        each derived value follows from values validated when the configuration was made."""
        derived = (self.warmup_epochs, self.lr_milestones, self.switch_epoch, self.data_seed, self.ssp_epochs)
        scale = None if self.s is not None else LOSSES[get_method(self.method).loss].scale
        if None not in derived and scale is None:  # s given, or a loss without a scale
            return self
        warmup, milestones = _schedule(self)
        resolved = copy.copy(self)
        resolved.warmup_epochs, resolved.lr_milestones = warmup, milestones
        if self.switch_epoch is None:
            resolved.switch_epoch = milestones[0] if milestones else 0
        resolved.s = self.s if self.s is not None else scale
        resolved.data_seed = self.seed if self.data_seed is None else self.data_seed
        resolved.ssp_epochs = self.epochs if self.ssp_epochs is None else self.ssp_epochs
        return resolved

    def loss_params(self) -> dict:
        """The keyword arguments of mmlib.train.losses.build_loss for this run's method (resolved config)."""
        return {argument: getattr(self, name) for name, argument in LOSSES[get_method(self.method).loss].params.items()}


def eval_batch_size(config: RunConfig, device_type: str) -> int:
    """The evaluation batch size a run uses on a device: its own, or the faster default there (benchmarks/throughput.py
    measures both)."""
    return config.eval_batch_size or (1024 if device_type == "cuda" else 128)


def default_schedule(epochs: int) -> tuple[int, list[int]]:
    """(warm-up epochs, lr milestones) of a run of ``epochs``: the protocol's shape at any length.

    200 epochs give the protocol's 5 and [160, 180]. Otherwise the milestones sit at 0.8 and 0.9 of
    the run and the warm-up takes a tenth of it, from 2 to 5 epochs (a one-epoch warm-up would
    already run at the full lr), every phase keeping at least one epoch: warm-up, full lr, one decay,
    two decays need 5 epochs. Shorter runs drop the warm-up (3 and 4 epochs), then the second decay
    (2 epochs: full lr, then one decay), then both (1 epoch at the full lr; with no milestone the
    DRW / DRS switch defaults to epoch 0, so a one-epoch run of such a method re-balances it).
    """
    if epochs <= 2:
        return 0, list(range(1, epochs))
    second = min(9 * epochs // 10, epochs - 1)
    first = min(8 * epochs // 10, second - 1)
    return (0 if epochs < 5 else min(5, max(2, epochs // 10))), [first, second]


def _schedule(config: RunConfig) -> tuple[int, list[int]]:
    """The run's warm-up and milestones: those given, the default ones for the rest."""
    warmup, milestones = default_schedule(config.epochs)
    return (warmup if config.warmup_epochs is None else config.warmup_epochs,
            milestones if config.lr_milestones is None else list(config.lr_milestones))


def check_type(name: str, value, annotation, default=None) -> None:
    """``value`` must be of the type ``annotation`` names ("int", "float | None", "list[int] | None"; an int will
    do for a float). Papermill, YAML and dicts bypass argparse, so a run's parameters and a notebook's (against
    its ``default``'s type) are checked here whichever route they took."""
    like = "" if default is None else f" like its default {default!r}"
    if value is None:
        if "None" not in str(annotation):
            raise ValueError(f"{name} must not be None")
        return
    allowed = {list: (list, tuple), dict: (dict,), bool: (bool,), int: (int,), float: (int, float), str: (str,)}
    base = next((t for t in allowed if re.search(rf"\b{t.__name__}\b", str(annotation))), None)
    if base is None:  # a notebook default of another type (a tuple, say): not checked, as a default of None
        return

    def of_type(kind, item) -> bool:
        return isinstance(item, allowed[kind]) and (kind is bool or not isinstance(item, bool))

    if not of_type(base, value):
        raise ValueError(f"{name} must be {'a list' if base is list else f'of type {base.__name__}'}{like}, "
                         f"got {value!r}")
    element = re.search(r"list\[(\w+)\]", str(annotation))
    by_name = {kind.__name__: kind for kind in allowed}
    if base is list and element and not all(of_type(by_name[element.group(1)], item) for item in value):
        raise ValueError(f"{name} must be a list of {element.group(1)}{like}, got {value!r}")


def validate(config: RunConfig) -> None:
    """Raises one ValueError naming the first bad parameter; nothing is loaded or trained."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        check_type(f.name, value, f.type)
        if f.metadata["choices"] and value not in f.metadata["choices"]:
            raise ValueError(f"unknown {f.name} {value!r}; valid: {', '.join(f.metadata['choices'])}")

    def at_least(name, low, strict=False):
        value = getattr(config, name)
        if value is not None and (not math.isfinite(value) or value < low or (strict and value == low)):
            raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {value}")

    for name in ("epochs", "batch_size", "eval_every", "eval_batch_size", "ssp_epochs", "checkpoint_every"):
        at_least(name, 1)
    for name in ("lr", "s"):
        at_least(name, 0, strict=True)
    for name in ("weight_decay", "sam_rho", "max_m", "margin", "delta_neg", "beta", "tau", "focal_gamma",
                 "warmup_epochs"):
        at_least(name, 0)
    at_least("ratio", 1)
    if not 0 <= config.momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {config.momentum}")
    if not 0 < config.lr_decay <= 1:
        raise ValueError(f"lr_decay must be in (0, 1], got {config.lr_decay}")
    for name in ("seed", "data_seed", "ssp_seed", "rand_number"):  # numpy's RandomState takes 32-bit seeds
        value = getattr(config, name)
        if value is not None and not 0 <= value < 2**32:
            raise ValueError(f"{name} must be in [0, 2**32), got {value}")
    if not 0 <= config.cb_beta <= 1:
        raise ValueError(f"cb_beta must be in [0, 1], got {config.cb_beta}")
    if config.switch_epoch is not None and not 0 <= config.switch_epoch < config.epochs:
        raise ValueError(
            f"switch_epoch {config.switch_epoch} is beyond the run: it must be in [0, {config.epochs}) for "
            f"{config.epochs} epochs"
        )
    if config.lr_milestones is not None:
        if (list(config.lr_milestones) != sorted(config.lr_milestones)
                or not all(0 <= m <= config.epochs for m in config.lr_milestones)):
            raise ValueError(f"lr_milestones must be ascending epochs in [0, {config.epochs}], "
                             f"got {config.lr_milestones}")
        if not config.lr_milestones and config.switch_epoch is None:
            raise ValueError("lr_milestones is empty: give switch_epoch explicitly")
    if config.warmup_epochs is not None and config.warmup_epochs > config.epochs:
        raise ValueError(f"warmup_epochs {config.warmup_epochs} exceeds epochs {config.epochs}")
    warmup, milestones = _schedule(config)
    if milestones and warmup > milestones[0]:
        raise ValueError(f"warmup_epochs {warmup} runs past the first lr milestone {milestones[0]}: "
                         f"shorten the warm-up or move lr_milestones later")
    if config.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ValueError("tensorboard=True needs the tensorboard package: pip install tensorboard")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", config.device):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {config.device!r}")
    if config.compile == "graphs" and config.device == "cpu":
        raise ValueError("compile='graphs' needs a CUDA device, got device='cpu'; use compile='auto' or 'off'")


DATASET_FIELDS = ("dataset", "data_root", "imb_type", "ratio", "rand_number", "download")


def add_arguments(parser: argparse.ArgumentParser, names=None) -> None:
    """One --option per RunConfig field (or per field in names), with its default and help."""
    for f in dataclasses.fields(RunConfig):
        if names is not None and f.name not in names:
            continue
        flag = "--" + f.name.replace("_", "-")
        text = f.metadata["help"] + (f" (default: {f.default})" if f.default is not None else "")
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=f.metadata["help"])
        elif f.name == "lr_milestones":
            parser.add_argument(flag, type=int, nargs="*", default=None, help=text)
        else:
            kind = next(t for t in (int, float, str) if re.search(rf"\b{t.__name__}\b", str(f.type)))
            parser.add_argument(flag, type=kind, default=f.default, choices=f.metadata["choices"], help=text)


def from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(**{name: getattr(args, name) for name in RunConfig.names()})



def differences(recorded: dict, planned: dict, free=INCIDENTAL) -> list[tuple[str, object, object]]:
    """(name, recorded value, planned value) of every parameter outside ``free`` in which two resolved
    configurations differ, in the order of RunConfig's fields. A parameter a recorded configuration lacks (written by an
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

    Used to compare a run's recorded configuration with what its cell or plan expects, on any machine: the data root and
    the download flag are incidental, so a root that exists here (".") stands in for them while the
    parameters are validated and resolved.
    """
    return RunConfig.from_dict({**params, "data_root": ".", "download": False}).resolve().to_dict()
