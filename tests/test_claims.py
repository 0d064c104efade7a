"""Paired verdicts and the claims ledger, on rows with known answers."""

import math

import pytest
from scipy import stats

from avgk_lib.book import claims as C


def _rows(values_a, values_b, metric="m", **labels):
    rows = [{"loss": "a", "seed": s, metric: v, **labels} for s, v in enumerate(values_a)]
    return rows + [{"loss": "b", "seed": s, metric: v, **labels} for s, v in enumerate(values_b)]


def test_paired_interval_matches_the_student_t_formula():
    d = [0.01, 0.03, 0.02, 0.05]
    r = C.paired_interval(d)
    mean = sum(d) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 3)
    half = stats.t.ppf(0.975, 3) * sd / 2
    assert r["effect"] == pytest.approx(mean)
    assert r["ci95"] == pytest.approx([mean - half, mean + half])
    assert r["n_seeds"] == 4 and r["verdict"] == "supported"


@pytest.mark.parametrize(
    ("diffs", "verdict"),
    [([0.1, 0.11, 0.12], "supported"), ([-0.1, -0.11, -0.12], "contradicted"), ([0.1, -0.1, 0.02], "inconclusive"),
     ([0.5], "inconclusive")],
)  # fmt: skip
def test_verdicts_follow_the_interval(diffs, verdict):
    assert C.paired_interval(diffs)["verdict"] == verdict


def test_pairing_uses_the_seed_not_the_pooled_spread():
    # large spread across seeds, constant paired gain: unpaired intervals would overlap
    a, b = [0.50, 0.70, 0.90], [0.49, 0.69, 0.89]
    r = C.paired_claim(_rows(a, b), "m", {"loss": "a"}, [{"loss": "b"}])
    assert r["verdict"] == "supported" and r["effect"] == pytest.approx(0.01)


def test_the_best_rival_on_average_is_the_one_compared():
    rows = _rows([0.6, 0.61, 0.62], [0.5, 0.5, 0.5]) + [{"loss": "c", "seed": s, "m": 0.7} for s in range(3)]
    r = C.paired_claim(rows, "m", {"loss": "a"}, [{"loss": "b"}, {"loss": "c"}])
    assert r["rival"] == {"loss": "c"} and r["verdict"] == "contradicted"


def test_missing_runs_give_no_entry():
    assert C.paired_claim(_rows([0.5], [0.4]), "m", {"loss": "z"}, [{"loss": "b"}]) is None
    assert C.paired_claim(_rows([0.5], [0.4]), "m", {"loss": "a"}, [{"loss": "z"}]) is None


def test_two_negative_gains_never_support_a_larger_gain():
    # the chapter 8 bug: -0.87 "larger" than 0.0 must not read as support
    assert C.larger_gain_verdict([-0.87, -0.86, -0.88], [0.0, 0.0, 0.0])["verdict"] == "contradicted"
    assert C.larger_gain_verdict([-0.01, -0.02, -0.015], [-0.5, -0.4, -0.45])["verdict"] == "contradicted"
    assert C.larger_gain_verdict([0.05, 0.06, 0.055], [0.01, 0.0, 0.012])["verdict"] == "supported"
    assert C.larger_gain_verdict([0.05, 0.06, 0.055], [0.05, 0.061, 0.054])["verdict"] == "inconclusive"


def test_gain_claim_pairs_both_subgroups_per_seed():
    rows = [{"loss": "a", "seed": s, "hi": 0.6 + s / 10, "lo": 0.9} for s in range(3)]
    rows += [{"loss": "b", "seed": s, "hi": 0.5 + s / 10, "lo": 0.9} for s in range(3)]
    r = C.gain_claim(rows, "hi", "lo", {"loss": "a"}, {"loss": "b"})
    assert r["verdict"] == "supported" and r["gain_where"] == pytest.approx(0.1)


def test_ledger_entries_have_the_schema_and_come_from_the_rows():
    rows = []
    for loss, base in (("noised_topk", 0.80), ("cross_entropy", 0.75), ("smooth_topk_svm", 0.85)):
        last = base - 0.1 * (loss == "cross_entropy")
        for seed in range(3):
            for p in (0.0, 0.6):
                row = {"dataset": "synthetic-100", "label_noise": p, "loss": loss, "seed": seed}
                rows.append({**row, "test_top5_micro": base + seed / 100, "last_top5_micro": last})
    ledger = C.build_ledger({"label_noise": {"preset": "cpu", "rows": rows}})
    keys = {"id", "paper", "claim", "dataset", "n_classes", "preset", "metric", "effect", "ci95", "n_seeds", "verdict"}
    assert ledger and all(keys <= set(e) for e in ledger)
    by_id = {e["id"]: e for e in ledger}
    assert by_id["P1-noise-topk-vs-ce"]["verdict"] == "supported"
    assert by_id["P1-noise-topk-vs-ce"]["effect"] == pytest.approx(0.05)
    assert by_id["P1-noise-topk-vs-svm"]["verdict"] == "contradicted"
    assert by_id["P1-noise-topk-vs-ce-last"]["effect"] == pytest.approx(0.15)
    assert by_id["P1-noise-topk-vs-ce"]["n_classes"] == 100 and by_id["P1-noise-topk-vs-ce"]["K"] == 5
    assert "| P1-noise-topk-vs-ce |" in C.ledger_markdown(ledger)


def test_bad_differences_raise():
    with pytest.raises(ValueError, match="differences"):
        C.paired_interval([])
    with pytest.raises(ValueError, match="differences"):
        C.paired_interval([0.1, math.nan])
