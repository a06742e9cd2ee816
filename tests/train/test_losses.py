"""Losses against numbers computed here from the papers' formulas with plain Python math."""

import math

import pytest
import torch

from mmlib.train.losses import (
    LOSSES,
    MM_VARIANTS,
    AdditiveMarginLoss,
    CrossEntropyLoss,
    FocalLoss,
    HingeLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    MMLoss,
    build_loss,
    class_balanced_weights,
    ldam_margins,
)

# Cosine logits of four samples over three classes, and their labels.
Z = [
    [0.9, 0.2, -0.3],  # label 0, correct, margin 0.7
    [0.1, 0.4, 0.3],  # label 2, wrong, margin -0.1
    [0.5, -0.2, 0.6],  # label 1, wrong, margin -0.8
    [-0.1, 0.3, 0.2],  # label 1, correct, margin 0.1
]
Y = [0, 2, 1, 1]
COUNTS = [16, 81, 1]  # n^(-1/4) = 1/2, 1/3, 1


def logits(rows=Z, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype)


def labels(ys=Y):
    return torch.tensor(ys)


def ce(row, y):
    """-log softmax(row)_y."""
    return -row[y] + math.log(sum(math.exp(v) for v in row))


def mean(values, weights=None):
    weights = weights or [1.0] * len(values)
    return sum(w * v for w, v in zip(weights, values)) / sum(weights)


def margin_ce(rows, ys, margins, s, weight=None):
    """CE(s * (z - margin_i e_y)), weighted mean over samples."""
    values = []
    for row, y, m in zip(rows, ys, margins):
        shifted = [s * (v - (m if j == y else 0.0)) for j, v in enumerate(row)]
        values.append(ce(shifted, y))
    return mean(values, [weight[y] for y in ys] if weight else None)


def mm_delta(row, y, delta_neg, beta):
    """Eq. 1-3: Delta^MM of one sample, delta_plus = beta * delta_neg (Eq. 5)."""
    m = row[y] - max(v for j, v in enumerate(row) if j != y)
    if m > 0:
        return math.exp(-m - beta * delta_neg)
    if m < 0:
        return math.exp(-(max(v for j, v in enumerate(row) if j != y) - row[y]) - delta_neg)  # Eq. 3 as written
    return 0.0


# --- class weights and margins -------------------------------------------------------------


def test_class_balanced_weights_follow_cui_et_al():
    beta = 0.9
    raw = [(1 - beta) / (1 - beta**n) for n in COUNTS]
    expected = [w * 3 / sum(raw) for w in raw]
    assert class_balanced_weights(COUNTS, beta).tolist() == pytest.approx(expected, rel=1e-6)
    assert class_balanced_weights(COUNTS, 0.0).tolist() == pytest.approx([1.0, 1.0, 1.0])
    inverse = [1 / n for n in COUNTS]  # beta = 1: the limit, Algorithm 1's n_y^-1
    assert class_balanced_weights(COUNTS, 1.0).tolist() == pytest.approx([w * 3 / sum(inverse) for w in inverse], rel=1e-6)


def test_class_balanced_weights_at_default_beta_sum_to_class_count():
    weights = class_balanced_weights([5000, 500, 50], 0.9999)
    assert weights.sum().item() == pytest.approx(3.0, rel=1e-6)
    assert weights[0] < weights[1] < weights[2]


def test_ldam_margins_are_inverse_fourth_root_scaled_to_max():
    assert ldam_margins(COUNTS, 0.5).tolist() == pytest.approx([0.25, 0.5 / 3, 0.5], rel=1e-6)


# --- each loss against its formula ---------------------------------------------------------


