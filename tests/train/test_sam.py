"""Sharpness-aware minimization (mmlib.train.step, run parameter sam_rho): the step against its formula, fused runs
against runs trained apart, resume after a kill, and the beyond table's SAM rows."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers.processes import checkpointed, cli_args, finish, kill, same_results, start, wait_for
from helpers.tiny import quick

from mmlib import files, paper
from mmlib.config import RunConfig
from mmlib.data.pipeline import TrainStream, to_device
from mmlib.sweep import plan
from mmlib.train import fusion, run_folder, trainer
from mmlib.train.losses import CrossEntropyLoss, LDAMLoss, build_loss, class_balanced_weights
from mmlib.train.models import build_model, merge_state_dicts, split_state_dict
from mmlib.train.step import TrainStep


def test_one_sam_step_equals_the_two_pass_formula_in_float64(digits):
    """One step (one batch of 25 images) of a linear-head ResNet-8 with weighted cross-entropy, momentum and
    weight decay, against SAM written out in float64 on the same batch:
    g1 = grad L(w), e = rho g1 / (||g1|| + 1e-12), g2 = grad L(w + e), w' = w - lr (g2 + wd w) (the first
    momentum buffer is the gradient); BatchNorm in train mode for both passes, its statistics updated by each.
    Contiguous weights: channels-last convolutions on the CPU already differ from float64 by ~1e-4 in a plain step."""
    rho, lr, wd = 0.1, 0.1, 0.01
    x, y = to_device(digits.train_images[::20], digits.train_labels[::20], "cpu")  # 25 images of every class
    x = x[:, :, ::4, ::4].contiguous()  # digits' own 8x8 pixels: float64 convolutions are slow on the CPU
    weights = torch.linspace(0.5, 2.0, digits.num_classes)
    torch.manual_seed(0)
    model = build_model("resnet8", digits.num_classes)
    start = copy.deepcopy(model)
    inputs, targets = [], []
    model.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
    criterion = CrossEntropyLoss(weights)

    def recorded(logits, target):
        targets.append(target.clone())
        return criterion(logits, target)

    optimizer = torch.optim.SGD(model.parameters(), lr, momentum=0.9, weight_decay=wd)
    step = TrainStep(model, [TrainStream(x, y, 25, 0)], [recorded], optimizer, bf16=False, channels_last=False,
                     sam_rho=[rho])
    losses, _, _ = step.epoch()
    assert len(inputs) == 2 and torch.equal(inputs[0], inputs[1]) and torch.equal(targets[0], targets[1])

    reference = start.double()
    params = list(reference.parameters())
    batch, target = inputs[0].double(), targets[0]

    def gradients():
        loss = F.cross_entropy(reference(batch), target, weight=weights.double())
        return loss, torch.autograd.grad(loss, params)

    loss1, g1 = gradients()
    norm = torch.sqrt(sum((g**2).sum() for g in g1))
    w = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, g in zip(params, g1):
            p += rho * g / (norm + 1e-12)
    _, g2 = gradients()
    direction = [g + wd * wi for wi, g in zip(w, g2)]  # weight decay at w, not in the perturbation's gradient
    expected = [wi - lr * d for wi, d in zip(w, direction)]
    plain = [wi - lr * (g + wd * wi) for wi, g in zip(w, g1)]

    assert losses[0] == pytest.approx(loss1.item(), rel=1e-6)  # the first pass's loss is recorded
    moved = 0.0
    for (name, p), e, d, q in zip(model.named_parameters(), expected, direction, plain):
        torch.testing.assert_close(p.detach().double(), e, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(optimizer.state[p]["momentum_buffer"].double(), d, rtol=1e-4, atol=1e-5, msg=name)
        moved = max(moved, (e - q).abs().max().item())
    assert moved > 1e-3  # SAM's update is far from plain SGD's at this tolerance
    for (name, b), e in zip(model.named_buffers(), reference.buffers()):
        torch.testing.assert_close(b.double() if b.is_floating_point() else b, e, rtol=1e-5, atol=1e-6, msg=name)
    assert model.bn1.num_batches_tracked.item() == 2  # running statistics updated by both passes


def _fused_step(digits, sam_rho, forwards: list) -> TrainStep:
    """Two fused ResNet-8 runs (seeds 0, 1), LDAM losses, 98 digits in batches of 32; counts forwards."""
    x, y = to_device(digits.train_images[::5], digits.train_labels[::5], "cpu")
    x = x[:, :, ::4, ::4].contiguous()  # digits' own 8x8 pixels
    singles = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        singles.append(build_model("resnet8", digits.num_classes, normed=True))
    model = build_model("resnet8", digits.num_classes, normed=True, runs=2)
    model.load_state_dict(merge_state_dicts([m.state_dict() for m in singles]))
    model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    optimizer = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9, weight_decay=2e-4)
    return TrainStep(model, [TrainStream(x, y, 32, seed) for seed in (0, 1)], [LDAMLoss(digits.cls_num_list)] * 2,
                     optimizer, bf16=False, channels_last=True, sam_rho=sam_rho)


def test_rho_zero_is_the_plain_one_pass_step_bit_for_bit(digits):
    """Every rho 0: one forward a step and the plain step's numbers exactly; rho > 0: two forwards a step."""
    runs = {}
    for name, rho in (("plain", None), ("zero", [0.0, 0.0]), ("sam", [0.05, 0.5])):
        forwards = []
        step = _fused_step(digits, rho, forwards)
        runs[name] = step.epoch(), step.model.state_dict(), len(forwards), len(step.sizes())
    (plain_metrics, plain_state, plain_forwards, steps), zero, sam = runs["plain"], runs["zero"], runs["sam"]
    assert plain_forwards == zero[2] == steps == 4 and sam[2] == 2 * steps
    assert zero[0] == plain_metrics
    assert all(torch.equal(zero[1][k], v) for k, v in plain_state.items())
    assert not torch.allclose(sam[1]["conv1.weight"], plain_state["conv1.weight"], atol=1e-4)


