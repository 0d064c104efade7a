"""Analyses behind chapters 2 and 3 of the book, against hand-computed values."""

import importlib.util
from pathlib import Path

import pytest
import torch

from avgk_book import analysis as A

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _tool_module(name: str):
    """A module of ``tools/`` (the code that generates committed files), loaded by its path."""
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_uncalibrated_hinge_matches_the_brute_force_definition():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(50, 7, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 7, (50,), generator=g)
    for k in (1, 3):
        got = A.uncalibrated_topk_hinge(scores, targets, k)
        for i in range(50):
            others = sorted((float(v) for j, v in enumerate(scores[i]) if j != targets[i]), reverse=True)
            assert got[i] == pytest.approx(max(0.0, 1 + others[k - 1] - float(scores[i, targets[i]])))


def test_the_two_hinges_agree_inside_the_top_k_and_differ_outside():
    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0]], dtype=torch.float64)
    from avgk_lib import functional as AF

    for y, same in ((0, True), (1, True), (2, False), (3, False)):
        t = torch.tensor([y])
        a = float(A.uncalibrated_topk_hinge(scores, t, 2))
        b = float(AF.topk_hinge_loss(scores, t, 2))
        assert (a == b) is same and a >= b


def test_conditional_risks_show_the_crammer_singer_failure():
    # K = 1, p = (0.4, 0.3, 0.3): hand-computed risks. Uncalibrated: s=(1,0,0) costs
    # 0.4*0 + 0.6*2 = 1.2 > 1 = risk of s = 0; calibrated: 0.4*0 + 0.6*1 = 0.6 < 1.
    rows = A.conditional_risks(
        torch.tensor([0.4, 0.3, 0.3]), {"zero": torch.zeros(3), "top": torch.tensor([1.0, 0.0, 0.0])}, k=1
    )
    by = {r["candidate"]: r for r in rows}
    assert by["zero"]["calibrated risk"] == pytest.approx(1.0)
    assert by["zero"]["uncalibrated risk"] == pytest.approx(1.0)
    assert by["top"]["calibrated risk"] == pytest.approx(0.6)
    assert by["top"]["uncalibrated risk"] == pytest.approx(1.2)


def test_conditional_risks_validate():
    with pytest.raises(ValueError, match="posterior"):
        A.conditional_risks(torch.tensor([0.5, 0.6]), {"a": torch.zeros(2)}, 1)
    with pytest.raises(ValueError, match="candidates"):
        A.conditional_risks(torch.tensor([0.5, 0.5]), {"a": torch.zeros(3)}, 1)
    with pytest.raises(ValueError, match="k"):
        A.uncalibrated_topk_hinge(torch.zeros(2, 3), torch.tensor([0, 1]), 3)


def test_monte_carlo_hinge_is_biased_upwards_and_the_bias_shrinks():
    scores = torch.tensor([2.0, 1.6, 1.5, 0.4, 0.2, -0.5])
    out = A.hinge_bias(scores, target=3, k=2, epsilon=0.5, sample_sizes=[1, 50], repeats=4000)
    # true class far below the 3rd place: the hinge is active for every draw, so it is linear
    # there and the bias is pure Monte Carlo error; with the true class near the hinge's kink
    # (target 0 of [2.6, 1.6, ...]) Jensen's inequality makes the M = 1 estimate clearly too high.
    assert abs(out["bias"][0]) < 4 * out["stderr"][0] + 0.01
    near = A.hinge_bias(torch.tensor([2.6, 1.6, 1.5, 0.4]), target=0, k=1, epsilon=1.0, sample_sizes=[1, 100])
    assert near["bias"][0] > 4 * near["stderr"][0]
    assert abs(near["bias"][1]) < near["bias"][0] / 5


