"""The training entry point: :func:`train` runs a :class:`TrainConfig` end to end.

* per epoch: :func:`~avgk_lib.engine.train_one_epoch` (tqdm progress bar, off with
  ``AVGK_PROGRESS=0``), then the validation top-K (micro, macro) and average-K metrics
  (threshold calibrated on validation) for every K of ``eval_ks``; the best epoch by
  ``select_metric`` is kept;
* ``last.pt`` after every epoch (:class:`~avgk_lib.checkpoint.TrainState`: model, optimizer,
  scheduler, AMP scaler, every RNG state, history, best metric, the loss's own state such as
  ROLE's table), written atomically with a checksum, so a crash loses at most one epoch;
  ``resume=True`` continues bit-exactly on CPU;
* a loss that turns non-finite or explodes stops the run (:class:`~avgk_lib.engine.TrainingDiverged`)
  and no ``results.json`` is written;
* at the end: test metrics of the best epoch's model (``test``; every head's in ``test_heads``
  for two-head models) and of the last epoch's model (``test_last``), each with thresholds
  calibrated on validation with the same weights, degeneracy ``warnings``, the configuration,
  the history and provenance, returned and written to ``out/results.json``
  (:class:`RunResult`).

Under ``torchrun`` rank 0 writes the files. Two limits of the distributed mode: ROLE's label
table lives in the loss, outside DistributedDataParallel, so each rank updates the rows of its
own samples and rank 0's table is the one saved; and bit-exact resumption is guaranteed for
single-process runs only (rank 0's RNG state is the one checkpointed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from . import __version__
from .checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    TrainState,
    atomic_write_json,
    load_checkpoint,
    load_train_state,
    remove_stale_tmp,
    rng_state,
    save_checkpoint,
    save_train_state,
    set_rng_state,
)
from .config import DEFAULT_MODELS, ConfigError, TrainConfig
from .data import DatasetBundle
from .engine import (
    DivergenceGuard,
    Run,
    TrainingDiverged,
    build_run,
    bundle_counts,
    evaluate_final,
    resolve_device,
    train_one_epoch,
    validation_metrics,
)
from .evaluation import degeneracy_warnings, degenerate_sets

__all__ = [
    "DEFAULT_MODELS",
    "RunResult",
    "TrainConfig",
    "TrainingDiverged",
    "bundle_counts",
    "provenance",
    "resolve_device",
    "train",
]


@dataclass
class RunResult:
    """What a finished run reports (``results.json``)."""

    config: dict[str, Any]
    history: list[dict[str, Any]]
    test: dict[str, float]
    test_last: dict[str, float]
    summary: dict[str, Any]
    provenance: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    test_heads: dict[str, dict[str, float]] | None = None
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.test_heads is None:
            del out["test_heads"]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> RunResult:
        """Parse :meth:`to_json`'s output; ``ValueError`` when it is not a complete result."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"not a run result: invalid JSON ({err})") from None
        names = {f.name for f in dataclasses.fields(cls)}
        required = {"config", "history", "test", "test_last", "summary", "provenance"}
        if not isinstance(data, dict) or not required <= set(data):
            raise ValueError(f"not a run result: missing {sorted(required - set(data or {}))}")
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"run result of format {data.get('format_version')}, this avgk_lib reads {FORMAT_VERSION}")
        return cls(**{k: v for k, v in data.items() if k in names})


