"""Input validation shared by every loss and metric.

Every public function of :mod:`avgk_lib` validates its inputs with these helpers so that a
mistake surfaces as a :class:`ValueError` or :class:`TypeError` that names the offending
argument, never as a silent ``nan`` or a cryptic indexing error deep inside autograd.

The value checks (finiteness of scores, range of targets) read the data, which costs one
device synchronisation on CUDA. :func:`set_value_checks` turns them off for tuned training
loops; shape, dtype and argument checks always run because they are free.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

REDUCTIONS = ("mean", "sum", "none")
AVERAGES = ("micro", "macro")

_VALUE_CHECKS = True


def set_value_checks(enabled: bool) -> None:
    """Enable or disable the data-dependent checks (NaN/inf scores, target range)."""
    global _VALUE_CHECKS
    _VALUE_CHECKS = bool(enabled)


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


def check_tensor(x: object, name: str) -> torch.Tensor:
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
        raise ValueError(f"`{name}` is empty (shape {tuple(scores.shape)}): an empty batch has no loss")
    if _VALUE_CHECKS and not all_finite(scores):
        raise ValueError(f"`{name}` contains NaN or infinite values")
    return scores


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


def check_loss_k(k: object, n_classes: int, name: str = "k") -> int:
    """Integer k with 1 <= k < C (a top-K loss needs a (k+1)-th score to compare with)."""
    if isinstance(k, bool) or not isinstance(k, (int, torch.SymInt)) and not (isinstance(k, float) and k.is_integer()):
        raise TypeError(f"`{name}` must be an integer, got {k!r}")
    k = int(k)
    if k < 1 or k >= n_classes:
        raise ValueError(f"`{name}` must satisfy 1 <= {name} < n_classes = {n_classes}, got {k}")
    return k


def check_topk_k(k: object, n_classes: int, name: str = "k") -> int:
    """Integer k with 1 <= k <= C (top-K accuracy)."""
    if isinstance(k, bool) or not isinstance(k, int) and not (isinstance(k, float) and k.is_integer()):
        raise TypeError(f"`{name}` must be an integer, got {k!r}")
    k = int(k)
    if k < 1 or k > n_classes:
        raise ValueError(f"`{name}` must satisfy 1 <= {name} <= n_classes = {n_classes}, got {k}")
    return k


def check_average_k(k: object, n_classes: int, name: str = "k") -> float:
    """Real average set size with 0 < k <= C (average-K may be fractional, e.g. 1.5)."""
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise TypeError(f"`{name}` must be a real number, got {k!r}")
    k = float(k)
    if not math.isfinite(k) or k <= 0 or k > n_classes:
        raise ValueError(f"`{name}` must satisfy 0 < {name} <= n_classes = {n_classes}, got {k}")
    return k


def check_nonnegative(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be finite and >= 0, got {value}")
    return value


def check_positive(value: object, name: str) -> float:
    value = check_nonnegative(value, name)
    if value == 0:
        raise ValueError(f"`{name}` must be > 0, got {value}")
    return value


def check_count(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    return value


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}")
    return value  # type: ignore[return-value]


def check_class_counts(class_counts: object, n_classes: int, device: torch.device) -> torch.Tensor:
    """Positive per-class training counts, length C, returned as float64 on ``device``."""
    if isinstance(class_counts, torch.Tensor):
        counts = class_counts.detach().to(device=device, dtype=torch.float64)
    else:
        try:
            counts = torch.as_tensor(class_counts, dtype=torch.float64, device=device)
        except (TypeError, ValueError) as err:
            raise TypeError(f"`class_counts` must be a sequence of numbers: {err}") from None
    if counts.dim() != 1 or counts.shape[0] != n_classes:
        raise ValueError(f"`class_counts` must have one entry per class ({n_classes}), got shape {tuple(counts.shape)}")
    if not bool(torch.isfinite(counts).all()) or bool((counts <= 0).any()):
        raise ValueError("`class_counts` must be finite and > 0 for every class")
    return counts


def reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply a validated ``reduction`` to per-sample losses."""
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample
