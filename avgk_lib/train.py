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
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .checkpoint import TrainState, rng_state, set_rng_state
from .config import DEFAULT_MODELS, TrainConfig
from .data import DatasetBundle
from .engine import (
    DivergenceGuard,
    Run,
    TrainingDiverged,
    build_run,
    bundle_counts,
    evaluate_final,
    resolve_device,
    train_fit,
    train_one_epoch,
    validation_metrics,
)
from .evaluation import degeneracy_warnings, degenerate_sets
from .rundir import RunDir, RunResult, provenance
from .runspec import RunSpec

__all__ = [
    "DEFAULT_MODELS",
    "RunInterrupted",
    "RunResult",
    "RunSpec",
    "TrainConfig",
    "TrainingDiverged",
    "bundle_counts",
    "provenance",
    "resolve_device",
    "train",
]


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: says at which epoch and how to resume (``last.pt`` holds every
    finished epoch)."""

    def __init__(self, epoch: int, folder: Path | None) -> None:
        where = f"; resume with --resume (--out {folder})" if folder is not None else " (nothing was saved: no --out)"
        super().__init__(f"interrupted during epoch {epoch + 1}{where}")
        self.epoch = epoch
        self.folder = folder


def _initial_state(spec: RunSpec, folder: RunDir | None, resume: bool, log) -> TrainState | None:
    """The checkpoint to resume from (verified), or ``None`` for a fresh start."""
    if folder is None or not resume:
        return None
    if not folder.last.exists():
        log(f"--resume: no checkpoint in {folder.path}, starting fresh")
        return None
    return folder.load_state(spec.fingerprint)


def _restore(run: Run, state: TrainState) -> None:
    run.model.load_state_dict(state.model)
    run.loss_fn.load_state_dict(state.loss)
    run.optimizer.load_state_dict(state.optimizer)
    if run.scheduler is not None:
        run.scheduler.load_state_dict(state.scheduler)
    if run.scaler is not None and state.scaler is not None:
        run.scaler.load_state_dict(state.scaler)
    set_rng_state(state.rng)


def _snapshot(run: Run, epoch: int, book: Progress) -> TrainState:
    return TrainState(
        epoch=epoch,
        model=run.model.state_dict(),
        loss=run.loss_fn.state_dict(),
        optimizer=run.optimizer.state_dict(),
        scheduler=run.scheduler.state_dict() if run.scheduler else None,
        scaler=run.scaler.state_dict() if run.scaler else None,
        rng=rng_state(),
        history=book.history,
        best_value=book.best_value,
        best_epoch=book.best_epoch,
    )


@dataclass
class Progress:
    """The run's record so far: per-epoch history and the best epoch (1-based; 0 before any)."""

    history: list[dict[str, Any]]
    best_value: float = -math.inf
    best_epoch: int = 0
    best_weights: dict[str, Any] | None = None  # in-memory runs only

    def record(self, entry: dict[str, Any], value: float) -> bool:
        """Append an epoch's entry; ``True`` when it is the new best (the first epoch always is)."""
        self.history.append(entry)
        improved = value > self.best_value or self.best_epoch == 0
        if improved:
            self.best_value, self.best_epoch = value, entry["epoch"]
        return improved


def epoch_entry(run: Run, epoch: int, train_loss: float, seconds: float, val: dict[str, float]) -> dict[str, Any]:
    """One epoch of the history: loss, lr, time, validation metrics and, on data with injected
    label noise, ``train_fit`` (how well the model fits the noisy, clean and flipped labels)."""
    entry = {"epoch": epoch + 1, "train_loss": train_loss, "lr": run.optimizer.param_groups[0]["lr"]}
    entry.update(seconds=seconds, val=val)
    fit = train_fit(run)
    if fit is not None:
        entry["train_fit"] = fit
    return entry


def fit(run: Run, folder: RunDir | None, book: Progress, start: int, show_progress: bool, log) -> None:
    """Train epochs ``start..epochs-1``; after each, :func:`end_epoch`."""
    reference = book.history[0]["train_loss"] if book.history else None
    guard = DivergenceGuard(reference, 1 if run.device.type == "cpu" else 50, run.world)
    for epoch in range(start, run.cfg.epochs):
        began = time.time()
        try:
            train_loss = train_one_epoch(run, epoch, guard, show_progress)
        except KeyboardInterrupt:
            raise RunInterrupted(epoch, folder.path if folder else None) from None
        guard.reference = book.history[0]["train_loss"] if book.history else train_loss
        end_epoch(run, folder, book, epoch, train_loss, began, log)


