"""Losses of the paper's Table 1, one small nn.Module each.

Every loss takes ``(logits, target)`` and returns the mean loss over the batch. Each accepts
per-class weights ``weight`` (C values, or None), which a trainer may replace between epochs
(deferred re-weighting switches them on at epoch 160): new weights are copied into the loss's own
tensor, so a step captured as a CUDA graph sees them. With weights the mean is the weighted mean,
divided by the sum of the batch targets' weights, as torch's weighted cross-entropy does.
Low-precision logits (bf16/fp16 under autocast) are computed in float32; float64 stays float64.

Margin losses (LDAM, MM, hinge, additive margin) expect the un-scaled logits of a cosine
classifier, in [-1, 1]: margins are subtracted from those, then the result is multiplied by s.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmlib.choices import LOSSES, MM_VARIANTS


def _check_counts(cls_num_list: Sequence[int]) -> list[int]:
    """The class counts as ints; whole positive numbers only (1.5 images of a class is a mistake, not 1)."""
    counts = []
    for j, n in enumerate(cls_num_list):
        try:
            whole = not isinstance(n, (bool, str)) and float(n) == int(n) and n > 0
        except (TypeError, ValueError, OverflowError):  # NaN, infinity, None, ...
            whole = False
        if not whole:
            raise ValueError(f"cls_num_list must hold positive whole class counts; class {j} has {n!r}")
        counts.append(int(n))
    if len(counts) == 0:
        raise ValueError("cls_num_list is empty: give the number of training images of every class")
    return counts


def _check_positive(name: str, value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value}")
    return float(value)


def _check_non_negative(name: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)


def class_balanced_weights(cls_num_list: Sequence[int], beta: float = 0.9999) -> torch.Tensor:
    """Cui et al. (CVPR 2019), Eq. 3: w_j = (1 - beta) / (1 - beta^n_j), rescaled to sum to C.

    beta = 0 gives every class weight 1; beta = 1 is the limit, inverse class frequency 1 / n_j
    (the n_y^-1 of the paper's Algorithm 1); LDAM-DRW uses beta = 0.9999.
    """
    counts = _check_counts(cls_num_list)
    if not 0 <= beta <= 1:
        raise ValueError(f"beta (class-balanced) must be in [0, 1], got {beta}")
    n = torch.tensor(counts, dtype=torch.float64)
    weights = 1.0 / n if beta == 1 else (1.0 - beta) / (1.0 - beta**n)
    return (weights * len(counts) / weights.sum()).float()


def ldam_margins(cls_num_list: Sequence[int], max_margin: float = 0.5) -> torch.Tensor:
    """Cao et al. (NeurIPS 2019), Eq. 12: Delta_j = C / n_j^(1/4), C chosen so max_j Delta_j = max_margin."""
    counts = _check_counts(cls_num_list)
    margins = torch.tensor(counts, dtype=torch.float64) ** -0.25
    return (margins * (max_margin / margins.max())).float()


def log_prior(cls_num_list: Sequence[int]) -> torch.Tensor:
    """log pi_j = log(n_j / sum_k n_k): the training set's log class prior (logit adjustment's offsets)."""
    counts = torch.tensor(_check_counts(cls_num_list), dtype=torch.float64)
    return (counts / counts.sum()).log().float()


class _WeightedLoss(nn.Module):
    """Shared plumbing: the class count, the replaceable class weights, input checks, the mean."""

    def __init__(self, num_classes: int | None, weight: torch.Tensor | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("_weight", None, persistent=False)
        self.weight = weight

    @property
    def weight(self) -> torch.Tensor | None:
        return self._weight

    @weight.setter
    def weight(self, value: torch.Tensor | Sequence[float] | None) -> None:
        """New class weights, copied into the loss's own tensor when it holds one of that size (so that a
        captured CUDA graph, which reads that tensor, sees them); the caller's tensor is never kept."""
        if value is not None:
            value = torch.as_tensor(value, dtype=torch.float32).flatten()
            if self.num_classes is not None and value.numel() != self.num_classes:
                raise ValueError(f"weight has {value.numel()} values for {self.num_classes} classes")
            if not torch.isfinite(value).all() or (value < 0).any():
                raise ValueError("weight must hold finite, non-negative class weights")
        if value is not None and self._weight is not None and value.numel() == self._weight.numel():
            self._weight.copy_(value)
        else:
            self._weight = None if value is None else value.clone()

    def _prepare(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Checks shapes and labels; returns the logits in a precision fit for the loss."""
        if logits.dim() != 2:
            raise ValueError(f"logits must be (batch, classes), got shape {tuple(logits.shape)}")
        if not logits.is_floating_point():  # integer logits would silently lose the margins' fractions
            raise ValueError(f"logits must be floating point, got {logits.dtype}")
        if target.shape != logits.shape[:1]:
            raise ValueError(f"target must have shape ({logits.shape[0]},), got {tuple(target.shape)}")
        if target.dtype != torch.int64:
            raise ValueError(f"target must hold class labels as int64, got {target.dtype}")
        if len(target) == 0:
            raise ValueError("the batch is empty (logits and target have 0 rows): its mean loss is undefined")
        num_classes = logits.shape[1]
        if self.num_classes is not None and num_classes != self.num_classes:
            raise ValueError(
                f"cls_num_list has {self.num_classes} classes but the logits have {num_classes} columns"
            )
        if target.device.type == "cpu":
            if target.numel() and (target.min() < 0 or target.max() >= num_classes):
                raise ValueError(f"target holds labels outside [0, {num_classes})")
        else:
            # A Python-side check would sync host and device on every step.
            torch._assert_async(((target >= 0) & (target < num_classes)).all(), "target outside [0, C)")
        return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits

    def _mean(self, per_sample: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Plain mean, or with class weights the weighted mean sum(w_y l) / sum(w_y)."""
        if self._weight is None:
            return per_sample.mean()
        w = self._weight.to(per_sample.device, per_sample.dtype)[target]
        return (w * per_sample).sum() / w.sum()

    def _margin_cross_entropy(
        self, logits: torch.Tensor, target: torch.Tensor, margin: torch.Tensor, s: float
    ) -> torch.Tensor:
        """CE(s * (z - margin_i * e_y)): the target logit of sample i lowered by margin_i."""
        shifted = logits.scatter_add(1, target[:, None], -margin.to(logits.dtype)[:, None])
        per_sample = F.cross_entropy(s * shifted, target, reduction="none")
        return self._mean(per_sample, target)


class CrossEntropyLoss(_WeightedLoss):
    """Cross-entropy, optionally with class weights (re-weighting: CB RW, DRW)."""

    def __init__(self, weight: torch.Tensor | None = None, num_classes: int | None = None):
        super().__init__(num_classes, weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = self._prepare(logits, target)
        return self._mean(F.cross_entropy(logits, target, reduction="none"), target)


class FocalLoss(_WeightedLoss):
    """Softmax focal loss, Lin et al. (ICCV 2017), Eq. 5: -(1 - p_y)^gamma log p_y.

    Class weighting (CB Focal): each sample's focal term is multiplied by its class weight w_y
    and the batch is normalised by sum(w_y), like weighted cross-entropy. p_y is always the
    model's softmax probability. This departs from the released LDAM-DRW code, which takes
    p = exp(-w_y * CE) from the *weighted* cross-entropy, so its p is not a probability when
    w_y != 1, and from Cui et al.'s sigmoid focal loss with class-balanced alpha.
    """

    def __init__(self, gamma: float = 1.0, weight: torch.Tensor | None = None, num_classes: int | None = None):
        super().__init__(num_classes, weight)
        self.gamma = _check_non_negative("gamma", gamma)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = self._prepare(logits, target)
        log_p = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
        per_sample = -((1.0 - log_p.exp()) ** self.gamma) * log_p
        return self._mean(per_sample, target)


class LDAMLoss(_WeightedLoss):
    """LDAM, Cao et al. (NeurIPS 2019), Eq. 12-13: CE(s * (z - Delta_y e_y)), Delta_j = C / n_j^(1/4).

    max_m is the largest margin (that of the rarest class); s = 30 as in the released code.
    """

    def __init__(
        self,
        cls_num_list: Sequence[int],
        max_m: float = 0.5,
        s: float = LOSSES["ldam"].scale,
        weight: torch.Tensor | None = None,
    ):
        counts = _check_counts(cls_num_list)
        super().__init__(len(counts), weight)
        self.max_m = _check_non_negative("max_m", max_m)
        self.s = _check_positive("s", s)
        self.register_buffer("margins", ldam_margins(counts, self.max_m))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = self._prepare(logits, target)
        margin = self.margins.to(logits.device)[target]
        return self._margin_cross_entropy(logits, target, margin, self.s)


class AdditiveMarginLoss(_WeightedLoss):
    """Additive-margin softmax, Wang et al. (IEEE SPL 2018): CE(s * (z - m e_y)), one margin m for all classes.

    The M-DRW row of the paper's Table 1 (Cao et al.'s uniform-margin baseline). Its margin
    was never published; 0.5 (LDAM's largest margin) is mmlib's default.
    """

    def __init__(
        self,
        margin: float = 0.5,
        s: float = LOSSES["am"].scale,
        weight: torch.Tensor | None = None,
        num_classes: int | None = None,
    ):
        super().__init__(num_classes, weight)
        self.margin = _check_non_negative("margin", margin)
        self.s = _check_positive("s", s)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = self._prepare(logits, target)
        margin = torch.full(target.shape, self.margin, device=logits.device)
        return self._margin_cross_entropy(logits, target, margin, self.s)


class HingeLoss(_WeightedLoss):
    """Multi-class hinge, Cao et al. (NeurIPS 2019), Sec. 3: s * max(max_{j != y} z_j - z_y + Delta_y, 0).

    ldam=False: one margin Delta_y = margin for every class (HG-DRS). ldam=True: LDAM margins
    C / n_j^(1/4) with the largest equal to margin (LDAM-HG-DRS). Neither the margin nor the
    scale of these rows was published; mmlib's defaults are LDAM's (margin 0.5, s = 30), and
    s only scales the gradient, as the learning rate would.
    """

    def __init__(
        self,
        cls_num_list: Sequence[int],
        margin: float = 0.5,
        ldam: bool = False,
        s: float = LOSSES["hinge"].scale,
        weight: torch.Tensor | None = None,
    ):
        counts = _check_counts(cls_num_list)
        super().__init__(len(counts), weight)
        self.margin = _check_non_negative("margin", margin)
        self.ldam = ldam
        self.s = _check_positive("s", s)
        margins = ldam_margins(counts, self.margin) if ldam else torch.full((len(counts),), self.margin)
        self.register_buffer("margins", margins)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = self._prepare(logits, target)
        z_target = logits.gather(1, target[:, None]).squeeze(1)
        z_other = logits.scatter(1, target[:, None], float("-inf")).amax(dim=1)
        margin = self.margins.to(logits.device, logits.dtype)[target]
        per_sample = self.s * torch.clamp(z_other - z_target + margin, min=0)
        return self._mean(per_sample, target)


class MMLoss(_WeightedLoss):
    """Maximum Margin loss, Kang, Vu, Yoo (ICIP 2021), Eq. 1-4 (Eq. 6-7 with ldam=True).

    With m = z_y - max_{j != y} z_j on the un-scaled cosine logits:
      correctly classified (m > 0):  Delta = exp(-m - delta_plus)          (Eq. 2)
      misclassified        (m < 0):  Delta = exp(-(-m) - delta_neg)        (Eq. 3)
      exact tie            (m = 0):  Delta = 0                             (as the released code)
    and the loss is CE(s * (z - Delta e_y)) (Eq. 4), Delta computed without gradient.
    delta_plus = beta * delta_neg (Eq. 5). With ldam=True the deltas are class-dependent,
    delta_neg_y = delta_neg - gamma_y and delta_plus_y = beta * delta_neg_y (Eq. 6-7), gamma_j =
    C / n_j^(1/4) with max_j gamma_j = 0.5. The paper uses s = 10.

    variant (a key of MM_VARIANTS) picks the equations or the released code (HMMLoss), which departs
    from them in two ways, each of which can be switched on alone: "first-label" reads z_y from the
    column of the batch's *first* label for every row; "mask-zero" masks the target by multiplying it
    by 0, so the "max over j != y" includes a 0 at the target; "released" does both.
    """

    def __init__(
        self,
        cls_num_list: Sequence[int],
        delta_neg: float,
        beta: float,
        s: float = LOSSES["mm"].scale,
        ldam: bool = False,
        variant: str = "equations",
        weight: torch.Tensor | None = None,
    ):
        counts = _check_counts(cls_num_list)
        super().__init__(len(counts), weight)
        if variant not in MM_VARIANTS:
            raise ValueError(f"unknown MM variant {variant!r}; valid: {', '.join(MM_VARIANTS)}")
        self.variant = variant
        self.delta_neg = _check_non_negative("delta_neg", delta_neg)
        self.beta = _check_non_negative("beta", beta)
        self.s = _check_positive("s", s)
        self.ldam = ldam
        gamma = ldam_margins(counts, 0.5) if ldam else torch.zeros(len(counts))
        self.register_buffer("delta_neg_per_class", self.delta_neg - gamma)

    @torch.no_grad()
    def shift(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Delta^MM of every sample (Eq. 1-3): how far its target logit is lowered."""
        first_label, mask_zero = MM_VARIANTS[self.variant]
        target_column = target[:1].expand_as(target) if first_label else target
        z_target = logits.gather(1, target_column[:, None]).squeeze(1)
        z_other = logits.scatter(1, target[:, None], 0.0 if mask_zero else float("-inf")).amax(dim=1)
        m = z_target - z_other
        delta_neg = self.delta_neg_per_class.to(logits.device, logits.dtype)[target]
        delta_plus = self.beta * delta_neg
        shift = torch.where(m > 0, torch.exp(-m - delta_plus), torch.exp(m - delta_neg))
        return torch.where(m == 0, torch.zeros_like(shift), shift)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = self._prepare(logits, target)
        return self._margin_cross_entropy(logits, target, self.shift(logits, target), self.s)


class LogitAdjustedLoss(_WeightedLoss):
    """Logit-adjusted cross-entropy (Menon et al., ICLR 2021): CE(z + tau * log pi), pi_j = n_j / N.

    -log( exp(z_y + tau log pi_y) / sum_j exp(z_j + tau log pi_j) ), the training set's class prior
    pi added to the logits during training only; predictions take the plain argmax of z. With tau = 1
    it is Balanced Softmax (Ren et al., NeurIPS 2020), -log( n_y e^{z_y} / sum_j n_j e^{z_j} ),
    since log pi_j = log n_j - log N and a shift of every logit by the same constant leaves the softmax
    unchanged.
    """

    def __init__(self, cls_num_list: Sequence[int], tau: float = 1.0, weight: torch.Tensor | None = None):
        counts = _check_counts(cls_num_list)
        super().__init__(len(counts), weight)
        self.tau = _check_non_negative("tau", tau)
        self.register_buffer("log_prior", log_prior(counts))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = self._prepare(logits, target)
        adjusted = logits + self.tau * self.log_prior.to(logits.device, logits.dtype)
        return self._mean(F.cross_entropy(adjusted, target, reduction="none"), target)


def build_loss(name: str, cls_num_list: Sequence[int], **params) -> _WeightedLoss:
    """The loss called ``name`` (a key of mmlib.choices.LOSSES) for a training set with these class counts; params
    are its class's keyword arguments (RunConfig.loss_params() gives a run's)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    spec, counts = LOSSES[name], _check_counts(cls_num_list)
    loss = globals()[spec.cls]
    return (loss(counts, **spec.fixed, **params) if spec.counts
            else loss(num_classes=len(counts), **spec.fixed, **params))