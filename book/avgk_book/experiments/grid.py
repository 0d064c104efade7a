"""One function, :func:`expand`, turns an experiment, a preset, seeds and tuned values into runs."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from avgk_lib.config import ConfigError, TrainConfig
from avgk_lib.data import DATASETS, dataset_info
from avgk_lib.data.base import SEED_LIMIT

from .catalog import CHAPTERS, EXPERIMENTS
from .results import load_reference
from .spec import PRESETS, RECIPE_KEYS, Experiment, GridRun, Method, Preset, Setting, check_arm


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; valid names: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def _setting_label(setting: Setting) -> str:
    dataset, *rest = (f"{v}" if k == "dataset" else f"{k}={v}" for k, v in setting.labels.items())
    return f"{dataset} ({', '.join(rest)})" if rest else dataset


def preset_table(presets: Iterable[str] = PRESETS) -> str:
    """Markdown table of which chapter runs which experiment at which preset, generated from the
    catalog: per preset the settings and the runs per seed of each arm (tuned + paper), "not
    defined" where the experiment raises on that preset.

    Example:
        >>> print(preset_table(["cpu"]).splitlines()[0])
        | chapter | experiment | cpu |
    """
    if isinstance(presets, str) or not isinstance(presets, Iterable):
        raise TypeError(f"`presets` must be a list of preset names, got {presets!r}")
    presets = list(presets)
    unknown = [p for p in presets if p not in PRESETS]
    if not presets or unknown:
        raise ValueError(f"`presets` must be a non-empty list of {', '.join(PRESETS)}, got {presets!r}")
    lines = ["| chapter | experiment | " + " | ".join(presets) + " |", "|---" * (len(presets) + 2) + "|"]
    for name, experiment in EXPERIMENTS.items():
        cells = []
        for preset in presets:
            spec = experiment.presets.get(preset)
            if spec is None:
                cells.append("not defined")
                continue
            runs = {
                arm: len(expand(name, preset, [0], arm=arm))
                for arm in ("tuned", "paper")
                if spec.paper or arm == "tuned"
            }
            counts = " + ".join(f"{n} {arm}" for arm, n in runs.items())
            cells.append(f"{'; '.join(_setting_label(s) for s in spec.settings)}: {counts} runs a seed")
        chapter = CHAPTERS.get(name, "")
        lines.append(f"| {chapter} | `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ expansion


def _config(
    setting: Setting, method: Method, point: dict[str, Any], k: float, seed: int, overrides: dict[str, Any]
) -> TrainConfig:
    """The TrainConfig of one method at one grid point, K and seed: the setting's recipe, the
    method's options and the point (keys of :data:`RECIPE_KEYS` set :class:`TrainConfig` fields,
    the others are loss options), the data drawn from ``seed + setting.data_seed_offset``."""
    recipe = {"lr": 0.1, **setting.recipe}
    loss_options = {}
    for key, value in {**method.options, **point}.items():
        if key in RECIPE_KEYS:
            recipe[key] = value
        else:
            loss_options[key] = value
    options = dict(setting.options)
    for key in dataset_info(setting.dataset).seeded_options:
        options[key] = seed + setting.data_seed_offset
    fields = {
        "dataset": setting.dataset,
        "dataset_options": options,
        "loss": method.loss,
        "k": float(k),
        "loss_options": loss_options,
        "eval_ks": sorted({float(x) for x in setting.ks} | {float(k)}),
        "select_metric": setting.select_key(k),
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
    arm: str = "tuned",
    datasets: list[str] | None = None,
) -> list[GridRun]:
    """Every run of an experiment at a preset in one arm: settings x methods x training K x seeds
    (x variants); every run's labels hold ``arm``.

    Tuned arm: ``chosen`` maps ``tuning_key(setting, method)`` to the tuned grid point (``{"lr":
    ..., knobs}``); a method without an entry uses :func:`_untuned_point`. Paper arm
    (``arm="paper"``): each method's fixed values (:func:`paper_point`), nothing chosen.
    ``overrides`` change any :class:`TrainConfig` field of every run (``dataset_options`` and
    ``loss_options`` are merged), e.g. ``{"epochs": 3}``. ``datasets`` keeps only the settings
    of these dataset families or labels (e.g. ``["synthetic"]``, ``["fashion_mnist-pairs"]``;
    ``None``: every setting; :meth:`Setting.picked_by`)."""
    experiment = get_experiment(name)
    spec = experiment.preset(preset)
    arm = check_arm(arm)
    settings = spec.arm(arm)
    if datasets is not None:
        known = {s.dataset for s in settings} | {s.labels.get("dataset") for s in settings} - {None}
        if not isinstance(datasets, (list, tuple)) or not set(datasets) <= known:
            raise ValueError(f"`datasets` must be a list of {sorted(known)}, got {datasets!r}")
        settings = [s for s in settings if s.picked_by(datasets)]
    seeds = check_seeds(seeds)
    overrides = check_overrides(overrides, owned=("seed",))
    chosen = check_chosen(chosen, name, preset, arm)
    runs = []
    for setting in settings:
        for method_name, method in _methods_of(experiment, setting).items():
            if arm == "paper":
                point = paper_point(setting, method_name, method)
            else:
                point = chosen.get(tuning_key(setting, method_name)) or _untuned_point(
                    spec, setting, method_name, method
                )
            setting_seeds = seeds[: setting.max_seeds] if setting.max_seeds else seeds
            for k, seed in itertools.product(_train_ks(setting, method), setting_seeds):
                for variant, change in (experiment.variants or {"": {}}).items():
                    labels = {**setting.labels, "arm": arm, "loss": method_name, "seed": seed}
                    labels["train_k"] = k if method.k_dependent else None
                    if variant:
                        labels["variant"] = variant
                    runs.append(GridRun(labels, _config(setting, method, point, k, seed, {**change, **overrides})))
    for run in runs:  # every configuration checked before any run trains
        _check_run(run)
    return runs


def _check_run(run: GridRun) -> None:
    """``run.config.validate()``, its error naming the run's labels too."""
    try:
        run.config.validate()
    except ConfigError as err:
        labels = ", ".join(f"{k}={v}" for k, v in run.labels.items() if v is not None)
        raise ConfigError(err.field, f"{err.detail} (run {labels})") from None


