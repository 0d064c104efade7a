"""The training-set-size sweep: its catalog entry, its curves and their intervals, its figure."""

import math

import matplotlib
import pytest
from scipy import stats

from avgk_book import sweep as W
from avgk_book.experiments import SWEEP_SIZES, chosen_from_reference, expand, sweep_epochs

matplotlib.use("Agg")


def test_every_size_gets_the_steps_of_the_reference_recipe():
    assert [sweep_epochs(n) for n in SWEEP_SIZES] == [200, 67, 20, 7]
    steps = [sweep_epochs(n) * math.ceil(n / 128) for n in SWEEP_SIZES]
    assert max(steps) / min(steps) < 1.2  # within rounding of the 20 x 79 steps at 10,000
    with pytest.raises(ValueError, match="`n_train`"):
        sweep_epochs(0)


def test_the_sweep_reuses_the_committed_tuning_of_its_10k_twins():
    chosen = chosen_from_reference("size_sweep", "cpu")
    runs = expand("size_sweep", "cpu", [0], chosen)
    assert {r.labels["n_train"] for r in runs} == set(SWEEP_SIZES)
    by = {(r.labels["n_train"], r.labels["loss"], r.labels.get("label_noise")): r.config for r in runs}
    for n in SWEEP_SIZES:
        assert by[(n, "two_head", None)].loss_options == by[(10_000, "two_head", None)].loss_options
        assert by[(n, "two_head", None)].lr == chosen["dataset=synthetic-100/two_head"]["lr"]
        assert by[(n, "noised_topk", 0.6)].dataset_options["n_train"] == n


def _rows():
    rows = []
    for n in (1000, 3000):
        for s in range(4):
            common = {"n_train": n, "seed": s, "train_k": None}
            ce = 0.50 + 0.01 * s
            rows.append({**common, "dataset": "synthetic-100", "loss": "cross_entropy", "test_avg3_micro": ce,
                         "bayes_avg3_micro": 0.60})  # fmt: skip
            rows.append({**common, "dataset": "synthetic-100", "loss": "two_head", "train_k": 3.0,
                         "test_avg3_micro": ce + 0.02 + 0.001 * s})  # fmt: skip
            fit = [{"train_fit": {"flipped_acc": a}} for a in (0.1, 0.3 + 0.1 * s)]
            rows.append({**common, "dataset": "synthetic-100", "label_noise": 0.6, "loss": "cross_entropy",
                         "last_top5_micro": 0.7, "history": fit})  # fmt: skip
            rows.append({**common, "dataset": "synthetic-100", "label_noise": 0.6, "loss": "noised_topk",
                         "last_top5_micro": 0.71 + 0.002 * s})  # fmt: skip
    return rows


def test_curves_are_per_size_means_with_student_t_intervals():
    curves = W.sweep_curves(_rows())
    gap = curves["bayes_gap_avg3"]
    assert [p["n_train"] for p in gap] == [1000, 3000]
    assert gap[0]["mean"] == pytest.approx(0.085) and gap[0]["n_seeds"] == 4
    d = [0.02 + 0.001 * s for s in range(4)]
    half = stats.t.ppf(0.975, 3) * stats.tstd(d) / 2
    two = curves["two_head_minus_ce_avg3"][0]
    assert two["mean"] == pytest.approx(sum(d) / 4) and two["high"] - two["mean"] == pytest.approx(half)
    assert curves["noise_ce_flipped_fit"][0]["mean"] == pytest.approx(0.45)
    assert "lt_imbalanced_minus_ce" not in curves  # no runs: no curve
    table = W.sweep_table(curves)
    assert "n = 1,000" in table and "+8.50 [" in table


def test_figure_and_bad_inputs():
    fig = W.sweep_figure(W.sweep_curves(_rows()))
    assert len(fig.axes) >= 4
    with pytest.raises(TypeError, match="`rows`"):
        W.sweep_curves({"rows": []})
    with pytest.raises(ValueError, match="`curves`"):
        W.sweep_figure({})
    assert W.sweep_table({}).startswith("_No sweep")


def test_findings_read_every_number_from_the_curves_and_the_show_helper_handles_no_reference():
    curves = W.sweep_curves(_rows())
    text = W.sweep_findings(curves)
    assert "+8.50 pp" in text and "above 0" in text and "1,000: " in text and "3,000: " in text
    assert "Read as a curve: " in text and "largest at " in text
    block = W.size_sweep_tables("smoke")  # no smoke sweep is committed
    assert "No training-set-size sweep" in block.markdown and W.plot_size_sweep("smoke") is None
