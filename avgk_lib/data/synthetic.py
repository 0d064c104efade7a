r"""Synthetic classification data whose true posterior :math:`p(y \mid x)` is known exactly.

Classes are isotropic Gaussians :math:`x \mid y \sim \mathcal N(\mu_y, I_d)` with priors
:math:`\pi_y`, so the Bayes posterior is a softmax of known logits:

.. math:: p(y \mid x) = \mathrm{softmax}_y\Big(\log \pi_y - \tfrac12 \lVert x - \mu_y\rVert^2\Big).

The class means are arranged in ``n_groups`` well separated groups (centres at distance
``group_distance``); inside a group the means sit on a small sphere whose radius varies from
group to group between ``(1 - ambiguity) * max_radius`` and ``max_radius``. Inputs near a tight group are
ambiguous between its classes, inputs near a loose group are easy: ambiguity varies across the
input space, which is what makes average-K (adaptive set sizes) beat top-K. ``imbalance_ratio``
gives long-tailed priors :math:`\pi_c \propto r^{-c/(C-1)}` (class 0 the most frequent).

Because the posterior is known, :mod:`avgk_lib.data.oracle` gives Bayes-optimal top-K and
average-K sets and their accuracies. :func:`load_synthetic` is the ``synthetic`` dataset's loader
(declared by :data:`INFO`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_count
from . import base
from .base import (
    DatasetBundle,
    DatasetInfo,
    TensorSplit,
    check_imbalance_ratio,
    check_label_noise,
    check_memory,
    check_seed,
    derived_seed,
)
from .corruption import group_label_noise


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of the generator (all documented in the module docstring)."""

    n_classes: int = 20
    dim: int = 16
    n_groups: int = 5
    ambiguity: float = 0.8
    max_radius: float = 3.0
    group_distance: float = 8.0
    imbalance_ratio: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_count(self.n_classes, "n_classes", minimum=2)
        check_count(self.dim, "dim", minimum=1)
        check_count(self.n_groups, "n_groups", minimum=1)
        if self.n_groups > self.n_classes:
            raise ValueError(f"`n_groups` ({self.n_groups}) must be <= `n_classes` ({self.n_classes})")
        if not 0.0 <= self.ambiguity <= 1.0:
            raise ValueError(f"`ambiguity` must be in [0, 1], got {self.ambiguity}")
        if not self.imbalance_ratio >= 1.0:
            raise ValueError(f"`imbalance_ratio` must be >= 1, got {self.imbalance_ratio}")
        if not self.max_radius > 0 or not self.group_distance > 0:
            raise ValueError("`max_radius` and `group_distance` must be > 0")


