"""RunConfig's derived schedule at any length, and its "did you mean" for unknown parameters."""

import pytest

from mmlib import config
from mmlib.config import RunConfig
from mmlib.train import schedule

DIGITS = dict(dataset="digits", imb_type="exp", ratio=10.0, method="erm")


@pytest.mark.parametrize(
    "epochs, warmup, milestones",
    [
        (200, 5, [160, 180]),  # the protocol, exactly
        (1000, 5, [800, 900]),
        (30, 3, [24, 27]),  # warm-up a tenth of the run
        (20, 2, [16, 18]),
        (10, 2, [8, 9]),  # a one-epoch warm-up would run at the full lr: at least 2
        (6, 2, [4, 5]),
        (5, 2, [3, 4]),  # the shortest run with every phase: 2 warm-up, 1 full, 1 decayed, 1 twice decayed
        (4, 0, [2, 3]),  # no room for a warm-up
        (3, 0, [1, 2]),
        (2, 0, [1]),  # one decay
        (1, 0, []),
    ],
)
def test_the_default_schedule_keeps_the_protocols_shape(epochs, warmup, milestones):
    resolved = RunConfig(**DIGITS, epochs=epochs).resolve()
    assert (resolved.warmup_epochs, resolved.lr_milestones) == (warmup, milestones)
    assert resolved.switch_epoch == (milestones[0] if milestones else 0)


@pytest.mark.parametrize(
    "epochs, rates",
    [
        (1, [0.1]),
        (2, [0.1, 1e-3]),
        (3, [0.1, 1e-3, 1e-5]),
        (4, [0.1, 0.1, 1e-3, 1e-5]),
        (5, [0.05, 0.1, 0.1, 1e-3, 1e-5]),
        (10, [0.05, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 1e-3, 1e-5]),
    ],
)
def test_short_runs_learn_at_the_full_rate_first(epochs, rates):
    config = RunConfig(**DIGITS, epochs=epochs)
    assert [schedule.learning_rate(config.resolve(), e) for e in range(epochs)] == pytest.approx(rates, rel=1e-9)


def test_every_phase_has_an_epoch_where_the_run_is_long_enough():
    for epochs in [*range(1, 61), 99, 199, 201]:
        rates = [schedule.learning_rate(RunConfig(**DIGITS, epochs=epochs).resolve(), e) for e in range(epochs)]
        counts = {r: sum(x == pytest.approx(r, rel=1e-9) for x in rates) for r in (0.1, 1e-3, 1e-5)}
        assert counts[0.1] >= 1, epochs
        if epochs >= 2:
            assert counts[1e-3] >= 1, epochs
        if epochs >= 3:
            assert counts[1e-5] >= 1, epochs
        if epochs >= 5:
            assert rates[0] < 0.1, epochs  # warming up


def test_a_one_epoch_run_of_a_deferred_method_re_balances_its_only_epoch():
    config = RunConfig(**{**DIGITS, "method": "mm-drw"}, epochs=1)
    assert (config.resolve().lr_milestones, config.resolve().switch_epoch) == ([], 0)
    assert schedule.learning_rate(config.resolve(), 0) == pytest.approx(0.1)
    assert RunConfig(**{**DIGITS, "method": "mm-drw"}, epochs=2).resolve().switch_epoch == 1


def test_a_warm_up_past_the_first_milestone_is_refused():
    with pytest.raises(ValueError, match="warmup_epochs 5 runs past the first lr milestone 3"):
        RunConfig(**DIGITS, epochs=5, warmup_epochs=5)
    with pytest.raises(ValueError, match="warmup_epochs 4 runs past the first lr milestone 2"):
        RunConfig(**DIGITS, epochs=10, warmup_epochs=4, lr_milestones=[2, 6])


def test_an_unknown_parameter_names_the_closest_valid_one():
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) epoch \(did you mean epochs\?\); valid: method"):
        RunConfig.from_dict({**DIGITS, "epoch": 2})
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) zzz; valid"):
        RunConfig.from_dict({**DIGITS, "zzz": 2})


def test_an_explicit_empty_milestone_list_means_a_constant_rate():
    config = RunConfig(**DIGITS, epochs=10, warmup_epochs=0, lr_milestones=[], switch_epoch=3)
    assert config.resolve().lr_milestones == []
    assert {schedule.learning_rate(config.resolve(), e) for e in range(10)} == {0.1}


def test_the_evaluation_batch_is_the_runs_own_or_the_faster_default_of_its_device():
    assert config.eval_batch_size(RunConfig(**DIGITS), "cpu") == 128  # activations that stay in the caches
    assert config.eval_batch_size(RunConfig(**DIGITS), "cuda") == 1024
    assert config.eval_batch_size(RunConfig(**DIGITS, eval_batch_size=300), "cpu") == 300


def test_a_configuration_resolves_once():
    resolved = RunConfig(**DIGITS, epochs=30).resolve()
    assert resolved.resolve() is resolved and (resolved.warmup_epochs, resolved.lr_milestones) == (3, [24, 27])
    with pytest.raises(ValueError, match=r"learning_rate needs a resolved configuration: RunConfig.resolve\(\)"):
        schedule.learning_rate(RunConfig(**DIGITS), 0)
