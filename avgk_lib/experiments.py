"""Every experiment of both papers as data: settings per preset, methods with tuning grids.

An :class:`Experiment` lists its **methods** (a loss, fixed options and a small grid of its own
sensitive knobs) and, for each **preset** it defines, its **settings** (a dataset with options, an
optimisation recipe, the K values). One function, :func:`expand`, turns an experiment, a preset,
seeds and the chosen hyperparameters into :class:`Run` objects; nothing else branches on presets.

Fair comparison (DESIGN section 11):

* **equal tuning budget**: every method is tuned on the *validation* split over the same learning-
  rate grid (:attr:`Preset.lr_grid`) crossed with the grid of its own knobs, at one tuning seed
  (:data:`TUNING_SEED`, a data draw of its own); the chosen values are then re-run over the
  evaluation seeds. :func:`tune` returns the grid, the validation score of every point and the
  choice; references record it under ``"tuning"``. For the imbalanced noised loss the learning
  rate grid is on ``lr x scale`` (its loss is ``scale`` times a hinge, so ``lr x scale`` is its
  effective step);
* **randomness per seed**: a run's seed draws its initialisation, batch order *and* its data:
  the synthetic samples and their label noise (``sample_seed``), Fashion-MNIST's split, subsample
  and noise pattern (``split_seed``, ``noise_seed``) and CIFAR-100's split and noise;
* presets: ``smoke`` (seconds, CI: numbers are not findings), ``cpu`` (a 2-core laptop), ``colab``
  (one free Colab GPU session per chapter) and ``gpu`` (the papers' full recipes). An experiment
  raises on a preset it does not define; there is no fallback.

:func:`run_experiment` trains every (run, seed) that is not cached yet. A run lives in
``$AVGK_CACHE_DIR/runs/<config fingerprint>``: a finished run is reloaded, an interrupted one
resumed from its last checkpoint, an unreadable one re-run (with a warning naming the folder).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import cache_dir
from .evaluation import k_label
from .references import load_json_reference, reference_dir
from .train import TrainConfig, provenance, train

PRESETS = ("smoke", "cpu", "colab", "gpu")
RESULTS_DIR = reference_dir()
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

SYNTHETIC_100 = {  # 100 classes in 20 groups of 5 similar classes, ambiguity uneven across groups
    "n_classes": 100,
    "dim": 16,
    "n_groups": 20,
    "ambiguity": 0.9,
    "max_radius": 2.0,
    "group_distance": 3.0,
    "n_train": 10_000,
    "n_val": 5_000,
    "n_test": 5_000,
}
SYNTHETIC_1000 = {  # GPU-sized: as many classes as Pl@ntNet-300K, 200 groups of 5
    **SYNTHETIC_100,
    "n_classes": 1000,
    "n_groups": 200,
    "dim": 32,
    "n_train": 200_000,
    "n_val": 50_000,
    "n_test": 50_000,
}
SMOKE_DATA = {"n_train": 2000, "n_val": 1000, "n_test": 1000}
CPU_SYNTHETIC = {"epochs": 20, "batch_size": 128, "scheduler": "cosine", "weight_decay": 5e-4}
CPU_FMNIST = {"epochs": 5, "batch_size": 128, "scheduler": "onecycle", "weight_decay": 5e-4}
SMOKE_RECIPE = {"epochs": 1, "batch_size": 128, "scheduler": "cosine", "weight_decay": 5e-4, "max_batches": 8}
COLAB_CIFAR = {  # ResNet-18 on a 20k-image subset of CIFAR-100: ~2 min a run on a T4-class GPU
    "lr": 0.1,
    "model": "resnet18_cifar",
    "epochs": 15,
    "batch_size": 128,
    "scheduler": "onecycle",
    "weight_decay": 5e-4,
    "workers": 2,
}
COLAB_SYNTHETIC = {"lr": 0.1, "epochs": 20, "batch_size": 512, "scheduler": "cosine", "weight_decay": 5e-4}
CIFAR_P1 = {  # DenseNet-BC 40-40, P1 / Berrada recipe
    "model": "densenet_bc_40_40",
    "epochs": 300,
    "batch_size": 64,
    "weight_decay": 1e-4,
    "scheduler": "step",
    "milestones": [151, 226],
    "lr_gamma": 0.1,
}
PLANTNET_P1 = {  # ResNet-50 pre-trained on ImageNet, P1 recipe
    "model": "resnet50",
    "pretrained": True,
    "epochs": 30,
    "batch_size": 32,
    "weight_decay": 1e-4,
    "scheduler": "step",
    "milestones": [21, 26],
    "lr_gamma": 0.1,
    "workers": 8,
}
LR_GRID = [0.03, 0.1, 0.3]


def _smoke(setting: Setting) -> Setting:
    """The smoke version of a cpu setting: the same code path on tiny data, one short epoch."""
    options = dict(setting.options)
    if setting.dataset == "synthetic":
        options.update(SMOKE_DATA)
    else:
        options.update(train_subset=2000, n_val=1000, test_subset=1000)
    recipe = {**SMOKE_RECIPE, **{k: v for k, v in setting.recipe.items() if k in ("model",)}}
    return dataclasses.replace(setting, options=options, recipe=recipe)


def _presets(
    cpu: list[Setting], colab: list[Setting], gpu: list[Setting] | None, colab_note: str = "", gpu_note: str = ""
) -> dict[str, Preset]:
    presets = {
        "smoke": Preset([_smoke(s) for s in cpu], [0.1], note="CI: seconds, numbers are not findings"),
        "cpu": Preset(cpu, LR_GRID, note="a 2-core laptop: minutes a run"),
        "colab": Preset(colab, [0.1], tune=False, note=colab_note),
    }
    if gpu is not None:
        presets["gpu"] = Preset(gpu, [0.1], tune=False, note=gpu_note)
    return presets


# ------------------------------------------------------------------------------ P1

P1_NOISE_METHODS = {
    "cross_entropy": Method("cross_entropy"),
    "smooth_topk_svm": Method("smooth_topk_svm", {"alpha": 1.0}, {"tau": [0.1, 1.0]}),
    "noised_topk": Method("noised_topk", {"n_samples": 5}, {"epsilon": [0.05, 0.2, 1.0]}),
}


def _noise_setting(dataset: str, p: float, **kw: Any) -> Setting:
    if dataset == "synthetic":
        return Setting(
            {"dataset": "synthetic-100", "label_noise": p},
            "synthetic",
            {**SYNTHETIC_100, "label_noise": p},
            CPU_SYNTHETIC,
            [1.0, 5.0],
            5.0,
            "top{k}_micro",
        )
    if dataset == "fashion_mnist":
        return Setting(
            {"dataset": "fashion_mnist", "label_noise": p},
            "fashion_mnist",
            {"label_noise": p, "noise_groups": "semantic", "train_subset": 10_000},
            CPU_FMNIST,
            [1.0, 2.0],
            2.0,
            "top{k}_micro",
            max_seeds=3,
            lr_grid=[0.05, 0.2],
        )
    epochs = kw.get("epochs", 15)
    recipe = dict(CIFAR_P1, lr=0.1) if epochs == 300 else dict(COLAB_CIFAR, epochs=epochs)
    options = {"label_noise": p, **({"train_subset": 20_000} if epochs != 300 else {})}
    labels = {"dataset": "cifar100", "label_noise": p}
    paper = {"noised_topk": {"epsilon": 0.2, "n_samples": 10}, "smooth_topk_svm": {"tau": 1.0}}
    return Setting(labels, "cifar100", options, recipe, [1.0, 5.0], 5.0, "top{k}_micro", defaults=paper)


LABEL_NOISE = Experiment(
    "label_noise",
    "P1: cross-entropy, smooth top-K SVM and noised top-K under label noise inside groups of similar classes",
    P1_NOISE_METHODS,
    _presets(
        cpu=[_noise_setting("synthetic", p) for p in (0.0, 0.6)] + [_noise_setting("fashion_mnist", 0.6)],
        colab=[_noise_setting("cifar100", p) for p in (0.0, 0.4)],
        gpu=[_noise_setting("cifar100", p, epochs=300) for p in (0.0, 0.1, 0.2, 0.3, 0.4)],
        colab_note="CIFAR-100, P1 noise protocol, ResNet-18, 20k training images, 15 epochs: 6 runs, ~15 min on a T4",
        gpu_note="P1's recipe: DenseNet-BC 40-40, 300 epochs (about 5 h a run on a T4, 1 h on an A100)",
    ),
)

P1_LT_METHODS = {
    "cross_entropy": Method("cross_entropy"),
    "focal": Method("focal", grid={"gamma": [1.0, 2.0]}),
    "ldam": Method("ldam", {"scale": 30.0}, {"max_margin": [0.2, 0.5]}),
    "noised_topk": Method("noised_topk", {"n_samples": 5}, {"epsilon": [0.05, 0.2, 1.0]}),
    "imbalanced_noised_topk": Method(
        "imbalanced_noised_topk",
        {"n_samples": 5, "epsilon": 0.01, "scale": 60.0},
        {"max_margin": [0.0, 0.1, 0.2]},
        lr_per_scale=True,
    ),
}


P1_PLANTNET_VALUES = {  # P1's published command lines for Pl@ntNet-300K
    "focal": {"gamma": 2.0},
    "ldam": {"max_margin": 0.2, "scale": 40.0},
    "noised_topk": {"epsilon": 1.0, "n_samples": 5},
    "imbalanced_noised_topk": {"epsilon": 0.01, "n_samples": 5, "max_margin": 0.2, "scale": 60.0},
}


def _lt_setting(name: str, options: dict[str, Any], recipe: dict[str, Any], ks: list[float], k: float) -> Setting:
    return Setting({"dataset": name}, "synthetic", options, recipe, ks, k, "top{k}_macro")


LONG_TAIL = Experiment(
    "long_tail",
    "P1: CE, focal, LDAM, noised balanced and imbalanced top-K on long-tailed data (val/test long-tailed)",
    P1_LT_METHODS,
    _presets(
        cpu=[
            _lt_setting("synthetic-100-lt", {**SYNTHETIC_100, "imbalance_ratio": 100.0}, CPU_SYNTHETIC, [1.0, 5.0], 5),
            _lt_setting(
                "synthetic-100-lt-balanced-test",
                {**SYNTHETIC_100, "imbalance_ratio": 100.0, "balanced_eval": True},
                CPU_SYNTHETIC,
                [1.0, 5.0],
                5,
            ),
        ],
        colab=[
            _lt_setting(
                "synthetic-1000-lt", {**SYNTHETIC_1000, "imbalance_ratio": 100.0}, COLAB_SYNTHETIC, [1.0, 5.0], 5
            )
        ],
        gpu=[
            Setting(
                {"dataset": "plantnet300k"},
                "plantnet300k",
                {},
                dict(PLANTNET_P1, lr=0.002),
                [1.0, 3.0, 5.0, 10.0],
                5.0,
                "top{k}_macro",
                defaults=P1_PLANTNET_VALUES,
            )
        ],
        colab_note="Pl@ntNet-300K (32 GB) does not fit a free Colab session: a 1,000-class long-tailed synthetic task "
        "(ratio 100, val/test long-tailed) stands in, ~10 min on a T4",
        gpu_note="Pl@ntNet-300K v1.1, P1's recipe (ResNet-50 pre-trained, 30 epochs): about 6 h a run on an A100",
    ),
)

# ------------------------------------------------------------------------------ P2

P2_METHODS = {
    "cross_entropy": Method("cross_entropy"),
    "assume_negative": Method("assume_negative"),
    "an_ls": Method("an_ls", grid={"label_smoothing": [0.1, 0.3]}),
    "wan": Method("wan"),
    "epr": Method("epr", k_dependent=True),
    "role": Method("role", grid={"loss_lr_multiplier": [1.0, 10.0]}, k_dependent=True),
    # the multi-label head's loss is a mean over C classes: its weight grid spans 1 to C
    "two_head": Method("two_head", grid={"weight": [1.0, 10.0, 100.0]}, k_dependent=True),
}
P2_LOSSES = tuple(P2_METHODS)
K_DEPENDENT = tuple(name for name, m in P2_METHODS.items() if m.k_dependent)


def _avgk_setting(name: str, dataset: str, options, recipe, ks, k, select="avg{k}_micro", train_ks="all", **kw):
    """An average-K setting; K-dependent methods are trained at every K of ``ks`` unless ``train_ks``."""
    train_ks = ks if train_ks == "all" else train_ks
    return Setting({"dataset": name}, dataset, options, recipe, ks, k, select, train_ks=train_ks, **kw)


AVERAGE_K = Experiment(
    "average_k",
    "P2: softmax thresholding, AN, AN-LS, WAN, EPR, ROLE and the two-head loss",
    P2_METHODS,
    _presets(
        cpu=[
            _avgk_setting("synthetic-100", "synthetic", SYNTHETIC_100, CPU_SYNTHETIC, [2.0, 3.0, 5.0], 3.0),
            _avgk_setting(
                "fashion_mnist",
                "fashion_mnist",
                {"train_subset": 10_000},
                CPU_FMNIST,
                [1.5, 2.0],
                1.5,
                methods=["cross_entropy", "two_head"],
                max_seeds=3,
                lr_grid=[0.05, 0.2],
            ),
        ],
        colab=[
            _avgk_setting(
                "cifar100", "cifar100", {"train_subset": 20_000}, COLAB_CIFAR, [2.0, 3.0, 5.0], 3.0, train_ks=None
            )
        ],
        gpu=[
            _avgk_setting("cifar100", "cifar100", {}, dict(CIFAR_P1, model="resnet18_cifar", lr=0.1), [2, 3, 5, 10], 5),
            _avgk_setting("plantnet300k", "plantnet300k", {}, dict(PLANTNET_P1, lr=0.002), [2, 3, 5, 10], 5),
        ],
        colab_note="CIFAR-100, ResNet-18, 20k training images, 15 epochs, every loss trained at K=3: "
        "7 runs, ~15 min on a T4",
        gpu_note="P2's datasets with P1's recipes (P2's own recipe is not public)",
    ),
)

AVERAGE_K_LONG_TAIL = Experiment(
    "average_k_long_tail",
    "P2: two-head vs softmax thresholding on long-tailed data (val/test long-tailed)",
    {name: P2_METHODS[name] for name in ("cross_entropy", "two_head")},
    _presets(
        cpu=[
            _avgk_setting(
                "synthetic-100-lt",
                "synthetic",
                {**SYNTHETIC_100, "imbalance_ratio": 100.0},
                CPU_SYNTHETIC,
                [3.0],
                3.0,
                select="avg{k}_macro",
            )
        ],
        colab=[
            _avgk_setting(
                "synthetic-1000-lt",
                "synthetic",
                {**SYNTHETIC_1000, "imbalance_ratio": 100.0},
                COLAB_SYNTHETIC,
                [3.0, 5.0],
                3.0,
                select="avg{k}_macro",
            )
        ],
        gpu=None,
        colab_note="1,000 classes, ratio 100: ~5 min on a T4",
    ),
)

TWO_HEAD_ABLATION = Experiment(
    "two_head_ablation",
    "P2: the choices the paper leaves open, one at a time around the tuned two-head loss (synthetic, K=3)",
    {"two_head": P2_METHODS["two_head"]},
    {
        name: preset
        for name, preset in _presets(
            cpu=[_avgk_setting("synthetic-100", "synthetic", SYNTHETIC_100, CPU_SYNTHETIC, [3.0], 3.0)],
            colab=[],
            gpu=None,
        ).items()
        if name in ("smoke", "cpu")
    },
    tuned_by="average_k",
    variants={
        "default": {},
        "eval softmax head": {"eval_head": "softmax"},
        "threshold rule": {"loss_options": {"rule": "threshold"}},
        "weight 1 (untuned)": {"loss_options": {"weight": 1.0}},
        "detached multi-label head": {"detach_multilabel": True},
        "warm-up 5 epochs": {"loss_options": {"warmup_epochs": 5}},
    },
)

EXPERIMENTS: dict[str, Experiment] = {
    e.name: e for e in (LABEL_NOISE, LONG_TAIL, AVERAGE_K, AVERAGE_K_LONG_TAIL, TWO_HEAD_ABLATION)
}


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


def run_dir(config: TrainConfig) -> Path:
    return cache_dir() / "runs" / config.fingerprint()


def _cached_results(folder: Path) -> dict[str, Any] | None:
    """A finished run's results, or None (missing, unreadable or incomplete: re-run with a warning)."""
    done = folder / "results.json"
    if not done.exists():
        return None
    try:
        results = json.loads(done.read_text())
        results["test"], results["summary"]["best_epoch"]  # noqa: B018 (the keys rows need)
        return results
    except (OSError, ValueError, KeyError, TypeError) as error:
        warnings.warn(f"ignoring the unreadable cached run in {folder} ({error}); training it again", stacklevel=3)
        done.unlink(missing_ok=True)
        return None


