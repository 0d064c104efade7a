"""Figures of the book (matplotlib + seaborn). Each function draws on ``ax`` (or a new figure)
and returns the figure; none computes anything a reader would need to trust: that is
:mod:`avgk_book.analysis`' job."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import matplotlib
import matplotlib.colors
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch

from . import coverage as CV

#: Width of the book's content column, in inches of a figure at ``figure.dpi = 100`` (650 CSS px:
#: the column of the built site at a 1280 px window is at least this wide, which
#: ``tools/check_site.py`` measures). A figure wider than the column is scaled down to it, and its
#: text with it: every helper here keeps text at :data:`MIN_FONT_PT` or more *after* that scaling.
COLUMN_WIDTH_IN = 6.5
#: Smallest font size a reader sees, in points at the column width.
MIN_FONT_PT = 9.0
#: Readable names of the code keys of losses and set-valued methods (legends, tick labels).
METHOD_LABELS = {
    "cross_entropy": "cross-entropy",
    "two_head": "two-head",
    "assume_negative": "AN",
    "an_ls": "AN-LS",
    "wan": "WAN",
    "epr": "EPR",
    "role": "ROLE",
    "noised_topk": "noised top-K",
    "imbalanced_noised_topk": "imbalanced noised top-K",
    "smooth_topk_svm": "smooth top-K SVM",
    "smooth_svm": "smooth top-K SVM",
    "topk_hinge": "top-K hinge",
    "focal": "focal",
    "ldam": "LDAM",
    "lac": "LAC",
    "aps": "APS",
    "raps": "RAPS",
}


def method_label(key: object) -> str:
    """Readable name of a loss or method key (``"cross_entropy"`` -> ``"cross-entropy"``); an
    unknown key has its underscores replaced by spaces."""
    if not isinstance(key, str):
        raise TypeError(f"`key` must be a string, got {key!r}")
    return METHOD_LABELS.get(key, key.replace("_", " "))


def style() -> None:
    """The book's look: seaborn's whitegrid theme; figures as wide as the book's column, so that
    the font sizes set here are the sizes the reader sees (all >= :data:`MIN_FONT_PT`)."""
    sns.set_theme(style="whitegrid", context="notebook", palette="colorblind")
    plt.rcParams.update(
        {
            "figure.figsize": (COLUMN_WIDTH_IN, 4.0),
            "figure.dpi": 100,
            "axes.titleweight": "bold",
            "font.size": 11.0,
            "axes.titlesize": 11.5,
            "axes.labelsize": 11.0,
            "xtick.labelsize": 10.0,
            "ytick.labelsize": 10.0,
            "legend.fontsize": 10.0,
            "legend.title_fontsize": 10.0,
            "figure.titlesize": 11.5,
        }
    )


def _ax(ax=None, figsize=None):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    return ax.figure, ax


def _legend_above_data(ax, share: float = 0.3, ncol: int = 2) -> None:
    """A legend in headroom added above the data: the y axis grows by ``share`` of its range and the
    legend sits in that band, so it never hides a bar or a point."""
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + share * (high - low))
    ax.legend(frameon=False, loc="upper center", ncol=ncol)


def lines(
    data: dict[str, Sequence[float]],
    x: str,
    ys: dict[str, str],
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    ax=None,
    logx: bool = False,
    markers: bool = True,
    styles: dict[str, str] | None = None,
):
    """One line per ``ys`` entry (column -> legend label) against column ``x``."""
    fig, ax = _ax(ax)
    for column, label in ys.items():
        ax.plot(
            data[x],
            data[column],
            marker="o" if markers else None,
            ms=4,
            label=label,
            ls=(styles or {}).get(column, "-"),
        )
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel or x, ylabel=ylabel, title=title)
    _legend_above_data(ax, ncol=1 if len(ys) == 1 else 2)
    return fig


def summary_plot(
    summary: list[dict[str, Any]],
    x: str,
    metric: str,
    hue: str,
    *,
    reference: list[dict] | None = None,
    ylabel: str = "",
    title: str = "",
    ax=None,
    xlabel: str = "",
    labels: dict[Any, str] | None = None,
    colors: dict[Any, Any] | None = None,
):
    """Mean and 95% interval of ``metric`` per ``hue`` against ``x`` (rows of
    :func:`avgk_book.experiments.summarize`). ``reference`` (the committed multi-seed results)
    is drawn as a shaded band with a dashed line, the reader's own run as points. ``labels``
    maps ``hue`` values to legend labels (default: :func:`method_label` of string values);
    ``colors`` maps them to colours (to keep one colour per method across panels)."""
    fig, ax = _ax(ax)
    names = sorted({r[hue] for r in summary + (reference or [])}, key=str)
    palette = {
        name: (colors or {}).get(name, default) for name, default in zip(names, sns.color_palette(), strict=False)
    }
    for name, color in palette.items():
        if reference:
            ref = sorted((r for r in reference if r[hue] == name), key=lambda r: r[x])
            if ref:
                xs = np.array([r[x] for r in ref], dtype=float)
                mean = np.array([r[metric] for r in ref])
                ci = np.array([r.get(f"{metric}_ci95", 0.0) for r in ref])
                ax.plot(xs, mean, ls="--", color=color, alpha=0.8)
                ax.fill_between(xs, mean - ci, mean + ci, color=color, alpha=0.15)
        own = sorted((r for r in summary if r[hue] == name), key=lambda r: r[x])
        if own:
            ax.errorbar(
                [r[x] for r in own],
                [r[metric] for r in own],
                yerr=[r.get(f"{metric}_ci95", 0.0) for r in own],
                marker="o",
                ms=5,
                capsize=3,
                color=color,
                label=(labels or {}).get(name) or (method_label(name) if isinstance(name, str) else str(name)),
                ls="-" if not reference else "none",
            )
    ax.set(xlabel=xlabel or x, ylabel=ylabel or metric, title=title)
    ax.legend(frameon=False)
    if reference:
        ax.text(
            0.99,
            0.01,
            "dashed + band: reference (mean, 95% CI)\npoints: this run",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=MIN_FONT_PT + 0.5,
            color="0.35",
        )
    return fig


def bar_table(
    rows: list[dict[str, Any]],
    category: str,
    metrics: dict[str, str],
    *,
    ylabel: str = "",
    title: str = "",
    ax=None,
    ylim: tuple[float, float] | None = None,
):
    """Grouped bars with 95% intervals: one group per ``category`` value, one bar per metric."""
    fig, ax = _ax(ax, figsize=(COLUMN_WIDTH_IN, 4.2))
    width = 0.8 / len(metrics)
    xs = np.arange(len(rows))
    for i, (metric, label) in enumerate(metrics.items()):
        ax.bar(
            xs + (i - (len(metrics) - 1) / 2) * width,
            [r[metric] for r in rows],
            width,
            yerr=[r.get(f"{metric}_ci95", 0.0) for r in rows],
            capsize=2,
            label=label,
        )
    ax.set_xticks(xs, [method_label(str(r[category])) for r in rows], rotation=30, ha="right")
    ax.set(ylabel=ylabel, title=title)
    if ylim:
        ax.set_ylim(*ylim)
    # beside the axes, never over the bars
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def gradient_bars(
    gradients: dict[str, Sequence[float]],
    *,
    target: int | None = None,
    title: str = "",
    ax=None,
    ylabel: str = "d loss / d score",
):
    """Gradient of several losses (or of an operator: set ``ylabel``) with respect to the scores
    of one sample, class by class."""
    fig, ax = _ax(ax)
    n = len(next(iter(gradients.values())))
    width = 0.8 / len(gradients)
    for i, (name, g) in enumerate(gradients.items()):
        ax.bar(np.arange(n) + (i - (len(gradients) - 1) / 2) * width, g, width, label=method_label(name))
    ax.axhline(0, color="0.3", lw=0.8)
    labels = [f"{j}{' (y)' if j == target else ''}" for j in range(n)]
    ax.set_xticks(np.arange(n), labels)
    ax.set(xlabel="class j (sorted by score)", ylabel=ylabel, title=title)
    ax.legend(frameon=False)
    return fig


def per_class_bars(
    values: dict[str, Sequence[float]],
    *,
    ylabel: str,
    title: str = "",
    xlabel: str = "class",
    class_names: Sequence[str] | None = None,
    ax=None,
):
    """One group of bars per class, one bar per named series (e.g. a per-class recall of several
    runs); the legend sits under the axes, never over the bars. ``class_names`` label the classes
    (slanted) instead of their indices."""
    fig, ax = _ax(ax, figsize=(COLUMN_WIDTH_IN, 4.6 if class_names else 4.2))
    n = len(next(iter(values.values())))
    if any(len(v) != n for v in values.values()):
        raise ValueError("`values` must hold one value per class in every series")
    if class_names is not None and len(class_names) != n:
        raise ValueError(f"`class_names` must name the {n} classes, got {len(class_names)} names")
    width = 0.8 / len(values)
    for i, (name, series) in enumerate(values.items()):
        ax.bar(np.arange(n) + (i - (len(values) - 1) / 2) * width, series, width, label=name)
    if class_names is None:
        ax.set_xticks(np.arange(n), [str(j) for j in range(n)])
    else:
        ax.set_xticks(np.arange(n), list(class_names), rotation=30, ha="right")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    below = -0.34 if class_names else -0.16
    columns = 2 if class_names else 3  # long series names beside class names: two per row
    ax.legend(frameon=False, loc="upper center", bbox_to_anchor=(0.5, below), ncol=min(columns, len(values)))
    fig.tight_layout()
    return fig


def scatter_classes(
    x: np.ndarray,
    labels: np.ndarray,
    *,
    color: np.ndarray | None = None,
    title: str = "",
    ax=None,
    cmap: str = "viridis",
    colorbar: str = "",
    discrete: bool = False,
    xlabel: str = "input coordinate $x_1$",
    ylabel: str = "input coordinate $x_2$",
):
    """2-D inputs coloured by class (with a legend of the classes), or by a value such as the
    posterior entropy (continuous colour bar) or a set size (``discrete=True``: one colour and one
    tick per integer value)."""
    fig, ax = _ax(ax, figsize=(COLUMN_WIDTH_IN, 4.6))
    if color is None:
        classes = np.unique(labels)
        palette = plt.get_cmap("tab20")
        for c in classes:
            pick = labels == c
            ax.scatter(x[pick, 0], x[pick, 1], color=palette(int(c) % 20), s=6, alpha=0.7, label=str(c))
        ax.legend(
            title="class",
            frameon=False,
            markerscale=2.5,
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
        )
    elif discrete:
        values = np.asarray(color).astype(int)
        low, high = int(values.min()), int(values.max())
        bounds = np.arange(low, high + 2) - 0.5
        colormap = plt.get_cmap(cmap, high - low + 1)
        norm = matplotlib.colors.BoundaryNorm(bounds, colormap.N)
        points = ax.scatter(x[:, 0], x[:, 1], c=values, cmap=colormap, norm=norm, s=6, alpha=0.8)
        fig.colorbar(points, ax=ax, label=colorbar, ticks=np.arange(low, high + 1))
    else:
        points = ax.scatter(x[:, 0], x[:, 1], c=color, cmap=cmap, s=6, alpha=0.8)
        fig.colorbar(points, ax=ax, label=colorbar)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.set_aspect("equal")
    fig.tight_layout()
    return fig


def frequency_scatter(
    results: dict[str, dict[str, Any]], *, metric: str = "accuracy", ylabel: str = "accuracy", title: str = "", ax=None
):
    """Per-class ``metric`` against the class's training count (log scale), one colour per method,
    with the binned means (:func:`avgk_book.analysis.accuracy_by_class_frequency`) as lines."""
    fig, ax = _ax(ax)
    for (name, r), color in zip(results.items(), sns.color_palette(), strict=False):
        ax.scatter(r["train_count"], r[metric], s=14, alpha=0.5, color=color)
        if metric == "accuracy":
            centers = np.sqrt(np.asarray(r["bin_min_count"]) * np.asarray(r["bin_max_count"]))
            ax.plot(centers, r["bin_accuracy"], marker="o", color=color, label=method_label(name))
        else:
            ax.plot([], [], marker="o", color=color, label=method_label(name))
    ax.set_xscale("log")
    ax.set(xlabel="training images of the class", ylabel=ylabel, title=title)
    ax.legend(frameon=False)
    return fig


def size_histograms(sizes: dict[str, np.ndarray], *, max_size: int | None = None, title: str = "", ax=None):
    """Distribution of prediction-set sizes, one series per method."""
    fig, ax = _ax(ax)
    top = max_size or int(max(int(np.max(s)) for s in sizes.values()))
    bins = np.arange(top + 2) - 0.5
    for name, s in sizes.items():
        ax.hist(
            np.clip(s, 0, top),
            bins=bins,
            histtype="step",
            lw=2,
            label=f"{method_label(name)} (mean {np.mean(s):.2f})",
            density=True,
        )
    ax.set(xlabel="set size", ylabel="share of test inputs", title=title)
    _legend_above_data(ax, ncol=1)
    return fig


def heatmap(
    matrix: np.ndarray,
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    ax=None,
    xticklabels: Sequence[str] | str = "auto",
    cmap: str = "rocket_r",
    cbar: bool = True,
):
    """A matrix as a heat map (e.g. which classes become pseudo-positives in a batch)."""
    fig, ax = _ax(ax, figsize=(COLUMN_WIDTH_IN, 4.6))
    sns.heatmap(matrix, ax=ax, cmap=cmap, cbar=cbar, xticklabels=xticklabels, yticklabels=False)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    return fig


def image_grid(
    images: np.ndarray,
    sets: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    n: int = 8,
    cols: int = 4,
    title: str = "",
):
    """Test images with their predicted sets; the true label is marked when it is in the set.
    The figure is as wide as the book's column (``cols`` images per row), text at 9.5 pt."""
    rows = int(np.ceil(min(n, len(images)) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(COLUMN_WIDTH_IN, 2.5 * rows))
    for i, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if i >= min(n, len(images)):
            continue
        img = images[i]
        ax.imshow(img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0)), cmap="gray")
        members = [class_names[j] + ("*" if j == labels[i] else "") for j in np.flatnonzero(sets[i])]
        ok = bool(sets[i][labels[i]])
        ax.set_title(
            "\n".join(members[:4]) + ("\n..." if len(members) > 4 else "") or "(empty)",
            fontsize=MIN_FONT_PT + 0.5,
            color="darkgreen" if ok else "darkred",
        )
    fig.suptitle(title or "predicted sets (* = true label; green: covered, red: missed)", fontsize=MIN_FONT_PT + 1.5)
    fig.tight_layout()
    return fig


