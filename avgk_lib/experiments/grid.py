"""One function, :func:`expand`, turns an experiment, a preset, seeds and tuned values into runs."""

from __future__ import annotations

import itertools
from typing import Any

from ..config import TrainConfig
from ..evaluation import k_label
from .catalog import EXPERIMENTS
from .results import load_reference
from .spec import Experiment, Method, Preset, Run, Setting


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; valid names: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def presets_of(name: str) -> list[str]:
    """The presets an experiment defines."""
    return list(get_experiment(name).presets)


# ------------------------------------------------------------------------------ expansion

SEEDED_OPTIONS = {  # data randomness drawn from the run's seed, per dataset
    "synthetic": ("sample_seed",),
    "fashion_mnist": ("split_seed", "noise_seed"),
    "cifar100": ("split_seed", "noise_seed"),
    "plantnet300k": (),
}


def _config(
    setting: Setting, method: Method, point: dict[str, Any], k: float, seed: int, overrides: dict[str, Any]
) -> TrainConfig:
    """The TrainConfig of one method at one grid point, K and seed."""
    point = dict(point)
    recipe = {**setting.recipe}
    recipe["lr"] = point.pop("lr", recipe.get("lr", 0.1))
    loss_lr = point.pop("loss_lr_multiplier", None)
    if loss_lr is not None:
        recipe["loss_lr_multiplier"] = loss_lr
    options = dict(setting.options)
    for key in SEEDED_OPTIONS.get(setting.dataset, ()):
        options[key] = seed
    fields = {
        "dataset": setting.dataset,
        "dataset_options": options,
        "loss": method.loss,
        "k": float(k),
        "loss_options": {**method.options, **point},
        "eval_ks": sorted({float(x) for x in setting.ks} | {float(k)}),
        "select_metric": setting.select.format(k=k_label(k)),
        "seed": seed,
        **recipe,
    }
    for key, value in overrides.items():
        if key == "dataset_options":
            fields["dataset_options"] = {**fields["dataset_options"], **value}
        elif key == "loss_options":
            fields["loss_options"] = {**fields["loss_options"], **value}
        else:
            fields[key] = value
    return TrainConfig(**fields)


def _methods_of(experiment: Experiment, setting: Setting) -> dict[str, Method]:
    names = setting.methods or list(experiment.methods)
    return {n: experiment.methods[n] for n in names}


def _train_ks(setting: Setting, method: Method) -> list[float]:
    if method.k_dependent and setting.train_ks:
        return [float(k) for k in setting.train_ks]
    return [float(setting.tune_k)]


def expand(
    name: str,
    preset: str,
    seeds: list[int],
    chosen: dict[str, dict[str, Any]] | None = None,
    overrides: dict[str, Any] | None = None,
) -> list[Run]:
    """Every run of an experiment at a preset: settings x methods x training K x seeds (x variants).

    ``chosen`` maps ``tuning_key(setting, method)`` to the tuned grid point (``{"lr": ..., knobs}``);
    a method without an entry uses the first lr of the preset's grid and its first knob values.
    ``overrides`` change any :class:`TrainConfig` field of every run (``dataset_options`` and
    ``loss_options`` are merged), e.g. ``{"epochs": 3}``."""
    experiment = get_experiment(name)
    spec = experiment.preset(preset)
    chosen, overrides = chosen or {}, overrides or {}
    seeds = _check_seeds(seeds)
    runs = []
    for setting in spec.settings:
        for method_name, method in _methods_of(experiment, setting).items():
            point = chosen.get(tuning_key(setting, method_name)) or _untuned_point(spec, setting, method_name, method)
            setting_seeds = seeds[: setting.max_seeds] if setting.max_seeds else seeds
            for k, seed in itertools.product(_train_ks(setting, method), setting_seeds):
                for variant, change in (experiment.variants or {"": {}}).items():
                    labels = {**setting.labels, "loss": method_name, "seed": seed}
                    labels["train_k"] = k if method.k_dependent else None
                    if variant:
                        labels["variant"] = variant
                    runs.append(Run(labels, _config(setting, method, point, k, seed, {**change, **overrides})))
    return runs


def _untuned_point(spec: Preset, setting: Setting, name: str, method: Method) -> dict[str, Any]:
    """Without tuning: the recipe's lr (else the first of the grid) and the setting's paper values
    for the method's knobs (else the loss's own defaults)."""
    lr = setting.recipe.get("lr", method.points(setting.lr_grid or spec.lr_grid)[0]["lr"])
    return {"lr": lr, **setting.defaults.get(name, {})}


def runs_of(name: str, preset: str, seeds: list[int], overrides: dict[str, Any] | None = None) -> list[Run]:
    """The runs of an experiment with the tuned values of its committed reference (if any)."""
    return expand(name, preset, seeds, chosen_from_reference(name, preset), overrides)


def tuning_key(setting: Setting, method: str) -> str:
    return "/".join([*(f"{k}={v}" for k, v in setting.labels.items()), method])


def chosen_from_reference(name: str, preset: str) -> dict[str, dict[str, Any]]:
    """Tuned grid points recorded in the committed reference of this experiment and preset."""
    reference = load_reference(get_experiment(name).tuned_by or name, preset)
    if not reference or "tuning" not in reference:
        return {}
    return {key: entry["chosen"] for key, entry in reference["tuning"].items()}


def _check_seeds(seeds) -> list[int]:
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"`seeds` must be a non-empty list of non-negative integers, got {seeds!r}")
    return seeds


# ------------------------------------------------------------------------------ running
