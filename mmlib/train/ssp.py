"""ldam-drw-ssp's self-supervised pre-training (Yang & Xu, NeurIPS 2020): rotation prediction, cached.

``ssp_backbone`` returns the pre-trained network's weights (all but the head) for a run, training it
once per configuration that determines it and caching it under cache_dir()/ssp, so that runs of
several seeds (and a killed pre-training, which resumes from its checkpoint) share one.
"""

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mmlib import files
from mmlib.config import RunConfig
from mmlib.data.cache import cache_dir
from mmlib.data.imbalance import ImbalancedDataset
from mmlib.data.pipeline import TrainStream, to_device
from mmlib.errors import NonFiniteLossError, StoppedError
from mmlib.stopping import Stop
from mmlib.train import run_folder
from mmlib.train.losses import CrossEntropyLoss
from mmlib.train.models import build_model
from mmlib.train.schedule import due, learning_rate
from mmlib.train.step import SGDState, TrainStep


def rotate(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
    """Rotation prediction (Gidaris et al. 2018): each image turned by k * 90 degrees, k its new label."""
    k = torch.randint(0, 4, (len(images),), generator=generator, device=images.device)
    turned = torch.stack([torch.rot90(images, r, dims=(2, 3)) for r in range(4)])
    return turned[k, torch.arange(len(images), device=images.device)], k


def ssp_backbone(config: RunConfig, dataset: ImbalancedDataset, device: torch.device, stop: Stop | None = None) -> dict:
    """The rotation-prediction pre-trained network of ldam-drw-ssp (Yang & Xu 2020), cached.

    Pre-trains the same architecture on the same imbalanced training set (after the usual crop and
    flip), each image turned by a random multiple of 90 degrees and a 4-way linear head predicting
    which, with the protocol's schedule shape over ssp_epochs. The result is cached under
    cache_dir()/ssp keyed by everything that determines it, so runs of several seeds share one. ``stop``
    (a time limit, a signal, a sweep's request) stops it between two epochs, its checkpoint written
    (StoppedError): the same command resumes it.
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
    with run_folder.locked(folder, wait=True):  # runs started in parallel wait for one pre-training, then share it
        return _ssp_pretrain(pretrain, determines, folder, dataset, device, config.quiet, stop or Stop())


def _ssp_pretrain(pretrain: RunConfig, determines: dict, folder: Path, dataset: ImbalancedDataset, device,
                  quiet: bool, stop: Stop) -> dict:
    """ssp_backbone's pre-training in its cache folder (held locked), resumed from its checkpoint."""
    if (folder / "backbone.pt").exists():  # pre-trained by the process this one waited for
        return torch.load(folder / "backbone.pt", map_location="cpu")
    run_folder.remove_stale_temp_files(folder)
    files.write_json(folder / "determines.json", determines)
    torch.manual_seed(pretrain.seed)
    memory_format = torch.channels_last if pretrain.channels_last else torch.preserve_format
    model = build_model(pretrain.arch, 4).to(device, memory_format=memory_format)
    optimizer = SGDState(model.parameters(), pretrain.lr, pretrain.momentum, pretrain.weight_decay)
    train_x, train_y = to_device(dataset.train_images, dataset.train_labels, device)
    stream = TrainStream(train_x, train_y, pretrain.batch_size, pretrain.data_seed)
    start = 0
    saved = run_folder.load_checkpoint(folder, set_aside_corrupt=True)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        stream.load_state_dict(saved["stream"])
        start = saved["epoch"]
    step = TrainStep(model, [stream], [CrossEntropyLoss()], optimizer, pretrain.bf16, pretrain.channels_last,
                     transform=rotate)

    def save(epochs_done: int) -> None:
        run_folder.save_checkpoint(folder, {"epoch": epochs_done, "model": model.state_dict(),
                                        "optimizer": optimizer.state_dict(), "stream": stream.state_dict()})

    bar = tqdm(range(start, pretrain.epochs), initial=start, total=pretrain.epochs, desc="ssp pre-training",
               disable=quiet)
    checkpointed, last_epoch_seconds = start, 0.0
    for epoch in bar:
        why = stop.reason(last_epoch_seconds)  # before every epoch, as the trainer asks (0 s: none timed yet)
        if why is not None and epoch == 0:
            raise StoppedError(f"{folder}: SSP pre-training stopped before its first epoch because {why}; nothing "
                               "was trained, and the same command starts it")
        if why is not None:
            if checkpointed != epoch:
                save(epoch)
            raise StoppedError(f"{folder}: SSP pre-training stopped after epoch {epoch} of {pretrain.epochs} because "
                               f"{why}; the checkpoint is written, and the same command resumes from it")
        started = time.perf_counter()
        step.set_lr(learning_rate(pretrain, epoch))
        losses, errors, bad = step.epoch()
        if bad[0] >= 0:
            raise NonFiniteLossError(f"non-finite loss in SSP pre-training ({folder}) at epoch {epoch + 1}, step "
                                     f"{bad[0] + 1}; try a lower lr (or check the data)")
        if due(epoch, pretrain.checkpoint_every, pretrain.epochs):
            save(epoch + 1)
            checkpointed = epoch + 1
        last_epoch_seconds = time.perf_counter() - started
        bar.set_postfix(loss=f"{losses[0]:.3f}", rotation_err=f"{errors[0]:.1f}")
    backbone = {k: v.cpu() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    files.save_torch(folder / "backbone.pt", backbone)
    return backbone