def forest_plot(entries: list[dict[str, Any]], *, title: str = "", ax=None):
    """Paired effects (percentage points) with their 95% intervals, one line per claim and setting;
    green: supported, red: contradicted, grey: inconclusive."""
    colours = {"supported": "#1b7837", "contradicted": "#b2182b", "inconclusive": "#7f7f7f"}
    fig, ax = _ax(ax, figsize=(COLUMN_WIDTH_IN, 0.45 * max(len(entries), 2) + 1.2))
    for i, e in enumerate(entries):
        low, high = e["ci95"]
        colour = colours.get(e["verdict"], "black")
        if np.isfinite(low):
            ax.plot([100 * low, 100 * high], [i, i], color=colour, lw=2.5)
        ax.plot([100 * e["effect"]], [i], "o", color=colour, ms=7)
    ax.axvline(0.0, color="black", lw=1)
    ax.set_yticks(range(len(entries)))
    ax.set_yticklabels([f"{e['id']} · {e['dataset']} · K={e['K']:g}" for e in entries], fontsize=MIN_FONT_PT)
    ax.invert_yaxis()
    ax.set_xlabel("paired effect, percentage points (95% interval)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def val_curves(
    rows: list[dict[str, Any]], by: str = "loss", *, ylabel: str = "", title: str = "", ax=None, styles=None
):
    """Validation curve of the selection metric per epoch (``val_curve`` of each row), mean over
    the seeds of each ``by`` group with a band of its 95% interval (Student t over the seeds, as
    :func:`avgk_book.experiments.summarize` computes it; no band for one seed)."""
    from .experiments import summarize

    fig, ax = _ax(ax)
    groups: dict[Any, list[list[float]]] = {}
    for row in rows:
        groups.setdefault(row[by], []).append(row["val_curve"])
    for name, curves in sorted(groups.items(), key=lambda kv: str(kv[0])):
        length = min(len(c) for c in curves)
        per_epoch = [{"epoch": e + 1, "value": c[e]} for c in curves for e in range(length)]
        summary = sorted(summarize(per_epoch, ["epoch"], ["value"]), key=lambda r: r["epoch"])
        epochs = np.array([r["epoch"] for r in summary])
        mean = np.array([r["value"] for r in summary])
        half = np.array([r["value_ci95"] for r in summary])
        label = f"{method_label(name) if isinstance(name, str) else name} ({len(curves)} seeds)"
        (line,) = ax.plot(epochs, mean, label=label, **((styles or {}).get(name, {})))
        ax.fill_between(epochs, mean - half, mean + half, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def average_k_curves(rows: list[dict[str, Any]], *, ylabel: str = "average-K accuracy"):
    """One panel per dataset: test average-K accuracy (micro) of each method against K, mean and 95%
    interval over seeds. ``rows`` are result rows holding ``test_avg<K>_micro`` keys; a row trained
    for one K (``train_k`` set) counts only at that K, a row with ``train_k`` None at every K. One
    colour per method across panels. Returns the figure, or None when no row holds such a key."""
    from .experiments import summarize

    pattern = re.compile(r"test_avg([0-9.]+)_micro")
    long_rows = []
    for r in rows:
        for key, value in r.items():
            match = pattern.fullmatch(key)
            if match and value is not None and r.get("train_k") in (None, float(match.group(1))):
                k = float(match.group(1))
                long_rows.append(
                    {"dataset": r["dataset"], "loss": r["loss"], "K": k, "seed": r["seed"], "accuracy": value}
                )
    if not long_rows:
        return None
    datasets = sorted({r["dataset"] for r in long_rows})
    colors = dict(zip(sorted({r["loss"] for r in long_rows}), sns.color_palette("colorblind"), strict=False))
    fig, axes = plt.subplots(len(datasets), 1, figsize=(COLUMN_WIDTH_IN, 3.6 * len(datasets)), squeeze=False)
    for ax, name in zip(axes[:, 0], datasets, strict=True):
        mine = [r for r in long_rows if r["dataset"] == name]
        summary = summarize(mine, by=["loss", "K"], metrics=["accuracy"])
        summary_plot(
            summary,
            "K",
            "accuracy",
            "loss",
            ax=ax,
            xlabel="K",
            ylabel=ylabel,
            title=f"{name} ({len({r['seed'] for r in mine})} seeds)",
            colors=colors,
        )
        ax.set_xticks(sorted({r["K"] for r in summary}))
        ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def two_panels(figsize: tuple[float, float] = (COLUMN_WIDTH_IN, 3.6)):
    """A figure with two side-by-side axes (e.g. a value and its derivative, never on one axis),
    as wide as the book's column so that its text is not scaled down."""
    fig, axes = plt.subplots(1, 2, figsize=figsize)
    return fig, axes


def coverage_size_curves(curves: dict[str, dict[str, Sequence[float]]], *, title: str = "", ax=None):
    """Coverage against mean set size, one curve per method. Each method has its own marker and
    line style, and hollow markers are drawn under filled ones, so curves that coincide (LAC and
    average-K threshold the same probabilities) stay visible."""
    fig, ax = _ax(ax)
    markers = ["o", "s", "^", "D", "v", "P"]
    for i, (name, curve) in enumerate(curves.items()):
        hollow = i % 2 == 0
        ax.plot(
            curve["size"],
            curve["coverage"],
            marker=markers[i % len(markers)],
            ms=9 if hollow else 5,
            mfc="none" if hollow else None,
            mew=1.5,
            ls="--" if hollow else "-",
            lw=1.2,
            label=method_label(name),
            zorder=2 if hollow else 3,
        )
    ax.set(xlabel="mean set size (test)", ylabel="coverage (test)", title=title)
    ax.legend(frameon=False)
    return fig


def cost_curves(rows: list[dict[str, Any]], methods: dict[str, str], *, title: str = ""):
    """Milliseconds (log scale) against K, one panel per number of classes C, one line per method."""
    sizes = sorted({r["C"] for r in rows})
    cols = min(2, len(sizes))
    rows_n = int(np.ceil(len(sizes) / cols))
    legend_in = 0.25 * int(np.ceil(len(methods) / 2)) + 0.2  # two legend entries per line, below the panels
    height = 3.2 * rows_n + legend_in + (0.3 if title else 0.0)
    fig, grid = plt.subplots(rows_n, cols, figsize=(COLUMN_WIDTH_IN, height), squeeze=False)
    for extra in grid.ravel()[len(sizes) :]:
        extra.axis("off")
    for ax, n_classes in zip(grid.ravel(), sizes, strict=False):
        part = sorted((r for r in rows if r["C"] == n_classes), key=lambda r: r["K"])
        for key, label in methods.items():
            ax.plot([r["K"] for r in part], [r[key] for r in part], marker="o", ms=4, label=label)
        ax.set_yscale("log")
        ax.set(xlabel="K", ylabel="ms per forward + backward", title=f"C = {n_classes}")
    handles, labels = grid[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, frameon=False, loc="lower center", ncol=min(2, len(labels)))
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0.0, legend_in / height, 1.0, 1.0))
    return fig


