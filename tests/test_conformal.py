"""Conformal sets: coverage/width agree with MAPIE's metrics, LAC sets agree with MAPIE's, and
the split-conformal guarantee holds empirically over many random splits."""

import numpy as np
import pytest
import torch
from mapie.metrics.classification import classification_coverage_score, classification_mean_width_score

from avgk_book.conformal_reference import alpha_for_mean_size, average_k_for_coverage
from avgk_lib import conformal as C
from avgk_lib import metrics as M
from avgk_lib.data.synthetic import SyntheticSpec, SyntheticTask


def _data(n=4000, seed=0):
    task = SyntheticTask(SyntheticSpec(n_classes=10, dim=4, n_groups=3, ambiguity=0.9))
    x, y, posterior = task.sample(n, seed=seed)
    return posterior.float(), y


@pytest.mark.parametrize("method", C.METHODS)
def test_coverage_and_width_agree_with_mapie_metrics(method):
    probs, y = _data()
    cal, test = slice(0, 2000), slice(2000, 4000)
    qhat = C.calibrate(probs[cal], y[cal], 0.1, method, generator=torch.Generator().manual_seed(0))
    sets = C.conformal_sets(probs[test], qhat, method, generator=torch.Generator().manual_seed(1))
    hits = sets[torch.arange(2000), y[test]]
    coverage = float(np.ravel(classification_coverage_score(y[test].numpy(), sets.numpy()[:, :, None]))[0])
    width = float(np.ravel(classification_mean_width_score(sets.numpy()[:, :, None]))[0])
    assert hits.double().mean().item() == pytest.approx(coverage)
    assert sets.sum(1).double().mean().item() == pytest.approx(width)


def test_lac_sets_equal_mapie_split_conformal_lac():
    from mapie.classification import SplitConformalClassifier
    from sklearn.base import BaseEstimator, ClassifierMixin

    probs, y = _data()

    class Lookup(ClassifierMixin, BaseEstimator):
        """A fitted 'model' whose input is a row index into our probabilities."""

        def fit(self, X, y):
            self.classes_ = np.arange(10)
            return self

        def predict_proba(self, X):
            return probs.double().numpy()[np.asarray(X).ravel().astype(int)]

        def predict(self, X):
            return self.predict_proba(X).argmax(1)

    model = Lookup().fit(np.zeros((1, 1)), np.zeros(1))
    mapie = SplitConformalClassifier(estimator=model, confidence_level=0.9, conformity_score="lac", prefit=True)
    cal_idx, test_idx = np.arange(2000)[:, None], np.arange(2000, 4000)[:, None]
    mapie.conformalize(cal_idx, y[:2000].numpy())
    _, mapie_sets = mapie.predict_set(test_idx)
    qhat = C.calibrate(probs[:2000].double(), y[:2000], 0.1, "lac")
    ours = C.conformal_sets(probs[2000:].double(), qhat, "lac")
    agreement = (ours.numpy() == mapie_sets[:, :, 0]).mean()
    assert agreement > 0.999


@pytest.mark.parametrize("method", C.METHODS)
def test_split_conformal_guarantee_holds_over_random_splits(method):
    probs, y = _data(n=3000, seed=5)
    alpha, coverages = 0.2, []
    for split in range(60):
        perm = torch.randperm(3000, generator=torch.Generator().manual_seed(split))
        cal, test = perm[:500], perm[500:]
        g = torch.Generator().manual_seed(100 + split)
        qhat = C.calibrate(probs[cal], y[cal], alpha, method, generator=g)
        sets = C.conformal_sets(probs[test], qhat, method, generator=g)
        coverages.append(sets[torch.arange(len(test)), y[test]].double().mean().item())
    mean = float(np.mean(coverages))
    # marginal guarantee: E[coverage] >= 1 - alpha, and <= 1 - alpha + 1/(n+1) for continuous scores
    assert mean >= 1 - alpha - 3 * np.std(coverages) / np.sqrt(len(coverages))
    assert mean <= 1 - alpha + 1 / 501 + 3 * np.std(coverages) / np.sqrt(len(coverages)) + 0.01


def test_quantile_rule_and_matching_helpers():
    scores = torch.arange(1, 10, dtype=torch.float64)  # n = 9
    assert C.conformal_quantile(scores, 0.1) == 9.0  # ceil(10 * 0.9) = 9
    assert C.conformal_quantile(scores, 0.5) == 5.0
    assert C.conformal_quantile(scores, 0.05) == float("inf")
    probs, y = _data(n=2000)
    alpha = alpha_for_mean_size(probs, y, 2.0, "lac")
    qhat = C.calibrate(probs, y, alpha, "lac")
    assert C.conformal_sets(probs, qhat, "lac").sum(1).double().mean().item() == pytest.approx(2.0, abs=0.05)
    k = average_k_for_coverage(probs, y, 0.9)
    assert M.average_k_accuracy(probs, y, M.average_k_threshold(probs, k)) == pytest.approx(0.9, abs=0.01)
    with pytest.raises(ValueError, match="alpha"):
        C.conformal_quantile(scores, 1.5)
    with pytest.raises(ValueError, match="method"):
        C.conformity_scores(probs, y, "naive")


