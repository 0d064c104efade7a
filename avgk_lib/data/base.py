"""Containers shared by every dataset: in-memory splits and the bundle a trainer consumes."""

from __future__ import annotations

import errno
import inspect
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._checks import check_count, check_real

OFFLINE_ENV = "AVGK_OFFLINE"
DATA_ENV = "AVGK_DATA_DIR"
CACHE_ENV = "AVGK_CACHE_DIR"
#: Seeds are int64 values in ``[0, SEED_LIMIT)``; seeds derived from them (``seed * 1000 + 1`` ...)
#: are reduced modulo 2**64, the range of torch's generators, which leaves every small seed as is.
SEED_LIMIT = 2**63


class DataFolderError(OSError):
    """A data or cache folder that cannot be used: unreadable, read-only, not a folder, a symbolic-link
    loop. The message is one line naming the folder and the argument or environment variable that chose it."""


class DownloadError(RuntimeError):
    """A dataset download that failed (network, server); the message says where the files were to go and
    how else to get them."""


def download_failed(dataset: str, folder: Path, err: Exception, otherwise: str) -> DownloadError:
    """The one-line :class:`DownloadError` of a failed download into ``folder`` (``otherwise``: the
    routes that need no download); a full disk is re-raised as it is."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        raise err
    why = " ".join(str(err).split())  # one line: torchvision's messages span several
    return DownloadError(
        f"downloading {dataset} into {folder} failed ({why}); check the internet connection (and a proxy, "
        f"HTTPS_PROXY) and try again, or {otherwise}"
    )


def check_seed(value: object, name: str) -> int:
    """``value`` as a seed: an integer in ``[0, 2**63)`` (``TypeError``/``ValueError`` naming ``name``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an integer seed, got {value!r}")
    if not 0 <= value < SEED_LIMIT:
        raise ValueError(f"`{name}` must be >= 0 and < 2**63 (an int64 seed), got {value}")
    return value


def check_label_noise(value: object, name: str = "label_noise") -> float:
    """A label-noise probability in [0, 1] (the same rule for every dataset)."""
    p = check_real(value, name)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"`{name}` must be in [0, 1] (a probability), got {p:g}")
    return p


def check_imbalance_ratio(value: object, name: str = "imbalance_ratio") -> float:
    """A long-tail ratio of the largest to the smallest class, >= 1 (1: balanced; every dataset)."""
    r = check_real(value, name)
    if not r >= 1.0:
        raise ValueError(f"`{name}` must be >= 1 (largest / smallest class; 1 keeps the classes balanced), got {r:g}")
    return r


def check_n_val(value: object, available: int, where: str, name: str = "n_val") -> int:
    """A validation split of ``1..available-1`` images taken from ``available`` training images."""
    n = check_count(value, name)
    if n >= available:
        raise ValueError(
            f"`{name}` must be < {available} (the training images in {where}, of which the validation "
            f"split is taken), got {n}"
        )
    return n


def derived_seed(value: int) -> int:
    """A seed computed from a user seed (e.g. ``seed * 100_003 + epoch``) brought into torch's range
    ``[0, 2**64)``; unchanged for every value already in it."""
    return value % 2**64


def _chosen_by(path: Path, env: str, argument: str | None) -> str:
    if argument is not None:
        return f"`{argument}` {path}"
    how = "set by" if env_value(env) else "the default of"
    return f"{path} ({how} {env})"


def check_folder(path: Path, env: str, *, argument: str | None = None, write: bool = False) -> Path:
    """``path`` when it is a usable folder, or one :class:`DataFolderError` line naming it and how it was
    chosen (``argument``, else the environment variable ``env``): a symbolic-link loop, not a folder, not
    readable, or (``write=True``) not creatable or not writable. A folder that does not exist yet is
    fine for reading (the caller reports missing data); with ``write=True`` it is created."""
    where = _chosen_by(path, env, argument)
    fix = f"point {argument or env} at a usable folder"
    try:
        path.stat()
        exists = True
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise DataFolderError(f"{where} is a symbolic-link loop; {fix}") from None
        if err.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise DataFolderError(f"{where} cannot be read ({err.strerror}); {fix}") from None
        exists = False
    if exists and not path.is_dir():
        raise DataFolderError(f"{where} exists and is not a folder; {fix}")
    if exists and not os.access(path, os.R_OK | os.X_OK):
        raise DataFolderError(f"{where} is not readable (permission denied); {fix} or fix its permissions")
    if write:
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check.tmp"):
                pass
        except OSError as err:
            if not exists:
                why = "cannot be created"
            else:
                why = "is read-only" if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else "is not writable"
            raise DataFolderError(f"{where} {why} ({err.strerror or err}); {fix} or fix its permissions") from None
    return path


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation: ``MemAvailable`` of ``/proc/meminfo``, else the
    physical memory (``os.sysconf``); ``None`` when neither is known."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * size if pages > 0 and size > 0 else None


