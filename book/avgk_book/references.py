"""Committed reference results: small JSON files shipped inside the package.

The files live in ``book/avgk_book/reference_results/`` (package data of the book package, so they
are present in its wheel, on Colab as from a checkout; ``avgk_lib`` ships none) and are read
through :mod:`importlib.resources`. They are written by ``make references``
(``tools/reference_runs.py``) and by the benchmarks under ``benchmarks/``
(:func:`write_reference`), each with the same provenance block and a checksum of its content
(verified on every load: :func:`unseal`) (git commit, library and package
versions, device; see :func:`avgk_lib.rundir.provenance`).
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

from avgk_lib.rundir import atomic_write_text, json_digest, provenance

PACKAGE_DIR = "reference_results"
CHECKSUM = "sha256"


class ReferenceError(ValueError):
    """A reference file that cannot be trusted: damaged, edited by hand, or without its checksum."""


def seal(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with its checksum (``"sha256"``) added."""
    return {**payload, CHECKSUM: json_digest(payload)}


def unseal(data: Any, name: str) -> dict[str, Any]:
    """The content of a sealed reference, its checksum verified and removed; :class:`ReferenceError`
    naming the file when the checksum is missing or does not match (the rows would not be the
    ones the runs wrote)."""
    if not isinstance(data, dict) or data.get(CHECKSUM) != json_digest(data):
        why = "has no checksum" if isinstance(data, dict) and CHECKSUM not in data else "fails its checksum"
        raise ReferenceError(
            f"reference {name} {why} (edited or damaged): restore it from the repository or regenerate it"
        )
    return {k: v for k, v in data.items() if k != CHECKSUM}


def reference_dir() -> Path:
    """The source-tree folder of the references (where ``make references`` writes them)."""
    return Path(__file__).resolve().parent / PACKAGE_DIR


def reference_names() -> list[str]:
    """Stems of every committed reference file, e.g. ``label_noise_cpu``."""
    folder = resources.files(__package__).joinpath(PACKAGE_DIR)
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def load_json_reference(stem: str) -> dict[str, Any] | None:
    """A committed reference file by stem (``"bench_losses_cpu"``), or ``None`` when absent."""
    if not isinstance(stem, str) or not stem:
        raise ValueError(f"`stem` must be a non-empty string, got {stem!r}")
    entry = resources.files(__package__).joinpath(PACKAGE_DIR).joinpath(f"{stem}.json")
    if not entry.is_file():
        return None
    try:
        data = json.loads(entry.read_text())
    except json.JSONDecodeError as err:
        raise ReferenceError(
            f"reference {stem}.json is not valid JSON ({err.msg} at line {err.lineno}; truncated or edited): "
            "restore it from the repository or regenerate it"
        ) from None
    return unseal(data, f"{stem}.json")


def write_reference(stem: str, payload: dict[str, Any], *, device: Any, directory: str | Path | None = None) -> Path:
    """Write ``payload`` to ``<directory>/<stem>.json`` (default: :func:`reference_dir`, the package's
    source tree) with ``"created"`` (ISO time) and ``"provenance"`` (:func:`avgk_lib.rundir.provenance`
    of ``device``: git commit, versions, device name) added; atomic (a tmp file, then a rename).

    Keys of ``payload`` win over ``"created"`` but never over ``"provenance"``."""
    if not isinstance(stem, str) or not stem or "/" in stem or stem.endswith(".json"):
        raise ValueError(f"`stem` must be a file name without folder or .json, got {stem!r}")
    if not isinstance(payload, dict):
        raise TypeError(f"`payload` must be a dict, got {type(payload).__name__}")
    if "provenance" in payload:
        raise ValueError("`payload` must not carry its own 'provenance': it is measured here")
    folder = Path(directory) if directory is not None else reference_dir()
    block = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **payload}
    block["provenance"] = provenance(device, 1)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.json"
    atomic_write_text(path, json.dumps(seal(block), indent=1) + "\n")
    return path
