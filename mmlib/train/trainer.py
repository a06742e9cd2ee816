"""Training under the LDAM-DRW protocol: one run, or K runs trained at once as one fused model.

``train(config, run_dir)`` trains a run (resuming it from its checkpoint if there is one) and returns
its results. ``train_many(configs, run_dirs)`` trains runs that differ only in seeds, loss
hyper-parameters or method (same head) as one model built of K grouped networks
(mmlib.train.models, runs=K): each run keeps its own initialisation, data order, augmentation, class
weights and BatchNorm statistics, so it trains as it would alone, and lands in its own run directory.

The step itself is mmlib.train.step.TrainStep (eager, or whole-step CUDA graphs): no host sync per step;
losses and errors accumulate on the device and are read once an epoch.
"""

import contextlib
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mmlib import files
from mmlib.choices import active, get_method
from mmlib.config import INCIDENTAL, RunConfig, describe, differences, eval_batch_size
from mmlib.data import sources
from mmlib.data.imbalance import ImbalancedDataset
from mmlib.data.pipeline import TrainStream, eval_batches, to_device
from mmlib.data.sources import load_dataset
from mmlib.errors import CorruptFileError, NonFiniteLossError, StoppedError
from mmlib.stopping import Stop
from mmlib.train import idle, provenance, run_folder
from mmlib.train.fusion import FUSABLE, fusion_key
from mmlib.train.losses import build_loss, class_balanced_weights, log_prior
from mmlib.train.metrics import Metrics, TensorBoard
from mmlib.train.models import (
    build_model,
    merge_optimizer_states,
    merge_state_dicts,
    split_optimizer_state,
    split_state_dict,
)
from mmlib.train.schedule import due, learning_rate
from mmlib.train.ssp import ssp_backbone
from mmlib.train.step import SGDState, TrainStep, resolve_compile


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
    return torch.device(name)


def train(config: RunConfig | dict, run_dir: str | Path, stop: Stop | None = None) -> dict:
    """Train one run into ``run_dir`` (resuming it if interrupted) and return its results."""
    return train_many([config], [run_dir], stop)[0]


def train_many(configs: list[RunConfig | dict], run_dirs: list[str | Path], stop: Stop | None = None) -> list[dict]:
    """Train several runs as one fused model; finished runs are skipped, interrupted ones resumed.

    Each unfinished run directory is locked (run_folder.locked) before anything is written into it. A run whose
    loss goes non-finite is marked failed (run_folder.FAILED) and the others train to the end; then
    NonFiniteLossError names the failed ones. A run marked failed is refused until its marker is removed.
    ``stop`` (mmlib.stopping.Stop: a deadline, a sweep's stop file; SIGTERM and SIGUSR1 are caught while the
    runs train) ends the training early, checkpoint written, with StoppedError.
    """
    idle.follow()  # a kernel an idle sweep started sits in a session of its own: keep that one idle too
    configs = [c if isinstance(c, RunConfig) else RunConfig.from_dict(c) for c in configs]
    configs = [c.resolve() for c in configs]
    for config in configs:
        sources.check(config)
    run_dirs = [Path(d) for d in run_dirs]
    _check_group(configs, run_dirs)
    device = select_device(configs[0].device)
    resolve_compile(configs[0].compile, device)  # a mode this device cannot run fails before anything is written
    provenance.deterministic_cublas(configs[0].deterministic, device)
    for d in run_dirs:
        failure = run_folder.failure(d)
        if failure is not None:
            raise NonFiniteLossError(f"{d} failed before: {failure['reason']}. To retry it from its last checkpoint, "
                                     f"delete {d / run_folder.FAILED} (a sweep: --retry-failed)")
    stop = stop or Stop()
    with contextlib.ExitStack() as locks:
        locks.enter_context(stop.catching_signals())
        for d in run_dirs:
            if not run_folder.is_finished(d):
                locks.enter_context(run_folder.locked(d))
        held = [run_folder.state(d) for d in run_dirs]  # read under the locks: nobody writes there meanwhile
        epochs = [_resumable_epoch(c, h) for c, h in zip(configs, held)]
        pending = [i for i, h in enumerate(held) if not h.finished]
        if pending:
            first = configs[0]
            dataset = load_dataset(first.dataset, first.data_root, first.imb_type, first.ratio, first.rand_number,
                                   first.download)
            by_epoch = {}
            for i in pending:  # runs fuse only when they resume from the same epoch
                run_folder.remove_stale_temp_files(run_dirs[i])
                by_epoch.setdefault(epochs[i], []).append(i)
            diverged = []
            for group in by_epoch.values():
                try:
                    FusedTrainer([configs[i] for i in group], [run_dirs[i] for i in group], dataset, device,
                                 stop).train()
                except NonFiniteLossError as err:  # the other groups train all the same
                    diverged.append(str(err))
            if diverged:
                raise NonFiniteLossError("; ".join(diverged))
    return [run_folder.load_results(d) for d in run_dirs]


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