def lr_grid_of(spec: Preset, setting: Setting, method: Method) -> list[float]:
    """The tuned arm's lr grid of a method in a setting: the setting's own grid (smoke: 0.1), else
    the method's (cross-entropy's finer ladder), else the preset's."""
    return list(setting.lr_grid or method.lr_grid or spec.lr_grid)


def _untuned_point(spec: Preset, setting: Setting, name: str, method: Method) -> dict[str, Any]:
    """Tuned arm without tuning: the setting's documented values for the method's knobs (else the
    loss's own defaults) at the recipe's lr (else the first of the lr grid), divided by ``scale``
    for the scaled-logit losses (``lr_per_scale``) as in tuning."""
    lr = setting.recipe.get("lr", lr_grid_of(spec, setting, method)[0])
    return method.point({"lr": lr, **setting.defaults.get(name, {})})


def paper_point(setting: Setting, name: str, method: Method) -> dict[str, Any]:
    """Paper arm: the recipe's lr, then the method's paper values (``Method.paper``: loss options,
    and for the multi-label baselines Adam's optimiser and lr), then the setting's (``defaults``);
    nothing rescaled."""
    if not isinstance(setting, Setting) or not isinstance(method, Method):
        raise TypeError("`setting` and `method` must be a Setting and a Method")
    return {"lr": setting.recipe.get("lr", 0.1), **method.paper, **setting.defaults.get(name, {})}


def tuning_key(setting: Setting | Mapping[str, Any], method: str) -> str:
    """The key of a method's tuning on a setting (or on a setting's labels, e.g. a reference row's
    ``{"dataset": ..., "label_noise": ...}``): ``dataset=synthetic-100/label_noise=0.6/noised_topk``."""
    labels = (setting.tuning_labels or setting.labels) if isinstance(setting, Setting) else setting
    return "/".join([*(f"{k}={v}" for k, v in labels.items()), method])


def chosen_from_reference(name: str, preset: str, arm: str = "tuned") -> dict[str, dict[str, Any]]:
    """Tuned grid points recorded in the committed reference of this experiment and preset (of the
    experiment it is ``tuned_by``: only the entries of this experiment's own settings and methods),
    from its tuned arm (``"arms": {"tuned": {"tuning": ...}}``, or a one-arm reference's ``tuning``).
    The paper arm tunes nothing: ``{}``."""
    if check_arm(arm) == "paper":
        return {}
    sources = get_experiment(name).tuned_from or (name,)
    tuning = {}
    for source in sources:
        tuning.update(reference_tuning(load_reference(source, preset)))
    keys = tuning_keys(name, preset)
    return {key: entry["chosen"] for key, entry in tuning.items() if key in keys}


