"""The training loop (pytorch/examples' imagenet style): :func:`train_one_epoch` makes one pass
over the training data, :func:`evaluate` scores a split, :func:`fit` trains the remaining epochs
(validating, selecting and checkpointing after each), :func:`finish` tests the best and the
last epoch and writes the results; :func:`complete` is all of it for one built run.
:class:`DivergenceGuard` stops a run whose loss explodes. Under ``torchrun`` validation scores
are all-gathered (:func:`collect_scores`) before a threshold is calibrated, and rank 0 writes the files.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .build import Run, bundle_counts
from .data import make_loader
from .metrics import calibrated_test_metrics, degeneracy_warnings, degenerate_sets, metric_dict
from .rundir import RunDir, RunResult, TrainState, provenance
from .runspec import RunSpec
from .seeding import rng_state

__all__ = [
    "DivergenceGuard",
    "Progress",
    "RunInterrupted",
    "TrainingDiverged",
    "collect_scores",
    "complete",
    "end_epoch",
    "evaluate",
    "evaluate_final",
    "finish",
    "fit",
    "progress_bar",
    "run_result",
    "saved_scores",
    "split_scores",
    "train_fit",
    "train_one_epoch",
    "validation_metrics",
]


class TrainingDiverged(FloatingPointError):
    """The training loss became non-finite or exploded (see :class:`DivergenceGuard`)."""


class DivergenceGuard:
    """Stops a run whose training loss is non-finite or explodes.

    Rule: a step's loss is bad when it is NaN or infinite, or larger than :attr:`FACTOR` (1e4)
    times the reference loss: the mean training loss of the first epoch (during the first
    epoch, the loss of its first step), floored at 1 so that a near-zero reference does not
    make a tiny limit. Losses are checked every ``check_every`` steps (1 on CPU; on CUDA the
    window's losses stay on the device between checks) and at the end of every epoch; under
    ``torch.distributed`` the verdict is shared, so every rank stops at the same step."""

    FACTOR = 1e4

    def __init__(self, reference: float | None = None, check_every: int = 1, world: int = 1) -> None:
        self.reference = reference
        self.check_every = max(1, int(check_every))
        self.world = world
        self._window: list[tuple[int, torch.Tensor]] = []

    def observe(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        """Record a step's loss (0-dim); check the window when it is full."""
        self._window.append((step, loss.detach().float()))
        if len(self._window) >= self.check_every:
            self.check(epoch)

    def check(self, epoch: int) -> None:
        """Raise :class:`TrainingDiverged` if a recorded loss is bad; clear the window."""
        if not self._window:
            return
        steps, losses = zip(*self._window, strict=True)
        values = torch.stack(losses)
        self._window.clear()
        if self.reference is None:
            self.reference = float(values[0]) if math.isfinite(float(values[0])) else 1.0
        limit = self.FACTOR * max(abs(self.reference), 1.0)
        bad = ~torch.isfinite(values) | (values.abs() > limit)
        flag = bad.any().to(torch.int32).reshape(1)
        if self.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if not bool(flag):
            return
        index = int(bad.nonzero()[0]) if bool(bad.any()) else len(steps) - 1
        raise self.diverged(float(values[index]), self.reference, epoch, steps[index])

    @classmethod
    def diverged(cls, value: float, reference: float, epoch: int, step: int) -> TrainingDiverged:
        """The error of the bad loss ``value`` at (0-based) ``epoch`` and ``step`` (also the
        stacked trainer's, :meth:`~avgk_lib.stacked.Stack._check_window`)."""
        why = "non-finite" if not math.isfinite(value) else f"> {cls.FACTOR:g} x the reference {reference:.4g}"
        where = f"epoch {epoch + 1}, step {step + 1}"
        return TrainingDiverged(f"training diverged at {where}: loss {value:.4g} ({why}); try a lower --lr")


def _forward_loss(run: Run, batch) -> torch.Tensor:
    """Forward and loss of one batch; outputs that went NaN/inf (a diverged model) raise
    :class:`TrainingDiverged` instead of the loss's input-validation error."""
    outputs = run.forward_model(batch[0])
    try:
        return run.objective.loss(outputs, batch) * run.cfg.loss_weight
    except ValueError:
        parts = outputs if isinstance(outputs, tuple) else (outputs,)
        if not all(bool(torch.isfinite(p).all()) for p in parts):
            raise TrainingDiverged("loss nan (the model's outputs are non-finite)") from None
        raise


def _step(run: Run, loss: torch.Tensor) -> None:
    run.optimizer.zero_grad(set_to_none=True)
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        loss.backward()
        run.optimizer.step()
    if run.schedule_unit == "batch":
        run.scheduler.step()


def progress_bar(iterable: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    """A tqdm.auto bar (a widget in Jupyter) unless disabled or ``AVGK_PROGRESS=0``."""
    if not enabled or os.environ.get("AVGK_PROGRESS", "1") == "0":
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def train_one_epoch(run: Run, epoch: int, guard: DivergenceGuard, progress: bool = True) -> float:
    """One pass over the training data (at most ``steps_per_epoch`` batches); returns the mean
    training loss (averaged over processes). Raises :class:`TrainingDiverged`."""
    run.forward_model.train()
    run.train_loader.set_epoch(epoch)
    if hasattr(run.loss_fn, "set_epoch"):  # e.g. the two-head loss's warm-up
        run.loss_fn.set_epoch(epoch)
    loss_sum = torch.zeros((), device=run.device, dtype=torch.float64)
    seen = 0
    desc = f"epoch {epoch + 1}/{run.cfg.epochs}"
    for step, batch in enumerate(progress_bar(run.train_loader, run.steps_per_epoch, desc, progress and run.is_main)):
        if step >= run.steps_per_epoch:
            break
        try:
            with run.autocast():
                loss = _forward_loss(run, batch)
        except TrainingDiverged as err:
            where = f"epoch {epoch + 1}, step {step + 1}"
            raise TrainingDiverged(f"training diverged at {where}: {err}; try a lower --lr") from None
        guard.observe(loss, epoch, step)
        _step(run, loss)
        loss_sum += loss.detach().double() * batch[1].shape[0]
        seen += batch[1].shape[0]
    guard.check(epoch)
    if run.schedule_unit == "epoch":
        run.scheduler.step()
    train_loss = float(loss_sum) / max(seen, 1)
    if run.world > 1:
        t = torch.tensor([train_loss], device=run.device)
        dist.all_reduce(t)
        train_loss = float(t) / run.world
    return train_loss


@torch.no_grad()
def collect_scores(
    model: nn.Module,
    loader,
    head_scores: Callable[[Any], dict[str, torch.Tensor]],
    autocast: AbstractContextManager | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-class scores (float32) of every head (``{"main": s}`` or ``{"softmax": ..,
    "multilabel": ..}``, as ``head_scores(model(x))`` names them, e.g.
    :meth:`Objective.head_scores <avgk_lib.objectives.Objective.head_scores>`) and the targets of
    every sample of ``loader``, in loader order.

    Under ``torch.distributed`` each rank scores its shard and the shards are all-gathered, so
    every rank returns the scores of the whole split (needed before calibrating a threshold)."""
    was_training = model.training
    model.eval()
    scores: dict[str, list[torch.Tensor]] = {}
    targets = []
    for x, y, _ in loader:
        with autocast or nullcontext():
            outputs = model(x)
        for head, s in head_scores(outputs).items():
            scores.setdefault(head, []).append(s)
        targets.append(y)
    model.train(was_training)
    out, y = {head: torch.cat(parts) for head, parts in scores.items()}, torch.cat(targets)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out, y = {head: _all_gather_rows(s) for head, s in out.items()}, _all_gather_rows(y)
    return out, y


def _all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate the rows of every rank (shards may differ in length by a few rows)."""
    world = dist.get_world_size()
    size = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(s.item())] for g, s in zip(gathered, sizes, strict=True)])