def test_cross_entropy_plain_and_weighted():
    weight = [1.0, 2.0, 0.5]
    plain = mean([ce(r, y) for r, y in zip(Z, Y)])
    weighted = mean([ce(r, y) for r, y in zip(Z, Y)], [weight[y] for y in Y])
    assert CrossEntropyLoss()(logits(), labels()).item() == pytest.approx(plain, rel=1e-6)
    assert CrossEntropyLoss(torch.tensor(weight))(logits(), labels()).item() == pytest.approx(weighted, rel=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
def test_focal_loss_is_modulated_cross_entropy(gamma):
    weight = [1.0, 2.0, 0.5]
    values = []
    for row, y in zip(Z, Y):
        p = math.exp(-ce(row, y))
        values.append((1 - p) ** gamma * -math.log(p))
    loss = FocalLoss(gamma)
    assert loss(logits(), labels()).item() == pytest.approx(mean(values), rel=1e-6)
    loss.weight = torch.tensor(weight)
    assert loss(logits(), labels()).item() == pytest.approx(mean(values, [weight[y] for y in Y]), rel=1e-6)


def test_ldam_loss_subtracts_count_margins_then_scales():
    margins = [[0.25, 0.5 / 3, 0.5][y] for y in Y]
    expected = margin_ce(Z, Y, margins, 30.0)
    assert LDAMLoss(COUNTS, max_m=0.5, s=30.0)(logits(), labels()).item() == pytest.approx(expected, rel=1e-5)


def test_additive_margin_loss_uses_one_margin():
    expected = margin_ce(Z, Y, [0.35] * 4, 30.0)
    assert AdditiveMarginLoss(0.35, s=30.0)(logits(), labels()).item() == pytest.approx(expected, rel=1e-5)


def test_hinge_losses_uniform_and_ldam_margins():
    def hinge(margins, s):
        return mean(
            [s * max(max(v for j, v in enumerate(r) if j != y) - r[y] + m, 0.0) for r, y, m in zip(Z, Y, margins)]
        )

    uniform = HingeLoss(COUNTS, margin=0.2, s=2.0)(logits(), labels()).item()
    assert uniform == pytest.approx(hinge([0.2] * 4, 2.0), rel=1e-6)
    ldam = HingeLoss(COUNTS, margin=0.5, ldam=True, s=1.0)(logits(), labels()).item()
    assert ldam == pytest.approx(hinge([[0.25, 0.5 / 3, 0.5][y] for y in Y], 1.0), rel=1e-6)


def test_mm_loss_matches_equations_1_to_5():
    delta_neg, beta, s = 0.6, 1.5, 10.0
    deltas = [mm_delta(r, y, delta_neg, beta) for r, y in zip(Z, Y)]
    loss = MMLoss(COUNTS, delta_neg=delta_neg, beta=beta, s=s)
    assert loss.shift(logits(), labels()).tolist() == pytest.approx(deltas, rel=1e-6)
    assert loss(logits(), labels()).item() == pytest.approx(margin_ce(Z, Y, deltas, s), rel=1e-5)


def test_mm_branches_correct_and_misclassified_use_their_own_delta():
    loss = MMLoss(COUNTS, delta_neg=0.6, beta=1.5)
    shift = loss.shift(logits(), labels()).tolist()
    assert shift[0] == pytest.approx(math.exp(-0.7 - 0.9), rel=1e-5)  # correct: exp(-m - beta*delta_neg)
    assert shift[1] == pytest.approx(math.exp(-0.1 - 0.6), rel=1e-5)  # wrong: exp(-|m| - delta_neg)
    assert shift[2] == pytest.approx(math.exp(-0.8 - 0.6), rel=1e-5)


def test_mm_exact_tie_gives_no_shift():
    rows = [[0.5, 0.5, 0.1]]
    loss = MMLoss(COUNTS, delta_neg=0.6, beta=1.5, s=10.0)
    assert loss.shift(logits(rows), labels([0])).tolist() == [0.0]
    assert loss(logits(rows), labels([0])).item() == pytest.approx(ce([5.0, 5.0, 1.0], 0), rel=1e-6)


def test_mm_max_excludes_the_target_even_when_it_is_largest():
    # z_y is the largest logit; the "max over j != y" must be 0.2, not z_y itself.
    shift = MMLoss(COUNTS, delta_neg=0.5, beta=1.0).shift(logits([[0.9, 0.2, 0.1]]), labels([0]))
    assert shift.item() == pytest.approx(math.exp(-0.7 - 0.5), rel=1e-6)


def test_mm_ldam_deltas_are_class_dependent():
    delta_neg, beta = 0.6, 1.5
    gamma = [0.25, 0.5 / 3, 0.5]
    expected = []
    for row, y in zip(Z, Y):
        d_neg = delta_neg - gamma[y]  # Eq. 7
        m = row[y] - max(v for j, v in enumerate(row) if j != y)
        expected.append(math.exp(-m - beta * d_neg) if m > 0 else math.exp(m - d_neg))  # Eq. 6 for m > 0
    loss = MMLoss(COUNTS, delta_neg=delta_neg, beta=beta, ldam=True)
    assert loss.shift(logits(), labels()).tolist() == pytest.approx(expected, rel=1e-6)
    assert loss(logits(), labels()).item() == pytest.approx(margin_ce(Z, Y, expected, 10.0), rel=1e-5)


def test_mm_official_reads_first_label_column_for_every_row():
    # Non-target maxima are positive here, so the released code's mask-by-zero changes nothing;
    # the rows whose label differs from the first one must differ, the others must not.
    rows = [[0.9, 0.2, 0.3], [0.1, 0.4, 0.3], [0.5, 0.2, 0.6], [0.7, 0.3, 0.2]]
    ys = [0, 2, 1, 0]
    paper = MMLoss(COUNTS, delta_neg=0.6, beta=1.5).shift(logits(rows), labels(ys)).tolist()
    official = MMLoss(COUNTS, delta_neg=0.6, beta=1.5, variant="released").shift(logits(rows), labels(ys)).tolist()
    for i, (row, y) in enumerate(zip(rows, ys)):
        if y == ys[0]:
            assert official[i] == pytest.approx(paper[i], rel=1e-6)
        else:
            m = row[ys[0]] - max(v for j, v in enumerate(row) if j != y)
            expected = math.exp(-m - 0.9) if m > 0 else math.exp(m - 0.6)
            assert official[i] == pytest.approx(expected, rel=1e-6)
            assert official[i] != pytest.approx(paper[i], rel=1e-3)


def test_mm_official_masks_the_target_with_zero():
    # All other logits negative: the released code's max over "j != y" is the 0 left at the target.
    rows = [[0.3, -0.2, -0.4]]
    official = MMLoss(COUNTS, delta_neg=0.6, beta=1.5, variant="released").shift(logits(rows), labels([0]))
    assert official.item() == pytest.approx(math.exp(-0.3 - 0.9), rel=1e-6)
    paper = MMLoss(COUNTS, delta_neg=0.6, beta=1.5).shift(logits(rows), labels([0]))
    assert paper.item() == pytest.approx(math.exp(-0.5 - 0.9), rel=1e-6)


# Rows chosen so that each departure of the released code applies to some rows and not others:
# "first-label" where y != y_0 (rows 1, 2); "mask-zero" where every other logit is negative (rows 0, 2).
VARIANT_ROWS = [[0.3, -0.2, -0.4], [0.1, 0.4, 0.3], [-0.5, 0.2, -0.1], [0.7, 0.3, 0.2]]
VARIANT_YS = [0, 2, 1, 0]
FIRST_LABEL_ROWS, MASK_ZERO_ROWS = {1, 2}, {0, 2}


def variant_delta(row, y, first_y, first_label, mask_zero, delta_neg=0.6, beta=1.5):
    """Delta^MM with the released code's departures: z_y from the first label's column, a 0 in the max."""
    z_target = row[first_y] if first_label else row[y]
    m = z_target - max([v for j, v in enumerate(row) if j != y] + ([0.0] if mask_zero else []))
    if m == 0:
        return 0.0
    return math.exp(-m - beta * delta_neg) if m > 0 else math.exp(m - delta_neg)


@pytest.mark.parametrize("variant", list(MM_VARIANTS))
def test_mm_variants_differ_from_the_equations_exactly_where_their_departures_apply(variant):
    first_label, mask_zero = {"equations": (0, 0), "first-label": (1, 0), "mask-zero": (0, 1), "released": (1, 1)}[variant]
    departs = (FIRST_LABEL_ROWS if first_label else set()) | (MASK_ZERO_ROWS if mask_zero else set())
    shift = MMLoss(COUNTS, 0.6, 1.5, variant=variant).shift(logits(VARIANT_ROWS), labels(VARIANT_YS)).tolist()
    for i, (row, y) in enumerate(zip(VARIANT_ROWS, VARIANT_YS)):
        expected = variant_delta(row, y, VARIANT_YS[0], first_label, mask_zero)
        assert shift[i] == pytest.approx(expected, rel=1e-6)
        equations = variant_delta(row, y, VARIANT_YS[0], False, False)
        assert (expected != pytest.approx(equations, rel=1e-3)) == (i in departs), (variant, i)


def test_mm_first_label_and_mask_zero_together_are_the_released_code():
    z, y = logits(VARIANT_ROWS), labels(VARIANT_YS)
    shifts = {v: MMLoss(COUNTS, 0.6, 1.5, ldam=True, variant=v).shift(z, y) for v in MM_VARIANTS}
    only_first, only_mask = FIRST_LABEL_ROWS - MASK_ZERO_ROWS, MASK_ZERO_ROWS - FIRST_LABEL_ROWS
    for i in range(len(VARIANT_ROWS)):
        if i in only_first:
            assert shifts["released"][i] == shifts["first-label"][i]
        if i in only_mask:
            assert shifts["released"][i] == shifts["mask-zero"][i]
    both = (FIRST_LABEL_ROWS & MASK_ZERO_ROWS).pop()
    assert len({shifts[v][both].item() for v in MM_VARIANTS}) == 4  # the row where both apply tells them apart
    assert shifts["released"].tolist() == pytest.approx(
        [variant_delta(r, t, VARIANT_YS[0], True, True, 0.6 - g) for r, t, g in
         zip(VARIANT_ROWS, VARIANT_YS, [ldam_margins(COUNTS)[t].item() for t in VARIANT_YS])], rel=1e-6)


def test_mm_rejects_an_unknown_variant():
    with pytest.raises(ValueError, match="unknown MM variant 'official'; valid: equations, first-label, mask-zero, released"):
        MMLoss(COUNTS, 0.6, 1.5, variant="official")


# --- logit adjustment ---------------------------------------------------------------------


def logit_adjusted_ce(row, y, counts, tau):
    """-log softmax(z + tau log pi)_y with pi_j = n_j / N."""
    total = sum(counts)
    return ce([v + tau * math.log(n / total) for v, n in zip(row, counts)], y)


@pytest.mark.parametrize("tau", [1.0, 0.5, 2.0])
def test_logit_adjusted_loss_matches_the_formula(tau):
    expected = mean([logit_adjusted_ce(row, y, COUNTS, tau) for row, y in zip(Z, Y)])
    assert LogitAdjustedLoss(COUNTS, tau=tau)(logits(), labels()).item() == pytest.approx(expected, rel=1e-6)
    weight = [0.5, 1.0, 3.0]
    weighted = mean([logit_adjusted_ce(row, y, COUNTS, tau) for row, y in zip(Z, Y)], [weight[y] for y in Y])
    loss = build_loss("la", COUNTS, tau=tau, weight=torch.tensor(weight))
    assert loss(logits(), labels()).item() == pytest.approx(weighted, rel=1e-6)


def test_logit_adjusted_loss_at_tau_1_is_balanced_softmax():
    """Ren et al.: -log(n_y exp(z_y) / sum_j n_j exp(z_j)); the logits differ from LA's by log N, a constant."""
    balanced = mean([-math.log(COUNTS[y] * math.exp(row[y]) / sum(n * math.exp(v) for n, v in zip(COUNTS, row)))
                     for row, y in zip(Z, Y)])
    assert LogitAdjustedLoss(COUNTS, tau=1.0)(logits(), labels()).item() == pytest.approx(balanced, rel=1e-6)
    shifted = [[v + 7.0 for v in row] for row in Z]  # any common shift of the logits leaves the loss as it is
    assert LogitAdjustedLoss(COUNTS)(logits(shifted), labels()).item() == pytest.approx(balanced, rel=1e-5)


def test_logit_adjusted_loss_at_tau_0_is_cross_entropy():
    expected = mean([ce(row, y) for row, y in zip(Z, Y)])
    assert LogitAdjustedLoss(COUNTS, tau=0.0)(logits(), labels()).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="tau must be >= 0, got -1"):
        LogitAdjustedLoss(COUNTS, tau=-1.0)


