"""The trainer on the offline digits dataset with a small ResNet on the CPU."""

import json
import subprocess
import sys
from collections import Counter

import pytest
import torch
from helpers.tiny import quick

from mmlib import files
from mmlib.choices import METHODS
from mmlib.config import RunConfig
from mmlib.data.sources import load_dataset
from mmlib.train import run_folder, schedule, ssp, trainer
from mmlib.train.losses import class_balanced_weights
from mmlib.train.step import TrainStep


def spy_epochs(monkeypatch) -> list[dict]:
    """Record, at every training epoch, each run's loss weights and the labels its stream draws."""
    calls = []
    real = TrainStep.epoch

    def spy(self, progress=None):
        labels = [Counter() for _ in self.streams]
        for counter, stream in zip(labels, self.streams):
            real_draw = stream.draw

            def counted(real_draw=real_draw, counter=counter, stream=stream):
                order, offsets, flips = real_draw()
                counter.update(stream.labels[order].tolist())
                return order, offsets, flips

            stream.draw = counted
        out = real(self, progress)
        for stream in self.streams:
            del stream.draw
        calls.append({
            "weights": [None if c.weight is None else c.weight.clone() for c in self.criteria],
            "labels": labels,
            "lr": -self.neg_lr.item(),
            "transform": self.transform,
        })
        return out

    monkeypatch.setattr(TrainStep, "epoch", spy)
    return calls


# --- schedule ------------------------------------------------------------------------------


def test_learning_rate_at_the_protocols_key_epochs():
    config = RunConfig(**quick(epochs=200))
    expected = {0: 0.02, 3: 0.08, 4: 0.1, 5: 0.1, 159: 0.1, 160: 1e-3, 179: 1e-3, 180: 1e-5, 199: 1e-5}
    for epoch, lr in expected.items():
        assert schedule.learning_rate(config.resolve(), epoch) == pytest.approx(lr, rel=1e-9), epoch


def test_short_runs_keep_the_schedules_shape():
    resolved = RunConfig(**quick(epochs=20)).resolve()
    assert (resolved.warmup_epochs, resolved.lr_milestones, resolved.switch_epoch) == (2, [16, 18], 16)
    assert schedule.learning_rate(resolved, 0) == pytest.approx(0.05)
    assert schedule.learning_rate(resolved, 17) == pytest.approx(1e-3)
    resolved = RunConfig(**quick(epochs=1000)).resolve()
    assert (resolved.warmup_epochs, resolved.lr_milestones) == (5, [800, 900])
    custom = RunConfig(**quick(epochs=10, warmup_epochs=0, lr_milestones=[3, 6], switch_epoch=5)).resolve()
    assert [schedule.learning_rate(custom, e) for e in (0, 2, 3, 6)] == pytest.approx([0.1, 0.1, 1e-3, 1e-5])
    assert custom.switch_epoch == 5


# --- every method --------------------------------------------------------------------------


# The fast tier trains one method of each kind (plain CE, a margin loss on the cosine head, MM, re-sampling);
# the whole suite trains every method.
FAST_TIER_METHODS = ("erm", "ldam-drw", "mm-drw", "cb-rs")


@pytest.mark.parametrize("method", [m if m in FAST_TIER_METHODS else pytest.param(m, marks=pytest.mark.slow)
                                    for m in METHODS])
def test_every_method_trains_and_writes_complete_results(method, tmp_path, digits):
    # evaluated after the last epoch only (the best-epoch rule: tests/train/test_metrics.py)
    results = trainer.train(quick(method=method, switch_epoch=1, ssp_epochs=1, eval_every=2), tmp_path / method)
    run_dir = tmp_path / method
    assert run_folder.is_finished(run_dir)
    for name in (run_folder.CONFIG, run_folder.COUNTS, run_folder.CHECKPOINT, run_folder.METRICS, run_folder.PER_CLASS):
        assert (run_dir / name).exists(), name
    final, best = results["final"], results["best"]
    assert final["epoch"] == 2 and len(results["history"]) == 2
    assert 0 <= final["error"] <= 100 and best["error"] <= final["error"]
    assert "optimistic" in best["note"]
    confusion = torch.tensor(final["confusion"])
    assert confusion.sum().item() == len(digits.test_labels)
    wrong = 1 - confusion.diagonal() / confusion.sum(1)
    assert final["per_class_error"] == pytest.approx((100 * wrong).tolist())
    assert final["error"] == pytest.approx(100 * (1 - confusion.diagonal().sum().item() / confusion.sum().item()))
    few = digits.groups["few"]
    assert final["group_error"]["few"] == pytest.approx(
        100 * (1 - confusion.diagonal()[few].sum().item() / confusion[few].sum().item())
    )
    saved = files.read_json(run_dir / run_folder.CONFIG)
    assert saved["config"]["method"] == method and saved["torch_version"] == torch.__version__
    assert files.read_json(run_dir / run_folder.COUNTS)["cls_num_list"] == digits.cls_num_list
    rows = (run_dir / run_folder.PER_CLASS).read_text().splitlines()
    assert len(rows) == 1 + digits.num_classes


