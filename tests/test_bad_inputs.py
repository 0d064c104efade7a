"""Bad-input matrix: every public function of ops, functional, losses, metrics and conformal.

Each entry of ``SPECS`` is one public entry point with a valid call (keyword arguments) and, per
argument, the *kind* of value it takes. ``BAD`` lists, per kind, wrong types, wrong shapes,
wrong dtypes, NaN/inf, out-of-range values, empty tensors and bad string options. The matrix
substitutes one bad value at a time into the valid call and asserts a ``ValueError`` or
``TypeError`` whose message names the argument (as `` `name` ``). The valid call itself must run,
so no case passes because the function fails on everything.

``test_matrix_size`` pins the size of the matrix so that a spec cannot silently shrink.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from avgk_book.analysis import accuracy_by_class_frequency
from avgk_book.conformal_reference import alpha_for_mean_size, average_k_for_coverage
from avgk_lib import conformal as CF
from avgk_lib import functional as AF
from avgk_lib import losses as AL
from avgk_lib import metrics as M
from avgk_lib import ops

B, C = 4, 6
NAN, INF = float("nan"), float("inf")


def scores() -> torch.Tensor:
    return torch.randn(B, C, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def probs() -> torch.Tensor:
    return scores().softmax(1)


def targets() -> torch.Tensor:
    return torch.tensor([0, 1, 2, 5])


def hits() -> torch.Tensor:
    return torch.tensor([True, False, True, True])


def sets() -> torch.Tensor:
    return probs() > 0.1


def _with(t: torch.Tensor, value: float) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[1] = value
    return t


# ---------------------------------------------------------------------------------------------
# bad values per kind: (label, value); the value is built lazily so that each case is fresh
# ---------------------------------------------------------------------------------------------

_TENSOR_2D = [
    ("numpy", lambda: scores().numpy()),
    ("list", lambda: scores().tolist()),
    ("int-dtype", lambda: scores().long()),
    ("bool-dtype", lambda: scores() > 0),
    ("1-D", lambda: scores()[0]),
    ("3-D", lambda: scores()[None]),
    ("empty", lambda: torch.empty(0, C, dtype=torch.float64)),
    ("nan", lambda: _with(scores(), NAN)),
    ("+inf", lambda: _with(scores(), INF)),
    ("-inf", lambda: _with(scores(), -INF)),
]
_TENSOR_ND = [
    ("numpy", lambda: scores().numpy()),
    ("int-dtype", lambda: scores().long()),
    ("0-D", lambda: torch.tensor(1.0)),
    ("empty", lambda: torch.empty(B, 0, dtype=torch.float64)),
    ("nan", lambda: _with(scores(), NAN)),
    ("+inf", lambda: _with(scores(), INF)),
    ("-inf", lambda: _with(scores(), -INF)),
]
_INTEGER_K = [
    ("bool", lambda: True),
    ("str", lambda: "2"),
    ("none", lambda: None),
    ("tensor", lambda: torch.tensor([2])),
    ("fraction", lambda: 2.5),
    ("nan", lambda: NAN),
    ("inf", lambda: INF),
]
_REAL_K = [
    ("bool", lambda: True),
    ("str", lambda: "1.5"),
    ("none", lambda: None),
    ("nan", lambda: NAN),
    ("inf", lambda: INF),
    ("-inf", lambda: -INF),
]
_REAL = [
    ("str", lambda: "0.5"),
    ("none", lambda: None),
    ("bool", lambda: True),
    ("list", lambda: [0.5]),
    ("nan", lambda: NAN),
    ("np-nan", lambda: np.float32("nan")),
    ("inf", lambda: INF),
]
_STRING = [("none", lambda: None), ("int", lambda: 1), ("upper", lambda: "MEAN"), ("unknown", lambda: "nosuch")]

BAD: dict[str, list[tuple[str, Callable[[], object]]]] = {
    "scores": _TENSOR_2D,
    "probs": [
        *_TENSOR_2D,
        ("logits", lambda: scores()),
        ("rows-not-summing-to-1", lambda: probs() * 0.5),
        ("above-1", lambda: probs() * 2.0),
    ],
    "tensor_nd": _TENSOR_ND,
    "log_x": _TENSOR_ND,
    "x_nonneg": [*_TENSOR_ND[:4], ("negative", lambda: -probs()), ("nan", lambda: _with(probs(), NAN))],
    "targets": [
        ("numpy", lambda: targets().numpy()),
        ("float-dtype", lambda: targets().float()),
        ("bool-dtype", lambda: targets().bool()),
        ("2-D", lambda: targets()[None]),
        ("short", lambda: targets()[:3]),
        ("too-large", lambda: torch.tensor([0, 1, 2, C])),
        ("negative", lambda: torch.tensor([0, -1, 2, 3])),
        ("none", lambda: None),
    ],
    "k_loss": [*_INTEGER_K, ("zero", lambda: 0), ("C", lambda: C), ("np-C", lambda: np.int64(C))],
    "k_topk": [*_INTEGER_K, ("zero", lambda: 0), ("C+1", lambda: C + 1), ("np-frac", lambda: np.float32(1.5))],
    # a constructor takes a tensor of per-member ranks (checked against the scores in forward)
    "k_ctor": [
        *(case for case in _INTEGER_K if case[0] != "tensor"),
        ("zero", lambda: 0),
        ("negative", lambda: -1),
        ("tensor-fraction", lambda: torch.tensor([2.5])),
        ("tensor-zero", lambda: torch.tensor([2, 0])),
        ("tensor-bool", lambda: torch.tensor([True])),
    ],
    "k_log": [
        ("bool", lambda: True),
        ("str", lambda: "1"),
        ("fraction", lambda: 1.5),
        ("-1", lambda: -1),
        ("C+1", lambda: C + 1),
    ],
    "k_avg": [*_REAL_K, ("zero", lambda: 0.0), ("negative", lambda: -1.0), ("above-C", lambda: C + 0.5)],
    "k_pos": [*_REAL_K, ("below-1", lambda: 0.5), ("above-C", lambda: C + 1.0)],
    "k_pos_ctor": [*_REAL_K, ("below-1", lambda: 0.5)],
    "k_avg_ctor": [*_REAL_K, ("zero", lambda: 0.0)],
    "k_reg": [
        ("bool", lambda: True),
        ("str", lambda: "5"),
        ("fraction", lambda: 1.5),
        ("-1", lambda: -1),
        ("inf", lambda: INF),
    ],
    "nonneg": [*_REAL, ("negative", lambda: -1.0), ("np-negative", lambda: np.float64(-0.5))],
    "positive": [*_REAL, ("negative", lambda: -1.0), ("zero", lambda: 0.0)],
    "unit_open": [*_REAL, ("zero", lambda: 0.0), ("one", lambda: 1.0), ("above", lambda: 1.5)],
    "unit_open_or_none": [
        *(case for case in _REAL if case[0] != "none"),
        ("zero", lambda: 0.0),
        ("one", lambda: 1.0),
    ],
    "unit_low_closed": [*_REAL, ("negative", lambda: -0.1), ("one", lambda: 1.0)],
    "unit_high_closed": [*_REAL, ("zero", lambda: 0.0), ("above", lambda: 1.5)],
    "count": [
        ("bool", lambda: True),
        ("str", lambda: "5"),
        ("float", lambda: 5.0),
        ("none", lambda: None),
        ("zero", lambda: 0),
    ],
    "count0": [("bool", lambda: True), ("str", lambda: "1"), ("float", lambda: 1.5), ("negative", lambda: -1)],
    "n_classes": [("bool", lambda: True), ("str", lambda: "6"), ("float", lambda: 6.5), ("zero", lambda: 0)],
    "reduction": _STRING,
    "average": [*_STRING, ("weighted", lambda: "weighted")],
    "rule": _STRING,
    "class_reduction": [*_STRING, ("none", lambda: "none")],
    "threshold_mode": [*_STRING, ("step", lambda: "step")],
    # a global threshold: None (rank within the batch) and +-inf are valid
    "fixed_threshold": [
        ("str", lambda: "0.5"),
        ("bool", lambda: True),
        ("list", lambda: [0.5]),
        ("nan", lambda: NAN),
        ("np-nan", lambda: np.float32("nan")),
        ("tensor-2", lambda: torch.tensor([0.1, 0.2])),
        ("bool-tensor", lambda: torch.tensor(True)),
    ],
    "method": [*_STRING, ("upper", lambda: "LAC")],
    "bool": [("str", lambda: "yes"), ("int", lambda: 1), ("none", lambda: None)],
    "generator": [("int", lambda: 3), ("str", lambda: "seed")],
    "class_counts_ctor": [
        ("str", lambda: "ab"),
        ("none", lambda: None),
        ("one-class", lambda: [5]),
        ("2-D", lambda: [[1] * C]),
        ("zero", lambda: [0] * C),
        ("negative", lambda: [-1, 2, 3, 4, 5, 6]),
        ("nan", lambda: [NAN] * C),
        ("bool-tensor", lambda: torch.ones(C, dtype=torch.bool)),
    ],
    "class_counts": [
        ("str", lambda: "ab"),
        ("none", lambda: None),
        ("wrong-length", lambda: [1, 2, 3]),
        ("2-D", lambda: [[1] * C]),
        ("zero", lambda: [0] * C),
        ("negative", lambda: [-1, 2, 3, 4, 5, 6]),
        ("nan", lambda: [NAN] * C),
        ("bool-tensor", lambda: torch.ones(C, dtype=torch.bool)),
    ],
    "train_counts": [
        ("str", lambda: "ab"),
        ("2-D", lambda: [[1] * C]),
        ("negative", lambda: [-1, 2, 3, 4, 5, 6]),
        ("nan", lambda: [NAN] * C),
    ],
    "noise": [
        ("numpy", lambda: torch.zeros(3, B, C).numpy()),
        ("int-dtype", lambda: torch.zeros(3, B, C, dtype=torch.long)),
        ("wrong-shape", lambda: torch.zeros(2, B, C)),
        ("nan", lambda: torch.full((3, B, C), NAN)),
        ("inf", lambda: torch.full((3, B, C), INF)),
    ],
    "threshold": [
        ("str", lambda: "0.1"),
        ("none", lambda: None),
        ("bool", lambda: True),
        ("nan", lambda: NAN),
        ("tensor-nan", lambda: torch.tensor(NAN)),
        ("tensor-2", lambda: torch.zeros(2)),
        ("tensor-bool", lambda: torch.tensor(True)),
    ],
    "ks": [
        ("scalar", lambda: 1.5),
        ("empty", lambda: []),
        ("str", lambda: "2"),
        ("zero", lambda: [1, 0.0]),
        ("above-C", lambda: [C + 1.0]),
        ("nan", lambda: [NAN]),
    ],
    "text": [("none", lambda: None), ("int", lambda: 1), ("bytes", lambda: b"best")],
    "metrics_dict": [("list", lambda: [("avg2_size", 2.0)]), ("none", lambda: None)],
    "thresholds_by_k": [("list", lambda: [0.1, 0.2]), ("missing-K", lambda: {1: torch.tensor(0.1)})],
    "qhat": [("str", lambda: "0.5"), ("none", lambda: None), ("bool", lambda: True), ("nan", lambda: NAN)],
    "hits": [
        ("numpy", lambda: hits().numpy()),
        ("float-dtype", lambda: hits().float()),
        ("2-D", lambda: hits()[None]),
        ("empty", lambda: torch.empty(0, dtype=torch.bool)),
    ],
    "sets": [("numpy", lambda: sets().numpy()), ("float-dtype", lambda: sets().float()), ("1-D", lambda: sets()[0])],
    "indices": [
        ("numpy", lambda: np.arange(B)),
        ("float-dtype", lambda: torch.arange(B).float()),
        ("short", lambda: torch.arange(B - 1)),
        ("too-large", lambda: torch.arange(B) + 10),
        ("negative", lambda: torch.arange(B) - 1),
    ],
    "device": [("int-list", lambda: [0]), ("unknown", lambda: "nosuch")],
    "dtype": [("int", lambda: torch.int64), ("str", lambda: "float32")],
    "label_k": [("str", lambda: "2"), ("none", lambda: None), ("bool", lambda: True), ("nan", lambda: NAN)],
    "metric_k": [("str", lambda: "2"), ("nan", lambda: NAN), ("zero", lambda: 0), ("negative", lambda: -1.0)],
    "metric_kind": [*_STRING, ("bottom", lambda: "bottom")],
    "metric_name": [
        ("none", lambda: None),
        ("int", lambda: 5),
        ("empty", lambda: ""),
        ("no-k", lambda: "top_micro"),
        ("top-size", lambda: "top2_size"),
        ("unknown-stat", lambda: "avg2_mean"),
        ("leading-zero", lambda: "top02_micro"),
        ("trailing-zero", lambda: "avg1.50_micro"),
        ("fractional-top", lambda: "top1.5_micro"),
        ("zero-k", lambda: "avg0_micro"),
    ],
}


@dataclass
class Spec:
    """One public entry point: ``fn(**valid)`` runs; ``kinds[name]`` says how to break ``name``."""

    fn: Callable
    valid: dict[str, Callable[[], object]]
    kinds: dict[str, str]


def _v(value):
    return lambda: value


def _module_forward(cls, ctor: dict, *args: str) -> Callable:
    """``cls(**ctor)(**inputs)``: a module's forward as a keyword function of its inputs."""

    def call(**inputs):
        return cls(**ctor)(*(inputs[a] for a in args))

    return call


