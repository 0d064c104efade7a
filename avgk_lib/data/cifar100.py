"""CIFAR-100 with the P1 protocol (Berrada et al. 2018; Garcin et al. 2022).

Reads the official ``cifar-100-python`` pickles (``train``, ``test``, ``meta``) under
``$AVGK_DATA_DIR`` (or ``root``); ``download=True`` fetches them with torchvision first. The
protocol: 45,000 / 5,000 train / validation split of the official training set with a fixed
seed, the 10,000 official test images, and label noise on *training* labels only: with
probability p a label is redrawn uniformly within its block of 5 consecutive fine labels
(effective flip rate 0.8 p). Train-time augmentation: random crop 32 with padding 4 and
horizontal flip; normalisation with the CIFAR-100 channel statistics.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .base import DatasetBundle, TensorSplit, class_counts, data_dir, split_indices
from .corruption import block_label_noise

MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)
FOLDER = "cifar-100-python"


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as fh:
        return pickle.load(fh, encoding="bytes")


def _key(d: dict, name: str):
    return d[name.encode()] if name.encode() in d else d[name]


def read_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) uint8 and fine labels of the ``train`` or ``test`` pickle."""
    d = _unpickle(folder / split)
    data = torch.as_tensor(_key(d, "data"), dtype=torch.uint8)
    return data.reshape(-1, 3, 32, 32), torch.as_tensor(_key(d, "fine_labels"), dtype=torch.long)


def load_cifar100(
    *,
    root: Path | None = None,
    label_noise: float = 0.0,
    n_val: int = 5_000,
    split_seed: int = 0,
    noise_seed: int = 0,
    train_subset: int | None = None,
    download: bool = False,
) -> DatasetBundle:
    """CIFAR-100 under the P1 protocol (see the module docstring)."""
    root = Path(root) if root is not None else data_dir()
    folder = root / FOLDER
    if not (folder / "train").exists():
        if not download:
            raise FileNotFoundError(
                f"CIFAR-100 not found in {folder}. Pass download=True (needs internet) or copy the "
                "official cifar-100-python folder there."
            )
        import torchvision

        torchvision.datasets.CIFAR100(str(root), train=True, download=True)
    x_all, y_all = read_split(folder, "train")
    x_test, y_test = read_split(folder, "test")
    names = [n.decode() if isinstance(n, bytes) else n for n in _key(_unpickle(folder / "meta"), "fine_label_names")]
    train_idx, val_idx = split_indices(len(y_all), n_val, split_seed)
    train = TensorSplit(x_all[train_idx], y_all[train_idx])
    train = train.random_subset(train_subset, split_seed + 1)
    if label_noise > 0:
        train = TensorSplit(train.x, block_label_noise(train.y, label_noise, 5, 100, noise_seed), train.y.clone())
    return DatasetBundle(
        name="cifar100",
        n_classes=100,
        train=train,
        val=TensorSplit(x_all[val_idx], y_all[val_idx]),
        test=TensorSplit(x_test, y_test),
        input_shape=(3, 32, 32),
        class_names=names,
        train_counts=class_counts(train.y, 100),
        mean=MEAN,
        std=STD,
        augment="crop_flip",
        crop_padding=4,
        extra={"label_noise": label_noise},
    )
