"""The methods of the paper's Table 1 (and Cao et al.'s ERM-DRW / ERM-DRS, and logit adjustment) as data.

A method is a loss, a head, and when class-balanced re-weighting and re-sampling are on:
"never", "always" (from epoch 0: CB RW, CB RS) or "deferred" (from the switch epoch: DRW, DRS).
"""

from dataclasses import dataclass

SCHEDULES = ("never", "always", "deferred")


@dataclass(frozen=True)
class Method:
    name: str
    label: str  # as the paper's Table 1 writes it
    loss: str  # a key of mmlib.losses.LOSSES
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
