r"""Equal-budget tuning of the tuned arm on the validation split, every knob bracketed.

Per setting, every method starts from the same budget: 3 learning rates x 3 values of its own knob
(cross-entropy, without a knob: 9 learning rates), each point trained on the tuning draws
:data:`~avgk_book.experiments.spec.TUNING_SEEDS` and scored by its mean best-validation metric
(:math:`-\infty` when it diverged, or gave degenerate sets, on any draw). A knob whose best value
lies on an edge of the values tried is then extended by one geometric step (at most
:data:`MAX_EXTENSIONS` times per knob, never beyond
:data:`~avgk_book.experiments.catalog.KNOB_LIMITS`); a choice still on an edge is recorded as
unbracketed. Each round (all methods of a setting, all draws) is one call of
:func:`~avgk_book.experiments.runner.train_or_load_many`, which stacks what can share a stack.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

from avgk_lib.metrics import degenerate_sets

from .catalog import KNOB_LIMITS
from .grid import _config, _methods_of, get_experiment, lr_grid_of, tuning_key
from .runner import train_or_load_many
from .spec import TUNING_SEEDS, Preset, Setting, check_arm

MAX_EXTENSIONS = 2
#: keys of a scored point that are not knob values
SCORE_KEYS = ("val", "val_draws", "best_epoch", "best_epochs", "diverged", "cached")


def tune(
    name: str,
    preset: str,
    *,
    arm: str = "tuned",
    progress: bool = False,
    log: Callable[[str], None] = print,
    device: str = "auto",
    datasets: list[str] | None = None,
    methods: list[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Tuned arm: the bracketing search of every method (or of ``methods`` only) of every setting (the paper arm, an
    experiment ``tuned_by`` another and an untuned preset return ``{}``).

    Returns, per ``tuning_key(setting, method)``: ``grid`` (every point tried, as trained, with
    ``val`` = the mean over the draws of its best validation score of the setting's selection
    metric, and ``val_draws``), ``chosen`` (the best point), ``trials`` (points tried), ``knobs``
    (per knob: ``values`` tried, ``extensions``, ``bracketed``, ``limit``), ``bracketed`` (every
    knob), ``metric`` and ``draws`` (the tuning seeds). A balanced-test twin reuses its long-tailed
    twin's entries (``reused_from``). ``datasets`` tunes only the settings of these dataset
    families (as :func:`~avgk_book.experiments.grid.expand`'s)."""
    experiment = get_experiment(name)
    spec = experiment.preset(preset)
    if check_arm(arm) == "paper" or experiment.tuned_by or not spec.tune:
        return {}
    if methods is not None and (isinstance(methods, str) or not set(methods) <= set(experiment.methods) or not methods):
        raise ValueError(f"`methods` must be a non-empty list of {sorted(experiment.methods)}, got {methods!r}")
    kw = {"progress": progress, "log": log, "device": device, "only": methods}
    out: dict[str, dict[str, Any]] = {}
    for setting in spec.settings:
        if not setting.picked_by(datasets):
            continue
        if _unbalanced_twin(spec, setting) is None:
            out.update(_tune_setting(name, spec, setting, **kw))
    for setting in spec.settings:  # balanced-test twins take the long-tailed choices
        twin = _unbalanced_twin(spec, setting)
        if twin is not None and setting.picked_by(datasets):
            for method_name in _methods_of(experiment, setting):
                if methods is not None and method_name not in methods:
                    continue
                key = tuning_key(twin, method_name)
                out[tuning_key(setting, method_name)] = {**out[key], "reused_from": key}
    return out


