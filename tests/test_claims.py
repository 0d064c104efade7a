"""The claims ledger (format 2): entries, preconditions, merging, Holm, verdicts and rendering,
on rows with known answers; and the committed ledger regenerated from the committed references."""

import copy
import json
import math
import statistics
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from scipy import stats

from avgk_book import claims as C
from avgk_book.plotting import COLUMN_WIDTH_IN

matplotlib.use("Agg")

SEEDS = [0, 1, 2, 3, 4]


# ------------------------------------------------------------------------------ single tests


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
def test_uncorrected_verdicts_follow_the_interval(diffs, verdict):
    assert C.paired_interval(diffs)["verdict"] == verdict


def test_two_negative_gains_never_support_a_larger_gain():
    # the chapter 8 bug: -0.87 "larger" than 0.0 must not read as support
    assert C.larger_gain_verdict([-0.87, -0.86, -0.88], [0.0, 0.0, 0.0])["verdict"] == "contradicted"
    assert C.larger_gain_verdict([-0.01, -0.02, -0.015], [-0.5, -0.4, -0.45])["verdict"] == "contradicted"
    assert C.larger_gain_verdict([0.05, 0.06, 0.055], [0.01, 0.0, 0.012])["verdict"] == "supported"
    assert C.larger_gain_verdict([0.05, 0.06, 0.055], [0.05, 0.061, 0.054])["verdict"] == "inconclusive"


# ------------------------------------------------------------------------------ the precondition rule


def _fit(flipped):
    return {"epoch": 1, "train_fit": {"noisy_acc": 0.9, "clean_acc": 0.6, "flipped_acc": flipped}}


def test_flipped_label_fit_is_the_mean_over_seeds_of_the_max_over_epochs():
    histories = [[_fit(0.1), _fit(0.7), _fit(0.6)], [_fit(0.2), _fit(0.4)], [_fit(0.55)]]
    r = C.flipped_label_fit(histories, threshold=0.5)
    assert r["per_seed"] == [0.7, 0.4, 0.55]
    assert r["measured"] == pytest.approx((0.7 + 0.4 + 0.55) / 3)
    assert r["met"] is True and r["status"] == "met" and r["threshold"] == 0.5
    absent = C.flipped_label_fit(histories, threshold=0.6)
    assert absent["met"] is False and absent["status"] == "absent"
    assert C.flipped_label_fit([[_fit(0.5)]], threshold=0.5)["met"] is True  # the threshold itself counts


@pytest.mark.parametrize(
    "histories",
    [[], [[]], [[{"epoch": 1}]], [[_fit(0.9), {"epoch": 2}]], [[_fit(0.9)], [{"train_fit": {"noisy_acc": 1.0}}]]],
)
def test_flipped_label_fit_says_not_measured_without_the_field(histories):
    r = C.flipped_label_fit(histories)
    assert r["met"] is None and r["measured"] is None and r["status"] == "precondition not measured"


@pytest.mark.parametrize(
    ("histories", "threshold", "exc", "name"),
    [("abc", 0.5, TypeError, "histories"), ([{"epoch": 1}], 0.5, TypeError, "histories"),
     ([[_fit(0.5)]], 0.0, ValueError, "threshold"), ([[_fit(0.5)]], 1.5, ValueError, "threshold"),
     ([[_fit(math.nan)]], 0.5, ValueError, "flipped_acc")],
)  # fmt: skip
def test_flipped_label_fit_bad_inputs(histories, threshold, exc, name):
    with pytest.raises(exc, match=f"`{name}`"):
        C.flipped_label_fit(histories, threshold)


# ------------------------------------------------------------------------------ verdict rules


@pytest.mark.parametrize(
    ("entry", "verdict"),
    [
        ({"test": "superiority", "effect": 0.02, "p_holm": 0.01}, "supported"),
        ({"test": "superiority", "effect": -0.02, "p_holm": 0.01}, "contradicted"),
        ({"test": "superiority", "effect": -0.02, "p_holm": 0.06}, "inconclusive"),
        ({"test": "superiority", "effect": 0.02, "p_holm": None}, "inconclusive"),
        ({"test": "superiority", "effect": 0.02, "p_holm": 0.01, "precondition": {"met": False}}, C.VERDICTS[3]),
        ({"test": "superiority", "effect": -0.02, "p_holm": 0.5, "precondition": {"met": False}}, C.VERDICTS[3]),
        ({"test": "superiority", "effect": -0.02, "p_holm": 0.01, "precondition": {"met": None}}, "contradicted"),
        ({"test": "superiority", "effect": 0.02, "p_holm": 0.01, "precondition": {"met": True}}, "supported"),
        ({"test": "equivalence", "effect": 0.0, "p_holm": 0.01, "inferiority": {"p_holm": 1.0}}, "supported"),
        ({"test": "equivalence", "effect": -0.05, "p_holm": 1.0, "inferiority": {"p_holm": 0.01}}, "contradicted"),
        ({"test": "equivalence", "effect": 0.05, "p_holm": 0.9, "inferiority": {"p_holm": 1.0}}, "inconclusive"),
        ({"test": "gain", "effect": 0.02, "p_holm": 0.01, "gain_where_test": {"effect": 0.03, "p_holm": 0.01}},
         "supported"),
        ({"test": "gain", "effect": 0.02, "p_holm": 0.01, "gain_where_test": {"effect": 0.03, "p_holm": 0.2}},
         "inconclusive"),
        ({"test": "gain", "effect": 0.5, "p_holm": 0.001, "gain_where_test": {"effect": -0.3, "p_holm": 0.01}},
         "contradicted"),
        ({"test": "gain", "effect": -0.02, "p_holm": 0.01, "gain_where_test": {"effect": 0.03, "p_holm": 0.5}},
         "contradicted"),
    ],
)  # fmt: skip
def test_verdict_rules(entry, verdict):
    assert C.verdict_of(entry) == verdict


