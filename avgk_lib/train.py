"""The training entry point: :func:`train` runs a :class:`TrainConfig` end to end.

* per epoch: :func:`~avgk_lib.engine.train_one_epoch` (tqdm progress bar, off with
  ``AVGK_PROGRESS=0``), then the validation top-K (micro, macro) and average-K metrics
  (threshold calibrated on validation) for every K of ``eval_ks``; the best epoch by
  ``select_metric`` is kept;
* ``last.pt`` after every epoch (:class:`~avgk_lib.rundir.TrainState`: model, optimizer,
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
import os
import time
from pathlib import Path
from typing import Any

from .build import build_run, bundle_counts, resolve_device
from .config import TrainConfig
from .data import DatasetBundle, load_dataset
from .engine import (
    DivergenceGuard,
    Progress,
    RunInterrupted,
    TrainingDiverged,
    complete,
    end_epoch,
    finish,
    fit,
    run_epochs,
)
from .rundir import RunDir, RunResult, provenance
from .runspec import RunSpec
from .seeding import rng_state, set_rng_state

__all__ = [
    "RunInterrupted",
    "RunResult",
    "RunSpec",
    "TrainConfig",
    "TrainingDiverged",
    "bundle_counts",
    "provenance",
    "resolve_device",
    "train",
    "train_many",
]


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
        state = folder.resume_state(spec.fingerprint, resume, log) if folder is not None else None
        run = build_run(spec, bundle, state)
        return complete(run, folder, state, progress=progress, log=log, started=started).to_dict()
    finally:
        if owner:
            folder.release()


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

    Runs share a stack when :func:`~avgk_lib.stacked.stack_key` agrees (every configuration
    field equal except the declared per-member ones, :data:`~avgk_lib.stacked.MEMBER_FIELDS`:
    seed and data-draw seeds, lr, weight decay, loss weight, the loss knobs taken as per-member
    tensors, evaluation and selection settings) and they start at the same epoch; at most
    ``max_stack`` per stack. The others train one by one, and so do convolutional models on a
    CPU, where a stack is slower (:func:`~avgk_lib.stacked.stacking_pays`). Each member keeps its own seed, data,
    loss noise, lr and loss knobs, best epoch, checkpoints and ``results.json``.

    Random numbers: a stacked member's initialisation, batch order and augmentation come from
    its seed exactly as in its single run, so with a noise-free loss (cross-entropy, two-head,
    smooth SVM ...) it follows ``train`` with the same seed up to float rounding of the batched
    arithmetic. The noise of the noised top-K losses is drawn for the whole stack in one call
    (from a generator seeded by the members' seeds and the epoch): a noised member's noise
    differs from its single run's, so its results agree with ``train``'s in distribution (over
    seeds), not draw for draw.

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
    bundles: dict[str, DatasetBundle] = {}  # runs of the same data draw share one loaded copy
    for i, (spec, folder) in enumerate(zip(specs, folders, strict=True)):
        state = folder.resume_state(spec.fingerprint, resume, log) if folder is not None else None
        data = json.dumps([spec.config.dataset, spec.config.dataset_options], sort_keys=True, default=str)
        if data not in bundles:
            bundles[data] = load_dataset(spec.config.dataset, **spec.config.dataset_options)
        run = build_run(spec, bundles[data], state=state)
        book = Progress([]) if state is None else Progress(state.history, state.best_value, state.best_epoch)
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
    from .stacked import final_evaluations

    began = time.time()
    members = stack.members
    epochs = members[0].run.cfg.epochs

    def one_epoch(epoch: int) -> None:
        epoch_began = time.time()
        stack.train_epoch(epoch, progress)
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

    try:
        run_epochs(start, epochs, one_epoch, None)
    except RunInterrupted as err:  # name what was saved, and where
        raise RunInterrupted(err.epoch, None, folders) from None
    out = []
    evaluations = final_evaluations(members, folders, books)
    for m, folder, book, evaluation in zip(members, folders, books, evaluations, strict=True):
        if m.error is not None:
            log(f"a stacked run diverged: {m.error}")
            out.append(m.error)
            continue
        result = finish(m.run, folder, book, began, lambda *_: None, share=len(members), evaluations=evaluation)
        out.append(result.to_dict())
    return out
