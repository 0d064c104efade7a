"""Pl@ntNet-300K v1.1 (Garcin et al. 2021): 306,146 plant images of 1,081 species.

**The library never downloads it.** Get version 1.1 of Zenodo record 5645731 (about 32 GB; not
v1.0, whose metadata is wrong, and not the 1,000-class "v2"). Expected layout under ``root``
(default ``$AVGK_DATA_DIR/plantnet_300K``)::

    plantnet300K_species_id_2_name.json
    images/train/<species_id>/<image>.jpg     (243,916 images)
    images/val/<species_id>/...               (31,118)
    images/test/<species_id>/...              (31,112)

On Colab a free Google Drive (15 GB) cannot hold it: download the zip to the runtime's local disk
(``/content``, lost at disconnect) or keep it on a paid Drive and mount it with
:func:`avgk_book.colab.use_drive`. The images of a few species can be extracted alone
(``unzip plantnet_300K.zip 'plantnet_300K/images/*/1355932/*'`` plus the JSON file).

Subset route (one free GPU session): ``max_classes`` keeps that many species, taken at evenly
spaced ranks of the training-count ranking (most to least frequent), so the subset keeps the
head-to-tail profile of the full data; ``max_per_class`` caps the *training* images of each kept
species (the first ones in sorted file order). Validation and test keep every image of the kept
species. Class indices are the ranks of the kept species ids among themselves.

The class index of a species is its rank among the sorted species ids, the same for every
split, even when a rare species has no image in validation or test. Transforms follow P1:
resize 256, crop 224 (random at train time, centre otherwise), no flip, ImageNet statistics.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .base import DATA_ENV, DataFolderError, DatasetBundle, DatasetInfo, check_folder, data_dir

N_SPECIES = 1081  # v1.1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NAMES_FILE = "plantnet300K_species_id_2_name.json"
EXTENSIONS = {".jpg", ".jpeg", ".png"}
SPLITS = ("train", "val", "test")
WHERE = (
    "The library never downloads it: get Pl@ntNet-300K version 1.1 from Zenodo record 5645731 "
    "(https://zenodo.org/records/5645731, about 32 GB zipped), unzip it and pass its folder (the one holding "
    f"images/train, images/val, images/test and {NAMES_FILE}) as root, or put it at $AVGK_DATA_DIR/plantnet_300K. "
    "On Colab: unzip it on the local disk (/content) or on a mounted Drive (avgk_book.colab.use_drive()); "
    "max_classes / max_per_class train on a subset. See book/how_to_run.md."
)


def _entries(folder: Path) -> list[Path]:
    """The entries of ``folder``; a symbolic link that leads nowhere (a loop, or a broken link) raises
    one :class:`~avgk_lib.data.base.DataFolderError` line naming it instead of being skipped."""
    try:
        entries = list(folder.iterdir())
    except OSError as err:
        raise DataFolderError(f"cannot list the Pl@ntNet-300K folder {folder} ({err.strerror or err})") from None
    for entry in entries:
        if entry.is_symlink():
            try:
                entry.stat()
            except OSError as err:
                kind = "a symbolic-link loop" if err.errno == errno.ELOOP else "a broken symbolic link"
                raise DataFolderError(f"{entry} is {kind} ({err.strerror}); remove it or point it at a file") from None
    return entries


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in _entries(folder) if p.is_file() and p.suffix.lower() in EXTENSIONS)


class ImageFolderSplit(Dataset):
    """``(image, label)`` pairs of one split, labels from a fixed species-to-index map.

    ``known`` (default: the keys of ``class_index``) are the species a folder may name; species
    known but absent from ``class_index`` are skipped (a subset). ``max_per_class`` keeps the first
    images of each species in sorted file order."""

    def __init__(
        self,
        folder: Path,
        class_index: dict[str, int],
        transform=None,
        *,
        known: set[str] | None = None,
        max_per_class: int | None = None,
    ) -> None:
        known = set(class_index) if known is None else known
        self.samples: list[tuple[Path, int]] = []
        for species in sorted(p.name for p in _entries(folder) if p.is_dir()):
            if species not in known:
                raise ValueError(f"species folder {folder / species} is not in the species list ({NAMES_FILE})")
            if species in class_index:
                images = _list_images(folder / species)[:max_per_class]
                self.samples.extend((image, class_index[species]) for image in images)
        self.targets = torch.tensor([label for _, label in self.samples], dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read image {path} ({err})") from err
        return (self.transform(image) if self.transform else image), label


def plantnet_transforms(train: bool, resize: int = 256, crop: int = 224):
    from torchvision import transforms as T

    crop_t = T.RandomCrop(crop) if train else T.CenterCrop(crop)
    return T.Compose([T.Resize(resize), crop_t, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def read_species_names(root: Path) -> dict[str, str]:
    """The species-id-to-name map of ``root/plantnet300K_species_id_2_name.json`` (checked)."""
    path = root / NAMES_FILE
    try:
        names = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); unzip it again from Zenodo record 5645731") from err
    if not isinstance(names, dict) or not names or not all(isinstance(v, str) for v in names.values()):
        raise ValueError(f"{path} must map species ids to names (a non-empty JSON object of strings)")
    return names


def select_species(species: list[str], train_folder: Path, max_classes: int | None) -> list[str]:
    """``max_classes`` species at evenly spaced ranks of the training-count ranking (ties: by id),
    returned sorted by id; every species when ``max_classes`` is None or not smaller."""
    if max_classes is None or max_classes >= len(species):
        return list(species)
    counts = {s: len(_list_images(train_folder / s)) if (train_folder / s).is_dir() else 0 for s in species}
    ranked = sorted(species, key=lambda s: (-counts[s], s))
    if max_classes == 1:
        return [ranked[0]]
    step = (len(ranked) - 1) / (max_classes - 1)
    return sorted(ranked[round(i * step)] for i in range(max_classes))


def _check_options(resize: int, crop: int, max_classes: int | None, max_per_class: int | None) -> None:
    for name, value in (("resize", resize), ("crop", crop)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    if crop > resize:
        raise ValueError(f"`crop` ({crop}) must not exceed `resize` ({resize})")
    for name, value in (("max_classes", max_classes), ("max_per_class", max_per_class)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"`{name}` must be None or a positive int, got {value!r}")


def load_plantnet300k(
    *,
    root: Path | None = None,
    resize: int = 256,
    crop: int = 224,
    max_classes: int | None = None,
    max_per_class: int | None = None,
) -> DatasetBundle:
    """Pl@ntNet-300K v1.1 as three image-folder datasets (read by DataLoader workers).

    ``max_classes`` / ``max_per_class`` select a subset (see the module docstring). A missing or
    incomplete folder raises :class:`FileNotFoundError` naming it, with the size, the Zenodo
    record and the expected layout."""
    _check_options(resize, crop, max_classes, max_per_class)
    if root is not None and not isinstance(root, (str, Path)):
        raise TypeError(f"`root` must be a str or Path, got {type(root).__name__}")
    if root is None:
        root = check_folder(data_dir(), DATA_ENV) / "plantnet_300K"
        check_folder(root, DATA_ENV)
    else:
        root = check_folder(Path(root).expanduser(), DATA_ENV, argument="root")
    images = root / "images"
    if not (root / NAMES_FILE).is_file():
        raise FileNotFoundError(f"Pl@ntNet-300K not found in {root}: no {NAMES_FILE}. {WHERE}")
    for split in SPLITS:
        if not (images / split).is_dir():
            raise FileNotFoundError(f"Pl@ntNet-300K in {root} is incomplete: missing folder {images / split}. {WHERE}")
    id_to_name = read_species_names(root)
    species = select_species(sorted(id_to_name), images / "train", max_classes)
    class_index = {s: i for i, s in enumerate(species)}
    splits = {
        split: ImageFolderSplit(
            images / split,
            class_index,
            plantnet_transforms(split == "train", resize, crop),
            known=set(id_to_name),
            max_per_class=max_per_class if split == "train" else None,
        )
        for split in SPLITS
    }
    for split, data in splits.items():
        if len(data) == 0:
            kept = f" of the {len(species)} species kept by max_classes={max_classes}" if max_classes else ""
            raise ValueError(f"no {split} image ({', '.join(sorted(EXTENSIONS))}){kept} under {images / split}")
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
        extra={"species_ids": species, "max_classes": max_classes, "max_per_class": max_per_class},
    )


INFO = DatasetInfo(
    "plantnet300k",
    load_plantnet300k,
    default_model="resnet50",
    input_shape=lambda options: (3, options["crop"], options["crop"]),
    seeded_options=(),
    counts=("resize", "crop", "max_classes", "max_per_class"),
    n_classes=N_SPECIES,
    classes_option="max_classes",
)
