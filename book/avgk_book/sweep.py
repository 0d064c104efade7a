r"""The training-set-size sweep (``book/protocol.md``, A7): where each paper's mechanism appears.

The reference ``size_sweep_<preset>.json`` holds one row per run of synthetic-100 at each training
size :math:`n` (labels ``n_train``), 20 seeds each, every size trained for the same number of
steps. :func:`sweep_curves` turns the rows into curves, one point per size: for a quantity
:math:`q_s` measured on seed :math:`s` (e.g. a paired difference of two methods on that seed),
the mean :math:`\bar q` and the Student-t 95% interval :math:`\bar q \pm t_{0.975,\,n_s-1}\,
\mathrm{sd}(q) / \sqrt{n_s}` over the :math:`n_s` seeds of that size. The curves:

* ``bayes_gap_avg{K}``: the Bayes-optimal average-K accuracy minus softmax thresholding's (cross-
  entropy thresholded at one global level), K = 2, 3, 5: the room any method has above it;
* ``two_head_minus_ce_avg{K}``: the two-head loss minus softmax thresholding, average-K accuracy;
* ``noise_last_topk_minus_ce``: under label noise 0.6, noised top-K minus cross-entropy in top-5
  accuracy at the last epoch, and ``noise_ce_flipped_fit``: cross-entropy's best fit of the
  flipped training labels over the epochs (the precondition of P1's noise claim);
* ``lt_imbalanced_minus_ce``: on the long tail (ratio 100), the imbalanced noised top-K loss minus
  cross-entropy in macro top-5 accuracy (best-validation checkpoint).

The sweep is descriptive: no verdict, no Holm family (protocol A7).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import stats as S

KS = (2.0, 3.0, 5.0)
#: the curves, in display order: key -> (title, unit of the y axis)
CURVES = {
    **{f"bayes_gap_avg{k:g}": (f"Bayes oracle minus softmax thresholding, average-{k:g}", "pp") for k in KS},
    **{f"two_head_minus_ce_avg{k:g}": (f"two-head minus softmax thresholding, average-{k:g}", "pp") for k in KS},
    "noise_last_topk_minus_ce": ("label noise 0.6: noised top-K minus cross-entropy, top-5, last epoch", "pp"),
    "noise_ce_flipped_fit": ("label noise 0.6: cross-entropy's fit of the flipped labels", "share"),
    "lt_imbalanced_minus_ce": ("long tail: imbalanced noised top-K minus cross-entropy, macro top-5", "pp"),
}


def _task(row: Mapping[str, Any]) -> str:
    if row.get("label_noise"):
        return "noise"
    return "long_tail" if str(row.get("dataset", "")).endswith("-lt") else "average_k"


def _by_seed(rows: Sequence[Mapping[str, Any]], task: str, n: int, loss: str, k: float | None = None) -> dict:
    return {
        r["seed"]: r
        for r in rows
        if _task(r) == task and r.get("n_train") == n and r.get("loss") == loss and (k is None or r.get("train_k") == k)
    }


def _paired(a: dict, b: dict, value: Callable[[Mapping[str, Any], Mapping[str, Any]], float]) -> list[float]:
    return [value(a[s], b[s]) for s in sorted(set(a) & set(b))]


def _quantities(rows: Sequence[Mapping[str, Any]], n: int) -> dict[str, list[float]]:
    """Per-seed values of every curve at size ``n`` (a curve without runs at ``n`` is left out)."""
    out: dict[str, list[float]] = {}
    ce = _by_seed(rows, "average_k", n, "cross_entropy")
    for k in KS:
        name = f"{k:g}"
        metric = f"test_avg{name}_micro"
        out[f"bayes_gap_avg{name}"] = [
            ce[s][f"bayes_avg{name}_micro"] - ce[s][metric] for s in sorted(ce) if f"bayes_avg{name}_micro" in ce[s]
        ]
        two = _by_seed(rows, "average_k", n, "two_head", k)
        out[f"two_head_minus_ce_avg{name}"] = _paired(two, ce, lambda a, b, m=metric: a[m] - b[m])
    noisy_ce = _by_seed(rows, "noise", n, "cross_entropy")
    noised = _by_seed(rows, "noise", n, "noised_topk")
    last = "last_top5_micro"
    out["noise_last_topk_minus_ce"] = _paired(noised, noisy_ce, lambda a, b: a[last] - b[last])
    fits = [r["history"] for _, r in sorted(noisy_ce.items()) if r.get("history")]
    out["noise_ce_flipped_fit"] = [max(e["train_fit"]["flipped_acc"] for e in history) for history in fits]
    lt = _by_seed(rows, "long_tail", n, "cross_entropy")
    imb = _by_seed(rows, "long_tail", n, "imbalanced_noised_topk")
    out["lt_imbalanced_minus_ce"] = _paired(imb, lt, lambda a, b: a["test_top5_macro"] - b["test_top5_macro"])
    return {key: values for key, values in out.items() if values}


def _point(values: list[float]) -> dict[str, Any]:
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return {"mean": mean, "low": math.nan, "high": math.nan, "n_seeds": len(values)}
    low, high = S.t_test(values)["ci"]
    return {"mean": mean, "low": low, "high": high, "n_seeds": len(values)}


def sweep_curves(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """``{curve: [{"n_train", "mean", "low", "high", "n_seeds"}, ...]}`` in increasing size, for
    every curve of :data:`CURVES` that has runs (see the module docstring).

    Example:
        >>> rows = [{"dataset": "synthetic-100", "n_train": 1000, "loss": "cross_entropy", "seed": s,
        ...          "train_k": None, "test_avg2_micro": 0.5 + s / 100, "bayes_avg2_micro": 0.6} for s in range(3)]
        >>> point = sweep_curves(rows)["bayes_gap_avg2"][0]
        >>> point["n_train"], round(point["mean"], 4), point["n_seeds"]
        (1000, 0.09, 3)
    """
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Sequence):
        raise TypeError(f"`rows` must be a list of reference rows, got {type(rows).__name__}")
    sizes = sorted({r["n_train"] for r in rows if isinstance(r, Mapping) and r.get("n_train")})
    curves: dict[str, list[dict[str, Any]]] = {}
    for n in sizes:
        for key, values in _quantities(rows, n).items():
            curves.setdefault(key, []).append({"n_train": n, **_point(values)})
    return {key: curves[key] for key in CURVES if key in curves}


def sweep_table(curves: Mapping[str, list[dict[str, Any]]]) -> str:
    """The curves as a Markdown table: one row per curve, one column per size, each cell the mean
    with its 95% interval (percentage points, or a share for the flipped-label fit)."""
    if not isinstance(curves, Mapping):
        raise TypeError(f"`curves` must be the dict sweep_curves returns, got {type(curves).__name__}")
    if not curves:
        return "_No sweep runs in this reference._"
    sizes = sorted({p["n_train"] for points in curves.values() for p in points})
    lines = [
        "| quantity (mean [95% interval], over seeds) | " + " | ".join(f"n = {n:,}" for n in sizes) + " |",
        "|---" * (len(sizes) + 1) + "|",
    ]
    for key, points in curves.items():
        title, unit = CURVES[key]
        by_n = {p["n_train"]: p for p in points}
        scale = 100.0 if unit == "pp" else 1.0
        cells = []
        for n in sizes:
            p = by_n.get(n)
            if p is None:
                cells.append("-")
                continue
            fmt = "{:+.2f}" if unit == "pp" else "{:.2f}"
            low, high = fmt.format(scale * p["low"]), fmt.format(scale * p["high"])
            ci = f" [{low}, {high}]" if math.isfinite(p["low"]) else ""
            cells.append(fmt.format(scale * p["mean"]) + ci)
        lines.append(f"| {title} ({unit}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_figure(curves: Mapping[str, list[dict[str, Any]]]):
    """Four panels against the training size (log axis), each point the mean over seeds with its
    95% band: (a) the Bayes gap of softmax thresholding, (b) two-head minus softmax thresholding,
    (c) label noise: noised top-K minus cross-entropy (last epoch), with cross-entropy's fit of the
    flipped labels on a second axis, (d) long tail: imbalanced minus cross-entropy. A dotted line
    marks 0 where a panel shows differences."""
    import matplotlib.pyplot as plt

    from .plotting import COLUMN_WIDTH_IN

    if not isinstance(curves, Mapping) or not curves:
        raise ValueError("`curves` must be a non-empty dict from sweep_curves")
    fig, axes = plt.subplots(2, 2, figsize=(COLUMN_WIDTH_IN, 6.8), sharex=True)
    ks = [f"K = {k:g}" for k in KS]
    panels = [  # titles in two short lines: each fits its half of the text column
        ("(a) room above softmax\nthresholding (Bayes gap)", [f"bayes_gap_avg{k:g}" for k in KS], ks),
        ("(b) two-head minus\nsoftmax thresholding", [f"two_head_minus_ce_avg{k:g}" for k in KS], ks),
        ("(c) label noise 0.6: noised\ntop-K minus cross-entropy", ["noise_last_topk_minus_ce"], ["top-5, last epoch"]),
        ("(d) long tail: imbalanced\nminus cross-entropy", ["lt_imbalanced_minus_ce"], ["macro top-5"]),
    ]
    for ax, (title, keys, labels) in zip(axes.flat, panels, strict=True):
        for key, label in zip(keys, labels, strict=True):
            _band(ax, curves.get(key, []), label, 100.0)
        if not title.startswith("(a)"):
            ax.axhline(0.0, color="black", linestyle=":", linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("percentage points")
        ax.legend(fontsize=8, loc="best")
    fit = curves.get("noise_ce_flipped_fit")
    if fit:
        twin = axes[1, 0].twinx()
        _band(twin, fit, "cross-entropy's fit of\nthe flipped labels (right axis)", 1.0, color="grey", linestyle="--")
        twin.set_ylabel("share of flipped labels fitted")
        twin.set_ylim(0, 1.5)  # the top third holds the legend, above every point of the panel
        twin.set_yticks([0.0, 0.25, 0.5, 0.75, 1.0])
        twin.grid(False)
        low, high = axes[1, 0].get_ylim()
        axes[1, 0].set_ylim(low, high + 0.5 * (high - low))
        handles = [h for a in (axes[1, 0], twin) for h in a.get_legend_handles_labels()[0]]
        labels = [t for a in (axes[1, 0], twin) for t in a.get_legend_handles_labels()[1]]
        axes[1, 0].legend(handles, labels, fontsize=8, loc="upper right")
    for ax in axes[1]:
        ax.set_xscale("log")
        ax.set_xlabel("training samples")
    fig.tight_layout()
    return fig


def _band(ax, points: list[dict[str, Any]], label: str, scale: float, **style: Any) -> None:
    if not points:
        return
    x = [p["n_train"] for p in points]
    mean = [scale * p["mean"] for p in points]
    (line,) = ax.plot(x, mean, marker="o", label=label, **style)
    low = [scale * p["low"] for p in points]
    high = [scale * p["high"] for p in points]
    ax.fill_between(x, low, high, alpha=0.2, color=line.get_color())


def _at(points: list[dict[str, Any]], n: int) -> dict[str, Any] | None:
    return next((p for p in points if p["n_train"] == n), None)


def _pp(p: Mapping[str, Any]) -> str:
    return f"{100 * p['mean']:+.2f} pp [{100 * p['low']:+.2f}, {100 * p['high']:+.2f}]"


def _sign(p: Mapping[str, Any]) -> str:
    """Where the 95% interval of a point lies: above 0, below 0, or across it."""
    return "above 0" if p["low"] > 0 else "below 0" if p["high"] < 0 else "across 0"


def _shape(points: list[Mapping[str, Any]]) -> str:
    """The whole curve in words: where its intervals lie at every size, and its largest value."""
    signs = [_sign(p) for p in points]
    if len(set(signs)) == 1:
        where = f"{signs[0]} at every size"
    else:
        sizes = {sign: [f"{p['n_train']:,}" for p, s in zip(points, signs, strict=True) if s == sign] for sign in signs}
        where = "; ".join(f"{sign} at {', '.join(ns)}" for sign, ns in sizes.items())
    top = max(points, key=lambda p: p["mean"])
    return f"{where}; largest at {top['n_train']:,}"


def sweep_findings(curves: Mapping[str, list[dict[str, Any]]]) -> str:
    """What the curves show, in Markdown bullets whose every number is read from ``curves``: per
    curve, its value at every size (with its 95% interval), where the intervals lie (above, below
    or across 0) and the size where it is largest."""
    if not isinstance(curves, Mapping):
        raise TypeError(f"`curves` must be the dict sweep_curves returns, got {type(curves).__name__}")
    lines = []
    for key, points in curves.items():
        if len(points) < 2:
            continue
        title, unit = CURVES[key]
        if unit == "pp":
            values = "; ".join(f"{p['n_train']:,}: {_pp(p)}" for p in points)
            lines.append(f"* **{title}**: {values}. Read as a curve: {_shape(points)}.")
        else:
            values = "; ".join(f"{p['n_train']:,}: {p['mean']:.2f}" for p in points)
            lines.append(f"* **{title}**: {values}.")
    return "\n".join(lines) or "_No curve has two sizes yet._"


def _committed_curves(preset: str) -> tuple[dict[str, list[dict[str, Any]]], int]:
    from .experiments import load_arm

    arm = load_arm("size_sweep", preset, "tuned")
    if not arm or not arm["rows"]:
        return {}, 0
    return sweep_curves(arm["rows"]), len({r["seed"] for r in arm["rows"]})


def plot_size_sweep(preset: str = "cpu"):
    """The committed sweep's figure (:func:`sweep_figure`), or None when none is committed."""
    curves, _ = _committed_curves(preset)
    return sweep_figure(curves) if curves else None


def size_sweep_tables(preset: str = "cpu"):
    """The committed sweep for a notebook cell: its table (:func:`sweep_table`) and findings
    (:func:`sweep_findings`) as Markdown; a one-line note when no sweep reference is committed."""
    from .display import Block

    curves, seeds = _committed_curves(preset)
    if not curves:
        return Block(None, f"_No training-set-size sweep is committed for preset {preset!r} yet._")
    head = f"*Committed reference `size_sweep_{preset}.json`, tuned arm, up to {seeds} seeds per size.*"
    return Block(None, "\n\n".join([head, sweep_table(curves), sweep_findings(curves)]))