class SyntheticTask:
    """A fixed synthetic problem: class means, priors, and samplers with known posteriors.

    Example:
        >>> task = SyntheticTask(SyntheticSpec(n_classes=6, dim=4, n_groups=2, seed=0))
        >>> x, y, posterior = task.sample(5, seed=1)
        >>> x.shape, y.shape, posterior.shape
        (torch.Size([5, 4]), torch.Size([5]), torch.Size([5, 6]))
        >>> bool(torch.allclose(posterior.sum(1), torch.ones(5, dtype=torch.float64)))
        True
    """

    def __init__(self, spec: SyntheticSpec = SyntheticSpec()) -> None:
        self.spec = spec
        g = torch.Generator().manual_seed(spec.seed)
        c, d = spec.n_classes, spec.dim
        group_of_class = torch.arange(c) % spec.n_groups
        centres = torch.randn(spec.n_groups, d, generator=g, dtype=torch.float64)
        centres = centres / centres.norm(dim=1, keepdim=True) * spec.group_distance
        # group radii from loose (easy) to tight (ambiguous)
        low = (1.0 - spec.ambiguity) * spec.max_radius
        radii = torch.linspace(spec.max_radius, max(low, 1e-3), spec.n_groups, dtype=torch.float64)
        directions = torch.randn(c, d, generator=g, dtype=torch.float64)
        directions = directions / directions.norm(dim=1, keepdim=True)
        self.means = centres[group_of_class] + radii[group_of_class, None] * directions
        self.group_of_class = group_of_class
        ranks = torch.arange(c, dtype=torch.float64)
        weights = spec.imbalance_ratio ** (-ranks / max(c - 1, 1))
        self.priors = weights / weights.sum()

    @property
    def n_classes(self) -> int:
        return self.spec.n_classes

    def posterior(self, x: torch.Tensor, priors: torch.Tensor | None = None) -> torch.Tensor:
        r""":math:`p(y \mid x)` for inputs ``x`` of shape (n, d), float64, under the task's priors
        (or ``priors``, e.g. uniform for the balanced splits)."""
        priors = self.priors if priors is None else priors
        return torch.softmax(priors.log() - 0.5 * torch.cdist(x.to(torch.float64), self.means).pow(2), dim=1)

    def sample(
        self, n: int, seed: int, balanced: bool = False, posterior: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Draw ``n`` samples: inputs (float32), labels and true posteriors (float64).

        ``balanced=True`` draws labels uniformly (balanced validation/test splits); the posterior
        returned is then the one of the balanced distribution (uniform priors).
        ``posterior=False`` returns ``None`` in its place (half the cost of a draw; the inputs and
        labels are the same).
        """
        check_count(n, "n")
        g = torch.Generator().manual_seed(seed)
        priors = torch.full_like(self.priors, 1.0 / self.n_classes) if balanced else self.priors
        y = torch.multinomial(priors, n, replacement=True, generator=g)
        x = (self.means[y] + torch.randn(n, self.spec.dim, generator=g, dtype=torch.float64)).float()
        if not posterior:
            return x, y, None
        return x, y, self.posterior(x, priors)  # the posterior of the float32 inputs actually returned

    def bayes_entropy(self, posterior: torch.Tensor) -> torch.Tensor:
        """Entropy (nats) of each posterior row: the input's intrinsic ambiguity."""
        p = posterior.clamp_min(1e-300)
        return -(p * p.log()).sum(dim=1)


def load_synthetic(
    *,
    n_classes: int = 20,
    dim: int = 16,
    n_groups: int = 5,
    ambiguity: float = 0.8,
    max_radius: float = 3.0,
    group_distance: float = 8.0,
    imbalance_ratio: float = 1.0,
    n_train: int = 10_000,
    n_val: int = 5_000,
    n_test: int = 5_000,
    task_seed: int = 0,
    sample_seed: int | None = None,
    balanced_eval: bool = False,
    label_noise: float = 0.0,
) -> DatasetBundle:
    """Synthetic data of :class:`SyntheticTask`; ``extra`` holds the task and the true posteriors
    of the validation and test inputs (``val_posterior``, ``test_posterior``).

    ``task_seed`` fixes the problem (class means, groups); ``sample_seed`` (default: the task seed)
    draws the train/validation/test samples and the label noise, so experiments pass the training
    seed here and their intervals cover data randomness too. ``label_noise`` redraws each
    *training* label with probability p among the classes of its group (P1's protocol of blocks
    of similar classes); validation and test labels stay clean. With ``imbalance_ratio > 1`` the
    validation and test splits follow the same long-tailed priors as training (Pl@ntNet-300K's
    protocol) unless ``balanced_eval=True``."""
    label_noise = check_label_noise(label_noise)
    check_imbalance_ratio(imbalance_ratio)
    check_seed(task_seed, "task_seed")
    draw = task_seed if sample_seed is None else check_seed(sample_seed, "sample_seed")
    sizes = {"n_train": n_train, "n_val": n_val, "n_test": n_test}
    for name, n in sizes.items():
        check_count(n, name)
    spec = SyntheticSpec(
        n_classes, dim, n_groups, ambiguity, max_radius, group_distance, imbalance_ratio=imbalance_ratio, seed=task_seed
    )
    _check_synthetic_memory(sizes, n_classes, dim)
    task = SyntheticTask(spec)
    x_tr, y_tr, _ = task.sample(n_train, seed=derived_seed(draw * 1000 + 1), posterior=False)
    x_va, y_va, p_va = task.sample(n_val, seed=derived_seed(draw * 1000 + 2), balanced=balanced_eval)
    x_te, y_te, p_te = task.sample(n_test, seed=derived_seed(draw * 1000 + 3), balanced=balanced_eval)
    train = TensorSplit(x_tr, y_tr)
    if label_noise > 0:
        noisy = group_label_noise(y_tr, label_noise, task.group_of_class, derived_seed(draw * 1000 + 4))
        train = TensorSplit(x_tr, noisy, y_tr)
    return DatasetBundle(
        name="synthetic",
        n_classes=n_classes,
        train=train,
        val=TensorSplit(x_va, y_va),
        test=TensorSplit(x_te, y_te),
        input_shape=(dim,),
        class_names=[f"class {c}" for c in range(n_classes)],
        train_counts=torch.bincount(train.y, minlength=n_classes).tolist(),
        extra={"task": task, "val_posterior": p_va, "test_posterior": p_te, "label_noise": label_noise},
    )


def _synthetic_bytes(sizes: dict[str, int], n_classes: int, dim: int) -> int:
    """Bytes :func:`load_synthetic` allocates: the class means (three float64 (C, d) buffers); kept, per
    sample, float32 inputs, an int64 label and float64 posteriors; while one split is drawn, per
    sample, three float64 input buffers and four float64 (n, C) buffers (distances, logits, softmax)."""
    kept = sum(sizes.values()) * (4 * dim + 8 + 8 * n_classes)
    peak = max(sizes.values()) * (24 * dim + 32 * n_classes)
    return 24 * n_classes * dim + kept + peak


def _check_synthetic_memory(sizes: dict[str, int], n_classes: int, dim: int) -> None:
    """Refuse, before allocating, data larger than the available memory, naming the option at fault:
    ``n_classes`` or ``dim`` when their default would fit, else the largest split."""
    available = base.available_memory()
    nbytes = _synthetic_bytes(sizes, n_classes, dim)
    if available is None or nbytes <= available:
        return
    default = SyntheticSpec()
    name = max(sizes, key=lambda key: sizes[key])
    if _synthetic_bytes(sizes, min(n_classes, default.n_classes), dim) <= available:
        name = "n_classes"
    elif _synthetic_bytes(sizes, n_classes, min(dim, default.dim)) <= available:
        name = "dim"
    what = f"{sum(sizes.values())} synthetic samples of dimension {dim} with {n_classes} classes"
    check_memory(nbytes, name, what, available)


INFO = DatasetInfo(
    "synthetic",
    load_synthetic,
    default_model="mlp",
    input_shape=lambda options: (options["dim"],),
    seeded_options=("sample_seed",),
    counts=("n_classes", "dim", "n_groups", "n_train", "n_val", "n_test"),
    classes_option="n_classes",
)
