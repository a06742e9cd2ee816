"""The 2-D toy of Fig. 2: data, training, and the boundary shifts that hold on every seed tried."""

import math

import matplotlib
import pytest
import torch
from matplotlib.contour import ContourSet

from mmlib.report.toy import CLASS_MEANS, MAJOR, MINOR, make_toy_data, plot_boundaries, train_toy

matplotlib.use("Agg")

SEEDS = (0, 1)
LOSS_PARAMS = {
    "ce": {},
    "ldam": dict(max_m=0.5, s=30),
    "mm": dict(delta_neg=0.6, beta=1.5, s=10),
    "mm-ldam": dict(delta_neg=0.6, beta=1.5, s=10),
}


@pytest.fixture(scope="module")
def trained():
    """seed -> (data, loss name -> result), every loss trained with the default steps."""
    runs = {}
    for seed in SEEDS:
        data = make_toy_data(seed=seed)
        results = {name: train_toy(name, data, seed=seed, **params) for name, params in LOSS_PARAMS.items()}
        runs[seed] = data, results
    return runs


def minority_share_between_means(model, points: int = 4001) -> float:
    """Fraction of the segment from the majority's mean to the minority's predicted as minority.

    The larger it is, the nearer the boundary lies to the majority class.
    """
    t = torch.linspace(0, 1, points)[:, None]
    segment = (1 - t) * torch.tensor(CLASS_MEANS[MAJOR]) + t * torch.tensor(CLASS_MEANS[MINOR])
    with torch.no_grad():
        return (model(segment).argmax(dim=1) == MINOR).float().mean().item()


def balanced_bayes_error() -> float:
    """Error of the best boundary for balanced classes: Phi(-d/2), d the distance between the means."""
    half_distance = math.dist(*CLASS_MEANS) / 2
    return 0.5 * (1 + math.erf(-half_distance / math.sqrt(2)))


def test_data_counts_shapes_and_determinism():
    data = make_toy_data(n_major=50, n_minor=5, seed=3, n_test_per_class=40)
    assert data.train_x.shape == (55, 2) and data.test_x.shape == (80, 2)
    assert data.cls_num_list == [50, 5]
    assert torch.bincount(data.test_y).tolist() == [40, 40]
    again = make_toy_data(n_major=50, n_minor=5, seed=3, n_test_per_class=40)
    other = make_toy_data(n_major=50, n_minor=5, seed=4, n_test_per_class=40)
    assert torch.equal(data.train_x, again.train_x) and torch.equal(data.test_x, again.test_x)
    assert not torch.equal(data.train_x, other.train_x)


def test_data_classes_centred_on_their_means():
    data = make_toy_data(n_major=2000, n_minor=2000, seed=0)
    for j, mean in enumerate(CLASS_MEANS):
        assert torch.allclose(data.train_x[data.train_y == j].mean(dim=0), torch.tensor(mean), atol=0.1)


def test_invalid_sizes_and_steps_are_refused():
    with pytest.raises(ValueError, match="positive"):
        make_toy_data(n_minor=0)
    with pytest.raises(ValueError, match="steps"):
        train_toy("ce", make_toy_data(), steps=0)


def test_training_is_deterministic_and_restores_torch_threads():
    data = make_toy_data(seed=0)
    threads = torch.get_num_threads()
    first, second = (train_toy("mm", data, steps=50, seed=7, **LOSS_PARAMS["mm"]) for _ in range(2))
    assert first.loss_history == second.loss_history and first.class_errors == second.class_errors
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("loss_name", LOSS_PARAMS)
def test_training_lowers_the_loss_and_learns_both_classes(trained, loss_name):
    for seed in SEEDS:
        result = trained[seed][1][loss_name]
        assert result.loss_history[-1] < 0.5 * result.loss_history[0]
        # The imbalance pushes the boundary toward the minority, so the majority errs less than at
        # the balanced optimum; the minority class is still learnt far better than chance.
        assert result.class_errors[MAJOR] < balanced_bayes_error()
        assert result.class_errors[MINOR] < 0.25


def test_ldam_moves_the_boundary_toward_the_majority(trained):
    """LDAM's larger margin for the rarer class enlarges the minority's region relative to CE's."""
    for seed in SEEDS:
        results = trained[seed][1]
        ce, ldam = results["ce"], results["ldam"]
        assert minority_share_between_means(ldam.model) > minority_share_between_means(ce.model)
        assert ldam.class_errors[MINOR] < ce.class_errors[MINOR]


def test_mm_ldam_moves_the_boundary_toward_the_majority_relative_to_mm(trained):
    """Eq. 6-7 lower the minority's deltas, so its samples get larger shifts than under plain MM."""
    for seed in SEEDS:
        results = trained[seed][1]
        assert minority_share_between_means(results["mm-ldam"].model) > minority_share_between_means(
            results["mm"].model
        )


def test_plot_draws_one_boundary_per_loss(trained):
    data, results = trained[SEEDS[0]]
    shown = {"CE": results["ce"], "LDAM": results["ldam"], "MM": results["mm"]}
    figure = plot_boundaries(shown, data)
    ax = figure.axes[0]
    assert sum(isinstance(artist, ContourSet) for artist in ax.collections) == len(shown)
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    for label in shown:
        assert sum(entry.startswith(f"{label} ") for entry in legend) == 1
    matplotlib.pyplot.close(figure)
