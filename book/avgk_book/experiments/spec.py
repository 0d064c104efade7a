"""The vocabulary of experiments: methods with tuning grids, settings, presets, runs."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from avgk_lib.config import TrainConfig
from avgk_lib.metrics import metric_key

PRESETS = ("smoke", "cpu", "colab", "gpu")
#: the two protocols (``book/protocol.md``): each paper's fixed recipe, and equal bracketed tuning
ARMS = ("paper", "tuned")
#: the data draws used for tuning: distinct from the evaluation seeds 0, 1, 2, ...; a grid point's
#: score is its mean best-validation metric over these draws
TUNING_SEEDS = (1000, 1001)
#: :class:`TrainConfig` fields a grid point or a method may set besides the loss options
RECIPE_KEYS = ("lr", "loss_lr_multiplier", "loss_weight", "optimizer", "weight_decay", "momentum", "nesterov")


def check_arm(arm: object) -> str:
    """``arm`` checked: one of :data:`ARMS`."""
    if not isinstance(arm, str) or arm not in ARMS:
        raise ValueError(f"`arm` must be one of {', '.join(ARMS)}, got {arm!r}")
    return arm


@dataclass(frozen=True)
class Method:
    """A loss in both arms.

    Tuned arm: fixed ``options`` and a ``grid`` of its own knobs, tuned together with the lr (over
    ``lr_grid`` when the method has its own, e.g. cross-entropy's finer ladder, else the setting's
    or preset's). With ``lr_per_scale`` the lr grid is on :math:`\\mathrm{lr} \\times s` (the loss is
    :math:`s` times a hinge on scaled logits): the trained lr is the grid value divided by ``scale``.
    Paper arm: ``paper`` holds the method's fixed values (loss options, and recipe fields such as
    ``optimizer``, ``lr``, ``weight_decay``), over ``options``; nothing is tuned or rescaled.
    Keys of :data:`RECIPE_KEYS` in options, grid or paper set :class:`TrainConfig` fields."""

    loss: str
    options: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    k_dependent: bool = False
    lr_per_scale: bool = False
    lr_grid: list[float] | None = None
    paper: dict[str, Any] = field(default_factory=dict)

    def knob_grid(self, lr_grid: list[float]) -> dict[str, list[float]]:
        """The tuned arm's base grid, lr first: ``{"lr": lr_grid, **knobs}`` (lr values on
        ``lr x scale`` when ``lr_per_scale``); which lr grid applies is
        :func:`~avgk_book.experiments.grid.lr_grid_of`'s choice (the method's own ``lr_grid`` unless
        the setting has one)."""
        return {"lr": sorted(lr_grid), **{k: list(v) for k, v in self.grid.items()}}

    def point(self, knobs: dict[str, Any]) -> dict[str, Any]:
        """The grid point trained for knob values: the lr divided by ``scale`` when ``lr_per_scale``."""
        scale = {**self.options, **knobs}.get("scale", 1.0) if self.lr_per_scale else 1.0
        return {**knobs, "lr": knobs["lr"] / scale}

    def points(self, lr_grid: list[float]) -> list[dict[str, Any]]:
        """Every point of the base grid (:meth:`knob_grid`), as trained (:meth:`point`)."""
        grid = self.knob_grid(lr_grid)
        return [self.point(dict(zip(grid, values, strict=True))) for values in itertools.product(*grid.values())]


@dataclass(frozen=True)
class Setting:
    """A dataset and recipe of one preset: ``labels`` name it in tables; ``ks`` are the K values
    evaluated; ``tune_k`` the K at which methods are tuned (and at which K-independent methods
    are trained); ``train_ks`` the K values K-dependent methods are trained at."""

    labels: dict[str, Any]
    dataset: str
    options: dict[str, Any]
    recipe: dict[str, Any]
    ks: list[float]
    tune_k: float
    select: str  # metric template, e.g. "top{k}_micro" or "avg{k}_macro"
    train_ks: list[float] | None = None
    methods: list[str] | None = None  # subset of the experiment's methods (None: all)
    max_seeds: int | None = None  # costly settings run only the first seeds
    lr_grid: list[float] | None = None  # a setting's own lr grid (same for every method)
    # untuned presets: each method's documented values; paper-arm settings: values over Method.paper
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    # added to the seed for the data draw (not the initialisation): a twin setting that shares its
    # twin's training data at equal offsets gets its own draws, so its runs are independent evidence
    data_seed_offset: int = 0
    # the labels of the setting whose tuning this one reuses (None: its own labels), e.g. a size of
    # the training-set-size sweep reuses the tuning of its 10,000-sample twin
    tuning_labels: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.select.count("{k}_") != 1:
            raise ValueError(f"`select` must be a template like 'top{{k}}_micro', got {self.select!r}")
        self.select_key(self.tune_k)  # a kind or average metric_key refuses fails here, at definition

    def picked_by(self, datasets: list[str] | None) -> bool:
        """Whether a ``datasets`` selection (``None``: everything) keeps this setting: it names the
        setting's dataset family (``"fashion_mnist"``: all its settings) or its dataset label
        (``"fashion_mnist-pairs"``: that setting only)."""
        return datasets is None or self.dataset in datasets or self.labels.get("dataset") in datasets

    def select_key(self, k: float) -> str:
        """The selection metric at ``k`` (``"top{k}_micro"`` at 5: ``"top5_micro"``), spelled by
        :func:`~avgk_lib.metrics.metric_key`."""
        kind, average = self.select.split("{k}_")
        return metric_key(kind, k, average)


@dataclass(frozen=True)
class Preset:
    """The settings of one preset in both arms: ``settings`` and ``lr_grid`` are the tuned arm's
    (tuned when ``tune``, else each setting's ``defaults``); ``paper`` the paper arm's settings
    (recipe with each paper's fixed values; None: no paper arm at this preset)."""

    settings: list[Setting]
    lr_grid: list[float]
    tune: bool = True
    note: str = ""
    paper: list[Setting] | None = None

    def arm(self, arm: str) -> list[Setting]:
        """The settings of an arm (``ValueError`` when the preset has no such arm)."""
        if check_arm(arm) == "paper":
            if self.paper is None:
                raise ValueError("`arm` 'paper' is not defined at this preset (no paper arm)")
            return self.paper
        return self.settings


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    methods: dict[str, Method]
    presets: dict[str, Preset]
    variants: dict[str, dict[str, Any]] | None = None  # ablations: config changes around the tuned default
    # take the tuned values of other experiments (same tuning labels), in this order
    tuned_by: str | tuple[str, ...] | None = None

    @property
    def tuned_from(self) -> tuple[str, ...]:
        """The experiments whose tuning this one reuses (empty: it tunes its own, or nothing)."""
        return (self.tuned_by,) if isinstance(self.tuned_by, str) else tuple(self.tuned_by or ())

    def preset(self, preset: str) -> Preset:
        if preset not in self.presets:
            raise ValueError(
                f"experiment {self.name!r} does not define preset {preset!r}; valid presets: {', '.join(self.presets)}"
            )
        return self.presets[preset]


@dataclass(frozen=True)
class GridRun:
    """One cell of an experiment grid: labels for tables and plots, and the configuration."""

    labels: dict[str, Any]
    config: TrainConfig


# ------------------------------------------------------------------------------ settings