def test_verdict_bad_inputs():
    with pytest.raises(ValueError, match="`alpha`"):
        C.verdict_of({"test": "superiority", "effect": 0.1, "p_holm": 0.01}, alpha=0.7)
    with pytest.raises(ValueError, match="`entry`"):
        C.verdict_of({"test": "beats", "effect": 0.1, "p_holm": 0.01})


# ------------------------------------------------------------------------------ ledgers from known rows


def _noise_rows(ce_fit=None, seeds=SEEDS, last_equals_best=False):
    """label_noise rows (cpu preset labels): noised top-K beats CE by 5 pp at p = 0.6 and is within
    0.05 pp of the smooth SVM; at p = 0 it is 3 pp below CE."""
    rows = []
    means = {0.6: {"noised_topk": 0.80, "cross_entropy": 0.75, "smooth_topk_svm": 0.8},
             0.0: {"noised_topk": 0.82, "cross_entropy": 0.85, "smooth_topk_svm": 0.84}}  # fmt: skip
    wiggle = [0.004, -0.003, 0.001, -0.002, 0.0005, 0.002, -0.001]
    for p, by_loss in means.items():
        for i, (loss, base) in enumerate(by_loss.items()):
            for s in seeds:
                value = base + s / 100 + wiggle[(s + i) % len(wiggle)] * (loss != "smooth_topk_svm")
                last = value if last_equals_best else value - 0.1 * (loss == "cross_entropy")
                row = {"dataset": "synthetic-100", "label_noise": p, "loss": loss, "seed": s, "train_k": None}
                row.update(test_top5_micro=value, last_top5_micro=last, best_epoch=20 if last_equals_best else 10)
                row["val_curve"] = [0.5] * 20
                if loss == "cross_entropy" and ce_fit is not None:
                    row["history"] = [_fit(ce_fit * e / 20) for e in range(1, 21)]
                rows.append(row)
    return rows[::-1]  # out of seed order on purpose


def _doc(rows, **extra):
    return C.ledger_document({"label_noise": {"preset": "cpu", "rows": rows, **extra}}, preset="cpu")


def _by(doc, claim_id, arm="tuned"):
    found = [e for e in doc["claims"] if e["id"] == claim_id and e["arm"] == arm]
    assert len(found) == 1, found
    return found[0]


KEYS = {"id", "paper", "claim", "arm", "experiment", "preset", "setting", "dataset", "n_classes", "K", "metric",
        "unit", "ours", "rival", "test", "per_seed", "n_seeds", "effect", "ci95", "p", "p_holm", "verdict", "notes",
        "chapter"}  # fmt: skip


def test_entries_have_the_v2_schema_and_per_seed_rows_in_seed_order():
    doc = _doc(_noise_rows(ce_fit=0.9))
    assert doc["format"] == 2 and doc["arms"] == ["tuned"] and doc["preset"] == "cpu"
    assert all(KEYS <= set(e) for e in doc["claims"])
    e = _by(doc, "P1-noise-topk-vs-ce")
    assert e["setting"] == {"dataset": "synthetic-100", "label_noise": 0.6}
    assert e["per_seed"]["seeds"] == SEEDS and e["n_classes"] == 100 and e["K"] == 5
    assert e["ours"] == "noised_topk" and e["rival"] == "cross_entropy" and e["metric"] == "test_top5_micro"
    rows = {(r["loss"], r["seed"]): r for r in _noise_rows(ce_fit=0.9) if r["label_noise"] == 0.6}
    assert e["per_seed"]["ours"] == [rows["noised_topk", s]["test_top5_micro"] for s in SEEDS]
    assert e["per_seed"]["rival"] == [rows["cross_entropy", s]["test_top5_micro"] for s in SEEDS]
    d = [a - b for a, b in zip(e["per_seed"]["ours"], e["per_seed"]["rival"], strict=True)]
    ref = stats.ttest_rel(e["per_seed"]["ours"], e["per_seed"]["rival"])
    assert e["effect"] == pytest.approx(sum(d) / 5) and e["p"] == pytest.approx(ref.pvalue)
    assert e["ci95"] == pytest.approx(list(ref.confidence_interval(0.95)))
    assert e["verdict"] == "supported" and e["chapter"] == "notebooks/04_label_noise.ipynb"
    assert json.loads(json.dumps(doc)) == doc  # plain JSON


def test_holm_runs_over_every_test_of_the_whole_ledger():
    from statsmodels.stats.multitest import multipletests

    doc = _doc(_noise_rows(ce_fit=0.9))
    family = [h for e in doc["claims"] for h in C._hypotheses(e)]
    assert doc["holm_family_size"] == len(family) > len(doc["claims"])  # equivalence entries add inferiority
    expected = multipletests([h["p"] for h in family], method="holm")[1]
    assert [h["p_holm"] for h in family] == pytest.approx(list(expected))


def test_equivalence_claims_use_tost_with_the_stated_margin():
    from statsmodels.stats.weightstats import ttost_paired

    doc = _doc(_noise_rows(ce_fit=0.9))
    svm = _by(doc, "P1-noise-topk-vs-svm")
    assert svm["test"] == "equivalence" and svm["margin"] == C.EQUIVALENCE_MARGIN
    ours, rival = (np.array(svm["per_seed"][k]) for k in ("ours", "rival"))
    p, _, _ = ttost_paired(ours, rival, -svm["margin"], svm["margin"])
    assert svm["p"] == pytest.approx(p) and svm["verdict"] == "supported"
    clean = _by(doc, "P1-clean-topk-vs-ce")  # 3 pp below cross-entropy: worse by more than the margin
    assert clean["effect"] == pytest.approx(-0.03, abs=0.005) and clean["verdict"] == "contradicted"


