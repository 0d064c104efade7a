r"""Paired tests behind the claims ledger: Student-t tests, TOST equivalence and Holm's correction.

Pure functions on plain numbers (lists, tuples or 1-D arrays of finite reals); no file, no
global state. The ledger (:mod:`avgk_book.claims`) turns their p-values into verdicts.

**Paired t test.** With per-seed differences :math:`d_1, \dots, d_n` (same seed: same data draw,
same noise, same split), :math:`\bar d = \frac1n \sum_s d_s`,
:math:`s_d^2 = \frac{1}{n-1} \sum_s (d_s - \bar d)^2`, :math:`\mathrm{se} = s_d / \sqrt n` and
:math:`t = (\bar d - \delta_0) / \mathrm{se}` with :math:`n - 1` degrees of freedom
(:math:`F` its CDF):

* two-sided p: :math:`2\,(1 - F(|t|))`; "greater": :math:`1 - F(t)`; "less": :math:`F(t)`;
* the :math:`1 - a` interval: :math:`\bar d \pm t_{1 - a/2,\, n-1}\, \mathrm{se}`.

When every difference is equal (:math:`\mathrm{se} = 0`), :math:`t = \pm\infty` on the side of
:math:`\bar d - \delta_0` (p = 0 on that side, as scipy), and :math:`t = 0` when
:math:`\bar d = \delta_0` (two-sided p = 1: no evidence at all).

**TOST** (two one-sided tests, Schuirmann 1987) for "A is equivalent to B within a margin
:math:`\Delta`": :math:`H_0: |\delta| \ge \Delta` against :math:`H_1: |\delta| < \Delta`, with
:math:`p_\mathrm{low}` of :math:`H_0^-: \delta \le -\Delta` (alternative "greater") and
:math:`p_\mathrm{up}` of :math:`H_0^+: \delta \ge \Delta` (alternative "less");
:math:`p = \max(p_\mathrm{low}, p_\mathrm{up})`. Rejecting at level :math:`\alpha` is the same as
the two-sided :math:`1 - 2\alpha` interval (90% at :math:`\alpha = 0.05`) lying inside
:math:`(-\Delta, \Delta)`.

**Holm's step-down correction** (Holm 1979) of :math:`m` p-values: sort them,
:math:`p_{(1)} \le \dots \le p_{(m)}`, and set
:math:`\tilde p_{(i)} = \min\big(1, \max_{j \le i} (m - j + 1)\, p_{(j)}\big)`. Rejecting every
:math:`\tilde p < \alpha` controls the family-wise error rate at :math:`\alpha` under any
dependence between the tests.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from scipy import stats as _scipy_stats

ALTERNATIVES = ("two-sided", "greater", "less")

__all__ = ["ALTERNATIVES", "holm", "paired_differences", "t_test", "tost"]


def _reals(values: Any, name: str, *, min_len: int = 0) -> list[float]:
    """``values`` as a list of finite floats, or a TypeError/ValueError naming ``name``."""
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        raise TypeError(f"`{name}` must be a sequence of real numbers, got {type(values).__name__}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"`{name}` must hold real numbers, got {v!r}")
        if not math.isfinite(float(v)):
            raise ValueError(f"`{name}` must hold finite numbers, got {v!r}")
        out.append(float(v))
    if len(out) < min_len:
        raise ValueError(f"`{name}` needs at least {min_len} values, got {len(out)}")
    return out


def _real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"`{name}` must be finite, got {value!r}")
    return float(value)


def paired_differences(ours: Sequence[float], rival: Sequence[float], *, higher_is_better: bool = True) -> list[float]:
    r"""Per-seed differences in the claimed direction: :math:`d_s = a_s - b_s` when higher is
    better (accuracy), :math:`d_s = b_s - a_s` when lower is better (time); so :math:`d_s > 0`
    always favours ``ours``.

    Example:
        >>> paired_differences([0.5, 0.7], [0.4, 0.75])
        [0.09999999999999998, -0.050000000000000044]
        >>> paired_differences([2.0, 3.0], [4.0, 3.5], higher_is_better=False)
        [2.0, 0.5]
    """
    a, b = _reals(ours, "ours", min_len=1), _reals(rival, "rival", min_len=1)
    if len(a) != len(b):
        raise ValueError(f"`ours` and `rival` must pair the same seeds, got {len(a)} and {len(b)} values")
    if not isinstance(higher_is_better, bool):
        raise TypeError(f"`higher_is_better` must be a bool, got {higher_is_better!r}")
    return (
        [x - y for x, y in zip(a, b, strict=True)] if higher_is_better else [y - x for x, y in zip(a, b, strict=True)]
    )


def t_test(
    differences: Sequence[float], alternative: str = "two-sided", *, null: float = 0.0, confidence: float = 0.95
) -> dict[str, Any]:
    r"""One-sample Student-t test of paired differences against :math:`\delta_0` = ``null``
    (formulas in the module docstring); needs at least two differences.

    Returns ``n``, ``effect`` (:math:`\bar d`), ``sd``, ``se``, ``df``, ``t``, ``p`` (of
    ``alternative``) and ``ci`` (the two-sided ``confidence`` interval of the mean, whatever the
    alternative).

    Example:
        >>> r = t_test([0.01, 0.03, 0.02, 0.04], "greater")
        >>> round(r["effect"], 3), round(r["t"], 3), round(r["p"], 4)
        (0.025, 3.873, 0.0152)
    """
    d = _reals(differences, "differences", min_len=2)
    if alternative not in ALTERNATIVES:
        raise ValueError(f"`alternative` must be one of {ALTERNATIVES}, got {alternative!r}")
    delta0 = _real(null, "null")
    level = _real(confidence, "confidence")
    if not 0.0 < level < 1.0:
        raise ValueError(f"`confidence` must lie in (0, 1), got {confidence!r}")
    n = len(d)
    mean = math.fsum(d) / n
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in d) / (n - 1))
    se = sd / math.sqrt(n)
    df = n - 1
    if se > 0.0:
        t = (mean - delta0) / se
    else:
        t = math.copysign(math.inf, mean - delta0) if mean != delta0 else 0.0
    dist = _scipy_stats.t(df)
    if alternative == "greater":
        p = float(dist.sf(t))
    elif alternative == "less":
        p = float(dist.cdf(t))
    else:
        p = min(1.0, float(2.0 * dist.sf(abs(t))))
    half = float(dist.ppf(0.5 + level / 2.0)) * se
    return {"n": n, "effect": mean, "sd": sd, "se": se, "df": df, "t": t, "p": p, "ci": [mean - half, mean + half]}


def tost(differences: Sequence[float], margin: float) -> dict[str, Any]:
    r"""TOST equivalence test of paired differences within :math:`\pm` ``margin`` (module docstring).

    Returns ``n``, ``effect``, ``se``, ``df``, ``p_lower`` (:math:`H_0: \delta \le -\Delta`),
    ``p_upper`` (:math:`H_0: \delta \ge \Delta`), ``p`` (their maximum), ``ci90`` (the two-sided
    90% interval, inside :math:`(-\Delta, \Delta)` iff ``p < 0.05``) and ``margin``.

    Example:
        >>> r = tost([0.001, -0.002, 0.0, 0.002, -0.001], margin=0.01)
        >>> r["p"] < 0.05, r["ci90"][0] > -0.01 and r["ci90"][1] < 0.01
        (True, True)
    """
    m = _real(margin, "margin")
    if m <= 0.0:
        raise ValueError(f"`margin` must be positive, got {margin!r}")
    lower = t_test(differences, "greater", null=-m, confidence=0.90)
    upper = t_test(differences, "less", null=m)
    return {
        "n": lower["n"],
        "effect": lower["effect"],
        "se": lower["se"],
        "df": lower["df"],
        "p_lower": lower["p"],
        "p_upper": upper["p"],
        "p": max(lower["p"], upper["p"]),
        "ci90": lower["ci"],
        "margin": m,
    }


def holm(pvalues: Sequence[float]) -> list[float]:
    r"""Holm step-down adjusted p-values, in the order given (formula in the module docstring):
    monotone in the sorted order, never below the raw p, capped at 1.

    Example:
        >>> [round(p, 3) for p in holm([0.01, 0.04, 0.03, 0.5])]
        [0.04, 0.09, 0.09, 0.5]
    """
    p = _reals(pvalues, "pvalues")
    if any(not 0.0 <= x <= 1.0 for x in p):
        raise ValueError(f"`pvalues` must lie in [0, 1], got {p}")
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted
