r"""Top-K and average-K metrics (tensors in; Python floats or tensors out).

Conventions:

* ``scores`` are ``(n, C)`` (probabilities or any scores ordered like them), ``targets`` ``(n,)``.
* ``average="micro"`` is the mean over samples; ``average="macro"`` the mean over the classes
  **present in ``targets``** of the per-class accuracy (Pl@ntNet semantics: a class absent from
  the evaluated split does not count).
* **Top-K ties**: the true class counts as in the top K when fewer than K classes score
  strictly higher than it (the optimistic rank). With tie-free scores this is the usual top-K.
* **Average-K calibration** (:func:`average_k_threshold`): one global threshold for the whole
  dataset, so set sizes adapt to each input while averaging K (Lorieul et al. 2021; P2).
* **Metric names** (:func:`metric_key`, read back by :func:`parse_metric_key`): ``top{K}_{micro,macro}``
  for integer K, ``avg{K}_{micro,macro,size,threshold}``; K written by :func:`k_label`. Results,
  configurations (``select_metric``) and tables spell metrics only through these.
* At test time ``top1_mode_share`` is the share of inputs whose top-1 class is the most frequent
  top-1 class (1/C for a balanced, healthy classifier; near 1 when the model predicts one class
  for all): :func:`degeneracy_warnings` flags it, and average-K sets that hold every class.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

import torch

from ._checks import (
    AVERAGES,
    Average,
    check_choice,
    check_count,
    check_hits,
    check_k,
    check_positive,
    check_scores,
    check_sets,
    check_targets,
    check_threshold,
)

__all__ = [
    "k_label",
    "metric_key",
    "parse_metric_key",
    "topk_accuracy",
    "topk_correct",
    "aggregate_hits",
    "topk_sets",
    "average_k_threshold",
    "average_k_sets",
    "average_k_accuracy",
    "metric_dict",
    "calibrated_test_metrics",
    "top1_mode_share",
    "degenerate_sets",
    "degeneracy_warnings",
    "set_sizes",
    "set_size_stats",
    "per_class_accuracy",
]

MetricKind = Literal["top", "avg"]
MetricStat = Literal["micro", "macro", "size", "threshold"]
_STATS = {"top": AVERAGES, "avg": (*AVERAGES, "size", "threshold")}
_METRIC_KEY = re.compile(r"^(top|avg)([0-9]+(?:\.[0-9]+)?)_([a-z]+)$")


def _real(value: object, name: str) -> float:
    """A finite real number (Python or NumPy scalar, or a one-element real tensor)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex:
        value = value.item()
    if isinstance(value, bool) or not hasattr(value, "__float__"):
        raise TypeError(f"`{name}` must be a real number, got {value!r}")
    out = float(value)  # type: ignore[arg-type]
    if not math.isfinite(out):
        raise ValueError(f"`{name}` must be finite, got {out}")
    return out


def k_label(k: float) -> str:
    """``2.0 -> "2"``, ``1.5 -> "1.5"``: K as written in metric names."""
    k = _real(k, "k")
    return str(int(k)) if k.is_integer() else f"{k:g}"


def metric_key(kind: MetricKind, k: float, average: MetricStat = "micro") -> str:
    """Name of a metric in results: ``top5_micro``, ``avg1.5_macro``, ``avg2_size``, ``avg2_threshold``.

    ``kind="top"`` (top-K accuracy) needs an integer K and ``average`` in micro/macro;
    ``kind="avg"`` (average-K) also names the mean set size and the calibrated threshold."""
    check_choice(kind, "kind", ("top", "avg"))
    check_choice(average, "average", _STATS[kind])
    if kind == "top" and not _real(k, "k").is_integer():
        raise ValueError(f"`k` of a top-K metric must be an integer, got {k!r}")
    if _real(k, "k") <= 0:
        raise ValueError(f"`k` must be > 0, got {k!r}")
    return _key(kind, k, average)


def _key(kind: str, k: float, stat: str) -> str:
    """:func:`metric_key` of validated arguments: the one place a metric name is spelled."""
    return f"{kind}{k_label(k)}_{stat}"


