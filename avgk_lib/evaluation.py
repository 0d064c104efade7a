r"""Scores of a model on a split (:func:`collect_scores`, every head, all-gathered under
``torch.distributed``). Their metrics are :mod:`avgk_lib.metrics`'
(:func:`~avgk_lib.metrics.metric_dict`, :func:`~avgk_lib.metrics.calibrated_test_metrics`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["collect_scores"]


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
