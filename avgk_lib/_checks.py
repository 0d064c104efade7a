"""Input validation shared by every loss and metric.

Every public function of :mod:`avgk_lib` validates its inputs with these helpers so that a
mistake surfaces as a :class:`ValueError` or :class:`TypeError` that names the offending
argument, never as a silent ``nan`` or a cryptic indexing error deep inside autograd.

The value checks (finiteness of scores, range of targets) read the data, which costs one
device synchronisation on CUDA. :func:`set_value_checks` turns them off for tuned training
loops; shape, dtype and argument checks always run because they are free.

Numbers: wherever a Python number is accepted, a NumPy scalar (``np.float32(0.5)``,
``np.int64(3)``) is accepted too (anything registered as :class:`numbers.Real`); ``bool`` is
always rejected, and so are NaN and infinity unless an argument says otherwise.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, get_args

import numpy as np
import torch

Reduction = Literal["mean", "sum", "none"]
Average = Literal["micro", "macro"]
PseudoLabelRule = Literal["exact", "threshold"]
ClassReduction = Literal["mean", "sum"]
ThresholdMode = Literal["batch", "epoch"]  # the two-head loss: positives per batch or per epoch
ConformalMethod = Literal["lac", "aps", "raps"]

REDUCTIONS: tuple[str, ...] = get_args(Reduction)
AVERAGES: tuple[str, ...] = get_args(Average)
RULES: tuple[str, ...] = get_args(PseudoLabelRule)
CLASS_REDUCTIONS: tuple[str, ...] = get_args(ClassReduction)
THRESHOLD_MODES: tuple[str, ...] = get_args(ThresholdMode)
CONFORMAL_METHODS: tuple[str, ...] = get_args(ConformalMethod)

_VALUE_CHECKS = True


def set_value_checks(enabled: bool) -> None:
    """Enable or disable the data-dependent checks (NaN/inf scores, target range)."""
    global _VALUE_CHECKS
    _VALUE_CHECKS = bool(enabled)


def value_checks_on() -> bool:
    """Whether the data-dependent checks currently run (see :func:`set_value_checks`)."""
    return _VALUE_CHECKS


@contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Context manager form of :func:`set_value_checks`."""
    previous = _VALUE_CHECKS
    set_value_checks(enabled)
    try:
        yield
    finally:
        set_value_checks(previous)


def all_finite(x: torch.Tensor) -> bool:
    """True when no entry is NaN or infinite.

    Fast path: a single reduction. The sum of finite numbers is either finite or overflows, and
    a NaN or infinity anywhere makes the sum non-finite; only then is the exact test run.
    """
    if bool(torch.isfinite(x.detach().sum())):
        return True
    return bool(torch.isfinite(x).all())


# --------------------------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------------------------


def is_real(value: object) -> bool:
    """A real number that is not a bool: ``int``, ``float``, NumPy integer/floating scalars."""
    return isinstance(value, (numbers.Real, torch.SymInt, torch.SymFloat)) and not isinstance(value, bool)


def check_real(value: object, name: str, *, allow_inf: bool = False) -> float:
    """A real number (Python or NumPy scalar) as ``float``; NaN rejected, infinities unless allowed."""
    if not is_real(value):
        raise TypeError(f"`{name}` must be a real number, got {value!r}")
    value = float(value)  # type: ignore[arg-type]
    if math.isnan(value) or (not allow_inf and math.isinf(value)):
        raise ValueError(f"`{name}` must be a finite number, got {value}")
    return value


def check_nonnegative(value: object, name: str) -> float:
    """Finite real ``>= 0``."""
    value = check_real(value, name)
    if value < 0:
        raise ValueError(f"`{name}` must be finite and >= 0, got {value}")
    return value


def check_positive(value: object, name: str) -> float:
    """Finite real ``> 0``."""
    value = check_nonnegative(value, name)
    if value == 0:
        raise ValueError(f"`{name}` must be > 0, got {value}")
    return value


def check_unit_interval(value: object, name: str, *, low_open: bool = True, high_open: bool = True) -> float:
    """Finite real in the interval between 0 and 1 (each end open or closed as asked)."""
    value = check_real(value, name)
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    if not (low_ok and high_ok):
        interval = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
        raise ValueError(f"`{name}` must be in {interval}, got {value}")
    return value


