r"""Bayes-optimal top-K and average-K sets from known posteriors (the oracle of the book).

With the true posterior :math:`p(\cdot \mid x)`, the top-K set maximising
:math:`P(y \in S)` under :math:`|S| = K` is the K most probable classes; the average-K sets that
maximise accuracy under an average size of K threshold every posterior at one global level
:math:`\lambda` (Lorieul et al. 2021; P2, sec. 2). Expected accuracies are computed from the
posteriors themselves (:math:`\mathbb E[\sum_{j \in S(x)} p(j \mid x)]`), which has far less
variance than counting hits on sampled labels.
"""

from __future__ import annotations

import torch

from ..metrics import average_k_sets, average_k_threshold, topk_sets


def bayes_topk_sets(posterior: torch.Tensor, k: int) -> torch.Tensor:
    """Bool (n, C): the K most probable classes of each input."""
    return topk_sets(posterior, k)


def bayes_average_k_sets(posterior: torch.Tensor, k: float) -> torch.Tensor:
    """Bool (n, C): posteriors above the global threshold giving an average size of K on these inputs."""
    return average_k_sets(posterior, average_k_threshold(posterior, k))


def expected_set_accuracy(posterior: torch.Tensor, sets: torch.Tensor) -> float:
    r""":math:`\frac1n \sum_i \sum_{j \in S_i} p(j \mid x_i)`: accuracy expected from the true posteriors."""
    if posterior.shape != sets.shape:
        raise ValueError(f"`sets` must have the shape of `posterior` {tuple(posterior.shape)}, got {tuple(sets.shape)}")
    return float((posterior.double() * sets).sum(dim=1).mean())
