"""Set predictors against brute force (pure Python loops in float64) and MAPIE's metrics."""

import math

import numpy as np
import pytest
import torch
from mapie.metrics.classification import classification_coverage_score, classification_mean_width_score

from avgk_lib import conformal as C
from avgk_lib import sets as sets_module
from avgk_lib.data.synthetic import SyntheticSpec, SyntheticTask
from avgk_lib.metrics import metric_dict
from avgk_lib.sets import (
    AverageK,
    NotCalibratedError,
    SplitConformal,
    TopK,
    metric_key,
    set_coverage,
    set_size,
)
from tests.conftest import random_targets, tie_free_scores


def _probs(n=2000, seed=0):
    task = SyntheticTask(SyntheticSpec(n_classes=10, dim=4, n_groups=3, ambiguity=0.9))
    _, y, posterior = task.sample(n, seed=seed)
    return posterior.double(), y


def _brute_topk_sets(scores, k):
    rows = []
    for row in scores.tolist():
        order = sorted(range(len(row)), key=lambda j, row=row: -row[j])
        rows.append([j in order[:k] for j in range(len(row))])
    return torch.tensor(rows)


def test_topk_sets_equal_brute_force():
    scores, targets = tie_free_scores(50, 9), random_targets(50, 9)
    for k in (1, 3, 9):
        sets = TopK(k).calibrate(scores, targets).predict(scores)
        assert torch.equal(sets, _brute_topk_sets(scores, k))
        assert set_size(sets) == k


def test_average_k_threshold_and_sets_equal_brute_force():
    scores, targets = tie_free_scores(40, 7, seed=3), random_targets(40, 7)
    for k in (0.5, 1.5, 2.0, 6.9):
        pooled = sorted(scores.flatten().tolist(), reverse=True)
        m = int(math.floor(40 * k + 0.5))
        lam = (pooled[m - 1] + pooled[m]) / 2
        predictor = AverageK(k).calibrate(scores, targets)
        assert float(predictor.threshold) == pytest.approx(lam)
        sets = predictor.predict(scores)
        expected = torch.tensor([[v >= lam for v in row] for row in scores.tolist()])
        assert torch.equal(sets, expected) and int(sets.sum()) == m
        # reused on other data: the same threshold, not a new calibration
        other = tie_free_scores(30, 7, seed=4)
        assert torch.equal(predictor.predict(other), other >= predictor.threshold)


def _brute_conformal(cal, y_cal, test, alpha, score, lam=0.0, k_reg=0):
    def nonconformity(row, label):
        if score == "lac":
            return 1.0 - row[label]
        above = sum(p for p in row if p > row[label])
        rank = 1 + sum(1 for p in row if p > row[label])
        return above + row[label] + (lam * max(rank - k_reg, 0) if score == "raps" else 0.0)

    values = sorted(nonconformity(row, label) for row, label in zip(cal.tolist(), y_cal.tolist(), strict=True))
    rank = math.ceil((len(values) + 1) * (1 - alpha))
    qhat = math.inf if rank > len(values) else values[rank - 1]
    sets = [[nonconformity(row, j) <= qhat for j in range(len(row))] for row in test.tolist()]
    return qhat, torch.tensor(sets)


@pytest.mark.parametrize(("score", "options"), [("lac", {}), ("aps", {}), ("raps", {"lam": 0.05, "k_reg": 2})])
def test_split_conformal_equals_brute_force(score, options):
    probs, y = _probs(600)
    cal, test = slice(0, 400), slice(400, 600)
    predictor = SplitConformal(score, 0.1, randomized=False, **options).calibrate(probs[cal], y[cal])
    qhat, expected = _brute_conformal(probs[cal], y[cal], probs[test], 0.1, score, **options)
    # 1e-8: conformal.class_scores computes the RAPS penalty lam * (rank - k_reg) in float32
    assert predictor.qhat == pytest.approx(qhat, abs=1e-8)
    sets = predictor.predict(probs[test])
    # entries whose score sits within rounding of qhat may differ: there are none or nearly none
    assert (sets != expected).double().mean() < 0.002


@pytest.mark.parametrize("score", ["lac", "aps", "raps"])
def test_split_conformal_matches_the_functional_form_and_mapie_metrics(score):
    probs, y = _probs(3000, seed=2)
    cal, test = slice(0, 1500), slice(1500, 3000)
    predictor = SplitConformal(score, 0.2, generator=torch.Generator().manual_seed(0)).calibrate(probs[cal], y[cal])
    qhat = C.calibrate(probs[cal], y[cal], 0.2, score, generator=torch.Generator().manual_seed(0))
    assert predictor.qhat == qhat
    sets = predictor.predict(probs[test])
    coverage = float(np.ravel(classification_coverage_score(y[test].numpy(), sets.numpy()[:, :, None]))[0])
    width = float(np.ravel(classification_mean_width_score(sets.numpy()[:, :, None]))[0])
    assert set_coverage(sets, y[test]) == pytest.approx(coverage)
    assert set_size(sets) == pytest.approx(width)
    assert set_coverage(sets, y[test]) >= 0.8 - 0.03  # the marginal guarantee, up to sampling noise


def test_macro_coverage_and_size_equal_brute_force():
    g = torch.Generator().manual_seed(0)
    sets = torch.rand(200, 6, generator=g) > 0.6
    targets = torch.randint(0, 5, (200,), generator=g)  # class 5 absent: excluded from macro
    per_class_cov, per_class_size = [], []
    for c in range(6):
        rows = [i for i in range(200) if int(targets[i]) == c]
        if rows:
            per_class_cov.append(sum(bool(sets[i, c]) for i in rows) / len(rows))
            per_class_size.append(sum(int(sets[i].sum()) for i in rows) / len(rows))
    assert set_coverage(sets, targets, "macro") == pytest.approx(sum(per_class_cov) / len(per_class_cov))
    assert set_size(sets, "macro", targets=targets) == pytest.approx(sum(per_class_size) / len(per_class_size))
    assert set_coverage(sets, targets) == pytest.approx(sum(bool(sets[i, targets[i]]) for i in range(200)) / 200)
    assert set_size(sets) == pytest.approx(int(sets.sum()) / 200)


