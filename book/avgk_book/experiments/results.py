"""Reference files (committed results with tuning and provenance) and summaries over seeds."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from avgk_lib.rundir import atomic_write_json
from avgk_lib.train import provenance

from ..references import load_json_reference, reference_dir, seal, unseal
from .spec import ARMS, TUNING_SEEDS

RESULTS_DIR = reference_dir()


def save_arms_reference(name: str, preset: str, arms: dict[str, dict[str, Any]], directory: Path = RESULTS_DIR) -> Path:
    """Write ``<name>_<preset>.json`` with both protocols: ``"arms": {arm: {"rows", "seeds", ...}}``
    (the shape :func:`avgk_book.claims.reference_arms` reads; the tuned arm also holds its
    ``tuning``), the rows without local paths, each arm's total wall time, and provenance.

    ``arms`` maps ``"paper"`` / ``"tuned"`` to a dict with ``rows`` (a list), ``seeds`` and any
    other keys (``tuning``, ``fingerprints``), which are kept."""
    import torch

    if not isinstance(arms, dict) or not arms:
        raise TypeError(f"`arms` must be a non-empty dict {{arm: {{'rows': [...], 'seeds': [...]}}}}, got {arms!r}")
    for arm, part in arms.items():
        if arm not in ARMS:
            raise ValueError(f"`arms` key must be one of {', '.join(ARMS)}, got {arm!r}")
        if not isinstance(part, dict) or not isinstance(part.get("rows"), list):
            raise ValueError(f"`arms` entry {arm!r} must be a dict with a list of 'rows'")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}_{preset}.json"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    payload = {
        "experiment": name,
        "preset": preset,
        "tuning_seeds": list(TUNING_SEEDS),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "provenance": provenance(device, 1),
        "arms": {
            arm: {
                **part,
                "seeds": list(part.get("seeds", [])),
                "total_wall_seconds": sum(r.get("wall_seconds", 0.0) for r in part["rows"]),
                "rows": [{k: v for k, v in r.items() if k != "run"} for r in part["rows"]],
            }
            for arm, part in arms.items()
        },
    }
    atomic_write_json(path, seal(payload))
    return path


def load_reference(name: str, preset: str = "cpu", directory: Path = RESULTS_DIR) -> dict[str, Any] | None:
    """The committed reference results of an experiment, or ``None`` when there are none."""
    if directory is not RESULTS_DIR:
        path = Path(directory) / f"{name}_{preset}.json"
        return unseal(json.loads(path.read_text()), str(path)) if path.exists() else None
    return load_json_reference(f"{name}_{preset}")


def load_arm(
    name: str, preset: str = "cpu", arm: str | None = None, directory: Path = RESULTS_DIR
) -> dict[str, Any] | None:
    """One arm of an experiment's committed reference as a flat dict, what a chapter's tables
    read: the arm's ``rows``, ``seeds`` (and ``tuning`` for the tuned arm) with the file's
    ``experiment``, ``preset``, ``created`` and ``provenance``, and ``"arm"``.

    ``arm=None`` takes the tuned arm when the reference has its runs, else the paper arm; a reference
    of the single-arm format is its tuned arm. ``None`` when there is no such reference or arm."""
    if arm is not None and arm not in ARMS:
        raise ValueError(f"`arm` must be None or one of {', '.join(ARMS)}, got {arm!r}")
    reference = load_reference(name, preset, directory)
    if reference is None:
        return None
    arms = reference["arms"] if "arms" in reference else {"tuned": reference}
    chosen = arm or ("tuned" if arms.get("tuned", {}).get("rows") else "paper")
    if chosen not in arms:
        return None
    outer = {k: v for k, v in reference.items() if k not in ("arms", "rows", "tuning", "seeds")}
    return {**outer, **arms[chosen], "arm": chosen}


def summarize(rows: list[dict[str, Any]], by: list[str], metrics: list[str]) -> list[dict[str, Any]]:
    """Mean and 95% confidence half-width (Student t over seeds) of ``metrics`` per group ``by``."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(b) for b in by), []).append(row)
    out = []
    for key, members in groups.items():
        entry: dict[str, Any] = dict(zip(by, key, strict=True))
        entry["n_seeds"] = len(members)
        for m in metrics:
            values = [r[m] for r in members if m in r and r[m] is not None]
            mean = sum(values) / len(values) if values else math.nan
            entry[m] = mean
            entry[f"{m}_ci95"] = _t95(len(values)) * _std(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def _std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _t95(n: int) -> float:
    """Two-sided 95% Student t quantile with n - 1 degrees of freedom (exact to 3 decimals to n = 31)."""
    table = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145]
    return table[n - 2] if 2 <= n < len(table) + 2 else 2.0 + 2.5 / max(n - 1, 1)