def check_count(value: object, name: str, minimum: int = 1) -> int:
    """Integer (Python or NumPy) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, torch.SymInt)):
        raise TypeError(f"`{name}` must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    return value


def check_k(
    k: object,
    name: str = "k",
    *,
    n_classes: int | None = None,
    integer: bool = True,
    minimum: float | None = None,
    below_n_classes: bool = False,
) -> int | float:
    r"""The one check for a set size / rank ``k`` (every entry point that takes a K uses it).

    * ``integer=True`` (top-K losses and metrics, ranks): an integer, or an integral float
      (``2.0``), Python or NumPy; returned as ``int``. Default range ``1 <= k``.
    * ``integer=False`` (average-K, expected positives): any finite real, fractional allowed
      (``1.5``); returned as ``float``. Default range ``0 < k``.

    ``minimum`` replaces the lower bound (inclusive). With ``n_classes`` the upper bound is
    ``k <= n_classes``, or ``k < n_classes`` with ``below_n_classes`` (a top-K hinge loss needs a
    (K+1)-th score). ``bool``, NaN and infinity are rejected, naming ``name``.
    """
    if not is_real(k):
        kind = "an integer" if integer else "a real number"
        raise TypeError(f"`{name}` must be {kind}, got {k!r}")
    value = float(k)  # type: ignore[arg-type]
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value}")
    if integer and not value.is_integer():
        raise ValueError(f"`{name}` must be a whole number, got {value}")
    result: int | float = int(value) if integer else value
    low_ok = result >= minimum if minimum is not None else (result >= 1 if integer else result > 0)
    high = None if n_classes is None else (n_classes - 1 if below_n_classes else n_classes)
    if not low_ok or (high is not None and result > high):
        low_txt = f"{minimum} <= " if minimum is not None else ("1 <= " if integer else "0 < ")
        high_txt = (
            ""
            if n_classes is None
            else (f" < n_classes = {n_classes}" if below_n_classes else f" <= n_classes = {n_classes}")
        )
        raise ValueError(f"`{name}` must satisfy {low_txt}{name}{high_txt}, got {result}")
    return result


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """One of the strings ``choices`` (the values of a ``Literal`` option)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}")
    return value


def check_bool(value: object, name: str) -> bool:
    """A ``bool`` (or NumPy bool)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be a bool, got {value!r}")
    return bool(value)


def check_generator(generator: object, name: str = "generator") -> torch.Generator | None:
    """``None`` or a :class:`torch.Generator`."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"`{name}` must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


# --------------------------------------------------------------------------------------------
# tensors
# --------------------------------------------------------------------------------------------


