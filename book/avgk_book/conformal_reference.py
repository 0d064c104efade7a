r"""Chapter 9's headline numbers over finished runs: the committed conformal reference, read.

For one model's validation scores :math:`(\hat p^{\,val}, y^{val})` and test scores
:math:`(\hat p^{\,test}, y^{test})` (``scores.pt`` of a run), every set is calibrated on the
validation split and measured on the test split:

* **split conformal** (LAC, APS, RAPS; :mod:`avgk_lib.conformal`) at each level :math:`\alpha`:
  :math:`\hat q` is the :math:`\lceil (n+1)(1-\alpha)\rceil`-th smallest validation score and
  :math:`\Gamma(x) = \{y : E(x, y) \le \hat q\}`;
* **average-K** at each K of the setting: one global threshold :math:`\lambda` on the pooled
  validation probabilities such that the sets :math:`\{y : \hat p_y(x) \ge \lambda\}` hold K
  classes on average;
* **matched size**: each conformal method at the :math:`\alpha` whose validation sets have mean
  size K (:func:`alpha_for_mean_size`), next to average-K at K;
* **matched coverage**: average-K at the K whose validation coverage equals that of LAC at
  :math:`\alpha = 0.1` (:func:`average_k_for_coverage`);
* **rare classes** (long-tailed settings, given the training class counts :math:`n_c`): the mean
  class-conditional test coverage over the rarest third of the classes
  (:math:`n_c \le` the 1/3 quantile of the counts) and over the others, and the lowest class
  coverage, for LAC at :math:`\alpha = 0.1` and for average-K at LAC's mean validation size.

Coverage is micro (:math:`\frac1n \sum_i \mathbb 1[y_i \in \Gamma(x_i)]`) and macro (the mean over
the classes present in the test targets of each class's coverage); size is
:math:`\frac1n \sum_i |\Gamma(x_i)|`. APS and RAPS draw their uniforms from
``torch.Generator().manual_seed(seed)`` on the validation split and ``seed + 1`` on the test split.

``tools/conformal_reference.py`` computes these numbers, one row per run of the committed
``average_k`` references, and commits them (``reference_results/conformal_<preset>.json``, with
provenance and a checksum). This module holds what the file's rows mean and what the chapter reads:
the row keys (:func:`conformal_key`, :func:`average_k_key`, :func:`matched_size_key`), the reader
(:func:`load_conformal_reference`), the long tables and the findings stated from the rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from avgk_lib import conformal as C
from avgk_lib import metrics as M
from avgk_lib import value_checks
from avgk_lib._checks import (
    check_count,
    check_k,
    check_probabilities,
    check_scores,
    check_targets,
    check_unit_interval,
)

#: miscoverage levels of the reference
ALPHAS = (0.05, 0.1, 0.2)
#: the level of the matched-coverage and rare-class comparisons (the chapter's)
MAIN_ALPHA = 0.1
#: the experiments whose runs the reference is computed from
SOURCES = ("average_k", "average_k_long_tail")
SCORE_KEYS = ("val_scores", "val_targets", "test_scores", "test_targets")


def stem(preset: str) -> str:
    """File stem of the conformal reference of a preset: ``conformal_<preset>``."""
    if not isinstance(preset, str) or not preset.isidentifier():
        raise ValueError(f"`preset` must be a preset name such as 'cpu', got {preset!r}")
    return f"conformal_{preset}"


def conformal_key(method: str, alpha: float, stat: str) -> str:
    """Row key of a conformal method at a level: ``conformal_key("lac", 0.1, "micro") == "lac_a0.1_micro"``
    (``stat``: ``micro``, ``macro`` coverage or ``size``)."""
    _check_method(method, with_average_k=False)
    _check_stat(stat)
    return f"{method}_a{check_alpha(alpha):g}_{stat}"


def average_k_key(k: float, stat: str) -> str:
    """Row key of average-K at K: ``avg3_micro``, ``avg3_macro``, ``avg3_size`` (as in the runs' results)."""
    _check_stat(stat)
    return M.metric_key("avg", k, stat)


def matched_size_key(k: float, method: str, stat: str) -> str:
    """Row key of a conformal method at matched mean size K: ``size3_lac_micro``, ``size3_aps_size``,
    ``size3_raps_alpha`` (the level found on the validation split)."""
    _check_method(method, with_average_k=False)
    if stat not in ("micro", "size", "alpha"):
        raise ValueError(f"`stat` must be 'micro', 'size' or 'alpha', got {stat!r}")
    return f"size{M.k_label(k)}_{method}_{stat}"


def _check_method(method: object, with_average_k: bool) -> str:
    allowed = (*C.METHODS, "avgk") if with_average_k else tuple(C.METHODS)
    if method not in allowed:
        raise ValueError(f"`method` must be one of {', '.join(allowed)}, got {method!r}")
    return str(method)


def _check_stat(stat: object) -> str:
    if stat not in ("micro", "macro", "size"):
        raise ValueError(f"`stat` must be 'micro', 'macro' or 'size', got {stat!r}")
    return str(stat)


def check_alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < float(alpha) < 1:
        raise ValueError(f"`alpha` must be a number in (0, 1), got {alpha!r}")
    return float(alpha)


def alpha_for_mean_size(
    scores: torch.Tensor,
    targets: torch.Tensor,
    target_size: float,
    method: str = "lac",
    iterations: int = 40,
    *,
    lam: float = 0.01,
    k_reg: int = 5,
    randomized: bool = True,
) -> float:
    """The miscoverage level whose conformal sets have mean size ``target_size`` (``0 <
    target_size <= C``) on these data (bisection, ``iterations >= 1`` steps; conformal sets
    shrink as alpha grows). Used to compare at matched average size."""
    scores = check_probabilities(check_scores(scores, "scores"), "scores")
    targets = check_targets(targets, scores.shape[0], scores.shape[1])
    target_size = float(check_k(target_size, "target_size", n_classes=scores.shape[1], integer=False))
    iterations = check_count(iterations, "iterations")
    options = {"lam": lam, "k_reg": k_reg, "randomized": randomized}
    C.check_options(method, generator=None, **options)
    lo, hi = 1e-4, 1 - 1e-4
    with value_checks(False):  # validated once above
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            qhat = C.calibrate(scores, targets, mid, method, generator=torch.Generator().manual_seed(0), **options)
            sets = C.conformal_sets(scores, qhat, method, generator=torch.Generator().manual_seed(1), **options)
            size = float(sets.sum(1).double().mean())
            lo, hi = (mid, hi) if size > target_size else (lo, mid)
    return 0.5 * (lo + hi)


def average_k_for_coverage(scores: torch.Tensor, targets: torch.Tensor, coverage: float, iterations: int = 40) -> float:
    """The average set size K whose average-K sets reach ``coverage`` (in (0, 1]) on these data
    (bisection on K, ``iterations >= 1`` steps). ``scores`` may be any scores, not only
    probabilities: average-K only ranks them."""
    scores = check_scores(scores, "scores")
    targets = check_targets(targets, scores.shape[0], scores.shape[1])
    coverage = check_unit_interval(coverage, "coverage", high_open=False)
    iterations = check_count(iterations, "iterations")
    lo, hi = 1e-3, float(scores.shape[1])
    with value_checks(False):  # validated once above
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            acc = M.average_k_accuracy(scores, targets, M.average_k_threshold(scores, mid))
            lo, hi = (mid, hi) if acc < coverage else (lo, mid)
    return hi


def load_conformal_reference(preset: str = "cpu") -> dict[str, Any] | None:
    """The committed conformal reference of ``preset`` (checksum verified), or ``None`` when absent."""
    from .references import load_json_reference

    return load_json_reference(stem(preset))


def interval(summary: Mapping[str, Any], key: str, digits: int = 3) -> str:
    """``"0.901 ± 0.004"``: the mean and 95% half-width of ``key`` in a row of
    :func:`avgk_book.experiments.summarize`."""
    if not isinstance(summary, Mapping) or key not in summary:
        raise ValueError(f"`summary` has no {key!r}")
    mean, half = summary[key], summary.get(f"{key}_ci95", 0.0)
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


_CONFORMAL_KEY = re.compile(r"^(lac|aps|raps)_a([0-9.]+)_micro$")
_AVERAGE_K_KEY = re.compile(r"^avg([0-9.]+)_micro$")
_MATCHED_KEY = re.compile(r"^size([0-9.]+)_(lac|aps|raps)_micro$")
#: the label columns a long row keeps from its reference row
LABELS = ("experiment", "dataset", "loss", "train_k", "seed", "arm", "head")


def long_rows(rows: Sequence[Mapping[str, Any]], part: str) -> list[dict[str, Any]]:
    """Reference rows unfolded for a table, one row per (run, method, level or K), with the labels
    of :data:`LABELS` and the columns ``coverage`` (micro), ``macro coverage`` and ``mean size``:

    * ``part="conformal"``: ``sets`` (LAC, APS, RAPS) and ``alpha``;
    * ``part="average_k"``: ``K``;
    * ``part="matched_size"``: ``K`` and ``sets`` (average-K and each conformal method at mean
      size K on the validation split; no macro coverage for the conformal ones);
    * ``part="rare"``: ``sets`` (LAC at 0.1, average-K at LAC's size) with ``rarest third``,
      ``other classes`` and ``lowest class`` (rows of long-tailed settings only)."""
    if not isinstance(rows, (list, tuple)) or not all(isinstance(r, Mapping) for r in rows):
        raise TypeError("`rows` must be a list of reference rows (dicts)")
    if part not in ("conformal", "average_k", "matched_size", "rare"):
        raise ValueError(f"`part` must be 'conformal', 'average_k', 'matched_size' or 'rare', got {part!r}")
    out = []
    for row in rows:
        labels = {k: row[k] for k in LABELS if k in row}
        for key in row:
            if part == "conformal" and (m := _CONFORMAL_KEY.match(key)):
                method, alpha = m.group(1), float(m.group(2))
                out.append({**labels, "sets": method, "alpha": alpha, **_stats(row, key[: -len("micro")])})
            elif part == "average_k" and (m := _AVERAGE_K_KEY.match(key)):
                out.append({**labels, "K": float(m.group(1)), **_stats(row, key[: -len("micro")])})
            elif part == "matched_size" and (m := _AVERAGE_K_KEY.match(key)):
                k = float(m.group(1))
                out.append({**labels, "K": k, "sets": "average-K", **_stats(row, key[: -len("micro")])})
                for method in C.METHODS:
                    prefix = f"size{M.k_label(k)}_{method}_"
                    if f"{prefix}micro" in row:
                        out.append(
                            {
                                **labels,
                                "K": k,
                                "sets": method,
                                "coverage": row[f"{prefix}micro"],
                                "mean size": row[f"{prefix}size"],
                            }
                        )
        if part == "rare" and "rare_lac" in row:
            for name, sets in (("lac", f"LAC (alpha = {MAIN_ALPHA:g})"), ("avgk", "average-K at LAC's size")):
                out.append(
                    {
                        **labels,
                        "sets": sets,
                        "rarest third": row[f"rare_{name}"],
                        "other classes": row[f"rest_{name}"],
                        "lowest class": row[f"lowest_{name}"],
                    }
                )
    return out


def _stats(row: Mapping[str, Any], prefix: str) -> dict[str, float]:
    return {
        "coverage": row[f"{prefix}micro"],
        "macro coverage": row[f"{prefix}macro"],
        "mean size": row[f"{prefix}size"],
    }


def source_line(reference: Mapping[str, Any]) -> str:
    """One sentence naming what a conformal reference was computed from: arm, preset, training
    seeds, number of runs and, per source reference, its creation time and runs (missing ones too)."""
    if not isinstance(reference, Mapping) or not {"rows", "sources", "arm", "preset", "seeds"} <= set(reference):
        raise ValueError("`reference` must be a loaded conformal reference (rows, sources, arm, preset, seeds)")
    sources = "; ".join(
        f"`{name}_{reference['preset']}.json` of {source.get('created')} ({source.get('runs')} runs"
        + (f", {source['missing']} missing" if source.get("missing") else "")
        + ")"
        for name, source in reference["sources"].items()
    )
    return (
        f"Reference: {reference['arm']} arm, {reference['preset']} preset, training seeds "
        f"{', '.join(map(str, reference['seeds']))}, {len(reference['rows'])} runs, computed from {sources}."
    )


def group_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The columns that tell the models of a reference apart: ``dataset``, ``loss`` and, when some
    model was trained at a K (two-head runs), ``train_k``; what is left is the seed."""
    if not isinstance(rows, (list, tuple)) or not all(isinstance(r, Mapping) for r in rows):
        raise TypeError("`rows` must be a list of reference rows (dicts)")
    return ["dataset", "loss"] + (["train_k"] if any(r.get("train_k") is not None for r in rows) else [])


def reference_findings(rows: Sequence[Mapping[str, Any]], alpha: float = MAIN_ALPHA) -> list[str]:
    """The statements the chapter makes about the reference rows, every number computed: per
    dataset and model, LAC's and APS's coverage at ``alpha`` (mean ± 95% interval over seeds, and
    whether the interval lies above, around or below :math:`1 - \\alpha`) with average-K at matched coverage;
    coverage at the smallest matched mean size among K = 2, 3; and, on long-tailed settings, the
    coverage of the rarest third of the classes against the others."""
    from .experiments import summarize
    from .plotting import method_label

    if not isinstance(rows, (list, tuple)) or not rows or not all(isinstance(r, Mapping) for r in rows):
        raise ValueError("`rows` must be a non-empty list of reference rows")
    alpha = check_alpha(alpha)
    lac, aps = conformal_key("lac", alpha, "micro"), conformal_key("aps", alpha, "micro")
    by = group_columns(rows)

    def model(s: Mapping[str, Any]) -> str:
        trained = "" if s.get("train_k") is None else f" trained at K = {s['train_k']:g}"
        seeds = f"{s['n_seeds']} seed{'s' if s['n_seeds'] != 1 else ''}"
        return f"`{s['dataset']}` ({method_label(s['loss'])}{trained}, {seeds})"

    out = []
    for s in summarize(list(rows), by, [lac, aps, "coverage_k", "coverage_avgk_micro"]):
        low, high = s[lac] - s[f"{lac}_ci95"], s[lac] + s[f"{lac}_ci95"]
        verdict = "above" if low >= 1 - alpha else ("below" if high < 1 - alpha else "consistent with")
        out.append(
            f"{model(s)}: LAC at alpha = {alpha:g} covers "
            f"{interval(s, lac)} of the test inputs ({verdict} the target {1 - alpha:g}, by the interval "
            f"across seeds), APS {interval(s, aps)}; average-K reaches LAC's validation coverage at "
            f"K = {interval(s, 'coverage_k', 2)} and then covers {interval(s, 'coverage_avgk_micro')}."
        )
    sizes = [matched_size_key(k, m, "micro") for k in (2, 3) for m in C.METHODS] + ["avg2_micro", "avg3_micro"]
    for s in summarize(list(rows), by, sizes):
        k = next(
            (k for k in ("2", "3") if not math.isnan(s[f"avg{k}_micro"]) and not math.isnan(s[f"size{k}_aps_micro"])),
            None,
        )
        if k is None:
            continue
        gap = s[f"avg{k}_micro"] - s[f"size{k}_aps_micro"]
        compared = (
            "average-K and APS within 0.005 of each other on average"
            if abs(gap) < 0.005
            else f"average-K {'above' if gap > 0 else 'below'} APS by {abs(gap):.3f} on average"
        )
        out.append(
            f"{model(s)}, matched mean size {k}: average-K covers {interval(s, f'avg{k}_micro')}, LAC "
            f"{interval(s, f'size{k}_lac_micro')}, APS {interval(s, f'size{k}_aps_micro')} ({compared})."
        )
    rare = [r for r in rows if "rare_lac" in r]
    for s in summarize(rare, by, ["rare_lac", "rest_lac", "rare_avgk", "lowest_lac"]) if rare else []:
        verdict = (
            "the marginal guarantee does not reach the rare classes"
            if s["rare_lac"] < 1 - alpha
            else f"on this setting the rare classes keep the coverage of {1 - alpha:g}"
        )
        out.append(
            f"{model(s)}: LAC at alpha = {alpha:g} covers the rarest third of the classes "
            f"{interval(s, 'rare_lac')} against {interval(s, 'rest_lac')} for the others (lowest class "
            f"{interval(s, 'lowest_lac')}); average-K at the same size {interval(s, 'rare_avgk')}: {verdict}."
        )
    return out
