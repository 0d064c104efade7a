"""Pl@ntNet-300K v1.1 (Garcin et al. 2021): 306,146 plant images of 1,081 species.

Get version 1.1 of Zenodo record 5645731 (about 32 GB; not v1.0, whose metadata is wrong, and
not the 1,000-class "v2"). Expected layout under ``root`` (or ``$AVGK_DATA_DIR/plantnet_300K``)::

    plantnet300K_species_id_2_name.json
    images/train/<species_id>/<image>.jpg     (243,916 images)
    images/val/<species_id>/...               (31,118)
    images/test/<species_id>/...              (31,112)

The class index of a species is its rank among the sorted species ids, the same for every
split, even when a rare species has no image in validation or test. Transforms follow P1:
resize 256, crop 224 (random at train time, centre otherwise), no flip, ImageNet statistics.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from .base import DatasetBundle, data_dir

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NAMES_FILE = "plantnet300K_species_id_2_name.json"
EXTENSIONS = {".jpg", ".jpeg", ".png"}
WHERE = (
    "Download Pl@ntNet-300K version 1.1 from Zenodo record 5645731 (https://zenodo.org/records/5645731, "
    "about 32 GB), unzip it and pass its folder (the one holding images/ and "
    f"{NAMES_FILE}) as root or set AVGK_DATA_DIR."
)


class ImageFolderSplit(Dataset):
    """``(image, label)`` pairs of one split, labels from a fixed species-to-index map."""

    def __init__(self, folder: Path, class_index: dict[str, int], transform=None) -> None:
        self.samples: list[tuple[Path, int]] = []
        for species in sorted(p.name for p in folder.iterdir() if p.is_dir()):
            if species not in class_index:
                raise ValueError(f"species folder {folder / species} is not in the species list")
            for image in sorted((folder / species).iterdir()):
                if image.suffix.lower() in EXTENSIONS:
                    self.samples.append((image, class_index[species]))
        self.targets = torch.tensor([label for _, label in self.samples], dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        with Image.open(path) as img:
            image = img.convert("RGB")
        return (self.transform(image) if self.transform else image), label


def plantnet_transforms(train: bool, resize: int = 256, crop: int = 224):
    from torchvision import transforms as T

    crop_t = T.RandomCrop(crop) if train else T.CenterCrop(crop)
    return T.Compose([T.Resize(resize), crop_t, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def load_plantnet300k(*, root: Path | None = None, resize: int = 256, crop: int = 224) -> DatasetBundle:
    """Pl@ntNet-300K v1.1 as three image-folder datasets (read by DataLoader workers)."""
    root = Path(root) if root is not None else data_dir() / "plantnet_300K"
    names_file = root / NAMES_FILE
    images = root / "images"
    if not names_file.exists() or not (images / "train").is_dir():
        raise FileNotFoundError(f"Pl@ntNet-300K not found in {root}. {WHERE}")
    with open(names_file) as fh:
        id_to_name = json.load(fh)
    species = sorted(id_to_name)
    class_index = {s: i for i, s in enumerate(species)}
    splits = {}
    for split in ("train", "val", "test"):
        if not (images / split).is_dir():
            raise FileNotFoundError(f"missing split folder {images / split}. {WHERE}")
        splits[split] = ImageFolderSplit(
            images / split, class_index, plantnet_transforms(split == "train", resize, crop)
        )
    counts = torch.bincount(splits["train"].targets, minlength=len(species)).tolist()
    return DatasetBundle(
        name="plantnet300k",
        n_classes=len(species),
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        input_shape=(3, crop, crop),
        class_names=[id_to_name[s] for s in species],
        train_counts=counts,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        extra={"species_ids": species},
    )
