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
from ._checks import check_choice, check_scores, check_targets

METHODS = ("lac", "aps", "raps")


def _uniform(shape, generator, device):
    return torch.rand(shape, generator=generator).to(device)


def class_scores(
    probs: torch.Tensor,
    method: str = "lac",
    *,
    lam: float = 0.01,
    k_reg: int = 5,
    randomized: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Non-conformity :math:`E(x_i, j)` of every class j of every input, shape (n, C).

    APS/RAPS sort each row once: the mass above a class is the exclusive cumulative sum of the
    sorted probabilities (ties are broken by the sort order); one uniform draw per input."""
    probs = check_scores(probs, "probs")
    method = check_choice(method, "method", METHODS)
    if method == "lac":
        return 1.0 - probs
    sorted_probs, order = torch.sort(probs, dim=1, descending=True)
    n = probs.shape[0]
    u = _uniform((n, 1), generator, probs.device) if randomized else torch.ones((n, 1), device=probs.device)
    sorted_scores = torch.cumsum(sorted_probs, dim=1) - sorted_probs + u * sorted_probs
    if method == "raps":
        rank = torch.arange(1, probs.shape[1] + 1, device=probs.device)
        sorted_scores = sorted_scores + lam * (rank - k_reg).clamp(min=0)
    return torch.empty_like(sorted_scores).scatter_(1, order, sorted_scores)


def conformity_scores(
    probs: torch.Tensor,
    labels: torch.Tensor,
    method: str = "lac",
    **kwargs,
) -> torch.Tensor:
    r"""Non-conformity :math:`E(x_i, y_i)` of the given labels, shape (n,) (see :func:`class_scores`)."""
    probs = check_scores(probs, "probs")
    labels = check_targets(labels, probs.shape[0], probs.shape[1], "labels")
    return class_scores(probs, method, **kwargs).gather(1, labels[:, None]).squeeze(1)


def conformal_quantile(scores: torch.Tensor, alpha: float) -> float:
    r""":math:`\hat q`: the :math:`\lceil (n+1)(1-\alpha)\rceil`-th smallest score (``inf`` if that exceeds n)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"`alpha` must be in (0, 1), got {alpha}")
    n = scores.numel()
    rank = math.ceil((n + 1) * (1.0 - alpha))
    if rank > n:
        return math.inf
    return float(torch.kthvalue(scores.double().flatten().cpu(), rank).values)


def conformal_sets(probs: torch.Tensor, qhat: float, method: str = "lac", **kwargs) -> torch.Tensor:
    """Bool (n, C) sets :math:`\\{y : E(x, y) \\le \\hat q\\}` (options as in :func:`class_scores`)."""
    return class_scores(probs, method, **kwargs) <= qhat


def calibrate(probs: torch.Tensor, labels: torch.Tensor, alpha: float, method: str = "lac", **kwargs) -> float:
    """:math:`\\hat q` from calibration probabilities and labels."""
    return conformal_quantile(conformity_scores(probs, labels, method, **kwargs), alpha)


def alpha_for_mean_size(
    probs: torch.Tensor,
    labels: torch.Tensor,
    target_size: float,
    method: str = "lac",
    iterations: int = 40,
    **kwargs,
) -> float:
    """The miscoverage level whose conformal sets have mean size ``target_size`` on these data
    (bisection; conformal sets shrink as alpha grows). Used to compare at matched average size."""
    lo, hi = 1e-4, 1 - 1e-4
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        seed = torch.Generator().manual_seed(0)
        qhat = calibrate(probs, labels, mid, method, generator=seed, **kwargs)
        size = float(
            conformal_sets(probs, qhat, method, generator=torch.Generator().manual_seed(1), **kwargs)
            .sum(1)
            .double()
            .mean()
        )
        lo, hi = (mid, hi) if size > target_size else (lo, mid)
    return 0.5 * (lo + hi)


def average_k_for_coverage(probs: torch.Tensor, labels: torch.Tensor, coverage: float, iterations: int = 40) -> float:
    """The average set size K whose average-K sets reach ``coverage`` on these data (bisection on K)."""
    lo, hi = 1e-3, float(probs.shape[1])
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        acc = M.average_k_accuracy(probs, labels, M.average_k_threshold(probs, mid))
        lo, hi = (mid, hi) if acc < coverage else (lo, mid)
    return hi


def class_conditional_coverage(sets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Coverage of each class present in ``labels`` (NaN for absent classes)."""
    hits = sets[torch.arange(len(labels)), labels]
    return M.per_class_accuracy(hits, labels, sets.shape[1])["accuracy"]
