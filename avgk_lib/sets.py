r"""Set predictors: calibrate on held-out ``scores``/``targets``, then predict a set per input.

Every predictor returns a bool ``(n, C)`` matrix (row i = the set of input i) and shares one
interface, so top-K, average-K and split-conformal sets are measured by the same two metrics:

* :class:`TopK` (``k``): the K highest-scoring classes of each input; nothing to calibrate.
* :class:`AverageK` (``k``): one global threshold :math:`\lambda` calibrated so that the sets
  hold K classes on average, :math:`C(x) = \{j : s_j(x) \ge \lambda\}`
  (:func:`~avgk_lib.metrics.average_k_threshold`).
* :class:`SplitConformal` (``score``, ``alpha``): the conformal quantile :math:`\hat q` of a
  non-conformity score (LAC, APS, RAPS), :math:`C(x) = \{y : E(x, y) \le \hat q\}`, with
  coverage :math:`P(y \in C(x)) \ge 1 - \alpha` (:mod:`avgk_lib.conformal`).

Example:
    >>> scores = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]]); targets = torch.tensor([0, 1])
    >>> sets = AverageK(1.5).calibrate(scores, targets).predict(scores)
    >>> sets
    tensor([[ True, False, False],
            [ True,  True, False]])
    >>> set_coverage(sets, targets), set_size(sets)
    (1.0, 1.5)
    >>> metric_key("avg", 1.5, "micro"), metric_key("top", 5.0, "macro")
    ('avg1.5_micro', 'top5_macro')

Vocabulary: ``scores`` are ``(n, C)`` per-class scores (probabilities for the conformal
scores), ``targets`` ``(n,)`` class indices, as everywhere in :mod:`avgk_lib`.
"""

from __future__ import annotations

from typing import Literal

import torch

from . import conformal as _conformal
from . import metrics as M
from ._checks import AVERAGES, check_choice, check_generator, check_scores, check_targets, check_tensor
from .metrics import _real, k_label, metric_key  # metric names live in metrics.py (re-exported here)

__all__ = [
    "AverageK",
    "NotCalibratedError",
    "SetPredictor",
    "SplitConformal",
    "TopK",
    "k_label",
    "metric_key",
    "set_coverage",
    "set_size",
]

ConformalScore = Literal["lac", "aps", "raps"]


class NotCalibratedError(ValueError):
    """``predict`` was called before ``calibrate``."""


def _int(value: object, name: str, minimum: int) -> int:
    """An integer >= minimum (integral floats and numpy integers accepted)."""
    number = _real(value, name)
    if not number.is_integer():
        raise TypeError(f"`{name}` must be an integer, got {value!r}")
    if number < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {int(number)}")
    return int(number)


def _check_sets(sets: object) -> torch.Tensor:
    sets = check_tensor(sets, "sets")
    if sets.dtype != torch.bool or sets.dim() != 2:
        raise TypeError(f"`sets` must be a 2-D bool tensor (n, C), got {sets.dtype} with shape {tuple(sets.shape)}")
    if sets.shape[0] == 0:
        raise ValueError("`sets` is empty (no inputs)")
    return sets


def set_coverage(sets: torch.Tensor, targets: torch.Tensor, average: Literal["micro", "macro"] = "micro") -> float:
    r"""Share of inputs whose set contains the target, :math:`\frac1n\sum_i \mathbb 1[y_i \in C(x_i)]`
    (micro), or the mean over the classes present in ``targets`` of the per-class coverage (macro)."""
    sets = _check_sets(sets)
    targets = check_targets(targets, sets.shape[0], sets.shape[1])
    check_choice(average, "average", AVERAGES)
    hits = sets.gather(1, targets[:, None].to(sets.device)).squeeze(1)
    return M.aggregate_hits(hits, targets.to(sets.device), sets.shape[1], average)


def set_size(
    sets: torch.Tensor, average: Literal["micro", "macro"] = "micro", *, targets: torch.Tensor | None = None
) -> float:
    r"""Mean set size :math:`\frac1n\sum_i |C(x_i)|` (micro), or the mean over the classes present
    in ``targets`` of the mean size of their inputs' sets (macro, needs ``targets``)."""
    sets = _check_sets(sets)
    check_choice(average, "average", AVERAGES)
    sizes = sets.sum(dim=1).double()
    if average == "micro":
        return float(sizes.mean())
    if targets is None:
        raise ValueError("`targets` is required for average='macro' (sizes are averaged per true class)")
    targets = check_targets(targets, sets.shape[0], sets.shape[1]).to(sets.device)
    counts = torch.bincount(targets, minlength=sets.shape[1]).double()
    totals = torch.bincount(targets, weights=sizes, minlength=sets.shape[1])
    present = counts > 0
    return float((totals[present] / counts[present]).mean())


