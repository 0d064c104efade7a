"""Training (or reloading) the runs of an experiment, one table row per run."""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from avgk_lib.config import TrainConfig
from avgk_lib.data import cache_dir
from avgk_lib.data.base import CACHE_ENV, check_folder
from avgk_lib.rundir import SAFE_GLOBALS, RunDir, RunDirError, run_dir
from avgk_lib.runspec import RunSpec
from avgk_lib.train import train_many

from .grid import check_overrides, check_seeds, chosen_from_reference, expand
from .spec import GridRun


def _cached(spec: RunSpec, folder: RunDir) -> tuple[dict[str, Any] | None, str]:
    """(results, "") of a finished run of ``spec`` in ``folder``, else (None, why it cannot be
    reused; empty when there simply is no result). Reads only: nothing is deleted here."""
    result, why = folder.read_result(spec.fingerprint)
    if result is None:
        return None, why
    if spec.config.save_scores and _scores_fingerprint(folder) != spec.fingerprint:
        found = "missing" if not folder.scores.exists() else "not this run's (no or another fingerprint)"
        return None, f"{folder.scores} is {found}"
    return result.to_dict(), ""


def _scores_fingerprint(folder: RunDir) -> str | None:
    """The fingerprint stored in the folder's ``scores.pt`` (read without the checksum: a quick
    look for the run cache), or ``None`` when the file is missing, unreadable or names no run."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            data = torch.load(folder.scores, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - any unreadable file names no run
        return None
    found = data.get("fingerprint") if isinstance(data, dict) else None
    return found if isinstance(found, str) else None


def _prepare(folder: RunDir, force: bool, why: str) -> None:
    """Under the folder's lock (:class:`~avgk_lib.rundir.RunDirBusy` when another live process
    holds it, and then nothing is touched): delete every run file (``force``), or the unusable
    ``results.json`` that ``why`` names."""
    if not (force or why) or not folder.path.exists():
        return
    with folder.locked():
        if force:
            folder.clear()
        elif folder.results.is_dir():
            raise RunDirError(f"{folder.results} is a folder, not a run's results file; move it away")
        elif why.startswith(str(folder.results)):
            folder.results.unlink(missing_ok=True)


def train_or_load_many(
    configs: list[TrainConfig], *, force: bool = False, progress: bool = True, log: Callable[[str], None] = print
) -> list[tuple[dict[str, Any] | Exception, Path, bool]]:
    """``(results, folder, cached)`` per config, in order: reloaded when finished (its
    ``results.json`` intact and of this configuration, and its ``scores.pt`` this run's),
    resumed when interrupted, trained otherwise, the runs that can share a stack as one stacked
    model (:func:`~avgk_lib.train.train_many`). A result that cannot be trusted (damaged, edited,
    of another configuration) is trained again with a warning naming the folder. ``results`` is
    the :class:`~avgk_lib.engine.TrainingDiverged` error of a run that diverged.

    Nothing is written or deleted unless a run must be trained: a read-only cache that holds
    every run serves it. ``force`` deletes a run's files only while holding its folder's lock, so
    a folder that a live process is training is refused (:class:`~avgk_lib.rundir.RunDirBusy`)
    with every file left as it was."""
    specs = [RunSpec.resolve(c) for c in configs]
    folders = [RunDir(run_dir(spec.config)) for spec in specs]
    outcomes: list[Any] = []
    reasons: list[str] = []
    for spec, folder in zip(specs, folders, strict=True):
        results, why = (None, "") if force else _cached(spec, folder)
        outcomes.append((results, folder.path, True))
        reasons.append(why)
    first: dict[str, int] = {}  # the same configuration twice trains once
    for i, spec in enumerate(specs):
        if outcomes[i][0] is None:
            first.setdefault(spec.fingerprint, i)
    todo = sorted(first.values())
    if not todo:
        return outcomes
    check_folder(cache_dir(), CACHE_ENV, write=True)
    for i in todo:
        if reasons[i]:
            again = "evaluating it again" if reasons[i].startswith(str(folders[i].scores)) else "training it again"
            warnings.warn(f"not reusing the cached run in {folders[i].path}: {reasons[i]}; {again}", stacklevel=2)
        _prepare(folders[i], force, reasons[i])
    trained = train_many(
        [specs[i].config for i in todo], [folders[i].path for i in todo], resume=True, progress=progress, log=log
    )
    for i, results in zip(todo, trained, strict=True):
        outcomes[i] = (results, folders[i].path, False)
    for i, spec in enumerate(specs):
        if outcomes[i][0] is None:
            outcomes[i] = (outcomes[first[spec.fingerprint]][0], folders[i].path, False)
    return outcomes


def _reported(run: GridRun) -> GridRun:
    """``run`` with labels that say what it trains: a label naming a dataset option (``label_noise``,
    ``n_train``...) and ``train_k`` take the configuration's values, so that ``overrides`` changing
    them are reflected in the rows."""
    cfg, labels = run.config, dict(run.labels)
    for key in labels:
        if key in cfg.dataset_options and labels[key] != cfg.dataset_options[key]:
            labels[key] = cfg.dataset_options[key]
    if labels.get("train_k") is not None and labels["train_k"] != cfg.k:
        labels["train_k"] = cfg.k
    return run if labels == run.labels else dataclasses.replace(run, labels=labels)


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
    runs = [_reported(run) for run in runs]
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


def _row_line(i: int, n: int, run: GridRun, row: dict[str, Any], cached: bool, elapsed: float) -> str:
    select = run.config.select_metric
    labels = ", ".join(f"{k}={v}" for k, v in run.labels.items() if v is not None)
    status = "cached" if cached else f"{row['wall_seconds']:.0f}s"
    test = row.get("test_" + select, math.nan)
    return (
        f"[{i + 1}/{n}] {labels}: val {select} {row['best_val']:.4f}, test {test:.4f} ({status}; {elapsed:.0f}s so far)"
    )


def run_row(run: GridRun, results: dict[str, Any], folder: Path) -> dict[str, Any]:
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
