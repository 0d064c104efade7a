"""Committed reference results: small JSON files shipped inside the package.

The files live in ``avgk_lib/reference_results/`` (package data, so they are present in a wheel
installed from PyPI or on Colab) and are read through :mod:`importlib.resources`. They are written
by ``make references`` (``tools/reference_runs.py``) and by the benchmarks under ``benchmarks/``
(:func:`write_reference`), each with the same provenance block (git commit, library and package
versions, device; see :func:`avgk_lib.train.provenance`).
"""

from __future__ import annotations

import json
import os
import time
from importlib import resources
from pathlib import Path
from typing import Any

PACKAGE_DIR = "reference_results"


def reference_dir() -> Path:
    """The source-tree folder of the references (where ``make references`` writes them)."""
    return Path(__file__).resolve().parent / PACKAGE_DIR


def reference_names() -> list[str]:
    """Stems of every committed reference file, e.g. ``label_noise_cpu``."""
    folder = resources.files("avgk_lib").joinpath(PACKAGE_DIR)
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def load_json_reference(stem: str) -> dict[str, Any] | None:
    """A committed reference file by stem (``"bench_losses_cpu"``), or ``None`` when absent."""
    if not isinstance(stem, str) or not stem:
        raise ValueError(f"`stem` must be a non-empty string, got {stem!r}")
    entry = resources.files("avgk_lib").joinpath(PACKAGE_DIR).joinpath(f"{stem}.json")
    if not entry.is_file():
        return None
    return json.loads(entry.read_text())


def write_reference(stem: str, payload: dict[str, Any], *, device: Any, directory: str | Path | None = None) -> Path:
    """Write ``payload`` to ``<directory>/<stem>.json`` (default: :func:`reference_dir`, the package's
    source tree) with ``"created"`` (ISO time) and ``"provenance"`` (:func:`avgk_lib.train.provenance`
    of ``device``: git commit, versions, device name) added; atomic (a tmp file, then a rename).

    Keys of ``payload`` win over ``"created"`` but never over ``"provenance"``."""
    if not isinstance(stem, str) or not stem or "/" in stem or stem.endswith(".json"):
        raise ValueError(f"`stem` must be a file name without folder or .json, got {stem!r}")
    if not isinstance(payload, dict):
        raise TypeError(f"`payload` must be a dict, got {type(payload).__name__}")
    if "provenance" in payload:
        raise ValueError("`payload` must not carry its own 'provenance': it is measured here")
    import torch  # heavy: only the writers of references need it, not the readers

    from .train import provenance

    folder = Path(directory) if directory is not None else reference_dir()
    block = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **payload}
    block["provenance"] = provenance(torch.device(device), 1)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.json"
    tmp = folder / f".{stem}.json.tmp-{os.getpid()}"
    try:
        tmp.write_text(json.dumps(block, indent=1) + "\n")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
