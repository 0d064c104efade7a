r"""Pure loss functions of both papers (functional core; :mod:`avgk_lib.losses` wraps them).

Conventions shared by every function here:

* ``scores`` / ``logits`` are ``(B, C)`` floating tensors, ``targets`` are ``(B,)`` integer class
  indices; any device. Half-precision inputs (float16, bfloat16) are computed in float32 and the
  loss is returned in float32, as :func:`torch.autocast` does for cross-entropy.
* ``reduction`` is ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-sample losses, shape (B,)).
* Bad input raises :class:`ValueError` / :class:`TypeError` naming the argument.

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

import torch
import torch.nn.functional as F

from ._checks import (
    CLASS_REDUCTIONS,
    REDUCTIONS,
    RULES,
    ClassReduction,
    PseudoLabelRule,
    Reduction,
    check_choice,
    check_class_counts,
    check_count,
    check_k,
    check_nonnegative,
    check_positive,
    check_scores,
    check_targets,
    check_unit_interval,
    reduce,
)
from .ops import (
    LOG_ZERO,
    _kth_largest,
    _log_elementary_symmetric_fast,
    _work_dtype,
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
    """Validate (scores, targets, reduction); return scores in the compute dtype and long targets."""
    scores = check_scores(scores, name)
    targets = check_targets(targets, scores.shape[0], scores.shape[1])
    check_choice(reduction, "reduction", REDUCTIONS)
    return scores.to(_work_dtype(scores.dtype)), targets


def _prepare_noised(scores, targets, k, epsilon, n_samples, reduction):
    """:func:`_prepare` plus the arguments shared by the noised losses (k, epsilon, n_samples)."""
    s, y = _prepare(scores, targets, reduction)
    k = int(check_k(k, n_classes=s.shape[1], below_n_classes=True))
    return s, y, k, check_nonnegative(epsilon, "epsilon"), check_count(n_samples, "n_samples")


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
    return scores.gather(1, targets[:, None]).squeeze(1)


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
        :func:`~avgk_lib.ops.noised_topk` (``noise`` has shape ``(n_samples, B, C)``).

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0]]); y = torch.tensor([1])
        >>> noised_topk_loss(s, y, k=1, epsilon=0.0)   # 1 + s_[2] - s_1 = 1 + 1 - 1
        tensor(1.)
    """
    s, y, k, epsilon, n_samples = _prepare_noised(scores, targets, k, epsilon, n_samples, reduction)
    smoothed = noised_topk_unchecked(s, k + 1, epsilon, n_samples, noise=noise, generator=generator)
    return reduce(F.relu(1.0 + smoothed - _target_scores(s, y)), reduction)