def end_epoch(
    run: Run,
    folder: RunDir | None,
    book: Progress,
    epoch: int,
    train_loss: float,
    began: float,
    log,
    val: dict[str, float] | None = None,
) -> None:
    """Validate (unless ``val``, the validation metrics, is given), track the best epoch,
    checkpoint ``best.pt`` and ``last.pt`` (rank 0). ``began`` is when the epoch's time started
    (validation included)."""
    spec, cfg = run.spec, run.cfg
    val = validation_metrics(run) if val is None else val
    value = -math.inf if degenerate_sets(val, cfg.k) else val[spec.select]
    improved = book.record(epoch_entry(run, epoch, train_loss, time.time() - began, val), value)
    if run.is_main:
        log(
            f"epoch {epoch + 1:>3}/{cfg.epochs}  loss {train_loss:.4f}  val {spec.select} {val[spec.select]:.4f}"
            f"{' *' if improved else ''}  ({book.history[-1]['seconds']:.1f}s)"
        )
    if folder is not None and run.is_main:
        if improved:
            weights = {"model": run.model.state_dict(), "loss": run.loss_fn.state_dict(), "epoch": epoch + 1}
            folder.save_best(weights, spec.fingerprint)
        folder.save_state(_snapshot(run, epoch + 1, book), spec.fingerprint, dataclasses.asdict(cfg))
    elif folder is None and improved:
        book.best_weights = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
    if run.world > 1:
        dist.barrier()


def _load_best(run: Run, folder: RunDir | None, book: Progress) -> None:
    if folder is None:
        run.model.load_state_dict(book.best_weights)
        return
    if run.world > 1:
        dist.barrier()
    run.model.load_state_dict(folder.load_best(run.spec.fingerprint)["model"])


def final_evaluations(run: Run, folder: RunDir | None, book: Progress) -> tuple[dict[str, Any], dict[str, Any]]:
    """(best, last): :func:`~avgk_lib.engine.evaluate_final` of the best and of the last epoch."""
    last = evaluate_final(run)
    if book.best_epoch == len(book.history) == run.cfg.epochs:
        return last, last
    _load_best(run, folder, book)
    return evaluate_final(run), last


def saved_scores(spec: RunSpec, best: dict[str, Any]) -> dict[str, torch.Tensor]:
    """What ``scores.pt`` holds: half-precision validation and test scores of the evaluated head
    (and of every head of a two-head model) with the targets."""
    scores = {
        "val_scores": best["val"][spec.eval_head].half().cpu(),
        "val_targets": best["val_targets"].cpu(),
        "test_scores": best["test"][spec.eval_head].half().cpu(),
        "test_targets": best["test_targets"].cpu(),
    }
    if spec.two_head:
        for h in spec.heads:
            scores[f"val_scores_{h}"] = best["val"][h].half().cpu()
            scores[f"test_scores_{h}"] = best["test"][h].half().cpu()
    return scores


def run_result(run: Run, book: Progress, best, last, started: float, share: int = 1) -> RunResult:
    """The :class:`RunResult` of a finished run (``share``: the number of runs trained together
    in one stack, whose wall time is split evenly between them)."""
    spec, cfg = run.spec, run.cfg
    warnings = []
    for label, evaluation in (("best epoch", best), ("last epoch", last)):
        warnings += degeneracy_warnings(evaluation["heads"][spec.eval_head], run.bundle.n_classes, cfg.eval_ks, label)
    finished = time.time()
    summary = {
        "best_epoch": book.best_epoch,
        "select_metric": spec.select,
        "best_val": book.best_value,
        "model": spec.model,
        "head": spec.head,
        "amp": run.amp_mode,
        "fingerprint": spec.fingerprint,
        "train_samples": len(run.bundle.train),
        "class_counts": bundle_counts(run.bundle),
    }
    times = {"seed": cfg.seed, "start_time": _iso(started), "end_time": _iso(finished)}
    times["wall_seconds"] = (finished - started) / share
    if share > 1:
        times["stack_size"] = share
    return RunResult(
        config=dataclasses.asdict(cfg),
        history=book.history,
        test=best["heads"][spec.eval_head],
        test_last=last["heads"][spec.eval_head],
        summary=summary,
        provenance={**provenance(run.device, run.world), **times},
        warnings=warnings,
        test_heads=best["heads"] if spec.two_head else None,
    )