def test_a_step_refuses_runs_with_and_without_sam_and_bad_rho(digits):
    with pytest.raises(ValueError, match=r"runs with sam_rho 0 and > 0 cannot share a step"):
        _fused_step(digits, [0.0, 0.5], [])
    with pytest.raises(ValueError, match=r"sam_rho must be one value >= 0 per run \(2\), got \[0.5\]"):
        _fused_step(digits, [0.5], [])
    with pytest.raises(ValueError, match="sam_rho must be >= 0, got -0.1"):
        RunConfig(dataset="digits", sam_rho=-0.1)


class _Float64(torch.nn.Module):
    """A model computing in float64 on the step's float32 batches: rounding cannot hide a difference."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.double())


def test_fused_runs_of_different_rho_equal_the_runs_trained_apart(digits):
    """Two runs (LDAM at rho 0.5, MM at 0.8) fused as one model, each with its own gradient norm over its slice of
    the fused parameters and its own rho, against each run stepped alone: two epochs, the second at a lower lr and
    re-weighted (DRW). In float64, so that the two agree to rounding, and a norm taken over both runs (which
    moves each run by another amount) fails by far."""
    x, y = to_device(digits.train_images[::5], digits.train_labels[::5], "cpu")  # 98 images: batches of 64 and 34
    x = x[:, :, ::4, ::4].contiguous()  # digits' own 8x8 pixels: float64 convolutions are slow on the CPU
    counts, rhos, seeds = digits.cls_num_list, [0.5, 0.8], [0, 1]
    mm = RunConfig(method="mm-drw", dataset="digits").resolve().loss_params()
    singles = []
    for seed in seeds:
        torch.manual_seed(seed)
        singles.append(build_model("resnet8", digits.num_classes, normed=True))

    def train(model, runs: list[int]):
        model = _Float64(model)
        criteria = [LDAMLoss(counts) if k != 1 else build_loss("mm", counts, **mm) for k in runs]
        for criterion in criteria:  # as the trainer builds them: weighted from the start, the DRW switch copied in
            criterion.weight = torch.ones(len(counts), dtype=torch.float64)
        step = TrainStep(model, [TrainStream(x, y, 64, seeds[k]) for k in runs], criteria,
                         torch.optim.SGD(model.parameters(), 0.05, momentum=0.9, weight_decay=2e-4), bf16=False,
                         channels_last=False, sam_rho=[rhos[k] for k in runs])
        history = [step.epoch()]
        step.set_lr(0.005)
        for criterion in criteria:
            criterion.weight = class_balanced_weights(counts, 0.9999).double()
        history.append(step.epoch())
        return history, model.model.state_dict()

    fused = build_model("resnet8", digits.num_classes, normed=True, runs=2)
    fused.load_state_dict(merge_state_dicts([m.state_dict() for m in singles]))
    fused_history, fused_state = train(fused, [0, 1])
    fused_states = split_state_dict(fused_state, 2)
    for k, single in enumerate(singles):
        history, state = train(single, [k])
        for fused_epoch, epoch in zip(fused_history, history):
            assert [metric[k] for metric in fused_epoch] == pytest.approx([metric[0] for metric in epoch], rel=1e-9)
        for name, tensor in state.items():
            torch.testing.assert_close(fused_states[k][name], tensor, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.slow
def test_a_killed_sam_run_resumes_exactly(tmp_path):
    """A LDAM-DRW run with SAM, killed with SIGKILL after its first checkpoint and resumed, against the same run
    trained straight through in another process: identical results."""
    args = cli_args(quick(method="ldam-drw", sam_rho=0.8, epochs=2, switch_epoch=1, checkpoint_every=1))
    reference = start(args + ["--run-dir", str(tmp_path / "straight")], tmp_path)
    killed = start(args + ["--run-dir", str(tmp_path / "killed")], tmp_path)
    wait_for(checkpointed(tmp_path / "killed"), killed, "the first checkpoint")
    kill(killed)
    assert not run_folder.is_finished(tmp_path / "killed")
    finish(start(args + ["--run-dir", str(tmp_path / "killed")], tmp_path))
    finish(reference)
    same_results(tmp_path / "killed", tmp_path / "straight")
    assert files.read_json(tmp_path / "killed" / run_folder.CONFIG)["config"]["sam_rho"] == 0.8


def test_sam_rho_is_fixed_for_a_run_and_fuses_only_with_other_sam_runs(tmp_path):
    """Another rho on resume is refused (it changes what is computed); runs of rho 0 and > 0 train apart,
    runs of any two rho > 0 fuse."""
    run_dir = tmp_path / "run"
    run_folder.save_checkpoint(run_dir, {"epoch": 1, "config": RunConfig(**quick(sam_rho=0.5)).resolve().to_dict()})
    with pytest.raises(ValueError, match=r"other parameters \(sam_rho: 0.5 -> 0.8; recorded in checkpoint.pt\)"):
        trainer.train(quick(sam_rho=0.8), run_dir)
    with pytest.raises(ValueError, match=r"cannot train fused: they differ in head, SSP pre-training or SAM"):
        trainer.train_many([quick(sam_rho=0.0), quick(sam_rho=0.5)], [tmp_path / "a", tmp_path / "b"])
    assert fusion.fusion_key(RunConfig(**quick(sam_rho=0.5))) == fusion.fusion_key(
        RunConfig(**quick(method="ldam-drw", seed=3, sam_rho=0.8)))
    jobs = plan.plan("beyond", tmp_path / "runs", seeds=[0, 1], settings=["cifar10-exp-100"],
                       methods=["ldam-drw-sam", "mm-drw-sam", "la"], fuse=8, data_roots={None: str(tmp_path)}).jobs
    assert sorted(len(job.run_dirs) for job in jobs) == [2, 4]  # LA apart (linear head, no SAM); the SAM rows fused
    assert {p["sam_rho"] for job in jobs for p in job.params if p["method"] != "la"} == {0.8}


# --- the beyond table's SAM rows (their cells: tests/test_paper.py) ----------------------------------


def test_the_sam_rows_render_beside_the_published_numbers(tmp_path):
    """Finished LDAM-DRW + SAM runs in the beyond table, against Rangwani et al.'s 18.1 on CIFAR-10-LT-100."""
    from helpers.fixture_runs import write_run

    from mmlib.report import cells, tables

    cell = paper.cells("beyond", ["cifar10-exp-100"], ["ldam-drw-sam"])[0]
    for seed, correct in enumerate([[9] * 9 + [0], [8] * 10]):  # 10 test images a class: errors 19 and 20
        write_run(cell.path(tmp_path) / f"seed{seed}", cell.run_params(seed=seed), 10, correct)
    df = cells.gather("beyond", tmp_path)
    md = tables.render(df, "beyond")["md"]
    assert df.loc[df["method"] == "ldam-drw-sam", "seeds"].tolist() == [2, 0, 0, 0, 0, 0, 0, 0]
    assert "| LDAM-DRW + SAM | 19.50 ± 0.71 (n=2) [18.10, +1.40] | missing |" in md
    assert "| MM-DRW (ours) + SAM [equations] | missing |" in md
    assert "no published number: MM with SAM is not in Rangwani et al." in md


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sam_in_a_captured_graph_equals_the_eager_step(tmp_path):
    """Both passes in one captured step: two fused SAM runs over 64 steps with partial batches, the warm-up's lr
    changes and a DRW switch, graphs against eager. cuDNN may pick other algorithms in each: float rounding, which
    SAM at the paper's rho (0.5 to 0.8) amplifies far beyond a plain step's (on the CPU, a fused and a single
    float32 run at rho 0.8 ended 8 steps up to 0.2 apart in their state, the float64 ones equal), so this compares
    at small rho."""
    run = dict(dataset="digits", imb_type="exp", ratio=10.0, arch="resnet8", epochs=4, batch_size=32, lr=0.01,
               warmup_epochs=2, lr_milestones=[3], switch_epoch=2, method="ldam-drw", device="cuda", quiet=True)
    runs = {mode: trainer.train_many([{**run, "compile": mode, "sam_rho": 0.05},
                                     {**run, "compile": mode, "sam_rho": 0.1, "seed": 1}],
                                    [tmp_path / mode / "a", tmp_path / mode / "b"]) for mode in ("off", "graphs")}
    for k in range(2):
        for a, b in zip(runs["graphs"][k]["history"], runs["off"][k]["history"]):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        state = torch.load(tmp_path / "graphs" / "ab"[k] / run_folder.CHECKPOINT, weights_only=False)["model"]
        reference = torch.load(tmp_path / "off" / "ab"[k] / run_folder.CHECKPOINT, weights_only=False)["model"]
        for name, tensor in state.items():
            torch.testing.assert_close(tensor, reference[name], rtol=1e-2, atol=1e-3, msg=name)