def class_margins(class_counts, n_classes: int, max_margin: float, device=None) -> torch.Tensor:
    r"""LDAM margins [Cao19]: :math:`m_j = m_{\max}\, n_j^{-1/4} / \max_i n_i^{-1/4}` (float64).

    The rarest class gets ``max_margin``; a class 16 times more frequent gets half of it.

    Args:
        class_counts: C counts, all > 0. n_classes: C >= 1. max_margin: finite, >= 0.
        device: where the margins live (default CPU).
    """
    n_classes = check_count(n_classes, "n_classes")
    max_margin = check_nonnegative(max_margin, "max_margin")
    counts = check_class_counts(class_counts, n_classes, _check_device(device))
    inv = counts.pow(-0.25)
    return max_margin * inv / inv.max()


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
        class_counts: training-set count of every class, length C, all > 0.
        max_margin: margin of the rarest class. scale: :math:`\lambda > 0`.
    """
    s, y, k, epsilon, n_samples = _prepare_noised(scores, targets, k, epsilon, n_samples, reduction)
    max_margin = check_nonnegative(max_margin, "max_margin")
    scale = check_positive(scale, "scale")
    margins = class_margins(class_counts, s.shape[1], max_margin, s.device).to(s.dtype)
    smoothed = noised_topk_unchecked(s, k + 1, epsilon, n_samples, noise=noise, generator=generator)
    return reduce(F.relu(scale * (margins[y] + smoothed - _target_scores(s, y))), reduction)


def topk_hinge_loss(scores: torch.Tensor, targets: torch.Tensor, k: int, reduction: Reduction = "mean") -> torch.Tensor:
    r"""Hard top-K calibrated hinge loss [P1, eq. 3; Yang and Koyejo 2020].

    .. math:: \ell(s, y) = \big(1 + s_{[K+1]} - s_y\big)_+

    Its gradient is sparse (two classes per sample), which is what the noised version smooths.
    Ties at the (K+1)-th place: the value is exact; the gradient goes to the index
    :func:`torch.topk` reports.
    """
    s, y = _prepare(scores, targets, reduction)
    k = int(check_k(k, n_classes=s.shape[1], below_n_classes=True))
    return reduce(F.relu(1.0 + _kth_largest(s, k + 1) - _target_scores(s, y)), reduction)


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

    Args:
        k: ``1 <= k < C``. tau: temperature > 0. alpha: margin >= 0.
    """
    s, y = _prepare(scores, targets, reduction)
    k = int(check_k(k, n_classes=s.shape[1], below_n_classes=True))
    tau = check_positive(tau, "tau")
    alpha = check_nonnegative(alpha, "alpha")
    # the loss is invariant to adding a constant to every score: centre for range
    z = (s - s.detach().amax(dim=1, keepdim=True)) / (k * tau)
    z_target = _target_scores(z, y)
    others = z.scatter(1, y[:, None], LOG_ZERO)  # x_y = 0: polynomials of the other classes
    log_e = _log_elementary_symmetric_fast(others, k)
    margin = log_e[:, k] - log_e[:, k - 1] - z_target
    return reduce(tau * F.softplus(alpha / tau + margin), reduction)


def focal_loss(
    scores: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0, reduction: Reduction = "mean"
) -> torch.Tensor:
    r"""Focal loss [Lin17]: :math:`\ell(s, y) = -(1 - p_y)^{\gamma} \log p_y`, :math:`p = \mathrm{softmax}(s)`.

    ``gamma = 0`` is cross-entropy.
    """
    s, y = _prepare(scores, targets, reduction)
    gamma = check_nonnegative(gamma, "gamma")
    log_p = _target_scores(F.log_softmax(s, dim=1), y)
    return reduce(-((1.0 - log_p.exp()).clamp_min(0.0) ** gamma) * log_p, reduction)


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
    is cross-entropy.
    """
    s, y = _prepare(scores, targets, reduction)
    max_margin = check_nonnegative(max_margin, "max_margin")
    scale = check_positive(scale, "scale")
    margins = class_margins(class_counts, s.shape[1], max_margin, s.device).to(s.dtype)
    shifted = s - F.one_hot(y, s.shape[1]).to(s.dtype) * margins[y, None]
    return reduce(F.cross_entropy(scale * shifted, y, reduction="none"), reduction)


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

    Args:
        logits: multi-label head outputs ``(B, C)``. label_smoothing: :math:`\varepsilon\in[0, 1)`.
        negative_weight: :math:`\gamma \ge 0`.
    """
    z, y = _prepare(logits, targets, reduction, name="logits")
    label_smoothing = check_unit_interval(label_smoothing, "label_smoothing", low_open=False)
    negative_weight = check_nonnegative(negative_weight, "negative_weight")
    positive = F.one_hot(y, z.shape[1]).to(z.dtype)
    target = positive * (1.0 - label_smoothing) + (1.0 - positive) * label_smoothing
    weight = positive + (1.0 - positive) * negative_weight
    per_entry = F.binary_cross_entropy_with_logits(z, target, weight=weight, reduction="none")
    return reduce(per_entry.mean(dim=1), reduction)


