"""Every experiment of both papers, as data: settings per preset and methods with their grids."""

from __future__ import annotations

import dataclasses
from typing import Any

from .spec import Experiment, Method, Preset, Setting

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