def test_precondition_measured_absent_gives_not_reproduced_here():
    doc = _doc(_noise_rows(ce_fit=0.2))
    e = _by(doc, "P1-noise-topk-vs-ce")
    assert e["precondition"]["met"] is False and e["precondition"]["measured"] == pytest.approx(0.2)
    assert e["verdict"] == "not reproduced here" and e["p_holm"] < 0.05  # significant, yet not a verdict
    assert _by(doc, "P1-noise-topk-vs-svm")["verdict"] == "supported"  # no precondition there
    met = _by(_doc(_noise_rows(ce_fit=0.9)), "P1-noise-topk-vs-ce")
    assert met["precondition"]["met"] is True and met["verdict"] == "supported"


def test_precondition_not_measured_keeps_the_verdict_and_says_so():
    e = _by(_doc(_noise_rows(ce_fit=None)), "P1-noise-topk-vs-ce")
    assert e["precondition"]["status"] == "precondition not measured" and e["verdict"] == "supported"
    assert any("precondition not measured" in n for n in e["notes"])


def test_identical_evidence_is_merged_with_a_note():
    doc = _doc(_noise_rows(ce_fit=0.9, last_equals_best=True))
    ids = [e["id"] for e in doc["claims"]]
    assert "P1-noise-topk-vs-ce-last" not in ids
    kept = _by(doc, "P1-noise-topk-vs-ce")
    assert kept["merged"] == ["P1-noise-topk-vs-ce-last"] and kept["best_epoch_is_last"] is True
    assert any("merged P1-noise-topk-vs-ce-last" in n and "best epoch = last epoch" in n for n in kept["notes"])
    distinct = _doc(_noise_rows(ce_fit=0.9))
    assert "P1-noise-topk-vs-ce-last" in [e["id"] for e in distinct["claims"]]
    assert _by(distinct, "P1-noise-topk-vs-ce-last")["effect"] == pytest.approx(0.15, abs=0.005)


def test_merge_keeps_entries_of_other_arms_or_settings():
    base = {
        "id": "a",
        "arm": "tuned",
        "setting": {"dataset": "x"},
        "per_seed": {"seeds": [0], "ours": [1], "rival": [0]},
    }
    others = [{**base, "arm": "paper"}, {**base, "setting": {"dataset": "y"}},
              {**base, "per_seed": {"seeds": [0], "ours": [2], "rival": [0]}}]  # fmt: skip
    entries = [copy.deepcopy({**e, "notes": []}) for e in [base, *others]]
    assert len(C.merge_duplicates(entries)) == 4
    with pytest.raises(TypeError, match="`entries`"):
        C.merge_duplicates(tuple(entries))


def test_fewer_than_five_seeds_is_flagged():
    e = _by(_doc(_noise_rows(ce_fit=0.9, seeds=[0, 1, 2])), "P1-noise-topk-vs-ce")
    assert e["n_seeds"] == 3 and any("fewer than the 5 required" in n for n in e["notes"])
    assert not any("fewer than" in n for n in _by(_doc(_noise_rows(ce_fit=0.9)), "P1-noise-topk-vs-ce")["notes"])


def test_two_arms_give_entries_for_both_and_one_holm_family():
    paper_rows = [{**r, "test_top5_micro": r["test_top5_micro"] - 0.05 * (r["loss"] == "noised_topk")}
                  for r in _noise_rows(ce_fit=0.95)]  # fmt: skip
    reference = {"preset": "cpu", "arms": {"paper": {"rows": paper_rows}, "tuned": {"rows": _noise_rows(0.9)}}}
    doc = C.ledger_document({"label_noise": reference})
    assert doc["arms"] == ["paper", "tuned"]
    paper, tuned = _by(doc, "P1-noise-topk-vs-ce", "paper"), _by(doc, "P1-noise-topk-vs-ce", "tuned")
    assert paper["effect"] == pytest.approx(tuned["effect"] - 0.05)
    single = C.ledger_document({"label_noise": {"preset": "cpu", "rows": _noise_rows(0.9)}})
    assert doc["holm_family_size"] == 2 * single["holm_family_size"]
    assert C.reference_arms({"preset": "cpu", "arm": "paper", "rows": []}).keys() == {"paper"}
    assert C.usable_reference({"preset": "cpu", "arm": "paper", "rows": paper_rows})
    assert not C.usable_reference({"preset": "cpu", "rows": paper_rows})  # an old tuned file without its tuning
    assert not C.usable_reference({"preset": "cpu", "arms": {"paper": {"rows": []}}}) and not C.usable_reference(None)


def test_tuning_records_give_trials_and_unbracketed_knobs():
    grid = [{"lr": lr, "epsilon": eps, "val": 0.5} for lr in (0.01, 0.03, 0.1) for eps in (0.05, 0.2, 1.0)]
    key = "dataset=synthetic-100/label_noise=0.6/"
    tuning = {key + "noised_topk": {"grid": grid, "chosen": {"lr": 0.03, "epsilon": 1.0}},
              key + "cross_entropy": {"grid": grid[:3], "chosen": {"lr": 0.03}}}  # fmt: skip
    e = _by(_doc(_noise_rows(ce_fit=0.9), tuning=tuning), "P1-noise-topk-vs-ce")
    assert e["tuning"]["ours"]["trials"] == 9 and e["tuning"]["rival"]["trials"] == 3
    assert e["tuning"]["ours"]["edges"] == ["epsilon=1 at the top of the values tried (0.05 to 1)"]
    assert e["tuning"]["rival"]["edges"] == []
    assert any("unbracketed tuning of ours" in n for n in e["notes"])
    assert "unequal tuning budgets: 9 trials for ours, 3 for the rival" in e["notes"]


