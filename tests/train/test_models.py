import pytest
import torch
import torch.nn.functional as F

from mmlib.choices import ARCHS
from mmlib.data.pipeline import eval_batches, to_device
from mmlib.train.models import build_model, merge_state_dicts, resnet8, resnet32, split_state_dict


def resnet_parameter_count(blocks: int, num_classes: int, bias: bool) -> int:
    """Convolutions (3x3, no bias) and BatchNorm (scale, shift) of the CIFAR ResNet, plus the head."""
    count = 3 * 16 * 9 + 2 * 16
    in_planes = 16
    for planes in (16, 32, 64):
        for _ in range(blocks):
            count += in_planes * planes * 9 + planes * planes * 9 + 4 * planes
            in_planes = planes
    return count + 64 * num_classes + (num_classes if bias else 0)


def test_resnet32_has_the_papers_parameter_count():
    count = sum(p.numel() for p in resnet32(10).parameters())
    assert count == resnet_parameter_count(5, 10, bias=True)
    assert round(count / 1e6, 2) == 0.46


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_arch_has_6n_plus_2_layers(arch):
    model = build_model(arch, 100, normed=True)
    blocks = (ARCHS[arch] - 2) // 6
    assert len(model.layers) == 3 * blocks
    assert sum(p.numel() for p in model.parameters()) == resnet_parameter_count(blocks, 100, bias=False)


def test_cosine_head_outputs_cosines():
    torch.manual_seed(0)
    model = resnet8(10, normed=True).eval()
    x = torch.randn(6, 3, 32, 32)
    logits = model(x)
    features = F.normalize(model.features(x).squeeze(1), dim=1)
    weight = F.normalize(model.fc.weight, dim=1)
    torch.testing.assert_close(logits, features @ weight.T)
    assert logits.abs().max() <= 1.0 + 1e-6
    assert model.fc.bias is None


def test_option_a_shortcut_pads_channels_with_zeros():
    block = resnet8(10).layers[1]  # 16 -> 32 channels, stride 2
    x = torch.randn(2, 16, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    assert (out[:, :8] == 0).all() and (out[:, 24:] == 0).all()
    torch.testing.assert_close(out[:, 8:24], x[:, :, ::2, ::2])


def test_kaiming_normal_init_scale():
    torch.manual_seed(0)
    conv = resnet32(10).layers[14].conv2.weight  # 64 -> 64, 3x3: std sqrt(2 / (64 * 9))
    assert conv.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.05)


