"""The ledger's statistics against scipy and statsmodels on fixed numbers."""

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from avgk_book import stats as S

OURS = [0.712, 0.698, 0.731, 0.705, 0.720, 0.709]
RIVAL = [0.700, 0.701, 0.715, 0.690, 0.712, 0.703]
D = [a - b for a, b in zip(OURS, RIVAL, strict=True)]


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_t_test_matches_scipy_ttest_rel(alternative):
    ours = S.t_test(S.paired_differences(OURS, RIVAL), alternative)
    ref = stats.ttest_rel(OURS, RIVAL, alternative=alternative)
    assert ours["t"] == pytest.approx(ref.statistic, rel=1e-10)
    assert ours["p"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert ours["df"] == ref.df == len(OURS) - 1
    assert ours["effect"] == pytest.approx(np.mean(D))


def test_interval_matches_scipy_and_the_formula():
    ours = S.t_test(D)
    ref = stats.ttest_rel(OURS, RIVAL).confidence_interval(0.95)
    assert ours["ci"] == pytest.approx([ref.low, ref.high], rel=1e-10)
    half = stats.t.ppf(0.975, len(D) - 1) * np.std(D, ddof=1) / math.sqrt(len(D))
    assert ours["ci"] == pytest.approx([np.mean(D) - half, np.mean(D) + half], rel=1e-10)
    ninety = S.t_test(D, confidence=0.90)["ci"]
    assert ours["ci"][0] < ninety[0] < ninety[1] < ours["ci"][1]


@pytest.mark.parametrize(("alternative", "null"), [("greater", -0.01), ("less", 0.01), ("two-sided", 0.005)])
def test_null_shift_matches_scipy_ttest_1samp(alternative, null):
    ours = S.t_test(D, alternative, null=null)
    ref = stats.ttest_1samp(D, popmean=null, alternative=alternative)
    assert ours["t"] == pytest.approx(ref.statistic, rel=1e-10)
    assert ours["p"] == pytest.approx(ref.pvalue, rel=1e-10)


def test_lower_is_better_flips_the_sign():
    times_ours, times_rival = [2.0, 2.1, 1.9], [5.0, 5.5, 4.8]
    d = S.paired_differences(times_ours, times_rival, higher_is_better=False)
    assert d == pytest.approx([3.0, 3.4, 2.9])
    assert S.t_test(d, "greater")["p"] == pytest.approx(
        stats.ttest_rel(times_rival, times_ours, alternative="greater").pvalue
    )


def test_constant_differences_follow_scipy_and_give_no_evidence_at_zero():
    r = S.t_test([0.1] * 5)
    with warnings.catch_warnings():  # scipy warns about the zero spread it handles the same way
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = stats.ttest_1samp([0.1] * 5, 0.0)
    assert r["t"] == ref.statistic == math.inf and r["p"] == ref.pvalue == 0.0
    assert S.t_test([-0.2] * 4, "less")["p"] == 0.0 and S.t_test([-0.2] * 4, "greater")["p"] == 1.0
    zero = S.t_test([0.0] * 5)
    assert zero["t"] == 0.0 and zero["p"] == 1.0 and zero["ci"] == [0.0, 0.0]


@pytest.mark.parametrize("margin", [0.005, 0.01, 0.02, 0.05])
def test_tost_matches_statsmodels_ttost_paired(margin):
    from statsmodels.stats.weightstats import ttost_paired

    ours = S.tost(S.paired_differences(OURS, RIVAL), margin)
    p, lower, upper = ttost_paired(np.array(OURS), np.array(RIVAL), -margin, margin)
    assert ours["p"] == pytest.approx(p, rel=1e-9)
    assert ours["p_lower"] == pytest.approx(lower[1], rel=1e-9)
    assert ours["p_upper"] == pytest.approx(upper[1], rel=1e-9)


@pytest.mark.parametrize("margin", [0.005, 0.01, 0.015, 0.02, 0.05])
def test_tost_rejects_iff_the_90_percent_interval_is_inside_the_margin(margin):
    r = S.tost(D, margin)
    inside = -margin < r["ci90"][0] and r["ci90"][1] < margin
    assert (r["p"] < 0.05) == inside
    assert r["ci90"] == pytest.approx(list(stats.ttest_1samp(D, 0.0).confidence_interval(0.90)), rel=1e-10)


PVALUES = [0.01, 0.04, 0.03, 0.005, 0.5, 0.04, 0.2, 0.0001, 0.9, 0.3]


@pytest.mark.parametrize("pvalues", [PVALUES, [0.02], [0.5, 0.5, 0.5], [0.001, 0.012, 0.013, 0.2, 0.25], [0.9, 0.95]])
def test_holm_matches_statsmodels(pvalues):
    from statsmodels.stats.multitest import multipletests

    reject, adjusted, _, _ = multipletests(pvalues, alpha=0.05, method="holm")
    ours = S.holm(pvalues)
    assert ours == pytest.approx(list(adjusted), rel=1e-12)
    assert [p < 0.05 for p in ours] == list(reject)


def test_holm_is_monotone_capped_and_never_below_the_raw_p():
    adjusted = S.holm(PVALUES)
    order = np.argsort(PVALUES, kind="stable")
    assert all(np.diff(np.array(adjusted)[order]) >= 0)
    assert all(a >= p for a, p in zip(adjusted, PVALUES, strict=True)) and max(adjusted) <= 1.0
    assert S.holm([]) == []
    # one test of p = 0.04 is significant alone, not among five
    assert S.holm([0.04])[0] < 0.05 and S.holm([0.04, 0.5, 0.6, 0.7, 0.8])[0] >= 0.05


@pytest.mark.parametrize(
    ("call", "exc", "name"),
    [
        (lambda: S.t_test([]), ValueError, "differences"),
        (lambda: S.t_test([0.1]), ValueError, "differences"),
        (lambda: S.t_test([0.1, math.nan]), ValueError, "differences"),
        (lambda: S.t_test([0.1, math.inf]), ValueError, "differences"),
        (lambda: S.t_test("0.1 0.2"), TypeError, "differences"),
        (lambda: S.t_test([0.1, "0.2"]), TypeError, "differences"),
        (lambda: S.t_test([True, False]), TypeError, "differences"),
        (lambda: S.t_test([0.1, 0.2], "bigger"), ValueError, "alternative"),
        (lambda: S.t_test([0.1, 0.2], null=math.nan), ValueError, "null"),
        (lambda: S.t_test([0.1, 0.2], null="0"), TypeError, "null"),
        (lambda: S.t_test([0.1, 0.2], confidence=1.0), ValueError, "confidence"),
        (lambda: S.tost([0.1, 0.2], 0.0), ValueError, "margin"),
        (lambda: S.tost([0.1, 0.2], -0.01), ValueError, "margin"),
        (lambda: S.tost([0.1, 0.2], math.nan), ValueError, "margin"),
        (lambda: S.tost([0.1], 0.01), ValueError, "differences"),
        (lambda: S.holm([0.2, 1.5]), ValueError, "pvalues"),
        (lambda: S.holm([-0.1]), ValueError, "pvalues"),
        (lambda: S.holm(0.1), TypeError, "pvalues"),
        (lambda: S.holm([math.nan]), ValueError, "pvalues"),
        (lambda: S.paired_differences([0.1, 0.2], [0.1]), ValueError, "ours"),
        (lambda: S.paired_differences([], []), ValueError, "ours"),
        (lambda: S.paired_differences([0.1], [0.2], higher_is_better=1), TypeError, "higher_is_better"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(call, exc, name):
    with pytest.raises(exc, match=f"`{name}`"):
        call()