def parse_metric_key(name: str) -> tuple[MetricKind, float, MetricStat]:
    """The inverse of :func:`metric_key`: ``"avg1.5_macro" -> ("avg", 1.5, "macro")``.

    ``ValueError`` naming ``name`` when it is not a metric name, or when it is one written
    another way (``top05_micro``: the message gives the spelling :func:`metric_key` writes)."""
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a metric name (a string like top5_micro), got {type(name).__name__}")
    match = _METRIC_KEY.match(name)
    if match is None or match.group(3) not in _STATS[match.group(1)]:
        raise ValueError(f"`name` must be a metric name like top5_micro, avg1.5_macro or avg2_size, got {name!r}")
    kind, k, average = match.group(1), float(match.group(2)), match.group(3)
    if k <= 0 or (kind == "top" and not k.is_integer()):
        raise ValueError(f"`name` {name!r} names no metric: K must be > 0 (and an integer for top-K)")
    canonical = metric_key(kind, k, average)  # type: ignore[arg-type]
    if canonical != name:
        raise ValueError(f"`name` {name!r} is not a metric name: write it {canonical}")
    return kind, k, average  # type: ignore[return-value]


def aggregate_hits(correct: torch.Tensor, targets: torch.Tensor, n_classes: int, average: Average = "micro") -> float:
    r"""Micro (mean over samples) or macro (mean over the classes present in ``targets``) of a
    bool per-sample hit vector: lets a caller score several averages from one pass over the scores.

    .. math:: \text{micro} = \frac1n \sum_i h_i, \qquad
              \text{macro} = \frac{1}{|\mathcal C|}\sum_{c\in\mathcal C}\frac{\sum_{i: y_i = c} h_i}{\#\{i: y_i = c\}}

    Args:
        correct: bool ``(n,)`` hits, n >= 1. targets: ``(n,)`` class indices in ``[0, n_classes)``.
        n_classes: C >= 1. average: ``"micro"`` or ``"macro"``.
    """
    correct = check_hits(correct)
    n_classes = check_count(n_classes, "n_classes")
    targets = check_targets(targets, correct.shape[0], n_classes)
    average = check_choice(average, "average", AVERAGES)
    return _aggregate_hits(correct, targets, n_classes, average)


def _aggregate_hits(correct: torch.Tensor, targets: torch.Tensor, n_classes: int, average: Average) -> float:
    """:func:`aggregate_hits` on validated arguments."""
    if average == "micro":
        return float(correct.double().mean())
    per_class, counts = _per_class(correct, targets, n_classes)
    return float(per_class[counts > 0].mean())


