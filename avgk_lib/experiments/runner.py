"""Training (or reloading) the runs of an experiment, one table row per run."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..data import cache_dir
from ..rundir import RunDir
from ..runspec import RunSpec
from ..train import train_many
from .grid import check_overrides, check_seeds, chosen_from_reference, expand
from .spec import Run


def run_dir(config: TrainConfig) -> Path:
    """The run cache's folder of a configuration: ``$AVGK_CACHE_DIR/runs/<fingerprint>``."""
    return cache_dir() / "runs" / config.fingerprint()


def train_or_load(
    config: TrainConfig, *, force: bool = False, progress: bool = True, log: Callable[[str], None] = print
) -> tuple[dict[str, Any], Path, bool]:
    """(results, folder, cached) of one run: see :func:`train_or_load_many`. Raises
    :class:`~avgk_lib.engine.TrainingDiverged` when the run diverges."""
    (outcome,) = train_or_load_many([config], force=force, progress=progress, log=log)
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    return outcome


def _cached(spec: RunSpec, folder: RunDir, force: bool) -> dict[str, Any] | None:
    if force:
        folder.clear()
    result, why = folder.read_result(spec.fingerprint)
    if result is not None:
        return result.to_dict()
    if why:
        warnings.warn(f"not reusing the cached run in {folder.path}: {why}; training it again", stacklevel=3)
        folder.results.unlink(missing_ok=True)
    return None


def train_or_load_many(
    configs: list[TrainConfig], *, force: bool = False, progress: bool = True, log: Callable[[str], None] = print
) -> list[tuple[dict[str, Any] | Exception, Path, bool]]:
    """``(results, folder, cached)`` per config, in order: reloaded when finished (its
    ``results.json`` intact and of this configuration), resumed when interrupted, trained
    otherwise, the runs that can share a stack as one stacked model
    (:func:`~avgk_lib.train.train_many`). A result that cannot be trusted (damaged, edited, of
    another configuration) is trained again with a warning naming the folder. ``results`` is
    the :class:`~avgk_lib.engine.TrainingDiverged` error of a run that diverged."""
    specs = [RunSpec.resolve(c) for c in configs]
    folders = [RunDir(run_dir(spec.config)) for spec in specs]
    outcomes: list[Any] = [(_cached(s, f, force), f.path, True) for s, f in zip(specs, folders, strict=True)]
    first: dict[str, int] = {}  # the same configuration twice trains once
    for i, spec in enumerate(specs):
        if outcomes[i][0] is None:
            first.setdefault(spec.fingerprint, i)
    todo = sorted(first.values())
    if todo:
        trained = train_many(
            [specs[i].config for i in todo], [folders[i].path for i in todo], resume=True, progress=progress, log=log
        )
        for i, results in zip(todo, trained, strict=True):
            outcomes[i] = (results, folders[i].path, False)
    for i, spec in enumerate(specs):
        if outcomes[i][0] is None:
            outcomes[i] = (outcomes[first[spec.fingerprint]][0], folders[i].path, False)
    return outcomes


def run_experiment(
    name: str,
    preset: str = "cpu",
    seeds: list[int] | tuple[int, ...] = (0,),
    *,
    progress: bool = True,
    force: bool = False,
    log: Callable[[str], None] = print,
    device: str = "auto",
    overrides: dict[str, Any] | None = None,
    chosen: dict[str, dict[str, Any]] | None = None,
    arm: str = "tuned",
    datasets: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Train (or reload) every run of an experiment; one row per run and seed (see :func:`run_row`).

    ``arm``: ``"tuned"`` (equal bracketed tuning) or ``"paper"`` (each paper's fixed recipe;
    ``book/protocol.md``). Tuned hyperparameters: ``chosen`` (e.g. from :func:`tune`), else the
    tuned values committed in the experiment's reference for this preset, else each method's
    untuned point (logged).
    ``device`` does not change a run's identity: a run cached on a GPU is reused on a CPU."""
    seeds, overrides = check_seeds(seeds), check_overrides(overrides)  # each error names the argument
    if chosen is None:
        chosen = chosen_from_reference(name, preset, arm)
        if not chosen and arm == "tuned":
            log(f"{name} ({preset}): no tuned values committed for this preset; using each method's first grid point")
    runs = expand(name, preset, seeds, chosen, {**overrides, "device": device}, arm=arm, datasets=datasets)
    started = time.time()
    outcomes = train_or_load_many([run.config for run in runs], force=force, progress=progress, log=_quiet)
    rows = []
    for i, (run, (results, folder, cached)) in enumerate(zip(runs, outcomes, strict=True)):
        if isinstance(results, Exception):
            raise results
        rows.append(run_row(run, results, folder))
        log(_row_line(i, len(runs), run, rows[-1], cached, time.time() - started))
    return rows


def _quiet(*_: Any) -> None:
    return None


def _row_line(i: int, n: int, run: Run, row: dict[str, Any], cached: bool, elapsed: float) -> str:
    select = run.config.select_metric
    labels = ", ".join(f"{k}={v}" for k, v in run.labels.items() if v is not None)
    status = "cached" if cached else f"{row['wall_seconds']:.0f}s"
    test = row.get("test_" + select, math.nan)
    return (
        f"[{i + 1}/{n}] {labels}: val {select} {row['best_val']:.4f}, test {test:.4f} ({status}; {elapsed:.0f}s so far)"
    )


def run_row(run: Run, results: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A table row: the run's labels, its hyperparameters, test metrics of the best-validation
    checkpoint (``test_*``) and of the last epoch (``last_*``), per-head metrics of two-head models
    (``softmax_*``, ``multilabel_*``), the validation curve of the selection metric, on label-noise
    data the per-epoch fit of the training labels (``history``: ``train_fit`` per epoch), collapse
    flags and the run folder."""
    select = run.config.select_metric
    row = {
        **run.labels,
        "lr": run.config.lr,
        **{f"opt_{k}": v for k, v in run.config.loss_options.items()},
        **_prefixed("test_", results["test"]),
        **_prefixed("last_", results.get("test_last", {})),
        "best_epoch": results["summary"]["best_epoch"],
        "best_val": results["summary"]["best_val"],
        "val_curve": [epoch["val"][select] for epoch in results["history"]],
        "warnings": results.get("warnings", []),
        "wall_seconds": results["provenance"]["wall_seconds"],
        "run": str(folder),
    }
    fits = [{"epoch": e["epoch"], "train_fit": e["train_fit"]} for e in results["history"] if "train_fit" in e]
    if fits:  # label-noise data: how well each epoch fits the noisy, clean and flipped training labels
        row["history"] = fits
    for head, metrics in (results.get("test_heads") or {}).items():
        row.update(_prefixed(f"{head}_", metrics))
    return row


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in metrics.items() if not k.endswith("_threshold")}


# ------------------------------------------------------------------------------ tuning
