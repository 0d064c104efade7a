"""Every experiment of both papers as a named grid of runs, with three presets.

* ``smoke``: seconds, for CI (tiny data, one epoch, a few batches): same code path as the others.
* ``cpu``: real results on a laptop (Fashion-MNIST and synthetic data), minutes per run.
* ``gpu``: the papers' datasets and recipes (CIFAR-100, Pl@ntNet-300K; DESIGN section 5).

:func:`run_experiment` trains every (run, seed) that is not cached yet. A run lives in
``$AVGK_CACHE_DIR/runs/<config fingerprint>``: a finished run is reloaded, an interrupted one
resumed from its last checkpoint. The returned rows (one per run and seed) hold the run's
labels, its seed, its test metrics and its folder; :func:`summarize` turns them into means with
95% confidence intervals. Reference results are committed under ``results/`` by
``python -m avgk_lib run NAME --preset cpu --seeds 0 1 2 --save-reference``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import cache_dir
from .references import load_json_reference, reference_dir
from .train import TrainConfig, provenance, train

PRESETS = ("smoke", "cpu", "gpu")
RESULTS_DIR = reference_dir()


@dataclass(frozen=True)
class Run:
    """One cell of an experiment grid: labels for tables and plots, and the configuration."""

    labels: dict[str, Any]
    config: TrainConfig


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    grid: Callable[[str], list[Run]]
    notes: str = ""


# ------------------------------------------------------------------------------ recipes


def _fmnist(preset: str, **options: Any) -> dict[str, Any]:
    """Fashion-MNIST options for a preset (smoke: 2,000 training, 1,000 validation and test images)."""
    if preset == "smoke":
        options.update(train_subset=2000, n_val=1000, test_subset=1000)
    return options


def _cpu_recipe(preset: str, dataset: str, **extra: Any) -> dict[str, Any]:
    """Optimisation of the smoke and cpu presets: SGD + one-cycle, a handful of epochs."""
    cpu_epochs = extra.pop("cpu_epochs", 5)
    epochs = 1 if preset == "smoke" else cpu_epochs
    recipe = {
        "epochs": epochs,
        "batch_size": 128,
        "lr": 0.05 if dataset != "synthetic" else 0.1,
        "scheduler": "onecycle",
        "weight_decay": 5e-4,
        "max_batches": 8 if preset == "smoke" else None,
    }
    recipe.update(extra)
    return recipe


CIFAR_P1 = {  # DenseNet-BC 40-40, P1 / Berrada recipe
    "model": "densenet_bc_40_40",
    "epochs": 300,
    "batch_size": 64,
    "lr": 0.1,
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
    "lr": 0.002,
    "weight_decay": 1e-4,
    "scheduler": "step",
    "milestones": [21, 26],
    "lr_gamma": 0.1,
    "workers": 8,
}


def _label_noise(preset: str) -> list[Run]:
    losses = {
        "cross_entropy": {},
        "smooth_topk_svm": {"tau": 1.0},
        "noised_topk": {"epsilon": 0.2, "n_samples": 10},
    }
    if preset == "gpu":
        dataset, k, levels, base = "cifar100", 5, [0.0, 0.1, 0.2, 0.3, 0.4], dict(CIFAR_P1)
        options: Callable[[float], dict] = lambda p: {"label_noise": p}
        eval_ks = [1.0, 5.0]
    else:
        dataset, k = "fashion_mnist", 2
        levels = [0.0, 0.6] if preset == "smoke" else [0.0, 0.3, 0.6]
        base = _cpu_recipe(preset, dataset, cpu_epochs=5)
        options = lambda p: _fmnist(
            preset, label_noise=p, noise_block_size=2, **({"train_subset": 20000} if preset == "cpu" else {})
        )
        eval_ks = [1.0, 2.0]
    return [
        Run(
            {"loss": loss, "label_noise": p},
            TrainConfig(
                dataset=dataset,
                dataset_options=options(p),
                loss=loss,
                k=k,
                loss_options=hp,
                eval_ks=eval_ks,
                select_metric=f"top{k}_micro",
                **base,
            ),
        )
        for p in levels
        for loss, hp in losses.items()
    ]


def _long_tail(preset: str) -> list[Run]:
    losses = {
        "cross_entropy": {},
        "focal": {"gamma": 2.0},
        "ldam": {"max_margin": 0.2, "scale": 40.0},
        "noised_topk": {"epsilon": 1.0, "n_samples": 5},
        "imbalanced_noised_topk": {"epsilon": 0.01, "n_samples": 5, "max_margin": 0.2, "scale": 60.0},
    }
    runs = []
    if preset == "gpu":
        for loss, hp in losses.items():
            runs.append(
                Run(
                    {"dataset": "plantnet300k", "loss": loss},
                    TrainConfig(
                        dataset="plantnet300k",
                        loss=loss,
                        k=5,
                        loss_options=hp,
                        eval_ks=[1.0, 3.0, 5.0, 10.0],
                        select_metric="top5_macro",
                        **PLANTNET_P1,
                    ),
                )
            )
        return runs
    datasets = {
        "fashion_mnist_lt": (
            "fashion_mnist",
            _fmnist(preset, imbalance_ratio=100.0),
            _cpu_recipe(preset, "f", cpu_epochs=8),
        ),
        "synthetic_lt": (
            "synthetic",
            {
                "n_classes": 30,
                "dim": 16,
                "n_groups": 6,
                "ambiguity": 0.6,
                "imbalance_ratio": 100.0,
                "n_train": 20000 if preset == "cpu" else 3000,
                "balanced_eval": True,
            },
            _cpu_recipe(preset, "synthetic", cpu_epochs=30),
        ),
    }
    for label, (dataset, options, recipe) in datasets.items():
        for loss, hp in losses.items():
            runs.append(
                Run(
                    {"dataset": label, "loss": loss},
                    TrainConfig(
                        dataset=dataset,
                        dataset_options=options,
                        loss=loss,
                        k=2,
                        loss_options=hp,
                        eval_ks=[1.0, 2.0, 3.0],
                        select_metric="top2_macro",
                        **recipe,
                    ),
                )
            )
    return runs


P2_LOSSES = ("cross_entropy", "assume_negative", "an_ls", "wan", "epr", "role", "two_head")
K_DEPENDENT = ("epr", "role", "two_head")


def _average_k(preset: str) -> list[Run]:
    runs = []
    if preset == "gpu":
        settings = {
            "cifar100": ("cifar100", {}, dict(CIFAR_P1, model="resnet18_cifar"), [2.0, 3.0, 5.0, 10.0]),
            "plantnet300k": ("plantnet300k", {}, dict(PLANTNET_P1), [2.0, 3.0, 5.0, 10.0]),
        }
    else:
        fm_options = _fmnist(preset, **({"train_subset": 20000} if preset == "cpu" else {}))
        syn_options = {
            "n_classes": 30,
            "dim": 16,
            "n_groups": 6,
            "ambiguity": 0.85,
            "n_train": 20000 if preset == "cpu" else 3000,
        }
        ks = [1.5, 2.0] if preset == "smoke" else [1.5, 2.0, 3.0]
        settings = {
            "fashion_mnist": ("fashion_mnist", fm_options, _cpu_recipe(preset, "f", cpu_epochs=4), ks),
            "synthetic": ("synthetic", syn_options, _cpu_recipe(preset, "synthetic", cpu_epochs=30), ks),
        }
    for label, (dataset, options, recipe, ks) in settings.items():
        for loss in P2_LOSSES:
            for k in ks if loss in K_DEPENDENT else [ks[0]]:
                runs.append(
                    Run(
                        {"dataset": label, "loss": loss, "train_k": k if loss in K_DEPENDENT else None},
                        TrainConfig(
                            dataset=dataset,
                            dataset_options=options,
                            loss=loss,
                            k=k,
                            eval_ks=list(ks),
                            select_metric=f"avg{_k(k)}_micro",
                            **recipe,
                        ),
                    )
                )
    return runs


def _two_head_ablation(preset: str) -> list[Run]:
    """The choices P2 leaves open, one at a time around the default (synthetic data, K=2)."""
    options = {
        "n_classes": 30,
        "dim": 16,
        "n_groups": 6,
        "ambiguity": 0.85,
        "n_train": 20000 if preset != "smoke" else 3000,
    }
    recipe = _cpu_recipe("smoke" if preset == "smoke" else "cpu", "synthetic", cpu_epochs=30)
    variants = {
        "default": {},
        "eval softmax head": {"eval_head": "softmax"},
        "weight 0.3": {"loss_options": {"weight": 0.3}},
        "weight 3": {"loss_options": {"weight": 3.0}},
        "threshold rule": {"loss_options": {"rule": "threshold"}},
        "sum over classes": {"loss_options": {"class_reduction": "sum"}},
        "detached multi-label head": {"detach_multilabel": True},
        "warm-up 5 epochs": {"loss_options": {"warmup_epochs": 5}},
    }
    return [
        Run(
            {"variant": name},
            TrainConfig(
                dataset="synthetic",
                dataset_options=options,
                loss="two_head",
                k=2.0,
                eval_ks=[1.5, 2.0, 3.0],
                select_metric="avg2_micro",
                **{**recipe, **change},
            ),
        )
        for name, change in variants.items()
    ]


def _average_k_long_tail(preset: str) -> list[Run]:
    """Where P2's gains come from: softmax thresholding vs the two-head loss on long-tailed data."""
    runs = []
    for loss in ("cross_entropy", "two_head"):
        runs.append(
            Run(
                {"dataset": "fashion_mnist_lt", "loss": loss},
                TrainConfig(
                    dataset="fashion_mnist",
                    dataset_options=_fmnist(preset, imbalance_ratio=100.0),
                    loss=loss,
                    k=2.0,
                    eval_ks=[1.5, 2.0, 3.0],
                    select_metric="avg2_macro",
                    **(_cpu_recipe(preset if preset != "gpu" else "cpu", "f", cpu_epochs=8)),
                ),
            )
        )
    return runs


