"""Training under the LDAM-DRW protocol: one run, or K runs trained at once as one fused model.

``run(config, run_dir)`` trains a run (resuming it from its checkpoint if there is one) and returns
its results. ``run_many(configs, run_dirs)`` trains runs that differ only in seeds, loss
hyper-parameters or method (same head) as one model built of K grouped networks
(mmlib.models, runs=K): each run keeps its own initialisation, data order, augmentation, class
weights and BatchNorm statistics, so it trains as it would alone, and lands in its own run directory.

The step itself is mmlib.step.TrainStep (eager, or whole-step CUDA graphs): no host sync per step;
losses and errors accumulate on the device and are read once an epoch.
"""

import contextlib
import dataclasses
import hashlib
import json
import math
import platform
import subprocess
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import mmlib
from mmlib import rundir
from mmlib.config import RESUMABLE_CHANGES, RunConfig
from mmlib.data import ImbalancedDataset, cache_dir, load_dataset
from mmlib.errors import CorruptFileError, NonFiniteLossError
from mmlib.losses import CrossEntropyLoss, build_loss, class_balanced_weights, log_prior
from mmlib.methods import active, get_method
from mmlib.models import build_model, merge_state_dicts, split_state_dict
from mmlib.pipeline import TrainStream, eval_batches, to_device
from mmlib.records import Records, TensorBoard
from mmlib.step import TrainStep, resolve_compile

# Parameters that may differ between runs trained as one fused model.
FUSABLE = {
    "method", "seed", "data_seed", "s", "max_m", "margin", "delta_neg", "beta", "mm_variant", "tau",
    "focal_gamma", "cb_beta", "sam_rho", "quiet", "tensorboard",
}


def learning_rate(config: RunConfig, epoch: int) -> float:
    """The learning rate of 0-based ``epoch``: linear warm-up, then x lr_decay at each milestone."""
    config = config.resolve()
    if epoch < config.warmup_epochs:
        return config.lr * (epoch + 1) / config.warmup_epochs
    return config.lr * config.lr_decay ** sum(epoch >= m for m in config.lr_milestones)


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
    return torch.device(name)


def run(config: RunConfig | dict, run_dir: str | Path) -> dict:
    """Train one run into ``run_dir`` (resuming it if interrupted) and return its results."""
    return run_many([config], [run_dir])[0]


def run_many(configs: list[RunConfig | dict], run_dirs: list[str | Path]) -> list[dict]:
    """Train several runs as one fused model; finished runs are skipped, interrupted ones resumed.

    Each unfinished run directory is locked (rundir.locked) before anything is written into it.
    """
    configs = [c if isinstance(c, RunConfig) else RunConfig.from_dict(c) for c in configs]
    configs = [c.resolve() for c in configs]
    run_dirs = [Path(d) for d in run_dirs]
    _check_group(configs, run_dirs)
    device = select_device(configs[0].device)
    resolve_compile(configs[0].compile, device)  # a mode this device cannot run fails before anything is written
    with contextlib.ExitStack() as locks:
        for d in run_dirs:
            if not rundir.is_finished(d):
                locks.enter_context(rundir.locked(d))
        epochs = [_resumable_epoch(c, d) for c, d in zip(configs, run_dirs)]
        pending = [i for i, d in enumerate(run_dirs) if not rundir.is_finished(d)]
        if pending:
            first = configs[0]
            dataset = load_dataset(first.dataset, first.data_root, first.imb_type, first.ratio, first.rand_number, first.download)
            by_epoch = {}
            for i in pending:  # runs fuse only when they resume from the same epoch
                rundir.remove_stale_temp_files(run_dirs[i])
                by_epoch.setdefault(epochs[i], []).append(i)
            for group in by_epoch.values():
                _Group([configs[i] for i in group], [run_dirs[i] for i in group], dataset, device).train()
    return [rundir.load_results(d) for d in run_dirs]