def test_mm_weighted_mean_divides_by_target_weights():
    weight = [0.5, 1.0, 3.0]
    deltas = [mm_delta(r, y, 0.6, 1.5) for r, y in zip(Z, Y)]
    loss = MMLoss(COUNTS, delta_neg=0.6, beta=1.5, weight=torch.tensor(weight))
    assert loss(logits(), labels()).item() == pytest.approx(margin_ce(Z, Y, deltas, 10.0, weight), rel=1e-5)


# --- gradients -----------------------------------------------------------------------------


def test_mm_margin_carries_no_gradient():
    """d loss / d z = s (softmax(s (z - Delta e_y)) - e_y) / B with Delta a constant."""
    s = 10.0
    z = logits().requires_grad_()
    MMLoss(COUNTS, delta_neg=0.6, beta=1.5, s=s)(z, labels()).backward()
    for i, (row, y) in enumerate(zip(Z, Y)):
        delta = mm_delta(row, y, 0.6, 1.5)
        shifted = [s * (v - (delta if j == y else 0.0)) for j, v in enumerate(row)]
        total = sum(math.exp(v) for v in shifted)
        expected = [s * (math.exp(v) / total - (j == y)) / len(Z) for j, v in enumerate(shifted)]
        assert z.grad[i].tolist() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def _all_losses():
    weight = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    return [
        CrossEntropyLoss(weight),
        FocalLoss(1.0, weight),
        LDAMLoss(COUNTS, weight=weight),
        AdditiveMarginLoss(0.3, weight=weight),
        HingeLoss(COUNTS, 0.3, weight=weight),
        HingeLoss(COUNTS, 0.5, ldam=True),
        MMLoss(COUNTS, 0.6, 1.5, weight=weight),
        MMLoss(COUNTS, 0.6, 1.5, ldam=True, variant="released"),
        LogitAdjustedLoss(COUNTS, 1.0, weight=weight),
    ]