@pytest.mark.slow
def test_digits_is_learnable_in_a_few_epochs(tmp_path):
    results = trainer.train(quick(method="erm", ratio=1.0, imb_type="balanced", epochs=6, batch_size=64), tmp_path / "r")
    assert results["final"]["error"] < 50  # chance is 90%


# --- re-weighting and re-sampling switch at the switch epoch ---------------------------------


@pytest.mark.slow
def test_drw_weights_switch_exactly_at_the_switch_epoch(tmp_path, monkeypatch, digits):
    calls = spy_epochs(monkeypatch)
    trainer.train(quick(method="ldam-drw", epochs=4, switch_epoch=2), tmp_path / "r")
    expected = class_balanced_weights(digits.cls_num_list, 0.9999)
    ones = torch.ones(digits.num_classes)
    for call, weights in zip(calls, [ones, ones, expected, expected]):
        torch.testing.assert_close(call["weights"][0], weights)
    assert all(c["labels"][0] == Counter(dict(enumerate(digits.cls_num_list))) for c in calls)


def test_drs_resamples_after_the_switch(tmp_path, monkeypatch, digits):
    calls = spy_epochs(monkeypatch)
    trainer.train(quick(method="erm-drs", epochs=3, switch_epoch=1), tmp_path / "r")
    counts = digits.cls_num_list
    assert calls[0]["labels"][0] == Counter(dict(enumerate(counts)))  # uniform: each image once
    for call in calls:  # no re-weighting
        assert torch.equal(call["weights"][0], torch.ones(len(counts)))
    drawn = calls[1]["labels"][0] + calls[2]["labels"][0]
    weights = class_balanced_weights(counts, 0.9999)
    share = weights * torch.tensor(counts)
    share = share / share.sum()
    total = sum(drawn.values())
    assert total == 2 * sum(counts)
    rarest, commonest = len(counts) - 1, 0
    assert drawn[rarest] > 3 * counts[rarest]  # the rarest class is drawn far more often than it exists
    for c in range(len(counts)):
        std = (total * share[c] * (1 - share[c])) ** 0.5
        assert abs(drawn[c] - total * share[c]) < 5 * std + 1
    assert drawn[commonest] < 2 * counts[commonest]


def test_cb_rs_resamples_from_the_first_epoch(tmp_path, monkeypatch, digits):
    calls = spy_epochs(monkeypatch)
    trainer.train(quick(method="cb-rs", epochs=1), tmp_path / "r")
    assert calls[0]["labels"][0] != Counter(dict(enumerate(digits.cls_num_list)))


# --- SSP -----------------------------------------------------------------------------------


def test_ssp_pretrains_once_and_fine_tuning_starts_from_the_backbone(tmp_path, monkeypatch, digits):
    calls = spy_epochs(monkeypatch)
    config = RunConfig(**quick(method="ldam-drw-ssp", epochs=1, switch_epoch=0, ssp_epochs=2)).resolve()
    backbone = ssp.ssp_backbone(config, digits, torch.device("cpu"))
    assert [c["transform"] for c in calls] == [ssp.rotate, ssp.rotate]
    assert not any(k.startswith("fc.") for k in backbone)
    model = trainer.init_model(config, digits.num_classes, backbone)
    for name, tensor in model.state_dict().items():
        if name.startswith("fc."):
            assert tensor.shape == (digits.num_classes, 64)  # a fresh cosine head
        else:
            assert torch.equal(tensor, backbone[name]), name
    again = ssp.ssp_backbone(RunConfig(**quick(method="ldam-drw-ssp", epochs=1, switch_epoch=0, ssp_epochs=2, seed=5)).resolve(),
                                  digits, torch.device("cpu"))
    assert len(calls) == 2  # the second seed reused the cached backbone
    assert all(torch.equal(again[k], backbone[k]) for k in backbone)
    trainer.train(quick(method="ldam-drw-ssp", epochs=1, switch_epoch=0, ssp_epochs=2), tmp_path / "r")
    assert len(calls) == 3 and calls[2]["transform"] is None


