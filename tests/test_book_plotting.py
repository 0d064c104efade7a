"""Figures of chapters 1, 2, 3 and 9: what the reader must be able to read off them."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from avgk_book import plotting as P  # noqa: E402


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


# ---------------------------------------------------------------------------------------------
# Readable text: every figure of the helpers keeps its text >= 9 pt at the book's column width
# ---------------------------------------------------------------------------------------------

_RNG = np.random.default_rng(0)
_SUMMARY = [{"K": k, "loss": loss, "acc": 0.5 + 0.1 * k, "acc_ci95": 0.01} for k in (1, 2) for loss in ("a", "b")]
_AVGK_ROWS = [
    {
        "dataset": d,
        "loss": loss,
        "seed": seed,
        "train_k": train_k,
        "test_avg2_micro": 0.5 + 0.01 * seed,
        "test_avg3_micro": 0.6 + 0.01 * seed,
    }
    for d in ("synthetic-100", "fashion_mnist")
    for seed in (0, 1)
    for loss, train_k in (("cross_entropy", None), ("epr", 2.0))
]
_ENTRIES = [
    {
        "id": "P2-lt-twohead-vs-softmax",
        "dataset": "synthetic-100-lt",
        "K": 3.0,
        "effect": 0.01,
        "ci95": (-0.01, 0.03),
        "verdict": "inconclusive",
    }
]
_FIGURES = {
    "lines": lambda: P.lines({"x": [1, 2], "y": [1, 2]}, "x", {"y": "two_head"}, title="t", xlabel="x", ylabel="y"),
    "summary_plot": lambda: P.summary_plot(_SUMMARY, "K", "acc", "loss", reference=_SUMMARY, title="t"),
    "bar_table": lambda: P.bar_table([{"case": "a", "m": 1.0}], "case", {"m": "metric"}, ylabel="y", title="t"),
    "gradient_bars": lambda: P.gradient_bars({"cross_entropy": [0.5, -0.5]}, target=0, title="t"),
    "scatter_classes": lambda: P.scatter_classes(_RNG.normal(size=(24, 2)), np.arange(24) % 12, title="t"),
    "frequency_scatter": lambda: P.frequency_scatter(
        {
            "two_head": {
                "train_count": [1, 10],
                "accuracy": [0.1, 0.5],
                "bin_min_count": [1],
                "bin_max_count": [10],
                "bin_accuracy": [0.3],
            }
        },
        title="t",
    ),
    "size_histograms": lambda: P.size_histograms({"cross_entropy": np.array([1, 2, 2, 3])}, title="t"),
    "heatmap": lambda: P.heatmap(_RNG.random((4, 5)), xlabel="x", ylabel="y", title="t"),
    "image_grid": lambda: P.image_grid(
        _RNG.random((8, 1, 28, 28)),
        np.eye(8, 10, dtype=bool),
        np.arange(8),
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
        title="t",
    ),
    "forest_plot": lambda: P.forest_plot(_ENTRIES * 3, title="t"),
    "val_curves": lambda: P.val_curves([{"loss": "epr", "val_curve": [0.1, 0.2]}], ylabel="y", title="t"),
    "average_k_curves": lambda: P.average_k_curves(_AVGK_ROWS),
    "per_class_bars": lambda: P.per_class_bars({"run a": [0.1, 0.9, 0.5], "run b": [0.5, 0.5, 0.5]}, ylabel="y"),
    "two_panels": lambda: P.two_panels()[0],
    "coverage_size_curves": lambda: P.coverage_size_curves(
        {"lac": {"size": [1, 2], "coverage": [0.8, 0.9]}}, title="t"
    ),
    "cost_curves": lambda: P.cost_curves(
        [{"C": c, "K": k, "a": 1.0 + k} for c in (10, 100, 1000) for k in (1, 5)], {"a": "A"}, title="t"
    ),
    "coverage_histogram": lambda: P.coverage_histogram(
        {"lac": _RNG.beta(90, 10, 200)},
        law=(90, 10),
        target=0.9,
        measured=(np.linspace(0, 1, 11), np.full(11, 0.1)),
        title="t",
    ),
    "coverage_by_size": lambda: P.coverage_by_size(
        {"lac": [{"low": 1, "high": 1, "sizes": "1", "coverage": 0.9}]}, target=0.9, title="t"
    ),
}


def test_val_curves_band_is_the_95_percent_interval_of_the_mean():
    rows = [{"loss": "cross_entropy", "val_curve": [0.1 * s, 0.2 + 0.1 * s]} for s in range(5)]
    fig = P.val_curves(rows, ylabel="y", title="t")
    band = fig.axes[0].collections[0].get_paths()[0].vertices[:, 1]
    # 5 seeds 0.0 .. 0.4: mean 0.2, sd 0.158, t(4) 2.776, half-width 0.196
    half = 2.776 * np.std([0.1 * s for s in range(5)], ddof=1) / np.sqrt(5)
    assert np.isclose(band.max(), 0.4 + half, atol=1e-3) and np.isclose(band.min(), 0.2 - half, atol=1e-3)


def test_average_k_curves_one_panel_per_dataset_rows_trained_for_another_k_left_out():
    fig = P.average_k_curves(_AVGK_ROWS)
    assert [ax.get_title() for ax in fig.axes] == ["fashion_mnist (2 seeds)", "synthetic-100 (2 seeds)"]
    labels = {t.get_text() for t in fig.axes[1].get_legend().get_texts()}
    assert labels == {"cross-entropy", "EPR"}
    epr = next(c for c in fig.axes[1].containers if c.get_label() == "EPR")
    assert list(epr.lines[0].get_xdata()) == [2.0]  # EPR trained for K = 2: its K = 3 value is not drawn
    assert P.average_k_curves([{"dataset": "d", "loss": "epr", "seed": 0}]) is None


def _smallest_text_at_column_width(fig) -> tuple[float, str]:
    fig.canvas.draw()
    scale = min(1.0, P.COLUMN_WIDTH_IN / fig.get_figwidth())
    sizes = [
        (t.get_fontsize() * scale, t.get_text())
        for t in fig.findobj(matplotlib.text.Text)
        if t.get_visible() and t.get_text().strip()
    ]
    return min(sizes)


def test_every_figure_helper_is_checked_for_text_size():
    public = {
        name
        for name in dir(P)
        if not name.startswith("_")
        and callable(getattr(P, name))
        and getattr(getattr(P, name), "__module__", "") == P.__name__
    }
    assert public - {"style", "method_label"} == set(_FIGURES)


def test_figure_text_is_at_least_9_pt_at_the_column_width():
    P.style()
    for name, build in _FIGURES.items():
        fig = build()
        size, text = _smallest_text_at_column_width(fig)
        assert size >= P.MIN_FONT_PT, f"{name}: {text!r} is {size:.1f} pt at the column width"
        plt.close(fig)


def test_style_sets_readable_sizes_and_column_wide_figures():
    P.style()
    rc = matplotlib.rcParams
    assert rc["figure.figsize"][0] <= P.COLUMN_WIDTH_IN
    fig = plt.figure()
    for key in (
        "font.size",
        "axes.titlesize",
        "axes.labelsize",
        "xtick.labelsize",
        "ytick.labelsize",
        "legend.fontsize",
    ):
        size = matplotlib.font_manager.FontProperties(size=rc[key]).get_size_in_points()
        assert size >= P.MIN_FONT_PT, key
    plt.close(fig)


def test_method_labels_replace_code_keys_in_legends():
    P.style()
    fig = P.gradient_bars({"cross_entropy": [0.5, -0.5], "smooth_svm": [0.1, 0.0]})
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["cross-entropy", "smooth top-K SVM"]
    assert P.method_label("some_new_loss") == "some new loss"
    plt.close(fig)


def test_per_class_bars_keep_the_legend_off_the_bars():
    fig = P.per_class_bars({"a": [0.0, 1.0], "b": [1.0, 0.0]}, ylabel="recall", title="t")
    ax = fig.axes[0]
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.y1 <= ax.get_window_extent().y0  # under the axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1"] and ax.get_xlabel() == "class"
    with pytest.raises(ValueError, match="one value per class"):
        P.per_class_bars({"a": [0.0], "b": [1.0, 0.0]}, ylabel="y")


def test_per_class_bars_name_the_classes_and_refuse_a_wrong_count():
    fig = P.per_class_bars({"a": [0.2, 0.8]}, ylabel="recall", class_names=["Shirt", "Coat"])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["Shirt", "Coat"]
    with pytest.raises(ValueError, match="name the 2 classes"):
        P.per_class_bars({"a": [0.2, 0.8]}, ylabel="recall", class_names=["Shirt"])


def test_line_histogram_and_coverage_legends_sit_above_the_data():
    import matplotlib.pyplot as plt
    import numpy as np

    from avgk_book import plotting as P

    figs = [
        P.lines({"x": [0, 1, 2], "a": [0.1, 0.9, 0.5], "b": [0.2, 0.8, 0.95]}, "x", {"a": "A", "b": "B"}),
        P.size_histograms({"m": np.array([1, 1, 2, 3]), "n": np.array([1, 2, 2, 2])}),
    ]
    for fig in figs:
        ax = fig.axes[0]
        fig.canvas.draw()
        legend = ax.get_legend().get_window_extent().transformed(ax.transData.inverted())
        top = max(np.nanmax(line.get_ydata()) for line in ax.get_lines()) if ax.get_lines() else 0.0
        top = max([top] + [p.get_path().get_extents(p.get_transform()).transformed(ax.transData.inverted()).y1
                           for p in ax.patches])  # fmt: skip
        assert legend.y0 >= top, (legend.y0, top)
        plt.close(fig)
