"""Fashion-MNIST (Xiao et al. 2017): 10 classes of 28x28 grey clothing images.

Where the files come from, in order:

1. ``root/FashionMNIST/raw`` (``root`` defaults to ``$AVGK_DATA_DIR``): the idx files, plain or
   ``.gz``, in torchvision's on-disk layout;
2. Debian's package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``);
3. torchvision's download into ``root/FashionMNIST/raw`` (about 30 MB), when ``download`` is
   ``True``, or ``None`` (the default) and ``$AVGK_OFFLINE`` is not set.

Debian's .gz files are recompressed, so torchvision's archive checksums fail on them although the
decompressed idx files are the standard ones: we read the idx format directly and write the
decompressed files where torchvision expects them, so ``torchvision.datasets.FashionMNIST(root,
download=False)`` works afterwards too.

The idx format (LeCun et al.): a 4-byte header ``0x00 0x00 <type> <ndim>`` (type ``0x08`` =
unsigned bytes), ``ndim`` big-endian uint32 dimensions, then ``prod(dims)`` bytes. Every file is
checked (header, dimensions, payload length, 28x28 images, as many labels as images, labels in
0..9) and a bad file raises :class:`ValueError` naming it.
"""

from __future__ import annotations

import errno
import functools
import gzip
import os
import struct
import typing
import zlib
from pathlib import Path
from typing import Literal

import torch

from .._checks import check_count
from . import base
from .base import (
    DATA_ENV,
    DatasetBundle,
    DatasetInfo,
    TensorSplit,
    check_folder,
    check_imbalance_ratio,
    check_label_noise,
    check_n_val,
    check_seed,
    class_counts,
    data_dir,
    derived_seed,
    download_failed,
    split_indices,
)
from .corruption import block_label_noise, group_label_noise, long_tail_subsample

IMAGE_SHAPE = (28, 28)
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
#: group id of each class for label noise in pairs, P1's design rule for K = 2 (noise blocks of K
#: classes): T-shirt/top+Shirt, Pullover+Coat, Sandal+Sneaker, Trouser+Dress, Bag+Ankle boot (the
#: last two pairs join the garments left over once the similar ones are paired)
PAIR_GROUPS = [0, 3, 1, 3, 1, 2, 0, 2, 4, 4]
#: train-time augmentations of the in-memory images (``"none"``, like ``None``, turns it off)
Augment = Literal["crop_flip", "crop", "flip", "none"]
NoiseGroups = Literal["blocks", "semantic", "pairs"]


def read_idx(path: Path | str) -> torch.Tensor:
    """Read an idx file (optionally gzipped) of unsigned bytes into a uint8 tensor of its dimensions.

    Cached per process and per file version (path, size, modification time): notebooks train many
    models on the same files; callers never modify the result in place. Raises
    :class:`FileNotFoundError` for a missing file and :class:`ValueError` naming the file when it is
    empty, not idx, truncated or a corrupt gzip archive.

    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
    >>> _ = f.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 0, 9]))
    >>> read_idx(f).tolist()
    [7, 0, 9]
    """
    if not isinstance(path, (str, Path)):
        raise TypeError(f"`path` must be a str or Path, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"idx file {path} does not exist")
    stat = path.stat()
    return _read_idx_cached(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: Path, size: int, mtime_ns: int) -> torch.Tensor:
    del size, mtime_ns  # part of the cache key only: a rewritten file is read again
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path} is {'empty' if not data else 'too short'}: an idx file starts with a 4-byte header")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08 or ndim == 0:
        raise ValueError(
            f"{path} is not an idx file of unsigned bytes (header {data[:4].hex()}, expected 000008 then ndim >= 1)"
        )
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path} is truncated: its header announces {ndim} dimensions but ends early")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    payload = data[4 + 4 * ndim :]
    expected = 1
    for s in shape:
        expected *= s
    if expected == 0:
        raise ValueError(f"{path} holds no data (dimensions {shape})")
    if len(payload) != expected:
        problem = "truncated" if len(payload) < expected else "longer than its header says"
        raise ValueError(f"{path} is {problem}: {len(payload)} data bytes for dimensions {shape} ({expected} bytes)")
    return torch.frombuffer(bytearray(payload), dtype=torch.uint8).reshape(shape)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when it ends in ``.gz``; a corrupt archive names the file."""
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path} is a corrupt gzip archive ({err}); delete it and get the file again") from err


def check_idx_pair(images_path: Path, labels_path: Path, n_classes: int = 10) -> None:
    """Check that an image file and a label file belong together: images ``(N, 28, 28)``, labels
    ``(N,)`` with values in ``0..n_classes-1``. Raises :class:`ValueError` naming the bad file."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dim() != 3 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise ValueError(f"{images_path} holds dimensions {tuple(images.shape)}, expected (N, 28, 28) images")
    if labels.dim() != 1:
        raise ValueError(f"{labels_path} holds dimensions {tuple(labels.shape)}, expected (N,) labels")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{labels_path} holds {labels.shape[0]} labels for {images.shape[0]} images in {images_path}")
    top = int(labels.max())
    if top >= n_classes:
        raise ValueError(f"{labels_path} holds label {top}, outside 0..{n_classes - 1} ({n_classes} classes)")