def _resumable_epoch(config: RunConfig, held: run_folder.State) -> int:
    """Epochs the run's checkpoint completed (0 without one, or finished), refusing a run of other parameters.

    An unfinished run is compared with its checkpoint's configuration, the authority; a finished one
    with config.json, the record its results were written with (no checkpoint is read for it).
    """
    if held.epoch is None:
        raise CorruptFileError(held.unreadable)
    if not held.finished and held.epoch == 0:
        return 0
    source = held.path / (run_folder.CONFIG if held.finished else run_folder.CHECKPOINT)
    if held.config is None:
        raise CorruptFileError(f"{source} does not record its configuration (an older mmlib wrote it); give another "
                               "run_dir")
    _refuse_other_parameters(held.config, config, source)
    return 0 if held.finished else held.epoch


def _refuse_other_parameters(before: dict, config: RunConfig, source: Path) -> None:
    changed = differences(before, config.to_dict())
    if changed:
        raise ValueError(f"{source.parent} holds a run with other parameters ({describe(changed)}; recorded "
                         f"in {source.name}); give another run_dir (only {', '.join(sorted(INCIDENTAL))} may "
                         "change on resume)")


def init_model(config: RunConfig, num_classes: int, backbone: dict | None) -> torch.nn.Module:
    """One run's network on the CPU, initialised from its seed (and the SSP backbone, if any)."""
    torch.manual_seed(config.seed)
    model = build_model(config.arch, num_classes, normed=get_method(config.method).normed)
    if backbone is not None:
        missing, unexpected = model.load_state_dict(backbone, strict=False)
        if unexpected or any(not k.startswith("fc.") for k in missing):
            raise RuntimeError(f"SSP backbone does not fit {config.arch}: missing {missing}, unexpected {unexpected}")
    return model


@torch.inference_mode()
def confusions(model, images, labels, runs, num_classes, batch_size, autocast, channels_last,
                logit_offsets=(None,)) -> torch.Tensor:
    """(A, K, C, C) confusion matrices (rows: true class) of the K runs on a test set, one per logit
    offset (K, C) added before the argmax (None: the plain logits; post-hoc adjustment), from one forward pass.

    Predictions stay on the device and are counted once at the end: one host sync an evaluation.
    """
    model.eval()
    predictions = torch.empty(len(logit_offsets), len(labels), runs, dtype=torch.int64, device=labels.device)
    for start, (x, y) in zip(range(0, len(labels), batch_size), eval_batches(images, labels, batch_size)):
        x = x.repeat(1, runs, 1, 1)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits = model(x).view(len(y), runs, -1)
        for a, offset in enumerate(logit_offsets):
            predictions[a, start:start + len(y)] = (logits if offset is None else logits + offset).argmax(-1)
    cells = (torch.arange(runs, device=labels.device) * num_classes + labels[:, None]) * num_classes + predictions
    counts = torch.stack([torch.bincount(c.flatten(), minlength=runs * num_classes * num_classes) for c in cells])
    return counts.view(len(logit_offsets), runs, num_classes, num_classes).cpu()


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


