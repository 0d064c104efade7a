r"""Paired verdicts on the papers' claims and the claims ledger (``reference_results/claims.json``).

A claim "method A beats B on metric m" is tested on *paired* per-seed differences
:math:`d_s = m(A, s) - m(B, s)` (same seed: same data draw, same noise pattern, same split), with
the mean :math:`\bar d` and the two-sided 95% Student-t interval
:math:`\bar d \pm t_{0.975, n-1}\, s_d / \sqrt n`:

* **supported** iff the interval lies above 0, **contradicted** iff it lies below 0,
  **inconclusive** otherwise (and with fewer than two seeds).

Against several rivals, B is the rival with the best mean. A claim "the gain is larger where X"
(more ambiguous inputs, rarer classes) needs a gain that is both positive where X holds and larger
there than elsewhere: with per-seed gains :math:`g^{X}_s` and :math:`g^{\neg X}_s`, it is
supported iff the intervals of :math:`g^X` and of :math:`g^X - g^{\neg X}` both lie above 0,
contradicted iff either lies below 0, inconclusive otherwise. Two negative gains never support it.

The ledger is generated from the committed references by :func:`build_ledger`; it is never
written by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from scipy import stats

VERDICTS = ("supported", "contradicted", "inconclusive")


def paired_interval(differences: Sequence[float]) -> dict[str, Any]:
    """Mean, 95% Student-t interval and verdict of paired differences (claimed direction > 0).

    Example:
        >>> r = paired_interval([0.02, 0.03, 0.025])
        >>> r["verdict"], round(r["effect"], 4)
        ('supported', 0.025)
    """
    values = [float(d) for d in differences]
    if any(not math.isfinite(v) for v in values):
        raise ValueError(f"`differences` must be finite, got {values}")
    n = len(values)
    if n == 0:
        raise ValueError("`differences` must not be empty")
    mean = sum(values) / n
    if n < 2:
        return {"effect": mean, "ci95": [math.nan, math.nan], "n_seeds": n, "verdict": "inconclusive"}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    verdict = "supported" if low > 0 else "contradicted" if high < 0 else "inconclusive"
    return {"effect": mean, "ci95": [low, high], "n_seeds": n, "verdict": verdict}


def larger_gain_verdict(gain_where: Sequence[float], gain_elsewhere: Sequence[float]) -> dict[str, Any]:
    """Verdict on "the gain is larger where X": per-seed gains where X holds and elsewhere (paired).

    Example:
        >>> larger_gain_verdict([-0.9, -0.8, -0.85], [0.0, 0.0, 0.0])["verdict"]
        'contradicted'
        >>> larger_gain_verdict([0.05, 0.06, 0.055], [0.01, 0.0, 0.012])["verdict"]
        'supported'
    """
    if len(gain_where) != len(gain_elsewhere):
        raise ValueError("`gain_where` and `gain_elsewhere` must pair the same seeds")
    where = paired_interval(gain_where)
    diff = paired_interval([a - b for a, b in zip(gain_where, gain_elsewhere, strict=True)])
    verdicts = {where["verdict"], diff["verdict"]}
    verdict = (
        "contradicted" if "contradicted" in verdicts else "supported" if verdicts == {"supported"} else "inconclusive"
    )
    return {**diff, "verdict": verdict, "gain_where": where["effect"], "gain_where_ci95": where["ci95"]}


def _select(rows: list[dict[str, Any]], where: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


def _by_seed(rows: list[dict[str, Any]], metric: str) -> dict[int, float]:
    return {r["seed"]: r[metric] for r in rows if r.get(metric) is not None}


def paired_claim(
    rows: list[dict[str, Any]],
    metric: str,
    ours: dict[str, Any],
    rivals: list[dict[str, Any]],
    where: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Paired verdict of ``ours`` (row filter, e.g. ``{"loss": "two_head", "train_k": 3.0}``) against
    the best-on-average of ``rivals`` on ``metric``, within rows matching ``where``; None when runs
    are missing."""
    base = _select(rows, where or {})
    mine = _by_seed(_select(base, ours), metric)
    candidates = []
    for rival in rivals:
        theirs = _by_seed(_select(base, rival), metric)
        common = sorted(set(mine) & set(theirs))
        if common:
            candidates.append((sum(theirs[s] for s in common) / len(common), rival, theirs, common))
    if not mine or not candidates:
        return None
    _, rival, theirs, common = max(candidates, key=lambda c: c[0])
    result = paired_interval([mine[s] - theirs[s] for s in common])
    return {**result, "rival": rival, "ours_mean": sum(mine[s] for s in common) / len(common),
            "rival_mean": sum(theirs[s] for s in common) / len(common)}  # fmt: skip