def _per_class(correct: torch.Tensor, targets: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    counts = torch.bincount(targets, minlength=n_classes).double()
    hits = torch.bincount(targets, weights=correct.double(), minlength=n_classes)
    per_class = torch.where(counts > 0, hits / counts.clamp_min(1), torch.full_like(hits, float("nan")))
    return per_class, counts


def topk_correct(scores: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    r"""Bool ``(n,)``: :math:`\#\{j : s_j > s_y\} < K` (is the true class in the top K)."""
    scores = check_scores(scores)
    targets = check_targets(targets, scores.shape[0], scores.shape[1])
    k = int(check_k(k, n_classes=scores.shape[1]))
    return (scores > scores.gather(1, targets[:, None])).sum(dim=1) < k


def topk_accuracy(scores: torch.Tensor, targets: torch.Tensor, k: int, average: Average = "micro") -> float:
    r"""Top-K accuracy :math:`\frac1n\sum_i \mathbb 1[y_i \in \mathrm{top}_K(s_i)]` (micro) or its
    mean over present classes (macro).

    Example:
        >>> s = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]); y = torch.tensor([2, 1])
        >>> topk_accuracy(s, y, 1), topk_accuracy(s, y, 2)
        (0.0, 0.5)
    """
    average = check_choice(average, "average", AVERAGES)
    correct = topk_correct(scores, targets, k)
    return _aggregate_hits(correct, targets.long(), scores.shape[1], average)


def topk_sets(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool ``(n, C)``: the K highest-scoring classes of each row (ties broken by :func:`torch.topk`)."""
    scores = check_scores(scores)
    k = int(check_k(k, n_classes=scores.shape[1]))
    sets = torch.zeros_like(scores, dtype=torch.bool)
    return sets.scatter_(1, torch.topk(scores, k, dim=1).indices, True)


#: up to this many entries a row, :func:`_kth_and_next_largest_rows` runs :func:`torch.topk` on all of them
_SELECT_DIRECT = 1 << 16
_SAMPLES: dict[tuple[int, int, str], torch.Tensor] = {}


def _sample_index(n: int, n_sample: int, device: torch.device) -> torch.Tensor:
    """A fixed pseudo-random subsample of ``range(n)`` (generator seeded by ``n``), cached."""
    key = (n, n_sample, str(device))
    index = _SAMPLES.get(key)
    if index is None:
        generator = torch.Generator().manual_seed(n)
        index = torch.randint(0, n, (n_sample,), generator=generator).sort().values.to(device)  # in memory order
        if len(_SAMPLES) > 64:
            _SAMPLES.clear()
        _SAMPLES[key] = index
    return index


def _kth_and_next_largest_rows(rows: torch.Tensor, ms: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    r"""For each row of ``rows`` (R, n) and each m of ``ms`` (1 <= m < n): the row's m-th and
    (m+1)-th largest entries, as two ``(R,)`` tensors, exactly the values :func:`torch.topk`
    ranks there.

    Up to :data:`_SELECT_DIRECT` entries a row, :func:`torch.topk` of m + 1. Beyond, a fixed
    random subsample of each row gives a lower bound :math:`L` placed well below rank m + 1 of
    the largest m (a wide safety margin on the sample's order statistic); the entries
    :math:`\ge L` (a small fraction, extracted once for every m) then hold the row's m + 1
    largest whenever there are more than m of them, which is verified by their exact count, and
    :func:`torch.topk` finishes on them. A row whose bound missed (with probability far below
    1e-9, or on adversarial ties), or that holds a NaN or infinity, falls back to
    :func:`torch.topk` on everything: the result is exact either way."""
    n_rows, n = rows.shape
    n_sample = 1 << 11 if n <= 1 << 21 else 1 << 16

    def lo_rank(m: int) -> int:
        q = m / n
        return int(math.ceil(q * n_sample + 8.0 * math.sqrt(n_sample * q * (1 - q)) + 16))

    prunable = [] if n <= _SELECT_DIRECT else [m for m in dict.fromkeys(ms) if lo_rank(m) < n_sample]
    out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for m in dict.fromkeys(ms):
        if m not in prunable:  # small rows, or wanted ranks that reach the bottom of the data
            values = torch.topk(rows, m + 1, dim=1, sorted=True).values
            out[m] = (values[:, m - 1], values[:, m])
    if prunable:
        widest = max(prunable)
        rank = lo_rank(widest)
        sample = rows[:, _sample_index(n, n_sample, rows.device)]
        bounds = torch.topk(sample, rank + 1, dim=1, sorted=True).values[:, rank]
        finite = torch.isfinite(rows.sum(dim=1)).tolist()
        kth: dict[int, list[torch.Tensor]] = {m: [] for m in prunable}
        nxt: dict[int, list[torch.Tensor]] = {m: [] for m in prunable}
        for i in range(n_rows):
            row = rows[i]
            candidates = row[row >= bounds[i]] if finite[i] else row[:0]
            for m in prunable:
                if candidates.numel() <= widest:  # the bound missed (or non-finite scores): every entry
                    values = torch.topk(row, m + 1, sorted=True).values
                    kth[m].append(values[m - 1])
                    nxt[m].append(values[m])
                    continue
                top = torch.topk(candidates, m + 1, sorted=False).values
                last_two = torch.topk(top, 2, largest=False, sorted=True).values
                kth[m].append(last_two[1])
                nxt[m].append(last_two[0])
        for m in prunable:
            out[m] = (torch.stack(kth[m]), torch.stack(nxt[m]))
    return [out[m] for m in ms]


def average_k_threshold(scores: torch.Tensor, k: float) -> torch.Tensor:
    r"""Global threshold :math:`\lambda` so that :math:`\{(i, j): s_{ij} \ge \lambda\}` holds
    :math:`m = \mathrm{round}(nK)` entries (the Pl@ntNet calibration rule).

    :math:`\lambda` is the midpoint of the m-th and (m+1)-th largest of the n x C pooled
    scores. On tie-free scores exactly m entries are selected, so the average set size on the
    calibration data is :math:`m/n \approx K`. Ties: when the m-th and (m+1)-th largest are
    equal, :math:`\lambda` equals them and every tied entry is selected (more than m). When the
    two are adjacent floating-point numbers, :math:`\lambda` is the larger of them (still m
    entries). ``m = nC`` selects everything; ``m = 0`` gives :math:`+\infty` (empty sets).

    Calibrate on validation scores and reuse the threshold on test scores. Never sorts the
    whole array (fast far beyond :math:`2^{24}` entries, where ``torch.quantile`` fails) and
    stays on the scores' device.

    Args:
        scores: ``(n, C)``. k: average set size, ``0 < K <= C``, may be fractional.

    Returns:
        0-dim tensor, dtype and device of ``scores``.

    Example:
        >>> s = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
        >>> average_k_threshold(s, 1.5)   # 3 of 6 entries: midpoint of 0.35 and 0.25
        tensor(0.3000)
    """
    scores = check_scores(scores)
    n_classes = scores.shape[1]
    return _threshold(scores, float(check_k(k, n_classes=n_classes, integer=False)))


def _threshold(scores: torch.Tensor, k: float) -> torch.Tensor:
    """:func:`average_k_threshold` on validated arguments: the one-member case of :func:`_thresholds`."""
    return _thresholds(scores[None], [k])[k][0]


def _thresholds(scores: torch.Tensor, ks: list[float]) -> dict[float, torch.Tensor]:
    """:func:`average_k_threshold` of every member of a stack of scores ``(R, n, C)`` at once, for
    every K of ``ks``: ``{K: (R,)}``; element ``i`` is the threshold of ``scores[i]`` alone."""
    n_rows = scores.shape[0]
    flat = scores.detach().reshape(n_rows, -1)
    ms = {k: int(math.floor(scores.shape[1] * k + 0.5)) for k in ks}
    inner = [k for k in ks if 0 < ms[k] < flat.shape[1]]
    selected = dict(zip(inner, _kth_and_next_largest_rows(flat, [ms[k] for k in inner]), strict=True))
    out = {}
    for k in ks:
        if ms[k] <= 0:
            out[k] = torch.full((n_rows,), float("inf"), dtype=scores.dtype, device=scores.device)
        elif ms[k] >= flat.shape[1]:
            out[k] = flat.min(dim=1).values
        else:
            kth, nxt = selected[k]
            mid = nxt + (kth - nxt) / 2
            out[k] = torch.where((mid > nxt) & (mid <= kth), mid, kth)
    return out


def _row_counts(mask: torch.Tensor) -> torch.Tensor:
    """``mask.sum(dim=2)`` of a bool ``(R, n, C)``, member by member (the 2-D bool reduction is
    several times faster than the 3-D one, which converts the whole mask first)."""
    return torch.stack([part.sum(dim=1) for part in mask])


def average_k_sets(scores: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    r"""Bool ``(n, C)`` prediction sets :math:`\{j : s_{ij} \ge \lambda\}` (may be empty)."""
    scores = check_scores(scores)
    return scores >= check_threshold(threshold, scores)


def average_k_accuracy(
    scores: torch.Tensor, targets: torch.Tensor, threshold: float | torch.Tensor, average: Average = "micro"
) -> float:
    r"""Average-K accuracy :math:`\frac1n\sum_i \mathbb 1[s_{i y_i} \ge \lambda]` (micro) or its
    mean over present classes (macro)."""
    scores = check_scores(scores)
    targets = check_targets(targets, scores.shape[0], scores.shape[1])
    average = check_choice(average, "average", AVERAGES)
    correct = scores.gather(1, targets[:, None]).squeeze(1) >= check_threshold(threshold, scores)
    return _aggregate_hits(correct, targets, scores.shape[1], average)


def set_sizes(sets: torch.Tensor) -> torch.Tensor:
    """Size of each prediction set, ``(n,)`` long, from a bool ``(n, C)`` matrix."""
    return check_sets(sets).sum(dim=1)


def set_size_stats(sets: torch.Tensor) -> dict[str, object]:
    """Mean, std, min, max, median of the set sizes, the share of empty sets, and the histogram
    (``histogram[s]`` = number of sets of size s, s = 0..C)."""
    sizes = set_sizes(sets)
    n_classes = sets.shape[1]
    if sizes.numel() == 0:
        raise ValueError("`sets` is empty")
    sizes_f = sizes.double()
    return {
        "mean": float(sizes_f.mean()),
        "std": float(sizes_f.std(unbiased=False)),
        "min": int(sizes.min()),
        "max": int(sizes.max()),
        "median": float(sizes_f.median()),
        "empty_fraction": float((sizes == 0).double().mean()),
        "histogram": torch.bincount(sizes.cpu(), minlength=n_classes + 1),
    }


def per_class_accuracy(correct: torch.Tensor, targets: torch.Tensor, n_classes: int) -> dict[str, torch.Tensor]:
    """Per-class breakdown of a bool ``correct`` vector: ``accuracy`` (NaN for absent classes)
    and ``support`` (number of evaluated samples per class), both float64 of length C."""
    correct = check_hits(correct)
    n_classes = check_count(n_classes, "n_classes")
    targets = check_targets(targets, correct.shape[0], n_classes)
    accuracy, support = _per_class(correct, targets, n_classes)
    return {"accuracy": accuracy.cpu(), "support": support.cpu()}


def _check_ks(ks: object, n_classes: int, thresholds: object = None) -> list[float]:
    """A non-empty list (or tuple) of K values, each ``0 < K <= n_classes``, as floats; and
    ``thresholds``, when given, a dict with an entry for every K."""
    if isinstance(ks, (str, bytes)) or not isinstance(ks, (list, tuple)) or not ks:
        raise TypeError(f"`ks` must be a non-empty list of K values, got {ks!r}")
    checked = [check_k(k, "ks", n_classes=n_classes, integer=False) for k in ks]
    if thresholds is not None and (not isinstance(thresholds, dict) or any(k not in thresholds for k in ks)):
        raise ValueError(f"`thresholds` must map every K of ks ({list(ks)}) to a threshold")
    return checked


def metric_dict(
    scores: torch.Tensor,
    targets: torch.Tensor,
    ks,
    thresholds: dict[float, torch.Tensor] | None = None,
) -> tuple[dict[str, float], dict[float, torch.Tensor]]:
    """Every metric of an evaluation, the arguments validated once: for each K in ``ks``, top-K
    micro and macro (integer K <= C, :func:`topk_correct`) and average-K micro, macro, mean set
    size and threshold (the sets of :func:`average_k_sets`).

    ``thresholds`` (per K) calibrated elsewhere are reused (test time); otherwise each is
    calibrated on these scores (:func:`average_k_threshold`, validation). Returns the metrics
    and the thresholds used. Computed as a stack of one (:func:`stacked_metric_dicts`)."""
    scores = check_scores(scores)
    targets = check_targets(targets, scores.shape[0], scores.shape[1])
    _check_ks(ks, scores.shape[1], thresholds)
    given = None
    if thresholds is not None:  # each checked, then held exactly in float64 (cast to the scores' dtype to compare)
        for k in ks:
            check_threshold(thresholds[k], scores)
        given = {k: torch.tensor([float(thresholds[k])], dtype=torch.float64) for k in ks}
    (out,), used = _metric_dicts(scores[None], targets[None], ks, given)
    return out, ({k: t[0] for k, t in used.items()} if thresholds is None else {k: thresholds[k] for k in ks})


def stacked_metric_dicts(
    scores: torch.Tensor,
    targets: torch.Tensor,
    ks,
    thresholds: dict[float, torch.Tensor] | None = None,
) -> tuple[list[dict[str, float]], dict[float, torch.Tensor]]:
    """:func:`metric_dict` of every member of a stack at once (the stacked trainer's
    validation): ``scores`` ``(R, n, C)``, ``targets`` ``(R, n)``; ``thresholds`` per K an
    ``(R,)`` tensor (or ``None``: calibrated here). Returns the R metric dicts, each equal to
    ``metric_dict(scores[i], targets[i], ks, ...)[0]`` value for value, and the ``(R,)``
    thresholds used. The comparisons, counts and thresholds run over the whole stack; only the
    macro averages (a mean over each member's present classes) are taken member by member, with
    the operation :func:`metric_dict` uses, so that every value is the one it gives."""
    if not isinstance(scores, torch.Tensor) or scores.dim() != 3:
        raise ValueError(f"`scores` must be a (members, n, classes) tensor, got {getattr(scores, 'shape', scores)!r}")
    n_rows, n, n_classes = scores.shape
    check_scores(scores.reshape(n_rows * n, n_classes))
    targets = check_targets(targets.reshape(-1), n_rows * n, n_classes).view(n_rows, n)
    _check_ks(ks, n_classes, thresholds)
    for k in ks if thresholds is not None else ():
        t = thresholds[k]
        if not isinstance(t, torch.Tensor) or t.shape != (n_rows,) or bool(torch.isnan(t).any()):
            raise ValueError(f"`thresholds[{k}]` must be a ({n_rows},) tensor without NaN")
    return _metric_dicts(scores, targets, ks, thresholds)


def _metric_dicts(
    scores: torch.Tensor, targets: torch.Tensor, ks, thresholds: dict[float, torch.Tensor] | None
) -> tuple[list[dict[str, float]], dict[float, torch.Tensor]]:
    """:func:`stacked_metric_dicts` on validated arguments."""
    n_rows, n, n_classes = scores.shape
    out: list[dict[str, float]] = [{} for _ in range(n_rows)]
    used: dict[float, torch.Tensor] = {}
    offsets = (torch.arange(n_rows, device=targets.device) * n_classes)[:, None]
    cells = (targets + offsets).reshape(-1)
    counts = torch.bincount(cells, minlength=n_rows * n_classes).double().view(n_rows, n_classes)
    present = counts > 0

    def aggregate(hits: torch.Tensor, kind: str, k: float) -> None:
        micro = hits.double().mean(dim=1).tolist()
        per_hits = torch.bincount(cells, weights=hits.reshape(-1).double(), minlength=n_rows * n_classes)
        per_hits = per_hits.view(n_rows, n_classes)
        per_class = torch.where(present, per_hits / counts.clamp_min(1), torch.full_like(per_hits, float("nan")))
        for i in range(n_rows):
            out[i][_key(kind, k, "micro")] = micro[i]
            out[i][_key(kind, k, "macro")] = float(per_class[i][present[i]].mean())

    true_scores = scores.gather(2, targets[:, :, None])
    if any(float(k).is_integer() and k <= n_classes for k in ks):
        above = _row_counts(scores > true_scores)  # classes scored above the true one, shared by every K
    if thresholds is None:
        calibrated = _thresholds(scores, [float(k) for k in ks])
    for k in ks:
        if float(k).is_integer() and k <= n_classes:
            aggregate(above < int(k), "top", k)
        used[k] = calibrated[float(k)] if thresholds is None else thresholds[k]
        cut = used[k].to(device=scores.device, dtype=scores.dtype).view(n_rows, 1, 1)
        aggregate((true_scores >= cut).squeeze(2), "avg", k)  # the sets' entry at the target
        sizes = _row_counts(scores >= cut).double().mean(dim=1).tolist()
        values = used[k].tolist()
        for i in range(n_rows):
            out[i][_key("avg", k, "size")] = sizes[i]
            out[i][_key("avg", k, "threshold")] = float(values[i])
    # metric_dict's key order: per K, top micro/macro, then avg micro/macro/size/threshold
    order = []
    for k in ks:
        if float(k).is_integer() and k <= n_classes:
            order += [_key("top", k, a) for a in AVERAGES]
        order += [_key("avg", k, a) for a in (*AVERAGES, "size", "threshold")]
    return [{key: d[key] for key in order} for d in out], used


def stacked_calibrated_test_metrics(
    val_scores: torch.Tensor, val_targets: torch.Tensor, test_scores: torch.Tensor, test_targets: torch.Tensor, ks
) -> list[dict[str, float]]:
    """:func:`calibrated_test_metrics` of every member of a stack at once (scores ``(R, n, C)``,
    targets ``(R, n)``): element ``i`` equals ``calibrated_test_metrics(val_scores[i], ...)``."""
    if val_scores.dim() != 3 or test_scores.dim() != 3 or val_scores.shape[2] != test_scores.shape[2]:
        raise ValueError("`val_scores` and `test_scores` must be (members, n, classes) with the same classes")
    _, thresholds = stacked_metric_dicts(val_scores, val_targets, ks)
    metrics, _ = stacked_metric_dicts(test_scores, test_targets, ks, thresholds)
    n_rows, n, n_classes = test_scores.shape
    top1 = test_scores.argmax(dim=2) + (torch.arange(n_rows, device=test_scores.device) * n_classes)[:, None]
    modes = torch.bincount(top1.reshape(-1), minlength=n_rows * n_classes).view(n_rows, n_classes).max(dim=1)
    for i, count in enumerate(modes.values.tolist()):
        metrics[i]["top1_mode_share"] = float(count) / max(n, 1)
    return metrics


def top1_mode_share(scores: torch.Tensor) -> float:
    """Share of inputs whose top-1 class is the most frequent top-1 class (collapse diagnostic)."""
    scores = check_scores(scores)
    top1 = scores.argmax(dim=1)
    return float(torch.bincount(top1, minlength=scores.shape[1]).max()) / max(len(top1), 1)


def calibrated_test_metrics(
    val_scores: torch.Tensor, val_targets: torch.Tensor, test_scores: torch.Tensor, test_targets: torch.Tensor, ks
) -> dict[str, float]:
    """Test metrics with average-K thresholds calibrated on validation, plus ``top1_mode_share``."""
    val_scores, test_scores = check_scores(val_scores, "val_scores"), check_scores(test_scores, "test_scores")
    val_targets = check_targets(val_targets, val_scores.shape[0], val_scores.shape[1], "val_targets")
    test_targets = check_targets(test_targets, test_scores.shape[0], test_scores.shape[1], "test_targets")
    if val_scores.shape[1] != test_scores.shape[1]:
        raise ValueError(f"`test_scores` must have the {val_scores.shape[1]} classes of val_scores")
    _, thresholds = metric_dict(val_scores, val_targets, ks)
    metrics, _ = metric_dict(test_scores, test_targets, ks, thresholds)
    metrics["top1_mode_share"] = top1_mode_share(test_scores)
    return metrics


def degenerate_sets(metrics: dict[str, Any], k: float, factor: float = 1.5) -> bool:
    """Whether the average-K sets of the run's K are degenerate: mean size above ``factor`` K.

    Scores tied at the threshold (saturated sigmoids, underflowed probabilities) put every tied
    class in every set, and a tie also counts as a top-K hit (optimistic rank), so such an epoch
    can score a perfect accuracy. The trainer never selects it as the best epoch, and tuning never
    chooses it."""
    if not isinstance(metrics, dict):
        raise TypeError(f"`metrics` must be a dict of metric names to values, got {type(metrics).__name__}")
    k = check_k(k, n_classes=None, integer=False)
    factor = check_positive(factor, "factor")
    size = metrics.get(_key("avg", k, "size"))
    return size is not None and size > factor * k


# a run is flagged when one class is the top-1 prediction of more than this share of test inputs
MODE_SHARE_LIMIT = 0.5


def degeneracy_warnings(metrics: dict[str, Any], n_classes: int, ks, label: str) -> list[str]:
    """Warnings for a degenerate evaluation: one class is the top-1 prediction of more than
    :data:`MODE_SHARE_LIMIT` of the inputs, or the average-K sets hold every class for every
    input (mean size C). ``metrics``: a :func:`calibrated_test_metrics` dict; ``label`` names
    the evaluation in the messages."""
    if not isinstance(metrics, dict):
        raise TypeError(f"`metrics` must be a dict of metric names to values, got {type(metrics).__name__}")
    n_classes = check_count(n_classes, "n_classes")
    ks = _check_ks(ks, n_classes)
    if not isinstance(label, str):
        raise TypeError(f"`label` must be a string, got {type(label).__name__}")
    warnings = []
    share = metrics.get("top1_mode_share")
    if share is not None and share > MODE_SHARE_LIMIT:
        warnings.append(
            f"{label}: one class is the top-1 prediction of {share:.0%} of the test inputs (> "
            f"{MODE_SHARE_LIMIT:.0%}): the model may have collapsed"
        )
    for k in ks:
        size = metrics.get(_key("avg", k, "size"))
        if size is not None and size >= n_classes:
            warnings.append(f"{label}: every average-{k_label(k)} set contains all {n_classes} classes")
    return warnings