@pytest.mark.parametrize("loss", _all_losses(), ids=lambda loss: type(loss).__name__)
def test_gradcheck_in_float64(loss, monkeypatch):
    z = logits(dtype=torch.float64).requires_grad_()
    if isinstance(loss, MMLoss):
        # Delta is a constant by design (no gradient); hold it at its value while z is perturbed.
        fixed = loss.shift(z, labels())
        monkeypatch.setattr(loss, "shift", lambda *_: fixed)
    assert torch.autograd.gradcheck(lambda x: loss(x, labels()), (z,))


@pytest.mark.parametrize("loss", _all_losses(), ids=lambda loss: type(loss).__name__)
def test_bfloat16_logits_are_computed_in_float32(loss):
    out = loss(logits().bfloat16(), labels())
    assert out.dtype == torch.float32 and torch.isfinite(out)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("loss", _all_losses(), ids=lambda loss: type(loss).__name__)
def test_cuda_matches_cpu(loss):
    cpu = loss(logits(), labels()).item()
    assert loss.cuda()(logits().cuda(), labels().cuda()).item() == pytest.approx(cpu, rel=1e-5)


# --- edge cases ----------------------------------------------------------------------------


def test_batch_of_one():
    deltas = [mm_delta(Z[1], Y[1], 0.6, 1.5)]
    loss = MMLoss(COUNTS, 0.6, 1.5)(logits([Z[1]]), labels([Y[1]]))
    assert loss.item() == pytest.approx(margin_ce([Z[1]], [Y[1]], deltas, 10.0), rel=1e-6)


