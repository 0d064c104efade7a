"""The vocabulary of experiments: methods with tuning grids, settings, presets, runs."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from ..config import TrainConfig

PRESETS = ("smoke", "cpu", "colab", "gpu")
#: the data draw used for tuning: distinct from the evaluation seeds 0, 1, 2, ...
TUNING_SEED = 1000


@dataclass(frozen=True)
class Method:
    """A loss with fixed options and a grid of its own knobs (tuned together with the lr)."""

    loss: str
    options: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    k_dependent: bool = False
    lr_per_scale: bool = False

    def points(self, lr_grid: list[float]) -> list[dict[str, Any]]:
        """Every grid point: ``{"lr": ..., **knobs}`` (lr divided by ``scale`` when ``lr_per_scale``)."""
        names = list(self.grid)
        out = []
        for lr, values in itertools.product(lr_grid, itertools.product(*self.grid.values())):
            knobs = dict(zip(names, values, strict=True))
            scale = {**self.options, **knobs}.get("scale", 1.0) if self.lr_per_scale else 1.0
            out.append({"lr": lr / scale, **knobs})
        return out


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
    lr_grid: list[float] | None = None  # costly settings: a shorter lr grid (same for every method)
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)  # untuned presets: the papers' values


@dataclass(frozen=True)
class Preset:
    settings: list[Setting]
    lr_grid: list[float]
    tune: bool = True
    note: str = ""


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    methods: dict[str, Method]
    presets: dict[str, Preset]
    variants: dict[str, dict[str, Any]] | None = None  # ablations: config changes around the tuned default
    tuned_by: str | None = None  # take the tuned values of another experiment (same setting labels)

    def preset(self, preset: str) -> Preset:
        if preset not in self.presets:
            raise ValueError(
                f"experiment {self.name!r} does not define preset {preset!r}; valid presets: {', '.join(self.presets)}"
            )
        return self.presets[preset]


@dataclass(frozen=True)
class Run:
    """One cell of an experiment grid: labels for tables and plots, and the configuration."""

    labels: dict[str, Any]
    config: TrainConfig


# ------------------------------------------------------------------------------ settings