def gain_claim(
    rows: list[dict[str, Any]],
    metric_where: str,
    metric_elsewhere: str,
    ours: dict[str, Any],
    base: dict[str, Any],
    where: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Verdict on "the gain of ``ours`` over ``base`` is larger on ``metric_where`` (e.g. ambiguous
    inputs) than on ``metric_elsewhere`` (clear inputs)"; None when runs are missing."""
    rows = _select(rows, where or {})
    mine, theirs = _select(rows, ours), _select(rows, base)
    a_w, a_e = _by_seed(mine, metric_where), _by_seed(mine, metric_elsewhere)
    b_w, b_e = _by_seed(theirs, metric_where), _by_seed(theirs, metric_elsewhere)
    seeds = sorted(set(a_w) & set(a_e) & set(b_w) & set(b_e))
    if not seeds:
        return None
    result = larger_gain_verdict([a_w[s] - b_w[s] for s in seeds], [a_e[s] - b_e[s] for s in seeds])
    return {**result, "rival": base}


# ------------------------------------------------------------------------------ the ledger


@dataclass(frozen=True)
class Claim:
    """One claim of a paper, tested in every setting of ``experiment`` that has the runs."""

    id: str
    paper: str
    claim: str
    experiment: str
    metric: str  # may contain {k}
    ours: dict[str, Any]
    rivals: list[dict[str, Any]] = field(default_factory=list)
    where: dict[str, Any] = field(default_factory=dict)
    kind: str = "paired"  # or "gain": metric is the "where" metric, elsewhere_metric the other
    elsewhere_metric: str = ""
    ks: tuple[float, ...] = ()


P2_WEAK = [{"loss": n} for n in ("assume_negative", "an_ls", "wan", "epr", "role")]
CE = {"loss": "cross_entropy"}

CLAIMS = [
    Claim("P1-noise-topk-vs-ce", "P1", "noised top-K beats cross-entropy in top-K accuracy under label noise "
          "(best-validation checkpoint)", "label_noise", "test_top{k}_micro", {"loss": "noised_topk"}, [CE],
          {"label_noise": 0.6}),
    Claim("P1-noise-topk-vs-ce-last", "P1", "noised top-K beats cross-entropy in top-K accuracy under label noise "
          "(last epoch: no late degradation)", "label_noise", "last_top{k}_micro", {"loss": "noised_topk"}, [CE],
          {"label_noise": 0.6}),
    Claim("P1-noise-topk-vs-svm", "P1", "noised top-K beats the smooth top-K SVM under label noise", "label_noise",
          "test_top{k}_micro", {"loss": "noised_topk"}, [{"loss": "smooth_topk_svm"}], {"label_noise": 0.6}),
    Claim("P1-clean-topk-vs-ce", "P1", "noised top-K beats cross-entropy in top-K accuracy without noise",
          "label_noise", "test_top{k}_micro", {"loss": "noised_topk"}, [CE], {"label_noise": 0.0}),
    Claim("P1-lt-imbalanced-vs-ce", "P1", "imbalanced noised top-K beats cross-entropy in macro top-K accuracy on "
          "long-tailed data", "long_tail", "test_top{k}_macro", {"loss": "imbalanced_noised_topk"}, [CE]),
    Claim("P1-lt-imbalanced-vs-rivals", "P1", "imbalanced noised top-K beats focal, LDAM and balanced noised top-K "
          "in macro top-K accuracy", "long_tail", "test_top{k}_macro", {"loss": "imbalanced_noised_topk"},
          [{"loss": "focal"}, {"loss": "ldam"}, {"loss": "noised_topk"}]),
    Claim("P1-lt-balanced-vs-ce", "P1", "balanced noised top-K beats cross-entropy in macro top-K accuracy on "
          "long-tailed data", "long_tail", "test_top{k}_macro", {"loss": "noised_topk"}, [CE]),
    Claim("P2-twohead-vs-softmax", "P2", "the two-head loss beats softmax thresholding in average-K accuracy",
          "average_k", "test_avg{k}_micro", {"loss": "two_head"}, [CE], ks=(1.5, 2.0, 3.0, 5.0)),
    Claim("P2-twohead-vs-weak", "P2", "the two-head loss beats the weakly supervised multi-label losses (best of "
          "AN, AN-LS, WAN, EPR, ROLE) in average-K accuracy", "average_k", "test_avg{k}_micro",
          {"loss": "two_head"}, P2_WEAK, ks=(2.0, 3.0, 5.0)),
    Claim("P2-gain-ambiguous", "P2", "the two-head gain over softmax thresholding is larger for more ambiguous "
          "inputs (top vs bottom 20% of Bayes entropy)", "average_k", "test_avg{k}_ambiguous", {"loss": "two_head"},
          [CE], kind="gain", elsewhere_metric="test_avg{k}_clear", ks=(3.0,)),
    Claim("P2-lt-twohead-vs-softmax", "P2", "the two-head loss beats softmax thresholding in macro average-K "
          "accuracy on long-tailed data", "average_k_long_tail", "test_avg{k}_macro", {"loss": "two_head"}, [CE],
          ks=(3.0,)),
    Claim("P2-gain-rare", "P2", "the two-head gain over softmax thresholding is larger for rare classes (rarest vs "
          "most frequent third)", "average_k_long_tail", "test_avg{k}_tail", {"loss": "two_head"}, [CE],
          kind="gain", elsewhere_metric="test_avg{k}_head", ks=(3.0,)),
]  # fmt: skip


