r"""Scores of a model on a split (:func:`collect_scores`, every head, all-gathered under
``torch.distributed``) and the degeneracy warnings of a finished run.

The metrics of those scores are :mod:`avgk_lib.metrics`' (:func:`~avgk_lib.metrics.metric_dict`,
:func:`~avgk_lib.metrics.calibrated_test_metrics`, re-exported here): ``top{K}_{micro,macro}``
for integer K (<= C), ``avg{K}_{micro,macro,size,threshold}`` for every K, and at test time
``top1_mode_share``: the share of inputs whose top-1 class is the most frequent top-1 class
(1/C for a balanced, healthy classifier; near 1 when the model predicts one class for all).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .metrics import calibrated_test_metrics, degenerate_sets, k_label, metric_dict, metric_key, top1_mode_share
from .objectives import Objective

__all__ = [
    "collect_scores",
    "degeneracy_warnings",
    "degenerate_sets",
    "k_label",
    "metric_dict",
    "calibrated_test_metrics",
    "top1_mode_share",
]

# a run is flagged when one class is the top-1 prediction of more than this share of test inputs
MODE_SHARE_LIMIT = 0.5


@torch.no_grad()
def collect_scores(
    model: nn.Module, loader, objective: Objective, autocast: AbstractContextManager | None = None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-class scores (float32) of every head (``{"main": s}`` or ``{"softmax": ..,
    "multilabel": ..}``) and the targets of every sample of ``loader``, in loader order.

    Under ``torch.distributed`` each rank scores its shard and the shards are all-gathered, so
    every rank returns the scores of the whole split (needed before calibrating a threshold)."""
    was_training = model.training
    model.eval()
    scores: dict[str, list[torch.Tensor]] = {head: [] for head in objective.heads}
    targets = []
    for x, y, _ in loader:
        with autocast or nullcontext():
            outputs = model(x)
        for head, s in objective.head_scores(outputs).items():
            scores[head].append(s)
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


def degeneracy_warnings(metrics: dict[str, Any], n_classes: int, ks, label: str) -> list[str]:
    """Warnings for a degenerate evaluation: one class is the top-1 prediction of more than
    :data:`MODE_SHARE_LIMIT` of the inputs, or the average-K sets hold every class for every
    input (mean size C)."""
    warnings = []
    share = metrics.get("top1_mode_share")
    if share is not None and share > MODE_SHARE_LIMIT:
        warnings.append(
            f"{label}: one class is the top-1 prediction of {share:.0%} of the test inputs (> "
            f"{MODE_SHARE_LIMIT:.0%}): the model may have collapsed"
        )
    for k in ks:
        size = metrics.get(metric_key("avg", k, "size"))
        if size is not None and size >= n_classes:
            warnings.append(f"{label}: every average-{k_label(k)} set contains all {n_classes} classes")
    return warnings
