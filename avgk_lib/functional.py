r"""Pure loss functions of both papers (functional core; :mod:`avgk_lib.losses` wraps them).

Conventions shared by every function here:

* ``scores`` / ``logits`` are ``(B, C)`` floating tensors, ``targets`` are ``(B,)`` integer class
  indices; any device. Half-precision inputs (float16, bfloat16) are computed in float32 and the
  loss is returned in float32, as :func:`torch.autocast` does for cross-entropy.
* ``reduction`` is ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-sample losses, shape (B,)).
* Bad input raises :class:`ValueError` / :class:`TypeError` naming the argument. No loss returns
  NaN or infinity silently: a hyperparameter that overflows the compute dtype, or a loss value
  beyond its range, raises a ``ValueError`` naming the hyperparameter (with the value checks on).

Stacked form (M models trained as one, e.g. seeds or grid points): every loss also takes
``scores`` of shape ``(M, B, C)`` with ``targets`` of shape ``(M, B)``. Member ``m`` gets exactly
what the call on ``scores[m], targets[m]`` gives (batch-level quantities, such as EPR's penalty
and the two-head pseudo-labels, are computed within each member's batch). ``reduction="mean"``
/ ``"sum"`` then reduce over B only and return one loss per member, shape ``(M,)``;
``"none"`` returns ``(M, B)``. Sum the ``(M,)`` result to train all members with one backward
pass (each member's gradient is then that of its own mean loss).

Per-row hyperparameters: every hyperparameter (``k``, ``epsilon``, ``scale``, ``max_margin``,
``gamma``, ``tau``, ``alpha``, ``label_smoothing``, ``negative_weight``, ``expected_positives``,
``weight``) is a Python number as before, or a tensor of shape ``()``, ``(L,)`` with ``L =
scores.shape[0]`` (per row of ``(B, C)`` scores, per member of ``(M, B, C)`` scores) or
``scores.shape[:-1]`` (per row). ``class_counts`` is ``(C,)`` or ``(L, C)``. Bounds are those of
the scalar form, checked on the tensor's extreme values. Noise for the stacked noised losses has
shape ``(n_samples, M, B, C)``: draw each member's slice from its own generator and stack them.
Batch-level ranks (``k`` of :func:`pseudo_labels` / :func:`two_head_loss`) are per member.

References:
    [P1] C. Garcin, M. Servajean, A. Joly, J. Salmon. Stochastic smoothing of the top-K
         calibrated hinge loss for deep imbalanced classification. ICML 2022.
    [P2] C. Garcin, M. Servajean, A. Joly, J. Salmon. A two-head loss function for deep
         Average-K classification. WACV 2025 (arXiv:2303.18118).
    [Berrada18] L. Berrada, A. Zisserman, M. P. Kumar. Smooth loss functions for deep top-k
         classification. ICLR 2018.
    [Lin17] T.-Y. Lin et al. Focal loss for dense object detection. ICCV 2017.
    [Cao19] K. Cao et al. Learning imbalanced datasets with label-distribution-aware margin loss.
         NeurIPS 2019.
    [Cole21] E. Cole et al. Multi-label learning from single positive labels. CVPR 2021.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._checks import (
    CLASS_REDUCTIONS,
    REDUCTIONS,
    RULES,
    ClassReduction,
    PseudoLabelRule,
    Reduction,
    all_finite,
    check_bool,
    check_choice,
    check_count,
    check_counts_vector,
    check_hyper,
    check_k,
    check_nonnegative,
    check_positive,
    check_real,
    check_scores,
    check_targets,
    check_tensor,
    check_unit_interval,
    reduce,
    value_checks_on,
)
from .ops import (
    _kth_largest,
    _log_elementary_symmetric_fast,
    _NoisedKthLargest,
    _work_dtype,
    log_zero,
    noised_topk,
    noised_topk_unchecked,
)

__all__ = [
    "noised_topk",
    "noised_topk_loss",
    "imbalanced_noised_topk_loss",
    "topk_hinge_loss",
    "smooth_topk_svm_loss",
    "focal_loss",
    "ldam_loss",
    "class_margins",
    "assume_negative_loss",
    "epr_loss",
    "role_loss",
    "pseudo_labels",
    "two_head_loss",
]


def _prepare(scores, targets, reduction, name: str = "scores"):
    """:func:`_scores_and_targets` and ``reduction`` validated; scores in the compute dtype."""
    scores, targets = _scores_and_targets(scores, targets, name)
    check_choice(reduction, "reduction", REDUCTIONS)
    return scores.to(_work_dtype(scores.dtype)), targets


def _scores_and_targets(scores, targets, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores ``(B, C)`` or stacked ``(M, B, C)`` and targets of shape ``scores.shape[:-1]``,
    validated (targets as long)."""
    scores = check_scores(scores, name, ndim=None)
    if scores.dim() not in (2, 3):
        raise ValueError(
            f"`{name}` must have 2 dimensions (batch, classes) or, stacked, 3 (members, batch, classes); "
            f"got shape {tuple(scores.shape)}"
        )
    return scores, _check_row_targets(targets, scores, name)


def _check_row_targets(targets: object, scores: torch.Tensor, name: str) -> torch.Tensor:
    """Class indices of shape ``scores.shape[:-1]`` (``(B,)``, or ``(M, B)`` when stacked)."""
    if scores.dim() == 2:
        return check_targets(targets, scores.shape[0], scores.shape[1])
    targets = check_tensor(targets, "targets")
    if tuple(targets.shape) != tuple(scores.shape[:-1]):
        raise ValueError(
            f"`targets` must have shape {tuple(scores.shape[:-1])} to match the stacked `{name}` "
            f"(members, batch, classes) = {tuple(scores.shape)}, got {tuple(targets.shape)}"
        )
    flat = check_targets(targets.reshape(-1), targets.numel(), scores.shape[-1])
    return flat.reshape(targets.shape)