def _drawn_from(seed: int, model, normed: bool) -> dict:
    """The initial weights drawn from ``seed`` with LDAM-DRW's distributions, backbone first: every convolution's
    default draw as it is built (overwritten), then Kaiming normal (std sqrt(2 / fan_in)) for each in module
    order; then the head: the cosine head's (F, C) uniform(-1, 1) draw with each class column scaled to norm 1
    (LDAM-DRW's NormedLinear), or the linear head's Kaiming-normal weight and bias uniform in +-F^-1/2."""
    convs = [(name, m.weight.shape) for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    torch.manual_seed(seed)
    for _, shape in convs:
        torch.empty(shape).uniform_(-1, 1)
    expected = {f"{name}.weight": torch.randn(shape) * (2 / shape[1:].numel()) ** 0.5 for name, shape in convs}
    features, classes = model.feature_dim, model.num_classes
    if normed:
        drawn = torch.empty(features, classes).uniform_(-1, 1)
        return {**expected, "fc.weight": (drawn / drawn.norm(dim=0)).T}
    weight = torch.randn(classes, features) * (2 / features) ** 0.5
    return {**expected, "fc.weight": weight, "fc.bias": torch.empty(classes).uniform_(-(features**-0.5), features**-0.5)}


@pytest.mark.parametrize("normed", [True, False])
def test_a_seed_draws_the_network_with_ldam_drws_distributions(normed):
    """The cosine head starts at unit-norm class vectors as LDAM-DRW's NormedLinear does (Kaiming's would be ~1.4)."""
    torch.manual_seed(5)
    model = resnet8(7, normed=normed)
    state = model.state_dict()
    for name, expected in _drawn_from(5, model, normed).items():
        torch.testing.assert_close(state[name], expected, rtol=1e-6, atol=1e-7, msg=name)
    if normed:
        torch.testing.assert_close(model.fc.weight.norm(dim=1), torch.ones(7))


def test_fused_heads_draw_each_run_as_one_run():
    fused = resnet8(4, normed=True, runs=3)
    torch.testing.assert_close(fused.fc.weight.norm(dim=1), torch.ones(12))


def test_fused_model_equals_its_runs():
    """K networks fused (grouped convolutions, per-run BatchNorm) compute what each computes alone."""
    torch.manual_seed(0)
    singles = [resnet8(5, normed=normed) for normed in (True, True, True)]
    fused = resnet8(5, normed=True, runs=3)
    fused.load_state_dict(merge_state_dicts([m.state_dict() for m in singles]))
    xs = [torch.randn(4, 3, 32, 32) for _ in singles]
    out = fused(torch.cat(xs, dim=1))  # training mode: batch statistics per run
    assert out.shape == (4, 3, 5)
    for k, (model, x) in enumerate(zip(singles, xs)):
        torch.testing.assert_close(out[:, k], model(x), rtol=1e-4, atol=1e-5)
    for k, state in enumerate(split_state_dict(fused.state_dict(), 3)):
        for name, tensor in state.items():  # running statistics were updated per run
            torch.testing.assert_close(tensor, singles[k].state_dict()[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("normed", [True, False])
def test_the_head_computes_in_float32_under_bf16_autocast(normed):
    torch.manual_seed(0)
    model = resnet8(10, normed=normed).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.features(x).squeeze(1)
        logits = model(x)
    assert features.dtype == torch.bfloat16  # the backbone runs in bf16
    assert logits.dtype == torch.float32
    features, weight = features.float(), model.fc.weight
    if normed:
        expected = F.normalize(features, dim=1) @ F.normalize(weight, dim=1).T
    else:
        expected = features @ weight.T + model.fc.bias
    torch.testing.assert_close(logits, expected)  # float32's tolerances


def target_ties(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """Samples whose target logit equals the largest other one: MM's m = 0, where it adds no margin."""
    z_target = logits.gather(-1, labels[..., None]).squeeze(-1)
    z_other = logits.scatter(-1, labels[..., None], float("-inf")).amax(-1)
    return int((z_target == z_other).sum())


@pytest.mark.slow  # bf16 on a CPU without bf16 units is emulated
def test_bf16_cosine_logits_tie_far_more_often_than_the_float32_heads(digits):
    """Digits' test set (597 images) through a ResNet-8 under bf16 autocast, its cosine head's class vectors set to
    the classes' mean training features (nearest class mean, where a cosine head's training leads): every cosine
    lies in [0.98, 1], where bf16 values are 2^-8 apart, so the target ties another class (MM's m = 0: no margin)
    in most samples; the float32 head's never tie."""
    torch.manual_seed(0)
    model = resnet8(digits.num_classes, normed=True).eval()
    train_x, train_y = to_device(digits.train_images, digits.train_labels, "cpu")
    test_x, test_y = to_device(digits.test_images, digits.test_labels, "cpu")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        train_features = model.features(next(eval_batches(train_x, train_y, len(train_y)))[0]).squeeze(1).float()
        model.fc.weight.copy_(torch.stack([train_features[train_y == c].mean(0) for c in range(digits.num_classes)]))
        features = model.features(next(eval_batches(test_x, test_y, len(test_y)))[0])
        bf16_logits = F.normalize(features.squeeze(1), dim=1) @ F.normalize(model.fc.weight, dim=1).T
        head_logits = model.fc(features).squeeze(1)
    assert bf16_logits.dtype == torch.bfloat16 and head_logits.dtype == torch.float32
    assert bf16_logits.min() >= 0.97
    assert target_ties(bf16_logits, test_y) > len(test_y) / 2
    assert target_ties(head_logits, test_y) == 0


def test_split_and_merge_are_inverse():
    fused = resnet8(10, runs=2)
    state = fused.state_dict()
    merged = merge_state_dicts(split_state_dict(state, 2))
    assert merged.keys() == state.keys()
    for name in state:
        assert torch.equal(merged[name], state[name])
    single = resnet8(10)
    single.load_state_dict(split_state_dict(state, 2)[1])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: build_model("resnet33", 10), "unknown arch 'resnet33'; valid: resnet8, resnet20"),
        (lambda: build_model("resnet32", 0), "num_classes must be >= 1"),
        (lambda: build_model("resnet32", 10, runs=0), "runs must be >= 1"),
    ],
)
def test_bad_model_parameters(make, message):
    with pytest.raises(ValueError, match=message):
        make()
