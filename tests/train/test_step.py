"""The training step (mmlib.train.step): its SGD update, its batched gather and loop against the plain loop, the graph
path's self-check (on the CPU with eager stand-ins for the graphs), graphs on CUDA."""

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers.tiny import quick

import mmlib.train.step
from mmlib.choices import METHODS, get_method
from mmlib.config import RunConfig
from mmlib.data.pipeline import TrainStream, to_device
from mmlib.errors import StepCheckError
from mmlib.report import results
from mmlib.train import fusion, provenance, run_folder, trainer
from mmlib.train.losses import CrossEntropyLoss, LDAMLoss, build_loss, class_balanced_weights
from mmlib.train.metrics import Metrics
from mmlib.train.models import build_model, merge_state_dicts
from mmlib.train.step import TrainStep, resolve_compile, sgd_update, step_difference


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


def _fused(runs: int, num_classes: int, normed: bool = True) -> torch.nn.Module:
    singles = []
    for seed in range(runs):
        torch.manual_seed(seed)
        singles.append(build_model("resnet8", num_classes, normed=normed))
    model = build_model("resnet8", num_classes, normed=normed, runs=runs)
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
    before = {name: t.clone() for name, t in step.state().items()}
    step.warm_up(486 - 3 * 128)  # an index past the draws would fail: each step starts where the first did
    assert all(p.grad is not None for p in step.params)  # the steps ran
    for name, tensor in step.state().items():
        assert torch.equal(tensor, before[name]), name
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
        trainer.train(dict(method="erm", dataset="digits", arch="resnet8", epochs=2, quiet=True, compile="graphs"),
                     tmp_path / "r")
    assert not (tmp_path / "r").exists()


# --- the graph path's self-check, on the CPU: eager functions stand in for captured graphs ------------

BUILT_LR = 0.1  # the optimizer's lr when the step is built; the schedule then sets half of it (a warm-up's)


def correct_stand_in(step, size):
    """A fast step that computes what the eager step does."""
    return lambda: step.eager_step(size)


def stale_lr(step, size):
    """Reads the learning rate the step was built with, as a graph that captured a since-replaced lr tensor would."""
    def run():
        scheduled = step.neg_lr.clone()
        step.neg_lr.fill_(-BUILT_LR)
        step.eager_step(size)
        step.neg_lr.copy_(scheduled)
    return run


def skips_batchnorm(step, size):
    """Leaves BatchNorm's running statistics and batch count as they were."""
    def run():
        statistics = [b.clone() for b in step.model.buffers()]
        step.eager_step(size)
        for buffer, value in zip(step.model.buffers(), statistics):
            buffer.copy_(value)
    return run


def cannot_capture(step, size):
    raise RuntimeError("operation not permitted when stream is capturing\nmore detail")


@pytest.fixture
def cpu_as_cuda(monkeypatch):
    """compile auto or graphs takes the graph path on the CPU, the given stand-in capturing each fast step."""
    def use(stand_in):
        monkeypatch.setattr(mmlib.train.step, "resolve_compile", lambda mode, device: "graphs" if mode in ("auto", "graphs") else mode)
        monkeypatch.setattr(TrainStep, "_fast_step", stand_in)
    return use


def small_step(digits, compile: str) -> TrainStep:
    """One MM run on 136 digits in batches of 64: two full steps and a partial one (8) an epoch."""
    x, y = to_device(digits.train_images[:136], digits.train_labels[:136], "cpu")
    torch.manual_seed(0)
    model = build_model("resnet8", digits.num_classes, normed=True)
    criterion = build_loss("mm", digits.cls_num_list, **RunConfig(dataset="digits").resolve().loss_params())
    criterion.weight = torch.ones(digits.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), BUILT_LR, momentum=0.9, weight_decay=2e-4)
    step = TrainStep(model, [TrainStream(x, y, 64, 0)], [criterion], optimizer, bf16=False, channels_last=False,
                     compile=compile)
    step.set_lr(BUILT_LR / 2)
    return step


def epoch_and_state(step: TrainStep) -> tuple:
    return step.epoch(), {name: t.clone() for name, t in step.state().items()}


@pytest.fixture(scope="module")
def eager(digits) -> tuple:
    """The eager step's epoch of small_step: its results and final state."""
    return epoch_and_state(small_step(digits, "off"))


def assert_same_epoch(a: tuple, b: tuple) -> None:
    assert a[0] == b[0]
    for name, tensor in a[1].items():
        assert torch.equal(tensor, b[1][name]), name


