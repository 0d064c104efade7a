"""Label noise and long-tailed subsampling applied to training splits only."""

from __future__ import annotations

import math

import torch


def long_tail_counts(n_max: int, n_classes: int, imbalance_ratio: float) -> list[int]:
    r"""Exponential long-tail profile :math:`n_c = \lfloor n_{\max}\, r^{-c/(C-1)} \rceil` (at least 1)."""
    if imbalance_ratio < 1:
        raise ValueError(f"`imbalance_ratio` must be >= 1, got {imbalance_ratio}")
    return [
        max(1, int(math.floor(n_max * imbalance_ratio ** (-c / max(n_classes - 1, 1)) + 0.5))) for c in range(n_classes)
    ]


def block_label_noise(y: torch.Tensor, p: float, block_size: int, n_classes: int, seed: int) -> torch.Tensor:
    """P1 / Berrada protocol: with probability ``p`` a label is redrawn uniformly within its block
    of ``block_size`` consecutive class indices (itself included, so the effective flip rate is
    ``p (b - 1) / b``: 0.8 p for blocks of 5). The last block may be shorter."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"`label_noise` must be in [0, 1], got {p}")
    if block_size < 2:
        raise ValueError(f"`block_size` must be >= 2, got {block_size}")
    g = torch.Generator().manual_seed(seed)
    y = y.long()
    redraw = torch.rand(y.shape, generator=g) < p
    start = (y // block_size) * block_size
    width = (n_classes - start).clamp(max=block_size)
    offsets = (torch.rand(y.shape, generator=g) * width).long()
    return torch.where(redraw, start + offsets, y)


def group_label_noise(y: torch.Tensor, p: float, group_of_class: torch.Tensor, seed: int) -> torch.Tensor:
    """Label noise inside groups of similar classes: with probability ``p`` a label is redrawn
    uniformly among the classes of its group (itself included, so the effective flip rate of a
    label in a group of g classes is ``p (g - 1) / g``). ``group_of_class[c]`` is the group id of
    class c; a class alone in its group is never flipped. Blocks of consecutive indices
    (:func:`block_label_noise`) are the special case ``group_of_class = c // block_size``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"`label_noise` must be in [0, 1], got {p}")
    groups = torch.as_tensor(group_of_class).long()
    if groups.ndim != 1 or groups.numel() == 0:
        raise ValueError("`group_of_class` must be a non-empty 1-D tensor of group ids")
    y = y.long()
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= groups.numel()):
        raise ValueError(f"labels must lie in [0, {groups.numel()}) for `group_of_class` of that length")
    g = torch.Generator().manual_seed(seed)
    redraw = torch.rand(y.shape, generator=g) < p
    # members of each group, padded: row r lists the classes of group r
    order = torch.argsort(groups, stable=True)
    sizes = torch.bincount(groups)
    starts = torch.cumsum(sizes, 0) - sizes
    group = groups[y]
    offsets = (torch.rand(y.shape, generator=g) * sizes[group]).long()
    return torch.where(redraw, order[starts[group] + offsets], y)


def long_tail_subsample(y: torch.Tensor, n_classes: int, imbalance_ratio: float, seed: int) -> torch.Tensor:
    """Indices of a long-tailed subset: class c keeps ``n_max r^(-c/(C-1))`` samples, with
    ``n_max`` the size of the smallest class (class 0 the head, class C-1 the tail)."""
    counts = torch.bincount(y, minlength=n_classes)
    targets = long_tail_counts(int(counts.min()), n_classes, imbalance_ratio)
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in range(n_classes):
        members = (y == c).nonzero().squeeze(1)
        keep.append(members[torch.randperm(members.numel(), generator=g)[: targets[c]]])
    return torch.cat(keep).sort().values
