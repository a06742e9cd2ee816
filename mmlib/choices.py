"""The choices a run is made of, as data every layer reads: datasets and their imbalance, networks, step paths,
the methods of the paper's Table 1 and the losses they train with. Nothing here imports torch.

A method is a loss, a head, and when class-balanced re-weighting and re-sampling are on: "never", "always"
(from epoch 0: CB RW, CB RS) or "deferred" (from the switch epoch: DRW, DRS). A loss names its class in
mmlib.train.losses, which run parameters set which of its arguments, and its default logit scale s.
"""

from dataclasses import dataclass, field

DATASETS = ("cifar10", "cifar100", "digits")
IMBALANCE_TYPES = ("exp", "step", "balanced")
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)  # the protocol's constants, also used for CIFAR-100 and digits

ARCHS = {"resnet8": 8, "resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56, "resnet110": 110}  # name: depth
COMPILE_MODES = ("auto", "off", "graphs", "default", "reduce-overhead", "max-autotune")
"""The training step (mmlib.train.step): auto: graphs on CUDA, off on the CPU; graphs: the whole step captured as
CUDA graphs; default / reduce-overhead / max-autotune: torch.compile of the model inside the eager step."""

# MM as the paper's equations, as the released code behaves, or with one of its two departures alone:
# variant -> (z_y read from the column of the batch's first label, the target masked with 0 in the max).
MM_VARIANTS = {
    "equations": (False, False),
    "first-label": (True, False),
    "mask-zero": (False, True),
    "released": (True, True),
}


@dataclass(frozen=True)
class Loss:
    """A loss of mmlib.train.losses: its class, the arguments fixed for this name, the run parameters that set
    the others (run parameter -> argument), whether it takes the class counts, and its default scale s."""

    cls: str
    params: dict[str, str] = field(default_factory=dict)
    fixed: dict = field(default_factory=dict)
    counts: bool = False  # takes the training set's class counts (else only their number)
    scale: float | None = None  # the default of the run parameter s (None: no scale)


_MM = {"delta_neg": "delta_neg", "beta": "beta", "s": "s", "mm_variant": "variant"}
# s: LDAM's 30 as released; the hinge and uniform-margin rows' scale was never published (LDAM's); MM's 10 as the
# paper states.
LOSSES = {
    "ce": Loss("CrossEntropyLoss"),
    "focal": Loss("FocalLoss", {"focal_gamma": "gamma"}),
    "ldam": Loss("LDAMLoss", {"max_m": "max_m", "s": "s"}, counts=True, scale=30.0),
    "am": Loss("AdditiveMarginLoss", {"margin": "margin", "s": "s"}, scale=30.0),
    "hinge": Loss("HingeLoss", {"margin": "margin", "s": "s"}, {"ldam": False}, counts=True, scale=30.0),
    "ldam-hinge": Loss("HingeLoss", {"max_m": "margin", "s": "s"}, {"ldam": True}, counts=True, scale=30.0),
    "mm": Loss("MMLoss", _MM, {"ldam": False}, counts=True, scale=10.0),
    "mm-ldam": Loss("MMLoss", _MM, {"ldam": True}, counts=True, scale=10.0),
    "la": Loss("LogitAdjustedLoss", {"tau": "tau"}, counts=True),
}
SCHEDULES = ("never", "always", "deferred")


@dataclass(frozen=True)
class Method:
    name: str
    label: str  # as the paper's Table 1 writes it
    loss: str  # a key of LOSSES
    head: str  # "linear" (with bias) or "cosine" (normalised, logits in [-1, 1])
    reweight: str = "never"
    resample: str = "never"
    ssp: bool = False  # start from a rotation-prediction pre-trained backbone (Yang & Xu 2020)
    posthoc: bool = False  # predict with z - tau log(prior) (Menon et al. 2021), the plain z's errors beside

    @property
    def normed(self) -> bool:
        return self.head == "cosine"


METHODS = {
    m.name: m
    for m in [
        Method("erm", "ERM", "ce", "linear"),
        Method("focal", "Focal", "focal", "linear"),
        Method("ldam", "LDAM", "ldam", "cosine"),
        Method("mm", "MM (ours)", "mm", "cosine"),
        Method("cb-rs", "CB RS", "ce", "linear", resample="always"),
        Method("cb-rw", "CB RW", "ce", "linear", reweight="always"),
        Method("cb-focal", "CB Focal", "focal", "linear", reweight="always"),
        Method("hg-drs", "HG-DRS", "hinge", "cosine", resample="deferred"),
        Method("ldam-hg-drs", "LDAM-HG-DRS", "ldam-hinge", "cosine", resample="deferred"),
        Method("m-drw", "M-DRW", "am", "cosine", reweight="deferred"),
        Method("ldam-drw", "LDAM-DRW", "ldam", "cosine", reweight="deferred"),
        Method("ldam-drw-ssp", "LDAM-DRW + SSP", "ldam", "cosine", reweight="deferred", ssp=True),
        Method("mm-drw", "MM-DRW (ours)", "mm", "cosine", reweight="deferred"),
        Method("mm-ldam-drw", "MM-LDAM-DRW (ours)", "mm-ldam", "cosine", reweight="deferred"),
        Method("erm-drw", "ERM-DRW", "ce", "linear", reweight="deferred"),
        Method("erm-drs", "ERM-DRS", "ce", "linear", resample="deferred"),
        # Beyond the paper: logit adjustment (Menon et al., ICLR 2021).
        Method("la", "LA (logit-adjusted loss)", "la", "linear"),
        Method("la-drw", "LA-DRW", "la", "linear", reweight="deferred"),
        Method("erm-posthoc", "ERM + post-hoc LA", "ce", "linear", posthoc=True),
    ]
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    return METHODS[name]


def active(schedule: str, epoch: int, switch_epoch: int) -> bool:
    """Whether a re-weighting / re-sampling schedule is on at this (0-based) epoch."""
    return schedule == "always" or (schedule == "deferred" and epoch >= switch_epoch)