def finish(run: Run, folder: RunDir | None, book: Progress, started: float, log, share: int = 1) -> RunResult:
    """Test the best and the last epoch, write ``scores.pt`` and ``results.json`` (rank 0)."""
    best, last = final_evaluations(run, folder, book)
    result = run_result(run, book, best, last, started, share)
    if run.is_main:
        for line in result.warnings:
            log(f"warning: {line}")
        if folder is not None:
            if run.cfg.save_scores:
                folder.save_scores(saved_scores(run.spec, best))
            folder.write_result(result)
        log("test: " + "  ".join(f"{k} {v:.4f}" for k, v in result.test.items() if "threshold" not in k))
    return result


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
        out: folder for ``last.pt``, ``best.pt``, ``results.json`` (and ``scores.pt``), owned by
            this run while it trains (:class:`~avgk_lib.rundir.RunDir`); ``None`` keeps
            everything in memory (no checkpoints).
        resume: continue from ``out/last.pt`` (a fresh start, said in the log, when there is
            none). Without it, an existing checkpoint in ``out`` is an error (never overwritten).
        progress: show a progress bar per epoch (also off with ``AVGK_PROGRESS=0``).
        bundle: an already loaded dataset (otherwise ``load_dataset(cfg.dataset, **cfg.dataset_options)``).

    Raises:
        ConfigError: a bad configuration or ``out`` folder (before anything trains).
        RunDirError: ``out`` is in use by another live run, or holds a run of another configuration.
        CheckpointError: an existing, corrupt or foreign checkpoint in ``out``.
        TrainingDiverged: the loss became non-finite or exploded (no results are written).
        RunInterrupted: Ctrl-C (a ``KeyboardInterrupt``; ``last.pt`` holds every finished epoch).
    """
    started = time.time()
    spec = RunSpec.resolve(cfg)
    folder = RunDir(out) if out is not None else None
    owner = folder is not None and os.environ.get("RANK", "0") == "0"
    if owner:
        folder.claim(spec.fingerprint, dataclasses.asdict(spec.config), resume=resume)
    try:
        state = _initial_state(spec, folder, resume, log)
        run = build_run(spec, bundle)
        book = Progress([])
        if state is not None:
            _restore(run, state)
            book = Progress(state.history, state.best_value, state.best_epoch)
            if run.is_main:
                log(f"resumed from {folder.last} after epoch {state.epoch}")
        if run.is_main:
            log(_banner(run))
        fit(run, folder, book, state.epoch if state else 0, progress, log)
        return finish(run, folder, book, started, log).to_dict()
    finally:
        if owner:
            folder.release()


def _banner(run: Run) -> str:
    heads = ", two heads" if run.spec.two_head else ""
    return (
        f"{run.bundle.summary()} | model {run.spec.model} ({run.spec.head} head{heads})"
        f" | loss {run.cfg.loss} K={run.cfg.k:g} | device {run.device}, amp {run.amp_mode}, world {run.world}"
    )


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


# ----------------------------------------------------------------------------------------------
# many runs at once
# ----------------------------------------------------------------------------------------------


def train_many(
    configs: list[TrainConfig],
    outs: list[str | Path | None] | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    log=print,
    max_stack: int = 64,
) -> list[dict[str, Any] | TrainingDiverged]:
    """Train many runs, stacking those that can share a model (:mod:`avgk_lib.stacked`): one
    result per config, in order, each the dict :func:`train` would return (and the same run
    folder), or the :class:`TrainingDiverged` error of a run that diverged (the other runs go on).

    Runs share a stack when :func:`~avgk_lib.stacked.stack_key` agrees (dataset family, model
    shape, loss, epochs, batch, schedule shape, SGD) and they start at the same epoch; at most
    ``max_stack`` per stack. The others train one by one. Each member keeps its own seed, data,
    loss noise, lr and loss knobs, best epoch, checkpoints and ``results.json``.

    Random numbers: a stacked member draws exactly what its single run draws (initialisation
    and data from its seed, loss noise from its own generator state), so it follows ``train``
    with the same seed up to float rounding of the batched arithmetic.

    Raises what :func:`train` raises for a bad configuration or folder, before anything trains."""
    from .stacked import Member, Stack, stack_key

    if not isinstance(configs, (list, tuple)) or not all(isinstance(c, TrainConfig) for c in configs):
        raise TypeError("`configs` must be a list of TrainConfig")
    outs = [None] * len(configs) if outs is None else list(outs)
    if len(outs) != len(configs):
        raise ValueError(f"`outs` must have one folder per config ({len(configs)}), got {len(outs)}")
    if isinstance(max_stack, bool) or not isinstance(max_stack, int) or max_stack < 1:
        raise ValueError(f"`max_stack` must be an integer >= 1, got {max_stack!r}")
    specs = [RunSpec.resolve(c) for c in configs]
    folders = [RunDir(o) if o is not None else None for o in outs]
    claimed: list[RunDir] = []
    try:
        for spec, folder in zip(specs, folders, strict=True):
            if folder is not None:
                folder.claim(spec.fingerprint, dataclasses.asdict(spec.config), resume=resume)
                claimed.append(folder)
        return _train_claimed(specs, folders, resume, progress, log, max_stack, Member, Stack, stack_key)
    finally:
        for folder in claimed:
            folder.release()


def _train_claimed(specs, folders, resume, progress, log, max_stack, Member, Stack, stack_key) -> list:
    started = time.time()
    members, books, starts, groups = [], [], [], {}
    for i, (spec, folder) in enumerate(zip(specs, folders, strict=True)):
        state = _initial_state(spec, folder, resume, log)
        run = build_run(spec)
        book = Progress([])
        if state is not None:
            _restore(run, state)
            book = Progress(state.history, state.best_value, state.best_epoch)
        reference = book.history[0]["train_loss"] if book.history else None
        members.append(Member(run, rng_state(), DivergenceGuard(reference, 1, run.world)))
        books.append(book)
        starts.append(state.epoch if state else 0)
        key = stack_key(run)
        groups.setdefault(("single", i) if key is None else (key, starts[i]), []).append(i)
    results: list[Any] = [None] * len(specs)
    for key, indices in groups.items():
        for chunk in [indices[j : j + max_stack] for j in range(0, len(indices), max_stack)]:
            if key[0] == "single" or len(chunk) == 1:
                for i in chunk:
                    results[i] = _train_single(members[i], folders[i], books[i], starts[i], progress, log)
                continue
            log(f"training {len(chunk)} runs as one stacked model ({members[chunk[0]].run.bundle.summary()})")
            done = _train_stack(
                Stack([members[i] for i in chunk]),
                [folders[i] for i in chunk],
                [books[i] for i in chunk],
                starts[chunk[0]],
                progress,
                log,
            )
            for i, result in zip(chunk, done, strict=True):
                results[i] = result
    log(f"train_many: {len(specs)} runs in {time.time() - started:.0f}s")
    return results


def _train_single(member, folder: RunDir | None, book: Progress, start: int, progress: bool, log):
    began = time.time()
    set_rng_state(member.rng)
    try:
        fit(member.run, folder, book, start, progress, log)
    except TrainingDiverged as err:
        return err
    return finish(member.run, folder, book, began, log).to_dict()


def _train_stack(stack, folders, books, start: int, progress: bool, log) -> list:
    began = time.time()
    members = stack.members
    epochs = members[0].run.cfg.epochs
    for epoch in range(start, epochs):
        epoch_began = time.time()
        try:
            stack.train_epoch(epoch, progress)
        except KeyboardInterrupt:
            raise RunInterrupted(epoch, None) from None
        stack.write_back()
        vals = stack.validation_metrics() or [None] * len(members)
        share = (time.time() - epoch_began) / len(members)
        for m, folder, book, val in zip(members, folders, books, vals, strict=True):
            if not m.alive:
                continue
            train_loss = m.loss_sum / max(m.seen, 1)
            m.guard.reference = book.history[0]["train_loss"] if book.history else train_loss
            stack.member_rng(m)
            end_epoch(m.run, folder, book, epoch, train_loss, time.time() - share, lambda *_: None, val)
        log(
            f"epoch {epoch + 1:>3}/{epochs}  {sum(m.alive for m in members)}/{len(members)} runs alive"
            f"  ({time.time() - epoch_began:.1f}s)"
        )
    out = []
    for m, folder, book in zip(members, folders, books, strict=True):
        if m.error is not None:
            log(f"a stacked run diverged: {m.error}")
            out.append(m.error)
            continue
        out.append(finish(m.run, folder, book, began, lambda *_: None, share=len(members)).to_dict())
    return out