# ---------------------------------------------------------------------------------------------
# avgk_book.coverage: coverage over random splits against the Beta law, and by set size
# ---------------------------------------------------------------------------------------------


def test_beta_density_and_law_match_scipy():
    from scipy import stats

    from avgk_book import coverage as CV

    x = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    for a, b in [(1.0, 1.0), (2.5, 7.0), (91.0, 10.0)]:
        assert np.allclose(CV.beta_pdf(x, a, b).numpy(), stats.beta.pdf(x.numpy(), a, b), atol=1e-9)
    a, b = CV.beta_coverage_law(99, 0.1)  # l = floor(100 * 0.1) = 10
    assert (a, b) == (90, 10)
    mean, std = CV.empirical_coverage_moments(99, 0.1, 10**9)
    assert mean == pytest.approx(stats.beta.mean(a, b)) and std == pytest.approx(stats.beta.std(a, b), rel=1e-6)
    with pytest.raises(ValueError, match="n_calibration"):
        CV.beta_coverage_law(5, 0.1)


def test_split_trials_equal_brute_force_on_a_tiny_pool():
    from avgk_book import coverage as CV

    probs, y = _data(n=12, seed=3)
    e = C.class_scores(probs, "lac")
    trials = CV.conformal_split_trials(e, y, 7, 0.3, n_splits=5, generator=torch.Generator().manual_seed(4))
    avg = CV.average_k_split_trials(probs, y, 7, 2.0, n_splits=5, generator=torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(4)
    for i in range(5):
        order = torch.randperm(12, generator=generator)
        cal, test = order[:7], order[7:]
        qhat = C.calibrate(probs[cal], y[cal], 0.3, "lac")
        sets = C.conformal_sets(probs[test], qhat, "lac")
        assert trials["qhat"][i].item() == pytest.approx(qhat)
        assert trials["coverage"][i].item() == pytest.approx(sets[torch.arange(5), y[test]].double().mean().item())
        assert trials["size"][i].item() == pytest.approx(sets.sum(1).double().mean().item())
        lam = M.average_k_threshold(probs[cal].double(), 2.0)
        avg_sets = M.average_k_sets(probs[test].double(), lam)
        assert avg["coverage"][i].item() == pytest.approx(avg_sets[torch.arange(5), y[test]].double().mean().item())
        assert avg["size"][i].item() == pytest.approx(avg_sets.sum(1).double().mean().item())


def test_split_coverage_follows_the_beta_law():
    from avgk_book import coverage as CV

    probs, y = _data(n=3000, seed=5)
    e = C.class_scores(probs, "aps", generator=torch.Generator().manual_seed(0))  # randomised: no ties
    trials = CV.conformal_split_trials(e, y, 200, 0.1, n_splits=400, generator=torch.Generator().manual_seed(1))
    mean, std = CV.empirical_coverage_moments(200, 0.1, 2800)
    assert trials["coverage"].mean().item() == pytest.approx(mean, abs=3 * std / 20)  # 400 splits: se = std / 20
    assert 0.7 * std < trials["coverage"].std().item() < 1.3 * std


def test_coverage_by_set_size_by_hand_and_bad_inputs():
    from avgk_book import coverage as CV

    sets = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1], [1, 1, 1], [0, 0, 0]], dtype=torch.bool)
    y = torch.tensor([0, 2, 1, 2, 0])
    rows = CV.coverage_by_set_size(sets, y)
    assert [(r["sizes"], r["count"], r["coverage"]) for r in rows] == [
        ("0", 1, 0.0),
        ("1", 1, 1.0),
        ("2", 2, 0.5),
        ("3", 1, 1.0),
    ]
    rows = CV.coverage_by_set_size(sets, y, edges=[0, 2, 4])
    assert [(r["sizes"], r["count"], r["share"]) for r in rows] == [("0-1", 2, 0.4), ("2-3", 3, 0.6)]
    with pytest.raises(ValueError, match="`edges`"):
        CV.coverage_by_set_size(sets, y, edges=[2, 1])
    with pytest.raises(ValueError, match="`n_calibration`"):
        CV.conformal_split_trials(sets.double(), y, 5, 0.1)
    with pytest.raises(ValueError, match="`alpha`"):
        CV.conformal_split_trials(sets.double(), y, 2, 1.5)
    with pytest.raises(ValueError, match="`k`"):
        CV.average_k_split_trials(sets.double(), y, 2, 4.0)
    with pytest.raises(TypeError, match="`n_splits`"):
        CV.average_k_split_trials(sets.double(), y, 2, 1.0, n_splits=2.5)
    with pytest.raises(ValueError, match="`a`"):
        CV.beta_pdf(torch.ones(2), -1.0, 1.0)


def test_measured_coverage_law_is_the_beta_binomial():
    from scipy import stats

    from avgk_book import coverage as CV

    values, pmf = CV.measured_coverage_pmf(99, 0.1, 50)
    a, b = CV.beta_coverage_law(99, 0.1)
    assert np.allclose(pmf.numpy(), stats.betabinom.pmf(np.arange(51), 50, a, b), atol=1e-12)
    mean, std = CV.empirical_coverage_moments(99, 0.1, 50)
    assert float((values * pmf).sum()) == pytest.approx(mean)
    assert float(((values - mean) ** 2 * pmf).sum()) == pytest.approx(std**2)