def _p2_rows():
    rows = []
    for s in SEEDS:
        for loss, amb, clear in (("two_head", 0.50, 0.90), ("cross_entropy", 0.40, 0.91)):
            row = {"dataset": "synthetic-100", "loss": loss, "seed": s, "train_k": 3.0 if loss == "two_head" else None}
            row.update(test_avg3_ambiguous=amb + s / 200, test_avg3_clear=clear + (s % 2) / 500)
            row["test_avg3_micro"] = 0.7 + s / 100 + 0.01 * (loss == "two_head") + (s % 3) / 1000
            rows.append(row)
    return rows


def test_gain_claims_pair_the_gap_of_each_method_and_test_the_gain_where():
    doc = C.ledger_document({"average_k": {"preset": "cpu", "rows": _p2_rows()}})
    e = _by(doc, "P2-gain-ambiguous")
    assert e["test"] == "gain" and e["metric"] == "test_avg3_ambiguous - test_avg3_clear"
    assert e["per_seed"]["ours"] == pytest.approx([0.5 + s / 200 - 0.9 - (s % 2) / 500 for s in SEEDS])
    assert e["effect"] == pytest.approx(0.11) and e["gain_where"] == pytest.approx(0.10)
    assert e["gain_where_test"]["p_holm"] < 0.05 and e["verdict"] == "supported"


# ------------------------------------------------------------------------------ the cost claim


def _bench(repeats=True):
    rows = []
    for c, factor in ((100, 4.0), (1081, 3.0)):
        row = {"C": c, "K": 5, "B": 128, "ours_noised": 1.0, "ours_svm": factor, "difftopk_svm": 2 * factor}
        if repeats:
            jitter = [1.0, 1.05, 0.97, 1.02, 0.99, 1.01]
            row["repeats_ms"] = {"ours_noised": [1.0 * j for j in jitter],
                                 "ours_svm": [factor * j * (1 + i / 100) for i, j in enumerate(jitter)],
                                 "difftopk_svm": [2 * factor * j for j in jitter]}  # fmt: skip
        rows.append(row)
    return {"device": "cpu", "losses": rows}


def _bench_with(**repeats):
    bench = _bench()
    bench["losses"][0]["repeats_ms"].update(repeats)
    return bench


def test_cost_claim_without_repeats_is_skipped_with_what_the_benchmark_must_record():
    doc = C.ledger_document({}, {"bench_losses_cpu": _bench(repeats=False)})
    assert doc["claims"] == [] and doc["skipped"][0]["id"] == "P1-cost"
    assert "repeats_ms" in doc["skipped"][0]["reason"] and "at least 5" in doc["skipped"][0]["reason"]
    assert "Not tested: P1-cost" in C.synthesis_markdown({**doc, "claims": _doc(_noise_rows(0.9))["claims"]})


def test_cost_claim_with_repeats_tests_the_log_speed_up_against_the_faster_svm():
    doc = C.ledger_document({}, {"bench_losses_cpu": _bench()})
    assert [e["setting"]["C"] for e in doc["claims"]] == [100, 1081] and not doc["skipped"]
    e = doc["claims"][0]
    assert e["rival"] == "ours_svm" and e["unit"] == "log_ratio" and e["n_seeds"] == 6
    d = [math.log(b) - math.log(a) for a, b in zip(e["per_seed"]["ours"], e["per_seed"]["rival"], strict=True)]
    assert e["effect"] == pytest.approx(sum(d) / 6) and math.exp(e["effect"]) == pytest.approx(4.0 * 1.025, rel=0.01)
    assert e["verdict"] == "supported" and e["chapter"] == "notebooks/03_what_it_costs.ipynb"
    assert C.effect_text(e, interval=False) == f"x{math.exp(e['effect']):.2f}"


# ------------------------------------------------------------------------------ rendering


def _two_arm_doc():
    paper_rows = [{**r, "test_top5_micro": r["test_top5_micro"] - 0.05 * (r["loss"] == "noised_topk")}
                  for r in _noise_rows(ce_fit=0.2)]  # fmt: skip
    reference = {"preset": "cpu", "arms": {"paper": {"rows": paper_rows}, "tuned": {"rows": _noise_rows(0.9)}}}
    return C.ledger_document({"label_noise": reference}, {"bench_losses_cpu": _bench()}, preset="cpu")


def test_side_by_side_pairs_the_arms_of_each_claim_and_setting():
    doc = _two_arm_doc()
    rows = C.side_by_side(doc)
    row = next(r for r in rows if r["id"] == "P1-noise-topk-vs-ce")
    assert row["paper"]["arm"] == "paper" and row["tuned"]["arm"] == "tuned"
    assert row["setting"] == "synthetic-100, label_noise=0.6" and row["K"] == "5"
    cost = next(r for r in rows if r["id"] == "P1-cost")
    assert cost["tuned"] is None and cost["paper"] is not None
    text = C.ledger_markdown(doc)
    assert (
        "| paper arm: effect [95% interval], Holm p, seeds, MDE: verdict | tuned arm: " in text
        and "n/a (a benchmark: one protocol)" in text
    )
    assert "[chapter 4](04_label_noise.ipynb)" in text and "not reproduced here" in text
    assert "margin ±1 pp" in text


