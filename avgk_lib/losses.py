"""``nn.Module`` wrappers of :mod:`avgk_lib.functional` (same names in CamelCase).

Each module stores its hyperparameters, validates them at construction, and forwards to the
functional form. Per-class state (``class_counts``) is a registered buffer and ROLE's label
estimates are a parameter, so ``.to(device)``, ``.half()`` and ``state_dict()`` behave like any
PyTorch module.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from . import functional as F_
from ._checks import (
    CLASS_REDUCTIONS,
    REDUCTIONS,
    RULES,
    ClassReduction,
    PseudoLabelRule,
    Reduction,
    check_choice,
    check_count,
    check_counts_vector,
    check_generator,
    check_k,
    check_nonnegative,
    check_positive,
    check_tensor,
    check_unit_interval,
)

__all__ = [
    "NoisedTopKLoss",
    "ImbalancedNoisedTopKLoss",
    "TopKHingeLoss",
    "SmoothTopKSVMLoss",
    "FocalLoss",
    "LDAMLoss",
    "AssumeNegativeLoss",
    "EPRLoss",
    "ROLELoss",
    "TwoHeadLoss",
]


def _check_int_k(k: object) -> int:
    """Integer K >= 1 (integral floats and NumPy scalars accepted); the bound K < C is checked
    in ``forward``, when C is known."""
    return int(check_k(k))


def _counts_buffer(class_counts: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Per-class training counts (>= 2 classes, all finite and > 0) as a float64 CPU copy."""
    return check_counts_vector(class_counts, "class_counts", device="cpu").clone()


class _Loss(nn.Module):
    def __init__(self, reduction: Reduction = "mean") -> None:
        super().__init__()
        self.reduction = check_choice(reduction, "reduction", REDUCTIONS)

    def extra_repr(self) -> str:
        keys = [k for k in self.__dict__ if not k.startswith("_") and k != "training"]
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in keys)


