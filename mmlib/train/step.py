"""The training step of K fused runs as a few tensor ops over static buffers: eager, or as CUDA graphs.

``TrainStep`` gathers and augments the K runs' batches (mmlib.data.pipeline.TrainStream), forwards the fused model,
takes the K losses (one module call each, mmlib.train.losses), backward and the SGD update, sharpness-aware when
sam_rho > 0, and sums each run's loss, errors and first non-finite step on the device. What changes during training
is a device tensor updated in place, so the step can be captured once as a CUDA graph (compile="graphs"); each graph's
first replay is checked against the eager step (``step_difference``), and ``TrainStep.paths`` says which step trained
and why. The README's Speed and "Sharpness-aware minimization" say why it is built so and how SAM follows its code.
"""

import math
import warnings
from collections.abc import Callable

import torch

from mmlib.choices import COMPILE_MODES
from mmlib.data.pipeline import TrainStream
from mmlib.errors import StepCheckError

SAM_EPSILON = 1e-12  # added to the gradient norm, as the SAM code of Rangwani et al. does
GRAPH_WARMUP_STEPS = 3  # steps run (and undone) before a capture: cuDNN autotuning and lazy allocations

# How far a captured step's first replay may differ from the eager step from the same state, as a fraction of
# the eager step's change of each tensor (step_difference). Reasoned, not yet measured on a GPU (the device
# check prints every check's largest difference). Both lie far below the faults the check is for: a stale
# learning rate, a skipped update or stale class weights change a tensor's change by about its whole size (~1).
CHECK_TOLERANCE_FP32 = 1e-3
"""float32: the two steps run the same kernels, up to cuDNN's choice of algorithm (benchmark mode) and
reductions by atomics whose order varies (some backward convolutions, BatchNorm): rounding of about 1e-7 a
value, which flips the TF32 rounding (2^-11) of the few inputs of the next convolution it reaches (cuDNN
convolutions use TF32 by default on Ampere and later), grown through the backward pass to well under 1e-4
of an update."""
CHECK_TOLERANCE_BF16 = 3e-2
"""bf16: activations and their gradients carry 8 significant bits (2^-9 ~ 2e-3 relative), so a rounding
difference upstream flips the rounding of what depends on it by a bf16 unit: about 1e-3 of an update, and
a sample near a margin loss's kink (MM's m = 0, the hinge) may move its contribution."""