def test_metric_names_are_read_back_as_written():
    from avgk_lib import metrics as M

    for kind, k, stat in [("top", 5, "micro"), ("top", 1, "macro"), ("avg", 1.5, "size"), ("avg", 2, "threshold")]:
        assert M.parse_metric_key(metric_key(kind, k, stat)) == (kind, float(k), stat)
    with pytest.raises(ValueError, match="write it avg1.5_micro"):
        M.parse_metric_key("avg1.50_micro")
    assert sets_module.metric_key is M.metric_key and sets_module.k_label is M.k_label


def test_metric_key_keeps_the_results_format():
    assert metric_key("top", 5, "micro") == "top5_micro"
    assert metric_key("top", 5.0, "macro") == "top5_macro"
    assert metric_key("avg", 1.5, "micro") == "avg1.5_micro"
    assert metric_key("avg", 2.0, "size") == "avg2_size"
    assert metric_key("avg", np.float64(3), "threshold") == "avg3_threshold"
    scores, targets = tie_free_scores(30, 4), random_targets(30, 4)
    keys = list(metric_dict(scores.softmax(1), targets, [1.0, 1.5, 3.0])[0])
    avg = ["micro", "macro", "size", "threshold"]
    expected = ["top1_micro", "top1_macro", *(f"avg1_{a}" for a in avg), *(f"avg1.5_{a}" for a in avg)]
    expected += ["top3_micro", "top3_macro", *(f"avg3_{a}" for a in avg)]
    assert keys == expected


def test_bad_arguments_raise_clear_errors():
    scores, targets = tie_free_scores(10, 4), random_targets(10, 4)
    probs = scores.softmax(1)
    cases = [
        (lambda: TopK(0), ValueError, "k"),
        (lambda: TopK(1.5), TypeError, "k"),
        (lambda: AverageK(float("nan")), ValueError, "k"),
        (lambda: AverageK(-1), ValueError, "k"),
        (lambda: AverageK("2"), TypeError, "k"),
        (lambda: AverageK(2).predict(scores), NotCalibratedError, "calibrate"),
        (lambda: SplitConformal("lac", 0.1).predict(probs), NotCalibratedError, "calibrate"),
        (lambda: SplitConformal("naive", 0.1), ValueError, "score"),
        (lambda: SplitConformal("lac", float("nan")), ValueError, "alpha"),
        (lambda: SplitConformal("lac", 1.0), ValueError, "alpha"),
        (lambda: SplitConformal("raps", 0.1, lam=-1), ValueError, "lam"),
        (lambda: SplitConformal("raps", 0.1, k_reg=1.5), TypeError, "k_reg"),
        (lambda: SplitConformal("aps", 0.1, randomized=1), TypeError, "randomized"),
        (lambda: SplitConformal("aps", 0.1, generator=0), TypeError, "generator"),
        (lambda: SplitConformal("lac", 0.1).calibrate(scores, targets), ValueError, "probabilities"),
        (lambda: SplitConformal("lac", 0.1).calibrate(probs, targets[:5]), ValueError, "targets"),
        (lambda: set_coverage(scores, targets), TypeError, "sets"),
        (lambda: set_coverage(scores > 0, targets, "weighted"), ValueError, "average"),
        (lambda: set_size(scores > 0, "macro"), ValueError, "targets"),
        (lambda: set_size(torch.zeros(0, 3, dtype=torch.bool)), ValueError, "sets"),
        (lambda: metric_key("top", 1.5, "micro"), ValueError, "k"),
        (lambda: metric_key("avg", 2, "mean"), ValueError, "average"),
        (lambda: metric_key("bottom", 2, "micro"), ValueError, "kind"),
    ]
    for call, error, word in cases:
        with pytest.raises(error, match=word):
            call()


def test_numpy_scalars_are_accepted():
    scores, targets = tie_free_scores(20, 5), random_targets(20, 5)
    assert TopK(np.int64(2)).k == 2
    assert AverageK(np.float32(1.5)).calibrate(scores, targets).predict(scores).sum() == 30
    assert SplitConformal("lac", np.float64(0.2)).alpha == 0.2


@pytest.mark.parametrize(
    "make", [lambda: AverageK(2), lambda: SplitConformal("lac", 0.2), lambda: SplitConformal("aps", 0.2)]
)
def test_predicting_on_another_class_count_than_calibrated_names_scores(make):
    scores, targets = tie_free_scores(40, 6).softmax(1), random_targets(40, 6)
    predictor = make().calibrate(scores, targets)
    assert predictor.predict(scores).shape == (40, 6)
    for classes in (5, 7):
        other = tie_free_scores(10, classes, seed=3).softmax(1)
        with pytest.raises(ValueError, match=f"`scores` has {classes} classes but .* calibrated on 6 classes"):
            predictor.predict(other)


def test_a_threshold_set_by_hand_predicts_on_any_class_count():
    """``metric_dict`` reuses validation thresholds by assigning them: no class count to compare."""
    predictor = AverageK(1.0)
    predictor.threshold = torch.tensor(0.5)
    assert predictor.predict(torch.tensor([[0.7, 0.2, 0.1]])).tolist() == [[True, False, False]]
