"""Datasets: ``synthetic`` (known posteriors), ``fashion_mnist``, ``cifar100``, ``plantnet300k``.

:func:`load_dataset` is the single entry point used by the trainer and the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._checks import check_count
from . import base, cifar100, fashion_mnist, plantnet
from .base import (
    DataFolderError,
    DatasetBundle,
    DatasetInfo,
    DownloadError,
    TensorSplit,
    cache_dir,
    check_imbalance_ratio,
    check_label_noise,
    check_memory,
    check_seed,
    data_dir,
    derived_seed,
)
from .cifar100 import load_cifar100
from .corruption import group_label_noise
from .fashion_mnist import load_fashion_mnist
from .loader import InMemoryLoader, make_loader
from .plantnet import load_plantnet300k
from .synthetic import SyntheticSpec, SyntheticTask, long_tail_counts


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
    import torch

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
    x_tr, y_tr, _ = task.sample(n_train, seed=derived_seed(draw * 1000 + 1))
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


SYNTHETIC = DatasetInfo(
    "synthetic",
    load_synthetic,
    default_model="mlp",
    input_shape=lambda options: (options["dim"],),
    seeded_options=("sample_seed",),
    counts=("n_classes", "dim", "n_groups", "n_train", "n_val", "n_test"),
    classes_option="n_classes",
)
#: every dataset's declaration (:class:`DatasetInfo`), by name
DATASETS: dict[str, DatasetInfo] = {
    info.name: info for info in (SYNTHETIC, fashion_mnist.INFO, cifar100.INFO, plantnet.INFO)
}
LOADERS: dict[str, Callable[..., DatasetBundle]] = {name: info.loader for name, info in DATASETS.items()}


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of dataset ``name``; ``ValueError`` listing the valid names otherwise."""
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def dataset_input_shape(name: str, options: dict[str, Any] | None = None) -> tuple[int, ...]:
    """The shape of one input of dataset ``name`` with loader ``options``, known before loading:
    ``(dim,)`` synthetic features, ``(1, 28, 28)`` Fashion-MNIST, ``(3, 32, 32)`` CIFAR-100,
    ``(3, crop, crop)`` Pl@ntNet-300K (the loaders' defaults fill missing options)."""
    info = dataset_info(name)
    return info.input_shape(info.options(options))


def load_dataset(name: str, **options: Any) -> DatasetBundle:
    """Load a dataset by name with loader-specific options (see each ``load_*`` function)."""
    return LOADERS[dataset_info(name).name](**options)


__all__ = [
    "DataFolderError",
    "DatasetBundle",
    "DatasetInfo",
    "DATASETS",
    "DownloadError",
    "TensorSplit",
    "InMemoryLoader",
    "SyntheticSpec",
    "SyntheticTask",
    "LOADERS",
    "cache_dir",
    "data_dir",
    "dataset_info",
    "dataset_input_shape",
    "load_dataset",
    "load_synthetic",
    "load_fashion_mnist",
    "load_cifar100",
    "load_plantnet300k",
    "long_tail_counts",
    "make_loader",
]
