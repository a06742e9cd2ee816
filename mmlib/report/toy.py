"""A 2-D toy in the spirit of the paper's Fig. 2: where CE, LDAM and the MM loss put a decision boundary.

Data: two Gaussians with identity covariance centred at (-2, 0) (the majority, class 0) and
(2, 0) (the minority, class 1), e.g. 500 against 20 training points, and a balanced test sample.
On balanced data the best boundary is the vertical line x1 = 0.

Model: like Fig. 2, a linear classifier, but with cosine logits so that the margin losses apply as
they do on CIFAR. Each point x is lifted to (x1, x2, LIFT) and L2-normalised, i.e. put on the unit
sphere; each class has a weight vector in R^3, also normalised; the logits are their cosines, in
[-1, 1], with no bias. With two classes the boundary is a great circle, which is a straight line in
the plane, and a point's cosine margin grows with its distance to that line (more slowly for
points far from the origin). The margin losses scale the cosines by their own s; plain
cross-entropy has none, so the toy multiplies the cosines by ``CE_SCALE`` (10, the paper's s) for
it. The runs thus differ only by the loss: same data, same initial weights, same optimiser and steps.

Why a cosine head on the plane rather than a feature extractor, and what the figure shows: the README's
"The toy of Fig. 2".
"""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.lines import Line2D

from mmlib.train.losses import build_loss

MAJOR, MINOR = 0, 1
CLASS_NAMES = ("majority", "minority")
CLASS_MEANS = ((-2.0, 0.0), (2.0, 0.0))
"""Centres of the majority and minority Gaussians; both have identity covariance."""

LIFT = 2.0
"""Third coordinate given to every point before it is normalised onto the sphere."""

CE_SCALE = 10.0
"""Scale of the cosine logits for the losses without their own s (ce, focal): the paper's s = 10."""

UNSCALED_LOSSES = ("ce", "focal")
"""Losses of mmlib.train.losses that take the logits as they are, so the toy scales the cosines for them."""


