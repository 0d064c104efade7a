"""Committed reference results: small JSON files shipped inside the package.

The files live in ``avgk_lib/reference_results/`` (package data, so they are present in a wheel
installed from PyPI or on Colab) and are read through :mod:`importlib.resources`. They are written
by ``make references`` (``tools/reference_runs.py``), each with a provenance block (git commit,
preset, device, seeds, wall time).
"""

from __future__ import annotations

import json
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
