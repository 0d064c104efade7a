"""Colab helpers: keep runs, checkpoints and datasets on Google Drive so they survive a disconnect.

A Colab runtime loses its local disk when it disconnects or is recycled. Training checkpoints
after every epoch into ``$AVGK_CACHE_DIR/runs/<config fingerprint>/last.pt`` and
:func:`avgk_book.experiments.run_experiment` resumes an interrupted run from there, so keeping
that folder on Drive is all a chapter needs to pick up where it stopped::

    from avgk_book.colab import use_drive
    use_drive()        # mounts Drive, then AVGK_CACHE_DIR=/content/drive/MyDrive/avgk/cache
                       #                  AVGK_DATA_DIR=/content/drive/MyDrive/avgk/data

Call it before training (the library reads both variables when it needs them). Off Colab it does
not mount anything: a folder outside the Drive mount point is used as it is (handy to test the
same notebook locally), and the default Drive path raises :class:`RuntimeError`.

:func:`default_preset` picks the preset of a chapter opened on Colab: the parameters cell keeps
the literal ``PRESET = "cpu"`` (papermill and the book rely on it) and the cell after it runs
``PRESET = default_preset(PRESET, DEVICE)``, which reads "cpu" as "colab" on a Colab GPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DRIVE_MOUNT = Path("/content/drive")
DEFAULT_FOLDER = DRIVE_MOUNT / "MyDrive" / "avgk"


def in_colab() -> bool:
    """True inside a Google Colab kernel (the ``google.colab`` module is loaded at its start)."""
    return "google.colab" in sys.modules


DEVICES = ("auto", "cpu", "cuda")


def default_preset(preset: str, device: str = "auto") -> str:
    """The preset a chapter runs with: ``"colab"`` when the parameters cell holds the default
    ``"cpu"``, the kernel is Colab's and a CUDA GPU is visible (and ``device`` is not ``"cpu"``);
    ``preset`` unchanged otherwise. Prints one line when it switches, so the page says so.

    To run the ``cpu`` preset on a Colab GPU anyway, set ``DEVICE = "cpu"`` (or pick ``"smoke"``
    or ``"gpu"`` explicitly: only the default is switched).

    Example:
        >>> default_preset("smoke")
        'smoke'
    """
    if not isinstance(preset, str) or not isinstance(device, str):
        raise TypeError(f"`preset` and `device` must be strings, got {preset!r} and {device!r}")
    from .experiments.spec import PRESETS

    if preset not in PRESETS:
        raise ValueError(f"`preset` must be one of {PRESETS}, got {preset!r}")
    if device not in DEVICES:
        raise ValueError(f"`device` must be one of {DEVICES}, got {device!r}")
    if preset != "cpu" or device == "cpu" or not in_colab():
        return preset
    import torch

    if not torch.cuda.is_available():
        return preset
    print('Running on Colab with a GPU: PRESET = "colab" (the parameters cell says "cpu"; DEVICE = "cpu" keeps it)')
    return "colab"


def _mount(mount_point: Path) -> None:
    """Mount Google Drive at ``mount_point`` (asks the user for access the first time)."""
    from google.colab import drive  # only importable on Colab

    drive.mount(str(mount_point))


def use_drive(
    path: str | Path = DEFAULT_FOLDER,
    *,
    mount_point: str | Path = DRIVE_MOUNT,
    data: bool = True,
    cache: bool = True,
) -> dict[str, Path]:
    """Point ``AVGK_CACHE_DIR`` to ``path/cache`` and ``AVGK_DATA_DIR`` to ``path/data``, mounting
    Google Drive first when running on Colab and ``path`` lies under ``mount_point``.

    Args:
        path: the folder that holds both (created if needed), default ``/content/drive/MyDrive/avgk``.
        mount_point: where Drive is mounted on Colab.
        data / cache: set ``AVGK_DATA_DIR`` / ``AVGK_CACHE_DIR`` (keep ``data=False`` to read large
            datasets such as Pl@ntNet-300K from the runtime's faster local disk).

    Returns:
        ``{"AVGK_CACHE_DIR": ..., "AVGK_DATA_DIR": ...}``: the variables set and their folders.
    """
    if not isinstance(path, (str, Path)) or not str(path):
        raise TypeError(f"`path` must be a non-empty str or Path, got {path!r}")
    if not isinstance(mount_point, (str, Path)) or not str(mount_point):
        raise TypeError(f"`mount_point` must be a non-empty str or Path, got {mount_point!r}")
    if not isinstance(data, bool) or not isinstance(cache, bool):
        raise TypeError(f"`data` and `cache` must be bools, got {data!r} and {cache!r}")
    if not (data or cache):
        raise ValueError("`data` and `cache` are both False: nothing to point at Drive")
    folder, mount_point = Path(path).expanduser(), Path(mount_point)
    if folder.is_relative_to(mount_point) and not (mount_point / "MyDrive").is_dir():
        if not in_colab():
            raise RuntimeError(
                f"{folder} is on Google Drive, which can only be mounted on Colab; off Colab pass a local "
                "folder (use_drive('/some/folder')) or set AVGK_CACHE_DIR / AVGK_DATA_DIR yourself"
            )
        _mount(mount_point)
    chosen = {"AVGK_CACHE_DIR": folder / "cache", "AVGK_DATA_DIR": folder / "data"}
    if not cache:
        del chosen["AVGK_CACHE_DIR"]
    if not data:
        del chosen["AVGK_DATA_DIR"]
    for variable, where in chosen.items():
        where.mkdir(parents=True, exist_ok=True)
        os.environ[variable] = str(where)
    return chosen