def _find(name: str, raw: Path) -> Path | None:
    """The first existing copy of idx file ``name``: in ``raw`` (plain, then .gz), then Debian's."""
    for candidate in (raw / name, raw / f"{name}.gz", DEBIAN_DIR / f"{name}.gz", DEBIAN_DIR / name):
        if candidate.is_file():
            return candidate
    return None


def _other_routes(raw: Path) -> str:
    names = ", ".join(FILES.values())
    return f"`apt-get install dataset-fashion-mnist`; or copy the four idx files ({names}, plain or .gz) into {raw}"


def _missing_message(raw: Path, why: str) -> str:
    return (
        f"Fashion-MNIST not found in {raw} nor {DEBIAN_DIR}, and {why}. Get it with one of: unset {base.OFFLINE_ENV} "
        f"(or pass download=True) and torchvision downloads it there (about 30 MB); {_other_routes(raw)}."
    )


def download_fashion_mnist(root: Path) -> None:
    """Download Fashion-MNIST with torchvision into ``root/FashionMNIST/raw`` (its own layout and
    checksums). A folder that cannot be written raises :class:`~avgk_lib.data.base.DataFolderError`
    before any download; a failed download (network, server) raises
    :class:`~avgk_lib.data.base.DownloadError` naming the folder, with the routes that need no download."""
    import torchvision

    raw = root / "FashionMNIST" / "raw"
    try:
        for train in (True, False):
            torchvision.datasets.FashionMNIST(str(root), train=train, download=True)
    except (OSError, RuntimeError) as err:
        otherwise = f"get the files without downloading: {_other_routes(raw)}"
        raise download_failed("Fashion-MNIST", raw, err, otherwise) from err