def _k(k: float) -> str:
    return str(int(k)) if float(k).is_integer() else f"{k:g}"


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in [
        Experiment(
            "label_noise", "P1 sec. 5.1: CE vs smooth SVM vs noised top-K under block label noise", _label_noise
        ),
        Experiment(
            "long_tail", "P1 sec. 5.2: CE, focal, LDAM, noised balanced/imbalanced on long-tailed data", _long_tail
        ),
        Experiment(
            "average_k", "P2: softmax thresholding, AN, AN-LS, WAN, EPR, ROLE and the two-head loss", _average_k
        ),
        Experiment("two_head_ablation", "P2: the open choices of the two-head loss, one at a time", _two_head_ablation),
        Experiment(
            "average_k_long_tail",
            "P2: two-head vs softmax thresholding on long-tailed Fashion-MNIST",
            _average_k_long_tail,
        ),
    ]
}


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; valid names: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def runs_of(name: str, preset: str, seeds: list[int]) -> list[Run]:
    if preset not in PRESETS:
        raise ValueError(f"`preset` must be one of {PRESETS}, got {preset!r}")
    return [
        Run({**run.labels, "seed": seed}, dataclasses.replace(run.config, seed=seed))
        for run in get_experiment(name).grid(preset)
        for seed in seeds
    ]