def check_tensor(x: object, name: str) -> torch.Tensor:
    """A :class:`torch.Tensor` (no conversion from arrays or lists)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_scores(scores: object, name: str = "scores", ndim: int | None = 2) -> torch.Tensor:
    """Floating tensor of shape (B, C) (or ``ndim`` dims), non-empty, finite."""
    scores = check_tensor(scores, name)
    if not scores.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {scores.dtype}")
    if ndim is not None and scores.dim() != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimensions (batch, classes), got shape {tuple(scores.shape)}")
    if scores.dim() == 0:
        raise ValueError(f"`{name}` must have at least one dimension")
    if scores.numel() == 0:
        raise ValueError(f"`{name}` is empty (shape {tuple(scores.shape)})")
    if _VALUE_CHECKS and not all_finite(scores):
        raise ValueError(f"`{name}` contains NaN or infinite values")
    return scores


def check_probabilities(probs: torch.Tensor, name: str = "scores") -> torch.Tensor:
    """Rows of probabilities: entries in [0, 1] and each row summing to 1 (data-dependent: runs
    only with the value checks on). Tolerance ``5e-3 + C * eps`` on the row sums, in float64:
    softmax outputs stored in half precision (relative rounding 5e-4 per entry) pass."""
    if not _VALUE_CHECKS:
        return probs
    p = probs.detach()
    if bool((p < 0).any()) or bool((p > 1).any()):
        raise ValueError(f"`{name}` must hold probabilities in [0, 1] (softmax outputs, not logits)")
    tolerance = 5e-3 + probs.shape[-1] * torch.finfo(probs.dtype).eps
    if float((p.double().sum(dim=-1) - 1.0).abs().max()) > tolerance:
        raise ValueError(f"`{name}` must hold probabilities: every row must sum to 1 (softmax outputs, not logits)")
    return probs


def check_targets(targets: object, n: int, n_classes: int, name: str = "targets") -> torch.Tensor:
    """Integer class indices of shape (n,), each in [0, n_classes)."""
    targets = check_tensor(targets, name)
    if targets.dtype == torch.bool or targets.is_floating_point() or targets.is_complex():
        raise TypeError(f"`{name}` must hold integer class indices, got dtype {targets.dtype}")
    if targets.dim() != 1 or targets.shape[0] != n:
        raise ValueError(f"`{name}` must have shape ({n},) to match the scores, got {tuple(targets.shape)}")
    if _VALUE_CHECKS and n > 0:
        lo, hi = (int(v) for v in torch.aminmax(targets.detach()))
        if lo < 0 or hi >= n_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(f"`{name}` holds class index {bad}, outside [0, {n_classes - 1}]")
    return targets.long()


def check_hits(correct: object, name: str = "correct") -> torch.Tensor:
    """Non-empty 1-D bool tensor of per-sample hits."""
    correct = check_tensor(correct, name)
    if correct.dtype != torch.bool:
        raise TypeError(f"`{name}` must be a bool tensor of per-sample hits, got dtype {correct.dtype}")
    if correct.dim() != 1:
        raise ValueError(f"`{name}` must be 1-D (one hit per sample), got shape {tuple(correct.shape)}")
    if correct.numel() == 0:
        raise ValueError(f"`{name}` is empty: no sample to average over")
    return correct


def check_sets(sets: object, name: str = "sets") -> torch.Tensor:
    """2-D bool tensor of prediction sets (n, C)."""
    sets = check_tensor(sets, name)
    if sets.dtype != torch.bool or sets.dim() != 2:
        raise TypeError(f"`{name}` must be a 2-D bool tensor, got {sets.dtype} with shape {tuple(sets.shape)}")
    return sets


def _as_float64_vector(values: object, name: str) -> torch.Tensor:
    """Numbers (tensor, array or sequence) as a float64 tensor, rejecting strings and bools; a
    tensor stays on its device, anything else lands on the CPU."""
    if isinstance(values, (str, bytes)):
        raise TypeError(f"`{name}` must be a sequence of numbers, got {type(values).__name__}")
    if isinstance(values, torch.Tensor):
        if values.dtype == torch.bool or values.is_complex():
            raise TypeError(f"`{name}` must hold real numbers, got dtype {values.dtype}")
        return values.detach().to(dtype=torch.float64)
    try:
        return torch.as_tensor(values, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"`{name}` must be a sequence of numbers: {err}") from None


def check_counts_vector(
    values: object,
    name: str,
    n_classes: int | None = None,
    *,
    positive: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per-class counts, 1-D, finite, ``> 0`` (``>= 0`` when not ``positive``), as float64 on
    ``device`` (default: where they are); one entry per class when ``n_classes`` is given, at
    least two otherwise. The values are read on the host only for CPU data or with the value
    checks on (counts already on an accelerator are a module buffer validated at construction)."""
    counts = _as_float64_vector(values, name)
    if counts.dim() != 1 or (n_classes is not None and counts.shape[0] != n_classes):
        want = f"one entry per class ({n_classes})" if n_classes is not None else "one count per class (1-D)"
        raise ValueError(f"`{name}` must have {want}, got shape {tuple(counts.shape)}")
    if n_classes is None and counts.numel() < 2:
        raise ValueError(f"`{name}` must have at least two classes, got shape {tuple(counts.shape)}")
    if _VALUE_CHECKS or counts.device.type == "cpu":
        bad = (counts <= 0) if positive else (counts < 0)
        if not bool(torch.isfinite(counts).all()) or bool(bad.any()):
            raise ValueError(f"`{name}` must be finite and {'> 0' if positive else '>= 0'} for every class")
    return counts if device is None else counts.to(device)


def reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply a validated ``reduction`` to per-sample losses.

    Per-sample losses of shape (B,) reduce to a scalar; those of a stacked call, shape (M, B),
    reduce over the batch dimension only, to one loss per member, shape (M,)."""
    if reduction == "none":
        return per_sample
    dim = -1 if per_sample.dim() >= 2 else None
    if reduction == "mean":
        return per_sample.mean(dim=dim) if dim is not None else per_sample.mean()
    return per_sample.sum(dim=dim) if dim is not None else per_sample.sum()


# --------------------------------------------------------------------------------------------
# hyperparameters: a Python number, or a tensor with one value per row or per member
# --------------------------------------------------------------------------------------------


def check_fits_dtype(value: float, name: str, dtype: torch.dtype, *, underflow: bool = False) -> float:
    """``value`` survives a cast to ``dtype``: finite there (no overflow to inf) and, with
    ``underflow`` (for a value that must stay > 0, such as a temperature), not a non-zero number
    below the smallest normal number of ``dtype``."""
    info = torch.finfo(dtype)
    if abs(value) > info.max:
        raise ValueError(f"`{name}` = {value:g} overflows {dtype} (largest finite value {info.max:g})")
    if underflow and value != 0 and abs(value) < info.tiny:
        raise ValueError(f"`{name}` = {value:g} underflows {dtype} (smallest normal value {info.tiny:g})")
    return value


def check_hyper(
    value: object,
    name: str,
    rows: tuple[int, ...],
    check,
    *,
    integer: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
    underflow: bool = False,
):
    r"""A loss hyperparameter: a Python/NumPy number as today, or a tensor of per-row values.

    The convention shared by every loss of :mod:`avgk_lib.functional`, for scores of shape
    ``(*rows, C)`` (``rows = (B,)``, or ``(M, B)`` for the stacked form of M models):

    * a number: the same value for every row (validated by ``check``, returned as a number);
    * a tensor of shape ``()``: the same, as a tensor;
    * a tensor of shape ``(rows[0],)``: one value per entry of the leading dimension, i.e. per
      row of ``(B, C)`` scores, or per member of stacked ``(M, B, C)`` scores;
    * a tensor of shape ``rows``: one value per row (``(M, B)`` for stacked scores).

    A tensor is returned detached, on ``device``, shaped to broadcast against ``rows``
    (``(M,)`` becomes ``(M, 1)``), as ``long`` when ``integer`` else as ``dtype``. Its smallest
    and largest values go through ``check`` (so the messages and bounds are those of the
    scalar form; NaN is rejected there), integers must be whole, and the cast to ``dtype`` must
    not overflow (nor, with ``underflow``, flush a positive value to zero or a subnormal). The
    value checks read the tensor on the host; they follow
    :func:`set_value_checks`, except for integer tensors (a rank ``k`` is always read: its
    maximum sizes the top-k).
    """
    if not isinstance(value, torch.Tensor):
        number = check(value)
        if dtype is not None and not integer:
            check_fits_dtype(float(number), name, dtype, underflow=underflow)
        return number
    if value.dtype == torch.bool or value.is_complex():
        raise TypeError(f"`{name}` must hold real numbers, got dtype {value.dtype}")
    shape, rows = tuple(value.shape), tuple(rows)
    if shape == () or shape == rows:
        out = value
    elif len(shape) == 1 and len(rows) >= 1 and shape[0] == rows[0]:
        out = value.reshape(shape[0], *([1] * (len(rows) - 1)))
    else:
        lead = f", ({rows[0]},) (one per {'member' if len(rows) == 2 else 'row'})" if rows else ""
        raise ValueError(f"`{name}` as a tensor must have shape (){lead} or {rows} (one per row), got {shape}")
    out = out.detach()
    if integer or _VALUE_CHECKS:
        lo, hi = (float(v) for v in torch.aminmax(out.to(torch.float64).reshape(-1)))
        check(lo)
        check(hi)
        if integer and out.is_floating_point() and not bool((out == out.round()).all()):
            raise ValueError(f"`{name}` must hold whole numbers")
    if integer:
        return out.to(device=device, dtype=torch.long)
    out = out.to(device=device, dtype=dtype or out.dtype)
    if _VALUE_CHECKS and dtype is not None:
        info = torch.finfo(dtype)
        if not all_finite(out):
            raise ValueError(f"`{name}` overflows {dtype} (largest finite value {info.max:g})")
        if underflow and bool(((out != 0) & (out.abs() < info.tiny)).any()):
            raise ValueError(f"`{name}` underflows {dtype} (smallest normal value {info.tiny:g})")
    return out


def check_threshold(threshold: object, scores: torch.Tensor) -> torch.Tensor:
    """A threshold as a 0-dim tensor of ``scores``' dtype and device: a real number (Python,
    NumPy) or a one-element real tensor; NaN rejected, +-inf allowed (``+inf`` is what
    :func:`~avgk_lib.metrics.average_k_threshold` returns for empty sets)."""
    if isinstance(threshold, torch.Tensor):
        if threshold.numel() != 1:
            raise ValueError(f"`threshold` must be a scalar, got shape {tuple(threshold.shape)}")
        if threshold.dtype == torch.bool or threshold.is_complex():
            raise TypeError(f"`threshold` must be a real number, got dtype {threshold.dtype}")
        if bool(torch.isnan(threshold)):
            raise ValueError("`threshold` is NaN")
        return threshold.reshape(()).to(device=scores.device, dtype=scores.dtype)
    threshold = check_real(threshold, "threshold", allow_inf=True)
    return torch.tensor(threshold, dtype=scores.dtype, device=scores.device)