def evaluate(run: Run, split: str = "val") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Scores of every head (see :func:`collect_scores`) and targets of ``split``."""
    loader = {"val": run.val_loader, "test": run.test_loader}.get(split)
    if loader is None:
        raise ValueError(f"`split` must be 'val' or 'test', got {split!r}")
    return collect_scores(run.model, loader, run.objective.head_scores, run.autocast())


def validation_metrics(run: Run) -> dict[str, float]:
    """Validation metrics of the evaluated head (thresholds calibrated on validation)."""
    scores, targets = evaluate(run, "val")
    return metric_dict(scores[run.spec.eval_head], targets, run.cfg.eval_ks)[0]


def split_scores(run: Run) -> dict[str, Any]:
    """The current weights' scores of every head and the targets, on validation and on test, in
    the form of :func:`evaluate_final` with ``heads`` still to fill (``None`` for each head of
    the run, in order): ``{"heads", "val": {head: scores}, "test": {head: scores}, "val_targets",
    "test_targets"}``."""
    val, val_targets = evaluate(run, "val")
    test, test_targets = evaluate(run, "test")
    heads = dict.fromkeys(run.spec.heads)
    return {"heads": heads, "val": val, "test": test, "val_targets": val_targets, "test_targets": test_targets}


def evaluate_final(run: Run) -> dict[str, Any]:
    """Test metrics of the current weights for every head (thresholds calibrated on validation
    with the same weights), with the scores: ``{"heads": {head: metrics}, "val": {head: scores},
    "test": {head: scores}, "val_targets", "test_targets"}`` (:func:`split_scores`)."""
    e = split_scores(run)
    for head in e["heads"]:
        e["heads"][head] = calibrated_test_metrics(
            e["val"][head], e["val_targets"], e["test"][head], e["test_targets"], run.cfg.eval_ks
        )
    return e


def train_fit(run: Run) -> dict[str, float | None] | None:
    """How well the current weights fit the training labels, on data with injected label noise
    (a training split that keeps its ``clean_y``; single process only), else ``None``:
    top-1 accuracy on the noisy labels the model is trained on (``noisy_acc``), on the clean
    labels (``clean_acc``), and on the noisy labels of the flipped samples only (``flipped_acc``,
    the memorisation of label noise; None when no label was flipped)."""
    split = run.bundle.train
    clean = getattr(split, "clean_y", None)
    if clean is None or run.world > 1:
        return None
    loader = make_loader(run.bundle, "train", run.cfg.eval_batch_size, run.device, train=False)
    scores, noisy = collect_scores(run.model, loader, run.objective.head_scores, run.autocast())
    predicted = scores[run.spec.eval_head].argmax(dim=1)
    clean = clean.to(predicted.device)
    flipped = noisy != clean
    hit = predicted == noisy
    return {
        "noisy_acc": float(hit.float().mean()),
        "clean_acc": float((predicted == clean).float().mean()),
        "flipped_acc": float(hit[flipped].float().mean()) if bool(flipped.any()) else None,
        "flipped_share": float(flipped.float().mean()),
    }


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: says at which epoch and how to resume. ``epoch`` (0-based) is the
    epoch interrupted, so also the number of finished epochs that ``last.pt`` holds."""

    def __init__(self, epoch: int, folder: Path | None, folders: list[Path | None] | None = None) -> None:
        saved = [str(getattr(f, "path", f)) for f in folders or [] if f is not None]
        if saved:
            shown = ", ".join(saved[:3]) + (f" and {len(saved) - 3} more" if len(saved) > 3 else "")
            where = (
                f"; each of the {len(saved)} stacked runs keeps its {epoch} finished epoch(s) in its folder's last.pt "
                f"({shown}): train them again with resume=True to continue"
            )
        elif folder is not None:
            where = f"; resume with --resume (--out {folder})"
        else:
            where = " (a run with a folder keeps its finished epochs in that folder's last.pt: resume it from there)"
        super().__init__(f"interrupted during epoch {epoch + 1}{where}")
        self.epoch = epoch
        self.folder = folder
        self.folders = folders


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


