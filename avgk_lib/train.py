"""The training engine: any model of the papers with any loss of the library, on CPU or CUDA.

:func:`train` runs a :class:`TrainConfig` end to end:

* per epoch: one pass over the training data (tqdm progress bar), then the validation top-K
  (micro, macro) and average-K metrics (threshold calibrated on validation) for every K of
  ``eval_ks``; the best epoch by ``select_metric`` is kept;
* an atomic checkpoint after every epoch (model, optimizer, scheduler, AMP scaler, every RNG
  state, history, best metric, the loss's own state such as ROLE's table), so a crash loses at
  most one epoch; ``resume=True`` continues bit-exactly on CPU;
* at the end: test metrics of the best model with thresholds calibrated on validation, written
  with the configuration, the history and provenance to ``out/results.json``.

CUDA runs use automatic mixed precision (bfloat16 where supported, else float16 with a grad
scaler), channels_last for convolutional models and optionally ``torch.compile``. Launched by
``torchrun``, training is data-parallel (DistributedDataParallel); validation scores are
all-gathered before the threshold is calibrated and rank 0 writes checkpoints and results.
Two limits of the distributed mode: ROLE's label table lives in the loss, outside
DistributedDataParallel, so each rank updates the rows of its own samples and rank 0's table is
the one saved; and bit-exact resumption is guaranteed for single-process runs only (rank 0's RNG
state is the one checkpointed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from . import __version__
from .checkpoint import CheckpointError, atomic_save, load_checkpoint, rng_state, seed_everything, set_rng_state
from .data import DatasetBundle, load_dataset, make_loader
from .evaluation import collect_scores, k_label, metric_dict
from .models import build_model
from .objectives import build_loss, compute_loss, get_objective

DEFAULT_MODELS = {
    "synthetic": "mlp",
    "fashion_mnist": "small_cnn",
    "cifar100": "resnet18_cifar",
    "plantnet300k": "resnet50",
}


@dataclass
class TrainConfig:
    """One training run. Every field is a CLI flag of ``python -m avgk_lib train``.

    ``milestones`` are the epochs (1-based) from which the step schedule multiplies the learning
    rate by ``lr_gamma`` (P1's CIFAR recipe: ``[151, 226]``). ``select_metric="auto"`` selects
    on validation top-K micro accuracy (top-K losses) or average-K micro accuracy (average-K
    losses) at the loss's K. ``max_batches`` caps the training batches per epoch (smoke runs).
    """

    dataset: str = "synthetic"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    model: str = "auto"
    loss: str = "cross_entropy"
    k: float = 5.0
    loss_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    scheduler: str = "cosine"
    milestones: list[int] = field(default_factory=list)
    lr_gamma: float = 0.1
    loss_lr_multiplier: float = 1.0
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    eval_ks: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0, 5.0])
    select_metric: str = "auto"
    eval_head: str = "multilabel"
    head: str = "auto"
    detach_multilabel: bool = False
    pretrained: bool = False
    workers: int = 4
    max_batches: int | None = None
    save_scores: bool = True

    def resolved_model(self) -> str:
        return DEFAULT_MODELS.get(self.dataset, "mlp") if self.model == "auto" else self.model

    def resolved_select_metric(self) -> str:
        if self.select_metric != "auto":
            return self.select_metric
        objective = get_objective(self.loss)
        return f"top{k_label(self.k)}_micro" if objective.integer_k else f"avg{k_label(self.k)}_micro"

    def fingerprint(self) -> str:
        """Hash of everything that changes the result (not the device or the progress display)."""
        keep = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("device", "workers")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def validate(self) -> None:
        get_objective(self.loss)
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("`epochs` and `batch_size` must be >= 1")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"`optimizer` must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.scheduler not in ("step", "cosine", "onecycle", "none"):
            raise ValueError(f"`scheduler` must be step, cosine, onecycle or none, got {self.scheduler!r}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError(f"`amp` must be auto, bf16, fp16 or off, got {self.amp!r}")
        if float(self.k) not in [float(k) for k in self.eval_ks]:
            self.eval_ks = sorted({*map(float, self.eval_ks), float(self.k)})


# ----------------------------------------------------------------------------------------------
# setup helpers
# ----------------------------------------------------------------------------------------------


def _distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; initialise the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("AVGK_DIST_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def _autocast_setup(cfg: TrainConfig, device: torch.device) -> tuple[Any, torch.amp.GradScaler | None, str]:
    if device.type != "cuda" or cfg.amp == "off":
        return nullcontext, None, "off"
    bf16_ok = torch.cuda.is_bf16_supported()
    mode = cfg.amp if cfg.amp != "auto" else ("bf16" if bf16_ok else "fp16")
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if mode == "fp16" else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler, mode


def _optimizer(cfg: TrainConfig, model: nn.Module, loss_fn: nn.Module) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    loss_params = [p for p in loss_fn.parameters() if p.requires_grad]
    if loss_params:  # ROLE's label table: its own learning rate, no weight decay
        groups.append({"params": loss_params, "weight_decay": 0.0, "lr": cfg.lr * cfg.loss_lr_multiplier})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """(scheduler, steps_per_call): per-epoch for ``step``, per-batch for ``cosine``/``onecycle``."""
    total = cfg.epochs * steps_per_epoch
    if cfg.scheduler == "step":
        milestones = [m - 1 for m in cfg.milestones]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, cfg.lr_gamma), "epoch"
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(total, 1)), "batch"
    if cfg.scheduler == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr, total_steps=max(total, 1)), "batch"
    return None, "none"


def provenance(device: torch.device, world: int) -> dict[str, Any]:
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=Path(__file__).resolve().parent,
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    import numpy
    import torchvision

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "git_commit": commit,
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


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------


def train(
    cfg: TrainConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    bundle: DatasetBundle | None = None,
    log=print,
) -> dict[str, Any]:
    """Train, validate every epoch, checkpoint, test the best epoch; return the results dict.

    Args:
        out: folder for ``last.pt``, ``best.pt``, ``results.json`` (and ``scores.pt``); ``None``
            keeps everything in memory (no checkpoints).
        resume: continue from ``out/last.pt``. Without it, an existing checkpoint in ``out`` is an
            error (never overwritten silently).
        bundle: an already loaded dataset (otherwise ``load_dataset(cfg.dataset, **cfg.dataset_options)``).
    """
    cfg.validate()
    rank, world, local_rank = _distributed()
    device = resolve_device(cfg.device, local_rank)
    is_main = rank == 0
    out = Path(out) if out is not None else None
    last_path = out / "last.pt" if out else None
    best_path = out / "best.pt" if out else None
    if last_path is not None and last_path.exists() and not resume:
        raise CheckpointError(f"{last_path} exists: pass resume=True (--resume) to continue it, or use another folder")

    started = time.time()
    seed_everything(cfg.seed)
    bundle = bundle if bundle is not None else load_dataset(cfg.dataset, **cfg.dataset_options)
    objective = get_objective(cfg.loss)
    model_name = cfg.resolved_model()
    head = objective.head if cfg.head == "auto" else cfg.head
    model = build_model(
        model_name,
        bundle.n_classes,
        bundle.input_shape,
        head=head,
        two_head=objective.two_head,
        detach_multilabel=cfg.detach_multilabel,
        pretrained=cfg.pretrained,
    ).to(device)
    loss_options = {
        **cfg.loss_options,
        "k": cfg.k,
        "n_classes": bundle.n_classes,
        "class_counts": bundle_counts(bundle),
        "n_train": len(bundle.train),
    }
    loss_fn = build_loss(cfg.loss, loss_options).to(device)
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    channels_last = channels_last and len(bundle.input_shape) == 3
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    autocast, scaler, amp_mode = _autocast_setup(cfg, device)
    shard = (rank, world)
    train_loader, val_loader, test_loader = (
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
    steps_per_epoch = len(train_loader) if cfg.max_batches is None else min(len(train_loader), cfg.max_batches)
    if steps_per_epoch == 0:
        raise ValueError(f"batch size {cfg.batch_size} leaves no full training batch ({len(bundle.train)} samples)")
    optimizer = _optimizer(cfg, model, loss_fn)
    scheduler, schedule_unit = _scheduler(cfg, optimizer, steps_per_epoch)

    ddp_model: nn.Module = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    forward_model = torch.compile(ddp_model) if cfg.compile else ddp_model

    select = cfg.resolved_select_metric()
    history: list[dict[str, Any]] = []
    best_value, best_epoch, start_epoch = -math.inf, 0, 0
    fingerprint = cfg.fingerprint()
    if resume and last_path is not None and last_path.exists():
        state = load_checkpoint(last_path, fingerprint)
        model.load_state_dict(state["model"])
        loss_fn.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        history, best_value, best_epoch = state["history"], state["best_value"], state["best_epoch"]
        start_epoch = state["epoch"]
        set_rng_state(state["rng"])
        if is_main:
            log(f"resumed from {last_path} after epoch {start_epoch}")

    if is_main:
        log(
            f"{bundle.summary()} | model {model_name} ({head} head{', two heads' if objective.two_head else ''}) | "
            f"loss {cfg.loss} K={k_label(cfg.k)} | device {device}, amp {amp_mode}, world {world}"
        )

    for epoch in range(start_epoch, cfg.epochs):
        epoch_start = time.time()
        ddp_model.train()
        train_loader.set_epoch(epoch)
        if hasattr(loss_fn, "set_epoch"):  # e.g. the two-head loss's warm-up
            loss_fn.set_epoch(epoch)
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        seen = 0
        batches = _progress(train_loader, steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", progress and is_main)
        for step, (x, y, idx) in enumerate(batches):
            if step >= steps_per_epoch:
                break
            with autocast():
                outputs = forward_model(x)
                loss = compute_loss(loss_fn, objective, outputs, y, idx)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            if schedule_unit == "batch":
                scheduler.step()
            loss_sum += loss.detach().double() * y.shape[0]
            seen += y.shape[0]
        if schedule_unit == "epoch":
            scheduler.step()
        train_loss = float(loss_sum) / max(seen, 1)
        if world > 1:
            t = torch.tensor([train_loss], device=device)
            dist.all_reduce(t)
            train_loss = float(t) / world
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"training diverged: non-finite loss at epoch {epoch + 1} (try a lower --lr)")
        val_scores, val_targets = collect_scores(model, val_loader, objective, loss_fn, cfg.eval_head, autocast())
        val_metrics, _ = metric_dict(val_scores, val_targets, cfg.eval_ks)
        if select not in val_metrics:
            raise ValueError(f"select_metric {select!r} is not computed; available: {', '.join(sorted(val_metrics))}")
        seconds = time.time() - epoch_start
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": seconds,
                "val": val_metrics,
            }
        )
        value = -math.inf if degenerate_sets(val_metrics, cfg.k) else val_metrics[select]
        improved = value > best_value or best_epoch == 0
        if improved:
            best_value, best_epoch = value, epoch + 1
        if is_main:
            log(
                f"epoch {epoch + 1:>3}/{cfg.epochs}  loss {train_loss:.4f}  val {select} {val_metrics[select]:.4f}"
                f"{' *' if improved else ''}  ({seconds:.1f}s)"
            )
        if out is not None and is_main:
            if improved:
                atomic_save({"model": model.state_dict(), "loss": loss_fn.state_dict(), "epoch": epoch + 1}, best_path)
            atomic_save(
                {
                    "format_version": 1,
                    "fingerprint": fingerprint,
                    "config": dataclasses.asdict(cfg),
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "loss": loss_fn.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler else None,
                    "scaler": scaler.state_dict() if scaler else None,
                    "rng": rng_state(),
                    "history": history,
                    "best_value": best_value,
                    "best_epoch": best_epoch,
                },
                last_path,
            )
        elif out is None and improved:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if world > 1:
            dist.barrier()

    # ------------------------------------------------------------------ test the last and the best epoch
    test_last, _ = _test_metrics(model, val_loader, test_loader, objective, loss_fn, cfg, autocast)
    if out is not None:
        if world > 1:
            dist.barrier()
        model.load_state_dict(torch.load(best_path, map_location=device, weights_only=False)["model"])
    else:
        model.load_state_dict(best_state)
    val_scores, val_targets = collect_scores(model, val_loader, objective, loss_fn, cfg.eval_head, autocast())
    _, thresholds = metric_dict(val_scores, val_targets, cfg.eval_ks)
    test_scores, test_targets = collect_scores(model, test_loader, objective, loss_fn, cfg.eval_head, autocast())
    test_metrics, _ = metric_dict(test_scores, test_targets, cfg.eval_ks, thresholds)
    test_metrics.update(degeneracy(test_scores, test_metrics, cfg.eval_ks))
    head_scores: dict[str, torch.Tensor] = {}
    test_heads: dict[str, dict[str, float]] = {}
    if objective.two_head:
        for name in ("softmax", "multilabel"):
            metrics, scores = _test_metrics(model, val_loader, test_loader, objective, loss_fn, cfg, autocast, name)
            test_heads[name] = metrics
            head_scores.update({f"{split}_scores_{name}": t.half().cpu() for split, t in scores.items()})
    warnings = degeneracy_warnings(test_metrics, cfg.eval_ks)
    for line in warnings:
        log(f"warning: {line}")
    finished = time.time()
    results = {
        "config": dataclasses.asdict(cfg),
        "history": history,
        "test": test_metrics,
        "test_last": test_last,
        **({"test_heads": test_heads} if test_heads else {}),
        "warnings": warnings,
        "summary": {
            "best_epoch": best_epoch,
            "select_metric": select,
            "best_val": best_value,
            "model": model_name,
            "head": head,
            "amp": amp_mode,
            "fingerprint": fingerprint,
            "train_samples": len(bundle.train),
            "class_counts": bundle_counts(bundle),
        },
        "provenance": {
            **provenance(device, world),
            "seed": cfg.seed,
            "start_time": _iso(started),
            "end_time": _iso(finished),
            "wall_seconds": finished - started,
        },
    }
    if out is not None and is_main:
        if cfg.save_scores:
            atomic_save(
                {
                    "val_scores": val_scores.half().cpu(),
                    "val_targets": val_targets.cpu(),
                    "test_scores": test_scores.half().cpu(),
                    "test_targets": test_targets.cpu(),
                    **head_scores,
                },
                out / "scores.pt",
            )
        tmp = out / ".results.json.tmp"
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(out / "results.json")
        log("test: " + "  ".join(f"{k} {v:.4f}" for k, v in test_metrics.items() if "threshold" not in k))
    return results


def _test_metrics(model, val_loader, test_loader, objective, loss_fn, cfg, autocast, head=None):
    """Test metrics of ``model`` (thresholds calibrated on its validation scores) for one head
    (``head=None``: the configured ``eval_head``); also returns the val/test scores."""
    head = head or cfg.eval_head
    val_scores, val_targets = collect_scores(model, val_loader, objective, loss_fn, head, autocast())
    _, thresholds = metric_dict(val_scores, val_targets, cfg.eval_ks)
    test_scores, test_targets = collect_scores(model, test_loader, objective, loss_fn, head, autocast())
    metrics, _ = metric_dict(test_scores, test_targets, cfg.eval_ks, thresholds)
    metrics.update(degeneracy(test_scores, metrics, cfg.eval_ks))
    return metrics, {"val": val_scores, "test": test_scores}


def degeneracy(scores: torch.Tensor, metrics: dict[str, float], eval_ks: list[float]) -> dict[str, float]:
    """Collapse diagnostics: ``top1_mode_share``, the share of inputs whose top-1 class is the most
    often predicted top-1 class (1/C for a balanced classifier, 1 for a collapsed one)."""
    top1 = scores.argmax(dim=1)
    counts = torch.bincount(top1, minlength=scores.shape[1])
    return {"top1_mode_share": float(counts.max()) / max(len(top1), 1)}


def degeneracy_warnings(metrics: dict[str, float], eval_ks: list[float]) -> list[str]:
    """Flags of a degenerate evaluation: one class is the top-1 prediction of over half the inputs,
    or average-K sets hold every class."""
    out = []
    if metrics.get("top1_mode_share", 0.0) > 0.5:
        out.append(f"collapse: one class is the top-1 prediction for {metrics['top1_mode_share']:.0%} of test inputs")
    return out


def degenerate_sets(metrics: dict[str, float], k: float) -> bool:
    """Average-K sets of the run's K are degenerate when their mean size exceeds 1.5 K: scores tied
    at the threshold (e.g. saturated sigmoids) put every tied class in every set, and a tie also
    counts as a top-K hit. Such an epoch is never selected as the best one."""
    return metrics.get(f"avg{k_label(k)}_size", 0.0) > 1.5 * float(k)


def bundle_counts(bundle: DatasetBundle) -> list[int]:
    """Training class counts, at least 1 each (margins need positive counts)."""
    return [max(1, int(c)) for c in bundle.train_counts]


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))
