"""Metrics against scikit-learn, torchmetrics and MAPIE, plus calibration properties."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mapie.metrics.classification import classification_coverage_score, classification_mean_width_score
from sklearn.metrics import top_k_accuracy_score
from torchmetrics.classification import MulticlassAccuracy

from avgk_book.analysis import accuracy_by_class_frequency
from avgk_lib import metrics as M
from tests.conftest import random_targets, tie_free_scores


@pytest.mark.parametrize("k", [1, 2, 3, 5, 10])
def test_topk_accuracy_micro_equals_sklearn_and_torchmetrics(k):
    s = tie_free_scores(200, 10, dtype=torch.float32)
    y = random_targets(200, 10)
    ours = M.topk_accuracy(s, y, k)
    assert ours == pytest.approx(top_k_accuracy_score(y.numpy(), s.numpy(), k=k, labels=list(range(10))))
    tm = MulticlassAccuracy(num_classes=10, top_k=k, average="micro")(s, y).item()
    assert ours == pytest.approx(tm, abs=1e-6)


@pytest.mark.parametrize("k", [1, 3])
def test_topk_accuracy_macro_equals_torchmetrics_when_all_classes_present(k):
    s = tie_free_scores(300, 8, dtype=torch.float32, seed=3)
    y = random_targets(300, 8, seed=4)
    assert torch.bincount(y, minlength=8).min() > 0
    tm = MulticlassAccuracy(num_classes=8, top_k=k, average="macro")(s, y).item()
    assert M.topk_accuracy(s, y, k, average="macro") == pytest.approx(tm, abs=1e-6)


def test_topk_accuracy_macro_skips_absent_classes_like_per_class_sklearn():
    s = tie_free_scores(120, 12, dtype=torch.float32, seed=5)
    y = random_targets(120, 12, seed=6) % 7  # classes 7..11 absent
    per_class = [
        top_k_accuracy_score(y[y == c].numpy(), s[y == c].numpy(), k=3, labels=list(range(12))) for c in range(7)
    ]
    assert M.topk_accuracy(s, y, 3, average="macro") == pytest.approx(float(np.mean(per_class)))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 30), c=st.integers(2, 12), seed=st.integers(0, 10_000))
def test_topk_accuracy_is_monotone_in_k_and_reaches_one(n, c, seed):
    s = tie_free_scores(n, c, seed=seed)
    y = random_targets(n, c, seed=seed + 1)
    accs = [M.topk_accuracy(s, y, k) for k in range(1, c + 1)]
    assert all(a <= b for a, b in zip(accs, accs[1:], strict=False))
    assert accs[-1] == 1.0


def test_topk_ties_use_the_optimistic_rank():
    s = torch.tensor([[1.0, 1.0, 0.0]])
    assert M.topk_accuracy(s, torch.tensor([1]), 1) == 1.0
    assert M.topk_accuracy(s, torch.tensor([2]), 2) == 0.0


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    c=st.integers(1, 15),
    k_frac=st.floats(0.01, 1.0),
    seed=st.integers(0, 10_000),
)
def test_calibration_selects_exactly_round_nk_on_tie_free_scores(n, c, k_frac, seed):
    k = k_frac * c
    s = tie_free_scores(n, c, seed=seed)
    threshold = M.average_k_threshold(s, k)
    m = int(np.floor(n * k + 0.5))
    assert int(M.average_k_sets(s, threshold).sum()) == m


def test_calibration_midpoint_and_edge_cases():
    s = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    assert M.average_k_threshold(s, 1.5).item() == pytest.approx(0.3)
    assert M.average_k_threshold(s, 3).item() == pytest.approx(0.1)  # all selected
    assert M.average_k_threshold(s, 0.1).item() == float("inf")  # round(0.2) = 0: empty sets
    # ties at the boundary: every tied entry is selected
    tied = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.1, 0.0]])
    assert int(M.average_k_sets(tied, M.average_k_threshold(tied, 1.0)).sum()) == 3


def test_calibration_adjacent_floats_still_selects_exactly_m():
    a = torch.tensor(0.5)
    b = torch.nextafter(a, torch.tensor(1.0))
    s = torch.stack([b, a]).reshape(1, 2)
    assert int(M.average_k_sets(s, M.average_k_threshold(s, 1.0)).sum()) == 1


def test_calibration_large_array_beyond_2_pow_24_is_exact():
    # 2^24 + a bit: torch.quantile refuses this size; distinct values via a permutation
    n, c = 4100, 4100
    flat = torch.randperm(n * c, generator=torch.Generator().manual_seed(0)).to(torch.float64)
    s = flat.reshape(n, c)
    for k in (1.0, 2.5, 10.0):
        m = int(np.floor(n * k + 0.5))
        threshold = M.average_k_threshold(s, k)
        # the m-th largest value of a permutation of 0..N-1 is N - m
        assert threshold.item() == pytest.approx(n * c - m - 0.5)
        assert int((s >= threshold).sum()) == m


def test_average_k_accuracy_and_set_size_equal_mapie_coverage_and_width():
    probs = torch.softmax(tie_free_scores(500, 10, scale=3, seed=8), dim=1)
    y = random_targets(500, 10, seed=9)
    threshold = M.average_k_threshold(probs, 2.0)
    sets = M.average_k_sets(probs, threshold)
    coverage = classification_coverage_score(y.numpy(), sets.numpy()[:, :, None])
    width = classification_mean_width_score(sets.numpy()[:, :, None])
    assert M.average_k_accuracy(probs, y, threshold) == pytest.approx(float(np.ravel(coverage)[0]))
    assert M.set_size_stats(sets)["mean"] == pytest.approx(float(np.ravel(width)[0]))
    assert M.set_size_stats(sets)["mean"] == pytest.approx(2.0)


def test_average_k_macro_and_per_class_breakdown():
    s = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    y = torch.tensor([0, 1, 1, 1])
    # threshold 0.5: hits = [1, 0, 1, 0] -> micro 0.5, class 0: 1.0, class 1: 1/3
    assert M.average_k_accuracy(s, y, 0.5) == 0.5
    assert M.average_k_accuracy(s, y, 0.5, average="macro") == pytest.approx((1.0 + 1 / 3) / 2)
    breakdown = M.per_class_accuracy(torch.tensor([True, False, True, False]), y, 3)
    torch.testing.assert_close(breakdown["support"], torch.tensor([1.0, 3.0, 0.0], dtype=torch.float64))
    assert breakdown["accuracy"][0] == 1.0 and torch.isnan(breakdown["accuracy"][2])
    freq = accuracy_by_class_frequency(torch.tensor([True, False, True, False]), y, [100, 5, 1], n_bins=2)
    torch.testing.assert_close(freq["bin_accuracy"], torch.tensor([1 / 3, 1.0], dtype=torch.float64))


def test_set_size_stats_histogram():
    sets = torch.tensor([[True, False, False], [True, True, False], [False, False, False]])
    stats = M.set_size_stats(sets)
    assert stats["histogram"].tolist() == [1, 1, 1, 0]
    assert stats["empty_fraction"] == pytest.approx(1 / 3)
    assert stats["mean"] == 1.0 and stats["max"] == 2


def test_topk_sets_match_topk_accuracy():
    s = tie_free_scores(50, 9, seed=2)
    y = random_targets(50, 9, seed=3)
    sets = M.topk_sets(s, 3)
    assert bool((sets.sum(1) == 3).all())
    assert sets[torch.arange(50), y].double().mean().item() == pytest.approx(M.topk_accuracy(s, y, 3))


@pytest.mark.parametrize("m_frac", [1e-6, 0.01, 0.5, 0.999999])
@pytest.mark.parametrize("ties", [False, True])
def test_order_statistics_on_large_arrays_equal_a_full_sort(m_frac, ties):
    g = torch.Generator().manual_seed(1)
    flat = torch.randn(3_000_000, generator=g)
    if ties:
        flat = (flat * 4).round()  # a few dozen distinct values
    m = max(1, int(m_frac * flat.numel()))
    ((kth, nxt),) = M._kth_and_next_largest_rows(flat.reshape(1, -1), [m])  # one row: (1,) tensors
    ordered = torch.sort(flat, descending=True).values
    assert kth.item() == ordered[m - 1].item() and nxt.item() == ordered[m].item()
