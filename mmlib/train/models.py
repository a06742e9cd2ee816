"""CIFAR ResNets (He et al., CVPR 2016, Sec. 4.2) as used by LDAM-DRW, optionally K runs fused into one.

resnet{8,20,32,44,56,110}: three stages of 16/32/64 channels, (depth - 2) / 6 basic blocks each,
option-A shortcuts (stride-2 subsampling and zero-padded channels), global average pooling, then a
linear head with bias or (normed=True) a cosine classifier: features and class weight vectors
L2-normalised, no bias, outputs in [-1, 1]. Initialised with LDAM-DRW's distributions (Kaiming-normal
conv and linear weights, unit-norm cosine class vectors), the backbone drawn before the head, so that
every method of a seed starts from one backbone (LDAM-DRW's code draws the head's default init between).
The head computes in float32 even under bf16 autocast (the margin losses read small logit differences).

``runs=K`` builds K independent networks as one: every convolution is grouped (K groups),
BatchNorm runs over K times the channels (so each run keeps its own statistics), and the head
is applied per run. The input is the K runs' batches stacked along channels, (B, 3K, H, W), and
the output (B, K, C). Every tensor of the state dict is the K runs' tensors concatenated along
dim 0, so ``split_state_dict`` / ``merge_state_dicts`` convert between one fused model and K
ordinary ones (runs=1: the plain network, input (B, 3, H, W), output (B, C)).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmlib.choices import ARCHS


class _ZeroPadShortcut(nn.Module):
    """Option A: subsample by 2 and zero-pad each run's channels on both sides."""

    def __init__(self, runs: int, in_planes: int, planes: int):
        super().__init__()
        self.runs, self.in_planes, self.pad = runs, in_planes, (planes - in_planes) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        b, _, h, w = x.shape
        x = x.reshape(b, self.runs, self.in_planes, h, w)
        x = F.pad(x, (0, 0, 0, 0, self.pad, self.pad))
        return x.reshape(b, -1, h, w)


class BasicBlock(nn.Module):
    def __init__(self, runs: int, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(runs * in_planes, runs * planes, 3, stride, 1, bias=False, groups=runs)
        self.bn1 = nn.BatchNorm2d(runs * planes)
        self.conv2 = nn.Conv2d(runs * planes, runs * planes, 3, 1, 1, bias=False, groups=runs)
        self.bn2 = nn.BatchNorm2d(runs * planes)
        needs_projection = stride != 1 or in_planes != planes
        self.shortcut = _ZeroPadShortcut(runs, in_planes, planes) if needs_projection else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Head(nn.Module):
    """Per-run classifier on (B, K, F) features; weight (K*C, F) so runs stack along dim 0.

    Initialised as LDAM-DRW's resnet_cifar.py: the cosine head's class vectors uniform in [-1, 1]^F scaled to unit
    norm, the linear head's weight Kaiming normal and its bias nn.Linear's default.
    """

    def __init__(self, runs: int, in_features: int, num_classes: int, normed: bool):
        super().__init__()
        self.runs, self.num_classes, self.normed = runs, num_classes, normed
        self.weight = nn.Parameter(torch.empty(runs * num_classes, in_features))
        self.bias = None if normed else nn.Parameter(torch.empty(runs * num_classes))
        with torch.no_grad():
            for w in self.weight.chunk(runs):
                # LDAM-DRW's NormedLinear: uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5) of its (F, C) weight
                if normed:
                    w.copy_(torch.empty(in_features, num_classes).uniform_(-1, 1).renorm(2, 1, 1e-5).mul(1e5).T)
                else:
                    nn.init.kaiming_normal_(w)
        if self.bias is not None:  # nn.Linear's default bias init, which LDAM-DRW keeps
            bound = in_features**-0.5
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # float32 even under bf16 autocast: bf16 cosines in [0.5, 1) are 2^-8 apart, so MM's margin
        # z_y - max_j z_j would be exactly 0 (no margin) far more often than in the paper's float32
        # training. The head is K (C x F) products: float32 costs nothing measurable.
        with torch.autocast(features.device.type, enabled=False):
            dtype = torch.promote_types(features.dtype, self.weight.dtype)  # float32 under autocast; float64 stays
            features, weight = features.to(dtype), self.weight.view(self.runs, self.num_classes, -1)
            if self.normed:
                features, weight = F.normalize(features, dim=-1), F.normalize(weight, dim=-1)
            logits = torch.einsum("bkf,kcf->bkc", features, weight)
            if self.bias is not None:
                logits = logits + self.bias.view(self.runs, self.num_classes)
        return logits


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int, normed: bool = False, runs: int = 1):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 20, 32, ...), got {depth}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if runs < 1:
            raise ValueError(f"runs must be >= 1, got {runs}")
        blocks = (depth - 2) // 6
        self.runs, self.num_classes = runs, num_classes
        self.conv1 = nn.Conv2d(3 * runs, 16 * runs, 3, 1, 1, bias=False, groups=runs)
        self.bn1 = nn.BatchNorm2d(16 * runs)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks):
                layers.append(BasicBlock(runs, in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.feature_dim = in_planes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
        self.fc = Head(runs, in_planes, num_classes, normed)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features, (B, K, F)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return out.mean(dim=(2, 3)).view(x.shape[0], self.runs, self.feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(self.features(x))
        return logits.squeeze(1) if self.runs == 1 else logits


def build_model(arch: str, num_classes: int, normed: bool = False, runs: int = 1) -> CifarResNet:
    """The network called ``arch`` (a key of ARCHS)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(ARCHS)}")
    return CifarResNet(ARCHS[arch], num_classes, normed, runs)


def _named(depth: int):
    def build(num_classes: int = 10, normed: bool = False, runs: int = 1) -> CifarResNet:
        return CifarResNet(depth, num_classes, normed, runs)

    build.__name__ = build.__qualname__ = f"resnet{depth}"
    build.__doc__ = f"ResNet-{depth} for 32x32 inputs ({(depth - 2) // 6} blocks a stage)."
    return build


resnet8, resnet20, resnet32, resnet44, resnet56, resnet110 = (_named(d) for d in ARCHS.values())


def split_state_dict(state: dict, runs: int) -> list[dict]:
    """A fused model's (or its optimizer's per-parameter) tensors, as K single-run dicts."""
    singles = [{} for _ in range(runs)]
    for name, tensor in state.items():
        parts = tensor.chunk(runs) if tensor.dim() > 0 else [tensor] * runs
        for single, part in zip(singles, parts):
            single[name] = part.clone()
    return singles


def merge_state_dicts(states: list[dict]) -> dict:
    """K single-run state dicts as one fused model's (the inverse of split_state_dict)."""
    return {
        name: torch.cat([s[name] for s in states]) if states[0][name].dim() > 0 else states[0][name].clone()
        for name in states[0]
    }


def split_optimizer_state(state: dict, runs: int) -> list[dict]:
    """A fused model's optimizer state_dict as K single-run ones (per-parameter state split as the parameters)."""
    split = {i: split_state_dict(s, runs) for i, s in state["state"].items()}  # each parameter's state split once
    return [{"state": {i: singles[k] for i, singles in split.items()}, "param_groups": state["param_groups"]}
            for k in range(runs)]


def merge_optimizer_states(states: list[dict]) -> dict:
    """K single-run optimizer state_dicts as the fused model's (the inverse of split_optimizer_state)."""
    merged = {i: merge_state_dicts([s["state"][i] for s in states]) for i in states[0]["state"]}
    return {"state": merged, "param_groups": states[0]["param_groups"]}