def test_all_correct_and_all_wrong_batches():
    rows = [[0.8, 0.1, 0.0], [0.0, 0.9, 0.2]]
    correct, wrong = [0, 1], [2, 0]
    loss = MMLoss(COUNTS, 0.6, 1.5)
    for ys in (correct, wrong):
        deltas = [mm_delta(r, y, 0.6, 1.5) for r, y in zip(rows, ys)]
        assert loss(logits(rows), labels(ys)).item() == pytest.approx(margin_ce(rows, ys, deltas, 10.0), rel=1e-4)
    assert (loss.shift(logits(rows), labels(correct)) < math.exp(-0.9)).all()  # all took the delta_plus branch
    assert (loss.shift(logits(rows), labels(wrong)) > math.exp(-1.6)).all()


def test_classes_absent_from_batch_do_not_enter_the_weighted_mean():
    rows, ys, weight = [[0.2, 0.1, 0.0], [0.1, 0.3, 0.2]], [0, 0], [2.0, 100.0, 100.0]
    expected = mean([ce(r, y) for r, y in zip(rows, ys)])  # only class 0, so weights cancel
    assert CrossEntropyLoss(torch.tensor(weight))(logits(rows), labels(ys)).item() == pytest.approx(expected, rel=1e-6)


def test_weight_can_be_replaced_between_epochs():
    loss = LDAMLoss(COUNTS)
    before = loss(logits(), labels()).item()
    loss.weight = class_balanced_weights(COUNTS)
    after = loss(logits(), labels()).item()
    w = class_balanced_weights(COUNTS).tolist()
    margins = [[0.25, 0.5 / 3, 0.5][y] for y in Y]
    assert after == pytest.approx(margin_ce(Z, Y, margins, 30.0, w), rel=1e-5)
    assert after != pytest.approx(before)
    loss.weight = None
    assert loss(logits(), labels()).item() == pytest.approx(before)


