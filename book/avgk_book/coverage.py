r"""Checking coverage the way *A Gentle Introduction to Conformal Prediction* does (chapter 9).

**Coverage over random splits.** Split conformal prediction with :math:`n` calibration points
and level :math:`\alpha` guarantees :math:`\mathbb P(Y \in \Gamma(X)) \ge 1 - \alpha` on average
over the calibration draw. For one calibration draw, the coverage of the test distribution is
itself random; with exchangeable, tie-free scores it follows

.. math:: C \sim \mathrm{Beta}(n + 1 - l,\ l), \qquad l = \lfloor (n + 1)\alpha \rfloor,

(Vovk 2012; Angelopoulos and Bates 2023, sec. 3.2). Measured on :math:`m` test points, the
empirical coverage is a binomial mixture over this law: its variance is
:math:`\mathrm{Var}(C) + \mathbb E[C(1 - C)]/m`.

:func:`conformal_split_trials` and :func:`average_k_split_trials` re-draw the calibration/test
split many times from a pool of scored points and record each split's test coverage and mean
set size, for conformal sets and for average-K sets (which carry no coverage guarantee: their
coverage moves with the data while their size stays near K). :func:`coverage_by_set_size`
stratifies one split's coverage by set size.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from avgk_lib import metrics as M
from avgk_lib._checks import (
    check_count,
    check_generator,
    check_k,
    check_scores,
    check_sets,
    check_targets,
    check_unit_interval,
)


def _check_pool(scores: object, targets: object, n_calibration: object, n_splits: object):
    scores = check_scores(scores, "scores")
    targets = check_targets(targets, scores.shape[0], scores.shape[1])
    n_calibration = check_count(n_calibration, "n_calibration")
    if n_calibration >= scores.shape[0]:
        raise ValueError(f"`n_calibration` must leave test points: got {n_calibration} of a pool of {scores.shape[0]}")
    return scores, targets, n_calibration, check_count(n_splits, "n_splits")


def _splits(n: int, n_calibration: int, n_splits: int, generator: torch.Generator | None):
    """``n_splits`` random permutations of the pool, cut into calibration and test indices."""
    for _ in range(n_splits):
        order = torch.randperm(n, generator=generator)
        yield order[:n_calibration], order[n_calibration:]


def conformal_split_trials(
    class_scores: torch.Tensor,
    targets: torch.Tensor,
    n_calibration: int,
    alpha: float,
    n_splits: int = 500,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    r"""Test coverage and mean set size of split conformal sets over ``n_splits`` random splits.

    For each split of the pool into ``n_calibration`` calibration points and the rest as test
    points: :math:`\hat q` is the :math:`\lceil (n+1)(1-\alpha)\rceil`-th smallest of the
    calibration points' true-class scores (``inf`` when that rank exceeds :math:`n`), the test
    sets are :math:`\{y : E(x, y) \le \hat q\}`.

    Args:
        class_scores: (N, C) non-conformity scores :math:`E(x_i, j)` of every class
            (:func:`avgk_lib.conformal.class_scores`; randomised scores are drawn once).
        targets: (N,) true classes.
        n_calibration: calibration points per split, ``1 <= n_calibration < N``.
        alpha: miscoverage level in (0, 1).
        n_splits: number of random splits, ``>= 1``.
        generator: for the permutations.

    Returns:
        ``{"coverage": (n_splits,), "size": (n_splits,), "qhat": (n_splits,)}`` (float64).
    """
    scores, targets, n_cal, n_splits = _check_pool(class_scores, targets, n_calibration, n_splits)
    alpha = check_unit_interval(alpha, "alpha")
    generator = check_generator(generator)
    true = scores.gather(1, targets[:, None]).squeeze(1).double().cpu()
    scores = scores.double().cpu()
    rank = math.ceil((n_cal + 1) * (1.0 - alpha))
    out = {name: torch.empty(n_splits, dtype=torch.float64) for name in ("coverage", "size", "qhat")}
    for i, (cal, test) in enumerate(_splits(len(true), n_cal, n_splits, generator)):
        qhat = math.inf if rank > n_cal else float(torch.kthvalue(true[cal], rank).values)
        out["qhat"][i] = qhat
        out["coverage"][i] = (true[test] <= qhat).double().mean()
        out["size"][i] = (scores[test] <= qhat).sum(1).double().mean()
    return out


def average_k_split_trials(
    probs: torch.Tensor,
    targets: torch.Tensor,
    n_calibration: int,
    k: float,
    n_splits: int = 500,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    r"""Test coverage and mean set size of average-K sets over ``n_splits`` random splits.

    For each split, :math:`\lambda` = :func:`avgk_lib.metrics.average_k_threshold` of the
    calibration scores at average size ``k``; the test sets are :math:`\{j : \hat p_j(x) \ge \lambda\}`.

    Args:
        probs: (N, C) scores thresholded by average-K (any scores: only their order matters).
        targets: (N,) true classes.
        n_calibration: calibration points per split, ``1 <= n_calibration < N``.
        k: average set size, ``0 < k <= C``.
        n_splits: number of random splits, ``>= 1``. generator: for the permutations.

    Returns:
        ``{"coverage": (n_splits,), "size": (n_splits,), "threshold": (n_splits,)}`` (float64).
    """
    scores, targets, n_cal, n_splits = _check_pool(probs, targets, n_calibration, n_splits)
    k = float(check_k(k, "k", n_classes=scores.shape[1], integer=False))
    generator = check_generator(generator)
    scores = scores.double().cpu()
    true = scores.gather(1, targets.cpu()[:, None]).squeeze(1)
    out = {name: torch.empty(n_splits, dtype=torch.float64) for name in ("coverage", "size", "threshold")}
    for i, (cal, test) in enumerate(_splits(len(true), n_cal, n_splits, generator)):
        lam = float(M.average_k_threshold(scores[cal], k))
        out["threshold"][i] = lam
        out["coverage"][i] = (true[test] >= lam).double().mean()
        out["size"][i] = (scores[test] >= lam).sum(1).double().mean()
    return out


def beta_coverage_law(n_calibration: int, alpha: float) -> tuple[int, int]:
    r"""Parameters :math:`(a, b) = (n + 1 - l,\ l)`, :math:`l = \lfloor (n+1)\alpha \rfloor`, of the
    Beta law of split-conformal coverage given one calibration draw of :math:`n` points.

    Its mean is :math:`1 - l/(n+1) \ge 1 - \alpha`. Raises ``ValueError`` when :math:`l = 0`
    (``n`` too small for level ``alpha``: :math:`\hat q = \infty` and the coverage is 1)."""
    n = check_count(n_calibration, "n_calibration")
    alpha = check_unit_interval(alpha, "alpha")
    l_value = math.floor((n + 1) * alpha)
    if l_value < 1:
        raise ValueError(
            f"`n_calibration` = {n} is too small for `alpha` = {alpha}: (n + 1) * alpha < 1, the sets hold every class"
        )
    return n + 1 - l_value, l_value


def beta_pdf(x: torch.Tensor, a: float, b: float) -> torch.Tensor:
    r"""Density :math:`x^{a-1}(1-x)^{b-1} / B(a, b)` of the Beta law at ``x`` (0 outside [0, 1]).

    Args:
        x: floating tensor of points. a, b: shape parameters, ``> 0``.
    """
    x = check_scores(x, "x", ndim=None).double()
    a = _check_shape(a, "a")
    b = _check_shape(b, "b")
    inside = (x >= 0) & (x <= 1)
    safe = x.clamp(0.0, 1.0)
    log_beta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    log_pdf = torch.xlogy(torch.tensor(a - 1.0, dtype=x.dtype), safe)
    log_pdf = log_pdf + torch.xlogy(torch.tensor(b - 1.0, dtype=x.dtype), 1.0 - safe) - log_beta
    return torch.where(inside, torch.exp(log_pdf), torch.zeros_like(x))


def _check_shape(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a real number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a finite number > 0, got {value}")
    return value


def empirical_coverage_moments(n_calibration: int, alpha: float, n_test: int) -> tuple[float, float]:
    r"""Mean and standard deviation of the coverage *measured on* ``n_test`` points, over random
    calibration draws: :math:`C \sim \mathrm{Beta}(a, b)` (:func:`beta_coverage_law`) and, given
    :math:`C`, the hits are Bernoulli(:math:`C`):

    .. math:: \mathbb E = \frac{a}{a+b}, \qquad
              \mathrm{Var} = \frac{ab}{(a+b)^2(a+b+1)} + \frac{ab}{(a+b)(a+b+1)\,m}.
    """
    a, b = beta_coverage_law(n_calibration, alpha)
    m = check_count(n_test, "n_test")
    total = a + b
    variance = a * b / (total**2 * (total + 1)) + a * b / (total * (total + 1) * m)
    return a / total, math.sqrt(variance)


def measured_coverage_pmf(n_calibration: int, alpha: float, n_test: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Law of the coverage *measured on* ``n_test`` = :math:`m` test points: given
    :math:`C \sim \mathrm{Beta}(a, b)` (:func:`beta_coverage_law`) the number of covered test points
    is Binomial(:math:`m, C`), so it is beta-binomial:

    .. math:: \mathbb P(\text{coverage} = j/m) = \binom{m}{j} \frac{B(j + a,\ m - j + b)}{B(a, b)}.

    Returns the values :math:`j/m` and their probabilities, each of length :math:`m + 1` (float64)."""
    a, b = beta_coverage_law(n_calibration, alpha)
    m = check_count(n_test, "n_test")
    j = torch.arange(m + 1, dtype=torch.float64)
    lg = torch.lgamma
    log_choose = lg(torch.tensor(m + 1.0)) - lg(j + 1) - lg(m - j + 1)
    log_beta_ratio = lg(j + a) + lg(m - j + b) - lg(torch.tensor(m + a + b, dtype=torch.float64))
    log_beta_ab = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    return j / m, torch.exp(log_choose + log_beta_ratio - log_beta_ab)