def test_a_fast_step_that_matches_the_eager_step_is_kept(digits, eager, cpu_as_cuda):
    cpu_as_cuda(correct_stand_in)
    step = small_step(digits, "auto")
    assert step.mode == "graphs" and step.paths == []
    checked = epoch_and_state(step)
    assert [(c["batch"], c["difference"]) for c in step.checks] == [(64, 0.0), (8, 0.0)]
    assert sorted(step.fast_steps) == [8, 64]
    assert step.paths == [{"path": "graphs", "reason": "each captured step's first replay matched the eager step from "
                                                        "the same state (tolerance 0.001)"}]
    assert_same_epoch(checked, eager)


@pytest.mark.parametrize("fault, where", [(stale_lr, "parameter "), (skips_batchnorm, "buffer ")])
def test_a_faulty_fast_step_is_caught_and_the_run_continues_on_the_eager_step(digits, eager, cpu_as_cuda, fault, where):
    cpu_as_cuda(fault)
    step = small_step(digits, "auto")
    with pytest.warns(RuntimeWarning, match="the CUDA graph step over 64 samples differs from the eager step") as caught:
        checked = epoch_and_state(step)
    assert len(caught) == 1
    assert_same_epoch(checked, eager)  # the eager step's result stood, and the others ran eager
    assert len(step.checks) == 1 and step.checks[0]["difference"] > 0.5 and step.checks[0]["at"].startswith(where)
    assert step.mode == "off" and step.fast_steps == {}
    assert [p["path"] for p in step.paths] == ["eager"]
    assert step.paths[0]["reason"].startswith("the CUDA graph step over 64 samples differs from the eager step "
                                              "from the same state by ") and f"at {where}" in step.paths[0]["reason"]


def test_explicit_graphs_stop_at_a_faulty_fast_step(digits, cpu_as_cuda):
    cpu_as_cuda(stale_lr)
    step = small_step(digits, "graphs")
    with pytest.raises(StepCheckError, match=r"^compile='graphs': the CUDA graph step over 64 samples differs .*; train "
                                             r"with compile='auto' \(eager after a failed check\) or 'off'$"):
        step.epoch()


def test_a_capture_error_continues_on_the_eager_step(digits, eager, cpu_as_cuda):
    cpu_as_cuda(cannot_capture)
    step = small_step(digits, "auto")
    with pytest.warns(RuntimeWarning, match=r"^the CUDA graph step over 64 samples could not be captured \(operation not "
                                            r"permitted when stream is capturing\); this run continues on the eager step$"):
        checked = epoch_and_state(step)
    assert_same_epoch(checked, eager)
    assert step.checks == [] and [p["path"] for p in step.paths] == ["eager"]


def test_step_difference_is_each_tensors_error_relative_to_the_eager_change():
    before = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    eager = {"w": torch.tensor([1.0, 2.5]), "n": torch.tensor(4)}  # a change of norm 0.5
    assert step_difference(before, eager, {"w": torch.tensor([1.0, 2.5]), "n": torch.tensor(4)}) == (0.0, "")
    assert step_difference(before, eager, {"w": torch.tensor([1.3, 2.9]), "n": torch.tensor(4)}) == (pytest.approx(1.0), "w")
    assert step_difference(before, eager, {"w": torch.tensor([1.0, 2.5]), "n": torch.tensor(3)}) == (math.inf, "n")
    assert step_difference(before, eager, {"w": torch.tensor([1.0, math.nan]), "n": torch.tensor(4)}) == (math.inf, "w")
    diverged = {"w": torch.tensor([1.0, math.nan]), "n": torch.tensor(4)}  # left to the trainer's non-finite check
    assert step_difference(before, diverged, {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(4)}) == (0.0, "")
    # two fused runs, the second diverged: the first's elements are still compared (an error of norm 0.5 again)
    fused_before, fused_eager = {"w": torch.tensor([1.0, 2.0, 1.0, 2.0])}, {"w": torch.tensor([1.0, 2.5, math.nan, math.nan])}
    assert step_difference(fused_before, fused_eager, {"w": torch.tensor([1.3, 2.9, math.nan, math.nan])}) == (
        pytest.approx(1.0), "w")


def test_replaced_weights_or_optimizer_state_are_refused(digits):
    step = small_step(digits, "off")
    step.criteria[0].weight = torch.full((digits.num_classes,), 2.0)  # copied in: fine
    step.epoch()
    step.criteria[0].weight = None
    with pytest.raises(RuntimeError, match="loss 0's class weights were replaced"):
        step.epoch()
    step = small_step(digits, "off")
    step.optimizer.load_state_dict(step.optimizer.state_dict())
    with pytest.raises(RuntimeError, match=r"the optimizer's state was replaced \(load_state_dict\)"):
        step.epoch()