LOSS_KINDS = {"scores": "scores", "targets": "targets", "reduction": "reduction"}
SCORES_TARGETS = {"scores": scores, "targets": targets}
LOGITS_TARGETS = {"logits": scores, "targets": targets}
COUNTS = [10, 20, 30, 40, 50, 60]
NOISE = {"noise": lambda: torch.randn(3, B, C, dtype=torch.float64), "n_samples": _v(3)}


SPECS: dict[str, Spec] = {
    # ---- ops ----
    "ops.noised_topk": Spec(
        ops.noised_topk,
        {"x": scores, "k": _v(2), "epsilon": _v(0.5), **NOISE, "generator": _v(None)},
        {"x": "tensor_nd", "k": "k_topk", "epsilon": "nonneg", "n_samples": "count", "noise": "noise"},
    ),
    "ops.noised_topk(generator)": Spec(ops.noised_topk, {"x": scores, "k": _v(2)}, {"generator": "generator"}),
    "ops.noised_topk_unchecked": Spec(
        ops.noised_topk_unchecked,
        {"x": scores, "k": _v(2), "epsilon": _v(0.5), **NOISE},
        {"noise": "noise"},
    ),
    "ops.kth_largest": Spec(ops.kth_largest, {"x": scores, "k": _v(2)}, {"x": "tensor_nd", "k": "k_topk"}),
    "ops.log_elementary_symmetric": Spec(
        ops.log_elementary_symmetric, {"log_x": scores, "k": _v(2)}, {"log_x": "log_x", "k": "k_log"}
    ),
    "ops.log_elementary_symmetric_fast": Spec(
        ops.log_elementary_symmetric_fast, {"log_x": scores, "k": _v(2)}, {"log_x": "log_x", "k": "k_log"}
    ),
    "ops.elementary_symmetric": Spec(
        ops.elementary_symmetric,
        {"x": probs, "k": _v(2), "block": _v(4)},
        {"x": "x_nonneg", "k": "k_log", "block": "count"},
    ),
    "ops.log_zero": Spec(ops.log_zero, {"dtype": _v(torch.float16)}, {"dtype": "dtype"}),
    # ---- functional ----
    "F.noised_topk_loss": Spec(
        AF.noised_topk_loss,
        {**SCORES_TARGETS, "k": _v(2), "epsilon": _v(0.5), **NOISE},
        {**LOSS_KINDS, "k": "k_loss", "epsilon": "nonneg", "n_samples": "count", "noise": "noise"},
    ),
    "F.noised_topk_loss(generator)": Spec(
        AF.noised_topk_loss, {**SCORES_TARGETS, "k": _v(2)}, {"generator": "generator"}
    ),
    "F.imbalanced_noised_topk_loss": Spec(
        AF.imbalanced_noised_topk_loss,
        {**SCORES_TARGETS, "k": _v(2), "class_counts": _v(COUNTS), **NOISE, "max_margin": _v(0.2), "scale": _v(5.0)},
        {
            **LOSS_KINDS,
            "k": "k_loss",
            "class_counts": "class_counts",
            "noise": "noise",
            "max_margin": "nonneg",
            "scale": "positive",
            "epsilon": "nonneg",
            "n_samples": "count",
        },
    ),
    "F.topk_hinge_loss": Spec(AF.topk_hinge_loss, {**SCORES_TARGETS, "k": _v(2)}, {**LOSS_KINDS, "k": "k_loss"}),
    "F.smooth_topk_svm_loss": Spec(
        AF.smooth_topk_svm_loss,
        {**SCORES_TARGETS, "k": _v(2), "tau": _v(0.5), "alpha": _v(1.0)},
        {**LOSS_KINDS, "k": "k_loss", "tau": "positive", "alpha": "nonneg"},
    ),
    "F.focal_loss": Spec(AF.focal_loss, {**SCORES_TARGETS, "gamma": _v(2.0)}, {**LOSS_KINDS, "gamma": "nonneg"}),
    "F.ldam_loss": Spec(
        AF.ldam_loss,
        {**SCORES_TARGETS, "class_counts": _v(COUNTS)},
        {**LOSS_KINDS, "class_counts": "class_counts", "max_margin": "nonneg", "scale": "positive"},
    ),
    "F.class_margins": Spec(
        AF.class_margins,
        {"class_counts": _v(COUNTS), "n_classes": _v(C), "max_margin": _v(0.2), "device": _v("cpu")},
        {"class_counts": "class_counts", "n_classes": "n_classes", "max_margin": "nonneg", "device": "device"},
    ),
    "F.assume_negative_loss": Spec(
        AF.assume_negative_loss,
        {**LOGITS_TARGETS, "label_smoothing": _v(0.1), "negative_weight": _v(0.2)},
        {
            "logits": "scores",
            "targets": "targets",
            "reduction": "reduction",
            "label_smoothing": "unit_low_closed",
            "negative_weight": "nonneg",
        },
    ),
    "F.epr_loss": Spec(
        AF.epr_loss,
        {**LOGITS_TARGETS, "expected_positives": _v(1.5)},
        {"logits": "scores", "targets": "targets", "reduction": "reduction", "expected_positives": "k_avg"},
    ),
    "F.role_loss": Spec(
        AF.role_loss,
        {**LOGITS_TARGETS, "label_logits": scores, "expected_positives": _v(1.5)},
        {
            "logits": "scores",
            "targets": "targets",
            "label_logits": "scores",
            "expected_positives": "k_avg",
            "reduction": "reduction",
        },
    ),
    "F.pseudo_labels": Spec(
        AF.pseudo_labels,
        {"probs": probs, "targets": targets, "k": _v(1.5), "rule": _v("exact")},
        {
            "probs": "scores",
            "targets": "targets",
            "k": "k_pos",
            "rule": "rule",
            "force_true": "bool",
            "fixed_threshold": "fixed_threshold",
        },
    ),
    "F.two_head_loss": Spec(
        AF.two_head_loss,
        {"softmax_logits": scores, "multilabel_logits": scores, "targets": targets, "k": _v(1.5)},
        {
            "softmax_logits": "scores",
            "multilabel_logits": "scores",
            "targets": "targets",
            "k": "k_pos",
            "weight": "nonneg",
            "reduction": "reduction",
            "rule": "rule",
            "class_reduction": "class_reduction",
            "soft_labels": "bool",
            "force_true": "bool",
            "fixed_threshold": "fixed_threshold",
        },
    ),
    # ---- losses: constructors ----
    "NoisedTopKLoss()": Spec(
        AL.NoisedTopKLoss,
        {"k": _v(2)},
        {"k": "k_ctor", "epsilon": "nonneg", "n_samples": "count", "reduction": "reduction", "generator": "generator"},
    ),
    "ImbalancedNoisedTopKLoss()": Spec(
        AL.ImbalancedNoisedTopKLoss,
        {"k": _v(2), "class_counts": _v(COUNTS)},
        {
            "k": "k_ctor",
            "class_counts": "class_counts_ctor",
            "epsilon": "nonneg",
            "n_samples": "count",
            "max_margin": "nonneg",
            "scale": "positive",
            "reduction": "reduction",
            "generator": "generator",
        },
    ),
    "TopKHingeLoss()": Spec(AL.TopKHingeLoss, {"k": _v(2)}, {"k": "k_ctor", "reduction": "reduction"}),
    "SmoothTopKSVMLoss()": Spec(
        AL.SmoothTopKSVMLoss,
        {"k": _v(2)},
        {"k": "k_ctor", "tau": "positive", "alpha": "nonneg", "reduction": "reduction"},
    ),
    "FocalLoss()": Spec(AL.FocalLoss, {}, {"gamma": "nonneg", "reduction": "reduction"}),
    "LDAMLoss()": Spec(
        AL.LDAMLoss,
        {"class_counts": _v(COUNTS)},
        {"class_counts": "class_counts_ctor", "max_margin": "nonneg", "scale": "positive", "reduction": "reduction"},
    ),
    "AssumeNegativeLoss()": Spec(
        AL.AssumeNegativeLoss,
        {},
        {"label_smoothing": "unit_low_closed", "negative_weight": "nonneg", "reduction": "reduction"},
    ),
    "EPRLoss()": Spec(
        AL.EPRLoss, {"expected_positives": _v(1.5)}, {"expected_positives": "k_avg_ctor", "reduction": "reduction"}
    ),
    "ROLELoss()": Spec(
        AL.ROLELoss,
        {"n_train": _v(10), "n_classes": _v(C), "expected_positives": _v(1.5)},
        {
            "n_train": "count",
            "n_classes": "n_classes",
            "expected_positives": "k_avg",
            "init_probability": "unit_open_or_none",
            "reduction": "reduction",
            "memory_warning_bytes": "count0",
        },
    ),
    "TwoHeadLoss()": Spec(
        AL.TwoHeadLoss,
        {"k": _v(1.5)},
        {
            "k": "k_pos_ctor",
            "weight": "nonneg",
            "reduction": "reduction",
            "rule": "rule",
            "class_reduction": "class_reduction",
            "warmup_epochs": "count0",
            "soft_labels": "bool",
            "force_true": "bool",
            "threshold": "threshold_mode",
        },
    ),
    "TwoHeadLoss.set_epoch": Spec(
        lambda epoch: AL.TwoHeadLoss(2).set_epoch(epoch), {"epoch": _v(0)}, {"epoch": "count0"}
    ),
    # ---- losses: forward ----
    **{
        f"{cls.__name__}.forward": Spec(
            _module_forward(cls, ctor, first, "targets"),
            {first: scores, "targets": targets},
            {first: "scores", "targets": "targets"},
        )
        for cls, ctor, first in [
            (AL.NoisedTopKLoss, {"k": 2}, "scores"),
            (AL.ImbalancedNoisedTopKLoss, {"k": 2, "class_counts": COUNTS}, "scores"),
            (AL.TopKHingeLoss, {"k": 2}, "scores"),
            (AL.SmoothTopKSVMLoss, {"k": 2}, "scores"),
            (AL.FocalLoss, {}, "scores"),
            (AL.LDAMLoss, {"class_counts": COUNTS}, "scores"),
            (AL.AssumeNegativeLoss, {}, "logits"),
            (AL.EPRLoss, {"expected_positives": 1.5}, "logits"),
        ]
    },
    "NoisedTopKLoss(k=C).forward": Spec(
        lambda k: AL.NoisedTopKLoss(k)(scores(), targets()), {"k": _v(2)}, {"k": "k_loss"}
    ),
    "ROLELoss.forward": Spec(
        _module_forward(
            AL.ROLELoss, {"n_train": 10, "n_classes": C, "expected_positives": 1.5}, "logits", "targets", "indices"
        ),
        {**LOGITS_TARGETS, "indices": lambda: torch.arange(B)},
        {"logits": "scores", "targets": "targets", "indices": "indices"},
    ),
    "TwoHeadLoss.forward": Spec(
        _module_forward(AL.TwoHeadLoss, {"k": 1.5}, "softmax_logits", "multilabel_logits", "targets"),
        {"softmax_logits": scores, "multilabel_logits": scores, "targets": targets},
        {"softmax_logits": "scores", "multilabel_logits": "scores", "targets": "targets"},
    ),
    # ---- metrics ----
    "M.topk_accuracy": Spec(
        M.topk_accuracy,
        {**SCORES_TARGETS, "k": _v(2)},
        {"scores": "scores", "targets": "targets", "k": "k_topk", "average": "average"},
    ),
    "M.topk_correct": Spec(
        M.topk_correct, {**SCORES_TARGETS, "k": _v(2)}, {"scores": "scores", "targets": "targets", "k": "k_topk"}
    ),
    "M.aggregate_hits": Spec(
        M.aggregate_hits,
        {"correct": hits, "targets": targets, "n_classes": _v(C), "average": _v("macro")},
        {"correct": "hits", "targets": "targets", "n_classes": "n_classes", "average": "average"},
    ),
    "M.topk_sets": Spec(M.topk_sets, {"scores": scores, "k": _v(2)}, {"scores": "scores", "k": "k_topk"}),
    "M.average_k_threshold": Spec(
        M.average_k_threshold, {"scores": scores, "k": _v(1.5)}, {"scores": "scores", "k": "k_avg"}
    ),
    "M.average_k_sets": Spec(
        M.average_k_sets, {"scores": scores, "threshold": _v(0.1)}, {"scores": "scores", "threshold": "threshold"}
    ),
    "M.average_k_accuracy": Spec(
        M.average_k_accuracy,
        {**SCORES_TARGETS, "threshold": _v(0.1)},
        {"scores": "scores", "targets": "targets", "threshold": "threshold", "average": "average"},
    ),
    "M.metric_dict": Spec(
        M.metric_dict,
        {**SCORES_TARGETS, "ks": _v([1, 1.5]), "thresholds": _v(None)},
        {"scores": "scores", "targets": "targets", "ks": "ks", "thresholds": "thresholds_by_k"},
    ),
    "M.calibrated_test_metrics": Spec(
        M.calibrated_test_metrics,
        {"val_scores": scores, "val_targets": targets, "test_scores": scores, "test_targets": targets, "ks": _v([2])},
        {
            "val_scores": "scores",
            "val_targets": "targets",
            "test_scores": "scores",
            "test_targets": "targets",
            "ks": "ks",
        },
    ),
    "M.top1_mode_share": Spec(M.top1_mode_share, {"scores": scores}, {"scores": "scores"}),
    "M.degenerate_sets": Spec(
        M.degenerate_sets,
        {"metrics": _v({"avg2_size": 2.0}), "k": _v(2.0), "factor": _v(1.5)},
        {"metrics": "metrics_dict", "k": "k_avg_ctor", "factor": "positive"},
    ),
    "M.degeneracy_warnings": Spec(
        M.degeneracy_warnings,
        {"metrics": _v({"avg2_size": 2.0}), "n_classes": _v(C), "ks": _v([2.0]), "label": _v("best epoch")},
        {"metrics": "metrics_dict", "n_classes": "n_classes", "ks": "ks", "label": "text"},
    ),
    "M.set_sizes": Spec(M.set_sizes, {"sets": sets}, {"sets": "sets"}),
    "M.set_size_stats": Spec(M.set_size_stats, {"sets": sets}, {"sets": "sets"}),
    "M.per_class_accuracy": Spec(
        M.per_class_accuracy,
        {"correct": hits, "targets": targets, "n_classes": _v(C)},
        {"correct": "hits", "targets": "targets", "n_classes": "n_classes"},
    ),
    "accuracy_by_class_frequency": Spec(
        accuracy_by_class_frequency,
        {"correct": hits, "targets": targets, "train_counts": _v(COUNTS), "n_bins": _v(2)},
        {"correct": "hits", "targets": "targets", "train_counts": "train_counts", "n_bins": "count"},
    ),
    "M.k_label": Spec(M.k_label, {"k": _v(1.5)}, {"k": "label_k"}),
    "M.metric_key": Spec(
        M.metric_key,
        {"kind": _v("avg"), "k": _v(1.5), "average": _v("size")},
        {"kind": "metric_kind", "k": "metric_k", "average": "average"},
    ),
    "M.parse_metric_key": Spec(M.parse_metric_key, {"name": _v("avg1.5_macro")}, {"name": "metric_name"}),
    # ---- conformal ----
    "CF.check_options": Spec(
        CF.check_options,
        {"method": _v("raps"), "lam": _v(0.01), "k_reg": _v(5), "randomized": _v(True), "generator": _v(None)},
        {"method": "method", "lam": "nonneg", "k_reg": "k_reg", "randomized": "bool", "generator": "generator"},
    ),
    "CF.class_scores": Spec(
        CF.class_scores,
        {"scores": probs, "method": _v("raps")},
        {
            "scores": "probs",
            "method": "method",
            "lam": "nonneg",
            "k_reg": "k_reg",
            "randomized": "bool",
            "generator": "generator",
        },
    ),
    "CF.conformity_scores": Spec(
        CF.conformity_scores,
        {"scores": probs, "targets": targets, "method": _v("aps")},
        {"scores": "probs", "targets": "targets", "method": "method", "lam": "nonneg", "k_reg": "k_reg"},
    ),
    "CF.conformal_quantile": Spec(
        CF.conformal_quantile,
        {"scores": lambda: probs()[:, 0], "alpha": _v(0.1)},
        {"scores": "tensor_nd", "alpha": "unit_open"},
    ),
    "CF.conformal_sets": Spec(
        CF.conformal_sets,
        {"scores": probs, "qhat": _v(0.5), "method": _v("lac")},
        {"scores": "probs", "qhat": "qhat", "method": "method", "k_reg": "k_reg", "randomized": "bool"},
    ),
    "CF.calibrate": Spec(
        CF.calibrate,
        {"scores": probs, "targets": targets, "alpha": _v(0.2), "method": _v("raps")},
        {
            "scores": "probs",
            "targets": "targets",
            "alpha": "unit_open",
            "method": "method",
            "lam": "nonneg",
            "k_reg": "k_reg",
            "generator": "generator",
        },
    ),
    "alpha_for_mean_size": Spec(
        alpha_for_mean_size,
        {"scores": probs, "targets": targets, "target_size": _v(2.0), "method": _v("aps"), "iterations": _v(3)},
        {
            "scores": "probs",
            "targets": "targets",
            "target_size": "k_avg",
            "method": "method",
            "iterations": "count",
            "lam": "nonneg",
            "k_reg": "k_reg",
            "randomized": "bool",
        },
    ),
    "average_k_for_coverage": Spec(
        average_k_for_coverage,
        {"scores": probs, "targets": targets, "coverage": _v(0.9), "iterations": _v(3)},
        {"scores": "scores", "targets": "targets", "coverage": "unit_high_closed", "iterations": "count"},
    ),
    "CF.class_conditional_coverage": Spec(
        CF.class_conditional_coverage, {"sets": sets, "targets": targets}, {"sets": "sets", "targets": "targets"}
    ),
}