def test_cost_ratios_from_a_benchmark_row():
    row = {
        "C": 10,
        "K": 1,
        "cross_entropy": 1.0,
        "ours_noised": 4.0,
        "pytopk_noised": 8.0,
        "ours_svm": 12.0,
        "difftopk_svm": 20.0,
        "noise_draw": 2.0,
    }
    (r,) = A.cost_ratios([row])
    assert r["noised / CE"] == 4.0 and r["noise draw share"] == 0.5 and r["pytopk / noised"] == 2.0
    assert r["smooth SVM (ours) / noised"] == 3.0 and r["smooth SVM (difftopk) / noised"] == 5.0
    with pytest.raises(ValueError, match="rows"):
        A.cost_ratios([{"C": 1}])


def test_cost_findings_state_the_computed_ranges():
    base = {"cross_entropy": 1.0, "pytopk_noised": 8.0, "ours_svm": 12.0, "noise_draw": 2.0, "ours_noised": 4.0}
    rows = [{**base, "C": 10, "K": 1, "difftopk_svm": 20.0}, {**base, "C": 10, "K": 5, "difftopk_svm": 40.0}]
    text = A.cost_findings(A.cost_ratios(rows), where="a test")
    assert text[0].startswith("The noised loss costs 4 to 4 times cross-entropy on a test")
    assert "5.0 to 10.0 times slower" in text[1] and "5.0x at K = 1, 10.0x at K = 5 for C = 10" in text[1]
    assert "3.0 to 3.0 times the noised loss" in text[2] and "2.0 to 2.0 times ours" in text[2]
    with pytest.raises(ValueError, match="ratios"):
        A.cost_findings([])


def test_a_run_folder_is_read_through_its_checksummed_result(tmp_path):
    import json

    from avgk_lib.train import TrainConfig, train

    diagnostics = _tool_module("reference_diagnostics")  # what make references adds to the rows

    tiny = {"n_classes": 6, "dim": 4, "n_groups": 2, "n_train": 256, "n_val": 128, "n_test": 128}
    cfg = TrainConfig(dataset="synthetic", dataset_options=tiny, epochs=1, batch_size=64, eval_ks=[1, 2], k=2)
    returned = train(cfg, tmp_path, progress=False, log=lambda *_: None)
    read = A.run_results(tmp_path)
    assert read["test"] == returned["test"] and read["summary"]["class_counts"] == returned["summary"]["class_counts"]
    extra = diagnostics.run_diagnostics(tmp_path)
    assert {"test_avg2_tail", "test_avg2_head", "test_avg2_ambiguous", "test_avg2_clear"} <= set(extra)
    assert len(extra["test_topk_recall_by_class"]) == len(extra["test_rank_k1_share_by_class"]) == 6
    scores = diagnostics.best_checkpoint_test_scores(tmp_path)  # float32, from the best checkpoint
    saved = torch.load(tmp_path / "scores.pt", weights_only=False)["test_scores"]
    assert scores.dtype == torch.float32 and torch.allclose(scores.half().float(), saved.float(), atol=1e-3)
    assert extra["test_tied_topk_share"] == diagnostics.tied_topk_share(scores, 2) == 0.0
    edited = json.loads((tmp_path / "results.json").read_text())
    edited["test"]["top1_micro"] = 1.0 - edited["test"]["top1_micro"]
    (tmp_path / "results.json").write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="checksum"):
        A.run_results(tmp_path)
    with pytest.raises(ValueError, match="checksum"):
        diagnostics.run_diagnostics(tmp_path)


def test_tied_topk_share_counts_rows_whose_kth_and_next_scores_are_equal():
    diagnostics = _tool_module("reference_diagnostics")
    # underflowed probabilities (protocol A13): rows 0 and 1 tie at 0 from rank 2 on, row 2 does not
    scores = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.9, 0.1, 0.0, 0.0], [0.4, 0.3, 0.2, 0.1]])
    assert diagnostics.tied_topk_share(scores, 2) == pytest.approx(1 / 3)  # row 0: 2nd and 3rd are 0
    assert diagnostics.tied_topk_share(scores, 3) == pytest.approx(2 / 3)
    assert diagnostics.tied_topk_share(scores, 1.5) == diagnostics.tied_topk_share(scores, 2)  # K rounded up
    assert diagnostics.tied_topk_share(scores, 4) == 0.0  # no (K+1)-th class