def test_rotation_turns_each_image_by_its_label():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    turned, k = ssp.rotate(images, torch.zeros(2), torch.Generator().manual_seed(3))
    for i in range(2):
        assert torch.equal(turned[i], torch.rot90(images[i], int(k[i]), dims=(1, 2)))


# --- resume, finished runs, failures --------------------------------------------------------


@pytest.mark.slow
def test_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    params = quick(method="mm-drw", epochs=4, switch_epoch=2, checkpoint_every=1)
    straight = trainer.train(params, tmp_path / "straight")

    real_save = run_folder.save_checkpoint
    saves = []

    def crash_after_two_epochs(path, obj):
        if len(saves) == 2:
            raise KeyboardInterrupt("simulated interruption")
        saves.append(path)
        real_save(path, obj)

    monkeypatch.setattr(run_folder, "save_checkpoint", crash_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(params, tmp_path / "resumed")
    monkeypatch.setattr(run_folder, "save_checkpoint", real_save)
    assert not run_folder.is_finished(tmp_path / "resumed")
    assert torch.load(tmp_path / "resumed" / run_folder.CHECKPOINT, weights_only=False)["epoch"] == 2
    resumed = trainer.train(params, tmp_path / "resumed")
    for key in ("final", "best"):
        assert resumed[key]["per_class_error"] == straight[key]["per_class_error"]
        assert resumed[key]["confusion"] == straight[key]["confusion"]
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(straight["history"])


def test_finished_runs_are_skipped(tmp_path, monkeypatch):
    first = trainer.train(quick(method="erm", epochs=1), tmp_path / "r")
    calls = spy_epochs(monkeypatch)
    again = trainer.train(quick(method="erm", epochs=1), tmp_path / "r")
    assert calls == [] and again["final"] == first["final"]


def test_a_run_dir_with_other_parameters_is_refused(tmp_path):
    trainer.train(quick(method="erm", epochs=1), tmp_path / "r")
    with pytest.raises(ValueError, match=r"other parameters \(method: 'erm' -> 'focal'.*config.json"):
        trainer.train(quick(method="focal", epochs=1), tmp_path / "r")


def test_non_finite_loss_stops_with_epoch_and_step_and_keeps_the_checkpoint(tmp_path, monkeypatch, digits):
    from mmlib.train import losses

    steps_per_epoch = -(-len(digits.train_labels) // 128)
    real_forward = losses.CrossEntropyLoss.forward
    calls = []

    def poisoned(self, logits, target):
        calls.append(1)
        out = real_forward(self, logits, target)
        return out * float("nan") if len(calls) == steps_per_epoch + 2 else out

    monkeypatch.setattr(losses.CrossEntropyLoss, "forward", poisoned)
    with pytest.raises(trainer.NonFiniteLossError,
                       match=rf"at epoch 2, step 2 of {steps_per_epoch}; its last checkpoint \(after epoch 1\) is kept"):
        trainer.train(quick(method="erm", epochs=3, checkpoint_every=1), tmp_path / "r")
    assert torch.load(tmp_path / "r" / run_folder.CHECKPOINT, weights_only=False)["epoch"] == 1
    assert not run_folder.is_finished(tmp_path / "r")
    failure = run_folder.failure(tmp_path / "r")
    assert (failure["epoch"], failure["step"], failure["checkpoint_epoch"]) == (2, 2, 1)
    with pytest.raises(trainer.NonFiniteLossError, match=r"failed before: non-finite loss .* To retry it from its last "
                                                          r"checkpoint, delete .*FAILED \(a sweep: --retry-failed\)"):
        trainer.train(quick(method="erm", epochs=3, checkpoint_every=1), tmp_path / "r")


# Grouped and plain convolutions sum in other orders, by how much depends on the processor's kernels: a fused
# run's epoch loss departed from the run alone by 1.0e-5 (relative) on one AMD EPYC, within 1e-5 on earlier machines.
FUSED_LOSS_RTOL = 1e-4


@pytest.mark.slow
def test_a_diverging_run_of_a_fused_group_stops_alone_and_the_other_trains_as_it_would_alone(tmp_path, monkeypatch):
    """erm fused with focal, focal's loss poisoned from its 6th step on: erm finishes as if trained alone (within
    the fused path's tolerance, as in the test below), focal is marked failed and keeps its epoch-1 checkpoint."""
    from mmlib.train import losses

    schedule = dict(epochs=3, lr=0.01, warmup_epochs=0, lr_milestones=[2], checkpoint_every=1)
    real_forward, calls = losses.FocalLoss.forward, []

    def poisoned(self, logits, target):
        calls.append(1)
        out = real_forward(self, logits, target)
        return out * float("nan") if len(calls) > 5 else out  # 4 steps an epoch: from epoch 2, step 2 on

    monkeypatch.setattr(losses.FocalLoss, "forward", poisoned)
    with pytest.raises(trainer.NonFiniteLossError, match=r"non-finite loss in run .*f1 \(focal\) at epoch 2, step 2"):
        trainer.train_many([quick(method="erm", **schedule), quick(method="focal", **schedule)],
                          [tmp_path / "f0", tmp_path / "f1"])
    monkeypatch.undo()
    assert run_folder.failure(tmp_path / "f1")["checkpoint_epoch"] == 1 and not run_folder.is_finished(tmp_path / "f1")
    assert torch.load(tmp_path / "f1" / run_folder.CHECKPOINT, weights_only=False)["epoch"] == 1
    fused = run_folder.load_results(tmp_path / "f0")
    alone = trainer.train(quick(method="erm", **schedule), tmp_path / "alone")
    assert [h["epoch"] for h in fused["history"]] == [1, 2, 3]
    for a, b in zip(fused["history"], alone["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=FUSED_LOSS_RTOL)
    assert fused["final"]["confusion"] == alone["final"]["confusion"]
    state_f = torch.load(tmp_path / "f0" / run_folder.CHECKPOINT, weights_only=False)["model"]
    state_a = torch.load(tmp_path / "alone" / run_folder.CHECKPOINT, weights_only=False)["model"]
    for name in state_a:
        assert torch.isfinite(state_f[name]).all(), name
        torch.testing.assert_close(state_f[name], state_a[name], rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"method": "mm-dwr"}, "unknown method 'mm-dwr'; valid: erm, focal"),
        ({"ratio": 0.5}, "ratio must be >= 1"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"s": -1.0}, "s must be > 0"),
        ({"beta": -0.5}, "beta must be >= 0"),
        ({"delta_neg": -0.1}, "delta_neg must be >= 0"),
        ({"switch_epoch": 5, "epochs": 5}, "switch_epoch 5 is beyond the run"),
        ({"lr_milestones": [3, 1]}, "lr_milestones must be ascending"),
        ({"epochs": "10"}, "epochs must be of type int"),
        ({"mm_variant": "paper"}, "unknown mm_variant 'paper'; valid: equations, first-label, mask-zero, released"),
        ({"dataset": "cifar10", "data_root": "/no/such/folder"}, "/no/such/folder"),
        ({"dataset": "cifar10"}, "cifar10"),
        ({"nonsense": 1}, "unknown parameter"),
    ],
)
def test_bad_parameters_fail_before_training(overrides, message, tmp_path):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        trainer.train(quick(**overrides), tmp_path / "r")
    assert not (tmp_path / "r").exists()


