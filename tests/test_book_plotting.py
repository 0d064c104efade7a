"""Figures of chapters 1, 2, 3 and 9: what the reader must be able to read off them."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from avgk_lib.book import plotting as P  # noqa: E402


def test_scatter_by_class_has_axis_labels_and_a_legend_of_the_classes():
    x = np.random.default_rng(0).normal(size=(60, 2))
    fig = P.scatter_classes(x, np.repeat(np.arange(3), 20), title="t")
    ax = fig.axes[0]
    assert ax.get_xlabel() and ax.get_ylabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["0", "1", "2"]
    plt.close(fig)


def test_discrete_set_sizes_get_one_colour_and_one_tick_per_integer():
    x = np.random.default_rng(0).normal(size=(30, 2))
    sizes = np.array([1, 2, 3, 5] * 7 + [1, 2])
    fig = P.scatter_classes(x, np.zeros(30, int), color=sizes, colorbar="set size", discrete=True)
    colorbar_ax = fig.axes[1]
    assert [float(t) for t in colorbar_ax.get_yticks()] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert colorbar_ax.get_ylabel() == "set size"
    plt.close(fig)


def test_bar_legend_sits_outside_the_axes():
    rows = [{"case": "a", "m": 1.0}, {"case": "b", "m": 2.0}]
    fig = P.bar_table(rows, "case", {"m": "metric"})
    fig.canvas.draw()
    legend_box = fig.axes[0].get_legend().get_window_extent()
    assert legend_box.x0 >= fig.axes[0].get_window_extent().x1
    plt.close(fig)


def test_cost_curves_one_panel_per_class_count_and_coverage_curves_distinguishable():
    rows = [{"C": c, "K": k, "a": 1.0 + k, "b": 2.0 * k} for c in (10, 100) for k in (1, 5)]
    fig = P.cost_curves(rows, {"a": "A", "b": "B"})
    assert [ax.get_title() for ax in fig.axes] == ["C = 10", "C = 100"]
    plt.close(fig)
    curves = {"lac": {"size": [1, 2], "coverage": [0.8, 0.9]}, "average-K": {"size": [1, 2], "coverage": [0.8, 0.9]}}
    fig = P.coverage_size_curves(curves)
    first, second = fig.axes[0].get_lines()
    assert first.get_marker() != second.get_marker() and first.get_markerfacecolor() == "none"
    assert first.get_markersize() > second.get_markersize()
    plt.close(fig)


def test_gradient_bars_take_the_axis_label_of_what_is_differentiated():
    fig = P.gradient_bars({"a": [0.5, 0.5, 0.0]}, ylabel="d value / d s_j")
    assert fig.axes[0].get_ylabel() == "d value / d s_j"
    plt.close(fig)