def check_memory(nbytes: float, name: str, what: str, available: int | None = None) -> None:
    """``ValueError`` naming ``name`` when an allocation estimated at ``nbytes`` exceeds the memory
    available (:func:`available_memory`, or ``available``); no check when that is unknown."""
    available = available_memory() if available is None else available
    if available is not None and nbytes > available:
        raise ValueError(
            f"`{name}` is too large: {what} needs about {_gib(nbytes)} of memory, "
            f"more than the {_gib(available)} available; lower it"
        )


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB" if math.isfinite(nbytes) else "unbounded"


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


def env_value(name: str) -> str | None:
    """The environment variable ``name``, or ``None`` when it is unset or empty (blank): an empty
    ``AVGK_CACHE_DIR=`` means "not set", never the current folder."""
    value = os.environ.get(name)
    return value if value is not None and value.strip() else None


def data_dir() -> Path:
    """Root of datasets: ``$AVGK_DATA_DIR`` (unset or empty: ``~/.cache/avgk/data``)."""
    return Path(env_value(DATA_ENV) or Path.home() / ".cache" / "avgk" / "data").expanduser()


def cache_dir() -> Path:
    """Root of runs, checkpoints and results: ``$AVGK_CACHE_DIR`` (unset or empty: ``~/.cache/avgk``)."""
    return Path(env_value(CACHE_ENV) or Path.home() / ".cache" / "avgk").expanduser()


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
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(derived_seed(seed)))
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

    def summary(self) -> str:
        sizes = "/".join(str(len(s)) for s in (self.train, self.val, self.test))
        return f"{self.name}: {self.n_classes} classes, train/val/test {sizes}, input {self.input_shape}"


@dataclass(frozen=True)
class DatasetInfo:
    """What the library knows about a dataset before loading it, declared next to its loader.

    ``default_model``: the model of ``model="auto"``; ``counts``: the integer options that must be
    >= 1 (the loader's other integer options, seeds, must be >= 0); ``n_classes``: the number of
    classes when the data fix it (``None`` when an option sets it); ``classes_option``: the option
    that sets the number of classes (``n_classes is None``) or caps it (e.g. a species subset);
    ``input_shape``: the shape of one input from the loader options (defaults filled in);
    ``seeded_options``: the loader options that draw the data's randomness (samples, split, label
    noise), which the experiments set from each run's seed so that seeds redraw the data (required:
    ``()`` for data without randomness); each must be a loader option."""

    name: str
    loader: Callable[..., DatasetBundle]
    default_model: str
    input_shape: Callable[[dict[str, Any]], tuple[int, ...]]
    seeded_options: tuple[str, ...]
    counts: tuple[str, ...] = ()
    n_classes: int | None = None
    classes_option: str | None = None

    def __post_init__(self) -> None:
        unknown = [o for o in self.seeded_options if o not in inspect.signature(self.loader).parameters]
        if unknown:
            raise ValueError(f"{self.name}: `seeded_options` {unknown} are not options of its loader")

    def options(self, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The loader's keyword defaults updated with ``options``."""
        if options is not None and not isinstance(options, Mapping):
            raise TypeError(f"`options` must be a dict of {self.name} loader options, got {type(options).__name__}")
        params = inspect.signature(self.loader).parameters.values()
        return {**{p.name: p.default for p in params if p.default is not p.empty}, **(options or {})}

    def classes(self, options: Mapping[str, Any] | None = None) -> int:
        """Number of classes of the data loaded with ``options`` (e.g. 1081 for the full Pl@ntNet-300K,
        ``min(1081, max_classes)`` for a subset; the ``n_classes`` option of synthetic data)."""
        values = self.options(options)
        chosen = values[self.classes_option] if self.classes_option else None
        if self.n_classes is None:
            return int(chosen)
        return self.n_classes if chosen is None else min(self.n_classes, int(chosen))


def class_counts(y: torch.Tensor, n_classes: int) -> list[int]:
    return torch.bincount(y.long(), minlength=n_classes).tolist()


def split_indices(n: int, n_val: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random train/val split of ``range(n)``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(seed)))
    return perm[n_val:].sort().values, perm[:n_val].sort().values