def coverage_histogram(
    coverages: dict[str, np.ndarray],
    *,
    law: tuple[float, float] | None = None,
    measured: tuple[np.ndarray, np.ndarray] | None = None,
    target: float | None = None,
    bins: int = 30,
    title: str = "",
    ax=None,
):
    """Histogram (density) of the test coverage over random calibration/test splits, one outline
    per method, against the density of the Beta ``law`` (``(a, b)``, e.g.
    :func:`avgk_book.coverage.beta_coverage_law`: the coverage of the distribution), the law of
    the coverage ``measured`` on the finite test set (values and probabilities, e.g.
    :func:`avgk_book.coverage.measured_coverage_pmf`; dashed) and the target (dotted)."""
    fig, ax = _ax(ax)
    values = np.concatenate([np.asarray(v, dtype=float) for v in coverages.values()])
    low, high = float(values.min()), float(values.max())
    if law is not None:
        a, b = law
        mean, spread = a / (a + b), np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
        low, high = min(low, mean - 4 * spread), max(high, mean + 4 * spread)
    pad = 0.02 * max(high - low, 1e-3)
    edges = np.linspace(low - pad, high + pad, bins + 1)
    for name, values_i in coverages.items():
        ax.hist(
            np.asarray(values_i, dtype=float),
            bins=edges,
            density=True,
            histtype="step",
            lw=1.8,
            label=method_label(name),
        )
    if law is not None:
        grid = np.linspace(edges[0], edges[-1], 400)
        density = CV.beta_pdf(torch.tensor(grid), float(law[0]), float(law[1])).numpy()
        ax.plot(grid, density, color="black", lw=1.5, label=f"Beta({law[0]:g}, {law[1]:g})")
    if measured is not None:
        points, probabilities = (np.asarray(v, dtype=float) for v in measured)
        keep = (points >= edges[0]) & (points <= edges[-1])
        step = points[1] - points[0] if len(points) > 1 else 1.0
        ax.plot(
            points[keep], probabilities[keep] / step, color="black", ls="--", lw=1.2, label="law on the test points"
        )
    if target is not None:
        ax.axvline(target, color="0.3", ls=":", lw=1.5, label=f"1 - alpha = {target:g}")
    ax.set(xlabel="test coverage of one calibration split", ylabel="density", title=title)
    ax.legend(frameon=False, loc="upper left")
    return fig


def coverage_by_size(rows: dict[str, list[dict[str, Any]]], *, target: float | None = None, title: str = "", ax=None):
    """Coverage of the test inputs grouped by set size (rows of
    :func:`avgk_book.coverage.coverage_by_set_size`), grouped bars, one colour per method; the
    target ``1 - alpha`` dotted."""
    fig, ax = _ax(ax)
    bins = sorted({(r["low"], r["high"], r["sizes"]) for part in rows.values() for r in part})
    xs = np.arange(len(bins))
    width = 0.8 / max(len(rows), 1)
    for i, (name, part) in enumerate(rows.items()):
        by_bin = {(r["low"], r["high"], r["sizes"]): r["coverage"] for r in part}
        heights = [by_bin.get(b, np.nan) for b in bins]
        ax.bar(xs + (i - (len(rows) - 1) / 2) * width, heights, width, label=method_label(name))
    if target is not None:
        ax.axhline(target, color="0.3", ls=":", lw=1.5, label=f"1 - alpha = {target:g}")
    ax.set_xticks(xs, [b[2] for b in bins])
    ax.set(xlabel="set size", ylabel="coverage (test)", title=title, ylim=(0.0, 1.05))
    _legend_above_data(ax, share=0.35)
    return fig