def provenance(device: torch.device, world: int) -> dict[str, Any]:
    """Where and with what a run was made: commit, versions, device, world size, host."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    import numpy
    import torchvision

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "git_commit": commit or "unknown",
        "avgk_lib": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
        "device": str(device),
        "device_name": name,
        "cpu_threads": torch.get_num_threads(),
        "world_size": world,
        "hostname": platform.node(),
    }


def prepare_out(out: Path, resume: bool) -> None:
    """Check the run folder before anything trains: a writable folder, no checkpoint unless
    resuming; remove temporary files that killed writers left. Raises ``ConfigError("out")``
    or :class:`CheckpointError`."""
    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check.tmp"):
            pass
    except OSError as err:
        raise ConfigError("out", f"{out} is not a writable folder ({err.strerror or err})") from None
    if (out / "last.pt").exists() and not resume:
        raise CheckpointError(
            f"{out / 'last.pt'} exists: pass resume=True (--resume) to continue it, or use another folder"
        )
    remove_stale_tmp(out)


def _initial_state(cfg: TrainConfig, out: Path | None, resume: bool, log) -> TrainState | None:
    """The checkpoint to resume from (verified), or ``None`` for a fresh start."""
    if out is None or not resume:
        return None
    last = out / "last.pt"
    if not last.exists():
        log(f"--resume: no checkpoint in {out}, starting fresh")
        return None
    return load_train_state(last, cfg.fingerprint())


def _restore(run: Run, state: TrainState) -> None:
    run.model.load_state_dict(state.model)
    run.loss_fn.load_state_dict(state.loss)
    run.optimizer.load_state_dict(state.optimizer)
    if run.scheduler is not None:
        run.scheduler.load_state_dict(state.scheduler)
    if run.scaler is not None and state.scaler is not None:
        run.scaler.load_state_dict(state.scaler)
    set_rng_state(state.rng)


def _snapshot(run: Run, epoch: int, history, best_value: float, best_epoch: int) -> TrainState:
    return TrainState(
        epoch=epoch,
        model=run.model.state_dict(),
        loss=run.loss_fn.state_dict(),
        optimizer=run.optimizer.state_dict(),
        scheduler=run.scheduler.state_dict() if run.scheduler else None,
        scaler=run.scaler.state_dict() if run.scaler else None,
        rng=rng_state(),
        history=history,
        best_value=best_value,
        best_epoch=best_epoch,
    )


@dataclass
class _Progress:
    history: list[dict[str, Any]]
    best_value: float
    best_epoch: int
    best_weights: dict[str, Any] | None = None  # in-memory runs only


def _fit(run: Run, out: Path | None, progress: _Progress, start: int, show: bool, log) -> None:
    """Train epochs ``start..epochs-1``: validate, track the best, checkpoint."""
    cfg, select, fingerprint = run.cfg, run.cfg.resolved_select_metric(), run.cfg.fingerprint()
    reference = progress.history[0]["train_loss"] if progress.history else None
    guard = DivergenceGuard(reference, 1 if run.device.type == "cpu" else 50, run.world)
    for epoch in range(start, cfg.epochs):
        began = time.time()
        train_loss = train_one_epoch(run, epoch, guard, show)
        guard.reference = progress.history[0]["train_loss"] if progress.history else train_loss
        val = validation_metrics(run)
        seconds = time.time() - began
        lr = run.optimizer.param_groups[0]["lr"]
        progress.history.append(
            {"epoch": epoch + 1, "train_loss": train_loss, "lr": lr, "seconds": seconds, "val": val}
        )
        value = -math.inf if degenerate_sets(val, cfg.k) else val[select]
        improved = value > progress.best_value or progress.best_epoch == 0
        if improved:
            progress.best_value, progress.best_epoch = value, epoch + 1
        if run.is_main:
            log(
                f"epoch {epoch + 1:>3}/{cfg.epochs}  loss {train_loss:.4f}  val {select} {val[select]:.4f}"
                f"{' *' if improved else ''}  ({seconds:.1f}s)"
            )
        if out is not None and run.is_main:
            if improved:
                best = {"model": run.model.state_dict(), "loss": run.loss_fn.state_dict(), "epoch": epoch + 1}
                save_checkpoint({**best, "fingerprint": fingerprint}, out / "best.pt")
            state = _snapshot(run, epoch + 1, progress.history, progress.best_value, progress.best_epoch)
            save_train_state(out / "last.pt", state, fingerprint, dataclasses.asdict(cfg))
        elif out is None and improved:
            progress.best_weights = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        if run.world > 1:
            dist.barrier()


def _load_best(run: Run, out: Path | None, progress: _Progress) -> None:
    if out is None:
        run.model.load_state_dict(progress.best_weights)
        return
    if run.world > 1:
        dist.barrier()
    best = load_checkpoint(out / "best.pt", run.cfg.fingerprint())
    run.model.load_state_dict(best["model"])


def _final_evaluations(run: Run, out: Path | None, progress: _Progress) -> tuple[dict[str, Any], dict[str, Any]]:
    """(best, last): :func:`~avgk_lib.engine.evaluate_final` of the best and of the last epoch."""
    last = evaluate_final(run)
    if progress.best_epoch == len(progress.history) == run.cfg.epochs:
        return last, last
    _load_best(run, out, progress)
    return evaluate_final(run), last


def _save_scores(run: Run, out: Path, best: dict[str, Any]) -> None:
    head = run.cfg.eval_head if run.objective.spec.two_head else "main"
    scores = {
        "val_scores": best["val"][head].half().cpu(),
        "val_targets": best["val_targets"].cpu(),
        "test_scores": best["test"][head].half().cpu(),
        "test_targets": best["test_targets"].cpu(),
    }
    if run.objective.spec.two_head:
        for h in run.objective.heads:
            scores[f"val_scores_{h}"] = best["val"][h].half().cpu()
            scores[f"test_scores_{h}"] = best["test"][h].half().cpu()
    save_checkpoint(scores, out / "scores.pt")


def _result(run: Run, progress: _Progress, best, last, started: float) -> RunResult:
    cfg, head = run.cfg, run.cfg.eval_head if run.objective.spec.two_head else "main"
    two_head = run.objective.spec.two_head
    warnings = []
    for label, evaluation in (("best epoch", best), ("last epoch", last)):
        warnings += degeneracy_warnings(evaluation["heads"][head], run.bundle.n_classes, cfg.eval_ks, label)
    finished = time.time()
    summary = {
        "best_epoch": progress.best_epoch,
        "select_metric": cfg.resolved_select_metric(),
        "best_val": progress.best_value,
        "model": run.model_name,
        "head": run.head,
        "amp": run.amp_mode,
        "fingerprint": cfg.fingerprint(),
        "train_samples": len(run.bundle.train),
        "class_counts": bundle_counts(run.bundle),
    }
    times = {
        "seed": cfg.seed,
        "start_time": _iso(started),
        "end_time": _iso(finished),
        "wall_seconds": finished - started,
    }
    return RunResult(
        config=dataclasses.asdict(cfg),
        history=progress.history,
        test=best["heads"][head],
        test_last=last["heads"][head],
        summary=summary,
        provenance={**provenance(run.device, run.world), **times},
        warnings=warnings,
        test_heads=best["heads"] if two_head else None,
    )


def train(
    cfg: TrainConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    bundle: DatasetBundle | None = None,
    log=print,
) -> dict[str, Any]:
    """Train, validate every epoch, checkpoint, test the best and the last epoch; return the
    results dict (:meth:`RunResult.to_dict`).

    Args:
        out: folder for ``last.pt``, ``best.pt``, ``results.json`` (and ``scores.pt``); ``None``
            keeps everything in memory (no checkpoints).
        resume: continue from ``out/last.pt`` (a fresh start, said in the log, when there is
            none). Without it, an existing checkpoint in ``out`` is an error (never overwritten).
        bundle: an already loaded dataset (otherwise ``load_dataset(cfg.dataset, **cfg.dataset_options)``).

    Raises:
        ConfigError: a bad configuration or ``out`` folder (before anything trains).
        CheckpointError: an existing, corrupt or foreign checkpoint in ``out``.
        TrainingDiverged: the loss became non-finite or exploded (no results are written).
    """
    started = time.time()
    cfg = cfg.validate()
    out = Path(out) if out is not None else None
    if out is not None and os.environ.get("RANK", "0") == "0":
        prepare_out(out, resume)
    state = _initial_state(cfg, out, resume, log)
    run = build_run(cfg, bundle)
    book = _Progress([], -math.inf, 0)
    if state is not None:
        _restore(run, state)
        book = _Progress(state.history, state.best_value, state.best_epoch)
        if run.is_main:
            log(f"resumed from {out / 'last.pt'} after epoch {state.epoch}")
    if run.is_main:
        heads = ", two heads" if run.objective.spec.two_head else ""
        log(
            f"{run.bundle.summary()} | model {run.model_name} ({run.head} head{heads})"
            f" | loss {cfg.loss} K={cfg.k:g} | device {run.device}, amp {run.amp_mode}, world {run.world}"
        )
    _fit(run, out, book, state.epoch if state else 0, progress, log)
    best, last = _final_evaluations(run, out, book)
    result = _result(run, book, best, last, started)
    if run.is_main:
        for line in result.warnings:
            log(f"warning: {line}")
        if out is not None:
            if cfg.save_scores:
                _save_scores(run, out, best)
            atomic_write_json(out / "results.json", result.to_dict())
        log("test: " + "  ".join(f"{k} {v:.4f}" for k, v in result.test.items() if "threshold" not in k))
    return result.to_dict()


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))