@dataclass(frozen=True)
class ToyData:
    """Imbalanced training points and a balanced test sample; labels 0 = majority, 1 = minority."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def cls_num_list(self) -> list[int]:
        """Training points per class, as the losses expect them."""
        return torch.bincount(self.train_y, minlength=len(CLASS_NAMES)).tolist()


def _gaussian_sample(counts: list[int], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """counts[j] points from the j-th Gaussian of CLASS_MEANS, with their labels."""
    points = [
        torch.randn(n, 2, generator=generator) + torch.tensor(mean)
        for n, mean in zip(counts, CLASS_MEANS, strict=True)
    ]
    labels = [torch.full((n,), j) for j, n in enumerate(counts)]
    return torch.cat(points), torch.cat(labels)


def make_toy_data(
    n_major: int = 500, n_minor: int = 20, seed: int = 0, n_test_per_class: int = 1000
) -> ToyData:
    """n_major + n_minor training points and n_test_per_class test points per class, drawn from ``seed``."""
    if min(n_major, n_minor, n_test_per_class) <= 0:
        raise ValueError(f"class sizes must be positive, got {n_major}, {n_minor}, {n_test_per_class}")
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = _gaussian_sample([n_major, n_minor], generator)
    test_x, test_y = _gaussian_sample([n_test_per_class, n_test_per_class], generator)
    return ToyData(train_x, train_y, test_x, test_y)


class LiftedCosineClassifier(nn.Module):
    """Cosines between the lifted, normalised points (x1, x2, LIFT) and the normalised class weights."""

    def __init__(self, generator: torch.Generator, num_classes: int = len(CLASS_NAMES)):
        super().__init__()
        self.class_weight = nn.Parameter(torch.randn(num_classes, 3, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lifted = torch.cat([x, torch.full((len(x), 1), LIFT, dtype=x.dtype)], dim=1)
        return F.normalize(lifted, dim=1) @ F.normalize(self.class_weight, dim=1).T


@dataclass
class ToyResult:
    """One trained toy model: its loss, the loss value at every step and the per-class test error."""

    loss_name: str
    model: LiftedCosineClassifier
    loss_history: list[float]
    class_errors: list[float]


@torch.no_grad()
def per_class_error(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Fraction of misclassified points of each class (majority first)."""
    wrong = model(x).argmax(dim=1) != y
    return [wrong[y == j].float().mean().item() for j in range(len(CLASS_NAMES))]


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Runs the block with one intra-op thread, then restores torch's setting.

    The toy's tensors are tiny, so more threads only add synchronisation: on a busy 2-core machine
    training took 30 times longer with two threads than with one. The setting is process-wide.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_toy(
    loss_name: str, data: ToyData, steps: int = 500, seed: int = 0, lr: float = 0.05, **loss_params
) -> ToyResult:
    """Full-batch Adam with the loss ``build_loss(loss_name, data.cls_num_list, **loss_params)``.

    The initial weights depend on ``seed`` only, so losses trained with one seed start from the same
    model. Cosines are multiplied by CE_SCALE for the losses in UNSCALED_LOSSES. 500 steps at
    lr 0.05 reach the losses' optimum to about 0.01 in the boundary's position (1 s or less on a CPU).
    """
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    criterion = build_loss(loss_name, data.cls_num_list, **loss_params)
    logit_scale = CE_SCALE if loss_name in UNSCALED_LOSSES else 1.0
    model = LiftedCosineClassifier(torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    with _one_torch_thread():
        for _ in range(steps):
            loss = criterion(logit_scale * model(data.train_x), data.train_y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history.append(loss.item())
    return ToyResult(loss_name, model, history, per_class_error(model, data.test_x, data.test_y))


def _minority_minus_majority_grid(model: nn.Module, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """z_minority - z_majority at every point of the grid xs x ys, shape (len(ys), len(xs)).

    Its zero contour is where the predicted class changes: a smooth line, unlike the contour of the
    argmax, which follows the grid's cells.
    """
    grid_x, grid_y = np.meshgrid(xs, ys)
    points = torch.tensor(np.stack([grid_x.ravel(), grid_y.ravel()], axis=1), dtype=torch.float32)
    with torch.no_grad():
        logits = model(points)
    return (logits[:, MINOR] - logits[:, MAJOR]).reshape(grid_x.shape).numpy()


def plot_boundaries(
    results: Mapping[str, ToyResult], data: ToyData, ax: plt.Axes | None = None, resolution: int = 300
) -> plt.Figure:
    """Training points and one decision boundary per entry of ``results`` (legend label -> result).

    Each boundary is the line where the model's predicted class changes; its legend entry names
    the loss and its minority-class test error. A dotted line marks the best boundary for balanced
    classes (the perpendicular bisector of the two means). Returns the figure.
    """
    if ax is None:
        with sns.axes_style("whitegrid"):
            _, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    x, y = data.train_x.numpy(), data.train_y.numpy()
    styles = zip(CLASS_NAMES, ("0.7", "0.2"), ("o", "^"), (8, 30), strict=True)
    for j, (name, color, marker, size) in enumerate(styles):
        ax.scatter(*x[y == j].T, s=size, color=color, marker=marker, label=f"{name} (n={(y == j).sum()})")
    midpoint, difference = np.mean(CLASS_MEANS, axis=0), np.subtract(*CLASS_MEANS)
    ax.axline(midpoint, midpoint + (-difference[1], difference[0]), color="black", ls=":", lw=1,
              label="best boundary for balanced classes")
    low, high = x.min(axis=0) - 0.5, x.max(axis=0) + 0.5
    xs, ys = np.linspace(low[0], high[0], resolution), np.linspace(low[1], high[1], resolution)
    handles, _ = ax.get_legend_handles_labels()
    for color, (label, result) in zip(sns.color_palette("deep"), results.items()):
        margin_grid = _minority_minus_majority_grid(result.model, xs, ys)
        ax.contour(xs, ys, margin_grid, levels=[0.0], colors=[color], linewidths=2)
        error = result.class_errors[MINOR]
        handles.append(Line2D([], [], color=color, lw=2, label=f"{label} (minority test error {error:.1%})"))
    ax.set(xlim=(low[0], high[0]), ylim=(low[1], high[1]), xlabel="$x_1$", ylabel="$x_2$")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small")
    return ax.figure
