"""``nn.Module`` wrappers of :mod:`avgk_lib.functional` (same names in CamelCase).

Each module stores its hyperparameters, validates them at construction, and forwards to the
functional form. Hyperparameter defaults are written once, in the functional signatures: a
constructor parameter declared ``= FROM_F`` takes the default of the functional form's parameter of
the same name (:func:`_defaults_from`; ``inspect.signature`` and ``help`` show the value).

Per-class state (``class_counts``) is a registered buffer and ROLE's label estimates are a
parameter, so ``.to(device)``, ``.half()`` and ``state_dict()`` behave like any PyTorch module.

Stacked form (see :mod:`avgk_lib.functional`): every module also takes ``(M, B, C)`` scores
with ``(M, B)`` targets and returns one loss per member (``(M,)`` for ``"mean"``/``"sum"``);
its hyperparameters may be tensors of per-member values (shape ``(M,)``), validated at
construction and checked against the scores' shape in ``forward``. ``ROLELoss(...,
n_members=M)`` holds one table per member; the noised losses take a list of M generators.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from . import functional as F_
from ._checks import (
    CLASS_REDUCTIONS,
    REDUCTIONS,
    RULES,
    THRESHOLD_MODES,
    ClassReduction,
    PseudoLabelRule,
    Reduction,
    ThresholdMode,
    check_bool,
    check_choice,
    check_count,
    check_counts_vector,
    check_generator,
    check_hyper,
    check_k,
    check_nonnegative,
    check_positive,
    check_real,
    check_targets,
    check_tensor,
    check_unit_interval,
)
from .metrics import _threshold as average_k_threshold_unchecked

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


FROM_F: Any = object()  # marks a constructor default taken from the functional form
_Init = TypeVar("_Init", bound=Callable[..., None])


def _defaults_from(functional: Callable[..., Any]) -> Callable[[_Init], _Init]:
    """Decorator of a loss constructor: each parameter whose default is ``FROM_F`` gets the default of
    the same-named parameter of ``functional`` (checked at import: a marker without a functional
    default is a ``TypeError``)."""
    source = inspect.signature(functional).parameters

    def decorate(init: _Init) -> _Init:
        def resolve(p: inspect.Parameter) -> Any:
            if p.default is not FROM_F:
                return p.default
            if p.name not in source or source[p.name].default is inspect.Parameter.empty:
                raise TypeError(f"{init.__qualname__}: `{p.name}` has no default in {functional.__name__}")
            return source[p.name].default

        params = [p for p in inspect.signature(init).parameters.values() if p.default is not p.empty]
        positional = [resolve(p) for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
        init.__defaults__ = tuple(positional) or None
        init.__kwdefaults__ = {p.name: resolve(p) for p in params if p.kind is p.KEYWORD_ONLY} or None
        return init

    return decorate


def _hyper(value: object, name: str, check):
    """A constructor hyperparameter: a number (validated by ``check``) or a tensor of per-row /
    per-member values (any shape here; its shape against the scores is checked in ``forward``,
    see :mod:`avgk_lib.functional`), whose extreme values go through ``check``."""
    if isinstance(value, torch.Tensor):
        return check_hyper(value, name, tuple(value.shape), check).clone()
    return check(value)


def _check_int_k(k: object):
    """Integer K >= 1 (integral floats and NumPy scalars accepted), or an integer tensor of them;
    the bound K < C is checked in ``forward``, when C is known."""
    if isinstance(k, torch.Tensor):
        return check_hyper(k, "k", tuple(k.shape), lambda v: int(check_k(v)), integer=True).clone()
    return int(check_k(k))


def _counts_buffer(class_counts: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Per-class training counts (>= 2 classes, all finite and > 0) as a float64 CPU copy. (Per-member
    count tables ``(M, C)`` are taken by the functional forms only.)"""
    return check_counts_vector(class_counts, "class_counts", device="cpu").clone()