def coverage_by_set_size(
    sets: torch.Tensor, targets: torch.Tensor, edges: list[int] | None = None
) -> list[dict[str, Any]]:
    r"""Coverage of the test inputs grouped by the size of their set (size-stratified coverage).

    Args:
        sets: (n, C) bool prediction sets. targets: (n,) true classes.
        edges: increasing integer bin edges; bin i holds sizes in ``[edges[i], edges[i+1])``.
            Default: one bin per size that occurs.

    Returns:
        One dict per non-empty bin: ``sizes`` (e.g. ``"2"`` or ``"3-5"``), ``low``, ``high``
        (inclusive size range), ``count`` (inputs), ``share`` (of all inputs), ``coverage``.
    """
    sets = check_sets(sets)
    targets = check_targets(targets, sets.shape[0], sets.shape[1])
    if targets.numel() == 0:
        raise ValueError("`sets` is empty: no input to stratify")
    sizes = sets.sum(1).cpu()
    hits = sets[torch.arange(len(targets), device=sets.device), targets].cpu()
    if edges is None:
        values = sorted(set(sizes.tolist()))
        bins = [(v, v) for v in values]
    else:
        if not isinstance(edges, (list, tuple)) or len(edges) < 2:
            raise TypeError(f"`edges` must be a list of at least two integers, got {edges!r}")
        if any(isinstance(e, bool) or not isinstance(e, int) for e in edges):
            raise TypeError(f"`edges` must hold integers, got {edges!r}")
        if any(b <= a for a, b in zip(edges, edges[1:], strict=False)) or edges[0] < 0:
            raise ValueError(f"`edges` must be increasing and >= 0, got {edges!r}")
        bins = [(low, high - 1) for low, high in zip(edges, edges[1:], strict=False)]
    rows = []
    for low, high in bins:
        pick = (sizes >= low) & (sizes <= high)
        count = int(pick.sum())
        if count == 0:
            continue
        rows.append(
            {
                "sizes": str(low) if low == high else f"{low}-{high}",
                "low": int(low),
                "high": int(high),
                "count": count,
                "share": count / len(sizes),
                "coverage": float(hits[pick].double().mean()),
            }
        )
    return rows