def fusion_key(config: RunConfig) -> tuple:
    """What runs must share to train as one fused model (SAM runs fuse with SAM runs of any rho only)."""
    resolved = config.resolve()
    method = get_method(config.method)
    shared = {k: v for k, v in resolved.to_dict().items() if k not in FUSABLE}
    return (json.dumps(shared, sort_keys=True), method.head, method.ssp, resolved.sam_rho > 0)


def _check_group(configs: list[RunConfig], run_dirs: list[Path]) -> None:
    """Every problem with the group, found before any data is loaded."""
    if len(configs) != len(run_dirs) or not configs:
        raise ValueError(f"give one run_dir per config ({len(configs)} configs, {len(run_dirs)} run_dirs)")
    if len({d.resolve() for d in run_dirs}) != len(run_dirs):
        raise ValueError("run_dirs must be distinct")
    keys = [fusion_key(c) for c in configs]
    for config, key in zip(configs[1:], keys[1:]):
        if key != keys[0]:
            a, b = configs[0].to_dict(), config.to_dict()
            differ = [k for k in a if k not in FUSABLE and a[k] != b[k]]
            raise ValueError(
                f"runs {configs[0].method} and {config.method} cannot train fused: they differ in "
                f"{', '.join(differ) or 'head, SSP pre-training or SAM (sam_rho 0 and > 0)'}"
            )


def _resumable_epoch(config: RunConfig, run_dir: Path) -> int:
    """Epochs the run's checkpoint completed (0 without one), refusing a run of other parameters.

    An unfinished run is compared with its checkpoint's configuration, the authority; a finished one
    with config.json, the record its results were written with (no checkpoint is read for it).
    """
    if rundir.is_finished(run_dir):
        _refuse_other_parameters(rundir.read_json(run_dir / rundir.CONFIG)["config"], config, run_dir / rundir.CONFIG)
        return 0
    info = rundir.checkpoint_info(run_dir)
    if info is None:
        return 0
    if info["config"] is None:
        raise CorruptFileError(f"{run_dir / rundir.CHECKPOINT} does not record its configuration (an older "
                               "mmlib wrote it); give another run_dir")
    _refuse_other_parameters(info["config"], config, run_dir / rundir.CHECKPOINT)
    return info["epoch"]


def _refuse_other_parameters(before: dict, config: RunConfig, source: Path) -> None:
    after = config.to_dict()
    changed = [k for k in after if k not in RESUMABLE_CHANGES and before.get(k) != after[k]]
    if changed:
        details = ", ".join(f"{k}: {before.get(k)!r} -> {after[k]!r}" for k in changed)
        raise ValueError(f"{source.parent} holds a run with other parameters ({details}; recorded in {source.name}); "
                         f"give another run_dir (only {', '.join(sorted(RESUMABLE_CHANGES))} may change on resume)")


def _environment(device: torch.device) -> dict:
    """What besides the parameters determines a run's results: versions, device, commit."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(mmlib.__file__).parent, capture_output=True, text=True, timeout=10
        ).stdout.strip() or None
    except OSError:
        commit = None
    return {
        "mmlib_version": mmlib.__version__,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "python_version": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "git_commit": commit,
    }


@contextlib.contextmanager
def _determinism(deterministic: bool, device: torch.device):
    """Deterministic algorithms (or cuDNN autotuning) for the run, restored afterwards."""
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]


def _init_model(config: RunConfig, num_classes: int, backbone: dict | None) -> torch.nn.Module:
    """One run's network on the CPU, initialised from its seed (and the SSP backbone, if any)."""
    torch.manual_seed(config.seed)
    model = build_model(config.arch, num_classes, normed=get_method(config.method).normed)
    if backbone is not None:
        missing, unexpected = model.load_state_dict(backbone, strict=False)
        if unexpected or any(not k.startswith("fc.") for k in missing):
            raise RuntimeError(f"SSP backbone does not fit {config.arch}: missing {missing}, unexpected {unexpected}")
    return model