def _generators(generator: object) -> torch.Generator | list[torch.Generator] | None:
    """``None``, a :class:`torch.Generator`, or a list of them (one per member of stacked scores;
    the count is checked against the scores in ``forward``)."""
    if isinstance(generator, (list, tuple)):
        if not generator or any(not isinstance(g, torch.Generator) for g in generator):
            raise TypeError("`generator` must be a torch.Generator, None, or a non-empty list of torch.Generator")
        return list(generator)
    return check_generator(generator)


class _Loss(nn.Module):
    def __init__(self, reduction: Reduction) -> None:
        super().__init__()
        self.reduction = check_choice(reduction, "reduction", REDUCTIONS)

    def extra_repr(self) -> str:
        keys = [k for k in self.__dict__ if not k.startswith("_") and k != "training"]
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in keys)


class NoisedTopKLoss(_Loss):
    r"""Balanced noised top-K hinge loss [P1]; see :func:`avgk_lib.functional.noised_topk_loss`.

    ``generator`` (optional) makes the noise reproducible; it must live on the scores' device.
    For stacked ``(M, B, C)`` scores it may be a list of M generators, one per member: member m
    then draws exactly the noise a single model with ``generator[m]`` draws.
    """

    @_defaults_from(F_.noised_topk_loss)
    def __init__(
        self,
        k: int,
        epsilon: float = FROM_F,
        n_samples: int = FROM_F,
        reduction: Reduction = FROM_F,
        generator: torch.Generator | None = FROM_F,
    ) -> None:
        super().__init__(reduction)
        self.k = _check_int_k(k)
        self.epsilon = _hyper(epsilon, "epsilon", lambda v: check_nonnegative(v, "epsilon"))
        self.n_samples = check_count(n_samples, "n_samples")
        self._generator = _generators(generator)

    def forward(
        self, scores: torch.Tensor, targets: torch.Tensor, *, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``noise`` (optional): standard normal draws ``(n_samples, *scores.shape)``, used instead
        of drawing from the generator(s)."""
        return F_.noised_topk_loss(
            scores,
            targets,
            self.k,
            self.epsilon,
            self.n_samples,
            noise=noise,
            generator=self._generator,
            reduction=self.reduction,
        )


class ImbalancedNoisedTopKLoss(_Loss):
    r"""Imbalanced noised top-K loss with LDAM-style margins [P1];
    see :func:`avgk_lib.functional.imbalanced_noised_topk_loss`."""

    @_defaults_from(F_.imbalanced_noised_topk_loss)
    def __init__(
        self,
        k: int,
        class_counts: Sequence[float] | torch.Tensor,
        epsilon: float = FROM_F,
        n_samples: int = FROM_F,
        max_margin: float = FROM_F,
        scale: float = FROM_F,
        reduction: Reduction = FROM_F,
        generator: torch.Generator | None = FROM_F,
    ) -> None:
        super().__init__(reduction)
        self.k = _check_int_k(k)
        self.epsilon = _hyper(epsilon, "epsilon", lambda v: check_nonnegative(v, "epsilon"))
        self.n_samples = check_count(n_samples, "n_samples")
        self.max_margin = _hyper(max_margin, "max_margin", lambda v: check_nonnegative(v, "max_margin"))
        self.scale = _hyper(scale, "scale", lambda v: check_positive(v, "scale"))
        self.register_buffer("class_counts", _counts_buffer(class_counts))
        self._generator = _generators(generator)

    def forward(
        self, scores: torch.Tensor, targets: torch.Tensor, *, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``noise`` (optional): standard normal draws ``(n_samples, *scores.shape)``."""
        return F_.imbalanced_noised_topk_loss(
            scores,
            targets,
            self.k,
            self.class_counts,
            self.epsilon,
            self.n_samples,
            self.max_margin,
            self.scale,
            noise=noise,
            generator=self._generator,
            reduction=self.reduction,
        )


class TopKHingeLoss(_Loss):
    """Hard top-K calibrated hinge loss; see :func:`avgk_lib.functional.topk_hinge_loss`."""

    @_defaults_from(F_.topk_hinge_loss)
    def __init__(self, k: int, reduction: Reduction = FROM_F) -> None:
        super().__init__(reduction)
        self.k = _check_int_k(k)

    def forward(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F_.topk_hinge_loss(scores, targets, self.k, self.reduction)


class SmoothTopKSVMLoss(_Loss):
    """Smooth top-k SVM of Berrada et al. (2018); see :func:`avgk_lib.functional.smooth_topk_svm_loss`."""

    @_defaults_from(F_.smooth_topk_svm_loss)
    def __init__(self, k: int, tau: float = FROM_F, alpha: float = FROM_F, reduction: Reduction = FROM_F) -> None:
        super().__init__(reduction)
        self.k = _check_int_k(k)
        self.tau = _hyper(tau, "tau", lambda v: check_positive(v, "tau"))
        self.alpha = _hyper(alpha, "alpha", lambda v: check_nonnegative(v, "alpha"))

    def forward(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F_.smooth_topk_svm_loss(scores, targets, self.k, self.tau, self.alpha, self.reduction)


class FocalLoss(_Loss):
    """Focal loss (Lin et al. 2017); see :func:`avgk_lib.functional.focal_loss`."""

    @_defaults_from(F_.focal_loss)
    def __init__(self, gamma: float = FROM_F, reduction: Reduction = FROM_F) -> None:
        super().__init__(reduction)
        self.gamma = _hyper(gamma, "gamma", F_._check_gamma)

    def forward(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F_.focal_loss(scores, targets, self.gamma, self.reduction)


class LDAMLoss(_Loss):
    """LDAM loss (Cao et al. 2019); see :func:`avgk_lib.functional.ldam_loss`."""

    @_defaults_from(F_.ldam_loss)
    def __init__(
        self,
        class_counts: Sequence[float] | torch.Tensor,
        max_margin: float = FROM_F,
        scale: float = FROM_F,
        reduction: Reduction = FROM_F,
    ) -> None:
        super().__init__(reduction)
        self.max_margin = _hyper(max_margin, "max_margin", lambda v: check_nonnegative(v, "max_margin"))
        self.scale = _hyper(scale, "scale", lambda v: check_positive(v, "scale"))
        self.register_buffer("class_counts", _counts_buffer(class_counts))

    def forward(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F_.ldam_loss(scores, targets, self.class_counts, self.max_margin, self.scale, self.reduction)


class AssumeNegativeLoss(_Loss):
    """AN / AN-LS / WAN (Cole et al. 2021); see :func:`avgk_lib.functional.assume_negative_loss`."""

    @_defaults_from(F_.assume_negative_loss)
    def __init__(
        self, label_smoothing: float = FROM_F, negative_weight: float = FROM_F, reduction: Reduction = FROM_F
    ) -> None:
        super().__init__(reduction)
        self.label_smoothing = _hyper(
            label_smoothing,
            "label_smoothing",
            lambda v: check_unit_interval(v, "label_smoothing", low_open=False),
        )
        self.negative_weight = _hyper(
            negative_weight, "negative_weight", lambda v: check_nonnegative(v, "negative_weight")
        )

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F_.assume_negative_loss(logits, targets, self.label_smoothing, self.negative_weight, self.reduction)


class EPRLoss(_Loss):
    """Expected-positive regularization (Cole et al. 2021); see :func:`avgk_lib.functional.epr_loss`."""

    @_defaults_from(F_.epr_loss)
    def __init__(self, expected_positives: float, reduction: Reduction = FROM_F) -> None:
        super().__init__(reduction)
        self.expected_positives = _hyper(
            expected_positives,
            "expected_positives",
            lambda v: float(check_k(v, "expected_positives", integer=False)),
        )

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F_.epr_loss(logits, targets, self.expected_positives, self.reduction)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class ROLELoss(_Loss):
    r"""Regularized online label estimation, ROLE (Cole et al. 2021).

    Holds the label-estimate table :math:`\theta \in \mathbb R^{N\times C}` (logits of the
    estimates :math:`g = \sigma(\theta)`), one row per training sample, as a parameter: **add
    this module's parameters to the optimizer**; Cole et al. give the table its own parameter
    group at 10 times the learning rate (``lr_mult``), with Adam. ``forward(logits, targets,
    indices)`` takes the dataset indices of the batch samples. See
    :func:`avgk_lib.functional.role_loss` for the formula.

    Initialisation (Cole et al.'s ``LabelEstimator``), configurable:

    * unknown entries uniform in :math:`[-\mathrm{logit}(\tfrac12 + w), \mathrm{logit}(\tfrac12 + w)]`
      with ``init_width`` :math:`w = 0.1` (so :math:`g \in [0.4, 0.6]`), drawn from ``generator``
      (default: the global RNG); or, with ``init_probability`` :math:`p_0`, all at
      :math:`\mathrm{logit}(p_0)` (e.g. :math:`K/C`);
    * the observed positive of each sample at :math:`\mathrm{logit}(0.995)`
      (``positive_probability``). With ``train_targets`` (the observed label of every training
      sample) this is done at construction; otherwise at the first visit of each sample, recorded
      in the ``positive_initialised`` buffer (so it survives ``state_dict`` round trips).

    Stacked form: with ``n_members`` M the table is ``(M, N, C)``, one per member, and
    ``forward`` takes ``(M, B, C)`` logits with ``(M, B)`` targets and indices.

    The table costs ``4 M N C`` bytes (plus optimizer state); a warning is issued above
    ``memory_warning_bytes`` (1 GiB by default: Pl@ntNet-300K's 243,916 x 1,081 table is
    about 1 GiB).

    Args:
        n_train: number of training samples N. n_classes: C.
        expected_positives: K of the expected-positive regularizer.
        init_probability: if given, the constant initial estimate of the unknown entries.
    """

    @_defaults_from(F_.role_loss)
    def __init__(
        self,
        n_train: int,
        n_classes: int,
        expected_positives: float,
        init_probability: float | None = None,
        reduction: Reduction = FROM_F,
        memory_warning_bytes: int = 1 << 30,
        *,
        init_width: float = 0.1,
        positive_probability: float = 0.995,
        train_targets: torch.Tensor | None = None,
        n_members: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(reduction)
        self.n_train = check_count(n_train, "n_train")
        self.n_classes = check_count(n_classes, "n_classes", minimum=2)
        self.expected_positives = float(
            check_k(expected_positives, "expected_positives", n_classes=self.n_classes, integer=False)
        )
        p0 = None if init_probability is None else check_unit_interval(init_probability, "init_probability")
        width = check_real(init_width, "init_width")
        if not 0.0 <= width < 0.5:
            raise ValueError(f"`init_width` must be in [0, 0.5), got {width}")
        positive = check_unit_interval(positive_probability, "positive_probability")
        self.n_members = None if n_members is None else check_count(n_members, "n_members")
        generator = check_generator(generator)
        memory_warning_bytes = check_count(memory_warning_bytes, "memory_warning_bytes", minimum=0)
        lead = () if self.n_members is None else (self.n_members,)
        shape = (*lead, self.n_train, self.n_classes)
        size = 4 * math.prod(shape)
        if size > memory_warning_bytes:
            warnings.warn(
                f"ROLELoss label-estimate table is {' x '.join(map(str, shape))} = {size / 2**30:.2f} GiB "
                "(plus optimizer state)",
                ResourceWarning,
                stacklevel=2,
            )
        self._positive_logit = _logit(positive)
        if p0 is not None:
            table = torch.full(shape, _logit(p0))
        else:
            half_range = _logit(0.5 + width)
            table = half_range * (2.0 * torch.rand(shape, generator=generator) - 1.0)
        self.label_logits = nn.Parameter(table)
        self.register_buffer("positive_initialised", torch.zeros((*lead, self.n_train), dtype=torch.bool))
        if train_targets is not None:
            targets = self._check_targets_table(train_targets, lead)
            self._init_positives(torch.arange(self.n_train).expand(*lead, self.n_train), targets)

    def _check_targets_table(self, train_targets: object, lead: tuple[int, ...]) -> torch.Tensor:
        train_targets = check_tensor(train_targets, "train_targets")
        if tuple(train_targets.shape) != (*lead, self.n_train):
            raise ValueError(
                f"`train_targets` must have shape {(*lead, self.n_train)} (the observed label of every training "
                f"sample), got {tuple(train_targets.shape)}"
            )
        flat = check_targets(train_targets.reshape(-1), train_targets.numel(), self.n_classes, "train_targets")
        return flat.reshape(train_targets.shape)

    @torch.no_grad()
    def _init_positives(self, indices: torch.Tensor, targets: torch.Tensor) -> None:
        """Set the observed positive of each sample not yet initialised to logit(positive_probability)."""
        table, done = self.label_logits, self.positive_initialised
        indices, targets = indices.to(table.device), targets.to(table.device)
        members = (
            torch.arange(indices.shape[0], device=table.device).unsqueeze(-1).expand_as(indices)
            if indices.dim() == 2
            else None
        )
        seen = done[members, indices] if members is not None else done[indices]
        if bool(seen.all()):
            return
        fresh = ~seen
        if members is not None:
            table[members[fresh], indices[fresh], targets[fresh]] = self._positive_logit
            done[members[fresh], indices[fresh]] = True
        else:
            table[indices[fresh], targets[fresh]] = self._positive_logit
            done[indices[fresh]] = True

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        logits = check_tensor(logits, "logits")
        stacked = self.n_members is not None
        want = f"({self.n_members}, batch, {self.n_classes})" if stacked else f"(batch, {self.n_classes})"
        if logits.dim() != (3 if stacked else 2) or logits.shape[-1] != self.n_classes:
            raise ValueError(f"`logits` must have shape {want}, got {tuple(logits.shape)}")
        if stacked and logits.shape[0] != self.n_members:
            raise ValueError(f"`logits` must have shape {want}, got {tuple(logits.shape)}")
        if logits.shape[-2] == 0:
            raise ValueError("`logits` is empty: an empty batch has no loss")
        indices = check_tensor(indices, "indices")
        if indices.dtype in (torch.bool,) or indices.is_floating_point():
            raise TypeError(f"`indices` must be integer sample indices, got dtype {indices.dtype}")
        if tuple(indices.shape) != tuple(logits.shape[:-1]):
            raise ValueError(f"`indices` must have shape {tuple(logits.shape[:-1])}, got {tuple(indices.shape)}")
        if indices.numel():  # always checked: an out-of-range index is a device assert on CUDA
            lo, hi = (int(v) for v in torch.aminmax(indices.detach()))
            if lo < 0 or hi >= self.n_train:
                raise ValueError(f"`indices` must lie in [0, {self.n_train - 1}], got {lo if lo < 0 else hi}")
        indices = indices.to(self.label_logits.device).long()
        # validate targets before they index the table
        checked = F_._check_row_targets(targets, logits, "logits")
        self._init_positives(indices, checked)
        if stacked:
            members = torch.arange(self.n_members, device=indices.device).unsqueeze(-1).expand_as(indices)
            rows = self.label_logits[members, indices]
        else:
            rows = self.label_logits[indices]
        return F_.role_loss(logits, targets, rows.to(logits.device), self.expected_positives, self.reduction)


class TwoHeadLoss(_Loss):
    r"""Two-head loss for average-K classification [P2]; see :func:`avgk_lib.functional.two_head_loss`.

    ``forward(softmax_logits, multilabel_logits, targets)``. ``warmup_epochs``: during the first
    epochs only the softmax head is trained (weight 0 on the multi-label head), so that the
    pseudo-labels come from a softmax head that has learned something; the trainer calls
    :meth:`set_epoch`. P2 does not say whether it warms up; the default is no warm-up.

    ``soft_labels`` and ``force_true``: see :func:`~avgk_lib.functional.two_head_loss`.

    ``threshold``: how the positives are selected, another choice P2 leaves open.

    * ``"batch"`` (default): within each batch, by ``rule`` (:func:`~avgk_lib.functional.pseudo_labels`).
    * ``"epoch"``: one global threshold :math:`\lambda_e` per epoch, calibrated on the softmax
      probabilities of the previous epoch's training batches (every ``forward`` in training mode
      pools them, detached) by the average-K rule of :func:`~avgk_lib.metrics.average_k_threshold`:
      with n pooled samples, :math:`\lambda_e` is the midpoint of the m-th and (m+1)-th largest
      pooled entries (never ``torch.quantile``). Pool and m: with ``force_true`` and
      ``rule="exact"``, the n(C-1) probabilities of the non-true labels and
      :math:`m = \lfloor n(K-1) + \tfrac12 \rfloor` (the extras beyond the true label; K = 1 gives
      :math:`+\infty`, no extras); otherwise all nC probabilities and :math:`m = \lfloor nK + \tfrac12
      \rfloor` (``rule="threshold"`` then adds the true labels, as it does per batch). m is rounded
      half up, as by ``average_k_threshold``; the per-batch rule rounds half to even. During epoch e the
      positives are :math:`\{p_{ij} \ge \lambda_e\}`, plus the true labels when ``force_true``.
      The first epoch (no previous one) uses the per-batch rule. The epoch changes when
      :meth:`set_epoch` is called with a new epoch (the trainer calls it at the start of each).
      The pool costs ``4 n C`` bytes (float32) on the logits' device; each process of a distributed run
      pools its own shard. :meth:`state_dict` holds the epoch, the threshold in force and the
      threshold of the pooled epoch (floats), so a run resumed from an end-of-epoch checkpoint
      uses the threshold the uninterrupted run would. Call ``.eval()`` on the loss to compute a
      loss without pooling. Not for stacked ``(M, B, C)`` logits (the pool is one model's;
      :attr:`stackable` is then ``False``): give each member its own loss.
    """

    @_defaults_from(F_.two_head_loss)
    def __init__(
        self,
        k: float,
        weight: float = FROM_F,
        reduction: Reduction = FROM_F,
        rule: PseudoLabelRule = FROM_F,
        class_reduction: ClassReduction = FROM_F,
        warmup_epochs: int = 0,
        soft_labels: bool = FROM_F,
        force_true: bool = FROM_F,
        threshold: ThresholdMode = "batch",
    ) -> None:
        super().__init__(reduction)
        self.k = _hyper(k, "k", lambda v: float(check_k(v, integer=False, minimum=1)))
        self.weight = _hyper(weight, "weight", lambda v: check_nonnegative(v, "weight"))
        self.rule = check_choice(rule, "rule", RULES)
        self.class_reduction = check_choice(class_reduction, "class_reduction", CLASS_REDUCTIONS)
        self.warmup_epochs = check_count(warmup_epochs, "warmup_epochs", minimum=0)
        self.soft_labels = check_bool(soft_labels, "soft_labels")
        self.force_true = check_bool(force_true, "force_true")
        self.threshold = check_choice(threshold, "threshold", THRESHOLD_MODES)
        if self.threshold == "epoch" and isinstance(self.k, torch.Tensor) and self.k.numel() != 1:
            raise ValueError(
                f"`k` must be one number with threshold='epoch' (one global threshold), got shape {tuple(self.k.shape)}"
            )
        self._epoch = 0
        self._pool: list[torch.Tensor] = []  # this epoch's pooled probabilities, one 1-D tensor per batch
        self._pool_rows = 0
        self._epoch_threshold: float | None = None  # lambda in force this epoch (None: per-batch rule)
        self._pending_threshold: float | None = None  # lambda of a checkpointed pool, for the next epoch

    def set_epoch(self, epoch: int) -> None:
        """Tell the loss which (0-based) training epoch is starting (for the warm-up and, with
        ``threshold="epoch"``, to turn the pooled epoch into the next threshold)."""
        epoch = check_count(epoch, "epoch", minimum=0)
        if self.threshold == "epoch" and epoch != self._epoch:
            if self._pool:
                self._epoch_threshold = self._calibrate()
            elif self._pending_threshold is not None:
                self._epoch_threshold = self._pending_threshold
            self._pool, self._pool_rows, self._pending_threshold = [], 0, None
        self._epoch = epoch

    @property
    def stackable(self) -> bool:
        """Whether this loss takes stacked ``(M, B, C)`` logits: not with ``threshold="epoch"``,
        whose pooled probabilities and threshold are one model's state (checkpointed with it)."""
        return self.threshold != "epoch"

    @property
    def epoch_threshold(self) -> float | None:
        """The global threshold in force this epoch (``threshold="epoch"``; ``None``: per-batch rule)."""
        return self._epoch_threshold

    def _pools_extras_only(self) -> bool:
        return self.force_true and self.rule == "exact"

    def _calibrate(self) -> float:
        """The average-K threshold of the pooled epoch (see the class docstring)."""
        pool = torch.cat(self._pool)
        if self._pools_extras_only():
            pool = pool[pool != -math.inf]  # drop the true labels (marked -inf when pooled)
            k = float(self.k) - 1.0
        else:
            k = float(self.k)
        n = self._pool_rows
        return float(average_k_threshold_unchecked(pool.reshape(n, pool.numel() // n), k))

    def _add_to_pool(self, softmax_logits: torch.Tensor, targets: torch.Tensor) -> None:
        with torch.no_grad():
            logits = softmax_logits.detach()
            if logits.dtype in (torch.float16, torch.bfloat16):  # the compute dtype of two_head_loss
                logits = logits.float()
            probs = torch.softmax(logits, dim=-1)
            if self._pools_extras_only():
                true = torch.nn.functional.one_hot(targets.to(probs.device).long(), probs.shape[-1]).bool()
                probs = probs.masked_fill(true, -math.inf)
            self._pool.append(probs.reshape(-1))
            self._pool_rows += probs.shape[0]

    def get_extra_state(self) -> dict[str, Any]:
        """Epoch, threshold in force and threshold of the pooled epoch (floats or ``None``)."""
        pending = self._calibrate() if self._pool else self._pending_threshold
        return {
            "threshold_mode": self.threshold,
            "epoch": self._epoch,
            "epoch_threshold": self._epoch_threshold,
            "pending_threshold": pending,
        }

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or state.get("threshold_mode") not in THRESHOLD_MODES:
            raise ValueError(f"TwoHeadLoss state must be a dict from TwoHeadLoss.state_dict(), got {state!r}")
        if state["threshold_mode"] != self.threshold:
            raise ValueError(
                f"TwoHeadLoss state was saved with threshold={state['threshold_mode']!r}; this loss has "
                f"threshold={self.threshold!r}"
            )
        self._epoch = check_count(state["epoch"], "epoch", minimum=0)
        for key in ("epoch_threshold", "pending_threshold"):
            value = state[key]
            if value is not None:
                check_real(value, key, allow_inf=True)
        self._epoch_threshold = state["epoch_threshold"]
        self._pending_threshold = state["pending_threshold"]
        self._pool, self._pool_rows = [], 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # checkpoints written before the per-epoch threshold hold no state: nothing to restore
        key = prefix + "_extra_state"
        if key not in state_dict and self.threshold == "batch":
            state_dict[key] = self.get_extra_state()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(
        self, softmax_logits: torch.Tensor, multilabel_logits: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        epoch_mode = self.threshold == "epoch"
        if epoch_mode and isinstance(softmax_logits, torch.Tensor) and softmax_logits.dim() != 2:
            raise ValueError(
                "threshold='epoch' pools one model's probabilities: `softmax_logits` must be (batch, classes), "
                f"got shape {tuple(softmax_logits.shape)}; stacked (M, B, C) logits need one TwoHeadLoss per member"
            )
        loss = F_.two_head_loss(
            softmax_logits,
            multilabel_logits,
            targets,
            self.k,
            0.0 if self._epoch < self.warmup_epochs else self.weight,
            self.reduction,
            rule=self.rule,
            class_reduction=self.class_reduction,
            soft_labels=self.soft_labels,
            force_true=self.force_true,
            fixed_threshold=self._epoch_threshold if epoch_mode else None,
        )
        if epoch_mode and self.training:
            self._add_to_pool(softmax_logits, targets)
        return loss
