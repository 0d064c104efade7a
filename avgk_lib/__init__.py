"""avgk_lib: top-K and average-K classification losses and metrics.

Reference implementation of

* P1: Garcin, Servajean, Joly, Salmon. *Stochastic smoothing of the top-K calibrated hinge loss
  for deep imbalanced classification.* ICML 2022.
* P2: Garcin, Servajean, Joly, Salmon. *A two-head loss function for deep Average-K
  classification.* WACV 2025.

Modules: :mod:`~avgk_lib.functional` (pure losses), :mod:`~avgk_lib.losses` (``nn.Module``
wrappers), :mod:`~avgk_lib.metrics` (top-K / average-K metrics), :mod:`~avgk_lib.ops`
(differentiable primitives).
"""

from . import functional, losses, metrics, ops
from ._checks import set_value_checks, value_checks

__version__ = "0.1.0"

__all__ = ["functional", "losses", "metrics", "ops", "set_value_checks", "value_checks", "__version__"]
