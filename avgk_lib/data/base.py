"""Containers shared by every dataset: in-memory splits and the bundle a trainer consumes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

OFFLINE_ENV = "AVGK_OFFLINE"


def offline() -> bool:
    """True when ``$AVGK_OFFLINE`` is set to ``1``/``true``/``yes`` (CI and the test suite set it): loaders
    then never download and a missing dataset raises :class:`FileNotFoundError` instead."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def resolve_download(download: bool | None) -> bool:
    """The ``download`` argument of a loader: ``None`` (the default) means "download when absent unless
    ``$AVGK_OFFLINE`` is set"; ``True``/``False`` force it either way."""
    if download is None:
        return not offline()
    if not isinstance(download, bool):
        raise TypeError(f"`download` must be True, False or None, got {download!r}")
    return download


def data_dir() -> Path:
    """Root of datasets: ``$AVGK_DATA_DIR``, default ``~/.cache/avgk/data``."""
    return Path(os.environ.get("AVGK_DATA_DIR", Path.home() / ".cache" / "avgk" / "data")).expanduser()


def cache_dir() -> Path:
    """Root of runs, checkpoints and results: ``$AVGK_CACHE_DIR``, default ``~/.cache/avgk``."""
    return Path(os.environ.get("AVGK_CACHE_DIR", Path.home() / ".cache" / "avgk")).expanduser()


@dataclass
class TensorSplit:
    """One split held in memory: inputs (uint8 images (N, C, H, W) or float features (N, d)) and
    integer labels. ``clean_y`` keeps the labels before any injected noise."""

    x: torch.Tensor
    y: torch.Tensor
    clean_y: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"inputs and labels disagree: {self.x.shape[0]} vs {self.y.shape[0]}")
        self.y = self.y.long()

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, index: torch.Tensor) -> TensorSplit:
        clean = self.clean_y[index] if self.clean_y is not None else None
        return TensorSplit(self.x[index], self.y[index], clean)

    def random_subset(self, n: int | None, seed: int) -> TensorSplit:
        """At most ``n`` samples drawn without replacement by ``seed`` (kept in their original order);
        ``None`` or ``n >= len(self)`` returns the split itself."""
        if n is None or n >= len(self):
            return self
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return self.subset(perm[:n].sort().values)


@dataclass
class DatasetBundle:
    """Everything a trainer needs to know about a dataset.

    ``train``/``val``/``test`` are :class:`TensorSplit` (in memory, batched on the training
    device) or ``torch.utils.data.Dataset`` objects returning ``(image, label)`` (image folders,
    read by DataLoader workers). ``mean``/``std`` normalise images (per channel, in [0, 1] units);
    ``augment`` names the train-time augmentation of in-memory images (``"crop_flip"``, ``"crop"``,
    ``"flip"`` or ``None``) with ``crop_padding`` pixels of zero padding.
    """

    name: str
    n_classes: int
    train: Any
    val: Any
    test: Any
    input_shape: tuple[int, ...]
    class_names: list[str]
    train_counts: list[int]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: str | None = None
    crop_padding: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, TensorSplit)

    def summary(self) -> str:
        sizes = "/".join(str(len(s)) for s in (self.train, self.val, self.test))
        return f"{self.name}: {self.n_classes} classes, train/val/test {sizes}, input {self.input_shape}"


def class_counts(y: torch.Tensor, n_classes: int) -> list[int]:
    return torch.bincount(y.long(), minlength=n_classes).tolist()


def split_indices(n: int, n_val: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random train/val split of ``range(n)``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values