def _rows(s: torch.Tensor) -> tuple[int, ...]:
    return tuple(s.shape[:-1])


def _hyper(value, name: str, s: torch.Tensor, check, *, integer: bool = False, positive: bool = False):
    """A hyperparameter for the rows of ``s`` (number, or tensor broadcasting against the rows;
    see :func:`~avgk_lib._checks.check_hyper`); a ``positive`` one (a scale, a temperature) must
    not underflow to zero in the compute dtype."""
    return check_hyper(
        value, name, _rows(s), check, integer=integer, dtype=s.dtype, device=s.device, underflow=positive
    )


def _col(value):
    """A per-row hyperparameter made to broadcast against ``(*rows, C)``."""
    return value.unsqueeze(-1) if isinstance(value, torch.Tensor) else value


def _loss_k(k, s: torch.Tensor):
    """The K of a top-K loss: integer ``1 <= k < C``, a number or a per-row tensor."""
    return _hyper(k, "k", s, lambda v: int(check_k(v, n_classes=s.shape[-1], below_n_classes=True)), integer=True)


def _prepare_noised(scores, targets, k, epsilon, n_samples, reduction):
    """:func:`_prepare` plus the arguments shared by the noised losses (k, epsilon, n_samples)."""
    s, y = _prepare(scores, targets, reduction)
    k = _loss_k(k, s)
    epsilon = _hyper(epsilon, "epsilon", s, lambda v: check_nonnegative(v, "epsilon"))
    return s, y, k, epsilon, check_count(n_samples, "n_samples")


def _finite(per_row: torch.Tensor, names: str) -> torch.Tensor:
    """A loss (reduced or per row), checked finite with the value checks on: an overflow (of a
    term, or of the sum of finite terms) raises, naming the hyperparameters whose size caused
    it, instead of returning inf or NaN."""
    if value_checks_on() and not all_finite(per_row):
        raise ValueError(
            f"the loss overflowed {per_row.dtype} (largest finite value {torch.finfo(per_row.dtype).max:g}): "
            f"{names} too large for these scores"
        )
    return per_row


def _check_device(device: object) -> torch.device:
    """``None`` (CPU), a :class:`torch.device` or a device string."""
    if device is None:
        return torch.device("cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"`device` must be a torch.device, a string or None, got {type(device).__name__}")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"`device` is not a valid device: {err}") from None


def _target_scores(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return scores.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


# --------------------------------------------------------------------------------------------
# P1: the noised top-K hinge losses
# --------------------------------------------------------------------------------------------


def noised_topk_loss(
    scores: torch.Tensor,
    targets: torch.Tensor,
    k: int,
    epsilon: float = 1.0,
    n_samples: int = 5,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Balanced stochastic smoothed top-K hinge loss [P1, eq. 6].

    .. math:: \ell(s, y) = \big(1 + \hat s^{\epsilon}_{[K+1]} - s_y\big)_+

    where :math:`\hat s^{\epsilon}_{[K+1]}` is :func:`~avgk_lib.ops.noised_topk` of rank K+1: the
    loss is zero once the true class beats the smoothed (K+1)-th score by a margin of 1, i.e. is
    safely inside the top K. ``epsilon -> 0`` gives :func:`topk_hinge_loss`.

    Args:
        k: the K of top-K, ``1 <= k < C``. epsilon, n_samples, noise, generator: as in
        :func:`~avgk_lib.ops.noised_topk` (``noise`` has shape ``(n_samples, B, C)``, or
        ``(n_samples, M, B, C)`` for stacked scores). ``k`` and ``epsilon`` may be per-row or
        per-member tensors (module docstring).

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0]]); y = torch.tensor([1])
        >>> noised_topk_loss(s, y, k=1, epsilon=0.0)   # 1 + s_[2] - s_1 = 1 + 1 - 1
        tensor(1.)
    """
    s, y, k, epsilon, n_samples = _prepare_noised(scores, targets, k, epsilon, n_samples, reduction)
    draws = noised_topk_unchecked(s, k + 1, epsilon, n_samples, noise=noise, generator=generator, per_draw=True)
    return _finite(_NoisedHinge.apply(s, y, *draws, reduction), "`scores` or `epsilon`")


class _NoisedHinge(torch.autograd.Function):
    r"""The balanced noised hinge in one autograd node:
    ``reduce(relu(1 + mean_s kth_values - s[y]))`` forward, and in backward the gradient that
    autograd derives for the same expression over :class:`~avgk_lib.ops._NoisedKthLargest`
    (the same operations in the same order, so the same bits), without a graph of six nodes.

    Per row, with :math:`g_r` the reduced loss's gradient flowing to row r and
    :math:`a_r = [\ell_r > 0]`: :math:`\nabla_s = a_r g_r (\frac1S \sum_s \mathbf e_{i_s} - \mathbf e_y)`.
    """

    @staticmethod
    def forward(ctx, s, y, kth_values, kth_indices, reduction):  # type: ignore[override]
        smoothed = kth_values.mean(dim=0).to(s.dtype)
        per_row = F.relu(1.0 + smoothed - _target_scores(s, y))
        ctx.save_for_backward(per_row, y, kth_indices)
        ctx.reduction, ctx.s_shape = reduction, s.shape
        return reduce(per_row, reduction)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        per_row, y, kth_indices = ctx.saved_tensors
        rows = per_row.shape
        if ctx.reduction == "none":
            grad_rows = grad_output
        else:  # the backward of reduce(): expand over the batch dim (mean: divided by its size)
            grad_rows = (grad_output.unsqueeze(-1) if len(rows) > 1 else grad_output).expand(rows)
            if ctx.reduction == "mean":
                grad_rows = grad_rows / rows[-1]
        grad_rows = torch.ops.aten.threshold_backward(grad_rows, per_row, 0)  # relu
        grad = _NoisedKthLargest.scatter_draws(grad_rows, kth_indices, ctx.s_shape)  # the smoothed (K+1)-th score
        grad.scatter_add_(-1, y.unsqueeze(-1), grad_rows.neg().unsqueeze(-1))  # minus the target score
        return grad, None, None, None, None


def class_margins(class_counts, n_classes: int, max_margin: float, device=None) -> torch.Tensor:
    r"""LDAM margins [Cao19]: :math:`m_j = m_{\max}\, n_j^{-1/4} / \max_i n_i^{-1/4}` (float64).

    The rarest class gets ``max_margin``; a class 16 times more frequent gets half of it.

    Args:
        class_counts: C counts, all > 0. n_classes: C >= 1. max_margin: finite, >= 0.
        device: where the margins live (default CPU).
    """
    n_classes = check_count(n_classes, "n_classes")
    max_margin = check_nonnegative(max_margin, "max_margin")
    counts = check_counts_vector(class_counts, "class_counts", n_classes, device=_check_device(device))
    inv = counts.pow(-0.25)
    return max_margin * inv / inv.max()


def _target_margins(class_counts, max_margin, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Per-row margin of the target class, :math:`m_{y}` of :func:`class_margins`, shape ``rows``.

    ``class_counts`` is ``(C,)`` (shared) or ``(L, C)`` with ``L = s.shape[0]`` (one count vector
    per row of ``(B, C)`` scores or per member of stacked scores); ``max_margin`` is a number or
    a tensor broadcasting against the rows."""
    n_classes, rows = s.shape[-1], _rows(s)
    if isinstance(class_counts, torch.Tensor) and class_counts.dim() == 2 or _is_nested(class_counts):
        table = _counts_table(class_counts, n_classes, rows[0], s.device)
        inv = table.pow(-0.25)
        relative = (inv / inv.amax(dim=-1, keepdim=True)).to(s.dtype)
        relative = relative.reshape(rows[0], *([1] * (len(rows) - 1)), n_classes).expand(*rows, n_classes)
        m_y = relative.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    else:
        m_y = class_margins(class_counts, n_classes, 1.0, s.device).to(s.dtype)[y]
    return max_margin * m_y


