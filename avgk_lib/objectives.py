"""Training objectives: a loss, the head(s) it needs, and how model outputs become scores.

:data:`OBJECTIVES` describes each named loss (:class:`ObjectiveSpec`): which loss module it
builds, which hyperparameters it exposes (their defaults are read from the signatures of the
:mod:`avgk_lib.functional` function and :mod:`avgk_lib.losses` module, never restated here),
which head the model needs (linear or cosine, one or two heads), and how outputs become the
per-class scores that top-K and average-K metrics threshold:

* ``softmax``: softmax of the logits (cross-entropy, top-K losses, P2's softmax head); cosine
  heads are multiplied by the loss's ``scale`` first, as in their loss;
* ``sigmoid``: independent sigmoids (multi-label heads: AN, AN-LS, WAN, EPR, ROLE, P2's
  multi-label head). Average-K thresholds these directly, as P2 does.

:func:`assemble_objective` turns a spec and its options into an :class:`Objective`, the object the
trainer uses: ``objective.loss(outputs, batch)`` and ``objective.head_scores(outputs)``.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from . import functional as AF
from . import losses as L

ScoreKind = Literal["softmax", "sigmoid"]
HeadName = Literal["softmax", "multilabel", "combined"]
#: the heads of a two-head model whose scores are evaluated: each head's probabilities, and
#: ``combined``, their mean :math:`\tfrac12(\mathrm{softmax}(z^{\mathrm{soft}}) + \sigma(z^{\mathrm{multi}}))`
TWO_HEAD_SCORES: tuple[str, ...] = typing.get_args(HeadName)


class CrossEntropy(nn.Module):
    """``F.cross_entropy`` with an optional logit scale (for cosine heads). Stacked ``(M, B, C)``
    logits with ``(M, B)`` targets give one mean loss per member, ``(M,)`` (the stacked form of
    :mod:`avgk_lib.functional`)."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.dim() == 3:
            per_sample = F.cross_entropy(logits.float().flatten(0, 1) * self.scale, targets.flatten(), reduction="none")
            return per_sample.view(targets.shape).mean(dim=1)
        return F.cross_entropy(logits.float() * self.scale, targets)


@dataclass(frozen=True)
class ObjectiveSpec:
    """Static description of a named objective.

    ``build(options)`` receives the merged options: the tunable ``options`` (defaults from the
    signatures of ``function`` and ``module``, then ``overrides``, then the user's values) plus
    the run's ``k``, ``n_classes``, ``class_counts`` and ``n_train``."""

    name: str
    build: Callable[[dict[str, Any]], nn.Module]
    function: Callable[..., Any] | None = None
    module: type[nn.Module] | None = None
    options: tuple[str, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)
    head: Literal["linear", "cosine"] = "linear"
    two_head: bool = False
    needs_indices: bool = False
    score_kind: ScoreKind = "softmax"
    integer_k: bool = False
    description: str = ""

    @property
    def defaults(self) -> dict[str, Any]:
        """Default of every tunable option: the loss signatures, then ``overrides``."""
        found = {**_signature_defaults(self.module), **_signature_defaults(self.function)}
        return {name: self.overrides.get(name, found[name]) for name in self.options}

    @property
    def option_types(self) -> dict[str, type]:
        """Python type of every tunable option, from the loss signatures' annotations."""
        hints = {**_signature_types(self.module), **_signature_types(self.function)}
        return {name: hints[name] for name in self.options}


def _callable_of(obj: Any) -> Callable[..., Any] | None:
    return obj.__init__ if isinstance(obj, type) else obj