def test_a_sam_runs_figures_say_sam_and_its_rho():
    from mmlib.report import figures

    result = {"config": {"config": {"method": "ldam-drw", "mm_variant": "equations", "seed": 1, "arch": "resnet8",
                                    "epochs": 2, "sam_rho": 0.8}},
              "class_counts": {"description": "digits exp ratio 10: 10 classes"},
              "history": [{"epoch": e, "lr": 0.1, "train_loss": 1.0 / e, "train_error": 50.0 / e, "test_error": 60.0 / e,
                           "seconds": 1.0} for e in (1, 2)]}
    title = figures.plot_history(result)._suptitle.get_text()
    assert title == "Learning curves of ldam-drw + SAM rho=0.8, seed 1, resnet8, 2 epochs: digits exp ratio 10"


def test_the_run_summary_shows_sams_rho():
    from mmlib.report import results

    run = {"run_dir": "r", "final": {"error": 20.0, "epoch": 2, "group_error": {"many": 1.0, "medium": 2.0, "few": 3.0}},
           "best": {"error": 19.0, "epoch": 1}}
    config = {"method": "ldam-drw", "mm_variant": "equations", "seed": 0}
    runs = [{**run, "config": {"config": {**config, "sam_rho": rho}}} for rho in (0.8, 0.0)]
    runs.append({**run, "config": {"config": config}})  # recorded before sam_rho existed: plain SGD
    assert results.summarize_runs(runs)["sam_rho"].tolist() == [0.8, 0.0, 0.0]
