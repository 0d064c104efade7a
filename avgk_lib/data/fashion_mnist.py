"""Fashion-MNIST (Xiao et al. 2017): 10 classes of 28x28 grey clothing images.

Where the files come from, in order: ``$AVGK_DATA_DIR/FashionMNIST/raw`` (idx files, plain or
.gz), Debian's package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), then
torchvision's download when ``download=True``. Debian's .gz files are recompressed, so
torchvision's archive checksums fail on them although the decompressed idx files are the
standard ones: we read the idx format directly and write the decompressed files where
torchvision expects them, so ``torchvision.datasets.FashionMNIST(root, download=False)`` works
afterwards too.
"""

from __future__ import annotations

import functools
import gzip
import struct
from pathlib import Path

import torch

from .base import DatasetBundle, TensorSplit, class_counts, data_dir, split_indices
from .corruption import block_label_noise, group_label_noise, long_tail_subsample

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = (0.2860,), (0.3530,)
#: group id of each class for label noise between similar garments: tops (T-shirt/top, Pullover,
#: Coat, Shirt), footwear (Sandal, Sneaker, Ankle boot); Trouser, Dress and Bag stand alone.
SEMANTIC_GROUPS = [0, 2, 0, 3, 0, 1, 0, 1, 4, 1]


@functools.lru_cache(maxsize=8)
def read_idx(path: Path) -> torch.Tensor:
    """Read an idx file (optionally gzipped) of unsigned bytes into a uint8 tensor (cached per
    process: notebooks train many models on the same files; callers never modify it in place)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    payload = data[4 + 4 * ndim :]
    expected = 1
    for s in shape:
        expected *= s
    if len(payload) != expected:
        raise ValueError(f"{path} is truncated: {len(payload)} bytes for shape {shape}")
    return torch.frombuffer(bytearray(payload), dtype=torch.uint8).reshape(shape)


def _find(name: str, raw: Path) -> Path | None:
    for candidate in (raw / name, raw / f"{name}.gz", DEBIAN_DIR / f"{name}.gz", DEBIAN_DIR / name):
        if candidate.exists():
            return candidate
    return None


def locate_raw_files(root: Path | None = None, download: bool = False) -> dict[str, Path]:
    """Paths of the four idx files, materialising decompressed copies under ``root/FashionMNIST/raw``."""
    root = Path(root) if root is not None else data_dir()
    raw = root / "FashionMNIST" / "raw"
    found = {key: _find(name, raw) for key, name in FILES.items()}
    if any(p is None for p in found.values()):
        if not download:
            raise FileNotFoundError(
                f"Fashion-MNIST not found in {raw} nor {DEBIAN_DIR}. Install Debian's package "
                "(`apt-get install dataset-fashion-mnist`), put the idx files in that folder, or pass download=True."
            )
        import torchvision

        torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
        torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
        found = {key: _find(name, raw) for key, name in FILES.items()}
    paths: dict[str, Path] = {}
    for key, path in found.items():
        assert path is not None
        target = raw / FILES[key]
        if path != target and not target.exists():
            raw.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rb") as src, open(tmp, "wb") as dst:
                dst.write(src.read())
            tmp.replace(target)
        paths[key] = target if target.exists() else path
    return paths


def load_fashion_mnist(
    *,
    root: Path | None = None,
    n_val: int = 10_000,
    label_noise: float = 0.0,
    noise_block_size: int = 2,
    noise_groups: str = "blocks",
    imbalance_ratio: float = 1.0,
    train_subset: int | None = None,
    test_subset: int | None = None,
    split_seed: int = 0,
    noise_seed: int = 0,
    download: bool = False,
    augment: str | None = "crop_flip",
) -> DatasetBundle:
    """Fashion-MNIST with clean, balanced validation (from the official train set) and test splits.

    Args:
        n_val: validation images taken from the 60,000 official training images (fixed split).
        label_noise: probability p of redrawing a *training* label within its block of
            ``noise_block_size`` consecutive classes (P1 protocol), or, with
            ``noise_groups="semantic"``, within its group of similar garments
            (:data:`SEMANTIC_GROUPS`: tops, footwear; trousers, dresses and bags are never flipped).
        imbalance_ratio: long-tailed subsampling of the training split (exponential profile,
            ratio of the largest to the smallest class); 1 keeps it balanced.
        train_subset / test_subset: keep only this many training / test images (random,
            fixed), for quick runs.
    """
    paths = locate_raw_files(root, download)
    x_all = read_idx(paths["train_images"]).unsqueeze(1)
    y_all = read_idx(paths["train_labels"]).long()
    x_test = read_idx(paths["test_images"]).unsqueeze(1)
    y_test = read_idx(paths["test_labels"]).long()
    train_idx, val_idx = split_indices(len(y_all), n_val, split_seed)
    train = TensorSplit(x_all[train_idx], y_all[train_idx])
    val = TensorSplit(x_all[val_idx], y_all[val_idx])
    test = TensorSplit(x_test, y_test).random_subset(test_subset, split_seed + 2)
    if imbalance_ratio > 1:
        train = train.subset(long_tail_subsample(train.y, 10, imbalance_ratio, split_seed))
    train = train.random_subset(train_subset, split_seed + 1)
    clean = train.y.clone()
    if label_noise > 0:
        if noise_groups == "semantic":
            noisy = group_label_noise(train.y, label_noise, torch.tensor(SEMANTIC_GROUPS), noise_seed)
        elif noise_groups == "blocks":
            noisy = block_label_noise(train.y, label_noise, noise_block_size, 10, noise_seed)
        else:
            raise ValueError(f"`noise_groups` must be 'blocks' or 'semantic', got {noise_groups!r}")
        train = TensorSplit(train.x, noisy, clean)
    return DatasetBundle(
        name="fashion_mnist",
        n_classes=10,
        train=train,
        val=val,
        test=test,
        input_shape=(1, 28, 28),
        class_names=list(CLASSES),
        train_counts=class_counts(train.y, 10),
        mean=MEAN,
        std=STD,
        augment=augment,
        crop_padding=2,
        extra={"label_noise": label_noise, "imbalance_ratio": imbalance_ratio},
    )
