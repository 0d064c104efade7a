"""A run resolved once: :class:`RunSpec`, the frozen description everything below the entry
points receives.

:meth:`RunSpec.resolve` validates a :class:`~avgk_lib.config.TrainConfig` once and looks every
name up once: the loss (its :class:`~avgk_lib.objectives.ObjectiveSpec`, options merged with the
loss's own defaults), the model, the head (linear or cosine), the heads the model returns and
the one that is evaluated, the score kind, the selection metric and the metric Ks. The trainer,
:func:`~avgk_lib.train.train_many` and the run cache read these fields and never resolve a name
again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import TrainConfig, selection_metric, validated
from .objectives import TWO_HEAD_SCORES, ObjectiveSpec
from .runcap import capped


@dataclass(frozen=True)
class RunSpec:
    """One validated, fully resolved run (build it with :meth:`resolve`).

    ``heads``: the scores evaluated by name (``("main",)``, or ``("softmax", "multilabel",
    "combined")`` for two-head models, combined = the mean of both heads' probabilities);
    ``eval_head``: the one whose metrics are the run's results; ``select``: the validation metric
    key of the best epoch (e.g. ``"top5_micro"``); ``fingerprint``: the run-cache key
    (:meth:`TrainConfig.fingerprint`)."""

    config: TrainConfig
    fingerprint: str
    objective: ObjectiveSpec
    loss_options: dict[str, Any]
    model: str
    head: str
    heads: tuple[str, ...]
    eval_head: str
    select: str
    eval_ks: tuple[float, ...]

    @classmethod
    def resolve(cls, cfg: TrainConfig) -> RunSpec:
        """Validate ``cfg`` (:class:`~avgk_lib.config.ConfigError` on a bad value) and resolve it
        (cut short by :func:`~avgk_lib.runcap.capped` when ``AVGK_RUN_CAP=1``)."""
        if isinstance(cfg, RunSpec):
            return cfg
        if not isinstance(cfg, TrainConfig):
            raise TypeError(f"`cfg` must be a TrainConfig, got {type(cfg).__name__}")
        # under AVGK_RUN_CAP=1 (CI) the run is cut short before its fingerprint is taken (avgk_lib.runcap)
        cfg, objective = validated(capped(cfg))
        fingerprint = cfg.fingerprint()
        select = selection_metric(cfg, objective)
        heads = TWO_HEAD_SCORES if objective.two_head else ("main",)
        return cls(
            config=cfg,
            fingerprint=fingerprint,
            objective=objective,
            loss_options={**objective.defaults, **cfg.loss_options},
            model=cfg.resolved_model(),
            head=objective.head if cfg.head == "auto" else cfg.head,
            heads=heads,
            eval_head=cfg.eval_head if objective.two_head else "main",
            select=select,
            eval_ks=tuple(cfg.eval_ks),
        )

    @property
    def two_head(self) -> bool:
        return self.objective.two_head

    @property
    def integer_k(self) -> bool:
        return self.objective.integer_k

    @property
    def k(self) -> float:
        return self.config.k