def test_records_keep_every_distinct_step_path_across_a_resume():
    graphs, eager = {"path": "graphs", "reason": "checked"}, {"path": "eager", "reason": "the check failed"}
    records = Metrics(2, {})
    records.note_step([graphs])
    records.note_step([graphs])
    assert [records.of_run(k)["step"] for k in (0, 1)] == [[graphs], [graphs]]
    resumed = Metrics(1, {})
    resumed.load([{**records.of_run(0), "epoch": 1}])
    resumed.note_step([eager])
    assert resumed.of_run(0)["step"] == [graphs, eager]
    older = Metrics(1, {})
    older.load([{"epoch": 1, "history": [], "final": None, "best": None}])  # a checkpoint from before the record
    assert older.of_run(0)["step"] == []


@pytest.mark.slow
def test_a_run_through_a_failed_check_finishes_and_records_its_step(tmp_path, cpu_as_cuda):
    cpu_as_cuda(skips_batchnorm)
    with pytest.warns(RuntimeWarning, match="the CUDA graph step over 128 samples differs"):
        result = trainer.train(quick(method="ldam-drw"), tmp_path / "run")
    assert run_folder.is_finished(tmp_path / "run")
    [path] = result["step"]
    assert path["path"] == "eager" and "at buffer " in path["reason"]
    assert torch.load(tmp_path / "run" / run_folder.CHECKPOINT, weights_only=False)["step"] == [path]
    assert json.loads(results.result_files(tmp_path / "run")[run_folder.METRICS])["step"] == [path]
    assert results.summarize_runs([result])["step"].tolist() == ["eager"]  # train.ipynb's summary


# --- the device check's environment -------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
JUPYTER = ("nbformat", "papermill", "jupyter_client")


@pytest.mark.slow
def test_the_device_check_and_a_sweep_run_without_jupyter(tmp_path):
    """The GPU machine has no papermill, nbformat or Jupyter: the step, the trainer, fusion, the device check's
    benchmarks and the test files it runs import without them, and a sweep trains with --runner python (its
    notebook runner refused in one line). A sitecustomize blocks them in every process started here."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\n" + "".join(f"sys.modules[{n!r}] = None\n" for n in JUPYTER))
    path = os.pathsep.join([str(blocker)] + [str(ROOT / d) for d in ("", "benchmarks", "tests", "tests/train")])
    env = {**os.environ, "PYTHONPATH": path}
    code = ("import mmlib.train.step, mmlib.train.trainer, mmlib.train.fusion, mmlib.sweep.plan, mmlib.sweep.jobs, gpu_check, throughput, "
            "test_step, test_losses, test_models, test_sam\ntry:\n    import nbformat\nexcept ImportError as error:\n    print(error)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "import of nbformat halted; None in sys.modules"  # the blocker does block
    sweep = [sys.executable, "-m", "mmlib", "sweep", "quick", "--settings", "digits-exp-10", "--methods", "erm",
             "--epochs", "1", "--set", "arch=resnet8", "--out", str(tmp_path / "runs")]
    refused = subprocess.run(sweep, capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and refused.stderr.endswith("without them use --runner python\n")
    done = subprocess.run(sweep + ["--runner", "python"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = tmp_path / "runs" / "quick" / "digits-exp-10" / "erm" / "seed0"
    assert run_folder.is_finished(run_dir) and "final" in (run_dir / "train.log").read_text()


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_device_check_reports_pytests_outcomes_and_each_self_checks_difference(tmp_path):
    gpu_check = load_benchmark("gpu_check")
    (tmp_path / "test_sample.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.mark.parametrize("method", ["erm", "mm"])
        def test_every_methods_captured_step_passes_its_check(method, record_property):
            record_property("largest_difference", f"1e-06 at parameter fc.weight ({method})")
            assert method == "erm", "the check failed"

        def test_skipped():
            pytest.skip("needs CUDA")
    """))
    junit = tmp_path / "tests.xml"
    subprocess.run([sys.executable, "-m", "pytest", str(tmp_path / "test_sample.py"), "-q", "-p", "no:cacheprovider",
                    f"--junitxml={junit}", "-o", "junit_family=xunit1"], cwd=tmp_path, capture_output=True)
    lines = gpu_check.cuda_tests_summary(junit)
    assert lines[0] == "1 passed, 1 failed, 1 skipped"
    assert lines[1].startswith("  FAILED test_every_methods_captured_step_passes_its_check[mm]: AssertionError: the check failed")
    assert [line.split() for line in lines[3:]] == [
        ["[erm]", "passed", "largest", "difference", "1e-06", "at", "parameter", "fc.weight", "(erm)"],
        ["[mm]", "failed", "largest", "difference", "1e-06", "at", "parameter", "fc.weight", "(mm)"]]


