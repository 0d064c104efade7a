"""CIFAR-100 with the P1 protocol (Berrada et al. 2018; Garcin et al. 2022).

Reads the official ``cifar-100-python`` pickles (``train``, ``test``, ``meta``) under ``root``
(default ``$AVGK_DATA_DIR``), torchvision's on-disk layout. When they are absent, torchvision
downloads them (about 160 MB) if ``download`` is ``True``, or ``None`` (the default) and
``$AVGK_OFFLINE`` is not set; offline, a missing folder raises one :class:`FileNotFoundError`
naming it. A damaged pickle (not a pickle, missing keys, wrong row length, labels outside 0..99)
raises :class:`ValueError` naming the file. The pickles are read by an unpickler restricted to the
types the official files hold (dict, list, bytes, str, int, NumPy arrays): a crafted file is refused
and nothing in it runs.

The protocol: 45,000 / 5,000 train / validation split of the official training set with a fixed
seed, the 10,000 official test images, and label noise on *training* labels only: with
probability p a label is redrawn uniformly within its block of 5 consecutive fine labels
(effective flip rate 0.8 p). Train-time augmentation: random crop 32 with padding 4 and
horizontal flip; normalisation with the CIFAR-100 channel statistics.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .._checks import check_count
from .base import (
    DATA_ENV,
    OFFLINE_ENV,
    DatasetBundle,
    DatasetInfo,
    TensorSplit,
    check_folder,
    check_label_noise,
    check_n_val,
    check_seed,
    class_counts,
    data_dir,
    download_failed,
    resolve_download,
    split_indices,
)
from .corruption import block_label_noise

MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)
FOLDER = "cifar-100-python"
FILES = ("train", "test", "meta")
N_CLASSES = 100
ROW = 3 * 32 * 32


#: the only globals the official pickles reference: NumPy's array reconstruction (``data``); the
#: rest is dicts, lists, bytes, str and int, which need no global
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler restricted to what the official CIFAR-100 files hold (dict, list, bytes, str,
    int and NumPy arrays): any other global is refused before it is looked up, so a crafted file
    cannot run code."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"it references {module}.{name}, which the official files never hold (refused: nothing in it was run)"
            )
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    """The dict of an official (Python 2) pickle, read by :class:`_CifarUnpickler`; any damage or
    foreign content raises ValueError naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-100 file {path} is missing")
    try:
        with open(path, "rb") as fh:
            d = _CifarUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as err:
        raise ValueError(f"{path} is not a readable CIFAR-100 pickle ({type(err).__name__}: {err})") from err
    if not isinstance(d, dict):
        raise ValueError(f"{path} holds a {type(d).__name__}, expected the dict of the official CIFAR-100 pickles")
    return d


def _key(d: dict, name: str, path: Path):
    for key in (name.encode(), name):
        if key in d:
            return d[key]
    raise ValueError(f"{path} has no {name!r} entry: not an official CIFAR-100 pickle")