def run_dir(config: TrainConfig) -> Path:
    return cache_dir() / "runs" / config.fingerprint()


def run_experiment(
    name: str,
    preset: str = "cpu",
    seeds: list[int] | tuple[int, ...] = (0,),
    *,
    progress: bool = True,
    force: bool = False,
    log: Callable[[str], None] = print,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Train (or reload) every run of an experiment; one row per run and seed.

    Each row holds the run's labels, ``seed``, every test metric (prefixed ``test_``), the best
    epoch, the wall time and the run folder (whose ``scores.pt`` keeps validation and test scores).
    ``device`` does not change a run's identity: a run cached on a GPU is reused on a CPU."""
    rows = []
    runs = runs_of(name, preset, list(seeds))
    runs = [Run(r.labels, dataclasses.replace(r.config, device=device)) for r in runs]
    for i, run in enumerate(runs):
        folder = run_dir(run.config)
        done = folder / "results.json"
        if done.exists() and not force:
            results = json.loads(done.read_text())
            log(f"[{i + 1}/{len(runs)}] cached {run.labels} ({folder.name})")
        else:
            resume = (folder / "last.pt").exists() and not force
            if force and folder.exists():
                for f in ("last.pt", "best.pt", "results.json", "scores.pt"):
                    (folder / f).unlink(missing_ok=True)
            log(f"[{i + 1}/{len(runs)}] training {run.labels}{' (resuming)' if resume else ''}")
            results = train(run.config, folder, resume=resume, progress=progress, log=lambda *_: None)
        rows.append(
            {
                **run.labels,
                **{f"test_{k}": v for k, v in results["test"].items() if not k.endswith("_threshold")},
                "best_epoch": results["summary"]["best_epoch"],
                "wall_seconds": results["provenance"]["wall_seconds"],
                "run": str(folder),
            }
        )
    return rows


def save_reference(
    name: str, preset: str, seeds: list[int], rows: list[dict[str, Any]], directory: Path = RESULTS_DIR
) -> Path:
    """Write ``results/<name>_<preset>.json``: the rows (without local paths) and provenance."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}_{preset}.json"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    payload = {
        "experiment": name,
        "preset": preset,
        "seeds": list(seeds),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "provenance": provenance(device, 1),
        "total_wall_seconds": sum(r["wall_seconds"] for r in rows),
        "rows": [{k: v for k, v in r.items() if k != "run"} for r in rows],
    }
    path.write_text(json.dumps(payload, indent=1))
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
    """Two-sided 95% Student t quantile with n - 1 degrees of freedom."""
    table = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}
    return table.get(n, 1.96 + 2.4 / max(n - 1, 1))