def _cases() -> list[tuple[str, str, str, str]]:
    return [
        (spec_name, arg, kind, label)
        for spec_name, spec in SPECS.items()
        for arg, kind in spec.kinds.items()
        for label, _ in BAD[kind]
    ]


CASES = _cases()


def _call(spec: Spec, override: dict[str, object] | None = None):
    kwargs = {name: make() for name, make in spec.valid.items()}
    kwargs.update(override or {})
    return spec.fn(**kwargs)


@pytest.mark.parametrize("spec_name", sorted(SPECS))
def test_valid_call_runs(spec_name):
    _call(SPECS[spec_name])


@pytest.mark.parametrize(("spec_name", "arg", "kind", "label"), CASES, ids=["-".join(c) for c in CASES])
def test_bad_input_raises_naming_the_argument(spec_name, arg, kind, label):
    make = dict(BAD[kind])[label]
    with pytest.raises((ValueError, TypeError), match=re.escape(f"`{arg}`")):
        _call(SPECS[spec_name], {arg: make()})


def test_every_public_function_is_in_the_matrix():
    """Each name in the modules' ``__all__`` (or public callables of ops/conformal) has a spec."""
    covered = set(SPECS) | {name.split("(")[0] for name in SPECS}
    names = set()
    for prefix, module in [("F.", AF), ("M.", M)]:
        names |= {prefix + n for n in module.__all__ if n != "noised_topk"}
    names |= {f"{cls}()" for cls in AL.__all__} | {f"{cls}.forward" for cls in AL.__all__}
    for prefix, module in [("ops.", ops), ("CF.", CF)]:
        names |= {
            prefix + n
            for n, obj in vars(module).items()
            if callable(obj)
            and not n.startswith("_")
            and getattr(obj, "__module__", "") == module.__name__
            and not isinstance(obj, type)
        }
    missing = sorted(n for n in names if n not in covered and f"{n}()" not in covered)
    assert not missing, f"public functions without a bad-input spec: {missing}"


