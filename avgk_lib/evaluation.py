"""Scores of a model on a split, and the metric dictionary reported per epoch and at test time."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
import torch.distributed as dist
from torch import nn

from . import metrics as M
from .objectives import Objective, to_scores


def k_label(k: float) -> str:
    """``2.0 -> "2"``, ``1.5 -> "1.5"`` (metric names)."""
    return str(int(k)) if float(k).is_integer() else f"{k:g}"


@torch.no_grad()
def collect_scores(
    model: nn.Module,
    loader,
    objective: Objective,
    loss_fn: nn.Module,
    eval_head: str = "multilabel",
    autocast: AbstractContextManager | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class scores (float32) and labels of every sample of ``loader``, in loader order.

    Under ``torch.distributed`` each rank scores its shard and the shards are all-gathered, so
    every rank returns the scores of the whole split (needed before calibrating a threshold)."""
    was_training = model.training
    model.eval()
    scores, labels = [], []
    for x, y, _ in loader:
        with autocast or nullcontext():
            outputs = model(x)
        scores.append(to_scores(outputs, objective, loss_fn, eval_head))
        labels.append(y)
    model.train(was_training)
    s, y = torch.cat(scores), torch.cat(labels)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        s, y = _all_gather_rows(s), _all_gather_rows(y)
    return s, y


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


def metric_dict(
    scores: torch.Tensor,
    targets: torch.Tensor,
    ks: list[float],
    thresholds: dict[float, torch.Tensor] | None = None,
) -> tuple[dict[str, float], dict[float, torch.Tensor]]:
    """Top-K (integer K) and average-K metrics, micro and macro, for every K in ``ks``.

    ``thresholds`` (per K) calibrated elsewhere are reused (test time); otherwise they are
    calibrated on these scores (validation). Returns the metrics and the thresholds used."""
    out: dict[str, float] = {}
    used: dict[float, torch.Tensor] = {}
    n_classes = scores.shape[1]
    rows = torch.arange(len(targets), device=targets.device)
    for k in ks:
        name = k_label(k)
        if float(k).is_integer() and k <= n_classes:
            hits = M.topk_correct(scores, targets, int(k))
            out[f"top{name}_micro"] = M.aggregate_hits(hits, targets, n_classes, "micro")
            out[f"top{name}_macro"] = M.aggregate_hits(hits, targets, n_classes, "macro")
        threshold = thresholds[k] if thresholds is not None else M.average_k_threshold(scores, k)
        used[k] = threshold
        sets = M.average_k_sets(scores, threshold)
        hits = sets[rows, targets.long()]
        out[f"avg{name}_micro"] = M.aggregate_hits(hits, targets, n_classes, "micro")
        out[f"avg{name}_macro"] = M.aggregate_hits(hits, targets, n_classes, "macro")
        out[f"avg{name}_size"] = float(sets.sum(1).double().mean())
        out[f"avg{name}_threshold"] = float(threshold)
    return out, used