def _expected_positive_penalty(probs: torch.Tensor, expected_positives: float) -> torch.Tensor:
    """:math:`R_K = (\\frac1B\\sum_{n,j} p_{nj} - K)^2 / C^2` (Cole et al., eq. 5)."""
    n_classes = probs.shape[1]
    return (probs.sum(dim=1).mean() - expected_positives) ** 2 / n_classes**2


def epr_loss(
    logits: torch.Tensor, targets: torch.Tensor, expected_positives: float, reduction: Reduction = "mean"
) -> torch.Tensor:
    r"""Expected-positive regularization [Cole21, eq. 5].

    .. math:: \mathcal L = \frac1B\sum_n -\log\sigma(z_{n y_n})
              + \Big(\frac1B\sum_{n,j}\sigma(z_{nj}) - K\Big)^2 \Big/ C^2

    Only the observed positive is supervised; the batch regularizer asks for K expected
    positives per sample. It is a batch quantity: ``reduction="none"`` returns the per-sample
    positive terms plus the regularizer (so their mean is the ``"mean"`` loss).

    Args:
        expected_positives: K, ``0 < K <= C``.
    """
    z, y = _prepare(logits, targets, reduction, name="logits")
    expected_positives = float(check_k(expected_positives, "expected_positives", n_classes=z.shape[1], integer=False))
    positive_term = -F.logsigmoid(_target_scores(z, y))
    penalty = _expected_positive_penalty(torch.sigmoid(z), expected_positives)
    return reduce(positive_term + penalty, reduction)


