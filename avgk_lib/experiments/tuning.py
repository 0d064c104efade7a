"""Equal-budget tuning on the validation split, with an lr grid that brackets every optimum."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..evaluation import degenerate_sets, k_label
from .grid import _config, _methods_of, get_experiment, tuning_key
from .runner import train_or_load_many
from .spec import TUNING_SEED, Method, Preset, Setting


def tune(
    name: str,
    preset: str,
    *,
    progress: bool = False,
    log: Callable[[str], None] = print,
    device: str = "auto",
) -> dict[str, dict[str, Any]]:
    """Grid search on the validation split, one tuning seed, the same lr grid for every method.

    The lr grid is extended (same ratio, at most :data:`MAX_EXTENSIONS` steps each way) while a
    method's best point lies on its edge, so that every method's optimum is bracketed: a loss
    averaged over C sigmoid outputs needs a step about C times larger than cross-entropy.
    Returns, per ``tuning_key(setting, method)``: ``grid`` (every point with its best validation
    score of the setting's selection metric), ``chosen`` (the best point), ``metric`` and
    ``lr_grid`` (the base lr values tried)."""
    experiment = get_experiment(name)
    spec = experiment.preset(preset)
    out: dict[str, dict[str, Any]] = {}
    if experiment.tuned_by or not spec.tune:
        return out
    for setting in spec.settings:
        if _unbalanced_twin(spec, setting) is not None:
            continue  # the balanced-test variant reuses the choices of its long-tailed twin
        for method_name, method in _methods_of(experiment, setting).items():

            def score(points: list[dict[str, Any]], setting=setting, method=method, method_name=method_name) -> list:
                configs = [_config(setting, method, p, setting.tune_k, TUNING_SEED, {"device": device}) for p in points]
                outcomes = train_or_load_many(configs, progress=progress, log=lambda *_: None)
                label = f"{name}/{tuning_key(setting, method_name)}"
                return [
                    {**p, **_score(o, setting.tune_k, f"{label} {p}", log)}
                    for p, o in zip(points, outcomes, strict=True)
                ]

            entry = _bracketing_search(method, list(setting.lr_grid or spec.lr_grid), score)
            entry["metric"] = setting.select.format(k=k_label(setting.tune_k))
            out[tuning_key(setting, method_name)] = entry
    for setting in spec.settings:  # balanced-test twins take the long-tailed choices
        twin = _unbalanced_twin(spec, setting)
        if twin is not None:
            for method_name in _methods_of(experiment, setting):
                key = tuning_key(twin, method_name)
                out[tuning_key(setting, method_name)] = {**out[key], "reused_from": key}
    return out


MAX_EXTENSIONS = 2


def _score(outcome: tuple, k: float, label: str, log: Callable[[str], None]) -> dict[str, Any]:
    """Validation score of one grid point from its ``(results, folder, cached)``: its best
    epoch's selection metric; ``-inf`` when its sets are degenerate (tied scores) or the run
    diverged (a grid point too large for the loss)."""
    results, _, cached = outcome
    if isinstance(results, Exception):  # TrainingDiverged: the point is out of the loss's range
        log(f"tune {label}: diverged ({str(results).splitlines()[0][:120]})")
        return {"val": -math.inf, "best_epoch": 0, "diverged": True}
    value = results["summary"]["best_val"]
    best = results["history"][results["summary"]["best_epoch"] - 1]["val"]
    if degenerate_sets(best, k):
        value = -math.inf  # tied scores: never chosen
    log(f"tune {label}: val {value:.4f}{' (cached)' * cached}")
    return {"val": value, "best_epoch": results["summary"]["best_epoch"], **({"cached": True} if cached else {})}


def _bracketing_search(method: Method, lr_grid: list[float], score: Callable[[list], list]) -> dict[str, Any]:
    """Score ``method.points(lr_grid)`` (all at once: they train as one stack where they can);
    extend the lr grid past an edge holding the best point."""
    tried = sorted(lr_grid)
    scored = score(method.points(tried))
    for _ in range(MAX_EXTENSIONS):
        best_lr = _base_lr(method, max(scored, key=_value))
        if len(tried) < 2 or best_lr not in (tried[0], tried[-1]):
            break
        new = _next_lr(tried[0], -1) if best_lr == tried[0] else _next_lr(tried[-1], +1)
        tried = sorted([*tried, new])
        scored += score(method.points([new]))
    best = max(scored, key=_value)
    return {
        "grid": scored,
        "lr_grid": tried,
        "chosen": {k: v for k, v in best.items() if k not in ("val", "best_epoch", "diverged", "cached")},
    }


def _next_lr(lr: float, direction: int) -> float:
    """The next value of the 1-3-10 sequence (..., 0.01, 0.03, 0.1, 0.3, 1, ...) below or above ``lr``."""
    ladder = [round(m * 10.0**e, 12) for e in range(-6, 4) for m in (1.0, 3.0)]
    if direction < 0:
        return max(v for v in ladder if v < lr * (1 - 1e-9))
    return min(v for v in ladder if v > lr * (1 + 1e-9))


def _value(point: dict[str, Any]) -> float:
    return point["val"] if math.isfinite(point["val"]) else -math.inf


def _base_lr(method: Method, point: dict[str, Any]) -> float:
    """The lr-grid value a point came from (undoing ``lr_per_scale``)."""
    if not method.lr_per_scale:
        return point["lr"]
    return point["lr"] * {**method.options, **point}.get("scale", 1.0)


def _unbalanced_twin(spec: Preset, setting: Setting) -> Setting | None:
    if not setting.options.get("balanced_eval"):
        return None
    options = {k: v for k, v in setting.options.items() if k != "balanced_eval"}
    return next((s for s in spec.settings if s.options == options and s is not setting), None)