def test_collapse_markdown_flags_runs_over_the_threshold_and_names_the_worst_otherwise():
    from avgk_book.findings import collapse_markdown

    rows = [
        {"arm": "paper", "dataset": "d", "loss": "a", "seed": 0, "test_top1_mode_share": 0.29},
        {"arm": "tuned", "dataset": "d", "loss": "b", "seed": 1, "test_top1_mode_share": 0.04},
    ]
    assert collapse_markdown(rows) == (
        "No collapsed run: the largest share of test inputs given the same top-1 class is 29.0% (paper, d, a, seed 0)."
    )
    flagged = collapse_markdown(rows, threshold=0.2)
    assert flagged.startswith("**1 collapsed run(s)**") and "d/a/seed 0: 29%" in flagged
    assert collapse_markdown([]) == "No run to check for collapse."


def test_memorisation_facts_are_computed_from_the_rows():
    from avgk_book.findings import memorisation_facts

    def row(loss, seed, curve, fits, best, last):
        history = [{"train_fit": {"flipped_acc": f}} for f in fits]
        return {"dataset": "d", "label_noise": 0.6, "loss": loss, "seed": seed, "val_curve": curve,
                "history": history, "best_epoch": curve.index(max(curve)) + 1,
                "test_top2_micro": best, "last_top2_micro": last}  # fmt: skip

    rows = [row("cross_entropy", 0, [0.5, 0.9, 0.8], [0.2, 0.7, 0.9], 0.9, 0.8),
            row("cross_entropy", 1, [0.6, 0.8, 0.7], [0.1, 0.5, 0.7], 0.8, 0.7),
            {**row("noised_topk", 0, [0.4, 0.5, 0.5], [0.1, 0.2, 0.2], 0.5, 0.5), "label_noise": 0.6}]  # fmt: skip
    tuning = {"dataset=d/label_noise=0.6/noised_topk": {"grid": [{"epsilon": 0.3}, {"epsilon": 1.0}],
                                                         "chosen": {"epsilon": 1.0}}}  # fmt: skip
    facts = memorisation_facts({"paper": {"rows": rows + [{**rows[0], "label_noise": 0.0}]},
                                "tuned": {"rows": [], "tuning": tuning}, "other": None}, {"d": 2})  # fmt: skip
    assert facts[0] == (
        "paper arm, d, p = 0.6, cross-entropy: best epoch 2 of 3 (mean of 2 seeds), last epoch -10.00 pp from "
        "the best in test top-2; it fits 80% of the flipped training labels at most; validation top-2 0.500 "
        "after the first epoch (seed 0), +30.0 pp to its best (mean)."
    )
    assert facts[1].startswith("paper arm, d, p = 0.6, noised top-K: best epoch 2 of 3 (mean of 1 seeds)")
    assert "+10.0 pp to its best" in facts[1] and "20% of the flipped" in facts[1]
    assert len(facts) == 2  # the clean setting (p = 0) and an arm without rows add nothing


def test_ledger_findings_name_an_arm_not_run_yet_on_a_setting():
    from avgk_book.findings import _pending_arms

    def e(arm, dataset, preset="cpu"):
        return {"arm": arm, "setting": {"dataset": dataset}, "preset": preset}

    group = [e("paper", "a"), e("paper", "b"), e("tuned", "a")]
    assert _pending_arms(group) == ["  - *tuned arm: not run yet on b.*"]
    assert _pending_arms([e("paper", "a"), e("tuned", "a")]) == []
    assert _pending_arms([e("paper", "x", "benchmark")]) == []  # one protocol by design