def test_verdict_counts_and_preconditions_per_arm():
    doc = _two_arm_doc()
    counts = C.verdict_counts(doc)
    assert "**P1, paper arm**" in counts and "**P1, tuned arm**" in counts
    tuned = [e for e in doc["claims"] if e["arm"] == "tuned"]
    assert f"**P1, tuned arm**: {len(tuned)} entries" in counts
    table = C.preconditions_markdown(doc)
    assert "| P1-noise-topk-vs-ce | paper |" in table and "| **no** |" in table and "| yes |" in table
    assert table.startswith("**cross-entropy fitted the flipped training labels**\n\n| id | arm | setting | measured")


def test_intro_states_the_main_result_the_arms_and_links_the_ledger_page():
    doc = _two_arm_doc()
    text = C.intro_markdown(doc)
    assert text.startswith(C.main_result(doc)) and "the paper arm and the tuned arm." in text
    assert "[claims ledger](../notebooks/10_claims_ledger.ipynb)" in text and "no runs" not in text
    only_tuned = C.intro_markdown(_doc(_noise_rows(0.9)), ledger_page="ledger.html")
    assert "from the tuned arm; the paper arm has no runs in the committed references yet" in only_tuned
    assert "[claims ledger](ledger.html)" in only_tuned
    assert C.intro_markdown({"claims": []}).startswith("_The ledger is empty")


def test_synthesis_states_counts_main_result_and_links():
    doc = _two_arm_doc()
    text = C.synthesis_markdown(doc)
    n = len(doc["claims"])
    findings = [e for e in doc["claims"] if e["status"] == "finding"]
    supported = sum(e["verdict"] == "supported" for e in findings)
    assert f"{len(findings)} of {n} are findings: {supported} supported" in text
    assert "counted apart:" in text
    assert f"Holm's correction over {doc['holm_family_size']} tests" in text
    n_claims = len({e["id"] for e in doc["claims"]})
    assert text.startswith(f"**Main result**: of the {n_claims} claims tested, ")
    assert "[chapter 3](03_what_it_costs.ipynb)" in text and "[chapter 4](04_label_noise.ipynb)" in text
    assert "../notebooks/04_label_noise.ipynb" in C.synthesis_markdown(doc, link_from="book")
    only_tuned = _doc(_noise_rows(0.9))
    assert "The paper arm has no runs" in C.synthesis_markdown(only_tuned)
    assert C.synthesis_markdown({"claims": []}).startswith("_The ledger is empty")
    assert text.startswith(C.main_result(doc)) and C.main_result(doc).count(". ") == 1  # claims, then entries


def test_claim_outcomes_count_each_claim_once_from_its_findings_only():
    def e(claim_id, verdict, status="finding"):
        return {"id": claim_id, "verdict": verdict, "status": status}

    entries = [e("cost", "supported")] * 6 + [e("mix", "supported"), e("mix", "contradicted", "finding"),
               e("neg", "contradicted"), e("neg", "inconclusive"), e("flat", "inconclusive"),
               e("gone", "supported", "confounded"), e("gone", "contradicted", "precondition absent")]  # fmt: skip
    assert C.claim_outcomes(entries) == {
        "supported": ["cost"], "contradicted": ["neg"], "mixed": ["mix"], "inconclusive": ["flat"],
        "no finding": ["gone"]}  # fmt: skip


def test_forest_data_in_display_units():
    doc = _two_arm_doc()
    points = C.forest_data(doc)
    assert len(points) == len(doc["claims"])
    for p, e in zip(points, doc["claims"], strict=True):
        if e["unit"] == "accuracy":
            assert p["x"] == pytest.approx(100 * e["effect"]) and p["low"] == pytest.approx(100 * e["ci95"][0])
        else:
            assert p["x"] == pytest.approx(math.exp(e["effect"])) and p["unit"] == "speed-up (x)"
        assert p["arm"] == e["arm"] and p["verdict"] == e["verdict"]
    absent = [p for p in points if p["precondition"] == "absent"]
    assert absent and all(p["arm"] == "paper" for p in absent)


def test_forest_plot_has_a_panel_per_unit_and_readable_fonts():
    import matplotlib.pyplot as plt

    doc = _two_arm_doc()
    fig = C.forest_plot(doc, title="all claims")
    axes = fig.get_axes()
    assert len(axes) == 2 and axes[1].get_xscale() == "log"
    labels = [t.get_text() for t in axes[0].get_yticklabels()]
    assert any(label.startswith("P1-noise-topk-vs-ce\n") and "\n(precondition absent" in label for label in labels)
    assert C._flagged("r", {("paper", "met"), ("tuned", "absent")}) == "r\n(precondition absent: tuned arm)"
    assert C._flagged("r", {("paper", "absent"), ("tuned", "absent")}) == "r\n(precondition absent)"
    assert fig.get_size_inches()[0] <= COLUMN_WIDTH_IN  # the fonts are the sizes the reader sees
    texts = [t for ax in axes for t in (*ax.get_xticklabels(), *ax.get_yticklabels(), ax.xaxis.label, ax.title)]
    texts += list(fig.legends[0].get_texts())
    assert all(t.get_fontsize() >= 9 for t in texts if t.get_text())
    n_points = sum(len([ln for ln in ax.get_lines() if ln.get_marker() in ("o", "s")]) for ax in axes)
    assert n_points == len(doc["claims"])
    plt.close(fig)


def test_entries_for_selects_an_experiment_and_arm():
    doc = _two_arm_doc()
    assert {e["id"] for e in C.entries_for(doc, "bench_losses_cpu")} == {"P1-cost"}
    assert {e["arm"] for e in C.entries_for(doc, "label_noise", "paper")} == {"paper"}


