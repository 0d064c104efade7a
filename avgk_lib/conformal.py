r"""Split-conformal prediction sets (LAC, APS, RAPS), to compare with average-K sets.

Average-K fixes the *average size* of the sets; split conformal prediction fixes their
*coverage*: with a calibration set exchangeable with the test data,
:math:`P(y \in C(x)) \ge 1 - \alpha` (Vovk et al. 2005; Angelopoulos and Bates 2023). Each
method is a non-conformity score :math:`E(x, y)`, calibrated by the conformal quantile

.. math:: \hat q = E_{(\lceil (n+1)(1-\alpha)\rceil)}
          \quad\text{(the } \lceil (n+1)(1-\alpha)\rceil\text{-th smallest calibration score)},
          \qquad C(x) = \{y : E(x, y) \le \hat q\}.

* LAC (Sadinle et al. 2019): :math:`E = 1 - p_y`; thresholds the probabilities like average-K
  does, but picks the threshold for a coverage instead of a size.
* APS (Romano et al. 2020): :math:`E = \sum_{j: p_j > p_y} p_j + U p_y` (U uniform for the
  randomised version, 1 otherwise): the mass of the classes ranked above y.
* RAPS (Angelopoulos et al. 2021): APS plus :math:`\lambda\,(\mathrm{rank}(y) - k_{reg})_+`,
  which discourages large sets.
"""

from __future__ import annotations

import math

import torch

from . import metrics as M
from ._checks import (
    CONFORMAL_METHODS,
    ConformalMethod,
    check_bool,
    check_choice,
    check_generator,
    check_k,
    check_nonnegative,
    check_probabilities,
    check_real,
    check_scores,
    check_sets,
    check_targets,
    check_unit_interval,
)

METHODS = CONFORMAL_METHODS


def _check_probs(scores: object) -> torch.Tensor:
    """``scores``: (n, C) probabilities (rows in [0, 1] summing to 1), finite, non-empty."""
    return check_probabilities(check_scores(scores, "scores"), "scores")


def check_options(method: object, lam: object, k_reg: object, randomized: object, generator: object) -> dict:
    """The score options shared by every function here, validated; returned as keywords."""
    return {
        "method": check_choice(method, "method", METHODS),
        "lam": check_nonnegative(lam, "lam"),
        "k_reg": int(check_k(k_reg, "k_reg", minimum=0)),
        "randomized": check_bool(randomized, "randomized"),
        "generator": check_generator(generator),
    }


def class_scores(
    scores: torch.Tensor,
    method: ConformalMethod = "lac",
    *,
    lam: float = 0.01,
    k_reg: int = 5,
    randomized: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Non-conformity :math:`E(x_i, j)` of every class j of every input, shape (n, C).

    APS/RAPS sort each row once: the mass above a class is the exclusive cumulative sum of the
    sorted probabilities (ties are broken by the sort order); one uniform draw per input.

    Args:
        scores: (n, C) class probabilities (softmax outputs: rows in [0, 1] summing to 1).
        method: ``"lac"``, ``"aps"`` or ``"raps"``.
        lam: RAPS penalty :math:`\lambda \ge 0`. k_reg: RAPS rank from which the penalty
            applies, an integer ``>= 0``. randomized: APS/RAPS randomisation ``U``.
        generator: for the uniform draws.
    """
    scores = _check_probs(scores)
    return _class_scores(scores, **check_options(method, lam, k_reg, randomized, generator))


def _class_scores(
    probs: torch.Tensor,
    method: ConformalMethod,
    lam: float,
    k_reg: int,
    randomized: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """:func:`class_scores` on validated arguments."""
    if method == "lac":
        return 1.0 - probs
    sorted_probs, order = torch.sort(probs, dim=1, descending=True)
    n = probs.shape[0]
    u = (torch.rand((n, 1), generator=generator) if randomized else torch.ones((n, 1))).to(probs.device)
    sorted_scores = torch.cumsum(sorted_probs, dim=1) - sorted_probs + u * sorted_probs
    if method == "raps":
        rank = torch.arange(1, probs.shape[1] + 1, device=probs.device)
        sorted_scores = sorted_scores + lam * (rank - k_reg).clamp(min=0)
    return torch.empty_like(sorted_scores).scatter_(1, order, sorted_scores)


def conformity_scores(
    scores: torch.Tensor,
    targets: torch.Tensor,
    method: ConformalMethod = "lac",
    *,
    lam: float = 0.01,
    k_reg: int = 5,
    randomized: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Non-conformity :math:`E(x_i, y_i)` of the true classes, shape (n,) (see :func:`class_scores`)."""
    scores = _check_probs(scores)
    targets = check_targets(targets, scores.shape[0], scores.shape[1])
    options = check_options(method, lam, k_reg, randomized, generator)
    return _class_scores(scores, **options).gather(1, targets[:, None]).squeeze(1)


def conformal_quantile(scores: torch.Tensor, alpha: float) -> float:
    r""":math:`\hat q`: the :math:`\lceil (n+1)(1-\alpha)\rceil`-th smallest of the n conformity
    ``scores`` (any shape, flattened; ``inf`` if that rank exceeds n). ``0 < alpha < 1``."""
    alpha = check_unit_interval(alpha, "alpha")
    scores = check_scores(scores, "scores", ndim=None)
    return _conformal_quantile(scores, alpha)


def _conformal_quantile(scores: torch.Tensor, alpha: float) -> float:
    n = scores.numel()
    rank = math.ceil((n + 1) * (1.0 - alpha))
    if rank > n:
        return math.inf
    return float(torch.kthvalue(scores.detach().double().flatten().cpu(), rank).values)


def conformal_sets(
    scores: torch.Tensor,
    qhat: float,
    method: ConformalMethod = "lac",
    *,
    lam: float = 0.01,
    k_reg: int = 5,
    randomized: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Bool (n, C) sets :math:`\{y : E(x, y) \le \hat q\}` (options as in :func:`class_scores`;
    ``qhat`` a real number, ``+inf`` allowed)."""
    qhat = check_real(qhat, "qhat", allow_inf=True)
    return class_scores(scores, method, lam=lam, k_reg=k_reg, randomized=randomized, generator=generator) <= qhat


def calibrate(
    scores: torch.Tensor,
    targets: torch.Tensor,
    alpha: float,
    method: ConformalMethod = "lac",
    *,
    lam: float = 0.01,
    k_reg: int = 5,
    randomized: bool = True,
    generator: torch.Generator | None = None,
) -> float:
    r""":math:`\hat q` from calibration probabilities ``scores`` and their ``targets``."""
    alpha = check_unit_interval(alpha, "alpha")
    e = conformity_scores(scores, targets, method, lam=lam, k_reg=k_reg, randomized=randomized, generator=generator)
    return _conformal_quantile(e, alpha)


def class_conditional_coverage(sets: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Coverage of each class present in ``targets`` (NaN for absent classes), length C."""
    sets = check_sets(sets)
    targets = check_targets(targets, sets.shape[0], sets.shape[1])
    if targets.numel() == 0:
        raise ValueError("`targets` is empty: no sample to measure coverage on")
    hits = sets[torch.arange(len(targets), device=sets.device), targets]
    return M.per_class_accuracy(hits, targets, sets.shape[1])["accuracy"]