def test_an_entry_merged_as_duplicate_evidence_is_not_reported_as_not_run():
    from avgk_book.claims import merged_into, setting_label
    from avgk_book.findings import _pending_arms

    kept = {"id": "c", "arm": "tuned", "setting": {"dataset": "b"}, "preset": "cpu", "merged": ["c-last"]}
    group = [{"id": "c-last", "arm": "paper", "setting": {"dataset": "b"}, "preset": "cpu"}]
    merged = merged_into([kept])
    assert merged == {("tuned", setting_label({"dataset": "b"}), "c-last"): "c"}
    assert _pending_arms(group, merged=merged) == [
        "  - *tuned arm, b: merged into c (identical per-seed values: the same evidence).*"
    ]
    assert _pending_arms(group) == ["  - *tuned arm: not run yet on b.*"]


def test_a_wholly_absent_arm_is_named_once_in_the_closing_line_not_per_claim():
    from avgk_book.findings import _pending_arms

    group = [{"arm": "tuned", "setting": {"dataset": "a"}, "preset": "cpu"}]
    assert _pending_arms(group, ["tuned"]) == []
    assert _pending_arms(group) == ["  - *paper arm: not run yet on a.*"]


def test_tuning_table_says_which_knobs_are_bracketed():
    from avgk_book import findings as F

    knob = {"values": [0.1, 0.3, 1.0], "extensions": 0, "bracketed": True, "limit": False}
    grid = [{"lr": 0.3, "val": 0.8}, {"lr": 1.0, "val": 0.7}]
    tuning = {
        "dataset=synthetic-100/cross_entropy": {"grid": grid, "chosen": {"lr": 0.3}, "knobs": {"lr": knob}},
        "dataset=synthetic-100/noised_topk": {
            "grid": grid,
            "chosen": {"lr": 0.3, "epsilon": 10.0},
            "knobs": {"lr": knob, "epsilon": {**knob, "bracketed": False, "limit": True}},
        },
    }
    table = F.tuning_markdown({"arm": "tuned", "tuning": tuning})
    lines = [line for line in table.splitlines() if "synthetic-100" in line]
    assert lines[0].rstrip(" |").endswith("yes")
    assert "no: epsilon (hard limit) at an edge" in lines[1]


def test_dead_classes_are_reported_by_group_with_their_seed_counts_and_fashion_names():
    from avgk_book.findings import collapse_markdown, dead_classes_markdown

    rows = [
        {"arm": "paper", "dataset": "fashion_mnist", "loss": "noised_topk", "seed": s, "test_dead_classes": dead}
        for s, dead in ((0, [2, 6]), (1, [2]))
    ] + [{"arm": "paper", "dataset": "fashion_mnist", "loss": "cross_entropy", "seed": 0, "test_dead_classes": []}]
    text = dead_classes_markdown(rows)
    assert "in 2 of 3 runs" in text
    assert "paper, fashion_mnist, noised_topk: Pullover (2 of 2 runs), Shirt (1 of 2 runs)" in text
    assert "cross_entropy" not in text
    assert dead_classes_markdown([{**r, "test_dead_classes": []} for r in rows]).startswith("No dead class")
    assert dead_classes_markdown([{"loss": "a"}]) == ""
    # the collapse line carries it: three dead classes are not "no collapse" without a word
    assert collapse_markdown([{**r, "test_top1_mode_share": 0.2} for r in rows]).endswith(text)


def test_recall_and_rank_k1_by_class_against_a_hand_count():
    import torch

    diagnostics = _tool_module("reference_diagnostics")
    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 3.0, 2.0, 1.0], [3.0, 2.0, 1.0, 0.0], [1.0, 2.0, 3.0, 0.0]])
    targets = torch.tensor([2, 1, 0, 2])  # class 2: rank 3 then rank 1; class 1: rank 1; class 0: rank 1
    recall, at_k1 = diagnostics.recall_and_rank_k1_by_class(scores, targets, 2.0)
    assert recall == [1.0, 1.0, 0.5, None] and at_k1 == [0.0, 0.0, 0.5, None]


