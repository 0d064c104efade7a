"""The primitives against oracles: pytopk's own operator, Clark's closed form, brute force."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pytopk.noised_topk import _noised_topk as pytopk_noised_topk

from avgk_lib.ops import (
    LOG_ZERO,
    elementary_symmetric,
    kth_largest,
    log_elementary_symmetric,
    log_elementary_symmetric_fast,
    log_zero,
    noised_topk,
)
from tests.conftest import tie_free_scores


def _assert_matches_pytopk(x: torch.Tensor, noise: torch.Tensor, k: int, epsilon: float, atol: float) -> None:
    """Value (within ``atol``) and gradient (1e-6) of ``noised_topk`` against pytopk's on the same noise."""
    ours = noised_topk(x, k, epsilon=epsilon, n_samples=noise.shape[0], noise=noise)
    (g_ours,) = torch.autograd.grad(ours.sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    ref = pytopk_noised_topk(x2, noise.permute(1, 2, 0), k, epsilon, -1, -1)
    (g_ref,) = torch.autograd.grad(ref.sum(), x2)
    torch.testing.assert_close(ours, ref, rtol=0, atol=atol)
    torch.testing.assert_close(g_ours, g_ref.to(g_ours.dtype), rtol=0, atol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_noised_topk_matches_pytopk_value_and_gradient(k):
    x = torch.randn(7, 12, dtype=torch.float64, requires_grad=True)
    _assert_matches_pytopk(x, torch.randn(4, 7, 12, dtype=torch.float64), k, 0.3, atol=1e-12)


def test_epsilon_zero_is_exact_kth_largest_with_one_hot_gradient():
    x = tie_free_scores(6, 9).requires_grad_(True)
    value = noised_topk(x, 3, epsilon=0.0, n_samples=7)
    torch.testing.assert_close(value, torch.sort(x.detach(), dim=1, descending=True).values[:, 2])
    (grad,) = torch.autograd.grad(value.sum(), x)
    assert torch.equal(grad.sum(1), torch.ones(6, dtype=grad.dtype))
    assert set(grad.unique().tolist()) == {0.0, 1.0}


def test_gradient_rows_are_probability_vectors():
    x = torch.randn(5, 3, 20, requires_grad=True)
    (grad,) = torch.autograd.grad(noised_topk(x, 4, epsilon=1.0, n_samples=6).sum(), x)
    assert bool((grad >= 0).all())
    torch.testing.assert_close(grad.sum(-1), torch.ones(5, 3))
    # each entry is a multiple of 1/S
    torch.testing.assert_close(grad * 6, (grad * 6).round())


@pytest.mark.parametrize("k", [1, 2])
def test_two_class_smoothing_matches_clark_closed_form(k):
    # max/min of two independent Gaussians N(x_i, eps^2): Clark (1961)
    x1, x2, eps, n_samples = 0.4, -0.1, 0.7, 400_000
    x = torch.tensor([[x1, x2]], dtype=torch.float64, requires_grad=True)
    g = torch.Generator().manual_seed(3)
    value = noised_topk(x, k, epsilon=eps, n_samples=n_samples, generator=g)
    (grad,) = torch.autograd.grad(value.sum(), x)
    theta = eps * math.sqrt(2.0)
    d = (x1 - x2) / theta
    cdf = 0.5 * (1 + math.erf(d / math.sqrt(2)))
    pdf = math.exp(-d * d / 2) / math.sqrt(2 * math.pi)
    e_max = x1 * cdf + x2 * (1 - cdf) + theta * pdf
    expected_value = e_max if k == 1 else x1 + x2 - e_max
    expected_grad = [cdf, 1 - cdf] if k == 1 else [1 - cdf, cdf]
    # Monte Carlo standard errors: sd(max) <= eps * sqrt(2) / sqrt(S); Bernoulli for the gradient
    assert abs(value.item() - expected_value) < 5 * theta / math.sqrt(n_samples)
    assert abs(grad[0, 0].item() - expected_grad[0]) < 5 * 0.5 / math.sqrt(n_samples)
    assert abs(grad[0, 1].item() - expected_grad[1]) < 5 * 0.5 / math.sqrt(n_samples)


def test_generator_makes_draws_reproducible_and_noise_is_independent_per_draw():
    x = torch.randn(3, 50)
    a = noised_topk(x, 2, n_samples=3, generator=torch.Generator().manual_seed(5))
    b = noised_topk(x, 2, n_samples=3, generator=torch.Generator().manual_seed(5))
    c = noised_topk(x, 2, n_samples=3, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@settings(max_examples=30, deadline=None)
@given(
    shift=st.floats(-1e3, 1e3, allow_nan=False),
    k=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_noised_topk_is_translation_equivariant(shift, k, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 6, dtype=torch.float64, generator=g)
    noise = torch.randn(3, 4, 6, dtype=torch.float64, generator=g)
    a = noised_topk(x + shift, k, 0.5, 3, noise=noise)
    b = noised_topk(x, k, 0.5, 3, noise=noise) + shift
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * (1 + abs(shift)))


def test_kth_largest_is_sorted_order_statistic():
    x = tie_free_scores(4, 10)
    for k in range(1, 11):
        torch.testing.assert_close(kth_largest(x, k), torch.sort(x, dim=1, descending=True).values[:, k - 1])


def _brute_force_esp(x: torch.Tensor, k: int) -> torch.Tensor:
    n = x.shape[-1]
    return torch.tensor(
        [
            [sum(math.prod(row[list(c)].tolist()) for c in itertools.combinations(range(n), j)) for j in range(k + 1)]
            for row in x
        ],
        dtype=torch.float64,
    )


@pytest.mark.parametrize("n,k", [(1, 1), (2, 1), (5, 3), (9, 4), (11, 11), (13, 6)])
def test_elementary_symmetric_against_enumeration(n, k):
    x = torch.rand(3, n, dtype=torch.float64)
    expected = _brute_force_esp(x, k)
    torch.testing.assert_close(elementary_symmetric(x, k), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(log_elementary_symmetric(x.log(), k), expected.log(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0, 1e3])
@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_fast_log_esp_equals_plain_log_space(scale, k):
    u = torch.randn(4, 300, dtype=torch.float64) * scale
    torch.testing.assert_close(
        log_elementary_symmetric_fast(u, k), log_elementary_symmetric(u, k), rtol=1e-10, atol=1e-9
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fn", [log_elementary_symmetric, log_elementary_symmetric_fast])
def test_half_precision_log_polynomials_do_not_overflow_log_zero(dtype, fn):
    # fp16 cannot hold LOG_ZERO = -1e30: the stand-in for log 0 is log_zero(dtype), and the
    # computation runs in float32; entries equal to it act as x_i = 0
    g = torch.Generator().manual_seed(4)
    u = torch.randn(3, 30, generator=g, dtype=torch.float64)
    u_half = u.to(dtype)
    u_half[:, :4] = log_zero(dtype)  # four zeros per row
    out = fn(u_half, 5)
    assert out.dtype == dtype and bool(torch.isfinite(out).all())
    expected = log_elementary_symmetric(u_half[:, 4:].double(), 5)
    torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=2e-2)
    # more zeros than the degree allows: e_5 of 2 non-zero entries is 0, reported as log_zero(dtype)
    few = torch.full((1, 6), log_zero(dtype), dtype=dtype)
    few[0, :2] = 0.5
    out = fn(few, 5)
    assert bool(torch.isfinite(out).all())
    assert bool((out[0, 3:] < -1e4).all()) and bool((out[0, :3] > -1.0).all())
    assert log_zero(torch.float32) == LOG_ZERO and log_zero(torch.float64) == LOG_ZERO


def test_log_polynomials_reject_non_finite_input_and_bad_degree():
    u = torch.randn(2, 5)
    for bad in (float("nan"), float("inf"), -float("inf")):
        v = u.clone()
        v[0, 1] = bad
        with pytest.raises(ValueError, match="`log_x`"):
            log_elementary_symmetric(v, 2)
    with pytest.raises(ValueError, match="`k`"):
        log_elementary_symmetric(u, 6)
    with pytest.raises(ValueError, match="`block`"):
        elementary_symmetric(u.exp(), 2, block=0)


# ---------------------------------------------------------------------------------------------
# the selection: elimination of the maximum (small ranks) is topk, value and index
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_classes", [3, 20, 100])
@pytest.mark.parametrize("k", [1, 2, 3, 6, 7])
def test_elimination_selection_is_topk_on_tie_free_rows(n_classes, k):
    from avgk_lib.ops import _kth_largest_by_elimination, _kth_largest_with_index

    if k > n_classes:
        pytest.skip("rank above the row length")
    x = tie_free_scores(3 * 8, n_classes, dtype=torch.float32, seed=k).reshape(3, 8, n_classes)
    ref_values, ref_indices = torch.topk(x, k, dim=-1, sorted=True)
    values, indices = _kth_largest_by_elimination(x.clone(), k)
    assert torch.equal(values, ref_values) and torch.equal(indices, ref_indices)
    kth = _kth_largest_with_index(x.clone(), k, overwrite=True)
    assert torch.equal(kth[0], ref_values[..., -1]) and torch.equal(kth[1], ref_indices[..., -1])
    per_row_k = torch.randint(1, k + 1, (3, 8), generator=torch.Generator().manual_seed(0))
    kth = _kth_largest_with_index(x.clone(), per_row_k, overwrite=True)
    position = (per_row_k - 1).unsqueeze(-1)
    assert torch.equal(kth[0], ref_values.gather(-1, position).squeeze(-1))
    assert torch.equal(kth[1], ref_indices.gather(-1, position).squeeze(-1))


@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_elimination_keeps_tied_values_as_separate_entries(k):
    """Integer scores (ties everywhere): the k-th value is topk's, and the index points at an
    entry holding it."""
    from avgk_lib.ops import _kth_largest_with_index

    x = torch.randint(0, 4, (50, 30), generator=torch.Generator().manual_seed(k)).float()
    values, indices = _kth_largest_with_index(x.clone(), k, overwrite=True)
    assert torch.equal(values, torch.topk(x, k, dim=-1).values[:, -1])
    assert torch.equal(x.gather(-1, indices.unsqueeze(-1)).squeeze(-1), values)


@pytest.mark.parametrize("k", [1, 2, 5, 6, 7, 11])
def test_noised_topk_on_wide_float32_rows_matches_pytopk(k):
    """The rows of the loss benchmark (C = 100, float32): the selection pytopk makes with its own
    topk over the same perturbed scores, and its gradient."""
    x = torch.randn(16, 100, requires_grad=True)
    _assert_matches_pytopk(x, torch.randn(5, 16, 100), k, 1.0, atol=1e-5)


def test_overflow_raises_only_where_it_reaches_the_selected_value():
    """x + epsilon * noise that overflows in a selected entry raises naming `epsilon`; an entry
    that overflows below the selection changes nothing (its rank is the same in exact arithmetic)."""
    x = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    up, down = torch.zeros(1, 1, 4), torch.zeros(1, 1, 4)
    up[0, 0, 0], down[0, 0, 3] = 10.0, -10.0  # 1e38 * 10 overflows float32
    with pytest.raises(ValueError, match="`epsilon`"):
        noised_topk(x, 1, epsilon=1e38, n_samples=1, noise=up)
    assert noised_topk(x, 2, epsilon=1e38, n_samples=1, noise=down).item() == 2.0