def reference_tuning(reference: Mapping[str, Any] | None) -> dict[str, Any]:
    """The tuning record of a reference's tuned arm (``{}`` when it has none)."""
    if not reference:
        return {}
    if not isinstance(reference, Mapping):
        raise TypeError(f"`reference` must be a dict, got {type(reference).__name__}")
    part = reference.get("arms", {}).get("tuned", {}) if "arms" in reference else reference
    return dict(part.get("tuning") or {})


def tuning_keys(name: str, preset: str) -> list[str]:
    """Every ``tuning_key(setting, method)`` of an experiment at a preset: the keys ``chosen`` may hold."""
    experiment = get_experiment(name)
    spec = experiment.preset(preset)
    return [tuning_key(s, m) for s in spec.settings for m in _methods_of(experiment, s)]


# ------------------------------------------------------------------------------ argument checks

#: run arguments that another argument of run_experiment owns: an override would be silently lost
#: or would train runs under wrong labels
OWNED_BY = {"seed": "seeds=", "device": "device="}


def check_seeds(seeds: object) -> list[int]:
    """``seeds`` as a list: a non-empty sequence of integer seeds in ``[0, 2**63)``."""
    if isinstance(seeds, (str, bytes, Mapping)) or not isinstance(seeds, Iterable):
        raise TypeError(f"`seeds` must be a list of integer seeds such as [0, 1, 2], got {seeds!r}")
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"`seeds` must be a non-empty list of non-negative integers, got {seeds!r}")
    too_big = [s for s in seeds if s >= SEED_LIMIT]
    if too_big:
        raise ValueError(f"`seeds` must be < 2**63 (int64 seeds), got {too_big}")
    return seeds


def check_overrides(overrides: object, owned: tuple[str, ...] = tuple(OWNED_BY)) -> dict[str, Any]:
    """``overrides`` as a dict of :class:`TrainConfig` fields (``{}`` for None). Rejected, naming the
    key: an unknown field, a field in ``owned`` (``seed`` belongs to ``seeds=``, ``device`` to
    ``device=``), dataset options that the seed draws (:attr:`~avgk_lib.data.DatasetInfo.seeded_options`), and
    ``dataset_options`` / ``loss_options`` that are not dicts."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise TypeError(f"`overrides` must be a dict of TrainConfig fields such as {{'epochs': 3}}, got {overrides!r}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in overrides.items():
        if key not in fields:
            raise ValueError(
                f"`overrides` key {key!r} is not a TrainConfig field; valid keys: {', '.join(sorted(fields))}"
            )
        if key in owned:
            raise ValueError(
                f"`overrides` key {key!r} is set by the argument {OWNED_BY[key]} of run_experiment; pass it there"
            )
        if key in ("dataset_options", "loss_options") and not isinstance(value, Mapping):
            raise TypeError(f"`overrides` key {key!r} must be a dict, got {value!r}")
    seeded = {o for info in DATASETS.values() for o in info.seeded_options}
    for key in overrides.get("dataset_options", {}):
        if key in seeded:
            raise ValueError(
                f"`overrides` dataset option {key!r} is drawn from each run's seed; choose seeds with seeds="
            )
    return dict(overrides)


def check_chosen(chosen: object, name: str, preset: str, arm: str = "tuned") -> dict[str, dict[str, Any]]:
    """``chosen`` as a dict (``{}`` for None) whose keys are tuning keys of the experiment at the preset
    (:func:`tuning_keys`) and whose values are dicts of grid values; an unknown key is rejected naming it.
    The paper arm takes no ``chosen`` (nothing is tuned)."""
    if chosen is None:
        return {}
    if check_arm(arm) == "paper" and chosen:
        raise ValueError("`chosen` must be empty in the paper arm: each method runs its paper's fixed values")
    if not isinstance(chosen, Mapping):
        raise TypeError(f"`chosen` must be a dict of tuning_key -> grid point (as tune() returns), got {chosen!r}")
    keys = tuning_keys(name, preset)
    for key, point in chosen.items():
        if key not in keys:
            raise ValueError(
                f"`chosen` key {key!r} is not a setting/method of experiment {name!r} at preset {preset!r}; "
                f"valid keys: {', '.join(keys)}"
            )
        if not isinstance(point, Mapping):
            raise TypeError(
                f"`chosen` entry {key!r} must be a dict of grid values such as {{'lr': 0.1}}, got {point!r}"
            )
    return dict(chosen)


# ------------------------------------------------------------------------------ running