def _signature_defaults(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    params = inspect.signature(_callable_of(obj)).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _signature_types(obj: Any) -> dict[str, type]:
    if obj is None:
        return {}
    out = {}
    for name, hint in typing.get_type_hints(_callable_of(obj)).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        base = args[0] if typing.get_origin(hint) is not Literal and args else hint
        out[name] = str if typing.get_origin(hint) is Literal else base
    return out


def _int_k(o: dict[str, Any]) -> int:
    k = o["k"]
    if float(k) != int(k):
        raise ValueError(f"`k` must be an integer for the top-K loss {o['loss']!r}, got {k}")
    return int(k)


def _pick(o: dict[str, Any], *names: str) -> dict[str, Any]:
    return {n: o[n] for n in names}


#: the two-head loss's tunable options (P2's open choices among them: see :class:`~avgk_lib.losses.TwoHeadLoss`)
TWO_HEAD_OPTIONS = (
    "weight",
    "rule",
    "class_reduction",
    "warmup_epochs",
    "soft_labels",
    "force_true",
    "threshold",
)


_SPECS = [
    ObjectiveSpec("cross_entropy", lambda o: CrossEntropy(), description="softmax cross-entropy"),
    ObjectiveSpec(
        "noised_topk",
        lambda o: L.NoisedTopKLoss(_int_k(o), **_pick(o, "epsilon", "n_samples")),
        AF.noised_topk_loss,
        L.NoisedTopKLoss,
        ("epsilon", "n_samples"),
        integer_k=True,
        description="P1 balanced noised top-K hinge",
    ),
    ObjectiveSpec(
        "imbalanced_noised_topk",
        lambda o: L.ImbalancedNoisedTopKLoss(
            _int_k(o), o["class_counts"], **_pick(o, "epsilon", "n_samples", "max_margin", "scale")
        ),
        AF.imbalanced_noised_topk_loss,
        L.ImbalancedNoisedTopKLoss,
        ("epsilon", "n_samples", "max_margin", "scale"),
        head="cosine",
        integer_k=True,
        description="P1 imbalanced noised top-K (cosine head)",
    ),
    ObjectiveSpec(
        "smooth_topk_svm",
        lambda o: L.SmoothTopKSVMLoss(_int_k(o), **_pick(o, "tau", "alpha")),
        AF.smooth_topk_svm_loss,
        L.SmoothTopKSVMLoss,
        ("tau", "alpha"),
        integer_k=True,
        description="Berrada et al. smooth top-k SVM",
    ),
    ObjectiveSpec("topk_hinge", lambda o: L.TopKHingeLoss(_int_k(o)), integer_k=True, description="hard top-K hinge"),
    ObjectiveSpec(
        "focal", lambda o: L.FocalLoss(o["gamma"]), AF.focal_loss, L.FocalLoss, ("gamma",), description="focal loss"
    ),
    ObjectiveSpec(
        "ldam",
        lambda o: L.LDAMLoss(o["class_counts"], **_pick(o, "max_margin", "scale")),
        AF.ldam_loss,
        L.LDAMLoss,
        ("max_margin", "scale"),
        head="cosine",
        description="LDAM (cosine head)",
    ),
    ObjectiveSpec(
        "assume_negative", lambda o: L.AssumeNegativeLoss(), score_kind="sigmoid", description="AN (Cole et al.)"
    ),
    ObjectiveSpec(
        "an_ls",
        lambda o: L.AssumeNegativeLoss(label_smoothing=o["label_smoothing"]),
        AF.assume_negative_loss,
        L.AssumeNegativeLoss,
        ("label_smoothing",),
        overrides={"label_smoothing": 0.1},  # AN-LS is AN with smoothing; 0.1 as in Cole et al. 2021
        score_kind="sigmoid",
        description="AN with label smoothing",
    ),
    ObjectiveSpec(
        "wan",
        lambda o: L.AssumeNegativeLoss(negative_weight=1.0 / (o["n_classes"] - 1)),
        score_kind="sigmoid",
        description="weak AN, negatives weighted 1/(C-1)",
    ),
    ObjectiveSpec(
        "epr", lambda o: L.EPRLoss(o["k"]), score_kind="sigmoid", description="expected-positive regularizer"
    ),
    ObjectiveSpec(
        "role",
        lambda o: L.ROLELoss(o["n_train"], o["n_classes"], o["k"]),
        score_kind="sigmoid",
        needs_indices=True,
        description="online label estimation (Cole et al.)",
    ),
    ObjectiveSpec(
        "two_head",
        lambda o: L.TwoHeadLoss(o["k"], **_pick(o, *TWO_HEAD_OPTIONS)),
        AF.two_head_loss,
        L.TwoHeadLoss,
        TWO_HEAD_OPTIONS,
        two_head=True,
        description="P2 two-head loss",
    ),
]
OBJECTIVES: dict[str, ObjectiveSpec] = {spec.name: spec for spec in _SPECS}


def get_objective(name: str) -> ObjectiveSpec:
    """The :class:`ObjectiveSpec` called ``name``; ``ValueError`` listing the valid names otherwise."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]


def loss_option_types() -> dict[str, type]:
    """Every tunable loss option of any objective and its type (the CLI's loss flags)."""
    out: dict[str, type] = {}
    for spec in OBJECTIVES.values():
        out.update(spec.option_types)
    return out


def unknown_loss_option(name: str, options: dict[str, Any], spec: ObjectiveSpec) -> tuple[str, str] | None:
    """``(option, why)`` for the first of ``options`` that loss ``name`` (its ``spec``) does not
    use, else ``None``: the one wording of that mistake."""
    for key in options:
        if key not in spec.options:
            return key, f"is not an option of the loss {name!r} (its options: {', '.join(spec.options) or 'none'})"
    return None


class Objective:
    """A built objective: the loss module and how to score outputs.

    ``loss(outputs, batch)`` with ``batch = (x, targets, indices)``; ``head_scores(outputs)``
    gives the per-class scores in [0, 1] (float32) of every head."""

    def __init__(self, spec: ObjectiveSpec, loss_fn: nn.Module, *, scale: float) -> None:
        self.spec = spec
        self.loss_fn = loss_fn
        self.scale = scale

    def loss(self, outputs: Any, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        _, targets, indices = batch
        if self.spec.two_head:
            return self.loss_fn(outputs[0], outputs[1], targets)
        if self.spec.needs_indices:
            return self.loss_fn(outputs, targets, indices)
        return self.loss_fn(outputs, targets)

    def head_scores(self, outputs: Any) -> dict[str, torch.Tensor]:
        if self.spec.two_head:
            softmax_logits, multilabel_logits = outputs
            soft = torch.softmax(softmax_logits.float(), dim=-1)
            multi = torch.sigmoid(multilabel_logits.float())
            return {"softmax": soft, "multilabel": multi, "combined": (soft + multi) / 2}
        logits = outputs.float()
        if self.spec.score_kind == "sigmoid":
            return {"main": torch.sigmoid(logits)}
        return {"main": torch.softmax(logits * self.scale, dim=1)}


def assemble_objective(spec: ObjectiveSpec, options: dict[str, Any], *, run: dict[str, Any]) -> Objective:
    """The objective of a loss already looked up, with its complete, checked ``options`` (a
    :class:`~avgk_lib.runspec.RunSpec`'s ``objective`` and ``loss_options``; the defaults are
    ``spec.defaults``) and the ``run`` facts ``k``, ``n_classes``, ``class_counts``, ``n_train``
    (:func:`~avgk_lib.build.run_facts`): nothing is looked up by name."""
    merged = {**options, **run, "loss": spec.name}
    loss_fn = spec.build(merged)
    scale = float(merged["scale"]) if spec.head == "cosine" and "scale" in merged else 1.0
    return Objective(spec, loss_fn, scale=scale)