def _split_optimizer_state(state: dict, runs: int) -> list[dict]:
    per_param = [
        {i: split_state_dict(s, runs)[k] for i, s in state["state"].items()} for k in range(runs)
    ]
    return [{"state": p, "param_groups": state["param_groups"]} for p in per_param]


def _merge_optimizer_states(states: list[dict]) -> dict:
    merged = {i: merge_state_dicts([s["state"][i] for s in states]) for i in states[0]["state"]}
    return {"state": merged, "param_groups": states[0]["param_groups"]}


@torch.inference_mode()
def _confusions(model, images, labels, runs, num_classes, batch_size, autocast, channels_last,
                logit_offset=None) -> torch.Tensor:
    """(K, C, C) confusion matrices (rows: true class) of the K runs on a test set, in one pass.

    Predictions stay on the device and are counted once at the end: one host sync an evaluation.
    logit_offset (K, C), if given, is added to each run's logits before the argmax (post-hoc adjustment).
    """
    model.eval()
    predictions = torch.empty(len(labels), runs, dtype=torch.int64, device=labels.device)
    for start, (x, y) in zip(range(0, len(labels), batch_size), eval_batches(images, labels, batch_size)):
        x = x.repeat(1, runs, 1, 1)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits = model(x).view(len(y), runs, -1)
        predictions[start:start + len(y)] = (logits if logit_offset is None else logits.float() + logit_offset).argmax(-1)
    offsets = torch.arange(runs, device=labels.device) * num_classes * num_classes
    index = offsets + labels[:, None] * num_classes + predictions
    counts = torch.bincount(index.flatten(), minlength=runs * num_classes * num_classes)
    return counts.view(runs, num_classes, num_classes).cpu()


def _due(epoch: int, every: int, epochs: int) -> bool:
    """Whether 0-based ``epoch`` ends with an evaluation or checkpoint done every ``every`` epochs and after the last."""
    return (epoch + 1) % every == 0 or epoch + 1 == epochs


