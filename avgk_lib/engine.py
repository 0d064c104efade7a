"""The parts of a training run (pytorch/examples' imagenet style): :func:`build_run` assembles a
:class:`Run` from a :class:`~avgk_lib.config.TrainConfig`; :func:`train_one_epoch` makes one pass
over the training data; :func:`evaluate` scores a split and :func:`evaluate_final` gives the
test metrics of the current weights; :class:`DivergenceGuard` stops a run whose loss explodes.

CUDA runs use automatic mixed precision (bfloat16 where supported, else float16 with a grad
scaler), channels_last for convolutional models and optionally ``torch.compile``. Launched by
``torchrun``, training is data-parallel (DistributedDataParallel); validation scores are
all-gathered before a threshold is calibrated.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import seed_everything
from .config import ConfigError, TrainConfig, check_run_memory
from .data import DatasetBundle, load_dataset, make_loader
from .evaluation import calibrated_test_metrics, collect_scores, metric_dict
from .models import build_model
from .objectives import Objective, build_objective
from .runspec import RunSpec


class TrainingDiverged(FloatingPointError):
    """The training loss became non-finite or exploded (see :class:`DivergenceGuard`)."""


@dataclass(kw_only=True)
class Run:
    """Everything one training run is made of (built by :func:`build_run`)."""

    spec: RunSpec
    bundle: DatasetBundle
    device: torch.device
    rank: int
    world: int
    model: nn.Module  # the bare model (state dicts, evaluation)
    forward_model: nn.Module  # what the training step calls (DDP and/or compiled wrapper)
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: Any
    schedule_unit: str  # "batch", "epoch" or "none"
    scaler: torch.amp.GradScaler | None
    autocast: Callable[[], Any]
    amp_mode: str
    train_loader: Any
    val_loader: Any
    test_loader: Any
    steps_per_epoch: int

    @property
    def cfg(self) -> TrainConfig:
        return self.spec.config

    @property
    def head(self) -> str:
        return self.spec.head

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def loss_fn(self) -> nn.Module:
        return self.objective.loss_fn


def distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; initialise the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("AVGK_DIST_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available; ``ConfigError("device")`` for an unusable device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError("device", f"is not a device name: {name!r} (auto, cpu, cuda, cuda:1 ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device", f"is {name!r} but CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise ConfigError("device", f"is {name!r} but only {torch.cuda.device_count()} CUDA devices exist")
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ConfigError("device", f"must be cpu or cuda, got {name!r}")
    return device


def _autocast_setup(cfg: TrainConfig, device: torch.device) -> tuple[Any, torch.amp.GradScaler | None, str]:
    if device.type != "cuda" or cfg.amp == "off":
        return nullcontext, None, "off"
    mode = cfg.amp if cfg.amp != "auto" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if mode == "fp16" else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler, mode


def build_optimizer(cfg: TrainConfig, model: nn.Module, loss_fn: nn.Module) -> torch.optim.Optimizer:
    """SGD or AdamW; no weight decay on biases and norms; the loss's own parameters (ROLE's
    table) in their own group with ``lr * loss_lr_multiplier``."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    loss_params = [p for p in loss_fn.parameters() if p.requires_grad]
    if loss_params:
        groups.append({"params": loss_params, "weight_decay": 0.0, "lr": cfg.lr * cfg.loss_lr_multiplier})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> tuple[Any, str]:
    """(scheduler, unit): stepped per epoch for ``step``, per batch for ``cosine``/``onecycle``."""
    total = max(cfg.epochs * steps_per_epoch, 1)
    if cfg.scheduler == "step":
        milestones = [m - 1 for m in cfg.milestones]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, cfg.lr_gamma), "epoch"
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total), "batch"
    if cfg.scheduler == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr, total_steps=total), "batch"
    return None, "none"


def bundle_counts(bundle: DatasetBundle) -> list[int]:
    """Training class counts, at least 1 each (margins need positive counts)."""
    return [max(1, int(c)) for c in bundle.train_counts]


def _check_against_data(spec: RunSpec, bundle: DatasetBundle) -> None:
    """The checks that need the number of classes and samples."""
    cfg, c = spec.config, bundle.n_classes
    if cfg.k >= c if spec.integer_k else cfg.k > c:
        raise ConfigError(
            "k", f"must be < the number of classes ({c}) for a top-K loss, <= it otherwise; got {cfg.k:g}"
        )
    too_big = [k for k in cfg.eval_ks if k > c]
    if too_big:
        raise ConfigError("eval_ks", f"must be <= the number of classes ({c}), got {too_big}")
    if len(bundle.train) < cfg.batch_size:
        raise ConfigError("batch_size", f"{cfg.batch_size} leaves no full training batch ({len(bundle.train)} samples)")
    check_run_memory(cfg, c, bundle.input_shape)


