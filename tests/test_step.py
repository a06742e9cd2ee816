"""The training step (mmlib.step): its SGD update, its batched gather and loop against the plain loop, graphs on CUDA."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmlib import fusion, rundir, training
from mmlib.config import RunConfig
from mmlib.losses import LDAMLoss, build_loss
from mmlib.models import build_model, merge_state_dicts
from mmlib.pipeline import TrainStream, to_device
from mmlib.step import TrainStep, resolve_compile, sgd_update

def cuda(test):
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")(test))


def test_sgd_update_equals_torch_sgd_on_the_same_gradients():
    torch.manual_seed(0)
    ours = [torch.randn(5, 3), torch.randn(7)]
    theirs = [p.clone().requires_grad_() for p in ours]
    reference = torch.optim.SGD(theirs, lr=0.1, momentum=0.9, weight_decay=2e-4)
    buffers = [torch.zeros_like(p) for p in ours]
    neg_lr = torch.tensor(-0.1)
    for step, lr in enumerate([0.1, 0.1, 0.05, 1e-3]):  # the first step: SGD clones the gradient
        grads = [torch.randn_like(p) for p in ours]
        for p, g in zip(theirs, grads):
            p.grad = g.clone()
        for group in reference.param_groups:
            group["lr"] = lr
        reference.step()
        neg_lr.fill_(-lr)
        sgd_update(ours, [g.clone() for g in grads], buffers, neg_lr, momentum=0.9, weight_decay=2e-4)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b.detach(), rtol=1e-6, atol=1e-7)
        for buf, p in zip(buffers, theirs):
            torch.testing.assert_close(buf, reference.state[p]["momentum_buffer"], rtol=1e-6, atol=1e-7)


def _fused(runs: int, num_classes: int) -> torch.nn.Module:
    singles = []
    for seed in range(runs):
        torch.manual_seed(seed)
        singles.append(build_model("resnet8", num_classes, normed=True))
    model = build_model("resnet8", num_classes, normed=True, runs=runs)
    model.load_state_dict(merge_state_dicts([m.state_dict() for m in singles]))
    return model


def test_an_epoch_equals_the_plain_loop_over_each_streams_batches(digits):
    """The step's one batched gather, its K loss calls, SGD update and metrics, against the loop the trainer
    ran before: each stream's own batches concatenated along channels, torch.optim.SGD, metrics summed by hand.
    Two runs with different losses and class weights; 486 images in batches of 64 end on a partial batch.
    The learning rate is a power of two, so -lr times the momentum buffer is exact and the two agree bit
    for bit (at other rates the step's update rounds the product on its own: float rounding)."""
    x, y = to_device(digits.train_images, digits.train_labels, "cpu")
    counts, weights = digits.cls_num_list, torch.linspace(0.5, 2.0, digits.num_classes)

    def setup():
        model = _fused(2, digits.num_classes)
        streams = [TrainStream(x, y, 64, seed) for seed in (3, 4)]
        streams[1].set_class_weights(weights)  # re-sampling in one run
        released_mm = RunConfig(method="mm-drw", dataset="digits", mm_variant="released").resolve().loss_params()
        criteria = [LDAMLoss(counts), build_loss("mm", counts, **released_mm)]
        criteria[0].weight = weights  # re-weighting in the other
        optimizer = torch.optim.SGD(model.parameters(), 2**-7, momentum=0.9, weight_decay=2e-4)
        return model, streams, criteria, optimizer

    model, streams, criteria, optimizer = setup()
    losses, errors, bad = TrainStep(model, streams, criteria, optimizer, bf16=False, channels_last=True).epoch()

    plain, streams, criteria, optimizer = setup()
    loss_sum, wrong = torch.zeros(2), torch.zeros(2)
    for batches in zip(*(s.epoch() for s in streams)):
        xb = torch.cat([b[0] for b in batches], dim=1).contiguous(memory_format=torch.channels_last)
        yb = torch.stack([b[1] for b in batches], dim=1)
        logits = plain(xb)
        step_losses = torch.stack([c(logits[:, k], yb[:, k]) for k, c in enumerate(criteria)])
        optimizer.zero_grad()
        step_losses.sum().backward()
        optimizer.step()
        loss_sum += step_losses.detach() * len(yb)
        wrong += (logits.detach().argmax(-1) != yb).sum(0)
    n = len(y)
    assert n % 64 != 0
    assert losses == (loss_sum / n).tolist()
    assert errors == (100 * wrong / n).tolist()
    assert bad == [-1, -1]
    for (name, a), b in zip(model.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name


def test_progress_counts_every_step_and_image_of_the_epoch(digits):
    x, y = to_device(digits.train_images, digits.train_labels, "cpu")
    model = _fused(2, digits.num_classes)
    streams = [TrainStream(x, y, 128, seed) for seed in (0, 1)]
    step = TrainStep(model, streams, [LDAMLoss(digits.cls_num_list)] * 2, torch.optim.SGD(model.parameters(), 0.01),
                     bf16=False, channels_last=False)
    calls = []
    step.epoch(lambda s, images: calls.append((s, images)))
    assert calls == [(1, 256), (2, 256), (3, 256), (4, 2 * (486 - 3 * 128))]


def test_warm_up_before_a_graph_capture_leaves_no_trace(digits):
    """The steps run before a capture are undone: parameters, BatchNorm statistics, momentum, metrics, step index."""
    x, y = to_device(digits.train_images, digits.train_labels, "cpu")
    model = _fused(2, digits.num_classes)
    step = TrainStep(model, [TrainStream(x, y, 128, seed) for seed in (0, 1)], [LDAMLoss(digits.cls_num_list)] * 2,
                     torch.optim.SGD(model.parameters(), 0.1, momentum=0.9), bf16=False, channels_last=False)
    step.epoch()  # momentum and statistics away from their initial values
    step.step_index.fill_(3)  # where the partial batch's graph is captured: the epoch's last step
    before = [t.clone() for t in step._state()]
    step._warm_up(486 - 3 * 128)  # an index past the draws would fail: each step starts where the first did
    assert all(p.grad is not None for p in step.params)  # the steps ran
    for a, b in zip(step._state(), before):
        assert torch.equal(a, b)
    assert len(before) == len(step.params) + len(list(model.buffers())) + len(step.params) + 4


def test_compile_modes_and_their_refusals():
    assert resolve_compile("auto", torch.device("cpu")) == "off"
    assert resolve_compile("auto", torch.device("cuda")) == "graphs"
    assert resolve_compile("reduce-overhead", torch.device("cpu")) == "reduce-overhead"
    with pytest.raises(ValueError, match="compile='graphs' needs a CUDA device"):
        resolve_compile("graphs", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown compile 'fast'"):
        resolve_compile("fast", torch.device("cpu"))
    with pytest.raises(ValueError, match="compile='graphs' needs a CUDA device, got device='cpu'"):
        RunConfig(dataset="digits", device="cpu", compile="graphs")
    with pytest.raises(ValueError, match="unknown compile 'graph'; valid: auto, off, graphs"):
        RunConfig(dataset="digits", compile="graph")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is absent")
def test_graphs_without_cuda_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="compile='graphs' needs a CUDA device"):
        training.run(dict(method="erm", dataset="digits", arch="resnet8", epochs=2, quiet=True, compile="graphs"),
                     tmp_path / "r")
    assert not (tmp_path / "r").exists()


# --- the device check's environment -------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
JUPYTER = ("nbformat", "papermill", "jupyter_client")


@pytest.mark.slow
def test_the_device_checks_modules_import_without_jupyter():
    """The GPU machine has no papermill, nbformat or Jupyter: the step, the trainer, fusion, the device check's
    benchmarks and the test files it runs import without them (and the blocker does block: sweeps cannot)."""
    code = "\n".join([
        "import sys",
        *(f"sys.modules[{name!r}] = None" for name in JUPYTER),
        "import mmlib.step, mmlib.training, mmlib.fusion, gpu_check, throughput, test_step, test_losses, test_models",
        "try:",
        "    import mmlib.sweeps",
        "except ImportError as error:",
        "    print(error)",
    ])
    path = os.pathsep.join(str(ROOT / d) for d in ("", "benchmarks", "tests"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "import of nbformat halted; None in sys.modules"


# --- sweep --fuse auto ----------------------------------------------------------------------


def test_fuse_from_curve_takes_the_fastest_k_that_fits_the_free_memory():
    curve = [{"runs": 1, "images_per_second": 100.0, "peak_mib": 500.0},
             {"runs": 2, "images_per_second": 180.0, "peak_mib": 900.0},
             {"runs": 4, "images_per_second": 300.0, "peak_mib": 1700.0},
             {"runs": 8, "images_per_second": 290.0, "peak_mib": 3300.0}]
    assert fusion.fuse_from_curve(curve, 10_000 * 2**20) == 4  # K = 8 fits but is slower
    assert fusion.fuse_from_curve(curve, 2_200 * 2**20) == 4  # 1700 <= 0.8 * 2200
    assert fusion.fuse_from_curve(curve, 2_000 * 2**20) == 2
    assert fusion.fuse_from_curve(curve, 100 * 2**20) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto means 1 only without CUDA")
def test_cli_fuse_auto_is_one_run_a_model_on_the_cpu(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mmlib", "sweep", "quick", "--settings", "digits-exp-10", "--seeds", "0", "1",
         "--methods", "erm", "--out", str(tmp_path), "--fuse", "auto", "--dry-run"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    assert out[:2] == ["--fuse auto: up to 1 runs a fused model", "quick: 2 runs to do in 2 notebooks, 0 finished runs skipped"]


def test_cli_bad_fuse_is_one_clear_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mmlib", "sweep", "quick", "--fuse", "many", "--dry-run"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "argument --fuse: must be a number of runs or auto, got 'many'" in done.stderr


# --- CUDA only ------------------------------------------------------------------------------

# 486 images in batches of 32: 15 full steps and a partial one (6 images) an epoch; 4 epochs are 64 steps,
# with the warm-up's lr changes and the DRW switch at epoch 3.
CUDA_RUN = dict(dataset="digits", imb_type="exp", ratio=10.0, arch="resnet8", epochs=4, batch_size=32, lr=0.01,
                warmup_epochs=2, lr_milestones=[3], switch_epoch=2, method="ldam-drw", device="cuda", quiet=True)


def _final_state(run_dir):
    return torch.load(run_dir / rundir.CHECKPOINT, weights_only=False)["model"]


@cuda
def test_graph_path_equals_eager_over_64_steps_with_a_drw_switch_and_partial_batches(tmp_path):
    eager = training.run({**CUDA_RUN, "compile": "off"}, tmp_path / "eager")
    graphs = training.run({**CUDA_RUN, "compile": "graphs"}, tmp_path / "graphs")
    # cuDNN autotuning may pick other convolution algorithms in each run: float rounding, grown over 64 steps.
    for a, b in zip(graphs["history"], eager["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        assert a["lr"] == b["lr"]
    reference = _final_state(tmp_path / "eager")
    for name, tensor in _final_state(tmp_path / "graphs").items():
        torch.testing.assert_close(tensor, reference[name], rtol=1e-2, atol=1e-3, msg=name)
    moved = (torch.tensor(graphs["final"]["confusion"]) - torch.tensor(eager["final"]["confusion"])).abs().sum()
    assert moved <= 12  # of 2 x 597 entries: a few test predictions flip


@cuda
def test_four_fused_runs_equal_separate_runs_on_cuda(tmp_path):
    variants = [{**CUDA_RUN, "compile": "graphs", "seed": 0},
                {**CUDA_RUN, "compile": "graphs", "seed": 1, "cb_beta": 0.999},
                {**CUDA_RUN, "compile": "graphs", "method": "mm-drw", "seed": 2},
                {**CUDA_RUN, "compile": "graphs", "method": "mm-drw", "mm_variant": "released", "seed": 3}]
    fused = training.run_many(variants, [tmp_path / f"f{k}" for k in range(4)])
    for k, params in enumerate(variants):
        alone = training.run(params, tmp_path / f"alone{k}")
        for a, b in zip(fused[k]["history"], alone["history"]):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        reference = _final_state(tmp_path / f"alone{k}")
        for name, tensor in _final_state(tmp_path / f"f{k}").items():  # grouped vs plain convolutions
            torch.testing.assert_close(tensor, reference[name], rtol=1e-2, atol=1e-3, msg=name)