def test_the_device_check_compares_its_figures_with_the_targets(tmp_path):
    gpu_check = load_benchmark("gpu_check")
    rows = [{"path": "graphs", "runs": k, "images_per_second": 1000.0 * ratio, "ratio": ratio, "peak_mib": 100.0 * k,
             "seconds_200_epochs": 60.0} for k, ratio in ((1, 12.0), (8, 39.5))]
    (tmp_path / "rows.json").write_text(json.dumps({"dataset": "c10", "settings": {}, "reference_images_per_second": 1000.0,
                                                    "rows": rows}))
    lines = gpu_check.throughput_summary(tmp_path / "rows.json")
    assert lines[-3:] == ["target: graphs, 1 run(s) >= 10x the reference loop -> 12.0x: met",
                          "target: graphs, 8 run(s) >= 40x the reference loop -> 39.5x: NOT met",
                          "target: graphs, 16 run(s) >= 60x the reference loop -> not measured"]
    step = [{"path": "graphs", "reason": "checked"}]
    (tmp_path / "real.log").write_text("loading\n" + json.dumps({
        "group": "alone", "wall": 20.0, "epoch_seconds": [5.0, 0.2, 0.3, 0.25],
        "runs": [{"name": "mm-drw-equations", "final": 30.0, "best": 29.0, "step": step}]}) + "\n")
    lines = gpu_check.real_summary(tmp_path / "real.log")
    assert "then median 0.25 s, so 200 epochs ~ 55 s" in lines[0]  # 5 + 199 x 0.25
    assert lines[1] == "target: a 200-epoch CIFAR-10-LT-100 run <= 60 s -> ~55 s: met"
    assert lines[2].endswith("step: graphs (checked)")


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
@pytest.mark.slow
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
    return torch.load(run_dir / run_folder.CHECKPOINT, weights_only=False)["model"]