def role_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_logits: torch.Tensor,
    expected_positives: float,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Regularized online label estimation, ROLE [Cole21, eq. 6], for one batch.

    With model probabilities :math:`f = \sigma(z)` and label estimates :math:`\tilde y =
    \sigma(\theta)` (the observed positive clamped to 1), each trained against the other with a
    stop-gradient :math:`\mathrm{sg}`:

    .. math:: \mathcal L = \tfrac12\Big[\overline{\mathrm{BCE}}(f, \mathrm{sg}\,\tilde y) + R_K(f)
              + \overline{\mathrm{BCE}}(\tilde y, \mathrm{sg}\, f) + R_K(\tilde y)\Big]

    (:math:`\overline{\mathrm{BCE}}`: mean over classes, :math:`R_K`: the EPR penalty).
    ``label_logits`` (B, C) are the rows of the estimate table for this batch; gradients reach
    them only through the second half. :class:`avgk_lib.losses.ROLELoss` owns the table.
    """
    z, y = _prepare(logits, targets, reduction, name="logits")
    check_scores(label_logits, "label_logits")
    if label_logits.shape != logits.shape:
        raise ValueError(f"`label_logits` must have shape {tuple(logits.shape)}, got {tuple(label_logits.shape)}")
    expected_positives = float(check_k(expected_positives, "expected_positives", n_classes=z.shape[1], integer=False))
    theta = label_logits.to(z.dtype)
    positive = F.one_hot(y, z.shape[1]).bool()
    f = torch.sigmoid(z)
    estimate = torch.where(positive, torch.ones_like(f), torch.sigmoid(theta))

    def bce(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        eps = torch.finfo(prob.dtype).tiny
        return -(target * prob.clamp_min(eps).log() + (1 - target) * (1 - prob).clamp_min(eps).log()).mean(dim=1)

    # model half: BCE in logit form for stability
    model_half = F.binary_cross_entropy_with_logits(z, estimate.detach(), reduction="none").mean(dim=1)
    model_half = model_half + _expected_positive_penalty(f, expected_positives)
    label_half = bce(estimate, f.detach()) + _expected_positive_penalty(estimate, expected_positives)
    return reduce(0.5 * (model_half + label_half), reduction)


def pseudo_labels(
    probs: torch.Tensor, targets: torch.Tensor, k: float, rule: PseudoLabelRule = "exact"
) -> torch.Tensor:
    r"""Pseudo-labels for the multi-label head of the two-head model [P2, sec. 3].

    Returns a bool ``(B, C)`` matrix of positives with, on average, ``k`` positives per sample:

    * ``rule="exact"`` (default): every true label, plus the :math:`\mathrm{round}((k-1)B)` largest
      remaining probabilities of the whole batch: exactly :math:`\mathrm{round}(kB)` positives.
    * ``rule="threshold"``: the :math:`\mathrm{round}(kB)` largest probabilities of the batch,
      true labels included in the count, then every true label is added; between
      :math:`\mathrm{round}(kB)` and :math:`\mathrm{round}(kB) + B` positives.

    P2 does not pin down which of the two it uses; ``exact`` matches the stated average of K.
    Ties among probabilities are broken by :func:`torch.topk`.

    Args:
        probs: softmax-head probabilities (any scores ordered like them work), ``(B, C)``.
        k: average number of positives, ``1 <= k <= C`` (may be fractional; the true label is
            always a positive, hence ``k >= 1``).
    """
    probs = check_scores(probs, "probs")
    targets = check_targets(targets, probs.shape[0], probs.shape[1])
    n, n_classes = probs.shape
    k = float(check_k(k, n_classes=n_classes, integer=False, minimum=1))
    rule = check_choice(rule, "rule", RULES)
    positive = F.one_hot(targets, n_classes).bool()
    flat = probs.detach().reshape(-1)
    if rule == "exact":
        n_extra = int(round((k - 1.0) * n))
        if n_extra > 0:
            candidates = flat.masked_fill(positive.reshape(-1), float("-inf"))
            extra = torch.topk(candidates, n_extra, sorted=False).indices
            positive.view(-1)[extra] = True
    else:
        chosen = torch.topk(flat, min(int(round(k * n)), flat.numel()), sorted=False).indices
        positive.view(-1)[chosen] = True
    return positive


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
) -> torch.Tensor:
    r"""Two-head loss for average-K classification [P2, eq. 3].

    .. math:: \mathcal L = \mathrm{CE}(z^{\mathrm{soft}}, y)
              + \lambda\,\overline{\mathrm{BCE}}\big(z^{\mathrm{multi}}, \hat Y\big),
              \qquad \hat Y = \mathrm{pseudo\_labels}(\mathrm{softmax}(z^{\mathrm{soft}}), y, K)

    The softmax head learns the single observed label; the multi-label (sigmoid) head learns
    sets of K labels on average, built from the softmax head's own confident guesses. The
    pseudo-labels are a function of a detached softmax, so no gradient flows through them.

    Args:
        weight: :math:`\lambda \ge 0`, weight of the multi-label head.
        rule: pseudo-label rule, see :func:`pseudo_labels`.
        class_reduction: ``"mean"`` (default, as ``BCEWithLogitsLoss``) or ``"sum"`` of the
            binary cross-entropies over the C classes; P2 leaves it open.
    """
    s, y = _prepare(softmax_logits, targets, reduction, name="softmax_logits")
    m = check_scores(multilabel_logits, "multilabel_logits")
    if m.shape != softmax_logits.shape:
        raise ValueError(
            f"`multilabel_logits` must have the shape of `softmax_logits` {tuple(s.shape)}, got {tuple(m.shape)}"
        )
    k = float(check_k(k, n_classes=s.shape[1], integer=False, minimum=1))
    weight = check_nonnegative(weight, "weight")
    rule = check_choice(rule, "rule", RULES)
    class_reduction = check_choice(class_reduction, "class_reduction", CLASS_REDUCTIONS)
    with torch.no_grad():
        positives = pseudo_labels(torch.softmax(s, dim=1), y, k, rule=rule)
    ce = F.cross_entropy(s, y, reduction="none")
    bce = F.binary_cross_entropy_with_logits(m.to(s.dtype), positives.to(s.dtype), reduction="none")
    bce = bce.mean(dim=1) if class_reduction == "mean" else bce.sum(dim=1)
    return reduce(ce + weight * bce, reduction)