def rotate(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
    """Rotation prediction (Gidaris et al. 2018): each image turned by k * 90 degrees, k its new label."""
    k = torch.randint(0, 4, (len(images),), generator=generator, device=images.device)
    turned = torch.stack([torch.rot90(images, r, dims=(2, 3)) for r in range(4)])
    return turned[k, torch.arange(len(images), device=images.device)], k


class _Progress:
    """The progress bar: steps within the epoch and images/s, from the host's step count (no device sync)."""

    def __init__(self, configs: list[RunConfig], done_epochs: int, steps: int, images_per_epoch: int):
        self.epochs, self.epoch, self.steps = configs[0].epochs, done_epochs, steps
        self.label = ", ".join(c.method for c in configs)
        self.bar = tqdm(total=(self.epochs - done_epochs) * images_per_epoch, unit="img", unit_scale=True,
                        disable=all(c.quiet for c in configs), desc=self._describe(0))

    def _describe(self, step: int) -> str:
        return f"{self.label}: epoch {self.epoch + 1}/{self.epochs}, step {step}/{self.steps}"

    def step(self, step: int, images: int) -> None:
        self.bar.set_description_str(self._describe(step), refresh=False)
        self.bar.update(images)

    def epoch_done(self, lr: float, losses: list[float], entries: list[dict]) -> None:
        self.epoch += 1
        self.bar.set_postfix(lr=f"{lr:.2g}", loss="/".join(f"{v:.3f}" for v in losses),
                             err="/".join(f"{e.get('test_error', math.nan):.1f}" for e in entries))

    def close(self) -> None:
        self.bar.close()


class _Group:
    """K runs (K >= 1) of one setting, trained together as one model."""

    def __init__(self, configs: list[RunConfig], run_dirs: list[Path], dataset: ImbalancedDataset, device):
        self.configs, self.run_dirs, self.dataset, self.device = configs, run_dirs, dataset, device
        self.first = configs[0]
        self.methods = [get_method(c.method) for c in configs]
        self.counts = dataset.cls_num_list
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.first.bf16)
        self.channels_last = self.first.channels_last

    def train(self) -> None:
        first = self.first
        with _determinism(first.deterministic, self.device):
            self._build()
            self._resume()
            self.step = TrainStep(self.model, self.streams, self.criteria, self.optimizer, first.bf16,
                                  self.channels_last, first.compile, sam_rho=[c.sam_rho for c in self.configs])
            tensorboard = TensorBoard(self.configs, self.run_dirs)
            progress = _Progress(self.configs, self.records.epoch, len(self.step.sizes()),
                                 len(self.dataset.train_labels) * len(self.configs))
            for epoch in range(self.records.epoch, first.epochs):
                start = time.perf_counter()
                lr = self._schedule(epoch)
                losses, train_errors, bad_steps = self.step.epoch(progress.step)
                self._stop_if_non_finite(epoch, losses, bad_steps)
                confusions, plain = self._evaluate() if _due(epoch, first.eval_every, first.epochs) else (None, None)
                entries = self.records.add_epoch(lr, losses, train_errors, time.perf_counter() - start, confusions, plain)
                tensorboard.add(entries)
                if _due(epoch, first.checkpoint_every, first.epochs):
                    self._checkpoint()
                progress.epoch_done(lr, losses, entries)
            progress.close()
            tensorboard.close()
            self.records.write(self.run_dirs, self.dataset)

    def _build(self) -> None:
        """Data on the device; the fused model from each run's own initialisation; optimizer, streams, losses."""
        first, device, runs = self.first, self.device, len(self.configs)
        train_x, train_y = to_device(self.dataset.train_images, self.dataset.train_labels, device)
        self.test_x, self.test_y = to_device(self.dataset.test_images, self.dataset.test_labels, device)
        backbone = ssp_backbone(first, self.dataset, device) if self.methods[0].ssp else None
        singles = [_init_model(c, self.dataset.num_classes, backbone) for c in self.configs]
        self.model = build_model(first.arch, self.dataset.num_classes, self.methods[0].normed, runs)
        self.model.load_state_dict(merge_state_dicts([m.state_dict() for m in singles]))
        self.model.to(device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        self.optimizer = torch.optim.SGD(self.model.parameters(), first.lr, momentum=first.momentum,
                                         weight_decay=first.weight_decay)
        self.streams = [TrainStream(train_x, train_y, first.batch_size, c.data_seed) for c in self.configs]
        self.criteria = [build_loss(m.loss, self.counts, **c.loss_params()).to(device)
                         for m, c in zip(self.methods, self.configs)]
        self.cb_weights = [class_balanced_weights(self.counts, c.cb_beta).to(device) for c in self.configs]
        # Each loss weighs by its row, all ones until re-weighting starts; rows change in place, so a
        # captured step sees the switch.
        self.loss_weights = torch.ones(runs, self.dataset.num_classes, device=device)
        for criterion, row in zip(self.criteria, self.loss_weights):
            criterion.weight = row
        # Post-hoc logit adjustment: -tau log(prior) added to the logits of each post-hoc run, 0 for the others.
        self.logit_offsets = None
        if any(m.posthoc for m in self.methods):
            self.logit_offsets = torch.stack([
                -c.tau * log_prior(self.counts) if m.posthoc else torch.zeros(self.dataset.num_classes)
                for m, c in zip(self.methods, self.configs)
            ]).to(device)

    def _schedule(self, epoch: int) -> float:
        """This epoch's learning rate, and each run's class weights and sampling; returns the lr."""
        lr = learning_rate(self.first, epoch)
        self.step.set_lr(lr)
        for method, config, row, stream, weights in zip(
            self.methods, self.configs, self.loss_weights, self.streams, self.cb_weights
        ):
            row.copy_(weights if active(method.reweight, epoch, config.switch_epoch) else torch.ones_like(row))
            stream.set_class_weights(weights if active(method.resample, epoch, config.switch_epoch) else None)
        return lr

    def _evaluate(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Confusions with each run's logit offset applied, and the plain ones (None when no run has an offset)."""
        def confusions(offset):
            return _confusions(self.model, self.test_x, self.test_y, len(self.configs), self.dataset.num_classes,
                               self.first.eval_batch_size, self.autocast, self.channels_last, offset)

        if self.logit_offsets is None:
            return confusions(None), None
        return confusions(self.logit_offsets), confusions(None)

    def _resume(self) -> dict:
        """Load every run's checkpoint into the fused model, or start fresh; write config and counts."""
        self.records = Records(len(self.configs), self.dataset.groups, [m.posthoc for m in self.methods])
        saved = [rundir.load_checkpoint(d) for d in self.run_dirs]
        self.checkpointed_epoch = None
        if any(s is not None for s in saved):
            epochs = {s and s["epoch"] for s in saved}
            if len(epochs) > 1:  # run_many groups by checkpoint.json; only a checkpoint corrupted since gets here
                raise CorruptFileError(f"the checkpoints of {', '.join(map(str, self.run_dirs))} changed under "
                                       f"their checkpoint.json (epochs {sorted(epochs, key=str)}); train them one by one")
            for s, config, run_dir in zip(saved, self.configs, self.run_dirs):
                _refuse_other_parameters(s["config"], config, run_dir / rundir.CHECKPOINT)
            self.model.load_state_dict(merge_state_dicts([s["model"] for s in saved]))
            self.optimizer.load_state_dict(_merge_optimizer_states([s["optimizer"] for s in saved]))
            for stream, s in zip(self.streams, saved):
                stream.load_state_dict(s["stream"])
            torch.set_rng_state(saved[0]["torch_rng"])
            if saved[0]["cuda_rng"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(saved[0]["cuda_rng"])
            self.records.load(saved)
            self.checkpointed_epoch = self.records.epoch
        environment = _environment(self.device)
        for config, run_dir in zip(self.configs, self.run_dirs):
            rundir.write_json(run_dir / rundir.CONFIG, {**environment, "config": config.to_dict()})
            rundir.write_json(run_dir / rundir.COUNTS, {
                "classes": self.dataset.classes,
                "cls_num_list": self.counts,
                "groups": self.dataset.groups,
                "description": self.dataset.description,
            })

    def _checkpoint(self) -> None:
        runs = len(self.configs)
        models = split_state_dict(self.model.state_dict(), runs)
        optimizers = _split_optimizer_state(self.optimizer.state_dict(), runs)
        for k, run_dir in enumerate(self.run_dirs):
            rundir.save_checkpoint(run_dir, {
                "config": self.configs[k].to_dict(),
                "model": models[k],
                "optimizer": optimizers[k],
                "stream": self.streams[k].state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                **self.records.of_run(k),
            })
        self.checkpointed_epoch = self.records.epoch

    def _stop_if_non_finite(self, epoch: int, losses: list[float], bad_steps: list[int]) -> None:
        for k, (loss, step) in enumerate(zip(losses, bad_steps)):
            if step >= 0 or not math.isfinite(loss):
                kept = ("no checkpoint was written yet" if self.checkpointed_epoch is None else
                        f"its last checkpoint (after epoch {self.checkpointed_epoch}) is kept")
                raise NonFiniteLossError(
                    f"non-finite loss in run {self.run_dirs[k]} ({self.configs[k].method}) at epoch {epoch + 1}, "
                    f"step {step + 1} of {math.ceil(len(self.dataset.train_labels) / self.first.batch_size)}; "
                    f"{kept}. Try a lower lr (or check the data), in another run_dir"
                )



def ssp_backbone(config: RunConfig, dataset: ImbalancedDataset, device: torch.device) -> dict:
    """The rotation-prediction pre-trained network of ldam-drw-ssp (Yang & Xu 2020), cached.

    Pre-trains the same architecture on the same imbalanced training set (after the usual crop and
    flip), each image turned by a random multiple of 90 degrees and a 4-way linear head predicting
    which, with the protocol's schedule shape over ssp_epochs. The result is cached under
    cache_dir()/ssp keyed by everything that determines it, so runs of several seeds share one.
    """
    pretrain = dataclasses.replace(
        config, method="erm", epochs=config.ssp_epochs, seed=config.ssp_seed, data_seed=config.ssp_seed,
        warmup_epochs=None, lr_milestones=None, switch_epoch=None, ssp_epochs=None, s=None,
    ).resolve()
    determines = {
        "dataset": [dataset.name, dataset.imb_type, dataset.ratio, dataset.rand_number, dataset.source],
        **{k: getattr(pretrain, k) for k in ("arch", "epochs", "batch_size", "lr", "momentum", "weight_decay",
                                             "warmup_epochs", "lr_milestones", "lr_decay", "seed", "bf16")},
    }
    key = hashlib.sha256(json.dumps(determines, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_dir() / "ssp" / key
    if (folder / "backbone.pt").exists():  # without taking the lock, so that a read-only cache serves
        return torch.load(folder / "backbone.pt", map_location="cpu")
    with rundir.locked(folder, wait=True):  # runs started in parallel wait for one pre-training, then share it
        return _ssp_pretrain(pretrain, determines, folder, dataset, device, config.quiet)


def _ssp_pretrain(pretrain: RunConfig, determines: dict, folder: Path, dataset: ImbalancedDataset, device,
                  quiet: bool) -> dict:
    """ssp_backbone's pre-training in its cache folder (held locked), resumed from its checkpoint."""
    if (folder / "backbone.pt").exists():  # pre-trained by the process this one waited for
        return torch.load(folder / "backbone.pt", map_location="cpu")
    rundir.remove_stale_temp_files(folder)
    rundir.write_json(folder / "determines.json", determines)
    torch.manual_seed(pretrain.seed)
    memory_format = torch.channels_last if pretrain.channels_last else torch.preserve_format
    model = build_model(pretrain.arch, 4).to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), pretrain.lr, momentum=pretrain.momentum, weight_decay=pretrain.weight_decay)
    train_x, train_y = to_device(dataset.train_images, dataset.train_labels, device)
    stream = TrainStream(train_x, train_y, pretrain.batch_size, pretrain.data_seed)
    start = 0
    saved = rundir.load_checkpoint(folder)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        stream.load_state_dict(saved["stream"])
        start = saved["epoch"]
    step = TrainStep(model, [stream], [CrossEntropyLoss()], optimizer, pretrain.bf16, pretrain.channels_last,
                     transform=rotate)
    bar = tqdm(range(start, pretrain.epochs), initial=start, total=pretrain.epochs, desc="ssp pre-training",
               disable=quiet)
    for epoch in bar:
        step.set_lr(learning_rate(pretrain, epoch))
        losses, errors, bad = step.epoch()
        if bad[0] >= 0:
            raise NonFiniteLossError(f"non-finite loss in SSP pre-training ({folder}) at epoch {epoch + 1}, step "
                                     f"{bad[0] + 1}; try a lower lr (or check the data)")
        if _due(epoch, pretrain.checkpoint_every, pretrain.epochs):
            rundir.save_checkpoint(folder, {
                "epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "stream": stream.state_dict(),
            })
        bar.set_postfix(loss=f"{losses[0]:.3f}", rotation_err=f"{errors[0]:.1f}")
    backbone = {k: v.cpu() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    rundir.save_torch(folder / "backbone.pt", backbone)
    return backbone