class SetPredictor:
    """Base class: ``calibrate(scores, targets) -> self`` then ``predict(scores) -> bool (n, C)``."""

    def calibrate(self, scores: torch.Tensor, targets: torch.Tensor) -> SetPredictor:
        scores = check_scores(scores)
        check_targets(targets, scores.shape[0], scores.shape[1])
        return self

    def predict(self, scores: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_classes(self, scores: torch.Tensor, calibrated_on: int | None) -> None:
        """``ValueError`` naming `scores` when their class count differs from the calibration's
        (``calibrated_on`` is None when the threshold was set by hand: nothing to compare)."""
        if calibrated_on is not None and scores.shape[1] != calibrated_on:
            raise ValueError(
                f"`scores` has {scores.shape[1]} classes but {type(self).__name__} was calibrated on "
                f"{calibrated_on} classes; calibrate it on scores of the same classes"
            )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class TopK(SetPredictor):
    """The K highest-scoring classes of every input (``calibrate`` only validates its inputs).

    Ties are broken by :func:`torch.topk`, so on tied scores the set may differ from the
    optimistic rank used by :func:`~avgk_lib.metrics.topk_accuracy`."""

    def __init__(self, k: int) -> None:
        self.k = _int(k, "k", 1)

    def predict(self, scores: torch.Tensor) -> torch.Tensor:
        return M.topk_sets(scores, self.k)


class AverageK(SetPredictor):
    r"""Sets :math:`\{j : s_j \ge \lambda\}` with one global :math:`\lambda` calibrated so that the
    calibration sets hold K classes on average (``k`` may be fractional; ``threshold`` after
    :meth:`calibrate`). Empty sets are allowed."""

    def __init__(self, k: float) -> None:
        self.k = _real(k, "k")
        if self.k <= 0:
            raise ValueError(f"`k` must be > 0, got {self.k}")
        self.threshold: torch.Tensor | None = None
        self._n_classes: int | None = None

    def calibrate(self, scores: torch.Tensor, targets: torch.Tensor) -> AverageK:
        super().calibrate(scores, targets)
        self.threshold = M.average_k_threshold(scores, self.k)
        self._n_classes = scores.shape[1]
        return self

    def predict(self, scores: torch.Tensor) -> torch.Tensor:
        if self.threshold is None:
            raise NotCalibratedError("AverageK.predict called before calibrate(scores, targets)")
        scores = check_scores(scores)
        self._check_classes(scores, self._n_classes)
        return M.average_k_sets(scores, self.threshold)


class SplitConformal(SetPredictor):
    r"""Split-conformal sets of coverage :math:`\ge 1 - \alpha` for the non-conformity ``score``:
    ``"lac"`` (:math:`1 - p_y`), ``"aps"`` (mass ranked above y, plus :math:`U p_y` when
    ``randomized``) or ``"raps"`` (APS plus :math:`\lambda (\mathrm{rank}(y) - k_{reg})_+`,
    ``lam`` = :math:`\lambda`). ``scores`` must be probabilities (rows in [0, 1] summing to 1).
    ``generator`` draws the APS/RAPS uniforms (one stream for calibrate, then predict);
    ``qhat`` after :meth:`calibrate` (``inf`` when the calibration set is too small for alpha)."""

    def __init__(
        self,
        score: ConformalScore,
        alpha: float,
        *,
        k_reg: int = 5,
        lam: float = 0.01,
        randomized: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        self.score = check_choice(score, "score", _conformal.METHODS)
        self.alpha = _real(alpha, "alpha")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"`alpha` must be in (0, 1), got {self.alpha}")
        self.k_reg = _int(k_reg, "k_reg", 0)
        self.lam = _real(lam, "lam")
        if self.lam < 0:
            raise ValueError(f"`lam` must be >= 0, got {self.lam}")
        if not isinstance(randomized, bool):
            raise TypeError(f"`randomized` must be a bool, got {randomized!r}")
        self.randomized = randomized
        self._generator = check_generator(generator)
        self.qhat: float | None = None
        self._n_classes: int | None = None

    def _options(self) -> dict[str, object]:
        return {"lam": self.lam, "k_reg": self.k_reg, "randomized": self.randomized, "generator": self._generator}

    def _check_probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        scores = check_scores(scores)
        if bool((scores < 0).any()) or bool((scores > 1).any()):
            raise ValueError("`scores` must be probabilities in [0, 1] for conformal scores (apply a softmax first)")
        return scores

    def calibrate(self, scores: torch.Tensor, targets: torch.Tensor) -> SplitConformal:
        scores = self._check_probabilities(scores)
        targets = check_targets(targets, scores.shape[0], scores.shape[1])
        self.qhat = _conformal.calibrate(scores, targets, self.alpha, self.score, **self._options())
        self._n_classes = scores.shape[1]
        return self

    def predict(self, scores: torch.Tensor) -> torch.Tensor:
        if self.qhat is None:
            raise NotCalibratedError("SplitConformal.predict called before calibrate(scores, targets)")
        scores = self._check_probabilities(scores)
        self._check_classes(scores, self._n_classes)
        return _conformal.conformal_sets(scores, self.qhat, self.score, **self._options())