def _is_nested(values: object) -> bool:
    """A list/tuple of sequences (a 2-D table of counts given as nested lists)."""
    return isinstance(values, (list, tuple)) and len(values) > 0 and isinstance(values[0], (list, tuple))


def _counts_table(values: object, n_classes: int, n_lead: int, device: torch.device) -> torch.Tensor:
    """Per-row (or per-member) class counts ``(L, C)``: every row a valid count vector."""
    table = values if isinstance(values, torch.Tensor) else torch.as_tensor(values, dtype=torch.float64)
    if tuple(table.shape) != (n_lead, n_classes):
        raise ValueError(
            f"`class_counts` must have shape ({n_classes},) or ({n_lead}, {n_classes}) (one count vector per "
            f"entry of the scores' leading dimension), got {tuple(table.shape)}"
        )
    return torch.stack([check_counts_vector(row, "class_counts", n_classes, device=device) for row in table])


def imbalanced_noised_topk_loss(
    scores: torch.Tensor,
    targets: torch.Tensor,
    k: int,
    class_counts,
    epsilon: float = 0.01,
    n_samples: int = 5,
    max_margin: float = 0.2,
    scale: float = 60.0,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Imbalanced noised top-K loss with class-dependent margins [P1, eq. 7].

    .. math:: \ell(s, y) = \big(\lambda\,(m_y + \hat s^{\epsilon}_{[K+1]} - s_y)\big)_+,
              \qquad m_j = m_{\max} \frac{n_j^{-1/4}}{\max_i n_i^{-1/4}}

    Rare classes must win by a larger margin. Meant for cosine scores in [-1, 1] (a normalized
    linear head), hence the small default ``epsilon`` and the scale :math:`\lambda`; works on any
    scores.

    Args:
        class_counts: training-set count of every class, length C, all > 0 (or ``(L, C)``, one
            vector per row / member). max_margin: margin of the rarest class. scale:
            :math:`\lambda > 0`. Each of k, epsilon, max_margin, scale may be a per-row or
            per-member tensor (module docstring).
    """
    s, y, k, epsilon, n_samples = _prepare_noised(scores, targets, k, epsilon, n_samples, reduction)
    max_margin = _hyper(max_margin, "max_margin", s, lambda v: check_nonnegative(v, "max_margin"))
    scale = _hyper(scale, "scale", s, lambda v: check_positive(v, "scale"), positive=True)
    margin_y = _target_margins(class_counts, max_margin, s, y)
    smoothed = noised_topk_unchecked(s, k + 1, epsilon, n_samples, noise=noise, generator=generator)
    per_row = F.relu(scale * (margin_y + smoothed - _target_scores(s, y)))
    return _finite(reduce(per_row, reduction), "`scale`, `max_margin` or `epsilon`")


def topk_hinge_loss(scores: torch.Tensor, targets: torch.Tensor, k: int, reduction: Reduction = "mean") -> torch.Tensor:
    r"""Hard top-K calibrated hinge loss [P1, eq. 3; Yang and Koyejo 2020].

    .. math:: \ell(s, y) = \big(1 + s_{[K+1]} - s_y\big)_+

    Its gradient is sparse (two classes per sample), which is what the noised version smooths.
    Ties at the (K+1)-th place: the value is exact; the gradient goes to the index
    :func:`torch.topk` reports.
    """
    s, y = _prepare(scores, targets, reduction)
    k = _loss_k(k, s)
    return _finite(reduce(F.relu(1.0 + _kth_largest(s, k + 1) - _target_scores(s, y)), reduction), "`scores`")


# --------------------------------------------------------------------------------------------
# P1 baselines
# --------------------------------------------------------------------------------------------


def smooth_topk_svm_loss(
    scores: torch.Tensor,
    targets: torch.Tensor,
    k: int,
    tau: float = 1.0,
    alpha: float = 1.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Smooth top-k SVM loss of [Berrada18, eq. 12], computed exactly in log space.

    .. math::
        L_{k,\tau}(s, y) = \tau \log \sum_{\bar y \in \mathcal Y^{(k)}}
            \exp\Big(\frac{\alpha\,\mathbb 1[y\notin\bar y]}{\tau} + \sum_{j\in\bar y}\frac{s_j}{k\tau}\Big)
          - \tau \log \sum_{\bar y \in \mathcal Y^{(k)}_y} \exp\Big(\sum_{j\in\bar y}\frac{s_j}{k\tau}\Big)

    over the k-subsets :math:`\bar y` of classes (:math:`\mathcal Y^{(k)}_y`: those containing y).
    Splitting the subsets by whether they contain y collapses it to

    .. math:: L_{k,\tau}(s,y) = \tau\, \mathrm{softplus}\Big(\frac{\alpha}{\tau}
              + \log e_k(x_{\setminus y}) - \log e_{k-1}(x_{\setminus y}) - \frac{s_y}{k\tau}\Big),
              \quad x_j = e^{s_j/(k\tau)},

    with :math:`e_j` the elementary symmetric polynomials of the other classes, evaluated by
    :func:`~avgk_lib.ops.log_elementary_symmetric` without any subtraction, so no hard/smooth
    switch is needed (Berrada's code switches to the hard loss when the top-k gap exceeds
    :math:`k\tau\log 10^3`; here the smooth value is exact at every scale).

    Hard limit: as :math:`\tau \to 0` the loss tends to the top-k SVM
    :math:`\max\big(0, \alpha + (s^{\setminus y}_{[k]} - s_y)/k\big)`, with :math:`s^{\setminus y}_{[k]}`
    the k-th largest score among the other classes. Special case: ``k=1, alpha=0, tau=1`` is
    exactly cross-entropy.

    Range: the scaled scores :math:`(s_j - \max_i s_i)/(k\tau)` must stay above the stand-in for
    :math:`\log 0` (:data:`~avgk_lib.ops.LOG_ZERO` = -1e30, or a quarter of the dtype's range):
    a ``tau`` so small that the score spread over :math:`k\tau` exceeds 1e-3 of it raises a
    ``ValueError`` naming ``tau`` (that is far inside the hard limit: the smooth and hard losses
    then differ by less than :math:`\tau\log\binom{C}{k}`). A ``tau`` so large that the loss
    overflows raises too.

    Args:
        k: ``1 <= k < C``. tau: temperature > 0. alpha: margin >= 0. Each may be a per-row or
            per-member tensor (module docstring).
    """
    s, y = _prepare(scores, targets, reduction)
    k = _loss_k(k, s)
    tau = _hyper(tau, "tau", s, lambda v: check_positive(v, "tau"), positive=True)
    alpha = _hyper(alpha, "alpha", s, lambda v: check_nonnegative(v, "alpha"))
    k_max = int(k.max()) if isinstance(k, torch.Tensor) else k
    # the loss is invariant to adding a constant to every score: centre for range
    temperature = _col(k * tau)
    z = (s - s.detach().amax(dim=-1, keepdim=True)) / temperature
    floor = log_zero(z.dtype)
    if value_checks_on() and not bool((z.detach() > 1e-3 * floor).all()):
        raise ValueError(
            f"`tau` is too small for the spread of these scores: (s - max s) / (k * tau) must stay above "
            f"{1e-3 * floor:g} (the stand-in for log 0 is {floor:g}); raise `tau`, its hard limit is reached"
        )
    z_target = _target_scores(z, y)
    others = z.scatter(-1, y.unsqueeze(-1), floor)  # x_y = 0: polynomials of the other classes
    log_e = _log_elementary_symmetric_fast(others, k_max)
    if isinstance(k, torch.Tensor):
        index = k.expand(_rows(s)).unsqueeze(-1)
        log_ek, log_ek1 = log_e.gather(-1, index).squeeze(-1), log_e.gather(-1, index - 1).squeeze(-1)
    else:
        log_ek, log_ek1 = log_e[..., k], log_e[..., k - 1]
    margin = log_ek - log_ek1 - z_target
    per_row = tau * F.softplus(alpha / tau + margin)
    return _finite(reduce(per_row, reduction), "`tau` or `alpha`")


FOCAL_GAMMA_MAX = 1e6


def _check_gamma(value: object) -> float:
    """Focal ``gamma``: finite, ``0 <= gamma <= FOCAL_GAMMA_MAX`` (1e6)."""
    gamma = check_nonnegative(value, "gamma")
    if gamma > FOCAL_GAMMA_MAX:
        raise ValueError(
            f"`gamma` must be <= {FOCAL_GAMMA_MAX:g} (beyond, gamma times log p overflows the gradient), got {gamma:g}"
        )
    return gamma


def focal_loss(
    scores: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0, reduction: Reduction = "mean"
) -> torch.Tensor:
    r"""Focal loss [Lin17]: :math:`\ell(s, y) = -(1 - p_y)^{\gamma} \log p_y`, :math:`p = \mathrm{softmax}(s)`.

    ``gamma = 0`` is cross-entropy. ``gamma`` may be a per-row or per-member tensor.

    Bound: ``gamma <= 1e6`` (Lin et al. use 0 to 5): the gradient multiplies ``gamma`` by
    :math:`\log p_y`, which overflows beyond.

    Computed from :math:`\log p_y` (a stable log-softmax) with :math:`1 - p_y =
    -\mathrm{expm1}(\log p_y)`. Where :math:`p_y` rounds to 1 the loss is 0 and so is its
    gradient (the limit for every :math:`\gamma \ge 0`; the naive power rule would give
    :math:`0 \cdot \infty` = NaN for :math:`\gamma < 1`).
    """
    s, y = _prepare(scores, targets, reduction)
    gamma = _hyper(gamma, "gamma", s, _check_gamma)
    log_p = _target_scores(F.log_softmax(s, dim=-1), y)
    q = (-torch.expm1(log_p)).clamp_min(0.0)
    certain = q == 0
    weight = torch.where(certain, torch.ones_like(q), q) ** gamma
    per_row = torch.where(certain, torch.zeros_like(q), -weight * log_p)
    return _finite(reduce(per_row, reduction), "`scores`")


def ldam_loss(
    scores: torch.Tensor,
    targets: torch.Tensor,
    class_counts,
    max_margin: float = 0.5,
    scale: float = 30.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Label-distribution-aware margin loss [Cao19].

    .. math:: \ell(s, y) = \mathrm{CE}\big(\lambda\,(s - m_y \mathbf e_y),\, y\big),
              \qquad m_j = m_{\max} \frac{n_j^{-1/4}}{\max_i n_i^{-1/4}}

    Meant for cosine scores (normalized head) with scale :math:`\lambda`. ``max_margin=0, scale=1``
    is cross-entropy. ``class_counts`` may be ``(L, C)`` and ``max_margin``, ``scale`` per-row or
    per-member tensors (module docstring).

    Computed as :math:`\lambda(u_{\max} - u_y) + \log\sum_j e^{\lambda(u_j - u_{\max})}` with
    :math:`u = s - m_y\mathbf e_y`: the scale multiplies differences of scores only, so a large
    ``scale`` cannot overflow an intermediate; a loss beyond the dtype's range raises.
    """
    s, y = _prepare(scores, targets, reduction)
    max_margin = _hyper(max_margin, "max_margin", s, lambda v: check_nonnegative(v, "max_margin"))
    scale = _hyper(scale, "scale", s, lambda v: check_positive(v, "scale"), positive=True)
    margin_y = _target_margins(class_counts, max_margin, s, y)
    shifted = s - F.one_hot(y, s.shape[-1]).to(s.dtype) * _col(margin_y)
    gap = shifted - shifted.detach().amax(dim=-1, keepdim=True)  # <= 0
    scaled = _col(scale) * gap
    per_row = torch.logsumexp(scaled, dim=-1) - _target_scores(scaled, y)
    return _finite(reduce(per_row, reduction), "`scale` or `max_margin`")


# --------------------------------------------------------------------------------------------
# P2: weakly supervised multi-label baselines [Cole21] and the two-head loss
# --------------------------------------------------------------------------------------------


def assume_negative_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
    negative_weight: float = 1.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Assume-negative binary cross-entropy for single positive labels [Cole21] (AN, AN-LS, WAN).

    Each of the C sigmoid outputs is a binary problem; the observed class is positive and every
    other class is *assumed* negative:

    .. math:: \ell(z, y) = \frac1C \sum_{j} w_j\,\mathrm{BCE}\big(\sigma(z_j), t_j\big),\quad
              t_j = \begin{cases}1-\varepsilon & j = y\\ \varepsilon & j\ne y\end{cases},\quad
              w_j = \begin{cases}1 & j = y\\ \gamma & j \ne y\end{cases}

    AN: :math:`\varepsilon=0, \gamma=1` (BCE against one-hot targets). AN-LS: label smoothing
    :math:`\varepsilon>0` (Cole et al. use 0.1), pulling both targets towards 1/2 symmetrically.
    WAN: :math:`\gamma = 1/(C-1)` so that the negatives together weigh as much as the positive.

    As Cole et al. normalise it: the per-entry loss matrix divided by B x C and summed (the
    ``"mean"`` reduction; a per-sample loss is the mean over its C entries).

    Args:
        logits: multi-label head outputs ``(B, C)``. label_smoothing: :math:`\varepsilon\in[0, 1)`.
        negative_weight: :math:`\gamma \ge 0`. Both may be per-row or per-member tensors.
    """
    z, y = _prepare(logits, targets, reduction, name="logits")
    label_smoothing = _hyper(
        label_smoothing, "label_smoothing", z, lambda v: check_unit_interval(v, "label_smoothing", low_open=False)
    )
    negative_weight = _hyper(negative_weight, "negative_weight", z, lambda v: check_nonnegative(v, "negative_weight"))
    label_smoothing, negative_weight = _col(label_smoothing), _col(negative_weight)
    positive = F.one_hot(y, z.shape[-1]).to(z.dtype)
    target = positive * (1.0 - label_smoothing) + (1.0 - positive) * label_smoothing
    weight = positive + (1.0 - positive) * negative_weight
    per_entry = F.binary_cross_entropy_with_logits(z, target, weight=weight, reduction="none")
    return _finite(reduce(per_entry.mean(dim=-1), reduction), "`negative_weight`")


def _expected_positive_penalty(probs: torch.Tensor, expected_positives) -> torch.Tensor:
    """:math:`R_K = (\\frac1B\\sum_{n,j} p_{nj} - K)^2 / C^2` (Cole et al., eq. 5), per batch:
    a scalar for ``(B, C)`` probabilities, ``(M, 1)`` for stacked ones (broadcasts over rows).
    A per-row K enters as the batch mean of :math:`\\sum_j p_{nj} - K_n`."""
    n_classes = probs.shape[-1]
    excess = (probs.sum(dim=-1) - expected_positives).mean(dim=-1, keepdim=probs.dim() == 3)
    return excess**2 / n_classes**2


def _expected_positives(value, z: torch.Tensor):
    """EPR / ROLE's K: real, ``0 < K <= C``; a number or a per-row / per-member tensor."""
    return _hyper(
        value,
        "expected_positives",
        z,
        lambda v: float(check_k(v, "expected_positives", n_classes=z.shape[-1], integer=False)),
    )


def epr_loss(
    logits: torch.Tensor, targets: torch.Tensor, expected_positives: float, reduction: Reduction = "mean"
) -> torch.Tensor:
    r"""Expected-positive regularization [Cole21, eq. 5].

    .. math:: \mathcal L = \frac1{BC}\sum_n -\log\sigma(z_{n y_n})
              + \Big(\frac1B\sum_{n,j}\sigma(z_{nj}) - K\Big)^2 \Big/ C^2

    Only the observed positive is supervised; the batch regularizer asks for K expected
    positives per sample. Normalised as Cole et al.'s code does: the per-entry loss matrix
    (here only the observed positives are non-zero) is divided by B x C and summed, and the
    regularizer is added once. It is a batch quantity: ``reduction="none"`` returns the
    per-sample positive terms (divided by C) plus the regularizer, so their mean is the
    ``"mean"`` loss.

    Args:
        expected_positives: K, ``0 < K <= C``; a number or a per-row / per-member tensor.
    """
    z, y = _prepare(logits, targets, reduction, name="logits")
    expected_positives = _expected_positives(expected_positives, z)
    positive_term = -F.logsigmoid(_target_scores(z, y)) / z.shape[-1]
    penalty = _expected_positive_penalty(torch.sigmoid(z), expected_positives)
    return reduce(positive_term + penalty, reduction)


def role_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_logits: torch.Tensor,
    expected_positives: float,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Regularized online label estimation, ROLE [Cole21, eq. 6], for one batch, as their code has it.

    With model probabilities :math:`f = \sigma(z)` and label estimates :math:`g = \sigma(\theta)`
    (the rows of the estimate table for this batch), each trained against the other through a
    stop-gradient :math:`\mathrm{sg}`, per entry :math:`(n, j)`:

    .. math:: L_{nj} = \tfrac12\,[j = y_n]\big(-\log f_{nj} - \log g_{nj}\big)
              + \tfrac12\big(\mathrm{BCE}(f_{nj}; \mathrm{sg}\,g_{nj}) + \mathrm{BCE}(g_{nj}; \mathrm{sg}\,f_{nj})\big)

    .. math:: \mathcal L = \frac1{BC}\sum_{n,j} L_{nj} + \tfrac12\big(R_K(f) + R_K(g)\big)

    with :math:`R_K` the EPR penalty of :func:`epr_loss`. The observed positive is supervised in
    both halves (its estimate :math:`g_{ny_n}` is a trained entry, initialised near 1 by
    :class:`avgk_lib.losses.ROLELoss`); every log is taken in logit form (``logsigmoid``), so no
    clamp is needed. ``reduction="none"`` returns per-sample losses (mean over the C entries of
    a row, plus the batch penalty) whose mean is the ``"mean"`` loss. Stacked ``(M, B, C)``
    logits take ``label_logits`` of the same shape; ``expected_positives`` may be a per-row or
    per-member tensor.
    """
    z, y = _prepare(logits, targets, reduction, name="logits")
    theta = check_scores(label_logits, "label_logits", ndim=None)
    if theta.shape != z.shape:
        raise ValueError(f"`label_logits` must have shape {tuple(z.shape)}, got {tuple(theta.shape)}")
    expected_positives = _expected_positives(expected_positives, z)
    theta = theta.to(z.dtype)
    n_classes = z.shape[-1]
    f, g = torch.sigmoid(z), torch.sigmoid(theta)
    observed = -(_target_scores(F.logsigmoid(z), y) + _target_scores(F.logsigmoid(theta), y)) / n_classes
    cross_f = F.binary_cross_entropy_with_logits(z, g.detach(), reduction="none")
    cross_g = F.binary_cross_entropy_with_logits(theta, f.detach(), reduction="none")
    penalty = _expected_positive_penalty(f, expected_positives) + _expected_positive_penalty(g, expected_positives)
    per_row = 0.5 * (observed + (cross_f + cross_g).mean(dim=-1) + penalty)
    return reduce(per_row, reduction)


def pseudo_labels(
    probs: torch.Tensor,
    targets: torch.Tensor,
    k: float,
    rule: PseudoLabelRule = "exact",
    *,
    force_true: bool = True,
    fixed_threshold: float | torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Pseudo-labels for the multi-label head of the two-head model [P2, sec. 3].

    Returns a bool ``(B, C)`` matrix of positives with, on average, ``k`` positives per sample:

    * ``rule="exact"`` (default): every true label, plus the :math:`\mathrm{round}((k-1)B)` largest
      remaining probabilities of the whole batch: exactly :math:`\mathrm{round}(kB)` positives.
    * ``rule="threshold"``: the :math:`\mathrm{round}(kB)` largest probabilities of the batch,
      true labels included in the count, then every true label is added; between
      :math:`\mathrm{round}(kB)` and :math:`\mathrm{round}(kB) + B` positives.

    P2 does not pin down which of the two it uses; ``exact`` matches the stated average of K.
    Ties among probabilities are broken by :func:`torch.topk` (sorted). Rounding is half to even.

    Two more open choices of P2, each a flag:

    * ``force_true=False``: the true label is not forced positive. The positives are exactly the
      :math:`\mathrm{round}(kB)` largest probabilities of the batch (both rules then coincide);
      a true label is positive only if it is among them.
    * ``fixed_threshold`` :math:`\lambda` (a real number, :math:`\pm\infty` allowed): no
      ranking within the batch; the positives are :math:`\{(i, j): p_{ij} \ge \lambda\}`, plus
      every true label when ``force_true`` (``k`` and ``rule`` then only matter for how
      :math:`\lambda` was calibrated, e.g. by :class:`~avgk_lib.losses.TwoHeadLoss` with
      ``threshold="epoch"``).

    Stacked form: ``probs`` ``(M, B, C)``, ``targets`` ``(M, B)`` and ``k`` a number or a tensor
    ``(M,)``: each member selects within its own batch, as the call on ``probs[m]`` with
    ``k[m]`` does; the result is ``(M, B, C)``. (A tensor ``k`` of shape ``rows`` counts
    :math:`\sum_n (k_n - 1)` extra positives per batch.) ``force_true`` and ``fixed_threshold``
    (one :math:`\lambda` for every member) apply to stacks too.

    Args:
        probs: softmax-head probabilities (any scores ordered like them work), ``(B, C)``.
        k: average number of positives, ``1 <= k <= C`` (may be fractional; the true label is
            always a positive, hence ``k >= 1``).
        force_true: whether every true label is a positive (default ``True``, P2's reading).
        fixed_threshold: ``None`` (default: rank within the batch) or a global threshold on ``probs``.
    """
    probs, targets = _scores_and_targets(probs, targets, "probs")
    k = _average_k(k, probs)
    rule = check_choice(rule, "rule", RULES)
    force_true = check_bool(force_true, "force_true")
    fixed_threshold = _check_fixed_threshold(fixed_threshold)
    return _pseudo_labels(probs, targets, k, rule, force_true, fixed_threshold)


def _check_fixed_threshold(value: object) -> float | None:
    r"""``None``, or a global threshold on the probabilities as a ``float``: a real number or a
    one-element real tensor (read once on the host); NaN rejected, :math:`\pm\infty` allowed
    (``+inf``: nothing beyond the true labels is selected)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"`fixed_threshold` must be a scalar, got shape {tuple(value.shape)}")
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"`fixed_threshold` must be a real number, got dtype {value.dtype}")
        value = float(value.detach().reshape(()))
        if math.isnan(value):
            raise ValueError("`fixed_threshold` is NaN")
        return value
    return check_real(value, "fixed_threshold", allow_inf=True)


def _average_k(k, s: torch.Tensor):
    """The average set size of the two-head loss: real, ``1 <= k <= C``; number or tensor (kept
    in float64 on the CPU: it only sizes the selections, which are read on the host anyway)."""
    return check_hyper(
        k,
        "k",
        _rows(s),
        lambda v: float(check_k(v, n_classes=s.shape[-1], integer=False, minimum=1)),
        dtype=torch.float64,
        device=torch.device("cpu"),
    )


def _selection_counts(k, rule: str, n: int, n_groups: int) -> tuple[torch.Tensor | None, int]:
    """Per batch, how many entries to select: round((k-1) B) ("exact") or round(k B), capped at
    B C. Returns (per-batch counts, or None when every batch takes the same, and their maximum);
    a number ``k`` is handled on the host (no device read), a tensor is read once."""
    offset = 1.0 if rule == "exact" else 0.0
    if not isinstance(k, torch.Tensor):
        return None, int(round((k - offset) * n))
    k = k.to(torch.float64)
    if k.dim() >= 1 and k.shape[-1] == n and n > 1:  # one k per row
        wanted = (k - offset).expand(n_groups, n).sum(dim=-1)
    else:  # one k per batch
        wanted = (k - offset).reshape(-1).expand(n_groups) * n
    counts = torch.round(wanted).long()
    return counts, int(counts.max())


def _pseudo_labels(
    probs: torch.Tensor,
    targets: torch.Tensor,
    k,
    rule: str,
    force_true: bool = True,
    fixed_threshold: float | None = None,
) -> torch.Tensor:
    """:func:`pseudo_labels` on validated arguments; every batch of a stack handled at once."""
    n_classes = probs.shape[-1]
    positive = F.one_hot(targets, n_classes).bool()
    if fixed_threshold is not None:
        selected = probs.detach() >= fixed_threshold
        return selected | positive if force_true else selected
    if not force_true:  # the round(kB) largest of the batch, whatever the true labels
        positive = torch.zeros_like(positive)
        rule = "threshold"
    n = targets.shape[-1]
    groups = positive.reshape(-1, n * n_classes)  # one row per batch
    n_groups = groups.shape[0]
    flat = probs.detach().reshape(n_groups, -1)
    counts, n_max = _selection_counts(k, rule, n, n_groups)
    n_max = min(n_max, flat.shape[-1])
    if n_max > 0:
        candidates = flat.masked_fill(groups, float("-inf")) if rule == "exact" else flat
        chosen = torch.topk(candidates, n_max, dim=-1, sorted=True).indices
        if counts is None:
            groups = groups.scatter(-1, chosen, True)
        else:
            keep = torch.arange(n_max, device=probs.device) < counts.to(probs.device).unsqueeze(-1)
            groups = groups.scatter(-1, chosen, keep | groups.gather(-1, chosen))
    return groups.reshape(positive.shape)


def two_head_loss(
    softmax_logits: torch.Tensor,
    multilabel_logits: torch.Tensor,
    targets: torch.Tensor,
    k: float,
    weight: float = 1.0,
    reduction: Reduction = "mean",
    *,
    rule: PseudoLabelRule = "exact",
    class_reduction: ClassReduction = "mean",
    soft_labels: bool = False,
    force_true: bool = True,
    fixed_threshold: float | torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Two-head loss for average-K classification [P2, eq. 3].

    .. math:: \mathcal L = \mathrm{CE}(z^{\mathrm{soft}}, y)
              + \lambda\,\overline{\mathrm{BCE}}\big(z^{\mathrm{multi}}, T\big),
              \qquad \hat Y = \mathrm{pseudo\_labels}(\mathrm{softmax}(z^{\mathrm{soft}}), y, K)

    The softmax head learns the single observed label; the multi-label (sigmoid) head learns
    sets of K labels on average, built from the softmax head's own confident guesses. The
    pseudo-labels are a function of a detached softmax, so no gradient flows through them.

    BCE targets :math:`T`: hard by default, :math:`T = \hat Y \in \{0, 1\}^{B \times C}`. With
    ``soft_labels=True`` a selected entry's target is its detached softmax probability,
    :math:`T_{ij} = p_{ij}\,\hat Y_{ij}` with :math:`p = \mathrm{softmax}(z^{\mathrm{soft}})`,
    except the true label, whose target stays :math:`T_{i y_i} = 1` when it is forced positive
    (``force_true``; with ``force_true=False`` a selected true label is an entry like any other);
    unselected entries have target 0.

    Args:
        k: average set size, a number or, for stacked ``(M, B, C)`` logits, a tensor ``(M,)``
            (the pseudo-labels of each member are chosen within its own batch).
        weight: :math:`\lambda \ge 0`, weight of the multi-label head; a number or a per-row
            or per-member tensor.
        rule: pseudo-label rule, see :func:`pseudo_labels`.
        class_reduction: ``"mean"`` (default, as ``BCEWithLogitsLoss``) or ``"sum"`` of the
            binary cross-entropies over the C classes; P2 leaves it open.
        soft_labels: soft BCE targets on the selected entries (above); P2 leaves it open.
        force_true: whether the true label is always a positive, see :func:`pseudo_labels`.
        fixed_threshold: a global threshold on the softmax probabilities instead of the ranking
            within the batch, see :func:`pseudo_labels` (what
            :class:`~avgk_lib.losses.TwoHeadLoss` passes with ``threshold="epoch"``).
    """
    s, y = _prepare(softmax_logits, targets, reduction, name="softmax_logits")
    m = check_scores(multilabel_logits, "multilabel_logits", ndim=None)
    if m.shape != softmax_logits.shape:
        raise ValueError(
            f"`multilabel_logits` must have the shape of `softmax_logits` {tuple(s.shape)}, got {tuple(m.shape)}"
        )
    k = _average_k(k, s)
    weight = _hyper(weight, "weight", s, lambda v: check_nonnegative(v, "weight"))
    rule = check_choice(rule, "rule", RULES)
    class_reduction = check_choice(class_reduction, "class_reduction", CLASS_REDUCTIONS)
    soft_labels = check_bool(soft_labels, "soft_labels")
    force_true = check_bool(force_true, "force_true")
    fixed_threshold = _check_fixed_threshold(fixed_threshold)
    with torch.no_grad():
        probs = torch.softmax(s, dim=-1)
        positives = _pseudo_labels(probs, y, k, rule, force_true, fixed_threshold)
        bce_targets = _bce_targets(positives, probs, y, soft_labels, force_true)
    ce = -_target_scores(F.log_softmax(s, dim=-1), y)
    bce = F.binary_cross_entropy_with_logits(m.to(s.dtype), bce_targets, reduction="none")
    bce = bce.mean(dim=-1) if class_reduction == "mean" else bce.sum(dim=-1)
    return _finite(reduce(ce + weight * bce, reduction), "`weight`")


def _bce_targets(
    positives: torch.Tensor, probs: torch.Tensor, targets: torch.Tensor, soft: bool, force_true: bool
) -> torch.Tensor:
    """The multi-label head's BCE targets (dtype of ``probs``): the positives as 0/1, or, ``soft``,
    the probabilities of the positives (true labels at 1 when ``force_true``)."""
    if not soft:
        return positives.to(probs.dtype)
    out = torch.where(positives, probs, torch.zeros((), dtype=probs.dtype, device=probs.device))
    if force_true:
        out = out.scatter(-1, targets.unsqueeze(-1), 1.0)
    return out