class FusedTrainer:
    """K runs (K >= 1) of one setting, trained together as one model (train_many builds it for each group of
    runs resuming from the same epoch): builds or resumes them, trains epoch by epoch, evaluates, checkpoints,
    and writes each run's metrics."""

    def __init__(self, configs: list[RunConfig], run_dirs: list[Path], dataset: ImbalancedDataset, device,
                 stop: Stop):
        self.configs, self.run_dirs, self.dataset, self.device, self.stop = configs, run_dirs, dataset, device, stop
        self.first = configs[0]
        self.methods = [get_method(c.method) for c in configs]
        self.counts = dataset.cls_num_list
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.first.bf16)
        self.channels_last = self.first.channels_last
        self.diverged: dict[int, str] = {}  # run -> why it stopped (FAILED): it trains on, unrecorded
        self.checkpoint_seconds = 0.0  # the last checkpoint's write time, for the stop's estimate

    def train(self) -> None:
        """Train the runs to their last epoch; raises NonFiniteLossError, once the others are finished, if any
        diverged, and StoppedError, its checkpoint written, when ``stop`` says so before an epoch."""
        first = self.first
        with provenance.determinism(first.deterministic, self.device):
            self._build()
            self._resume()
            self.step = TrainStep(self.model, self.streams, self.criteria, self.optimizer, first.bf16,
                                  self.channels_last, first.compile, sam_rho=[c.sam_rho for c in self.configs])
            tensorboard = TensorBoard(self.configs, self.run_dirs)
            progress = _Progress(self.configs, self.metrics.epoch, len(self.step.sizes()),
                                 len(self.dataset.train_labels) * len(self.configs))
            try:
                for epoch in range(self.metrics.epoch, first.epochs):
                    self._stop_if_asked(epoch)
                    start = time.perf_counter()
                    lr = self._schedule(epoch)
                    losses, train_errors, bad_steps = self.step.epoch(progress.step)
                    self.metrics.note_step(self.step.paths)
                    self._drop_diverged(epoch, losses, bad_steps)
                    evaluated = self._evaluate() if due(epoch, first.eval_every, first.epochs) else (None, None)
                    entries = self.metrics.add_epoch(lr, losses, train_errors, time.perf_counter() - start, *evaluated)
                    tensorboard.add(entries)
                    if due(epoch, first.checkpoint_every, first.epochs):
                        self._checkpoint()
                    progress.epoch_done(lr, losses, entries)
            finally:
                progress.close()
                tensorboard.close()
            self.metrics.write(self.run_dirs, self.dataset, skip=set(self.diverged))
        if self.diverged:
            raise NonFiniteLossError("; ".join(self.diverged.values()))

    def _stop_if_asked(self, epoch: int) -> None:
        """Before ``epoch``: if the stop says so (a signal, the sweep, or too little time for another epoch and its
        checkpoint, as long as the last ones took), write the checkpoint and raise StoppedError."""
        history = self.metrics.history[0]
        why = self.stop.reason((history[-1]["seconds"] if history else 0.0) + self.checkpoint_seconds)
        if why is None:
            return
        runs = ", ".join(map(str, self.run_dirs))
        if epoch == 0:
            raise StoppedError(f"{runs}: stopped before the first epoch because {why}; nothing was trained, and the "
                               "same command starts it")
        if self.checkpointed_epoch != self.metrics.epoch:
            self._checkpoint()
        raise StoppedError(f"{runs}: stopped after epoch {epoch} of {self.first.epochs} because {why}; the checkpoint "
                           "is written, and the same command resumes from it")

    def _build(self) -> None:
        """Data on the device; the fused model from each run's own initialisation; optimizer, streams, losses."""
        first, device, runs = self.first, self.device, len(self.configs)
        train_x, train_y = to_device(self.dataset.train_images, self.dataset.train_labels, device)
        self.test_x, self.test_y = to_device(self.dataset.test_images, self.dataset.test_labels, device)
        backbone = ssp_backbone(first, self.dataset, device, self.stop) if self.methods[0].ssp else None
        singles = [init_model(c, self.dataset.num_classes, backbone) for c in self.configs]
        self.model = build_model(first.arch, self.dataset.num_classes, self.methods[0].normed, runs)
        self.model.load_state_dict(merge_state_dicts([m.state_dict() for m in singles]))
        self.model.to(device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        self.optimizer = SGDState(self.model.parameters(), first.lr, first.momentum, first.weight_decay)
        self.streams = [TrainStream(train_x, train_y, first.batch_size, c.data_seed) for c in self.configs]
        self.criteria = [build_loss(m.loss, self.counts, **c.loss_params()).to(device)
                         for m, c in zip(self.methods, self.configs)]
        self.cb_weights = [class_balanced_weights(self.counts, c.cb_beta).to(device) for c in self.configs]
        # Every loss weighs its mean, all ones until re-weighting starts: the step is built with a weight
        # tensor that later weights are copied into, so a captured step sees the switch.
        for criterion in self.criteria:
            criterion.weight = torch.ones(self.dataset.num_classes, device=device)
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
        for method, config, criterion, stream, weights in zip(
            self.methods, self.configs, self.criteria, self.streams, self.cb_weights
        ):
            criterion.weight = (weights if active(method.reweight, epoch, config.switch_epoch)
                                else torch.ones_like(weights))
            stream.set_class_weights(weights if active(method.resample, epoch, config.switch_epoch) else None)
        return lr

    def _evaluate(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Confusions with each run's logit offset applied, and the plain ones (None when no run has an offset),
        from one forward pass."""
        offsets = (None,) if self.logit_offsets is None else (self.logit_offsets, None)
        found = confusions(self.model, self.test_x, self.test_y, len(self.configs), self.dataset.num_classes,
                           eval_batch_size(self.first, self.test_x.device.type), self.autocast, self.channels_last,
                           offsets)
        return found[0], (found[1] if len(offsets) > 1 else None)

    def _resume(self) -> dict:
        """Load every run's checkpoint into the fused model, or start fresh; write config and counts."""
        self.metrics = Metrics(len(self.configs), self.dataset.groups, [m.posthoc for m in self.methods])
        saved = [run_folder.load_checkpoint(d, set_aside_corrupt=True) for d in self.run_dirs]
        self.checkpointed_epoch = None
        if any(s is not None for s in saved):
            epochs = {s and s["epoch"] for s in saved}
            if len(epochs) > 1:  # train_many groups by checkpoint.json; only a checkpoint corrupted since gets here
                raise CorruptFileError(f"the checkpoints of {', '.join(map(str, self.run_dirs))} changed under "
                                       f"their checkpoint.json (epochs {sorted(epochs, key=str)}); "
                                       "train them one by one")
            for s, config, run_dir in zip(saved, self.configs, self.run_dirs):
                _refuse_other_parameters(s["config"], config, run_dir / run_folder.CHECKPOINT)
            self.model.load_state_dict(merge_state_dicts([s["model"] for s in saved]))
            self.optimizer.load_state_dict(merge_optimizer_states([s["optimizer"] for s in saved]))
            for stream, s in zip(self.streams, saved):
                stream.load_state_dict(s["stream"])
            torch.set_rng_state(saved[0]["torch_rng"])
            if saved[0]["cuda_rng"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(saved[0]["cuda_rng"])
            self.metrics.load(saved)
            self.checkpointed_epoch = self.metrics.epoch
        environment = provenance.environment(self.device)
        for config, run_dir in zip(self.configs, self.run_dirs):
            files.write_json(run_dir / run_folder.CONFIG, {**environment, "config": config.to_dict()})
            files.write_json(run_dir / run_folder.COUNTS, {
                "classes": self.dataset.classes,
                "cls_num_list": self.counts,
                "groups": self.dataset.groups,
                "description": self.dataset.description,
            })

    def _checkpoint(self) -> None:
        start = time.perf_counter()
        runs = len(self.configs)
        models = split_state_dict(self.model.state_dict(), runs)
        optimizers = split_optimizer_state(self.optimizer.state_dict(), runs)
        for k, run_dir in enumerate(self.run_dirs):
            if k in self.diverged:  # its last checkpoint before it diverged stays
                continue
            run_folder.save_checkpoint(run_dir, {
                "config": self.configs[k].to_dict(),
                "model": models[k],
                "optimizer": optimizers[k],
                "stream": self.streams[k].state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                **self.metrics.of_run(k),
            })
        self.checkpointed_epoch = self.metrics.epoch
        self.checkpoint_seconds = time.perf_counter() - start

    def _drop_diverged(self, epoch: int, losses: list[float], bad_steps: list[int]) -> None:
        """Mark each run whose loss went non-finite this epoch failed (its FAILED marker says where; its last
        checkpoint is kept) and let the others train on: runs of a fused model share no computation, so
        the diverged run's values never reach theirs. Raises once no run is left."""
        for k, (loss, step) in enumerate(zip(losses, bad_steps)):
            if k in self.diverged or (step < 0 and math.isfinite(loss)):
                continue
            kept = ("no checkpoint was written yet" if self.checkpointed_epoch is None else
                    f"its last checkpoint (after epoch {self.checkpointed_epoch}) is kept")
            self.diverged[k] = (
                f"non-finite loss in run {self.run_dirs[k]} ({self.configs[k].method}) at epoch {epoch + 1}, "
                f"step {step + 1} of {math.ceil(len(self.dataset.train_labels) / self.first.batch_size)}; "
                f"{kept}. Try a lower lr (or check the data), in another run_dir"
            )
            run_folder.mark_failed(self.run_dirs[k], {"reason": self.diverged[k], "epoch": epoch + 1, "step": step + 1,
                                                  "checkpoint_epoch": self.checkpointed_epoch})
        if len(self.diverged) == len(self.configs):
            raise NonFiniteLossError("; ".join(self.diverged.values()))