def _tune_setting(name: str, spec: Preset, setting: Setting, **kw: Any) -> dict[str, dict[str, Any]]:
    """The bracketing search of every method of one setting, all methods in the same rounds."""
    methods = _methods_of(get_experiment(name), setting)
    if kw["only"] is not None:
        methods = {m: method for m, method in methods.items() if m in kw["only"]}
    grids = {m: method.knob_grid(lr_grid_of(spec, setting, method)) for m, method in methods.items()}
    log = kw["log"]

    def score(items: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        configs = [
            _config(setting, methods[m], methods[m].point(knobs), setting.tune_k, seed, {"device": kw["device"]})
            for m, knobs in items
            for seed in TUNING_SEEDS
        ]
        outcomes = train_or_load_many(configs, progress=kw["progress"], log=lambda *_: None)
        n = len(TUNING_SEEDS)
        out = []
        for i, (m, knobs) in enumerate(items):
            label = f"{name}/{tuning_key(setting, m)} {methods[m].point(knobs)}"
            draws = [_score(o, setting.tune_k, label, log) for o in outcomes[i * n : (i + 1) * n]]
            out.append(_mean_of_draws(draws))
        return out

    entries = _bracketing_search(grids, score, point_of=lambda m, knobs: methods[m].point(knobs))
    metric = setting.select_key(setting.tune_k)
    return {tuning_key(setting, m): {**e, "metric": metric, "draws": list(TUNING_SEEDS)} for m, e in entries.items()}


def _mean_of_draws(draws: list[dict[str, Any]]) -> dict[str, Any]:
    """A point's score from its draws: the mean validation score, ``-inf`` if any draw is ``-inf``."""
    values = [d["val"] for d in draws]
    mean = sum(values) / len(values) if all(math.isfinite(v) for v in values) else -math.inf
    out = {"val": mean, "val_draws": values, "best_epochs": [d["best_epoch"] for d in draws]}
    if any(d.get("diverged") for d in draws):
        out["diverged"] = True
    if all(d.get("cached") for d in draws):
        out["cached"] = True
    return out


def _score(outcome: tuple, k: float, label: str, log: Callable[[str], None]) -> dict[str, Any]:
    """Validation score of one grid point on one draw from its ``(results, folder, cached)``: its
    best epoch's selection metric; ``-inf`` when its sets are degenerate (tied scores) or the run
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


def _check_grids(grids: object) -> dict[str, dict[str, list[float]]]:
    if not isinstance(grids, Mapping) or not grids:
        raise TypeError(f"`grids` must be a non-empty dict {{method: {{knob: values}}}}, got {grids!r}")
    out = {}
    for key, grid in grids.items():
        if not isinstance(grid, Mapping) or not grid:
            raise ValueError(f"`grids` entry {key!r} must be a non-empty dict {{knob: values}}, got {grid!r}")
        for knob, values in grid.items():
            ok = isinstance(values, (list, tuple)) and values
            if not ok or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 for v in values):
                raise ValueError(
                    f"`grids` {key!r} knob {knob!r} must be a non-empty list of numbers > 0, got {values!r}"
                )
        out[key] = {knob: sorted({float(v) for v in values}) for knob, values in grid.items()}
    return out


def _step(values: list[float]) -> float | None:
    """One geometric step of a grid: the ratio of its outermost values spread over its intervals
    (``{0.1, 0.3, 1}``: :math:`\\sqrt{10} \\approx 3.16`); None for a single value."""
    return (values[-1] / values[0]) ** (1.0 / (len(values) - 1)) if len(values) > 1 else None


def _extend(value: float, raw: float, step: float, limits: tuple[float, float]) -> tuple[float, float] | None:
    """The next value past ``value`` (an edge of the values tried, ``raw`` its unrounded value) by
    ``step`` upwards (``step > 1``) or downwards (``step < 1``), to 4 significant digits and clipped
    to ``limits``: ``(value, raw)``, or None when ``value`` already is at (or beyond) that limit."""
    low, high = limits
    raw = raw * step
    new = min(max(float(f"{raw:.4g}"), low), high)
    moved = new > value if step > 1 else new < value
    return (new, raw) if moved else None


def _bracketing_search(
    grids: Mapping[str, Mapping[str, list[float]]],
    score: Callable[[list[tuple[str, dict[str, float]]]], list[Any]],
    *,
    limits: Mapping[str, tuple[float, float]] = KNOB_LIMITS,
    point_of: Callable[[str, dict[str, float]], dict[str, Any]] | None = None,
    max_extensions: int = MAX_EXTENSIONS,
) -> dict[str, dict[str, Any]]:
    """Grid search with bracketing of every knob, for several methods in lockstep.

    ``grids`` maps a method to its base grid ``{knob: values}`` (every point of the product is
    tried). Each round passes every new ``(method, knob values)`` of every method to ``score`` at
    once, which returns one score per item (a number, or a dict with ``"val"``; higher is better,
    non-finite never wins). Then, per method, every knob whose best value is the lowest or highest
    value tried gets one more value, one geometric step (:func:`_step` of its base grid) further,
    at most ``max_extensions`` times and never beyond ``limits[knob]``; the grid stays a product
    (the new value is tried with every value of the other knobs). Rounds stop when no knob extends.

    Returns per method: ``grid`` (each point as ``point_of(method, knobs)`` gives it, default the
    knob values, with its score), ``chosen`` (the best), ``trials``, ``base_trials`` (the base
    grid's size), ``knobs`` (per knob: ``values`` tried, ``extensions``, ``bracketed`` (the best
    value is interior), ``limit`` (stopped by a hard limit)) and ``bracketed`` (all knobs)."""
    grids = _check_grids(grids)
    if not callable(score):
        raise TypeError(f"`score` must be a function of a list of (method, knobs), got {score!r}")
    point_of = point_of or (lambda _, knobs: dict(knobs))
    tried = {m: {k: list(v) for k, v in g.items()} for m, g in grids.items()}
    steps = {m: {k: _step(v) for k, v in g.items()} for m, g in grids.items()}
    extensions = {m: dict.fromkeys(g, 0) for m, g in grids.items()}
    raw = {m: {k: {"low": v[0], "high": v[-1]} for k, v in g.items()} for m, g in grids.items()}
    at_limit = {m: dict.fromkeys(g, False) for m, g in grids.items()}
    scored: dict[str, dict[tuple, dict[str, Any]]] = {m: {} for m in grids}
    pending = {m: _product(g) for m, g in tried.items()}
    while any(pending.values()):
        items = [(m, dict(knobs)) for m, points in pending.items() for knobs in points]
        results = score(items)
        if not isinstance(results, list) or len(results) != len(items):
            raise ValueError(f"`score` must return one score per item ({len(items)}), got {results!r}")
        for (m, knobs), result in zip(items, results, strict=True):
            scored[m][tuple(knobs.items())] = dict(result) if isinstance(result, Mapping) else {"val": float(result)}
        pending = {}
        for m in grids:
            best = dict(_best(scored[m]))
            grown = False
            for knob, values in tried[m].items():
                if steps[m][knob] is None or best[knob] not in (values[0], values[-1]):
                    continue
                if extensions[m][knob] >= max_extensions:
                    continue
                bounds = limits.get(knob, (0.0, math.inf))
                side = "high" if best[knob] == values[-1] else "low"
                step = steps[m][knob] if side == "high" else 1.0 / steps[m][knob]
                extended = _extend(best[knob], raw[m][knob][side], step, bounds)
                at_limit[m][knob] = extended is None or extended[0] in bounds
                if extended is None:
                    continue
                new, raw[m][knob][side] = extended
                tried[m][knob] = sorted([*values, new])
                extensions[m][knob] += 1
                grown = True
            if grown:
                pending[m] = [p for p in _product(tried[m]) if tuple(p.items()) not in scored[m]]
    return {m: _entry(m, tried[m], scored[m], extensions[m], at_limit[m], grids[m], point_of) for m in grids}


def _product(grid: dict[str, list[float]]) -> list[dict[str, float]]:
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def _value(result: Mapping[str, Any]) -> float:
    value = result["val"]
    return value if isinstance(value, (int, float)) and math.isfinite(value) else -math.inf


def _best(scored: dict[tuple, dict[str, Any]]) -> tuple:
    """The knob values of the best point (the first tried among equals)."""
    return max(scored, key=lambda knobs: _value(scored[knobs]))


def _entry(m, tried, scored, extensions, at_limit, base, point_of) -> dict[str, Any]:
    best = dict(_best(scored))
    knobs = {}
    for knob, values in tried.items():
        interior = values[0] < best[knob] < values[-1]
        knobs[knob] = {
            "values": values,
            "extensions": extensions[knob],
            "bracketed": bool(interior),
            "limit": bool(at_limit[knob] and not interior),
        }
    return {
        "grid": [{**point_of(m, dict(k)), **result} for k, result in scored.items()],
        "chosen": point_of(m, best),
        "trials": len(scored),
        "base_trials": math.prod(len(v) for v in base.values()),
        "knobs": knobs,
        "bracketed": all(k["bracketed"] for k in knobs.values()),
    }


def _unbalanced_twin(spec: Preset, setting: Setting) -> Setting | None:
    if not setting.options.get("balanced_eval"):
        return None
    options = {k: v for k, v in setting.options.items() if k != "balanced_eval"}
    return next((s for s in spec.settings if s.options == options and s is not setting), None)