# --- fused runs ----------------------------------------------------------------------------


@pytest.mark.slow
def test_fused_runs_train_as_each_would_alone(tmp_path):
    """K=2 runs (other seed, other MM beta, other variant) fused, against each run trained alone.

    A small learning rate, decayed for the second epoch: at lr 0.1 from initialisation a 1e-7 change
    of the weights grows ~100x a step, which would hide what this test is about (at a constant 0.01
    the second epoch's rounding differences already flip a test prediction).
    """
    schedule = dict(epochs=2, switch_epoch=1, lr=0.01, warmup_epochs=0, lr_milestones=[1])
    variants = [quick(method="mm-drw", seed=0, **schedule),
                quick(method="mm-drw", seed=1, beta=1.2, mm_variant="released", **schedule)]
    fused = trainer.train_many(variants, [tmp_path / "f0", tmp_path / "f1"])
    for k, params in enumerate(variants):
        alone = trainer.train(params, tmp_path / f"alone{k}")
        for a, b in zip(fused[k]["history"], alone["history"]):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=FUSED_LOSS_RTOL)
        assert fused[k]["final"]["confusion"] == alone["final"]["confusion"]
        state_f = torch.load(tmp_path / f"f{k}" / run_folder.CHECKPOINT, weights_only=False)["model"]
        state_a = torch.load(tmp_path / f"alone{k}" / run_folder.CHECKPOINT, weights_only=False)["model"]
        for name in state_a:  # float rounding of grouped vs plain convolutions
            torch.testing.assert_close(state_f[name], state_a[name], rtol=1e-2, atol=1e-3)
    run0 = torch.load(tmp_path / "f0" / run_folder.CHECKPOINT, weights_only=False)["model"]["conv1.weight"]
    run1 = torch.load(tmp_path / "alone1" / run_folder.CHECKPOINT, weights_only=False)["model"]["conv1.weight"]
    assert (run0 - run1).abs().max() > 0.1  # the tolerance tells different runs apart