class NoisedTopKLoss(_Loss):
    r"""Balanced noised top-K hinge loss [P1]; see :func:`avgk_lib.functional.noised_topk_loss`.

    ``generator`` (optional) makes the noise reproducible; it must live on the scores' device.
    """

    def __init__(
        self,
        k: int,
        epsilon: float = 1.0,
        n_samples: int = 5,
        reduction: Reduction = "mean",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(reduction)
        self.k = _check_int_k(k)
        self.epsilon = check_nonnegative(epsilon, "epsilon")
        self.n_samples = check_count(n_samples, "n_samples")
        self._generator = check_generator(generator)

    def forward(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F_.noised_topk_loss(
            scores, targets, self.k, self.epsilon, self.n_samples, generator=self._generator, reduction=self.reduction
        )


class ImbalancedNoisedTopKLoss(_Loss):
    r"""Imbalanced noised top-K loss with LDAM-style margins [P1];
    see :func:`avgk_lib.functional.imbalanced_noised_topk_loss`."""

    def __init__(
        self,
        k: int,
        class_counts: Sequence[float] | torch.Tensor,
        epsilon: float = 0.01,
        n_samples: int = 5,
        max_margin: float = 0.2,
        scale: float = 60.0,
        reduction: Reduction = "mean",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(reduction)
        self.k = _check_int_k(k)
        self.epsilon = check_nonnegative(epsilon, "epsilon")
        self.n_samples = check_count(n_samples, "n_samples")
        self.max_margin = check_nonnegative(max_margin, "max_margin")
        self.scale = check_positive(scale, "scale")
        self.register_buffer("class_counts", _counts_buffer(class_counts))
        self._generator = check_generator(generator)

    def forward(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F_.imbalanced_noised_topk_loss(
            scores,
            targets,
            self.k,
            self.class_counts,
            self.epsilon,
            self.n_samples,
            self.max_margin,
            self.scale,
            generator=self._generator,
            reduction=self.reduction,
        )


class TopKHingeLoss(_Loss):
    """Hard top-K calibrated hinge loss; see :func:`avgk_lib.functional.topk_hinge_loss`."""

    def __init__(self, k: int, reduction: Reduction = "mean") -> None:
        super().__init__(reduction)
        self.k = _check_int_k(k)

    def forward(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F_.topk_hinge_loss(scores, targets, self.k, self.reduction)


class SmoothTopKSVMLoss(_Loss):
    """Smooth top-k SVM of Berrada et al. (2018); see :func:`avgk_lib.functional.smooth_topk_svm_loss`."""

    def __init__(self, k: int, tau: float = 1.0, alpha: float = 1.0, reduction: Reduction = "mean") -> None:
        super().__init__(reduction)
        self.k = _check_int_k(k)
        self.tau = check_positive(tau, "tau")
        self.alpha = check_nonnegative(alpha, "alpha")

    def forward(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F_.smooth_topk_svm_loss(scores, targets, self.k, self.tau, self.alpha, self.reduction)


class FocalLoss(_Loss):
    """Focal loss (Lin et al. 2017); see :func:`avgk_lib.functional.focal_loss`."""

    def __init__(self, gamma: float = 2.0, reduction: Reduction = "mean") -> None:
        super().__init__(reduction)
        self.gamma = check_nonnegative(gamma, "gamma")

    def forward(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F_.focal_loss(scores, targets, self.gamma, self.reduction)


class LDAMLoss(_Loss):
    """LDAM loss (Cao et al. 2019); see :func:`avgk_lib.functional.ldam_loss`."""

    def __init__(
        self,
        class_counts: Sequence[float] | torch.Tensor,
        max_margin: float = 0.5,
        scale: float = 30.0,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__(reduction)
        self.max_margin = check_nonnegative(max_margin, "max_margin")
        self.scale = check_positive(scale, "scale")
        self.register_buffer("class_counts", _counts_buffer(class_counts))

    def forward(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F_.ldam_loss(scores, targets, self.class_counts, self.max_margin, self.scale, self.reduction)


class AssumeNegativeLoss(_Loss):
    """AN / AN-LS / WAN (Cole et al. 2021); see :func:`avgk_lib.functional.assume_negative_loss`."""

    def __init__(
        self, label_smoothing: float = 0.0, negative_weight: float = 1.0, reduction: Reduction = "mean"
    ) -> None:
        super().__init__(reduction)
        self.label_smoothing = check_unit_interval(label_smoothing, "label_smoothing", low_open=False)
        self.negative_weight = check_nonnegative(negative_weight, "negative_weight")

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F_.assume_negative_loss(logits, targets, self.label_smoothing, self.negative_weight, self.reduction)


class EPRLoss(_Loss):
    """Expected-positive regularization (Cole et al. 2021); see :func:`avgk_lib.functional.epr_loss`."""

    def __init__(self, expected_positives: float, reduction: Reduction = "mean") -> None:
        super().__init__(reduction)
        self.expected_positives = float(check_k(expected_positives, "expected_positives", integer=False))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F_.epr_loss(logits, targets, self.expected_positives, self.reduction)


class ROLELoss(_Loss):
    r"""Regularized online label estimation, ROLE (Cole et al. 2021).

    Holds the label-estimate table :math:`\theta \in \mathbb R^{N\times C}` (logits of
    :math:`\tilde y`), one row per training sample, as a parameter: **add this module's
    parameters to the optimizer** (Cole et al. give the table its own, larger learning rate).
    ``forward(logits, targets, indices)`` takes the dataset indices of the batch samples.
    See :func:`avgk_lib.functional.role_loss` for the formula.

    The table costs ``4 N C`` bytes (plus optimizer state); a warning is issued above
    ``memory_warning_bytes`` (1 GiB by default: Pl@ntNet-300K's 243,916 x 1,081 table is
    about 1 GiB).

    Args:
        n_train: number of training samples N. n_classes: C.
        expected_positives: K of the expected-positive regularizer.
        init_probability: initial :math:`\tilde y` off the observed label (default ``K / C``).
    """

    def __init__(
        self,
        n_train: int,
        n_classes: int,
        expected_positives: float,
        init_probability: float | None = None,
        reduction: Reduction = "mean",
        memory_warning_bytes: int = 1 << 30,
    ) -> None:
        super().__init__(reduction)
        self.n_train = check_count(n_train, "n_train")
        self.n_classes = check_count(n_classes, "n_classes", minimum=2)
        self.expected_positives = float(
            check_k(expected_positives, "expected_positives", n_classes=self.n_classes, integer=False)
        )
        if init_probability is None:
            p0 = self.expected_positives / self.n_classes
            if p0 >= 1.0:
                raise ValueError(
                    f"`init_probability` defaults to expected_positives / n_classes = {p0}, which must be < 1: pass one"
                )
        else:
            p0 = check_unit_interval(init_probability, "init_probability")
        memory_warning_bytes = check_count(memory_warning_bytes, "memory_warning_bytes", minimum=0)
        n_train, n_classes = self.n_train, self.n_classes
        size = 4 * n_train * n_classes
        if size > memory_warning_bytes:
            warnings.warn(
                f"ROLELoss label-estimate table is {n_train} x {n_classes} = {size / 2**30:.2f} GiB "
                "(plus optimizer state)",
                ResourceWarning,
                stacklevel=2,
            )
        self.label_logits = nn.Parameter(torch.full((n_train, n_classes), math.log(p0 / (1.0 - p0))))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        logits = check_tensor(logits, "logits")
        if logits.dim() != 2 or logits.shape[1] != self.n_classes:
            raise ValueError(f"`logits` must have shape (batch, {self.n_classes}), got {tuple(logits.shape)}")
        if logits.shape[0] == 0:
            raise ValueError("`logits` is empty: an empty batch has no loss")
        indices = check_tensor(indices, "indices")
        if indices.dtype in (torch.bool,) or indices.is_floating_point():
            raise TypeError(f"`indices` must be integer sample indices, got dtype {indices.dtype}")
        if indices.dim() != 1 or indices.shape[0] != logits.shape[0]:
            raise ValueError(f"`indices` must have shape ({logits.shape[0]},), got {tuple(indices.shape)}")
        if indices.numel():  # always checked: an out-of-range index is a device assert on CUDA
            lo, hi = (int(v) for v in torch.aminmax(indices.detach()))
            if lo < 0 or hi >= self.n_train:
                raise ValueError(f"`indices` must lie in [0, {self.n_train - 1}], got {lo if lo < 0 else hi}")
        rows = self.label_logits[indices.to(self.label_logits.device).long()]
        return F_.role_loss(logits, targets, rows.to(logits.device), self.expected_positives, self.reduction)


class TwoHeadLoss(_Loss):
    """Two-head loss for average-K classification [P2]; see :func:`avgk_lib.functional.two_head_loss`.

    ``forward(softmax_logits, multilabel_logits, targets)``. ``warmup_epochs``: during the first
    epochs only the softmax head is trained (weight 0 on the multi-label head), so that the
    pseudo-labels come from a softmax head that has learned something; the trainer calls
    :meth:`set_epoch`. P2 does not say whether it warms up; the default is no warm-up.
    """

    def __init__(
        self,
        k: float,
        weight: float = 1.0,
        reduction: Reduction = "mean",
        rule: PseudoLabelRule = "exact",
        class_reduction: ClassReduction = "mean",
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__(reduction)
        self.k = float(check_k(k, integer=False, minimum=1))
        self.weight = check_nonnegative(weight, "weight")
        self.rule = check_choice(rule, "rule", RULES)
        self.class_reduction = check_choice(class_reduction, "class_reduction", CLASS_REDUCTIONS)
        self.warmup_epochs = check_count(warmup_epochs, "warmup_epochs", minimum=0)
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Tell the loss which (0-based) training epoch is starting (for the warm-up)."""
        self._epoch = check_count(epoch, "epoch", minimum=0)

    def forward(
        self, softmax_logits: torch.Tensor, multilabel_logits: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        return F_.two_head_loss(
            softmax_logits,
            multilabel_logits,
            targets,
            self.k,
            0.0 if self._epoch < self.warmup_epochs else self.weight,
            self.reduction,
            rule=self.rule,
            class_reduction=self.class_reduction,
        )