def run_epochs(start: int, epochs: int, one_epoch: Callable[[int], None], folder: Path | None) -> None:
    """The epoch loop of every trainer (one run: :func:`fit`; a stack: ``train_many``):
    ``one_epoch(epoch)`` for ``start..epochs-1``. Each epoch ends with its checkpoint, so a Ctrl-C
    during epoch ``e`` leaves ``e`` epochs saved: it becomes :class:`RunInterrupted` ``(e, folder)``."""
    for epoch in range(start, epochs):
        try:
            one_epoch(epoch)
        except KeyboardInterrupt:
            raise RunInterrupted(epoch, folder) from None


def fit(run: Run, folder: RunDir | None, book: Progress, start: int, show_progress: bool, log) -> None:
    """Train epochs ``start..epochs-1``; after each, :func:`end_epoch`."""
    reference = book.history[0]["train_loss"] if book.history else None
    guard = DivergenceGuard(reference, 1 if run.device.type == "cpu" else 50, run.world)

    def one_epoch(epoch: int) -> None:
        began = time.time()
        train_loss = train_one_epoch(run, epoch, guard, show_progress)
        guard.reference = book.history[0]["train_loss"] if book.history else train_loss
        end_epoch(run, folder, book, epoch, train_loss, began, log)

    run_epochs(start, run.cfg.epochs, one_epoch, folder.path if folder else None)


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
        state = _snapshot(run, epoch + 1, book)
        if improved:
            folder.save_best({"model": state.model, "loss": state.loss, "epoch": epoch + 1}, spec.fingerprint)
        folder.save_state(state, spec.fingerprint, dataclasses.asdict(cfg))
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


