"""Assembling a run (pytorch/examples' imagenet style): :func:`build_run` turns a resolved
:class:`~avgk_lib.runspec.RunSpec` into a :class:`Run`: process group and device, seeded
generators, data, model, objective, loaders, optimizer and scheduler, and restores a
:class:`~avgk_lib.rundir.TrainState` when the run resumes.

CUDA runs use automatic mixed precision (bfloat16 where supported, else float16 with a grad
scaler), channels_last for convolutional models and optionally ``torch.compile``. Launched by
``torchrun``, training is data-parallel (DistributedDataParallel).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .config import ConfigError, TrainConfig, parse_device
from .data import DatasetBundle, load_dataset, make_loader
from .data.base import available_memory, check_memory, env_value
from .models import build_model
from .objectives import Objective, assemble_objective
from .rundir import TrainState
from .runspec import RunSpec
from .seeding import seed_everything, set_rng_state


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
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def loss_fn(self) -> nn.Module:
        return self.objective.loss_fn


def distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; initialise the process group."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and env_value("AVGK_DIST_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0)


def _env_int(name: str, default: int) -> int:
    """An integer environment variable (torchrun's): unset or empty means ``default``; anything
    else but a non-negative integer is one ``ConfigError`` naming the variable."""
    value = env_value(name)
    if value is None:
        return default
    if not value.strip().isdigit():
        raise ConfigError("device", f"cannot be chosen: the environment variable {name}={value!r} is not an integer")
    return int(value)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available; ``ConfigError("device")`` for an unusable device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = parse_device(name)
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
    check_run_memory(cfg, c, bundle.input_shape, spec.loss_options)


def _device_memory(device: str) -> int | None:
    """Free bytes on the device a run will use (``auto``: CUDA when available); None when unknown."""
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if not cuda:
        return available_memory()
    try:
        return int(torch.cuda.mem_get_info(torch.device("cuda" if device == "auto" else device))[0])
    except (RuntimeError, AssertionError, ValueError):
        return None


def check_run_memory(
    cfg: TrainConfig, n_classes: int, input_shape: tuple[int, ...], loss_options: dict[str, Any]
) -> None:
    """Estimates, before allocating, of the largest per-step buffers of a run against the memory of its
    device (``ConfigError`` naming the option): an evaluation batch of inputs (float32, with the copies
    of augmentation and normalisation) and, for the noised top-K losses, the noise of ``n_samples``
    perturbations of a batch of scores (float64 working copies, perturbed and gradient buffers).
    ``loss_options``: the loss's options merged with its defaults (:attr:`RunSpec.loss_options`)."""
    available = _device_memory(cfg.device)
    if available is None:
        return
    batch = cfg.eval_batch_size
    needs = {"batch_size": (3 * batch * math.prod(input_shape) * 4, f"a batch of {batch} inputs of {input_shape}")}
    n_samples = loss_options.get("n_samples")
    if isinstance(n_samples, int):
        what = f"the noise of {n_samples} samples x {cfg.batch_size} inputs x {n_classes} classes"
        needs["n_samples"] = (2 * 8 * n_samples * cfg.batch_size * n_classes, what)
    for name, (nbytes, what) in needs.items():
        try:
            check_memory(nbytes, name, what, available)
        except ValueError as err:
            raise ConfigError(name, str(err).removeprefix(f"`{name}` ")) from None


def _loaders(cfg: TrainConfig, bundle: DatasetBundle, device: torch.device, shard, channels_last: bool):
    return tuple(
        make_loader(
            bundle,
            split,
            cfg.batch_size if split == "train" else cfg.eval_batch_size,
            device,
            train=split == "train",
            seed=cfg.seed,
            shard=shard,
            workers=cfg.workers,
            channels_last=channels_last,
        )
        for split in ("train", "val", "test")
    )


def build_run(spec: RunSpec, bundle: DatasetBundle | None = None, state: TrainState | None = None) -> Run:
    """Set up the process group and device, load the data (unless ``bundle`` is given) and
    check the run against it, seed the global generators (the data draws have their own), and
    build model, objective, loaders, optimizer and scheduler for a resolved run
    (``RunSpec.resolve(cfg)``), then :func:`restore` ``state`` (a resumed run). The mistakes
    that only the data reveal (K against the number of classes, a batch larger than the
    training set, memory) raise :class:`~avgk_lib.config.ConfigError` here, before training."""
    if not isinstance(spec, RunSpec):
        raise TypeError(f"`spec` must be a RunSpec (RunSpec.resolve(cfg)), got {type(spec).__name__}")
    cfg = spec.config
    rank, world, local_rank = distributed()
    device = resolve_device(cfg.device, local_rank)
    bundle = bundle if bundle is not None else load_dataset(cfg.dataset, **cfg.dataset_options)
    _check_against_data(spec, bundle)
    seed_everything(cfg.seed)  # data draws use their own generators: the global ones seed the model
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
    objective = assemble_objective(spec.objective, spec.loss_options, run=run_facts(spec, bundle))
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
    run = Run(
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
    if state is not None:
        restore(run, state)
    return run


def run_facts(spec: RunSpec, bundle: DatasetBundle) -> dict[str, Any]:
    """What a loss may need to know about the data: K, classes, class counts, training size."""
    counts = bundle_counts(bundle)
    return {"k": spec.k, "n_classes": bundle.n_classes, "class_counts": counts, "n_train": len(bundle.train)}


def restore(run: Run, state: TrainState) -> None:
    """Load a checkpointed :class:`~avgk_lib.rundir.TrainState` into a built run: weights, the
    loss's own state, optimizer, scheduler, AMP scaler and every RNG state."""
    run.model.load_state_dict(state.model)
    run.loss_fn.load_state_dict(state.loss)
    run.optimizer.load_state_dict(state.optimizer)
    if run.scheduler is not None:
        run.scheduler.load_state_dict(state.scheduler)
    if run.scaler is not None and state.scaler is not None:
        run.scaler.load_state_dict(state.scaler)
    set_rng_state(state.rng)