@cuda
def test_graph_path_equals_eager_over_64_steps_with_a_drw_switch_and_partial_batches(tmp_path):
    eager = trainer.train({**CUDA_RUN, "compile": "off"}, tmp_path / "eager")
    graphs = trainer.train({**CUDA_RUN, "compile": "graphs"}, tmp_path / "graphs")
    # cuDNN autotuning may pick other convolution algorithms in each run: float rounding, grown over 64 steps.
    for a, b in zip(graphs["history"], eager["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        assert a["lr"] == b["lr"]
    reference = _final_state(tmp_path / "eager")
    for name, tensor in _final_state(tmp_path / "graphs").items():
        torch.testing.assert_close(tensor, reference[name], rtol=1e-2, atol=1e-3, msg=name)
    moved = (torch.tensor(graphs["final"]["confusion"]) - torch.tensor(eager["final"]["confusion"])).abs().sum()
    assert moved <= 12  # of 2 x 597 entries: a few test predictions flip
    assert [p["path"] for p in graphs["step"]] == ["graphs"]
    assert eager["step"] == [{"path": "eager", "reason": "compile='off'"}]


@cuda
def test_four_fused_runs_equal_separate_runs_on_cuda(tmp_path):
    variants = [{**CUDA_RUN, "compile": "graphs", "seed": 0},
                {**CUDA_RUN, "compile": "graphs", "seed": 1, "cb_beta": 0.999},
                {**CUDA_RUN, "compile": "graphs", "method": "mm-drw", "seed": 2},
                {**CUDA_RUN, "compile": "graphs", "method": "mm-drw", "mm_variant": "released", "seed": 3}]
    fused = trainer.train_many(variants, [tmp_path / f"f{k}" for k in range(4)])
    for k, params in enumerate(variants):
        alone = trainer.train(params, tmp_path / f"alone{k}")
        for a, b in zip(fused[k]["history"], alone["history"]):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        reference = _final_state(tmp_path / f"alone{k}")
        for name, tensor in _final_state(tmp_path / f"f{k}").items():  # grouped vs plain convolutions
            torch.testing.assert_close(tensor, reference[name], rtol=1e-2, atol=1e-3, msg=name)


def cuda_method_step(digits, method_name: str, bf16: bool) -> TrainStep:
    """Two runs (seeds 0, 1) of a method, fused, on CUDA with compile='graphs'; class-balanced weights and
    re-sampling on where the method ever uses them, so that the graphs capture them."""
    method = get_method(method_name)
    config = RunConfig(method=method_name, dataset="digits").resolve()
    x, y = to_device(digits.train_images, digits.train_labels, "cuda")
    model = _fused(2, digits.num_classes, normed=method.normed).to("cuda", memory_format=torch.channels_last)
    weights = class_balanced_weights(digits.cls_num_list).cuda()
    streams = [TrainStream(x, y, 128, seed) for seed in (0, 1)]
    criteria = [build_loss(method.loss, digits.cls_num_list, **config.loss_params()).cuda() for _ in streams]
    for stream, criterion in zip(streams, criteria):
        criterion.weight = weights if method.reweight != "never" else torch.ones_like(weights)
        stream.set_class_weights(weights if method.resample != "never" else None)
    optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=2e-4)
    return TrainStep(model, streams, criteria, optimizer, bf16=bf16, channels_last=True, compile="graphs")


@cuda
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("method", list(METHODS))
def test_every_methods_captured_step_passes_its_check(digits, method, bf16, record_property):
    """486 images in batches of 128: the full and the partial batch's graphs, each checked against the eager step
    (compile='graphs': a failed check raises, naming the tensor and the difference)."""
    step = cuda_method_step(digits, method, bf16)
    losses, _, bad = step.epoch()
    assert bad == [-1, -1] and all(math.isfinite(v) for v in losses)
    assert [c["batch"] for c in step.checks] == [128, 486 - 3 * 128]
    assert [p["path"] for p in step.paths] == ["graphs"]
    worst = max(step.checks, key=lambda c: c["difference"])
    record_property("largest_difference", f"{worst['difference']:.3g} at {worst['at']} (tolerance {worst['tolerance']:g})")


class CountingLoss(CrossEntropyLoss):
    """Cross-entropy times the number of calls so far: Python state that a captured graph freezes at its value
    during the capture (the fourth call: three warm-up steps run before it), while the eager step reads the next."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, logits, target):
        self.calls += 1
        return super().forward(logits, target) * self.calls


@cuda
@pytest.mark.parametrize("compile", ["auto", "graphs"])
def test_a_real_graph_that_differs_from_the_eager_step_is_caught(digits, compile):
    x, y = to_device(digits.train_images, digits.train_labels, "cuda")
    model = _fused(1, digits.num_classes).cuda()
    step = TrainStep(model, [TrainStream(x, y, 128, 0)], [CountingLoss()], torch.optim.SGD(model.parameters(), 0.1),
                     bf16=False, channels_last=True, compile=compile)
    if compile == "graphs":
        with pytest.raises(StepCheckError, match="the CUDA graph step over 128 samples differs from the eager step"):
            step.epoch()
        return
    with pytest.warns(RuntimeWarning, match="the CUDA graph step over 128 samples differs from the eager step"):
        losses, _, _ = step.epoch()
    assert step.checks[0]["difference"] > 0.1  # the replay's loss is 4/5 of the eager step's
    assert [p["path"] for p in step.paths] == ["eager"] and step.fast_steps == {}
    assert math.isfinite(losses[0])


@cuda
def test_deterministic_cuda_runs_set_cublas_and_repeat_exactly(tmp_path):
    """In a fresh process without CUBLAS_WORKSPACE_CONFIG (the trainer sets it), two deterministic runs agree bit for bit."""
    code = textwrap.dedent(f"""
        import torch
        from mmlib.train import trainer
        states = []
        for name in ("a", "b"):
            trainer.train({dict(CUDA_RUN, deterministic=True)!r}, {str(tmp_path)!r} + "/" + name)
            states.append(torch.load({str(tmp_path)!r} + "/" + name + "/checkpoint.pt", weights_only=False)["model"])
        assert all(torch.equal(states[0][k], states[1][k]) for k in states[0]), "the two runs differ"
    """)
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]


def test_deterministic_cuda_sets_the_cublas_workspace_or_refuses_with_the_remedy(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    cuda_device = torch.device("cuda")
    provenance.deterministic_cublas(False, cuda_device)
    provenance.deterministic_cublas(True, torch.device("cpu"))
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(ValueError, match=r"^deterministic=True on CUDA needs CUBLAS_WORKSPACE_CONFIG=:4096:8 set before "
                                         r"CUDA starts, .*: export CUBLAS_WORKSPACE_CONFIG=:4096:8 and start it again"):
        provenance.deterministic_cublas(True, cuda_device)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    provenance.deterministic_cublas(True, cuda_device)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own setting stands
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    provenance.deterministic_cublas(True, cuda_device)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