def read_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) uint8 and fine labels of the ``train`` or ``test`` pickle, checked."""
    if split not in ("train", "test"):
        raise ValueError(f"`split` must be 'train' or 'test', got {split!r}")
    path = Path(folder) / split
    d = _unpickle(path)
    try:
        data = torch.as_tensor(_key(d, "data", path), dtype=torch.uint8)
        labels = torch.as_tensor(_key(d, "fine_labels", path), dtype=torch.long)
    except (TypeError, RuntimeError) as err:
        raise ValueError(f"{path}: 'data' or 'fine_labels' is not an array of numbers ({err})") from err
    if data.dim() != 2 or data.shape[1] != ROW:
        raise ValueError(f"{path}: 'data' has shape {tuple(data.shape)}, expected (N, {ROW}) rows of 32x32 RGB")
    if labels.dim() != 1 or labels.shape[0] != data.shape[0]:
        raise ValueError(f"{path}: {tuple(labels.shape)} fine labels for {data.shape[0]} images")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= N_CLASSES):
        raise ValueError(f"{path}: fine labels span {int(labels.min())}..{int(labels.max())}, expected 0..99")
    return data.reshape(-1, 3, 32, 32), labels


def read_class_names(folder: Path) -> list[str]:
    """The 100 fine label names of the ``meta`` pickle."""
    path = Path(folder) / "meta"
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in _key(_unpickle(path), "fine_label_names", path)]
    if len(names) != N_CLASSES:
        raise ValueError(f"{path} lists {len(names)} fine label names, expected {N_CLASSES}")
    return names


def download_cifar100(root: Path) -> None:
    """Download and extract ``cifar-100-python`` with torchvision (its URL and checksum) into ``root``;
    a failed download (network, server, checksum) raises :class:`~avgk_lib.data.base.DownloadError`
    naming the folder, with the route that needs no download."""
    import torchvision

    try:
        torchvision.datasets.CIFAR100(str(root), train=True, download=True)
    except (OSError, RuntimeError) as err:
        raise download_failed("CIFAR-100", root / FOLDER, err, _copy_route(root)) from err


def _copy_route(root: Path) -> str:
    return f"copy the official cifar-100-python folder (files {', '.join(FILES)}) into {root}"


def _how_to_get(root: Path) -> str:
    return (
        f"get it with download=True or by unsetting {OFFLINE_ENV} (torchvision downloads about 160 MB), "
        f"or {_copy_route(root)}"
    )


def locate_cifar100(root: Path | None = None, download: bool | None = None) -> Path:
    """The ``cifar-100-python`` folder under ``root``, downloaded first when absent and allowed
    (``download=None``: unless ``$AVGK_OFFLINE`` is set)."""
    if root is not None and not isinstance(root, (str, Path)):
        raise TypeError(f"`root` must be a str or Path, got {type(root).__name__}")
    allowed = resolve_download(download)
    argument = None if root is None else "root"
    root = check_folder(Path(root).expanduser() if root is not None else data_dir(), DATA_ENV, argument=argument)
    folder = root / FOLDER
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing and allowed:
        check_folder(root, DATA_ENV, argument=argument, write=True)
        download_cifar100(root)
        missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        why = "downloads are off" + (f" ({OFFLINE_ENV} is set)" if download is None else " (download=False)")
        if allowed:
            why = "torchvision's download did not write them"
        where = f"CIFAR-100 not found in {folder} (missing {', '.join(missing)})"
        raise FileNotFoundError(f"{where} and {why}: {_how_to_get(root)}")
    return folder


def load_cifar100(
    *,
    root: Path | None = None,
    label_noise: float = 0.0,
    n_val: int = 5_000,
    split_seed: int = 0,
    noise_seed: int = 0,
    train_subset: int | None = None,
    download: bool | None = None,
) -> DatasetBundle:
    """CIFAR-100 under the P1 protocol (see the module docstring).

    Args:
        root: folder holding ``cifar-100-python/`` (default ``$AVGK_DATA_DIR``).
        label_noise: probability p of redrawing a training label within its block of 5.
        n_val: validation images taken from the 50,000 official training images (fixed split).
        train_subset: keep only this many training images (random, fixed by ``split_seed``).
        download: ``None`` downloads when absent unless ``$AVGK_OFFLINE`` is set.
    """
    check_label_noise(label_noise)
    check_seed(split_seed, "split_seed")
    check_seed(noise_seed, "noise_seed")
    if train_subset is not None:
        check_count(train_subset, "train_subset")
    folder = locate_cifar100(root, download)
    x_all, y_all = read_split(folder, "train")
    x_test, y_test = read_split(folder, "test")
    check_n_val(n_val, len(y_all), str(folder / "train"))
    names = read_class_names(folder)
    train_idx, val_idx = split_indices(len(y_all), n_val, split_seed)
    train = TensorSplit(x_all[train_idx], y_all[train_idx])
    train = train.random_subset(train_subset, split_seed + 1)
    if label_noise > 0:
        train = TensorSplit(train.x, block_label_noise(train.y, label_noise, 5, 100, noise_seed), train.y.clone())
    return DatasetBundle(
        name="cifar100",
        n_classes=N_CLASSES,
        train=train,
        val=TensorSplit(x_all[val_idx], y_all[val_idx]),
        test=TensorSplit(x_test, y_test),
        input_shape=(3, 32, 32),
        class_names=names,
        train_counts=class_counts(train.y, N_CLASSES),
        mean=MEAN,
        std=STD,
        augment="crop_flip",
        crop_padding=4,
        extra={"label_noise": label_noise},
    )


INFO = DatasetInfo(
    "cifar100",
    load_cifar100,
    default_model="resnet18_cifar",
    input_shape=lambda options: (3, 32, 32),
    seeded_options=("split_seed", "noise_seed"),
    counts=("n_val", "train_subset"),
    n_classes=N_CLASSES,
)