def test_new_weights_are_copied_into_the_losss_own_tensor():
    """A captured CUDA graph reads the weight tensor it was captured with: replacing the weights must change that
    tensor's values, and the caller's tensors are neither kept nor overwritten later."""
    loss = LDAMLoss(COUNTS)
    first = torch.tensor([1.0, 2.0, 3.0])
    loss.weight = first
    held = loss.weight
    assert held is not first
    w = class_balanced_weights(COUNTS)
    loss.weight = w
    assert loss.weight is held and torch.equal(held, w) and held is not w
    assert first.tolist() == [1.0, 2.0, 3.0]
    margins = [[0.25, 0.5 / 3, 0.5][y] for y in Y]
    assert loss(logits(), labels()).item() == pytest.approx(margin_ce(Z, Y, margins, 30.0, w.tolist()), rel=1e-5)


def test_build_loss_by_name():
    assert isinstance(build_loss("mm-ldam", COUNTS, delta_neg=0.6, beta=1.5), MMLoss)
    assert build_loss("mm-ldam", COUNTS, delta_neg=0.6, beta=1.5).ldam
    assert build_loss("ldam-hinge", COUNTS).ldam
    for name in LOSSES:
        params = {"delta_neg": 0.6, "beta": 1.5} if name.startswith("mm") else {}
        assert torch.isfinite(build_loss(name, COUNTS, **params)(logits(), labels()))


# --- bad input -----------------------------------------------------------------------------


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ValueError, match="unknown loss 'nope'.*ce, focal, ldam"):
        build_loss("nope", COUNTS)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: LDAMLoss([10, 0, 5]), "cls_num_list.*class 1 has 0"),
        (lambda: MMLoss([10, -2, 5], 0.6, 1.5), "cls_num_list.*class 1 has -2"),
        (lambda: class_balanced_weights([3, 0]), "cls_num_list"),
        (lambda: LDAMLoss(COUNTS, s=0), "s must be a positive"),
        (lambda: MMLoss(COUNTS, 0.6, 1.5, s=-1), "s must be a positive"),
        (lambda: MMLoss(COUNTS, 0.6, -0.1), "beta must be >= 0"),
        (lambda: MMLoss(COUNTS, -0.6, 1.5), "delta_neg must be >= 0"),
        (lambda: FocalLoss(-1.0), "gamma must be >= 0"),
        (lambda: CrossEntropyLoss(num_classes=3, weight=torch.ones(4)), "weight has 4 values for 3 classes"),
        (lambda: class_balanced_weights(COUNTS, 1.5), r"beta \(class-balanced\) must be in \[0, 1\]"),
    ],
)
def test_bad_parameters_raise_value_error_naming_them(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_class_count_must_match_logit_columns():
    with pytest.raises(ValueError, match="cls_num_list has 4 classes but the logits have 3 columns"):
        LDAMLoss([10, 10, 10, 10])(logits(), labels())


@pytest.mark.parametrize("bad", [[0, 3, 1, 1], [0, -1, 1, 1]])
def test_target_outside_range(bad):
    with pytest.raises(ValueError, match=r"target holds labels outside \[0, 3\)"):
        MMLoss(COUNTS, 0.6, 1.5)(logits(), labels(bad))