def resolve_compile(mode: str, device: torch.device) -> str:
    """The step's mode on this device: auto becomes graphs on CUDA and off elsewhere."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile {mode!r}; valid: {', '.join(COMPILE_MODES)}")
    if mode == "auto":
        return "graphs" if device.type == "cuda" else "off"
    if mode == "graphs" and device.type != "cuda":
        raise ValueError(f"compile='graphs' needs a CUDA device, the run is on {device}; use compile='auto' or 'off'")
    return mode


@torch.no_grad()
def step_difference(before: dict[str, torch.Tensor], eager: dict[str, torch.Tensor],
                    fast: dict[str, torch.Tensor]) -> tuple[float, str]:
    """The largest difference between two steps taken from the same state, and the tensor where it lies.

    Each tensor's difference is |fast - eager| / (|eager - before| + eps |before|) in Frobenius norms: the
    fast step's error as a fraction of the eager step's change (eps |before|: the change's own rounding).
    Integer tensors (BatchNorm's batch count, the step index) must be equal (difference 0, else infinite).
    Elements non-finite before or after the eager step (a diverged run's slice of a fused tensor) are left out:
    the trainer's non-finite check stops that run, and the other runs' elements are still compared.
    """
    worst, where = 0.0, ""
    for name, value in fast.items():
        reference, start = eager[name], before[name]
        finite = torch.isfinite(reference) & torch.isfinite(start)
        if not finite.all():
            value, reference, start = value[finite], reference[finite], start[finite]
        if not value.is_floating_point():
            difference = 0.0 if torch.equal(value, reference) else math.inf
        else:
            error = (value.double() - reference.double()).norm().item()
            change = ((reference.double() - start.double()).norm()
                      + torch.finfo(value.dtype).eps * start.double().norm()).item()
            difference = 0.0 if error == 0 else (error / change if change > 0 else math.inf)
            difference = math.inf if math.isnan(difference) else difference
        if difference > worst:
            worst, where = difference, name
    return worst, where


@torch.no_grad()
def sgd_update(params, grads, momentum_buffers, neg_lr: torch.Tensor, momentum: float, weight_decay: float) -> None:
    """torch.optim.SGD's update (dampening 0, no Nesterov) with the learning rate as a device tensor.

    SGD.step reads a tensor learning rate with .item(), a host sync that a CUDA graph cannot capture;
    here -lr multiplies on the device. Momentum buffers start as zeros: 0 * momentum + g is the
    gradient, as SGD's first step sets it. grads are overwritten (weight decay is added in place).
    """
    if weight_decay:
        torch._foreach_add_(grads, params, alpha=weight_decay)
    direction = grads
    if momentum:
        torch._foreach_mul_(momentum_buffers, momentum)
        torch._foreach_add_(momentum_buffers, grads)
        direction = momentum_buffers
    torch._foreach_add_(params, torch._foreach_mul(direction, neg_lr))


@torch.no_grad()
def sam_ascent(params, grads, saved, rho: torch.Tensor) -> None:
    """SAM's ascent for K fused runs: w saved into ``saved``, then each run moved to w + rho_k g_k / (||g_k|| + eps).

    Every parameter holds the K runs' tensors concatenated along dim 0 (mmlib.train.models), so run k's
    slice of p is p.unflatten(0, (K, -1))[k], and ||g_k|| is the L2 norm of run k's slices of all the
    gradients together. rho: (K,) on the device, so nothing here waits for the host.
    """
    runs = len(rho)
    squares = sum(g.unflatten(0, (runs, -1)).pow(2).sum(dim=tuple(range(1, g.dim() + 1))) for g in grads)
    scale = rho / (squares.sqrt() + SAM_EPSILON)
    torch._foreach_copy_(saved, params)
    for p, g in zip(params, grads):
        p.unflatten(0, (runs, -1)).add_(g.unflatten(0, (runs, -1)) * scale.view(runs, *[1] * g.dim()))


class SGDState:
    """SGD's hyper-parameters and momentum buffers as torch.optim.SGD holds them, without torch.optim.

    The step makes SGD's update itself (sgd_update), so an optimizer would only hold its state, and building a
    torch.optim.SGD imports torch's compiler (torch._dynamo: two seconds a process). This keeps the same
    ``param_groups`` and ``state`` and the same state_dict format, so checkpoints load into either.
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        self.param_groups = [{"params": list(params), "lr": lr, "momentum": momentum, "dampening": 0,
                              "weight_decay": weight_decay, "nesterov": False, "maximize": False}]
        self.state: dict[torch.Tensor, dict] = {p: {} for p in self.param_groups[0]["params"]}

    def state_dict(self) -> dict:
        group = self.param_groups[0]
        return {"state": {i: dict(self.state[p]) for i, p in enumerate(group["params"]) if self.state[p]},
                "param_groups": [{**{k: v for k, v in group.items() if k != "params"},
                                  "params": list(range(len(group["params"])))}]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Take a state_dict's hyper-parameters and state, each tensor on its parameter's device and dtype. As
        torch.optim.SGD does, the group and the state are new objects (TrainStep refuses to run on replaced ones)."""
        params = self.param_groups[0]["params"]
        [saved] = state_dict["param_groups"]
        if len(saved["params"]) != len(params):
            raise ValueError(f"the optimizer state holds {len(saved['params'])} parameters, the model {len(params)}")
        self.param_groups = [{**{k: v for k, v in saved.items() if k != "params"}, "params": params}]
        self.state = {p: {} for p in params}
        for i, values in state_dict["state"].items():
            p = params[int(i)]
            self.state[p] = {k: v.to(device=p.device, dtype=p.dtype) if torch.is_tensor(v) else v
                             for k, v in values.items()}


class TrainStep:
    """K runs' training steps over their streams, with an SGD optimizer's parameters and state.

    model: the fused model (input (B, 3K, H, W), output (B, K, C), or (B, C) for K = 1); streams: the
    K runs' TrainStreams over the same images; criteria: the K losses; optimizer: an SGDState (or a
    torch.optim.SGD) with one parameter group, which holds the learning rate and momentum buffers (so
    checkpoints keep SGD's state_dict format) but is never stepped. transform(x, y, generator) -> (x, y)
    changes each run's batch (SSP's rotations); it draws random numbers every step, so it runs eager only. sam_rho: each
    run's SAM radius (None: every run plain SGD); runs of rho 0 and of rho > 0 do not share a step.
    Build it after loading a checkpoint into the optimizer (it takes the momentum buffers it finds) and after
    setting the losses' class weights (all ones for none): both then change in place only, and each epoch
    refuses replaced ones, which a captured graph would never see.
    """

    def __init__(self, model: torch.nn.Module, streams: list[TrainStream], criteria: list, optimizer: "SGDState",
                 bf16: bool, channels_last: bool, compile: str = "off", transform=None,
                 sam_rho: list[float] | None = None):
        device = streams[0].labels.device
        sam_rho = [0.0] * len(streams) if sam_rho is None else list(sam_rho)
        if len(sam_rho) != len(streams) or not all(r >= 0 for r in sam_rho):
            raise ValueError(f"sam_rho must be one value >= 0 per run ({len(streams)}), got {sam_rho}")
        if 0 < sum(r > 0 for r in sam_rho) < len(sam_rho):
            raise ValueError(f"runs with sam_rho 0 and > 0 cannot share a step (SAM's second pass would also update "
                             f"the plain runs' BatchNorm statistics), got {sam_rho}")
        self.mode = resolve_compile(compile, device)
        if self.mode == "graphs" and transform is not None:
            raise ValueError("compile='graphs' cannot capture a batch transform that draws random numbers every step")
        if len(optimizer.param_groups) != 1:
            raise ValueError("the step updates one SGD parameter group")
        group = optimizer.param_groups[0]
        if group["dampening"] or group["nesterov"] or group["maximize"]:
            raise ValueError("the step's SGD update has no dampening, Nesterov momentum or maximize")
        self.model, self.streams, self.criteria, self.transform = model, streams, criteria, transform
        self.optimizer, self.loss_weights = optimizer, [getattr(c, "weight", None) for c in criteria]
        self.forward = model if self.mode in ("off", "graphs") else torch.compile(model, mode=self.mode)
        # Autocast's cache of low-precision weights would outlive a captured graph's weights.
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16,
                                       cache_enabled=self.mode != "graphs")
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.group, self.params = group, list(group["params"])
        self.momentum, self.weight_decay = group["momentum"], group["weight_decay"]
        self.momentum_buffers = [optimizer.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                                 for p in self.params] if self.momentum else []
        self.neg_lr = torch.tensor(-group["lr"], device=device)
        self.sam = sam_rho[0] > 0  # fixed for the step's life, so a captured graph holds one path
        self.sam_rho = torch.tensor(sam_rho, device=device)
        self.saved_params = [torch.empty_like(p) for p in self.params] if self.sam else []  # w during SAM's second pass
        runs, n = len(streams), len(streams[0].labels)
        self.batch_size, self.samples = streams[0].batch_size, n
        # This epoch's draws of the K runs, the step index and the metrics: fixed addresses for the graphs.
        self.order = torch.zeros(runs, n, dtype=torch.int64, device=device)
        self.offsets = torch.zeros(runs, n, 2, dtype=torch.int64, device=device)
        self.flips = torch.zeros(runs, n, dtype=torch.bool, device=device)
        self.positions = torch.arange(self.batch_size, device=device)
        self.step_index = torch.zeros((), dtype=torch.int64, device=device)
        self.loss_sum = torch.zeros(runs, device=device)
        self.wrong = torch.zeros(runs, device=device)
        self.first_bad = torch.full((runs,), -1, dtype=torch.int64, device=device)
        # compile="graphs" stops at a failed check, "auto" continues eager; the paths the step took, and why.
        self.strict, self.tolerance = compile == "graphs", CHECK_TOLERANCE_BF16 if bf16 else CHECK_TOLERANCE_FP32
        self.fast_steps: dict[int, Callable[[], None]] = {}  # batch size -> its checked fast step
        self.pool = None  # the graphs' shared memory pool
        self.checks: list[dict] = []  # each capture's check: batch size, largest difference and where
        self.paths: list[dict] = ([] if self.mode == "graphs"
                                  else [{"path": "eager", "reason": _eager_reason(compile, self.mode)}])

    def set_lr(self, lr: float) -> None:
        """The learning rate of the next steps, on the device and in the optimizer's group (what checkpoints record)."""
        self.group["lr"] = lr
        self.neg_lr.fill_(-lr)

    def sizes(self) -> list[int]:
        """The batch sizes of one epoch: full batches, then the partial one if any."""
        full, rest = divmod(self.samples, self.batch_size)
        return [self.batch_size] * full + ([rest] if rest else [])

    def epoch(self, progress=None) -> tuple[list[float], list[float], list[int]]:
        """One epoch of the K runs; returns per-run mean loss, train error (%) and first non-finite step (-1: none).

        progress(step, images), if given, is called after each step is queued (host side: no sync).
        """
        self._refuse_replaced_inputs()
        self.model.train()
        draws = [stream.draw() for stream in self.streams]
        self.order.copy_(torch.stack([d[0] for d in draws]))
        if self.streams[0].augment:
            self.offsets.copy_(torch.stack([d[1] for d in draws]))
            self.flips.copy_(torch.stack([d[2] for d in draws]))
        for metric in (self.step_index, self.loss_sum, self.wrong):
            metric.zero_()
        self.first_bad.fill_(-1)
        for step, size in enumerate(self.sizes()):
            if self.mode != "graphs":
                self.eager_step(size)
            elif size in self.fast_steps:
                self.fast_steps[size]()
            else:
                self._checked_fast_step(size)
            if progress is not None:
                progress(step + 1, size * len(self.streams))
        return ((self.loss_sum / self.samples).tolist(), (100.0 * self.wrong / self.samples).tolist(),
                self.first_bad.tolist())

    def eager_step(self, size: int) -> None:
        """One step over `size` samples of every run, at self.step_index in this epoch's draws."""
        runs = len(self.streams)
        positions = self.step_index * self.batch_size + self.positions[:size]
        idx = self.order.index_select(1, positions).flatten()  # run-major: run k's batch is block k
        stream = self.streams[0]  # every stream holds the same images: one gather serves all runs
        x = stream.gather(idx, self.offsets.index_select(1, positions).flatten(0, 1),
                          self.flips.index_select(1, positions).flatten())
        y = stream.labels.index_select(0, idx).view(runs, size)
        x = x.view(runs, size, *x.shape[1:])
        if self.transform is not None:
            turned = [self.transform(x[k], y[k], s.generator) for k, s in enumerate(self.streams)]
            x, y = torch.stack([t[0] for t in turned]), torch.stack([t[1] for t in turned])
        # (B, 3K, H, W): run k's images in channels 3k..3k+2, as the fused model's grouped convolutions expect
        x = x.transpose(0, 1).reshape(size, -1, *x.shape[3:]).contiguous(memory_format=self.memory_format)
        y = y.t()
        logits, losses = self._backward(x, y)
        finite = torch.isfinite(losses.detach())
        if self.sam:  # SAM: the update takes the gradient at w + rho g / ||g|| (module docstring)
            sam_ascent(self.params, [p.grad for p in self.params], self.saved_params, self.sam_rho)
            finite &= torch.isfinite(self._backward(x, y)[1].detach())
            with torch.no_grad():
                torch._foreach_copy_(self.params, self.saved_params)  # back to w, exactly
        sgd_update(self.params, [p.grad for p in self.params], self.momentum_buffers, self.neg_lr,
                   self.momentum, self.weight_decay)
        self.loss_sum += losses.detach() * size
        self.wrong += (logits.detach().argmax(-1) != y).sum(0)
        self.first_bad.copy_(torch.where((self.first_bad < 0) & ~finite, self.step_index, self.first_bad))
        self.step_index += 1

    def _backward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused forward, the K runs' losses and their gradients (into .grad): logits (B, K, C), losses (K,)."""
        with self.autocast:
            logits = self.forward(x).view(len(y), len(self.criteria), -1)
        losses = torch.stack([criterion(logits[:, k], y[:, k]) for k, criterion in enumerate(self.criteria)])
        for p in self.params:
            p.grad = None
        losses.sum().backward()
        return logits, losses

    def _refuse_replaced_inputs(self) -> None:
        """The step reads the tensors it was built with (a captured graph can read no others): refuse replaced ones."""
        group = self.optimizer.param_groups[0]
        if group is not self.group or any(self.optimizer.state[p].get("momentum_buffer") is not buffer
                                          for p, buffer in zip(self.params, self.momentum_buffers)):
            raise RuntimeError("the optimizer's state was replaced (load_state_dict) after the TrainStep was built, "
                               "which would keep updating the old one: load it first, then build the step")
        for k, (criterion, weight) in enumerate(zip(self.criteria, self.loss_weights)):
            if getattr(criterion, "weight", None) is not weight:
                raise RuntimeError(f"loss {k}'s class weights were replaced (set from or to None) after the TrainStep "
                                   "was built, which would keep reading the old ones: set them before (all ones for "
                                   "none); later changes are copied in")

    def state(self) -> dict[str, torch.Tensor]:
        """Every tensor a step changes, by name."""
        names = {id(p): name for name, p in self.model.named_parameters()}
        return {
            **{f"parameter {names[id(p)]}": p for p in self.params},
            **{f"buffer {name}": b for name, b in self.model.named_buffers()},
            **{f"momentum of {names[id(p)]}": m for p, m in zip(self.params, self.momentum_buffers)},
            "step index": self.step_index, "losses": self.loss_sum, "wrong": self.wrong,
            "first non-finite step": self.first_bad,
        }

    def _checked_fast_step(self, size: int) -> None:
        """This step over `size` samples by a new fast step, checked against the eager step from the same state.

        On a capture error or a difference above the tolerance, the eager step's result stands and the run
        continues eager (compile="auto") or stops (compile="graphs"). The check costs one eager step.
        """
        state = self.state()
        before = _copies(state)
        try:
            fast = self._fast_step(size)
        except RuntimeError as error:  # e.g. an operation that cannot be captured, or no memory for the graph
            _assign(state, before)  # a warm-up step may have stopped half-way
            self.eager_step(size)
            self._fall_back(f"over {size} samples could not be captured ({str(error).strip().splitlines()[0]})")
            return
        self.eager_step(size)
        eager = _copies(state)
        _assign(state, before)
        fast()
        # Not the wrong predictions: an argmax between near-equal logits may flip within rounding.
        compared = {name: value for name, value in state.items() if name != "wrong"}
        difference, where = step_difference(before, eager, compared)
        self.checks.append({"batch": size, "difference": difference, "at": where, "tolerance": self.tolerance})
        if difference > self.tolerance:
            _assign(state, eager)
            self._fall_back(f"over {size} samples differs from the eager step from the same state by {difference:.3g} "
                            f"of its change at {where} (tolerance {self.tolerance:g})")
            return
        self.fast_steps[size] = fast
        checked = {"path": "graphs", "reason": "each captured step's first replay matched the eager step from the "
                                               f"same state (tolerance {self.tolerance:g})"}
        if checked not in self.paths:
            self.paths.append(checked)

    def _fall_back(self, reason: str) -> None:
        """The eager step from now on (compile="auto"), with one warning; compile="graphs" stops instead."""
        message = f"the CUDA graph step {reason}"
        if self.strict:
            raise StepCheckError(f"compile='graphs': {message}; train with compile='auto' (eager after a failed "
                                 "check) or 'off'")
        warnings.warn(f"{message}; this run continues on the eager step", RuntimeWarning, stacklevel=4)
        self.mode, self.fast_steps, self.pool = "off", {}, None
        self.paths.append({"path": "eager", "reason": message})

    def warm_up(self, size: int) -> None:
        """GRAPH_WARMUP_STEPS steps over `size` samples, each undone: what a step does once (cuDNN autotuning,
        lazy allocations) happens outside the capture, and training is as if they never ran."""
        state = self.state()
        saved = _copies(state)
        for _ in range(GRAPH_WARMUP_STEPS):
            self.eager_step(size)
            _assign(state, saved)

    def _fast_step(self, size: int):
        """The step over `size` samples as a CUDA graph, captured after warm-up steps on a side stream; returns
        its replay. Capturing records the step without running it: the state stays as it is.

        Every graph of the step shares one memory pool: the partial batch's graph reuses the full batch's
        activation memory instead of doubling it. That is safe because replays never overlap and each reads
        only pool memory it wrote earlier in the same replay (the inputs and state live outside the pool).
        """
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.warm_up(size)
        torch.cuda.current_stream().wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self.eager_step(size)
        return graph.replay


def _eager_reason(compile: str, mode: str) -> str:
    if mode == "off":
        return "compile='off'" if compile == "off" else "compile='auto' without CUDA (graphs need it)"
    return f"compile={mode!r}: torch.compile of the model inside the eager step"


def _copies(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in state.items()}


@torch.no_grad()
def _assign(state: dict[str, torch.Tensor], values: dict[str, torch.Tensor]) -> None:
    for name, tensor in state.items():
        tensor.copy_(values[name])