def test_runs_that_cannot_fuse_are_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot train fused: they differ in epochs"):
        trainer.train_many([quick(epochs=2), quick(epochs=3)], [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ValueError, match="head"):
        trainer.train_many([quick(method="erm"), quick(method="ldam")], [tmp_path / "a", tmp_path / "b"])


# --- command line --------------------------------------------------------------------------


def test_cli_help_lists_methods_and_defaults():
    out = subprocess.run([sys.executable, "-m", "mmlib", "train", "--help"], capture_output=True, text=True, check=True).stdout
    for name in METHODS:
        assert name in out
    assert "--delta-neg" in out and "(default: 0.6)" in out and "unpublished" in out


@pytest.mark.slow
def test_cli_trains_a_run(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mmlib", "train", "--run-dir", str(tmp_path / "r"), "--dataset", "digits", "--ratio", "10",
         "--arch", "resnet8", "--epochs", "2", "--method", "mm-drw", "--quiet"],
        capture_output=True, text=True, check=True, env={"MMLIB_CACHE": str(tmp_path), "PATH": ""},
    ).stdout
    assert json.loads(out)["final_error"] == run_folder.load_results(tmp_path / "r")["final"]["error"]


def test_cli_bad_parameter_is_one_clear_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mmlib", "train", "--run-dir", str(tmp_path / "r"), "--dataset", "digits", "--ratio", "0.5"],
        capture_output=True, text=True,
    )
    assert done.returncode == 2 and done.stderr.strip() == "error: ratio must be >= 1, got 0.5"


# --- speed options: same results as the plain path ------------------------------------------

# A small lr, decayed for the second epoch (the rounding differences these tests allow grow with the lr).
SMALL_LR = dict(method="ldam-drw", epochs=2, switch_epoch=1, lr=0.01, warmup_epochs=0, lr_milestones=[1, 1])


def final_state(run_dir):
    return torch.load(run_dir / run_folder.CHECKPOINT, weights_only=False)["model"]


@pytest.mark.slow
def test_channels_last_matches_the_plain_path(tmp_path):
    plain = trainer.train(quick(channels_last=False, **SMALL_LR), tmp_path / "plain")
    fast = trainer.train(quick(channels_last=True, **SMALL_LR), tmp_path / "channels_last")
    moved = (torch.tensor(fast["final"]["confusion"]) - torch.tensor(plain["final"]["confusion"])).abs().sum()
    assert moved <= 4  # at most two of 597 test predictions flip on float rounding
    for a, b in zip(fast["history"], plain["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
    reference = final_state(tmp_path / "plain")
    for name, tensor in final_state(tmp_path / "channels_last").items():  # other conv kernels, other rounding
        torch.testing.assert_close(tensor, reference[name], rtol=2e-2, atol=1e-2)


@pytest.mark.slow  # bf16 on a CPU without bf16 units is emulated
def test_bf16_autocast_stays_close_to_float32(tmp_path):
    plain = trainer.train(quick(**SMALL_LR), tmp_path / "plain")
    bf16 = trainer.train(quick(bf16=True, **SMALL_LR), tmp_path / "bf16")
    for a, b in zip(bf16["history"], plain["history"]):  # bf16 keeps 8 bits of mantissa
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=2e-2)
    assert bf16["final"]["error"] == pytest.approx(plain["final"]["error"], abs=5.0)


@pytest.mark.slow
def test_compiled_step_matches_the_plain_path(tmp_path, monkeypatch):
    """torch.compile's graph capture (dynamo + AOT autograd) on the training step, last partial batch included.

    The aot_eager backend stands in for inductor, whose C++ code generation takes minutes on 2 cores;
    what mmlib controls (capturing the step, recompiling for the last batch's shape) is the same.
    """
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, mode: real_compile(model, mode=mode, backend="aot_eager"))
    plain = trainer.train(quick(**SMALL_LR), tmp_path / "plain")
    compiled = trainer.train(quick(compile="default", **SMALL_LR), tmp_path / "compiled")
    assert len(load_dataset("digits", imb_type="exp", ratio=10.0).train_labels) % 128 != 0  # a partial batch
    for a, b in zip(compiled["history"], plain["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    reference = final_state(tmp_path / "plain")
    for name, tensor in final_state(tmp_path / "compiled").items():
        torch.testing.assert_close(tensor, reference[name], rtol=1e-3, atol=1e-4)


def test_tensorboard_scalars_are_written_when_asked(tmp_path):
    trainer.train(quick(method="erm", epochs=1, tensorboard=True), tmp_path / "r")
    assert list((tmp_path / "r" / "tensorboard").glob("events.out.tfevents.*"))
