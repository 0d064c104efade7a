"""P1 losses and baselines against pytopk, difftopk, brute force and cross-entropy."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from difftopk import SmoothTopKLoss
from pytopk.functional import bal_noised_topk_loss, imbal_noised_topk_loss
from pytopk.noised_topk import _noised_topk as pytopk_noised_topk

from avgk_lib import functional as AF
from avgk_lib import losses as AL
from tests.conftest import random_targets, tie_free_scores


def _finite_difference_grad(fn, x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    grad = torch.zeros_like(x)
    for idx in itertools.product(*(range(n) for n in x.shape)):
        step = torch.zeros_like(x)
        step[idx] = h
        grad[idx] = (fn(x + step) - fn(x - step)) / (2 * h)
    return grad


def _grad(fn, scores):
    scores = scores.detach().clone().requires_grad_(True)
    value = fn(scores)
    (grad,) = torch.autograd.grad(value, scores)
    return value.detach(), grad


@pytest.mark.parametrize("k", [1, 3, 5])
def test_noised_topk_loss_equals_pytopk(k):
    s = torch.randn(16, 20, dtype=torch.float64)
    y = random_targets(16, 20)
    noise = torch.randn(5, 16, 20, dtype=torch.float64)
    ours = _grad(lambda x: AF.noised_topk_loss(x, y, k, 0.2, 5, noise=noise), s)
    ref = _grad(lambda x: bal_noised_topk_loss(x, y, k, 0.2, pytopk_noised_topk, noise.permute(1, 2, 0)), s)
    torch.testing.assert_close(ours[0], ref[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(ours[1], ref[1].double(), rtol=0, atol=1e-8)


@pytest.mark.parametrize("k", [1, 5])
def test_imbalanced_noised_topk_loss_equals_pytopk(k):
    c = 30
    counts = torch.randint(1, 500, (c,)).double()
    s = torch.rand(32, c, dtype=torch.float64) * 2 - 1  # cosine-like scores
    y = random_targets(32, c)
    noise = torch.randn(5, 32, c, dtype=torch.float64)
    inv = counts.pow(-0.25)
    margins = 0.2 * inv / inv.max()
    ours = _grad(lambda x: AF.imbalanced_noised_topk_loss(x, y, k, counts, 0.01, 5, 0.2, 60.0, noise=noise), s)
    ref = _grad(
        lambda x: imbal_noised_topk_loss(x, y, k, margins, 0.01, pytopk_noised_topk, noise.permute(1, 2, 0), 60.0), s
    )
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(ours[1], ref[1].double(), rtol=0, atol=1e-6)


def test_module_wrappers_forward_to_functional():
    s = torch.randn(8, 10)
    y = random_targets(8, 10)
    counts = torch.arange(1, 11)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    torch.testing.assert_close(
        AL.NoisedTopKLoss(2, 0.5, 3, generator=g())(s, y), AF.noised_topk_loss(s, y, 2, 0.5, 3, generator=g())
    )
    torch.testing.assert_close(
        AL.ImbalancedNoisedTopKLoss(2, counts, generator=g())(s, y),
        AF.imbalanced_noised_topk_loss(s, y, 2, counts, generator=g()),
    )
    torch.testing.assert_close(AL.TopKHingeLoss(3)(s, y), AF.topk_hinge_loss(s, y, 3))
    torch.testing.assert_close(AL.SmoothTopKSVMLoss(3, 0.5)(s, y), AF.smooth_topk_svm_loss(s, y, 3, 0.5))
    torch.testing.assert_close(AL.FocalLoss(1.5)(s, y), AF.focal_loss(s, y, 1.5))
    torch.testing.assert_close(AL.LDAMLoss(counts, 0.3, 10)(s, y), AF.ldam_loss(s, y, counts, 0.3, 10))


def test_module_defaults_are_the_functional_defaults():
    """Loss defaults are written once (the functional signatures); the modules read them from there."""
    import inspect

    pairs = {
        "NoisedTopKLoss": AF.noised_topk_loss,
        "ImbalancedNoisedTopKLoss": AF.imbalanced_noised_topk_loss,
        "TopKHingeLoss": AF.topk_hinge_loss,
        "SmoothTopKSVMLoss": AF.smooth_topk_svm_loss,
        "FocalLoss": AF.focal_loss,
        "LDAMLoss": AF.ldam_loss,
        "AssumeNegativeLoss": AF.assume_negative_loss,
        "EPRLoss": AF.epr_loss,
        "ROLELoss": AF.role_loss,
        "TwoHeadLoss": AF.two_head_loss,
    }
    assert set(pairs) == set(AL.__all__)
    for name, fn in pairs.items():
        module = inspect.signature(getattr(AL, name)).parameters
        shared = [p for p in inspect.signature(fn).parameters.values() if p.name in module and p.default is not p.empty]
        assert shared, name
        for p in shared:
            assert module[p.name].default == p.default, (name, p.name)
    with pytest.raises(TypeError, match="`k` has no default"):

        @AL._defaults_from(AF.noised_topk_loss)
        def init(self, k=AL.FROM_F):
            return None


def test_epsilon_zero_noised_loss_is_the_hard_hinge():
    s = tie_free_scores(12, 9)
    y = random_targets(12, 9)
    for k in (1, 2, 4):
        ours = _grad(lambda x, k=k: AF.noised_topk_loss(x, y, k, epsilon=0.0), s)
        hard = _grad(lambda x, k=k: AF.topk_hinge_loss(x, y, k), s)
        torch.testing.assert_close(ours, hard)


def test_topk_hinge_by_hand():
    s = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    # k=2: the 3rd largest is 1.0
    assert AF.topk_hinge_loss(s, torch.tensor([0]), 2).item() == 0.0  # 1 + 1 - 3 < 0
    assert AF.topk_hinge_loss(s, torch.tensor([1]), 2).item() == 0.0  # 1 + 1 - 2
    assert AF.topk_hinge_loss(s, torch.tensor([3]), 2).item() == 2.0  # 1 + 1 - 0


def _brute_force_smooth_svm(s: torch.Tensor, y: torch.Tensor, k: int, tau: float, alpha: float) -> torch.Tensor:
    """Berrada et al. 2018 eq. (12) by enumerating every k-subset, log-sum-exp in float64."""
    out = []
    for row, label in zip(s.double(), y.tolist(), strict=True):
        c = row.numel()
        all_terms, pos_terms = [], []
        for subset in itertools.combinations(range(c), k):
            total = row[list(subset)].sum() / (k * tau)
            all_terms.append(total + (0.0 if label in subset else alpha / tau))
            if label in subset:
                pos_terms.append(total)
        out.append(tau * (torch.logsumexp(torch.stack(all_terms), 0) - torch.logsumexp(torch.stack(pos_terms), 0)))
    return torch.stack(out)


@pytest.mark.parametrize("scale", [1e-3, 1e-1, 1.0, 10.0, 1e3])
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_smooth_svm_equals_brute_force_enumeration(scale, k):
    s = torch.randn(6, 9, dtype=torch.float64) * scale
    y = random_targets(6, 9)
    ours = AF.smooth_topk_svm_loss(s, y, k, tau=1.0, alpha=1.0, reduction="none")
    torch.testing.assert_close(ours, _brute_force_smooth_svm(s, y, k, 1.0, 1.0), rtol=1e-10, atol=1e-10 * scale)


@pytest.mark.parametrize("tau,alpha", [(0.1, 1.0), (2.0, 0.5), (0.5, 0.0)])
def test_smooth_svm_brute_force_other_temperatures(tau, alpha):
    s = torch.randn(5, 8, dtype=torch.float64) * 3
    y = random_targets(5, 8)
    ours = AF.smooth_topk_svm_loss(s, y, 3, tau=tau, alpha=alpha, reduction="none")
    torch.testing.assert_close(ours, _brute_force_smooth_svm(s, y, 3, tau, alpha), rtol=1e-10, atol=1e-10)


def test_smooth_svm_wide_rows_use_head_tail_split_exactly():
    # C = 40 > 2 (k + 1): the head/tail path; compared with the plain log-space route via k=C-1 identity
    s = torch.randn(4, 40, dtype=torch.float64) * 5
    y = random_targets(4, 40)
    for k in (1, 3, 6):
        ours = AF.smooth_topk_svm_loss(s, y, k, reduction="none")
        ref = SmoothTopKLoss(40, k, 1.0)
        # difftopk is exact in this regime (no hard switch in SmoothTopKLoss)
        expected = torch.stack([ref(s[i : i + 1], y[i : i + 1]) for i in range(4)])
        torch.testing.assert_close(ours, expected, rtol=1e-8, atol=1e-8)


def test_smooth_svm_k1_alpha0_tau1_is_cross_entropy():
    s = torch.randn(10, 7, dtype=torch.float64) * 4
    y = random_targets(10, 7)
    ours = _grad(lambda x: AF.smooth_topk_svm_loss(x, y, 1, tau=1.0, alpha=0.0), s)
    ce = _grad(lambda x: F.cross_entropy(x, y), s)
    torch.testing.assert_close(ours, ce)


@pytest.mark.parametrize("k", [1, 5, 10])
def test_smooth_svm_equals_difftopk_value_and_gradient(k):
    c = 100
    s = torch.randn(32, c, dtype=torch.float64) * 2
    y = random_targets(32, c)
    ours = _grad(lambda x: AF.smooth_topk_svm_loss(x, y, k, tau=1.0), s)
    ref = _grad(lambda x: SmoothTopKLoss(c, k, 1.0)(x, y), s)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-9, atol=1e-9)
    if k == 1:
        # difftopk 0.2.0's k=1 backward is wrong (non-target entries off by about 1/B); our
        # gradient is checked against central finite differences instead
        assert (ours[1] - ref[1]).abs().max() > 1e-3
        few, y_few = s[:4], y[:4]  # finite differences on 4 rows: 800 evaluations instead of 6,400
        mine = _grad(lambda x: AF.smooth_topk_svm_loss(x, y_few, k), few)[1]
        torch.testing.assert_close(mine, _finite_difference_grad(lambda x: AF.smooth_topk_svm_loss(x, y_few, k), few))
    else:
        torch.testing.assert_close(ours[1], ref[1], rtol=1e-6, atol=1e-9)


def test_smooth_svm_gradcheck():
    s = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    y = random_targets(3, 12)
    for k in (1, 2, 4):
        assert torch.autograd.gradcheck(lambda x, k=k: AF.smooth_topk_svm_loss(x, y, k, 0.7, reduction="none"), (s,))


def test_smooth_svm_tends_to_hard_topk_svm_as_tau_vanishes():
    s = tie_free_scores(6, 8, scale=3.0)
    y = random_targets(6, 8)
    others = s.scatter(1, y[:, None], -math.inf)
    kth_other = torch.sort(others, dim=1, descending=True).values[:, 2]
    hard = torch.clamp(1.0 + (kth_other - s.gather(1, y[:, None]).squeeze(1)) / 3, min=0)
    torch.testing.assert_close(AF.smooth_topk_svm_loss(s, y, 3, tau=1e-4, reduction="none"), hard, atol=2e-3, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32])
def test_smooth_svm_is_finite_for_large_float32_scores(dtype):
    s = (torch.randn(16, 1081) * 1e4).to(dtype).requires_grad_(True)
    y = random_targets(16, 1081)
    loss = AF.smooth_topk_svm_loss(s, y, 5, tau=0.1)
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(s.grad).all())
    ref = AF.smooth_topk_svm_loss(s.detach().double(), y, 5, tau=0.1)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-4, atol=1e-2)


def test_focal_gamma0_and_ldam_margin0_scale1_are_cross_entropy():
    s = torch.randn(12, 6, dtype=torch.float64)
    y = random_targets(12, 6)
    ce = _grad(lambda x: F.cross_entropy(x, y), s)
    torch.testing.assert_close(_grad(lambda x: AF.focal_loss(x, y, gamma=0.0), s), ce)
    counts = [5, 50, 500, 7, 70, 700]
    torch.testing.assert_close(_grad(lambda x: AF.ldam_loss(x, y, counts, max_margin=0.0, scale=1.0), s), ce)


def test_focal_by_hand():
    s = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    p = math.exp(2) / (math.exp(2) + 1)
    expected = -((1 - p) ** 2) * math.log(p)
    assert AF.focal_loss(s, torch.tensor([0]), 2.0).item() == pytest.approx(expected, rel=1e-12)


def test_ldam_margins_follow_quarter_power_rule():
    counts = torch.tensor([1.0, 16.0, 81.0])
    margins = AF.class_margins(counts, 3, 0.5)
    torch.testing.assert_close(margins, torch.tensor([0.5, 0.25, 0.5 / 3], dtype=torch.float64))
    s = torch.zeros(1, 3, dtype=torch.float64)
    expected = F.cross_entropy(torch.tensor([[30 * (0 - 0.25), 0.0, 0.0]], dtype=torch.float64), torch.tensor([0]))
    assert AF.ldam_loss(s, torch.tensor([1]), counts, 0.5, 30.0).item() == pytest.approx(expected.item())


def test_reductions_are_consistent():
    s = torch.randn(9, 5)
    y = random_targets(9, 5)
    for fn in (
        lambda r: AF.topk_hinge_loss(s, y, 2, reduction=r),
        lambda r: AF.smooth_topk_svm_loss(s, y, 2, reduction=r),
        lambda r: AF.focal_loss(s, y, reduction=r),
        lambda r: AF.noised_topk_loss(s, y, 2, generator=torch.Generator().manual_seed(0), reduction=r),
    ):
        per_sample = fn("none")
        assert per_sample.shape == (9,)
        torch.testing.assert_close(fn("mean"), per_sample.mean())
        torch.testing.assert_close(fn("sum"), per_sample.sum())


def _noised_loss_by_autograd(s, y, k, epsilon, noise, reduction):
    """The balanced loss as the autograd graph of its expression over the noised operator."""
    from avgk_lib.ops import noised_topk

    smoothed = noised_topk(s, k + 1, epsilon, noise.shape[0], noise=noise)
    per_row = F.relu(1.0 + smoothed - s.gather(-1, y.unsqueeze(-1)).squeeze(-1))
    if reduction == "none":
        return per_row
    return per_row.mean(dim=-1) if reduction == "mean" else per_row.sum(dim=-1)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    ("shape", "k", "epsilon"),
    [
        ((32, 100), 5, 1.0),
        ((32, 100), 1, 0.3),
        ((32, 100), 10, 2.0),
        ((16, 7), 2, 1.0),
        ((3, 16, 40), 2, "per_member"),
        ((16, 40), "per_row", "per_row"),
    ],
)
def test_noised_loss_in_one_node_is_bitwise_the_autograd_of_its_expression(shape, k, epsilon, reduction):
    """The loss's own backward (one autograd node) gives the bits that autograd gives for
    relu(1 + noised_topk - s_y) with the same noise, value and gradient, for a weighted
    backward (any upstream gradient)."""
    g = torch.Generator().manual_seed(3)
    s = torch.randn(shape, generator=g) * 2
    rows, n_classes = shape[:-1], shape[-1]
    y = torch.randint(0, n_classes, rows, generator=g)
    if k == "per_row":
        k = torch.randint(1, 6, rows, generator=g)
    if epsilon == "per_member":
        epsilon = torch.tensor([0.5, 1.0, 2.0])
    elif epsilon == "per_row":
        epsilon = torch.rand(rows, generator=g) + 0.1
    noise = torch.randn((5, *shape), generator=g)
    ours = _grad_weighted(lambda x: AF.noised_topk_loss(x, y, k, epsilon, 5, noise=noise, reduction=reduction), s)
    ref = _grad_weighted(lambda x: _noised_loss_by_autograd(x, y, k, epsilon, noise, reduction), s)
    assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])


def _grad_weighted(fn, scores):
    scores = scores.detach().clone().requires_grad_(True)
    value = fn(scores)
    weight = torch.linspace(0.5, 1.5, value.numel()).reshape(value.shape)
    (grad,) = torch.autograd.grad((value * weight).sum(), scores)
    return value.detach(), grad


@pytest.mark.parametrize("k", [1, 5])
def test_noised_topk_loss_float32_wide_rows_equals_pytopk(k):
    """The benchmark's shape of row (C = 100, float32), where the selection eliminates maxima."""
    s = torch.randn(32, 100)
    y = random_targets(32, 100)
    noise = torch.randn(5, 32, 100)
    ours = _grad(lambda x: AF.noised_topk_loss(x, y, k, 1.0, 5, noise=noise), s)
    ref = _grad(lambda x: bal_noised_topk_loss(x, y, k, 1.0, pytopk_noised_topk, noise.permute(1, 2, 0)), s)
    torch.testing.assert_close(ours[0], ref[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(ours[1], ref[1], rtol=0, atol=1e-6)
