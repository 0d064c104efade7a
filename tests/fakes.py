"""Small fakes of the real datasets in their real on-disk formats, shared by the loader tests and
the Colab-route check (``tests/test_colab_route.py``): CIFAR-100's Python 2 pickles
(``cifar-100-python/{train,test,meta}``) and Pl@ntNet-300K v1.1's folder tree."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


class _Python2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` opcodes, as in the official (Python 2) CIFAR pickles:
    they load as ``str`` with ``encoding="latin1"`` (torchvision) and as ``bytes`` with
    ``encoding="bytes"``."""

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch = pickle._Pickler.dispatch.copy()
    dispatch[bytes] = save_bytes


def dump_py2(obj, path: Path) -> None:
    with open(path, "wb") as fh:
        _Python2Pickler(fh, protocol=2).dump(obj)


def write_fake_cifar100(root: Path, n_train: int = 200, n_test: int = 50, seed: int = 0) -> dict:
    """The official ``cifar-100-python`` layout: Python 2 pickles of dicts with str keys, rows
    of 3072 uint8 (1024 red, 1024 green, 1024 blue values of a 32x32 image)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        payload = {
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
            b"batch_label": f"{split} batch".encode(),
            b"fine_labels": fine,
            b"coarse_labels": [f // 5 for f in fine],
            b"data": data,
        }
        dump_py2(payload, folder / split)
        arrays[split] = (data, fine)
    meta = {
        b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)],
    }
    dump_py2(meta, folder / "meta")
    return arrays


def write_fake_plantnet(root: Path) -> dict[str, str]:
    """v1.1 layout: images/<split>/<species_id>/*.jpg plus the species-id-to-name JSON."""
    names = {"1355932": "Acer campestre", "1355868": "Tilia cordata", "1363227": "Quercus robur"}
    layout = {
        "train": {"1355932": 3, "1355868": 5, "1363227": 1},
        "val": {"1355932": 1, "1355868": 2},
        "test": {"1363227": 2, "1355868": 1},
    }
    rng = np.random.default_rng(0)
    for split, species_counts in layout.items():
        for species, count in species_counts.items():
            folder = root / "images" / split / species
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.jpg")
    (root / "plantnet300K_species_id_2_name.json").write_text(json.dumps(names))
    return names