def _ks_of(claim: Claim, rows: list[dict[str, Any]], setting_rows: list[dict[str, Any]]) -> list[float]:
    if claim.ks:
        trained = {r.get("train_k") for r in setting_rows if r.get("loss") == claim.ours.get("loss")}
        return [k for k in claim.ks if k in trained]
    return [None]


def evaluate_claim(claim: Claim, reference: dict[str, Any], settings: dict[str, dict[str, Any]]) -> list[dict]:
    """Ledger entries of one claim: one per dataset (and K) of the reference that has the runs."""
    from ..evaluation import k_label

    entries = []
    rows = reference["rows"]
    for dataset in sorted({r["dataset"] for r in rows}):
        setting_rows = _select(rows, {"dataset": dataset, **claim.where})
        info = settings.get(dataset, {})
        for k in _ks_of(claim, rows, setting_rows):
            k_eval = k if k is not None else info.get("k")
            name = k_label(k_eval)
            metric = claim.metric.format(k=name)
            ours = {**claim.ours, **({"train_k": k} if k is not None else {})}
            rivals = [{**r, **({"train_k": k} if k is not None and r.get("loss") in _k_dependent() else {})}
                      for r in claim.rivals]  # fmt: skip
            if claim.kind == "gain":
                result = gain_claim(setting_rows, metric, claim.elsewhere_metric.format(k=name), ours, rivals[0])
            else:
                result = paired_claim(setting_rows, metric, ours, rivals)
            if result is None:
                continue
            entries.append(
                {
                    "id": claim.id,
                    "paper": claim.paper,
                    "claim": claim.claim,
                    "dataset": dataset,
                    "n_classes": info.get("n_classes"),
                    "preset": reference["preset"],
                    "K": k_eval,
                    "metric": metric,
                    "effect": result["effect"],
                    "ci95": result["ci95"],
                    "n_seeds": result["n_seeds"],
                    "verdict": result["verdict"],
                    "rival": result["rival"].get("loss"),
                    **{key: result[key] for key in ("ours_mean", "rival_mean", "gain_where") if key in result},
                }
            )
    return entries


def _k_dependent() -> tuple[str, ...]:
    from ..experiments import K_DEPENDENT

    return K_DEPENDENT


def setting_info(name: str, preset: str) -> dict[str, dict[str, Any]]:
    """Per dataset label of an experiment: number of classes and the K its claims are tested at."""
    from ..experiments import get_experiment

    out = {}
    for s in get_experiment(name).preset(preset).settings:
        n_classes = s.options.get(
            "n_classes", {"fashion_mnist": 10, "cifar100": 100, "plantnet300k": 1081}.get(s.dataset)
        )
        out[s.labels["dataset"]] = {"n_classes": n_classes, "k": s.tune_k}
    return out


def build_ledger(references: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every claim evaluated on the given references (``{experiment name: reference dict}``)."""
    ledger = []
    for claim in CLAIMS:
        reference = references.get(claim.experiment)
        if reference is not None:
            ledger += evaluate_claim(claim, reference, setting_info(claim.experiment, reference["preset"]))
    return ledger


def ledger_markdown(ledger: list[dict[str, Any]]) -> str:
    """The ledger as Markdown: one table of the claims (id -> text), one of the entries (effect and
    interval in percentage points), so that neither is too wide for a page."""
    claims = {e["id"]: e["claim"] for e in ledger}
    lines = ["| id | claim |", "|---|---|", *(f"| {i} | {text} |" for i, text in claims.items()), ""]
    lines += [
        "| id | dataset | K | metric | effect (pp) | 95% CI (pp) | seeds | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in ledger:
        low, high = e["ci95"]
        ci = f"[{100 * low:+.2f}, {100 * high:+.2f}]" if math.isfinite(low) else "n/a"
        lines.append(
            f"| {e['id']} | {e['dataset']} | {e['K']:g} | `{e['metric']}` | {100 * e['effect']:+.2f} "
            f"| {ci} | {e['n_seeds']} | **{e['verdict']}** |"
        )
    return "\n".join(lines)


def verdict_counts(ledger: list[dict[str, Any]]) -> str:
    """One Markdown line per paper: how many entries are supported, contradicted, inconclusive."""
    if not ledger:
        return "_The ledger is empty._"
    lines = []
    for paper in sorted({e["paper"] for e in ledger}):
        mine = [e for e in ledger if e["paper"] == paper]
        counts = ", ".join(f"{sum(e['verdict'] == v for e in mine)} {v}" for v in VERDICTS)
        lines.append(f"- **{paper}**: {len(mine)} entries: {counts}.")
    return "\n".join(lines)