def test_fashion_noise_designs_table_per_class_series_and_rank_k1_sentence():
    from avgk_book import findings as F

    def row(dataset, loss, seed, top2, recall, at3, dead=None):
        r = {
            "dataset": dataset,
            "arm": "paper",
            "loss": loss,
            "seed": seed,
            "test_top2_micro": top2,
            "opt_epsilon": 0.2 if loss == "noised_topk" else None,
            "test_topk_recall_by_class": [recall] * 10,
            "test_rank_k1_share_by_class": [at3] * 10,
        }
        r["test_topk_recall_by_class"][6], r["test_rank_k1_share_by_class"][6] = recall / 2, at3 * 4
        return {**r, "test_dead_classes": dead} if dead is not None else r

    pairs = [
        row("fashion_mnist-pairs", loss, s, t, 0.9, 0.1, [])
        for s in (0, 1)
        for loss, t in (("noised_topk", 0.88), ("cross_entropy", 0.94), ("smooth_topk_svm", 0.94))
    ]
    trap = [row("fashion_mnist", loss, 0, t, 0.9, 0.1) for loss, t in (("noised_topk", 0.7), ("cross_entropy", 0.9))]
    arms = {"paper": {"rows": pairs + trap + [{"dataset": "synthetic-100", "arm": "paper", "loss": "noised_topk"}]}}
    table = F.fashion_noise_table(arms)
    assert [r["noise groups"] for r in table] == ["groups of 4 and 3 (the trap)", "pairs (P1's rule)"]
    assert table[0]["dead classes, noised top-K"] == "not recorded" and table[0]["top-2, smooth SVM"] is None
    assert table[1]["dead classes, noised top-K"] == 0 and table[1]["top-2, noised top-K"] == pytest.approx(0.88)
    series = F.fashion_recall_by_class(arms)
    assert len(series) == 3 and all(len(v) == 10 for v in series.values())  # the trap rows here lack the SVM
    text = F.rank_k1_markdown(arms)
    assert "40% of the test inputs of **Shirt**" in text and "top-2 recall is 0.450" in text
    assert F.rank_k1_markdown({"paper": {"rows": trap}}) == ""


def test_many_dead_classes_are_summarised_not_listed():
    from avgk_book.findings import DEAD_LISTED, dead_classes_markdown

    many = list(range(DEAD_LISTED + 4))
    rows = [{"arm": "tuned", "dataset": "synthetic-100", "loss": "a", "seed": s, "test_dead_classes": many[s:]}
            for s in range(3)]  # fmt: skip
    text = dead_classes_markdown(rows)
    assert f"{(10 + 9 + 8) / 3:.1f} per run, {len(many)} classes in all; most often" in text
    assert text.count(" runs)") == DEAD_LISTED and "class 2 (3 of 3 runs)" in text and "class 0" not in text


def test_add_diagnostics_diagnoses_a_run_folder_once_per_process(monkeypatch):
    diagnostics = _tool_module("reference_diagnostics")
    calls = []

    def fake(folder, k=None):
        calls.append(folder)
        return {"test_dead_classes": [1]}

    monkeypatch.setattr(diagnostics, "run_diagnostics", fake)
    monkeypatch.setattr(diagnostics, "_DIAGNOSED", {})
    rows = [{"run": "/runs/a", "seed": 0}, {"seed": 1}]
    first = diagnostics.add_diagnostics(rows)
    first[0]["test_dead_classes"].append(2)  # a caller's edit does not reach the next pass
    again = diagnostics.add_diagnostics(rows)
    assert calls == ["/runs/a"] and again[0]["test_dead_classes"] == [1] and again[1] == {"seed": 1}