def train_or_load(
    config: TrainConfig, *, force: bool = False, progress: bool = True, log: Callable[[str], None] = print
) -> tuple[dict[str, Any], Path, bool]:
    """(results, folder, cached) of one run: reloaded when finished, resumed when interrupted."""
    folder = run_dir(config)
    if force and folder.exists():
        for f in ("last.pt", "best.pt", "results.json", "scores.pt"):
            (folder / f).unlink(missing_ok=True)
    results = _cached_results(folder)
    if results is not None:
        return results, folder, True
    resume = (folder / "last.pt").exists()
    results = train(config, folder, resume=resume, progress=progress, log=lambda *_: None)
    return results, folder, False


def run_experiment(
    name: str,
    preset: str = "cpu",
    seeds: list[int] | tuple[int, ...] = (0,),
    *,
    progress: bool = True,
    force: bool = False,
    log: Callable[[str], None] = print,
    device: str = "auto",
    overrides: dict[str, Any] | None = None,
    chosen: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Train (or reload) every run of an experiment; one row per run and seed (see :func:`run_row`).

    Hyperparameters: ``chosen`` (e.g. from :func:`tune`), else the tuned values committed in the
    experiment's reference for this preset, else each method's first grid point (logged).
    ``device`` does not change a run's identity: a run cached on a GPU is reused on a CPU."""
    if chosen is None:
        chosen = chosen_from_reference(name, preset)
        if not chosen:
            log(f"{name} ({preset}): no tuned values committed for this preset; using each method's first grid point")
    runs = expand(name, preset, list(seeds), chosen, {**(overrides or {}), "device": device})
    rows = []
    started = time.time()
    for i, run in enumerate(runs):
        results, folder, cached = train_or_load(run.config, force=force, progress=progress, log=log)
        row = run_row(run, results, folder)
        rows.append(row)
        log(_row_line(i, len(runs), run, row, cached, time.time() - started))
    return rows


def _row_line(i: int, n: int, run: Run, row: dict[str, Any], cached: bool, elapsed: float) -> str:
    select = run.config.select_metric
    labels = ", ".join(f"{k}={v}" for k, v in run.labels.items() if v is not None)
    status = "cached" if cached else f"{row['wall_seconds']:.0f}s"
    test = row.get("test_" + select, math.nan)
    return (
        f"[{i + 1}/{n}] {labels}: val {select} {row['best_val']:.4f}, test {test:.4f} ({status}; {elapsed:.0f}s so far)"
    )


def run_row(run: Run, results: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A table row: the run's labels, its hyperparameters, test metrics of the best-validation
    checkpoint (``test_*``) and of the last epoch (``last_*``), per-head metrics of two-head models
    (``softmax_*``, ``multilabel_*``), the validation curve of the selection metric, collapse flags
    and the run folder."""
    select = run.config.select_metric
    row = {
        **run.labels,
        "lr": run.config.lr,
        **{f"opt_{k}": v for k, v in run.config.loss_options.items()},
        **_prefixed("test_", results["test"]),
        **_prefixed("last_", results.get("test_last", {})),
        "best_epoch": results["summary"]["best_epoch"],
        "best_val": results["summary"]["best_val"],
        "val_curve": [epoch["val"][select] for epoch in results["history"]],
        "warnings": results.get("warnings", []),
        "wall_seconds": results["provenance"]["wall_seconds"],
        "run": str(folder),
    }
    for head, metrics in results.get("test_heads", {}).items():
        row.update(_prefixed(f"{head}_", metrics))
    return row


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in metrics.items() if not k.endswith("_threshold")}


# ------------------------------------------------------------------------------ tuning


def tune(
    name: str,
    preset: str,
    *,
    progress: bool = False,
    log: Callable[[str], None] = print,
    device: str = "auto",
) -> dict[str, dict[str, Any]]:
    """Grid search on the validation split, one tuning seed, the same lr grid for every method.

    The lr grid is extended (same ratio, at most :data:`MAX_EXTENSIONS` steps each way) while a
    method's best point lies on its edge, so that every method's optimum is bracketed: a loss
    averaged over C sigmoid outputs needs a step about C times larger than cross-entropy.
    Returns, per ``tuning_key(setting, method)``: ``grid`` (every point with its best validation
    score of the setting's selection metric), ``chosen`` (the best point), ``metric`` and
    ``lr_grid`` (the base lr values tried)."""
    experiment = get_experiment(name)
    spec = experiment.preset(preset)
    out: dict[str, dict[str, Any]] = {}
    if experiment.tuned_by or not spec.tune:
        return out
    for setting in spec.settings:
        if _has_unbalanced_twin(spec, setting):
            continue  # the balanced-test variant reuses the choices of its long-tailed twin
        for method_name, method in _methods_of(experiment, setting).items():

            def score(point: dict[str, Any], setting=setting, method=method, method_name=method_name) -> dict:
                config = _config(setting, method, point, setting.tune_k, TUNING_SEED, {"device": device})
                try:
                    results, _, cached = train_or_load(config, progress=progress, log=log)
                except (FloatingPointError, ValueError) as error:  # diverged: the point is out of the loss's range
                    if isinstance(error, ValueError) and "NaN" not in str(error) and "inf" not in str(error):
                        raise
                    log(f"tune {name}/{tuning_key(setting, method_name)} {point}: diverged ({error})")
                    return {**point, "val": -math.inf, "best_epoch": 0, "diverged": True}
                value = results["summary"]["best_val"]
                best = results["history"][results["summary"]["best_epoch"] - 1]["val"]
                if best.get(f"avg{k_label(setting.tune_k)}_size", 0.0) > 1.5 * setting.tune_k:
                    value = -math.inf  # degenerate sets (ties): never chosen
                log(f"tune {name}/{tuning_key(setting, method_name)} {point}: val {value:.4f}{' (cached)' * cached}")
                return {**point, "val": value, "best_epoch": results["summary"]["best_epoch"]}

            entry = _bracketing_search(method, list(setting.lr_grid or spec.lr_grid), score)
            entry["metric"] = setting.select.format(k=k_label(setting.tune_k))
            out[tuning_key(setting, method_name)] = entry
    for setting in spec.settings:  # balanced-test twins take the long-tailed choices
        twin = _unbalanced_twin(spec, setting)
        if twin is not None:
            for method_name in _methods_of(experiment, setting):
                key = tuning_key(twin, method_name)
                out[tuning_key(setting, method_name)] = {**out[key], "reused_from": key}
    return out


MAX_EXTENSIONS = 2


def _bracketing_search(method: Method, lr_grid: list[float], score: Callable[[dict], dict]) -> dict[str, Any]:
    """Score ``method.points(lr_grid)``; extend the lr grid past an edge holding the best point."""
    tried = sorted(lr_grid)
    scored = [score(p) for p in method.points(tried)]
    for _ in range(MAX_EXTENSIONS):
        best_lr = _base_lr(method, max(scored, key=_value))
        if len(tried) < 2 or best_lr not in (tried[0], tried[-1]):
            break
        new = _next_lr(tried[0], -1) if best_lr == tried[0] else _next_lr(tried[-1], +1)
        tried = sorted([*tried, new])
        scored += [score(p) for p in method.points([new])]
    best = max(scored, key=_value)
    return {
        "grid": scored,
        "lr_grid": tried,
        "chosen": {k: v for k, v in best.items() if k not in ("val", "best_epoch", "diverged")},
    }


def _next_lr(lr: float, direction: int) -> float:
    """The next value of the 1-3-10 sequence (..., 0.01, 0.03, 0.1, 0.3, 1, ...) below or above ``lr``."""
    ladder = [round(m * 10.0**e, 12) for e in range(-6, 4) for m in (1.0, 3.0)]
    if direction < 0:
        return max(v for v in ladder if v < lr * (1 - 1e-9))
    return min(v for v in ladder if v > lr * (1 + 1e-9))


def _value(point: dict[str, Any]) -> float:
    return point["val"] if math.isfinite(point["val"]) else -math.inf


def _base_lr(method: Method, point: dict[str, Any]) -> float:
    """The lr-grid value a point came from (undoing ``lr_per_scale``)."""
    if not method.lr_per_scale:
        return point["lr"]
    return point["lr"] * {**method.options, **point}.get("scale", 1.0)


def _unbalanced_twin(spec: Preset, setting: Setting) -> Setting | None:
    if not setting.options.get("balanced_eval"):
        return None
    options = {k: v for k, v in setting.options.items() if k != "balanced_eval"}
    return next((s for s in spec.settings if s.options == options and s is not setting), None)


def _has_unbalanced_twin(spec: Preset, setting: Setting) -> bool:
    return _unbalanced_twin(spec, setting) is not None


# ------------------------------------------------------------------------------ references


def save_reference(
    name: str,
    preset: str,
    seeds: list[int],
    rows: list[dict[str, Any]],
    directory: Path = RESULTS_DIR,
    tuning: dict[str, Any] | None = None,
) -> Path:
    """Write ``<name>_<preset>.json``: the rows (without local paths), the tuning and provenance."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}_{preset}.json"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    payload = {
        "experiment": name,
        "preset": preset,
        "seeds": list(seeds),
        "tuning_seed": TUNING_SEED,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "provenance": provenance(device, 1),
        "total_wall_seconds": sum(r["wall_seconds"] for r in rows),
        "tuning": tuning or {},
        "rows": [{k: v for k, v in r.items() if k != "run"} for r in rows],
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)
    return path


def load_reference(name: str, preset: str = "cpu", directory: Path = RESULTS_DIR) -> dict[str, Any] | None:
    """The committed reference results of an experiment, or ``None`` when there are none."""
    if directory is not RESULTS_DIR:
        path = Path(directory) / f"{name}_{preset}.json"
        return json.loads(path.read_text()) if path.exists() else None
    return load_json_reference(f"{name}_{preset}")


def summarize(rows: list[dict[str, Any]], by: list[str], metrics: list[str]) -> list[dict[str, Any]]:
    """Mean and 95% confidence half-width (Student t over seeds) of ``metrics`` per group ``by``."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(b) for b in by), []).append(row)
    out = []
    for key, members in groups.items():
        entry: dict[str, Any] = dict(zip(by, key, strict=True))
        entry["n_seeds"] = len(members)
        for m in metrics:
            values = [r[m] for r in members if m in r and r[m] is not None]
            mean = sum(values) / len(values) if values else math.nan
            entry[m] = mean
            entry[f"{m}_ci95"] = _t95(len(values)) * _std(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def _std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _t95(n: int) -> float:
    """Two-sided 95% Student t quantile with n - 1 degrees of freedom (exact to 3 decimals to n = 31)."""
    table = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145]
    return table[n - 2] if 2 <= n < len(table) + 2 else 2.0 + 2.5 / max(n - 1, 1)