def _materialise(source: Path, target: Path) -> bool:
    """Write the decompressed copy of ``source`` at ``target`` atomically (torchvision's layout); False
    when the folder cannot be written (a read-only data folder: the source is then read directly)."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(_read_bytes(source))
        tmp.replace(target)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise
        return False
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    return True


def locate_raw_files(root: Path | None = None, download: bool | None = None) -> dict[str, Path]:
    """Paths of the four checked idx files, materialising decompressed copies under
    ``root/FashionMNIST/raw``. ``download``: ``None`` = download when absent unless ``$AVGK_OFFLINE``
    is set; ``True``/``False`` force it. Missing files raise one :class:`FileNotFoundError` naming the
    folder, the environment variable and how to get the data."""
    if root is not None and not isinstance(root, (str, Path)):
        raise TypeError(f"`root` must be a str or Path, got {type(root).__name__}")
    allowed = base.resolve_download(download)
    argument = None if root is None else "root"
    root = check_folder(Path(root).expanduser() if root is not None else data_dir(), DATA_ENV, argument=argument)
    raw = root / "FashionMNIST" / "raw"
    found = {key: _find(name, raw) for key, name in FILES.items()}
    if any(p is None for p in found.values()):
        if not allowed:
            why = "downloads are off" + (f" ({base.OFFLINE_ENV} is set)" if download is None else " (download=False)")
            raise FileNotFoundError(_missing_message(raw, why))
        check_folder(root, DATA_ENV, argument=argument, write=True)
        download_fashion_mnist(root)
        found = {key: _find(name, raw) for key, name in FILES.items()}
        if any(p is None for p in found.values()):
            raise FileNotFoundError(_missing_message(raw, "torchvision's download did not write them"))
    paths: dict[str, Path] = {}
    for key, path in found.items():
        assert path is not None
        target = raw / FILES[key]
        if path != target and not target.exists() and not _materialise(path, target):
            target = path  # a read-only data folder: read the source itself
        paths[key] = target if target.exists() else path
    check_idx_pair(paths["train_images"], paths["train_labels"])
    check_idx_pair(paths["test_images"], paths["test_labels"])
    return paths


def load_fashion_mnist(
    *,
    root: Path | None = None,
    n_val: int = 10_000,
    label_noise: float = 0.0,
    noise_block_size: int = 2,
    noise_groups: NoiseGroups = "blocks",
    imbalance_ratio: float = 1.0,
    train_subset: int | None = None,
    test_subset: int | None = None,
    split_seed: int = 0,
    noise_seed: int = 0,
    download: bool | None = None,
    augment: Augment | None = "crop_flip",
) -> DatasetBundle:
    """Fashion-MNIST with clean, balanced validation (from the official train set) and test splits.

    Args:
        n_val: validation images taken from the 60,000 official training images (fixed split).
        label_noise: probability p of redrawing a *training* label within its block of
            ``noise_block_size`` consecutive classes (P1 protocol), or, with
            ``noise_groups="semantic"``, within its group of similar garments
            (:data:`SEMANTIC_GROUPS`: tops, footwear; trousers, dresses and bags are never flipped),
            or, with ``noise_groups="pairs"``, within its pair (:data:`PAIR_GROUPS`: every class
            in a group of 2, so K = 2 equals the group size as in P1's design).
        imbalance_ratio: long-tailed subsampling of the training split (exponential profile,
            ratio of the largest to the smallest class); 1 keeps it balanced.
        train_subset / test_subset: keep only this many training / test images (random,
            fixed), for quick runs.
        augment: train-time augmentation of the images (``"none"`` or ``None``: off).

    Every option is checked before any file is read (``ValueError``/``TypeError`` naming it).
    """
    _check_options(label_noise, noise_block_size, noise_groups, imbalance_ratio, split_seed, noise_seed, augment)
    for name, value in (("train_subset", train_subset), ("test_subset", test_subset)):
        if value is not None:
            check_count(value, name)
    paths = locate_raw_files(root, download)
    x_all = read_idx(paths["train_images"]).unsqueeze(1)
    y_all = read_idx(paths["train_labels"]).long()
    x_test = read_idx(paths["test_images"]).unsqueeze(1)
    y_test = read_idx(paths["test_labels"]).long()
    check_n_val(n_val, len(y_all), str(paths["train_labels"]))
    train_idx, val_idx = split_indices(len(y_all), n_val, split_seed)
    train = TensorSplit(x_all[train_idx], y_all[train_idx])
    val = TensorSplit(x_all[val_idx], y_all[val_idx])
    test = TensorSplit(x_test, y_test).random_subset(test_subset, split_seed + 2)
    if imbalance_ratio > 1:
        train = train.subset(long_tail_subsample(train.y, 10, imbalance_ratio, derived_seed(split_seed)))
    train = train.random_subset(train_subset, split_seed + 1)
    clean = train.y.clone()
    if label_noise > 0:
        if noise_groups in ("semantic", "pairs"):
            groups = SEMANTIC_GROUPS if noise_groups == "semantic" else PAIR_GROUPS
            noisy = group_label_noise(train.y, label_noise, torch.tensor(groups), noise_seed)
        else:
            noisy = block_label_noise(train.y, label_noise, noise_block_size, 10, noise_seed)
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
        augment=None if augment == "none" else augment,
        crop_padding=2,
        extra={"label_noise": label_noise, "imbalance_ratio": imbalance_ratio},
    )


def _check_options(
    label_noise: float,
    noise_block_size: int,
    noise_groups: str,
    imbalance_ratio: float,
    split_seed: int,
    noise_seed: int,
    augment: str | None,
) -> None:
    """The options of :func:`load_fashion_mnist`, each error naming the option."""
    check_label_noise(label_noise)
    check_imbalance_ratio(imbalance_ratio)
    check_seed(split_seed, "split_seed")
    check_seed(noise_seed, "noise_seed")
    check_count(noise_block_size, "noise_block_size", minimum=2)
    for name, value, choices in (
        ("noise_groups", noise_groups, NoiseGroups),
        ("augment", augment, Augment),
    ):
        allowed = typing.get_args(choices)
        if value not in allowed and not (name == "augment" and value is None):
            raise ValueError(f"`{name}` must be one of {', '.join(allowed)}, got {value!r}")


INFO = DatasetInfo(
    "fashion_mnist",
    load_fashion_mnist,
    default_model="small_cnn",
    input_shape=lambda options: (1, *IMAGE_SHAPE),
    seeded_options=("split_seed", "noise_seed"),
    counts=("n_val", "noise_block_size", "train_subset", "test_subset"),
    n_classes=len(CLASSES),
)
