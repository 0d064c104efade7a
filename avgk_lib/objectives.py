"""Named training objectives: which loss, which head(s), and how scores become probabilities.

Each entry of :data:`OBJECTIVES` tells the trainer how to build the loss from a few
hyperparameters, which head the model needs (linear or cosine, one or two heads), whether the
loss needs the dataset indices of the batch (ROLE), and how the model's outputs are turned into
the per-class scores that top-K and average-K metrics threshold:

* ``softmax``: softmax of the logits (cross-entropy, top-K losses, P2's softmax head);
* ``sigmoid``: independent sigmoids (multi-label heads: AN, AN-LS, WAN, EPR, ROLE, P2's
  multi-label head). Average-K thresholds these directly, as P2 does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import losses as L


@dataclass(frozen=True)
class Objective:
    name: str
    build: Callable[[dict[str, Any]], nn.Module]
    head: str = "linear"
    two_head: bool = False
    needs_indices: bool = False
    scores: str = "softmax"
    integer_k: bool = False
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)


class CrossEntropy(nn.Module):
    """``F.cross_entropy`` with an optional logit scale (for cosine heads)."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float() * self.scale, targets)


def _int_k(o: dict[str, Any]) -> int:
    k = o["k"]
    if float(k) != int(k):
        raise ValueError(f"`--k` must be an integer for the top-K loss {o['loss']!r}, got {k}")
    return int(k)


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in [
        Objective("cross_entropy", lambda o: CrossEntropy(), description="softmax cross-entropy"),
        Objective(
            "noised_topk",
            lambda o: L.NoisedTopKLoss(_int_k(o), o["epsilon"], o["n_samples"]),
            integer_k=True,
            defaults={"epsilon": 1.0, "n_samples": 5},
            description="P1 balanced noised top-K hinge",
        ),
        Objective(
            "imbalanced_noised_topk",
            lambda o: L.ImbalancedNoisedTopKLoss(
                _int_k(o), o["class_counts"], o["epsilon"], o["n_samples"], o["max_margin"], o["scale"]
            ),
            head="cosine",
            integer_k=True,
            defaults={"epsilon": 0.01, "n_samples": 5, "max_margin": 0.2, "scale": 60.0},
            description="P1 imbalanced noised top-K (cosine head)",
        ),
        Objective(
            "smooth_topk_svm",
            lambda o: L.SmoothTopKSVMLoss(_int_k(o), o["tau"], o["alpha"]),
            integer_k=True,
            defaults={"tau": 1.0, "alpha": 1.0},
            description="Berrada et al. smooth top-k SVM",
        ),
        Objective("topk_hinge", lambda o: L.TopKHingeLoss(_int_k(o)), integer_k=True, description="hard top-K hinge"),
        Objective("focal", lambda o: L.FocalLoss(o["gamma"]), defaults={"gamma": 2.0}, description="focal loss"),
        Objective(
            "ldam",
            lambda o: L.LDAMLoss(o["class_counts"], o["max_margin"], o["scale"]),
            head="cosine",
            defaults={"max_margin": 0.5, "scale": 30.0},
            description="LDAM (cosine head)",
        ),
        Objective(
            "assume_negative", lambda o: L.AssumeNegativeLoss(), scores="sigmoid", description="AN (Cole et al.)"
        ),
        Objective(
            "an_ls",
            lambda o: L.AssumeNegativeLoss(label_smoothing=o["label_smoothing"]),
            scores="sigmoid",
            defaults={"label_smoothing": 0.1},
            description="AN with label smoothing",
        ),
        Objective(
            "wan",
            lambda o: L.AssumeNegativeLoss(negative_weight=1.0 / (o["n_classes"] - 1)),
            scores="sigmoid",
            description="weak AN, negatives weighted 1/(C-1)",
        ),
        Objective("epr", lambda o: L.EPRLoss(o["k"]), scores="sigmoid", description="expected-positive regularizer"),
        Objective(
            "role",
            lambda o: L.ROLELoss(o["n_train"], o["n_classes"], o["k"]),
            scores="sigmoid",
            needs_indices=True,
            description="online label estimation (Cole et al.)",
        ),
        Objective(
            "two_head",
            lambda o: L.TwoHeadLoss(
                o["k"],
                o["weight"],
                rule=o["rule"],
                class_reduction=o["class_reduction"],
                warmup_epochs=o.get("warmup_epochs", 0),
            ),
            two_head=True,
            defaults={"weight": 1.0, "rule": "exact", "class_reduction": "mean"},
            description="P2 two-head loss",
        ),
    ]
}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]


def build_loss(name: str, options: dict[str, Any]) -> nn.Module:
    """Build the loss module of objective ``name`` from its defaults updated by ``options``."""
    objective = get_objective(name)
    merged = {**objective.defaults, **options, "loss": name}
    return objective.build(merged)


def to_scores(outputs, objective: Objective, loss_fn: nn.Module, eval_head: str = "multilabel") -> torch.Tensor:
    """Per-class scores in [0, 1] used by the metrics, from raw model outputs (float32).

    Cosine heads are scaled by the loss's ``scale`` before the softmax, as in their loss."""
    if objective.two_head:
        softmax_logits, multilabel_logits = outputs
        if eval_head == "multilabel":
            return torch.sigmoid(multilabel_logits.float())
        if eval_head == "softmax":
            return torch.softmax(softmax_logits.float(), dim=1)
        raise ValueError(f"`eval_head` must be 'multilabel' or 'softmax', got {eval_head!r}")
    logits = outputs.float()
    if objective.scores == "sigmoid":
        return torch.sigmoid(logits)
    scale = float(getattr(loss_fn, "scale", 1.0)) if objective.head == "cosine" else 1.0
    return torch.softmax(logits * scale, dim=1)


def compute_loss(loss_fn: nn.Module, objective: Objective, outputs, targets, indices) -> torch.Tensor:
    if objective.two_head:
        return loss_fn(outputs[0], outputs[1], targets)
    if objective.needs_indices:
        return loss_fn(outputs, targets, indices)
    return loss_fn(outputs, targets)