def _loaders(cfg: TrainConfig, bundle: DatasetBundle, device: torch.device, shard, channels_last: bool):
    return tuple(
        make_loader(
            bundle,
            split,
            cfg.batch_size if split == "train" else max(cfg.batch_size, 256),
            device,
            train=split == "train",
            seed=cfg.seed,
            shard=shard,
            workers=cfg.workers,
            channels_last=channels_last,
        )
        for split in ("train", "val", "test")
    )


def build_run(spec: RunSpec | TrainConfig, bundle: DatasetBundle | None = None) -> Run:
    """Set up the process group and device, seed, load the data (unless ``bundle`` is given)
    and build model, objective, loaders, optimizer and scheduler for a resolved run (a
    :class:`TrainConfig` is resolved first). Every configuration mistake raises
    :class:`~avgk_lib.config.ConfigError` here, before training."""
    spec = RunSpec.resolve(spec)
    cfg = spec.config
    rank, world, local_rank = distributed()
    device = resolve_device(cfg.device, local_rank)
    seed_everything(cfg.seed)
    bundle = bundle if bundle is not None else load_dataset(cfg.dataset, **cfg.dataset_options)
    _check_against_data(spec, bundle)
    model = build_model(
        spec.model,
        bundle.n_classes,
        bundle.input_shape,
        head=spec.head,
        two_head=spec.two_head,
        detach_multilabel=cfg.detach_multilabel,
        pretrained=cfg.pretrained,
    ).to(device)
    # the loss is built after the model, as in earlier versions, so that seeded runs reproduce
    objective = build_objective(spec, run=run_facts(spec, bundle))
    objective.loss_fn.to(device)
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    channels_last = channels_last and len(bundle.input_shape) == 3
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    autocast, scaler, amp_mode = _autocast_setup(cfg, device)
    train_loader, val_loader, test_loader = _loaders(cfg, bundle, device, (rank, world), channels_last)
    steps = len(train_loader) if cfg.max_batches is None else min(len(train_loader), cfg.max_batches)
    if steps == 0:
        raise ConfigError("batch_size", f"{cfg.batch_size} leaves no full training batch on each of {world} processes")
    optimizer = build_optimizer(cfg, model, objective.loss_fn)
    scheduler, unit = build_scheduler(cfg, optimizer, steps)
    wrapped: nn.Module = model
    if world > 1:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return Run(
        spec=spec,
        bundle=bundle,
        device=device,
        rank=rank,
        world=world,
        model=model,
        forward_model=torch.compile(wrapped) if cfg.compile else wrapped,
        objective=objective,
        optimizer=optimizer,
        scheduler=scheduler,
        schedule_unit=unit,
        scaler=scaler,
        autocast=autocast,
        amp_mode=amp_mode,
        train_loader=train_loader,
        val_loader=val_loader,
        test_loader=test_loader,
        steps_per_epoch=steps,
    )


def run_facts(spec: RunSpec, bundle: DatasetBundle) -> dict[str, Any]:
    """What a loss may need to know about the data: K, classes, class counts, training size."""
    counts = bundle_counts(bundle)
    return {"k": spec.k, "n_classes": bundle.n_classes, "class_counts": counts, "n_train": len(bundle.train)}


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
        value = float(values[index])
        why = "non-finite" if not math.isfinite(value) else f"> {self.FACTOR:g} x the reference {self.reference:.4g}"
        where = f"epoch {epoch + 1}, step {steps[index] + 1}"
        raise TrainingDiverged(f"training diverged at {where}: loss {value:.4g} ({why}); try a lower --lr")


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


def evaluate(run: Run, split: str = "val") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Scores of every head (see :func:`~avgk_lib.evaluation.collect_scores`) and targets of ``split``."""
    loader = {"val": run.val_loader, "test": run.test_loader}.get(split)
    if loader is None:
        raise ValueError(f"`split` must be 'val' or 'test', got {split!r}")
    return collect_scores(run.model, loader, run.objective, run.autocast())


def validation_metrics(run: Run) -> dict[str, float]:
    """Validation metrics of the evaluated head (thresholds calibrated on validation)."""
    scores, targets = evaluate(run, "val")
    return metric_dict(scores[run.spec.eval_head], targets, run.cfg.eval_ks)[0]


def evaluate_final(run: Run) -> dict[str, Any]:
    """Test metrics of the current weights for every head (thresholds calibrated on validation
    with the same weights), with the scores: ``{"heads": {head: metrics}, "val": {head: scores},
    "test": {head: scores}, "val_targets", "test_targets"}``."""
    val, val_targets = evaluate(run, "val")
    test, test_targets = evaluate(run, "test")
    heads = {
        head: calibrated_test_metrics(val[head], val_targets, test[head], test_targets, run.cfg.eval_ks)
        for head in run.spec.heads
    }
    return {"heads": heads, "val": val, "test": test, "val_targets": val_targets, "test_targets": test_targets}


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
    loader = make_loader(run.bundle, "train", max(run.cfg.batch_size, 256), run.device, train=False)
    scores, noisy = collect_scores(run.model, loader, run.objective, run.autocast())
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