def test_matrix_size():
    assert len(SPECS) >= 55
    assert len(CASES) >= 700


# ------------------------------------------------------------------ bad run files (issue 31)


def _bad_run_files(tmp_path):
    import pathlib

    from avgk_lib import rundir

    good = tmp_path / "good.pt"
    rundir.save_checkpoint({"model": {"w": torch.zeros(2)}, "fingerprint": "a" * 16}, good)
    marker = tmp_path / "ran.txt"

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (pathlib.Path(marker),))

    def write(name, data):
        path = tmp_path / name
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            torch.save(data, path)
        return path

    return marker, [
        (write("garbage.pt", b"garbage"), "unreadable"),
        (write("truncated.pt", good.read_bytes()[:100]), "unreadable"),
        (write("crafted.pt", {"model": Payload()}), "was refused"),
        (write("list.pt", [1, 2]), "not a dict"),
        (write("old.pt", {"format_version": torch.tensor(1)}), "format version 1"),
        (write("flipped.pt", {**torch.load(good), "model": {"w": torch.ones(2)}}), "checksum"),
        (good, "different configuration"),
    ]


def test_bad_run_files_are_one_line_naming_the_file_and_run_nothing(tmp_path):
    from avgk_lib.rundir import CheckpointError, load_checkpoint

    marker, cases = _bad_run_files(tmp_path)
    for path, words in cases:
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path, "b" * 16)
        message = str(info.value)
        assert str(path) in message and words in message and "\n" not in message, message
    assert not marker.exists()