@pytest.mark.parametrize(
    ("call", "exc", "name"),
    [
        (lambda: C.reference_arms([]), TypeError, "reference"),
        (lambda: C.reference_arms({"preset": "cpu", "arms": {"best": {"rows": []}}}), ValueError, "reference"),
        (lambda: C.reference_arms({"preset": "cpu", "arms": {}}), ValueError, "reference"),
        (lambda: C.reference_arms({"rows": []}), ValueError, "reference"),
        (lambda: C.reference_arms({"preset": "cpu", "rows": "x"}), ValueError, "reference"),
        (lambda: C.ledger_document([]), TypeError, "references"),
        (lambda: C.evaluate_claim("P1", {"preset": "cpu", "rows": []}), TypeError, "claim"),
        (lambda: C.cost_entries(C.CLAIMS[4], "b", {"losses": None}), ValueError, "benchmark"),
        (lambda: C.cost_entries(C.CLAIMS[4], "b", _bench_with(ours_noised=[1.0, 0.0])), ValueError, "benchmark"),
        (lambda: C.cost_entries(C.CLAIMS[4], "b", _bench_with(ours_svm=[1.0, "x"])), TypeError, "benchmark"),
        (
            lambda: C.ledger_document({"label_noise": {"preset": "colab", "rows": _noise_rows(0.9)}}),
            ValueError,
            "reference",
        ),
        (lambda: C.tuning_summary([], {}, "ce"), TypeError, "tuning"),
        (lambda: C.entries_for({"claims": []}, 3), TypeError, "experiment"),
        (lambda: C.entries_for({"claims": []}, "label_noise", "best"), ValueError, "arm"),
        (lambda: C.setting_label("synthetic"), TypeError, "setting"),
        (lambda: C.ledger_markdown("claims"), TypeError, "ledger"),
        (lambda: C.forest_plot({"claims": []}), ValueError, "ledger"),
        (lambda: C.synthesis_markdown(None), TypeError, "ledger"),
        (lambda: C.synthesis_markdown({"claims": []}, link_from=None), TypeError, "link_from"),
        (lambda: C.ledger_markdown([], link_from=3), TypeError, "link_from"),
        (lambda: C.main_result("x"), TypeError, "ledger"),
        (lambda: C.intro_markdown("x"), TypeError, "ledger"),
        (lambda: C.intro_markdown({"claims": []}, ledger_page=""), TypeError, "ledger_page"),
        (lambda: C.forest_data(None), TypeError, "ledger"),
        (lambda: C.side_by_side(3), TypeError, "ledger"),
        (lambda: C.preconditions_markdown({"claims": "x"}), TypeError, "ledger"),
        (lambda: C.verdict_counts("x"), TypeError, "ledger"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(call, exc, name):
    with pytest.raises(exc, match=f"`{name}`"):
        call()


# ------------------------------------------------------------------------------ the committed ledger


def test_committed_ledger_is_generated_from_the_committed_references():
    from avgk_book.experiments import EXPERIMENTS, load_reference
    from avgk_book.references import load_json_reference, reference_names

    committed = load_json_reference("claims")
    assert committed is not None and committed["format"] == 2
    references = {n: r for n in EXPERIMENTS if C.usable_reference(r := load_reference(n, committed["preset"]))}
    benchmarks = {s: load_json_reference(s) for s in reference_names() if s.startswith("bench_losses")}
    fresh = C.ledger_document(references, benchmarks, preset=committed["preset"])
    assert json.dumps(fresh, sort_keys=True) == json.dumps(committed, sort_keys=True), (
        "claims.json is stale: run `python tools/reference_runs.py --ledger-only`"
    )
    assert all(e["verdict"] in C.VERDICTS and e["arm"] in C.ARMS for e in committed["claims"])


def test_the_loss_benchmark_records_interleaved_rounds_the_cost_claim_reads():
    import statistics

    import torch

    from avgk_book.benchmarking import bench_losses

    rows = bench_losses(
        torch.device("cpu"), batch=8, n_samples=2, min_run_time=0.03, classes=(12,), ks=(2,), echo=False, rounds=3
    )
    repeats = rows[0]["repeats_ms"]
    assert all(len(v) == 3 for v in repeats.values())
    assert rows[0]["ours_noised"] == statistics.median(repeats["ours_noised"])
    claim = next(c for c in C.CLAIMS if c.id == "P1-cost")
    entries, skipped = C.cost_entries(claim, "bench_losses_cpu", {"losses": rows, "device": "cpu"})
    assert len(entries) == 1 and not skipped and entries[0]["per_seed"]["seeds"] == [0, 1, 2]
    with pytest.raises(ValueError, match="rounds"):
        bench_losses(torch.device("cpu"), rounds=0)


def test_side_by_side_cells_tell_a_benchmark_from_a_pending_arm_and_show_both_equivalence_tests():
    bench = {"preset": "benchmark", "effect": 1.0, "ci95": [0.9, 1.1], "unit": "log_ratio", "n_seeds": 7,
             "p_holm": 1e-8, "verdict": "supported"}  # fmt: skip
    assert C._arm_cell(None, bench) == "n/a (a benchmark: one protocol)"
    assert C._arm_cell(None, {"preset": "cpu"}) == C._arm_cell(None) == "not run yet"
    assert C._arm_cell(None, {"preset": "cpu"}, "P1-x") == "merged into P1-x (identical per-seed values)"
    eq = {"test": "equivalence", "effect": -0.25, "ci95": [-0.26, -0.24], "unit": "accuracy", "n_seeds": 5,
          "p_holm": 1.0, "inferiority": {"p": 1e-10, "p_holm": 1.2e-8}, "verdict": "contradicted"}  # fmt: skip
    cell = C._arm_cell(eq)
    assert "Holm p 1 (equivalent?), 1.2e-08 (worse by > margin?)" in cell and cell.endswith("**contradicted**")


def test_an_equivalence_entry_in_words_names_the_test_that_decided():
    from avgk_book.findings import entry_markdown

    e = {"verdict": "contradicted", "arm": "paper", "setting": {"dataset": "d"}, "K": 2.0, "n_seeds": 5,
         "claim": "competitive", "ours": "noised_topk", "rival": "smooth_topk_svm", "metric": "test_top2_micro",
         "ours_mean": 0.68, "rival_mean": 0.93, "effect": -0.25, "ci95": [-0.26, -0.24], "unit": "accuracy",
         "p_holm": 1.0, "margin": 0.01, "ci90": [-0.258, -0.244], "test": "equivalence",
         "inferiority": {"p": 1e-10, "p_holm": 1.2e-8}}  # fmt: skip
    text = entry_markdown(e)
    assert "Holm-adjusted p = 1." in text
    assert "The p above tests equivalence (TOST); worse by more than the margin, Holm-adjusted p < 0.001." in text


# ------------------------------------------------------------------------------ round 8: headroom, MDE, status


def test_mde_matches_the_closed_form_with_scipy_quantiles():
    from scipy import stats as sstats

    d = [0.01, 0.03, -0.01, 0.02, 0.00, 0.015]
    entry = {"unit": "accuracy", "per_seed": {"ours": [0.5 + x for x in d], "rival": [0.5] * len(d)}}
    n, m = len(d), 40
    sd = statistics.stdev(d)
    expected = (sstats.t.ppf(1 - 0.05 / (2 * m), n - 1) + sstats.t.ppf(0.8, n - 1)) * sd / math.sqrt(n)
    assert C.minimum_detectable_effect(entry, m) == pytest.approx(expected, rel=1e-9)
    assert C.minimum_detectable_effect({"per_seed": {"ours": [0.5], "rival": [0.4]}}, m) is None


def test_headroom_from_the_oracle_and_from_the_upper_bound():
    rows = [{"seed": s, "test_avg2_micro": 0.60, "bayes_avg2_micro": 0.61} for s in range(3)]
    pre = C.headroom(rows, "test_avg2_micro", [0, 1, 2])
    assert pre["bound"] == "oracle" and pre["measured"] == pytest.approx(0.01)
    assert C.decide_headroom(pre, 0.02)["met"] is False  # 1 pp of room, MDE 2 pp: no room to see a gain
    assert C.decide_headroom(pre, 0.005)["met"] is True
    real = [{"seed": s, "test_avg2_micro": 0.995} for s in range(3)]  # no oracle: 1 - rival bounds it
    bounded = C.headroom(real, "test_avg2_micro", [0, 1, 2])
    assert bounded["bound"] == "upper" and C.decide_headroom(bounded, 0.001)["met"] is False
    roomy = C.headroom([{"seed": 0, "test_avg2_micro": 0.5}], "test_avg2_micro", [0])
    assert C.decide_headroom(roomy, 0.001)["met"] is None  # an upper bound cannot show room
    macro = C.headroom(rows, "test_avg2_macro", [0, 1, 2])
    assert macro["measured"] is None and macro["status"] == "precondition not measured"


def test_a_gain_pattern_reports_its_setting_headroom_without_letting_it_decide():
    """Protocol A12: P2's gain-pattern entries carry the net headroom (micro, Bayes oracle) of their
    setting, and an absent one leaves the measured verdict as it is."""
    pre = {
        **C.headroom([{"seed": 0, "test_avg3_micro": 0.60, "bayes_avg3_micro": 0.605}], "test_avg3_micro", [0]),
        "decides": False,
    }
    decided = C.decide_headroom(pre, 0.02)
    assert decided["met"] is False and decided["status"] == "reported (no room), not deciding"
    entry = {
        "test": "gain",
        "effect": 0.03,
        "p_holm": 0.001,
        "precondition": decided,
        "gain_where_test": {"effect": 0.02, "p_holm": 0.001},
    }
    assert C.verdict_of(entry) == "supported"
    assert C.verdict_of({**entry, "precondition": {**decided, "decides": True}}) == "not reproduced here"
    ledger = json.loads((Path(C.__file__).parent / "reference_results" / "claims.json").read_text())
    patterns = [e for e in ledger["claims"] if e["test"] == "gain"]
    assert patterns and all(e["precondition"]["decides"] is False for e in patterns)
    assert all(e["precondition"]["measured"] is not None for e in patterns if "synthetic" in e["dataset"])
    assert all(e["verdict"] == e["raw_verdict"] for e in patterns)


def test_status_counts_confounds_and_design_traps_apart_and_keeps_the_raw_verdict():
    assert C.status_of({"verdict": "contradicted", "handicaps": {"ours": "weight 1"}}) == "confounded"
    assert C.status_of({"verdict": "supported", "handicaps": {"rival": "decay"}}) == "confounded"
    assert C.status_of({"verdict": "inconclusive", "handicaps": {"ours": "weight 1"}}) == "finding"
    assert C.status_of({"verdict": "supported", "not_evidence": "trap"}) == "not counted"
    ledger = json.loads((Path(C.__file__).parent / "reference_results" / "claims.json").read_text())
    for e in ledger["claims"]:
        assert e["status"] in C.STATUSES and e["raw_verdict"] in C.VERDICTS
        if e["verdict"] == "not reproduced here" and e["status"] == "precondition absent":
            assert "as measured: " + e["raw_verdict"] in C.verdict_text(e)
        if e["dataset"] == "fashion_mnist" and e["experiment"] == "label_noise":
            assert e["status"] == "not counted"


def test_the_ledger_at_a_glance_has_one_row_per_claim_with_text_badges_and_a_worked_holm_example():
    ledger = json.loads((Path(C.__file__).parent / "reference_results" / "claims.json").read_text())
    text = C.at_a_glance_markdown(ledger)
    ids = list(dict.fromkeys(e["id"] for e in ledger["claims"]))
    assert len(text.splitlines()) == 2 + len(ids)
    for verdict in {e["verdict"] for e in ledger["claims"]}:
        assert f">{verdict}</span>" in text  # the verdict's name, not only its colour
    example = C.holm_example(ledger)
    if example:  # an inconclusive entry whose interval excludes 0
        assert "adjusted p" in example and "> 0.05" in example
    with pytest.raises(ValueError, match="`verdict`"):
        C.badge("maybe")


def test_why_names_the_winning_rival_and_a_disagreement_between_arms():
    def e(arm, verdict, rival="smooth_topk_svm", test="superiority"):
        return {"arm": arm, "verdict": verdict, "rival": rival, "test": test, "status": "finding",
                "ci95": [0.01, 0.02], "setting": {"dataset": "d"}}  # fmt: skip

    why = C.why_text([e("paper", "supported"), e("tuned", "contradicted")])
    assert why == "smooth top-K SVM significantly ahead in the tuned arm; the arms or settings disagree"
    both = C.why_text([e("paper", "contradicted", "cross_entropy"), e("tuned", "contradicted", "cross_entropy")])
    assert both == "cross-entropy significantly ahead in the paper and tuned arms"
    assert C.why_text([e("paper", "supported")]) == "significant after Holm"


def test_control_contrast_is_the_paired_difference_of_differences_scipy_oracle():
    rng = np.random.default_rng(3)
    seeds = list(range(12))
    a, b, a0, b0 = (dict(zip(seeds, rng.uniform(0.4, 0.9, 12), strict=True)) for _ in range(4))
    got = C.control_contrast(a, b, seeds, a0, b0)
    e = np.array([(a[s] - b[s]) - (a0[s] - b0[s]) for s in seeds])
    ref = stats.ttest_1samp(e, 0.0)
    lo, hi = stats.t.interval(0.95, len(e) - 1, loc=e.mean(), scale=stats.sem(e))
    assert got["effect"] == pytest.approx(e.mean()) and got["p"] == pytest.approx(ref.pvalue)
    assert got["ci95"] == pytest.approx([lo, hi])
    assert got["without"] == pytest.approx(np.mean([a0[s] - b0[s] for s in seeds]))
    # seeds missing from the control are left out; fewer than two pairs give None
    assert C.control_contrast(a, b, seeds, {0: 0.5}, {0: 0.4}) is None


def test_noise_entries_carry_a_control_that_leaves_the_verdict_alone():
    rows = []
    for seed in range(6):
        for p, gap in ((0.6, 0.05), (0.0, 0.03)):
            rows.append({"dataset": "synthetic-100", "label_noise": p, "loss": "noised_topk", "seed": seed,
                         "last_top5_micro": 0.7 + gap + 0.001 * seed})  # fmt: skip
            rows.append({"dataset": "synthetic-100", "label_noise": p, "loss": "cross_entropy", "seed": seed,
                         "last_top5_micro": 0.7 - 0.002 * seed})  # fmt: skip
    ref = {"preset": "cpu", "rows": rows, "seeds": list(range(6))}
    claim = next(c for c in C.CLAIMS if c.id == "P1-noise-topk-vs-ce-last")
    (entry,) = C.evaluate_claim(claim, ref, settings={"synthetic-100": {"n_classes": 100, "k": 5}})
    assert entry["control"]["setting"] == {"dataset": "synthetic-100", "label_noise": 0.0}
    assert entry["control"]["effect"] == pytest.approx(0.02)
    assert entry["control"]["without"] == pytest.approx(0.03 + 0.003 * 2.5, abs=1e-9)
    assert entry["effect"] == pytest.approx(0.05 + 0.003 * 2.5)  # the verdict's contrast is uncontrolled
    assert any(n.startswith("control (label_noise=0.0)") for n in entry["notes"])


def test_forest_plot_keeps_counted_entries_readable_and_marks_a_far_uncounted_one_at_the_edge():
    import matplotlib.pyplot as plt

    doc = _two_arm_doc()
    far = copy.deepcopy(next(e for e in doc["claims"] if e.get("unit", "accuracy") == "accuracy"))
    far.update(id="P1-far", effect=-0.25, ci95=[-0.26, -0.24], status="not counted", verdict="not reproduced here")
    fig = C.forest_plot({**doc, "claims": [*doc["claims"], far]})
    ax = fig.get_axes()[0]
    assert ax.get_xlim()[0] > -25.0  # the uncounted point does not set the scale
    assert "-25.0" in [t.get_text() for t in ax.texts]  # it is marked at the edge with its value
    plt.close(fig)


def test_tied_scores_count_an_entry_apart_whatever_its_direction():
    """Protocol A13: an entry whose runs tie at rank K / K + 1 on more than 1% of test inputs is
    decided by a metric artefact; rows that do not record the share flag nothing."""
    clean = [{"loss": "a", "test_tied_topk_share": 0.0}, {"loss": "b", "test_tied_topk_share": 0.01}]
    assert C.tied_scores(clean) == {"tied_share": 0.01}
    assert C.tied_scores([{"loss": "a"}]) == {"tied_share": None}
    tied = C.tied_scores([*clean, {"loss": "b", "test_tied_topk_share": 0.3}])
    assert "b ties" in tied["artefact"] and "30.0%" in tied["artefact"] and "a ties" not in tied["artefact"]
    for verdict in ("supported", "contradicted", "inconclusive"):
        entry = {"verdict": verdict, "raw_verdict": verdict, **tied}
        assert C.status_of(entry) == "confounded"
        assert "metric artefact" in C.verdict_text({**entry, "status": "confounded"})
    assert C.status_of({"verdict": "supported", "not_evidence": "trap", **tied}) == "not counted"
