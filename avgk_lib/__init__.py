"""avgk_lib: top-K and average-K classification losses, metrics and set predictors.

Reference implementation of

* P1: Garcin, Servajean, Joly, Salmon. *Stochastic smoothing of the top-K calibrated hinge loss
  for deep imbalanced classification.* ICML 2022.
* P2: Garcin, Servajean, Joly, Salmon. *A two-head loss function for deep Average-K
  classification.* WACV 2025.

Core modules (need only torch and numpy): :mod:`~avgk_lib.functional` (pure losses),
:mod:`~avgk_lib.losses` (``nn.Module`` wrappers), :mod:`~avgk_lib.metrics` (top-K / average-K
metrics), :mod:`~avgk_lib.sets` (set predictors ``TopK``, ``AverageK``, ``SplitConformal``),
:mod:`~avgk_lib.ops` (differentiable primitives). Training (``pip install avgk_lib[train]``):
:mod:`~avgk_lib.train`, :mod:`~avgk_lib.build`, :mod:`~avgk_lib.engine`, :mod:`~avgk_lib.config`, :mod:`~avgk_lib.cli`.
"""

__version__ = "0.1.0"

from . import functional, losses, metrics, ops, sets  # noqa: E402 (the version is read by pyproject)
from ._checks import set_value_checks, value_checks  # noqa: E402
from .sets import AverageK, SplitConformal, TopK, metric_key, set_coverage, set_size  # noqa: E402

__all__ = [
    "AverageK",
    "SplitConformal",
    "TopK",
    "functional",
    "losses",
    "metric_key",
    "metrics",
    "ops",
    "set_coverage",
    "set_size",
    "set_value_checks",
    "sets",
    "value_checks",
    "__version__",
]
