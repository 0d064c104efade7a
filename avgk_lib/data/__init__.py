"""Datasets: ``synthetic`` (known posteriors), ``fashion_mnist``, ``cifar100``, ``plantnet300k``.

:func:`load_dataset` is the single entry point used by the trainer and the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import cifar100, fashion_mnist, plantnet, synthetic
from .base import (
    DataFolderError,
    DatasetBundle,
    DatasetInfo,
    DownloadError,
    TensorSplit,
    cache_dir,
    data_dir,
)
from .cifar100 import load_cifar100
from .corruption import long_tail_counts
from .fashion_mnist import load_fashion_mnist
from .loader import InMemoryLoader, make_loader
from .plantnet import load_plantnet300k
from .synthetic import SyntheticSpec, SyntheticTask, load_synthetic

#: every dataset's declaration (:class:`DatasetInfo`), by name
DATASETS: dict[str, DatasetInfo] = {
    info.name: info for info in (synthetic.INFO, fashion_mnist.INFO, cifar100.INFO, plantnet.INFO)
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