def run_result(
    run: Run, book: Progress, best, last, started: float, share: int = 1, prior_seconds: float = 0.0
) -> RunResult:
    """The :class:`RunResult` of a finished run (``share``: the number of runs trained together
    in one stack, whose wall time is split evenly between them; ``prior_seconds``: the time of the
    earlier parts of a resumed run, so that ``wall_seconds`` is the sum over every part)."""
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
    times["wall_seconds"] = prior_seconds + (finished - started) / share
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


def finish(
    run: Run,
    folder: RunDir | None,
    book: Progress,
    started: float,
    log,
    share: int = 1,
    evaluations: tuple[dict[str, Any], dict[str, Any]] | None = None,
) -> RunResult:
    """Test the best and the last epoch, write ``scores.pt`` and ``results.json`` (rank 0).
    ``evaluations``: the ``(best, last)`` of :func:`final_evaluations` when already computed
    (a stack computes its members' at once, :func:`avgk_lib.stacked.final_evaluations`)."""
    best, last = final_evaluations(run, folder, book) if evaluations is None else evaluations
    keep_scores = folder is not None and run.is_main and run.cfg.save_scores
    scores = saved_scores(run.spec, best) if keep_scores else None
    prior = folder.prior_seconds if folder is not None else 0.0
    result = run_result(run, book, best, last, started, share, prior)
    if not run.is_main:
        return result
    for line in result.warnings:
        log(f"warning: {line}")
    if folder is not None:
        if scores is not None:
            folder.save_scores(scores, run.spec.fingerprint)
        folder.write_result(result)
    log("test: " + "  ".join(f"{k} {v:.4f}" for k, v in result.test.items() if "threshold" not in k))
    return result


def complete(
    run: Run, folder: RunDir | None, state: TrainState | None, *, progress: bool, log, started: float
) -> RunResult:
    """Everything after :func:`~avgk_lib.build.build_run` for one run: the epochs left after
    ``state`` (all of them for a fresh start), then :func:`finish`."""
    book = Progress([]) if state is None else Progress(state.history, state.best_value, state.best_epoch)
    if run.is_main:
        if state is not None:
            log(f"resumed from {folder.last if folder else 'a checkpoint'} after epoch {state.epoch}")
        log(_banner(run))
    fit(run, folder, book, state.epoch if state else 0, progress, log)
    return finish(run, folder, book, started, log)


def _banner(run: Run) -> str:
    heads = ", two heads" if run.spec.two_head else ""
    return (
        f"{run.bundle.summary()} | model {run.spec.model} ({run.spec.head} head{heads})"
        f" | loss {run.cfg.loss} K={run.cfg.k:g} | device {run.device}, amp {run.amp_mode}, world {run.world}"
    )


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))
