r"""The claims ledger (``reference_results/claims.json``, format 2): each claim of the two papers,
tested on paired per-seed evidence in every setting and arm the references hold.

**Evidence.** A claim "``ours`` beats ``rival`` on metric m" is tested on paired per-seed
differences in the claimed direction, :math:`d_s = m(\text{ours}, s) - m(\text{rival}, s)` (same
seed: same data draw, same noise pattern, same split; for a time, :math:`d_s = \ln t_\text{rival}
- \ln t_\text{ours}`, so :math:`d_s > 0` always favours the claim). Against several rivals the
rival is the strongest on average. The statistics are in :mod:`avgk_book.stats`.

**Tests** (``test`` of an entry):

* ``"superiority"`` ("A outperforms B", "A is cheaper than B"): the two-sided paired t test of
  :math:`\delta = 0`; the sign of :math:`\bar d` gives the direction. Two-sided because both
  outcomes are verdicts: *supported* if significant with :math:`\bar d > 0`, *contradicted* if
  significant with :math:`\bar d < 0` (each direction is a one-sided test at :math:`\alpha/2`).
* ``"equivalence"`` ("A is competitive with B", ``margin`` :math:`\Delta` stated in the entry):
  TOST; *supported* if :math:`H_0: |\delta| \ge \Delta` is rejected (the 90% interval lies inside
  :math:`\pm\Delta`), *contradicted* if the one-sided test of :math:`H_0: \delta \ge -\Delta`
  rejects (``inferiority``: A is worse than B by more than the margin). Being better by more than
  the margin does not contradict "competitive". The entry's ``p`` is the TOST p (``ci90`` beside
  ``ci95``); the margin is :data:`EQUIVALENCE_MARGIN` (1 percentage point of top-K accuracy).
* ``"gain"`` ("the gain of A over B is larger where X"): ``per_seed`` holds, per method, the
  accuracy where X minus the accuracy elsewhere, so :math:`d_s` is the gain where X minus the gain
  elsewhere (two-sided t test); a second test, ``gain_where``, asks whether the gain where X is
  itself positive. *Supported* iff both are significantly positive, *contradicted* iff either is
  significantly negative (two losses never make a "larger gain").

**Holm over the whole ledger.** Every p-value of every entry (the main test, ``inferiority`` and
``gain_where_test``) is one hypothesis of one family; :func:`~avgk_book.stats.holm` adjusts them
all (``p_holm``), and "significant" means ``p_holm < alpha`` (:data:`ALPHA` = 0.05). An entry with
fewer than two seeds has no test (``p`` is None, verdict *inconclusive*).

**Preconditions.** A claim whose mechanism needs a condition names it; the condition is computed
from the reference's runs (:func:`flipped_label_fit`), never typed. Measured absent, the verdict is
*not reproduced here* whatever the statistics say; not measured, the verdict stands and the entry
says "precondition not measured".

**No duplicated evidence.** An entry whose seeds and per-seed values equal another entry's of the
same arm and setting (e.g. best epoch = last epoch in every run) is merged into the first one,
with a note, before Holm. Fewer than :data:`MIN_SEEDS` seeds is flagged in ``notes``.

**Reference shape, two arms.** A reference (``<experiment>_<preset>.json``) holds either

* ``"arms": {"paper": {...}, "tuned": {...}}``, each arm a dict with the keys of a one-arm
  reference (``rows``, and ``preset``, ``seeds``, ``tuning`` where it has them; an arm without
  ``preset`` takes the reference's); or
* one arm at the top level (``rows``, ``tuning``, ...: today's shape), which is the arm named by
  an optional top-level ``"arm"`` key, ``"tuned"`` by default.

Rows are the rows of :func:`avgk_book.experiments.run_experiment` (labels, ``seed``, ``test_*`` and
``last_*`` metrics). For the label-noise precondition a cross-entropy row carries ``history``: a
list of epoch dicts, each with ``train_fit = {"noisy_acc", "clean_acc", "flipped_acc"}``
(training accuracy on the noisy labels, on the clean labels, and on the flipped samples' noisy
labels only).

**The cost claim** comes from a loss benchmark (``bench_losses_<device>.json``) whose rows hold
``repeats_ms = {loss name: [ms per round, ...]}``: at least :data:`MIN_SEEDS` rounds, each round
timing every loss once (interleaved), so that round r pairs the losses. A benchmark without
repeats gives no entry but a ``skipped`` note saying so. A timing has no training recipe: its
entries are filed under the "paper" arm (P1's loss as P1 defines it), once.

**An entry** (format 2) holds ``id``, ``paper``, ``claim`` (the claim as the paper words it),
``arm``, ``experiment``, ``preset``, ``setting`` (labels), ``dataset``, ``n_classes``, ``K``,
``metric``, ``unit`` (``"accuracy"`` or ``"log_ratio"``), ``ours``, ``rival`` (method names),
``test`` (and ``margin``), ``per_seed = {"seeds", "ours", "rival"}`` in seed order, ``n_seeds``,
``ours_mean``, ``rival_mean``, ``effect`` (mean of :math:`d_s`), ``ci95`` (two-sided Student-t),
``p``, ``p_holm``, the extra tests (``inferiority``; ``gain_where`` and ``gain_where_test``),
``precondition`` when the
claim has one, ``control`` when it names a control setting (:func:`control_contrast`, protocol
A10: a diagnosis, never the verdict), ``tuning`` (trials and grid-edge choices of both methods,
when the arm was tuned), ``best_epoch_is_last``, ``verdict``, ``notes`` and ``chapter`` (the
notebook that explains it).

The ledger is generated from the committed references by :func:`ledger_document` (``python
tools/reference_runs.py --ledger-only``); it is never written by hand.

**Reading it** (ledger page, chapters, intro): :func:`entries_for` (one experiment's entries as
the committed ledger gives them, Holm over the whole ledger), :func:`ledger_markdown` (claims
table, then both arms side by side), :func:`preconditions_markdown`, :func:`verdict_counts`,
:func:`forest_data` and :func:`forest_plot` (both arms per claim), :func:`main_result` (one
sentence), :func:`intro_markdown` (the intro page's main result) and :func:`synthesis_markdown`
(a paragraph with links to the chapters).
"""

from __future__ import annotations

import json
import math
import posixpath
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import stats as S
from .experiments.spec import ARMS

ALPHA = 0.05
MIN_SEEDS = 5
FORMAT = 2
VERDICTS = ("supported", "contradicted", "inconclusive", "not reproduced here")
TESTS = ("superiority", "equivalence", "gain")
FIT_THRESHOLD = 0.5  # share of the flipped training labels cross-entropy must fit at some epoch
#: the smallest headroom a practitioner would act on (book/protocol.md, A3): 1 percentage point
HEADROOM_FLOOR = 0.01
#: power of the minimum detectable effect (book/protocol.md, A2)
POWER = 0.8
#: how an entry counts in the headline: a plain finding, a verdict whose precondition is absent,
#: a verdict decided by a named confound (protocol A4), an entry of a setting that is not evidence
#: (protocol A5)
STATUSES = ("finding", "precondition absent", "confounded", "not counted")
#: settings (experiment, dataset label) whose entries are shown but not counted as evidence, with
#: the reason (protocol A5; the setting that follows P1's rule is "fashion_mnist-pairs", A11)
NOT_EVIDENCE = {
    ("label_noise", "fashion_mnist"): "K = 2 is below the size of Fashion-MNIST's noise groups (4 and 3 classes), "
    "a trap P1's design (noise blocks of K classes) avoids: a true label pushed to rank K + 1 gets a flat hinge "
    "(chapter 4); book/protocol.md, A5",
}


# ------------------------------------------------------------------------------ single tests


def paired_interval(differences: Sequence[float]) -> dict[str, Any]:
    """Mean, 95% Student-t interval and the *uncorrected* verdict of one set of paired differences
    (claimed direction > 0): supported iff the interval lies above 0, contradicted iff below 0.
    The ledger corrects for multiplicity (Holm); this one-off reading is for exercises.

    Example:
        >>> r = paired_interval([0.02, 0.03, 0.025])
        >>> r["verdict"], round(r["effect"], 4)
        ('supported', 0.025)
    """
    values = S._reals(differences, "differences", min_len=1)
    if len(values) < 2:
        return {"effect": values[0], "ci95": [math.nan, math.nan], "n_seeds": 1, "verdict": "inconclusive"}
    r = S.t_test(values)
    low, high = r["ci"]
    verdict = "supported" if low > 0 else "contradicted" if high < 0 else "inconclusive"
    return {"effect": r["effect"], "ci95": [low, high], "n_seeds": r["n"], "p": r["p"], "verdict": verdict}


def larger_gain_verdict(gain_where: Sequence[float], gain_elsewhere: Sequence[float]) -> dict[str, Any]:
    """Uncorrected verdict on "the gain is larger where X" from per-seed gains where X holds and
    elsewhere (paired): supported iff the gain where X and its excess over the gain elsewhere are
    both significantly positive, contradicted iff either is significantly negative.

    Example:
        >>> larger_gain_verdict([-0.9, -0.8, -0.85], [0.0, 0.0, 0.0])["verdict"]
        'contradicted'
        >>> larger_gain_verdict([0.05, 0.06, 0.055], [0.01, 0.0, 0.012])["verdict"]
        'supported'
    """
    where = paired_interval(gain_where)
    diff = paired_interval(S.paired_differences(gain_where, gain_elsewhere))
    verdicts = {where["verdict"], diff["verdict"]}
    verdict = (
        "contradicted" if "contradicted" in verdicts else "supported" if verdicts == {"supported"} else "inconclusive"
    )
    return {**diff, "verdict": verdict, "gain_where": where["effect"], "gain_where_ci95": where["ci95"]}


# ------------------------------------------------------------------------------ preconditions


def flipped_label_fit(histories: Sequence[Sequence[Mapping[str, Any]]], threshold: float = FIT_THRESHOLD) -> dict:
    r"""Precondition of the label-noise claims: did cross-entropy fit the flipped training labels?

    ``histories`` holds one training history per seed (a list of epoch dicts); an epoch measures
    the fit in ``train_fit["flipped_acc"]``, the training accuracy on the noisy labels of the
    flipped samples only. Per seed :math:`f_s = \max_e \text{flipped\_acc}_e`; the measured value
    is :math:`\bar f = \frac1n \sum_s f_s`, and the precondition is met iff
    :math:`\bar f \ge` ``threshold``. A history without ``train_fit`` in every epoch (or no
    history at all) gives ``met = None``, ``status = "precondition not measured"``.

    Example:
        >>> fit = lambda x: {"train_fit": {"noisy_acc": 0.9, "clean_acc": 0.5, "flipped_acc": x}}
        >>> r = flipped_label_fit([[fit(0.2), fit(0.8)], [fit(0.1), fit(0.6)]])
        >>> r["measured"], r["met"]
        (0.7, True)
        >>> flipped_label_fit([[{"epoch": 1}]])["status"]
        'precondition not measured'
    """
    if isinstance(histories, (str, bytes, Mapping)) or not isinstance(histories, Sequence):
        raise TypeError(f"`histories` must be a sequence of per-seed histories, got {type(histories).__name__}")
    level = S._real(threshold, "threshold")
    if not 0.0 < level <= 1.0:
        raise ValueError(f"`threshold` must lie in (0, 1], got {threshold!r}")
    base = {
        "name": "cross-entropy fitted the flipped training labels",
        "rule": "mean over seeds of the max over epochs of cross-entropy's training accuracy on the flipped "
        "samples' noisy labels >= threshold",
        "threshold": level,
    }
    per_seed = []
    for history in histories:
        if isinstance(history, (str, bytes, Mapping)) or not isinstance(history, Sequence):
            raise TypeError(f"`histories` must hold lists of epoch dicts, got {type(history).__name__}")
        fits = [epoch.get("train_fit") if isinstance(epoch, Mapping) else None for epoch in history]
        if not fits or any(not isinstance(f, Mapping) or "flipped_acc" not in f for f in fits):
            return {**base, "measured": None, "per_seed": None, "met": None, "status": "precondition not measured"}
        per_seed.append(max(S._real(f["flipped_acc"], "flipped_acc") for f in fits))
    if not per_seed:
        return {**base, "measured": None, "per_seed": None, "met": None, "status": "precondition not measured"}
    measured = math.fsum(per_seed) / len(per_seed)
    met = measured >= level
    return {**base, "measured": measured, "per_seed": per_seed, "met": met, "status": "met" if met else "absent"}


def _ce_fits_flipped_labels(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ce = sorted((r for r in rows if r.get("loss") == "cross_entropy"), key=lambda r: r["seed"])
    return flipped_label_fit([r.get("history") or [] for r in ce])


def headroom(rows: list[dict[str, Any]], metric: str, seeds: list[int]) -> dict[str, Any]:
    r"""Precondition of P2's superiority claims (``book/protocol.md``, A3): room above the rival.

    ``rows`` are the rival's runs, ``metric`` the entry's (e.g. ``test_avg3_micro``). On synthetic
    data each row carries ``bayes_avg{K}_micro``, the expected accuracy of the Bayes-optimal
    average-K sets on its seed's test inputs; the headroom is
    :math:`h = \frac1n \sum_s (\text{Bayes}_s - \text{rival}_s)` (``bound = "oracle"``). Without an
    oracle (real data) :math:`1 - \overline{\text{rival}}` bounds it from above (``bound = "upper"``).
    A macro metric on a long-tailed split has no oracle bound here (the Bayes sets maximise micro
    accuracy), nor has a row without the Bayes column: ``measured = None``. The decision
    (:func:`decide_headroom`) needs the entry's minimum detectable effect; an absent headroom
    turns a supported or inconclusive verdict into "not reproduced here", never a significant
    loss (protocol A9).

    Example:
        >>> rows = [{"seed": 0, "test_avg3_micro": 0.70, "bayes_avg3_micro": 0.75},
        ...         {"seed": 1, "test_avg3_micro": 0.72, "bayes_avg3_micro": 0.75}]
        >>> r = headroom(rows, "test_avg3_micro", [0, 1])
        >>> round(r["measured"], 4), r["bound"]
        (0.04, 'oracle')
    """
    base = {
        "name": "headroom above the rival",
        "rule": f"headroom >= max({HEADROOM_FLOOR:g}, the entry's minimum detectable effect)",
        "threshold": None,
        "met": None,
    }
    by_seed = {r["seed"]: r for r in rows}
    values = [by_seed[s].get(metric) for s in seeds if s in by_seed]
    if not values or None in values:
        return {**base, "measured": None, "bound": None, "status": "precondition not measured"}
    bayes_key = "bayes_" + metric.split("_", 1)[1]
    ceilings = [by_seed[s].get(bayes_key) for s in seeds]
    if metric.endswith("_micro") and None not in ceilings:
        gaps = [c - v for c, v in zip(ceilings, values, strict=True)]
        return {**base, "measured": math.fsum(gaps) / len(gaps), "bound": "oracle", "status": "pending"}
    if not metric.endswith("_micro") or any(by_seed[s].get("bayes_avg1_micro") for s in seeds):
        return {**base, "measured": None, "bound": None, "status": "precondition not measured"}
    gap = 1.0 - math.fsum(values) / len(values)
    return {**base, "measured": gap, "bound": "upper", "status": "pending"}


def decide_headroom(pre: dict[str, Any], mde: float | None) -> dict[str, Any]:
    """The headroom decision (:func:`headroom`) once the entry's MDE is known: present iff the
    headroom is at least ``max(HEADROOM_FLOOR, mde)``; from an upper bound only absence can be
    concluded (present stays unknown)."""
    if pre.get("measured") is None:
        return pre
    threshold = max(HEADROOM_FLOOR, mde if mde is not None and math.isfinite(mde) else 0.0)
    room = pre["measured"] >= threshold
    met = room if pre["bound"] == "oracle" else (None if room else False)
    status = {True: "met", False: "absent", None: "upper bound above the threshold: not decided"}[met]
    if pre.get("decides") is False:  # protocol A12: a gain pattern's headroom is reported only
        status = f"reported ({'room' if room else 'no room'}), not deciding"
    return {**pre, "threshold": threshold, "met": met, "status": status}


PRECONDITIONS = {"ce_fits_flipped_labels": _ce_fits_flipped_labels, "headroom": None}


# ------------------------------------------------------------------------------ the claims


@dataclass(frozen=True)
class Claim:
    """One claim of a paper, tested in every setting (and arm) of ``experiment`` that has the runs.

    ``kind`` is ``"superiority"``, ``"equivalence"`` (with ``margin``, in the metric's units) or
    ``"gain"`` (``metric`` where the claim looks, ``elsewhere_metric`` the rest); ``"cost"`` reads
    a loss benchmark instead of a reference. ``metric`` may contain ``{k}``. ``control`` (protocol
    A10) names a control setting, e.g. ``{"label_noise": 0.0}``: the entry then also reports, as a
    diagnosis beside its verdict, the same contrast there and the difference of the two
    (:func:`control_contrast`); the verdict stays on the claim's own contrast.
    """

    id: str
    paper: str
    claim: str
    experiment: str
    metric: str
    ours: dict[str, Any]
    rivals: list[dict[str, Any]] = field(default_factory=list)
    where: dict[str, Any] = field(default_factory=dict)
    kind: str = "superiority"
    elsewhere_metric: str = ""
    ks: tuple[float, ...] = ()
    margin: float | None = None
    precondition: str = ""
    chapter: str = ""
    control: dict[str, Any] = field(default_factory=dict)


P2_WEAK = [{"loss": n} for n in ("assume_negative", "an_ls", "wan", "epr", "role")]
CE = {"loss": "cross_entropy"}
NOISE = {"label_noise": 0.6}
CLEAN = {"label_noise": 0.0}
CH = {n: f"notebooks/{n}.ipynb" for n in ("03_what_it_costs", "04_label_noise", "05_long_tail", "07_two_head_loss",
                                          "08_where_gains_come_from")}  # fmt: skip
EQUIVALENCE_MARGIN = 0.01  # 1 percentage point of top-K accuracy

CLAIMS = [
    Claim("P1-noise-topk-vs-ce", "P1", "the noised top-K loss outperforms cross-entropy in top-K accuracy under "
          "label noise (best-validation checkpoint)", "label_noise", "test_top{k}_micro", {"loss": "noised_topk"},
          [CE], NOISE, precondition="ce_fits_flipped_labels", chapter=CH["04_label_noise"], control=CLEAN),
    Claim("P1-noise-topk-vs-ce-last", "P1", "the noised top-K loss outperforms cross-entropy in top-K accuracy "
          "under label noise (last epoch: no late degradation)", "label_noise", "last_top{k}_micro",
          {"loss": "noised_topk"}, [CE], NOISE, precondition="ce_fits_flipped_labels", chapter=CH["04_label_noise"],
          control=CLEAN),
    Claim("P1-noise-topk-vs-svm", "P1", "the noised top-K loss is competitive with the state-of-the-art top-K loss "
          "(smooth top-K SVM) in top-K accuracy under label noise", "label_noise", "test_top{k}_micro",
          {"loss": "noised_topk"}, [{"loss": "smooth_topk_svm"}], NOISE, kind="equivalence",
          margin=EQUIVALENCE_MARGIN, chapter=CH["04_label_noise"]),
    Claim("P1-clean-topk-vs-ce", "P1", "the noised top-K loss performs very well on balanced data: top-K accuracy "
          "on a par with cross-entropy without label noise", "label_noise", "test_top{k}_micro",
          {"loss": "noised_topk"}, [CE], CLEAN, kind="equivalence", margin=EQUIVALENCE_MARGIN,
          chapter=CH["04_label_noise"]),
    Claim("P1-cost", "P1", "the noised top-K loss has a significantly lower computational time than the "
          "state-of-the-art top-K loss (smooth top-K SVM)", "bench_losses", "ms (forward + backward)",
          {"loss": "ours_noised"}, [{"loss": "ours_svm"}, {"loss": "difftopk_svm"}], kind="cost",
          chapter=CH["03_what_it_costs"]),
    Claim("P1-lt-imbalanced-vs-ce", "P1", "on heavy-tailed data the imbalanced noised top-K loss significantly "
          "outperforms cross-entropy in macro top-K accuracy", "long_tail", "test_top{k}_macro",
          {"loss": "imbalanced_noised_topk"}, [CE], chapter=CH["05_long_tail"]),
    Claim("P1-lt-imbalanced-vs-rivals", "P1", "on heavy-tailed data the imbalanced noised top-K loss significantly "
          "outperforms the other baseline losses (best of focal, LDAM, balanced noised top-K, smooth top-K SVM) in "
          "macro top-K accuracy", "long_tail", "test_top{k}_macro", {"loss": "imbalanced_noised_topk"},
          [{"loss": "focal"}, {"loss": "ldam"}, {"loss": "noised_topk"}, {"loss": "smooth_topk_svm"}],
          chapter=CH["05_long_tail"]),
    Claim("P1-lt-balanced-vs-ce", "P1", "on heavy-tailed data the balanced noised top-K loss outperforms "
          "cross-entropy in macro top-K accuracy", "long_tail", "test_top{k}_macro", {"loss": "noised_topk"}, [CE],
          chapter=CH["05_long_tail"]),
    Claim("P2-twohead-vs-softmax", "P2", "the two-head loss outperforms the softmax baseline (thresholded "
          "cross-entropy) in average-K accuracy", "average_k", "test_avg{k}_micro", {"loss": "two_head"}, [CE],
          ks=(1.5, 2.0, 3.0, 5.0), precondition="headroom", chapter=CH["07_two_head_loss"]),
    Claim("P2-twohead-vs-weak", "P2", "the two-head loss outperforms several loss functions designed for weakly "
          "supervised multi-label classification (best of AN, AN-LS, WAN, EPR, ROLE) in average-K accuracy",
          "average_k", "test_avg{k}_micro", {"loss": "two_head"}, P2_WEAK, ks=(2.0, 3.0, 5.0),
          precondition="headroom", chapter=CH["07_two_head_loss"]),
    Claim("P2-gain-ambiguous", "P2", "the gains over the softmax baseline are larger the higher the uncertainty "
          "(most vs least ambiguous 20% of test inputs by Bayes entropy)", "average_k", "test_avg{k}_ambiguous",
          {"loss": "two_head"}, [CE], kind="gain", elsewhere_metric="test_avg{k}_clear", ks=(3.0,),
          precondition="headroom", chapter=CH["08_where_gains_come_from"]),
    Claim("P2-lt-twohead-vs-softmax", "P2", "the two-head loss outperforms the softmax baseline in macro average-K "
          "accuracy on long-tailed data", "average_k_long_tail", "test_avg{k}_macro", {"loss": "two_head"}, [CE],
          ks=(3.0,), precondition="headroom", chapter=CH["08_where_gains_come_from"]),
    Claim("P2-gain-rare", "P2", "the gains are larger especially for classes with few samples (rarest vs most "
          "frequent third of the classes)", "average_k_long_tail", "test_avg{k}_tail", {"loss": "two_head"}, [CE],
          kind="gain", elsewhere_metric="test_avg{k}_head", ks=(3.0,), precondition="headroom",
          chapter=CH["08_where_gains_come_from"]),
]  # fmt: skip


# ------------------------------------------------------------------------------ references and arms


def reference_arms(reference: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The arms of a reference, ``{arm: arm reference}`` (shapes in the module docstring); every
    arm reference gets the reference's ``preset`` when it has none.

    Example:
        >>> list(reference_arms({"preset": "cpu", "rows": []}))
        ['tuned']
        >>> arms = reference_arms({"preset": "cpu", "arms": {"paper": {"rows": []}, "tuned": {"rows": []}}})
        >>> sorted(arms), arms["paper"]["preset"]
        (['paper', 'tuned'], 'cpu')
    """
    if not isinstance(reference, Mapping):
        raise TypeError(f"`reference` must be a dict, got {type(reference).__name__}")
    if "arms" in reference:
        arms = reference["arms"]
        if not isinstance(arms, Mapping) or not arms:
            raise ValueError("`reference` 'arms' must be a non-empty dict {arm: arm reference}")
    else:
        arms = {reference.get("arm", "tuned"): reference}
    out = {}
    for arm, part in arms.items():
        if arm not in ARMS:
            raise ValueError(f"`reference` arm must be one of {ARMS}, got {arm!r}")
        if not isinstance(part, Mapping) or not isinstance(part.get("rows"), list):
            raise ValueError(f"`reference` arm {arm!r} must be a dict with a list of 'rows'")
        preset = part.get("preset", reference.get("preset"))
        if not isinstance(preset, str):
            raise ValueError(f"`reference` arm {arm!r} has no 'preset'")
        out[arm] = {**part, "preset": preset}
    return out


def usable_reference(reference: Mapping[str, Any] | None) -> bool:
    """Whether a reference feeds the ledger: an ``arms`` reference with runs in some arm, or a
    one-arm reference with runs that is a paper arm or of the current tuned format (with its
    ``tuning`` record; older files without one are left out)."""
    if not reference:
        return False
    if "arms" in reference:
        return any(part.get("rows") for part in reference_arms(reference).values())
    return bool(reference.get("rows")) and ("tuning" in reference or reference.get("arm") == "paper")


def setting_info(name: str, preset: str) -> dict[str, dict[str, Any]]:
    """Per dataset label of an experiment: number of classes and the K its claims are tested at."""
    from avgk_lib.data import dataset_info

    from .experiments import get_experiment

    out = {}
    for s in get_experiment(name).preset(preset).settings:
        out[s.labels["dataset"]] = {"n_classes": dataset_info(s.dataset).classes(s.options), "k": s.tune_k}
    return out


def _k_dependent() -> tuple[str, ...]:
    from .experiments import K_DEPENDENT

    return K_DEPENDENT


def tuning_summary(tuning: Mapping[str, Any], setting: Mapping[str, Any], method: str) -> dict[str, Any] | None:
    """The tuning record of ``method`` in ``setting``: number of trials, the choice, and each knob
    chosen at an edge of the values tried (unbracketed); None when the arm has no such record.

    Example:
        >>> grid = [{"lr": 0.1, "val": 0.5}, {"lr": 0.3, "val": 0.6}]
        >>> tuning_summary({"dataset=d/ce": {"grid": grid, "chosen": {"lr": 0.3}}}, {"dataset": "d"}, "ce")["edges"]
        ['lr=0.3 at the top of the values tried (0.1 to 0.3)']
    """
    if not isinstance(tuning, Mapping) or not isinstance(setting, Mapping):
        raise TypeError("`tuning` and `setting` must be dicts")
    labels = {f"{k}={v}" for k, v in setting.items()}
    for key, entry in tuning.items():
        *key_labels, name = key.split("/")
        if name != method or set(key_labels) != labels:
            continue
        grid, chosen = entry.get("grid", []), entry.get("chosen", {})
        edges = []
        for knob, value in chosen.items():
            tried = sorted({p[knob] for p in grid if isinstance(p.get(knob), (int, float))})
            if len(tried) > 1 and value in (tried[0], tried[-1]):
                side = "top" if value == tried[-1] else "bottom"
                edges.append(f"{knob}={value:g} at the {side} of the values tried ({tried[0]:g} to {tried[-1]:g})")
        return {"trials": len(grid), "chosen": dict(chosen), "edges": edges}
    return None


# ------------------------------------------------------------------------------ entries


def _select(rows: list[dict[str, Any]], where: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


def _by_seed(rows: list[dict[str, Any]], metric: str) -> dict[int, float]:
    return {r["seed"]: r[metric] for r in rows if r.get(metric) is not None}


def _difference(rows, metric: str, elsewhere: str) -> dict[int, float]:
    where, rest = _by_seed(rows, metric), _by_seed(rows, elsewhere)
    return {s: where[s] - rest[s] for s in where if s in rest}


def _strongest(mine: dict, candidates: list[tuple[dict, dict]], higher_is_better: bool):
    """The rival with the best mean over the seeds it shares with ``mine``: (filter, values, seeds)."""
    scored = []
    for rival, theirs in candidates:
        common = sorted(set(mine) & set(theirs))
        if common:
            mean = sum(theirs[s] for s in common) / len(common)
            scored.append((mean if higher_is_better else -mean, rival, theirs, common))
    if not scored:
        return None
    _, rival, theirs, common = max(scored, key=lambda c: c[0])
    return rival, theirs, common


def _test(kind: str, d: list[float], margin: float | None) -> dict[str, Any]:
    """The main test of an entry (and its extra test), from per-seed differences ``d``."""
    if len(d) < 2:
        return {"ci95": [math.nan, math.nan], "p": None}
    main = S.t_test(d)
    out: dict[str, Any] = {"ci95": main["ci"], "p": main["p"]}
    if kind == "equivalence":
        eq = S.tost(d, margin)
        inferior = S.t_test(d, "less", null=-margin)
        out.update(p=eq["p"], ci90=eq["ci90"], inferiority={"null": -margin, "p": inferior["p"]})
    return out


def _entry_base(claim: Claim, arm: str, preset: str, setting: dict, info: dict, k_eval) -> dict[str, Any]:
    return {
        "id": claim.id,
        "paper": claim.paper,
        "claim": claim.claim,
        "arm": arm,
        "experiment": claim.experiment,
        "preset": preset,
        "setting": setting,
        "dataset": setting.get("dataset"),
        "n_classes": info.get("n_classes"),
        "K": k_eval,
    }


def _evidence(claim: Claim, seeds: list[int], ours: list[float], rival: list[float], higher=True) -> dict[str, Any]:
    """Per-seed evidence, differences in the claimed direction, mean and the tests."""
    kind = "superiority" if claim.kind == "cost" else claim.kind
    if claim.kind == "cost":
        d = [math.log(b) - math.log(a) for a, b in zip(ours, rival, strict=True)]
    else:
        d = S.paired_differences(ours, rival, higher_is_better=higher)
    notes = []
    if len(seeds) < MIN_SEEDS:
        notes.append(f"{len(seeds)} seed(s): fewer than the {MIN_SEEDS} required; read the verdict with care")
    if len(seeds) < 2:
        notes.append("no test: fewer than two seeds")
    entry = {
        "test": kind,
        **({"margin": claim.margin} if kind == "equivalence" else {}),
        "per_seed": {"seeds": list(seeds), "ours": list(ours), "rival": list(rival)},
        "n_seeds": len(seeds),
        "ours_mean": sum(ours) / len(ours),
        "rival_mean": sum(rival) / len(rival),
        "effect": sum(d) / len(d),
        **_test(kind, d, claim.margin),
        "notes": notes,
    }
    return entry


def control_contrast(
    ours: Mapping[int, float],
    rival: Mapping[int, float],
    seeds: Sequence[int],
    control_ours: Mapping[int, float],
    control_rival: Mapping[int, float],
) -> dict[str, Any] | None:
    r"""The claim's contrast with its control subtracted (protocol A10), per seed:
    :math:`e_s = (a_s - b_s) - (a^0_s - b^0_s)`, where :math:`a^0, b^0` are the same methods and seed
    in the control setting (e.g. without label noise). :math:`\bar e` is the part of the effect
    that the setting's difference (the noise) causes; ``without`` is :math:`\overline{a^0 - b^0}`,
    the part that exists anyway. Seeds missing from the control are left out; fewer than two
    paired seeds give None.

    Example:
        >>> r = control_contrast({0: .8, 1: .9}, {0: .7, 1: .7}, [0, 1], {0: .8, 1: .8}, {0: .75, 1: .75})
        >>> [round(r[k], 3) for k in ("effect", "without")], r["n_seeds"]
        ([0.1, 0.05], 2)
    """
    paired = [s for s in seeds if s in control_ours and s in control_rival]
    if len(paired) < 2:
        return None
    without = [control_ours[s] - control_rival[s] for s in paired]
    e = [ours[s] - rival[s] - w for s, w in zip(paired, without, strict=True)]
    test = S.t_test(e)
    mean_without = math.fsum(without) / len(without)
    return {
        "effect": test["effect"],
        "ci95": test["ci"],
        "p": test["p"],
        "n_seeds": len(paired),
        "without": mean_without,
    }


def _control(claim: Claim, rows: list[dict[str, Any]], setting: dict, metric: str, entry: dict) -> dict | None:
    """The control block of an entry (:func:`control_contrast`) with its setting, or None."""
    base = {k: v for k, v in setting.items() if k not in claim.where}
    control_rows = _select(rows, {**base, **claim.control})
    seeds = entry["per_seed"]["seeds"]
    ours = dict(zip(seeds, entry["per_seed"]["ours"], strict=True))
    rival = dict(zip(seeds, entry["per_seed"]["rival"], strict=True))
    mine = _by_seed(_select(control_rows, claim.ours), metric)
    theirs = _by_seed(_select(control_rows, {"loss": entry["rival"]}), metric)
    block = control_contrast(ours, rival, seeds, mine, theirs)
    return None if block is None else {"setting": {**base, **claim.control}, **block}


def control_note(control: Mapping[str, Any]) -> str:
    """One sentence on an entry's control block (:func:`control_contrast`), effects in pp."""
    lo, hi = control["ci95"]
    where = ", ".join(f"{k}={v}" for k, v in control["setting"].items() if k != "dataset")
    return (
        f"control ({where}): the same contrast is {100 * control['without']:+.2f} pp there; the part the "
        f"setting causes is {100 * control['effect']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}] pp "
        f"({control['n_seeds']} paired seeds; a diagnosis, not the verdict)"
    )


def _best_is_last(rows: list[dict[str, Any]]) -> bool | None:
    flags = [r["best_epoch"] == len(r["val_curve"]) for r in rows if "best_epoch" in r and r.get("val_curve")]
    return all(flags) if flags else None


def _setting_entries(claim: Claim, arm: str, ref: dict, setting: dict, info: dict, k) -> dict[str, Any] | None:
    """The entry of one claim in one setting (and K) of one arm; None when runs are missing."""
    from avgk_lib.metrics import k_label

    rows = _select(ref["rows"], setting)
    k_eval = k if k is not None else info.get("k")
    if k_eval is None:
        raise ValueError(f"`reference` of {claim.experiment}: no K for {setting} at preset {ref['preset']!r}")
    name = k_label(k_eval)
    metric = claim.metric.format(k=name)
    ours_filter = {**claim.ours, **({"train_k": k} if k is not None else {})}
    dependent = _k_dependent()
    rivals = [{**r, **({"train_k": k} if k is not None and r.get("loss") in dependent else {})} for r in claim.rivals]
    if claim.kind == "gain":
        elsewhere = claim.elsewhere_metric.format(k=name)
        mine = _difference(_select(rows, ours_filter), metric, elsewhere)
        candidates = [(r, _difference(_select(rows, r), metric, elsewhere)) for r in rivals[:1]]
        metric = f"{metric} - {elsewhere}"
    else:
        mine = _by_seed(_select(rows, ours_filter), metric)
        candidates = [(r, _by_seed(_select(rows, r), metric)) for r in rivals]
    picked = _strongest(mine, candidates, higher_is_better=True) if mine else None
    if picked is None:
        return None
    rival, theirs, seeds = picked
    entry = _entry_base(claim, arm, ref["preset"], setting, info, k_eval)
    entry.update(metric=metric, unit="accuracy", ours=claim.ours["loss"], rival=rival["loss"])
    entry.update(_evidence(claim, seeds, [mine[s] for s in seeds], [theirs[s] for s in seeds]))
    if claim.kind == "gain":
        entry.update(_gain_where(claim, rows, ours_filter, rival, name, seeds))
    used = _select(rows, ours_filter) + _select(rows, rival)
    entry["best_epoch_is_last"] = _best_is_last([r for r in used if r["seed"] in seeds])
    entry.update(tied_scores([r for r in used if r["seed"] in seeds]))
    if claim.precondition == "headroom" and claim.kind == "gain":  # protocol A12: reported beside, not deciding
        room = headroom(_select(rows, rival), f"test_avg{name}_micro", seeds)
        entry["precondition"] = {
            **room,
            "name": "net headroom of the setting (reported, not deciding: A12)",
            "rule": f"reported only; room iff {room['rule']}",
            "decides": False,
        }
    elif claim.precondition == "headroom":
        entry["precondition"] = headroom(_select(rows, rival), metric, seeds)
    elif claim.precondition:
        entry["precondition"] = PRECONDITIONS[claim.precondition](rows)
        if entry["precondition"]["met"] is None:
            entry["notes"].append("precondition not measured: the references store no fit of the flipped labels")
    entry.update(_exclusions(claim, arm, setting, entry))
    if claim.control and claim.kind == "superiority":
        control = _control(claim, ref["rows"], setting, metric, entry)
        if control is not None:
            entry["control"] = control
            entry["notes"].append(control_note(control))
    if ref.get("tuning"):
        summary = {m: tuning_summary(ref["tuning"], setting, m) for m in (entry["ours"], entry["rival"])}
        entry["tuning"] = {"ours": summary[entry["ours"]], "rival": summary[entry["rival"]]}
        for role, s in entry["tuning"].items():
            for edge in (s or {}).get("edges", []):
                entry["notes"].append(f"unbracketed tuning of {role} ({entry[role]}): {edge}")
        trials = [(s or {}).get("trials") for s in entry["tuning"].values()]
        if None not in trials and trials[0] != trials[1]:
            entry["notes"].append(f"unequal tuning budgets: {trials[0]} trials for ours, {trials[1]} for the rival")
    entry["chapter"] = claim.chapter
    return entry


#: an entry whose runs tie at rank K / K + 1 on more than this share of test inputs is decided by
#: a metric artefact (book/protocol.md, A13)
TIED_SHARE_LIMIT = 0.01


def tied_scores(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``artefact`` when a run of ``rows`` records a tie share (``test_tied_topk_share``) above
    :data:`TIED_SHARE_LIMIT` (protocol A13: underflowed probabilities tie, and a tie counts as a
    top-K hit); ``tied_share`` the largest share recorded (None when no row records it).

    Example:
        >>> rows = [{"loss": "a", "test_tied_topk_share": 0.0}, {"loss": "b", "test_tied_topk_share": 0.59}]
        >>> tied_scores(rows)["artefact"]
        'tied scores: b ties its K-th and next probabilities on up to 59.0% of test inputs (limit 1%)'
    """
    tied: dict[str, float] = {}  # loss -> its largest share
    for r in rows:
        if r.get("test_tied_topk_share") is not None:
            tied[r["loss"]] = max(tied.get(r["loss"], 0.0), r["test_tied_topk_share"])
    if not tied:
        return {"tied_share": None}
    out: dict[str, Any] = {"tied_share": max(tied.values())}
    over = {loss: v for loss, v in tied.items() if v > TIED_SHARE_LIMIT}
    if over:
        out["artefact"] = (
            "tied scores: "
            + "; ".join(
                f"{loss} ties its K-th and next probabilities on up to {100 * v:.1f}% of test inputs"
                for loss, v in sorted(over.items())
            )
            + f" (limit {100 * TIED_SHARE_LIMIT:g}%)"
        )
    return out


def _exclusions(claim: Claim, arm: str, setting: dict, entry: dict[str, Any]) -> dict[str, Any]:
    """``not_evidence`` (why the setting is not evidence, protocol A5) and ``handicaps`` (the
    named handicaps of the entry's methods in this arm, protocol A4) of an entry."""
    from .experiments.catalog import PAPER_HANDICAPS

    out: dict[str, Any] = {}
    reason = NOT_EVIDENCE.get((claim.experiment, setting.get("dataset")))
    if reason:
        out["not_evidence"] = reason
    if arm == "paper":
        named = PAPER_HANDICAPS.get(claim.experiment, {})
        handicaps = {role: named[entry[role]] for role in ("ours", "rival") if entry[role] in named}
        if handicaps:
            out["handicaps"] = handicaps
    return out


def _gain_where(claim: Claim, rows, ours_filter, rival, name: str, seeds: list[int]) -> dict[str, Any]:
    """The second test of a gain claim: is the gain where the claim looks positive?"""
    metric = claim.metric.format(k=name)
    a, b = _by_seed(_select(rows, ours_filter), metric), _by_seed(_select(rows, rival), metric)
    d = [a[s] - b[s] for s in seeds]
    test = S.t_test(d) if len(d) >= 2 else {"ci": [math.nan, math.nan], "p": None}
    block = {"metric": metric, "per_seed": {"ours": [a[s] for s in seeds], "rival": [b[s] for s in seeds]}}
    block.update(effect=sum(d) / len(d), ci95=test["ci"], p=test["p"])
    return {"gain_where": block["effect"], "gain_where_ci95": test["ci"], "gain_where_test": block}


def _ks_of(claim: Claim, rows: list[dict[str, Any]]) -> list[float | None]:
    if claim.ks:
        trained = {r.get("train_k") for r in rows if r.get("loss") == claim.ours.get("loss")}
        return [k for k in claim.ks if k in trained]
    return [None]


def evaluate_claim(claim: Claim, reference: Mapping[str, Any], settings: dict | None = None) -> list[dict[str, Any]]:
    """Raw entries (no Holm, no verdict) of one claim: one per arm, setting and K with the runs.
    ``settings`` (per dataset label: ``n_classes``, ``k``) defaults to :func:`setting_info`."""
    if not isinstance(claim, Claim):
        raise TypeError(f"`claim` must be a Claim, got {type(claim).__name__}")
    entries = []
    for arm, ref in reference_arms(reference).items():
        info_of = settings if settings is not None else setting_info(claim.experiment, ref["preset"])
        for dataset in sorted({r["dataset"] for r in ref["rows"]}):
            setting = {"dataset": dataset, **claim.where}
            rows = _select(ref["rows"], setting)
            for k in _ks_of(claim, rows):
                entry = _setting_entries(claim, arm, ref, setting, info_of.get(dataset, {}), k)
                if entry is not None:
                    entries.append(entry)
    return entries


def cost_entries(claim: Claim, stem: str, benchmark: Mapping[str, Any]) -> tuple[list[dict], list[dict]]:
    """Raw entries of the cost claim from one loss benchmark (``bench_losses_<device>``), one per
    (C, K); or, when the benchmark holds no repeated timings, no entry and a ``skipped`` note.

    Per round r: :math:`d_r = \\ln t_\\text{rival} - \\ln t_\\text{ours}` (log speed-up), the rival
    being the faster smooth SVM on average. The arm is "paper": a timing has no training recipe.
    """
    if not isinstance(benchmark, Mapping) or not isinstance(benchmark.get("losses"), list):
        raise ValueError(f"`benchmark` {stem!r} must be a dict with a list of 'losses'")
    names = [claim.ours["loss"], *(r["loss"] for r in claim.rivals)]
    if not any(isinstance(row.get("repeats_ms"), Mapping) for row in benchmark["losses"]):
        reason = (
            f"{stem} holds one median per loss and setting, no repeated timings: the cost claim needs, per "
            f"setting, `repeats_ms` = {{loss: [ms per round]}} for {', '.join(names)}, at least {MIN_SEEDS} "
            "interleaved rounds (round r times every loss once), so that rounds pair the losses"
        )
        return [], [{"id": claim.id, "paper": claim.paper, "claim": claim.claim, "source": stem, "reason": reason}]
    entries = []
    device = benchmark.get("device", stem)
    for row in benchmark["losses"]:
        repeats = row.get("repeats_ms") or {}
        times = [t for name in names for t in S._reals(repeats.get(name, []), "benchmark")]
        if any(t <= 0.0 for t in times):
            raise ValueError(f"`benchmark` {stem!r} holds a non-positive time: {row}")
        mine = dict(enumerate(repeats.get(claim.ours["loss"], [])))
        candidates = [(r, dict(enumerate(repeats.get(r["loss"], [])))) for r in claim.rivals]
        picked = _strongest(mine, candidates, higher_is_better=False) if mine else None
        if picked is None:
            continue
        rival, theirs, rounds = picked
        setting = {"device": device, "C": row["C"], "B": row.get("B")}
        base = _entry_base(claim, "paper", "benchmark", setting, {"n_classes": row["C"]}, row["K"])
        base.update(experiment=stem, dataset=f"random scores ({device})", metric=claim.metric, unit="log_ratio")
        base.update(ours=claim.ours["loss"], rival=rival["loss"])
        base.update(_evidence(claim, rounds, [mine[r] for r in rounds], [theirs[r] for r in rounds], higher=False))
        base["notes"].append("pairs are interleaved timing rounds, not training seeds; effect = mean log speed-up")
        base["chapter"] = claim.chapter
        entries.append(base)
    return entries, []


# ------------------------------------------------------------------------------ the ledger


def _evidence_key(entry: Mapping[str, Any]) -> str:
    keep = ("arm", "experiment", "setting", "K", "ours", "rival", "test", "per_seed")
    return json.dumps({k: entry.get(k) for k in keep}, sort_keys=True, default=str)


def merge_duplicates(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries whose arm, setting, methods and per-seed values equal an earlier entry's are merged
    into it (dropped, with a note on the kept one): the same evidence counts once.

    Example:
        >>> e = {"id": "a", "arm": "tuned", "setting": {}, "per_seed": {"seeds": [0], "ours": [1], "rival": [0]}}
        >>> merged = merge_duplicates([{**e, "notes": []}, {**e, "id": "b", "notes": []}])
        >>> [m["id"] for m in merged], merged[0]["merged"]
        (['a'], ['b'])
    """
    if not isinstance(entries, list):
        raise TypeError(f"`entries` must be a list of entry dicts, got {type(entries).__name__}")
    kept: dict[str, dict[str, Any]] = {}
    out = []
    for entry in entries:
        key = _evidence_key(entry)
        first = kept.get(key)
        if first is None:
            kept[key] = entry
            out.append(entry)
            continue
        why = " (best epoch = last epoch in every run)" if entry.get("best_epoch_is_last") else ""
        first.setdefault("merged", []).append(entry["id"])
        first["notes"].append(
            f"merged {entry['id']} (`{entry.get('metric')}`): identical per-seed values{why}, so it is not a "
            "second piece of evidence"
        )
    return out


def _hypotheses(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The dicts of an entry that hold one p-value of the Holm family (main test, extra tests)."""
    parts = [entry, entry.get("inferiority"), entry.get("gain_where_test")]
    return [p for p in parts if p is not None and p.get("p") is not None]


def apply_holm(entries: list[dict[str, Any]]) -> int:
    """Holm-adjust every p-value of every entry as one family (adds ``p_holm``); returns the family
    size. Entries without a test get ``p_holm = None``."""
    family = [h for e in entries for h in _hypotheses(e)]
    for h, adjusted in zip(family, S.holm([h["p"] for h in family]), strict=True):
        h["p_holm"] = adjusted
    for e in entries:
        e.setdefault("p_holm", None)
    return len(family)


def _raw(entry: Mapping[str, Any], alpha: float) -> str:
    """The verdict of the statistics alone (no precondition)."""
    return verdict_of({**entry, "precondition": None}, alpha)


def verdict_of(entry: Mapping[str, Any], alpha: float = ALPHA) -> str:
    """The verdict of a Holm-adjusted entry (rules in the module docstring).

    Example:
        >>> verdict_of({"test": "superiority", "effect": -0.01, "p_holm": 0.001})
        'contradicted'
        >>> verdict_of({"test": "superiority", "effect": 0.02, "p_holm": 0.2})
        'inconclusive'
        >>> verdict_of({"test": "superiority", "effect": 0.02, "p_holm": 0.001, "precondition": {"met": False}})
        'not reproduced here'

        A missing headroom (book/protocol.md, A9) says nothing against a measured loss:

        >>> no_room = {"met": False, "bound": "oracle"}
        >>> verdict_of({"test": "superiority", "effect": -0.04, "p_holm": 0.001, "precondition": no_room})
        'contradicted'
    """
    level = S._real(alpha, "alpha")
    if not 0.0 < level < 0.5:
        raise ValueError(f"`alpha` must lie in (0, 0.5), got {alpha!r}")
    if entry.get("test") not in TESTS:
        raise ValueError(f"`entry` test must be one of {TESTS}, got {entry.get('test')!r}")
    pre = entry.get("precondition") or {}
    if pre.get("decides") is False:  # protocol A12: reported beside the verdict
        pre = {}
    if pre.get("met") is False and not (pre.get("bound") and _raw(entry, level) == "contradicted"):
        return "not reproduced here"

    def significant(part: Mapping[str, Any] | None) -> bool:
        return part is not None and part.get("p_holm") is not None and part["p_holm"] < level

    if entry["test"] == "equivalence":
        if significant(entry):
            return "supported"
        return "contradicted" if significant(entry.get("inferiority")) else "inconclusive"
    main = (1 if entry["effect"] > 0 else -1) if significant(entry) else 0
    if entry["test"] == "gain":
        where = entry.get("gain_where_test")
        side = (1 if where["effect"] > 0 else -1) if significant(where) else 0
        if main < 0 or side < 0:
            return "contradicted"
        return "supported" if main > 0 and side > 0 else "inconclusive"
    return {1: "supported", -1: "contradicted", 0: "inconclusive"}[main]


def finalize(entries: list[dict[str, Any]], alpha: float = ALPHA) -> tuple[list[dict[str, Any]], int]:
    """Merge duplicated evidence, Holm-adjust the whole family, then give every entry its verdict.
    Returns the entries and the Holm family size."""
    out = merge_duplicates(entries)
    size = apply_holm(out)
    for e in out:
        e["mde"] = minimum_detectable_effect(e, size, alpha)
        pre = e.get("precondition")
        if pre is not None and "bound" in pre:
            e["precondition"] = decide_headroom(pre, e["mde"])
        e["raw_verdict"] = verdict_of({**e, "precondition": None}, alpha)
        e["verdict"] = verdict_of(e, alpha)
        if e["verdict"] == "not reproduced here":
            e["notes"].append(f"precondition not met: {e['precondition']['name']}")
        e["status"] = status_of(e)
        if e["status"] == "confounded" and e.get("artefact"):
            e["notes"].append(f"decided by a metric artefact (book/protocol.md, A13): {e['artefact']}")
        elif e["status"] == "confounded":
            e["notes"].append(
                "decided by a named confound: " + "; ".join(f"{e[role]}: {why}" for role, why in e["handicaps"].items())
            )
        if e["status"] == "not counted":
            e["notes"].append(f"not counted as evidence: {e['not_evidence']}")
    return out, size


def minimum_detectable_effect(entry: Mapping[str, Any], family_size: int, alpha: float = ALPHA) -> float | None:
    r"""The entry's minimum detectable effect at :data:`POWER` (``book/protocol.md``, A2):
    :math:`(t_{1-a/(2h),\,n-1} + t_{\text{power},\,n-1})\, \sigma_d / \sqrt n` with :math:`a` the
    test level, :math:`h` the Holm family size (its strictest step), :math:`n` the seeds and
    :math:`\sigma_d` the standard deviation of the paired differences in the claimed direction (of
    the gains' difference for a gain claim). None with fewer than two seeds.

    Example:
        >>> e = {"test": "superiority", "unit": "accuracy",
        ...      "per_seed": {"seeds": [0, 1, 2, 3], "ours": [0.5, 0.52, 0.51, 0.53], "rival": [0.5] * 4}}
        >>> round(minimum_detectable_effect(e, 1), 4)
        0.0269
    """
    from scipy import stats as sstats

    per_seed = entry.get("per_seed") or {}
    ours, rival = per_seed.get("ours") or [], per_seed.get("rival") or []
    n = len(ours)
    if n < 2 or family_size < 1:
        return None
    if entry.get("unit") == "log_ratio":
        d = [math.log(b) - math.log(a) for a, b in zip(ours, rival, strict=True)]
    else:
        d = [a - b for a, b in zip(ours, rival, strict=True)]
    mean = math.fsum(d) / n
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in d) / (n - 1))
    quantile = sstats.t.ppf(1 - alpha / (2 * family_size), n - 1) + sstats.t.ppf(POWER, n - 1)
    return float(quantile * sd / math.sqrt(n))


def status_of(entry: Mapping[str, Any]) -> str:
    """How an entry counts in the headline (:data:`STATUSES`): ``"not counted"`` for a setting that
    is not evidence; ``"precondition absent"`` for "not reproduced here"; ``"confounded"`` when
    the verdict goes against a method that runs with a named handicap (contradicted with a
    handicapped ``ours``, supported against a handicapped rival); else ``"finding"``.

    Example:
        >>> status_of({"verdict": "contradicted", "handicaps": {"ours": "weight 1"}})
        'confounded'
        >>> status_of({"verdict": "supported", "handicaps": {"ours": "weight 1"}})
        'finding'
    """
    if entry.get("not_evidence"):
        return "not counted"
    if entry["verdict"] == "not reproduced here":
        return "precondition absent"
    if entry.get("artefact"):  # protocol A13: whatever its direction
        return "confounded"
    handicaps = entry.get("handicaps") or {}
    against = {"contradicted": "ours", "supported": "rival"}.get(entry["verdict"])
    if against in handicaps:
        return "confounded"
    return "finding"


def ledger_document(
    references: Mapping[str, Mapping[str, Any]],
    benchmarks: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    preset: str | None = None,
    alpha: float = ALPHA,
) -> dict[str, Any]:
    """The whole ledger (what ``claims.json`` holds): every claim evaluated on ``references``
    (``{experiment: reference}``, one or two arms each) and the cost claim on ``benchmarks``
    (``{"bench_losses_cpu": benchmark}``), Holm over all of it, verdicts, and the claims that could
    not be evaluated (``skipped``, with the reason)."""
    if not isinstance(references, Mapping):
        raise TypeError(f"`references` must be a dict {{experiment: reference}}, got {type(references).__name__}")
    raw, skipped = [], []
    for claim in CLAIMS:
        if claim.kind == "cost":
            for stem, bench in sorted((benchmarks or {}).items()):
                found, notes = cost_entries(claim, stem, bench)
                raw += found
                skipped += notes
        elif claim.experiment in references:
            raw += evaluate_claim(claim, references[claim.experiment])
    entries, size = finalize(raw, alpha)
    return {
        "format": FORMAT,
        "preset": preset,
        "experiments": sorted(references),
        "benchmarks": sorted(benchmarks or {}),
        "arms": sorted({e["arm"] for e in entries}),
        "alpha": alpha,
        "min_seeds": MIN_SEEDS,
        "holm_family_size": size,
        "claims": entries,
        "skipped": skipped,
    }


def build_ledger(
    references: Mapping[str, Mapping[str, Any]],
    benchmarks: Mapping[str, Mapping[str, Any]] | None = None,
    alpha: float = ALPHA,
) -> list[dict[str, Any]]:
    """The ledger's entries only (see :func:`ledger_document`); Holm runs over the claims of the
    given references, so a chapter that shows the committed verdicts reads them from
    ``claims.json`` (:func:`entries_for`) rather than re-running this on one experiment."""
    return ledger_document(references, benchmarks, alpha=alpha)["claims"]


# ------------------------------------------------------------------------------ reading the ledger


def _entries(ledger: Any) -> list[dict[str, Any]]:
    """The entries of a ledger document or of a list of entries."""
    if isinstance(ledger, Mapping):
        ledger = ledger.get("claims")
    if not isinstance(ledger, list) or not all(isinstance(e, Mapping) for e in ledger):
        raise TypeError("`ledger` must be a ledger document or a list of entry dicts")
    return ledger


def entries_for(ledger: Any, experiment: str, arm: str | None = None) -> list[dict[str, Any]]:
    """The entries of one experiment (and arm), as the committed ledger gives them (Holm over the
    whole ledger), for a chapter."""
    if not isinstance(experiment, str):
        raise TypeError(f"`experiment` must be a string, got {experiment!r}")
    if arm is not None and arm not in ARMS:
        raise ValueError(f"`arm` must be one of {ARMS} or None, got {arm!r}")
    return [e for e in _entries(ledger) if e["experiment"] == experiment and arm in (None, e["arm"])]


def setting_label(setting: Mapping[str, Any]) -> str:
    """A short label of a setting: the dataset bare, other labels as ``key=value``.

    Example:
        >>> setting_label({"dataset": "synthetic-100", "label_noise": 0.6})
        'synthetic-100, label_noise=0.6'
    """
    if not isinstance(setting, Mapping):
        raise TypeError(f"`setting` must be a dict, got {type(setting).__name__}")
    parts = [str(v) if k == "dataset" else f"{k}={v}" for k, v in setting.items() if v is not None]
    return ", ".join(parts)


def effect_text(entry: Mapping[str, Any], *, interval: bool = True) -> str:
    """The effect (and 95% interval) in readable units: percentage points of accuracy, or a speed-up
    factor for a log time ratio.

    Example:
        >>> effect_text({"unit": "accuracy", "effect": 0.012, "ci95": [0.002, 0.022]})
        '+1.20 pp [+0.20, +2.20]'
    """
    low, high = entry["ci95"]
    if entry.get("unit") == "log_ratio":
        main = f"x{math.exp(entry['effect']):.2f}"
        ci = f" [x{math.exp(low):.2f}, x{math.exp(high):.2f}]" if math.isfinite(low) else ""
    else:
        main = f"{100 * entry['effect']:+.2f} pp"
        ci = f" [{100 * low:+.2f}, {100 * high:+.2f}]" if math.isfinite(low) else ""
    return main + (ci if interval else "")


def _row_key(e: Mapping[str, Any]) -> tuple[str, str, str]:
    k = e.get("K")
    return e["id"], setting_label(e["setting"]), f"{k:g}" if isinstance(k, (int, float)) else "-"


def side_by_side(ledger: Any) -> list[dict[str, Any]]:
    """One row per claim, setting and K, with the entry of each arm (None where the arm is absent),
    in ledger order: ``{"id", "setting", "K", "paper", "tuned"}``."""
    rows: dict[tuple, dict[str, Any]] = {}
    for e in _entries(ledger):
        key = _row_key(e)
        row = rows.setdefault(key, {"id": key[0], "setting": key[1], "K": key[2], "paper": None, "tuned": None})
        row[e["arm"]] = e
    return list(rows.values())


def merged_into(entries: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], str]:
    """``(arm, setting label, merged id) -> id`` of the entry that holds a merged entry's evidence
    (:func:`merge_duplicates`): where an arm lacks an entry because it was merged, not unrun."""
    return {(e["arm"], setting_label(e["setting"]), m): e["id"] for e in entries for m in e.get("merged", [])}


def _arm_cell(e: Mapping[str, Any] | None, other: Mapping[str, Any] | None = None, merged: str | None = None) -> str:
    """One arm's cell of the side-by-side table; ``other`` is the other arm's entry of the row (a
    benchmark claim has one protocol only); ``merged``: the id of the entry this arm's entry was
    merged into (identical evidence). A missing arm otherwise means its runs are pending."""
    if e is None and merged is not None:
        return f"merged into {merged} (identical per-seed values)"
    if e is None:
        return "n/a (a benchmark: one protocol)" if (other or {}).get("preset") == "benchmark" else "not run yet"
    p = f", Holm p {e['p_holm']:.3g}" if e.get("p_holm") is not None else ""
    if e.get("test") == "equivalence" and (e.get("inferiority") or {}).get("p_holm") is not None:
        p = f", Holm p {e['p_holm']:.3g} (equivalent?), {e['inferiority']['p_holm']:.3g} (worse by > margin?)"
    pre = e.get("precondition")
    extra = ""
    if pre is not None:
        extra = f"; precondition: {precondition_value(pre)}"
    mde = f", MDE {100 * e['mde']:.2f} pp" if e.get("mde") is not None and e.get("unit") != "log_ratio" else ""
    repeats = "timing rounds" if e.get("preset") == "benchmark" else "seeds"
    return f"{effect_text(e)}{p}, {e['n_seeds']} {repeats}{mde}{extra}: {verdict_text(e)}"


def precondition_value(pre: Mapping[str, Any]) -> str:
    if pre["measured"] is None:
        return "not measured"
    bound = " (upper bound)" if pre.get("bound") == "upper" else ""
    if pre.get("bound"):  # a headroom: an accuracy difference, in percentage points
        threshold = f" (>= {100 * pre['threshold']:.2f} pp?)" if pre.get("threshold") is not None else ""
        return f"{100 * pre['measured']:.2f} pp{bound}{threshold}"
    threshold = f" (>= {pre['threshold']:.3g}?)" if pre.get("threshold") is not None else ""
    return f"{pre['measured']:.3f}{bound}{threshold}"


def verdict_text(e: Mapping[str, Any]) -> str:
    """The verdict in bold with what qualifies it: the raw measured verdict beside "not reproduced
    here", the named confound, or why a setting is not counted.

    Example:
        >>> verdict_text({"verdict": "not reproduced here", "raw_verdict": "contradicted",
        ...               "status": "precondition absent",
        ...               "precondition": {"name": "headroom", "measured": 0.004, "threshold": 0.01}})
        '**not reproduced here** (precondition not met: headroom, measured 0.004 (>= 0.01?)); as measured: contradicted'
    """
    verdict = f"**{e['verdict']}**"
    status = e.get("status", "finding")
    if status == "precondition absent":
        pre = e["precondition"]
        return (
            f"{verdict} (precondition not met: {pre['name']}, measured {precondition_value(pre)}); "
            f"as measured: {e.get('raw_verdict')}"
        )
    if status == "confounded" and e.get("artefact"):
        return f"{verdict}, decided by a metric artefact ({e['artefact']}): not counted"
    if status == "confounded":
        return f"{verdict}, decided by a named confound ({'; '.join(e['handicaps'].values())}): not counted"
    if status == "not counted":
        return f"{verdict}, not counted as evidence ({e['not_evidence'].split(':')[0]})"
    return verdict


def _chapter_link(path: str, link_from: str) -> str:
    name = posixpath.basename(path)
    number = name.split("_", 1)[0]
    text = f"chapter {int(number)}" if number.isdigit() else name
    return f"[{text}]({posixpath.relpath(path, link_from)})"


def _check_link_from(link_from: Any) -> None:
    if not isinstance(link_from, str) or not link_from:
        raise TypeError(f"`link_from` must be a folder name such as 'notebooks', got {link_from!r}")


def ledger_markdown(ledger: Any, *, link_from: str = "notebooks") -> str:
    """The ledger as Markdown: a table of the claims (id, claim, test, chapter), then one row per
    claim, setting and K with both arms side by side (effect, 95% interval, Holm p, seeds,
    precondition, verdict). Chapter links are relative to the folder ``link_from``."""
    entries = _entries(ledger)
    _check_link_from(link_from)
    if not entries:
        return "_The ledger is empty._"
    lines = ["| id | claim | test | explained in |", "|---|---|---|---|"]
    seen = set()
    for e in entries:
        if e["id"] in seen:
            continue
        seen.add(e["id"])
        test = e["test"] + (f" (margin ±{100 * e['margin']:g} pp)" if e.get("margin") else "")
        lines.append(f"| {e['id']} | {e['claim']} | {test} | {_chapter_link(e['chapter'], link_from)} |")
    arm_head = "effect [95% interval], Holm p, seeds, MDE: verdict"
    lines += ["", f"| id | setting | K | paper arm: {arm_head} | tuned arm: {arm_head} |", "|---|---|---|---|---|"]
    merged = merged_into(entries)
    for row in side_by_side(entries):
        paper, tuned = row["paper"], row["tuned"]
        cells = [_arm_cell(paper, tuned, merged.get(("paper", row["setting"], row["id"])))]
        cells.append(_arm_cell(tuned, paper, merged.get(("tuned", row["setting"], row["id"]))))
        lines.append(f"| {row['id']} | {row['setting']} | {row['K']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def preconditions_markdown(ledger: Any) -> str:
    """The measured preconditions: one table per precondition (its name heads it, so that the
    table fits the text column), one row per entry that has it."""
    rows = [e for e in _entries(ledger) if e.get("precondition")]
    if not rows:
        return "_No claim here has a precondition: the verdicts stand on the statistics alone._"
    parts = []
    for name in dict.fromkeys(e["precondition"]["name"] for e in rows):
        lines = [f"**{name}**", "", "| id | arm | setting | measured | threshold | met |", "|---|---|---|---|---|---|"]
        for e in (e for e in rows if e["precondition"]["name"] == name):
            pre = e["precondition"]
            measured = "not measured" if pre["measured"] is None else precondition_value({**pre, "threshold": None})
            met = {True: "yes", False: "**no**", None: "not decided"}[pre["met"]]
            if pre.get("decides") is False:  # protocol A12: reported, not deciding
                met = {True: "room (reported)", False: "no room (reported)", None: "not decided"}[pre["met"]]
            scale, unit = (100.0, " pp") if pre.get("bound") else (1.0, "")
            threshold = "-" if pre.get("threshold") is None else f"{scale * pre['threshold']:.3g}{unit}"
            k = f", K={e['K']:g}" if isinstance(e.get("K"), (int, float)) else ""
            lines.append(
                f"| {e['id']} | {e['arm']} | {setting_label(e['setting'])}{k} | {measured} | {threshold} | {met} |"
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _tallies(entries: list[dict[str, Any]]) -> list[tuple[str, str, int, str]]:
    """(paper, arm, entries, "n supported, n contradicted, ...") per paper and arm with entries."""
    out = []
    for paper in sorted({e["paper"] for e in entries}):
        for arm in ARMS:
            mine = [e for e in entries if e["paper"] == paper and e["arm"] == arm]
            if mine:
                out.append(
                    (paper, arm, len(mine), ", ".join(f"{sum(e['verdict'] == v for e in mine)} {v}" for v in VERDICTS))
                )
    return out


def verdict_counts(ledger: Any) -> str:
    """One Markdown line per paper and arm: how many entries have each verdict."""
    entries = _entries(ledger)
    if not entries:
        return "_The ledger is empty._"
    return "\n".join(f"- **{paper}, {arm} arm**: {n} entries: {tally}." for paper, arm, n, tally in _tallies(entries))


def _ids_with(entries: list[Mapping[str, Any]], verdict: str) -> list[str]:
    return sorted({e["id"] for e in entries if e["verdict"] == verdict})


def claim_outcomes(entries: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """The claims (ids) grouped by what their **findings** say over every setting, K and arm:
    ``supported`` (some finding supported, none contradicted), ``contradicted`` (the reverse),
    ``mixed`` (both, in different settings or arms), ``inconclusive`` (findings, all
    inconclusive) and ``no finding`` (every entry counted apart: precondition absent, confounded
    or not evidence). A claim with many entries (the cost claim's timing rows) counts once.

    Example:
        >>> claim_outcomes([{"id": "a", "verdict": "supported", "status": "finding"},
        ...                 {"id": "a", "verdict": "inconclusive", "status": "finding"},
        ...                 {"id": "b", "verdict": "contradicted", "status": "confounded"}])
        {'supported': ['a'], 'contradicted': [], 'mixed': [], 'inconclusive': [], 'no finding': ['b']}
    """
    verdicts: dict[str, set[str]] = {}
    for e in entries:
        found = verdicts.setdefault(e["id"], set())
        if e.get("status", "finding") == "finding":
            found.add(e["verdict"])
    out: dict[str, list[str]] = {k: [] for k in ("supported", "contradicted", "mixed", "inconclusive", "no finding")}
    for claim_id, found in sorted(verdicts.items()):
        both = {"supported", "contradicted"} <= found
        key = "mixed" if both else next((v for v in ("supported", "contradicted") if v in found), None)
        out[key or ("inconclusive" if found else "no finding")].append(claim_id)
    return out


def main_result(ledger: Any) -> str:
    """The ledger's main result in two Markdown sentences (for the intro page): first claim by
    claim (:func:`claim_outcomes`: a claim tested in many settings counts once), then the entry
    counts after Holm's correction, findings apart from the entries counted apart."""
    entries = _entries(ledger)
    if not entries:
        return "_The ledger is empty: no claim could be tested._"
    family = sum(len(_hypotheses(e)) for e in entries)
    outcomes = claim_outcomes(entries)
    findings = [e for e in entries if e.get("status", "finding") == "finding"]
    counts = {v: sum(e["verdict"] == v for e in findings) for v in VERDICTS}
    apart = {s: sum(e.get("status") == s for e in entries) for s in STATUSES[1:]}
    timed = sum(e["verdict"] == "supported" and e.get("preset") == "benchmark" for e in findings)
    timing = f", {timed} of them timing rows of the one cost claim" if timed else ""

    def group(key: str, words: str) -> str:
        ids = outcomes[key]
        return f"{words}: {len(ids)}" + (f" ({', '.join(ids)})" if ids else "")

    return (
        f"**Main result**: of the {sum(map(len, outcomes.values()))} claims tested, "
        f"{group('supported', 'supported by a finding in some setting and contradicted in none')}; "
        f"{group('contradicted', 'contradicted and supported in none')}; "
        f"{group('mixed', 'supported in one setting or arm and contradicted in another')}; "
        f"{group('inconclusive', 'inconclusive findings only')}; "
        f"{group('no finding', 'no finding at all')}. Counted in entries (claim, setting, K and arm; Holm's "
        f"correction over {family} tests), {len(findings)} of {len(entries)} are findings: {counts['supported']} "
        f"supported{timing}, {counts['contradicted']} contradicted and {counts['inconclusive']} inconclusive; "
        f"counted apart: {apart['precondition absent']} not reproduced here because a precondition is absent, "
        f"{apart['confounded']} decided by a named confound or a metric artefact and {apart['not counted']} in a "
        f"setting that is not evidence."
    )


def intro_markdown(ledger: Any, *, ledger_page: str = "../notebooks/10_claims_ledger.ipynb") -> str:
    """The main result for the intro page, generated from the ledger: :func:`main_result`, the
    arms the ledger holds (an arm without runs is named), and a link to the ledger page
    (``ledger_page``, relative to the page that shows it)."""
    if not isinstance(ledger_page, str) or not ledger_page:
        raise TypeError(
            f"`ledger_page` must be a relative link such as '../notebooks/10_claims_ledger.ipynb', got {ledger_page!r}"
        )
    entries = _entries(ledger)
    arms = [a for a in ARMS if any(e["arm"] == a for e in entries)]
    missing = [a for a in ARMS if a not in arms]
    parts = [main_result(entries)]
    if entries:
        held = " and ".join(f"the {a} arm" for a in arms)
        parts.append(
            f"These verdicts come from {held}"
            + (f"; the {' and '.join(missing)} arm has no runs in the committed references yet." if missing else ".")
        )
    parts.append(f"Every verdict, with its effect, interval and seeds, is on the [claims ledger]({ledger_page}) page.")
    return " ".join(parts)


def synthesis_markdown(ledger: Any, *, link_from: str = "notebooks") -> str:
    """A paragraph generated from the ledger: the main result in one sentence, the counts per
    verdict for each paper and arm, where each verdict is explained (links relative to the folder
    ``link_from`` of the page that shows it), and what could not be tested."""
    entries = _entries(ledger)
    _check_link_from(link_from)
    skipped = ledger.get("skipped", []) if isinstance(ledger, Mapping) else []
    if not entries:
        return "_The ledger is empty: no claim could be tested._"
    parts = [main_result(entries)]
    absent = [a for a in ARMS if not any(e["arm"] == a for e in entries)]
    if absent:
        names, plural = " and ".join(absent), len(absent) > 1
        parts.append(f"The {names} arm{'s' * plural} {'have' if plural else 'has'} no runs in the references yet.")
    merged = sum(len(e.get("merged", [])) for e in entries)
    few = sum(e["n_seeds"] < MIN_SEEDS for e in entries)
    if merged or few:
        parts.append(
            f"{merged} duplicated entr{'y was' if merged == 1 else 'ies were'} merged (identical per-seed values), "
            f"and {few} entr{'y has' if few == 1 else 'ies have'} fewer than {MIN_SEEDS} seeds (flagged)."
        )
    findings = [e for e in entries if e.get("status", "finding") == "finding"]
    parts += [f"{paper}, {arm} arm ({n} findings): {tally}." for paper, arm, n, tally in _tallies(findings)]
    chapters: dict[str, list[str]] = {}
    for e in entries:
        ids = chapters.setdefault(e["chapter"], [])
        if e["id"] not in ids:
            ids.append(e["id"])
    where = "; ".join(f"{_chapter_link(ch, link_from)}: {', '.join(ids)}" for ch, ids in sorted(chapters.items()))
    parts.append(f"Each verdict is explained in its chapter ({where}).")
    if skipped:
        # the reason's first clause (what is missing); the rest says how to supply it (in claims.json)
        parts.append("Not tested: " + "; ".join(f"{s['id']} ({s['reason'].split(': ')[0]})" for s in skipped) + ".")
    return " ".join(parts)


# ------------------------------------------------------------------------------ forest plot

COLOURS = {
    "supported": "#1b7837",
    "contradicted": "#b2182b",
    "inconclusive": "#7f7f7f",
    "not reproduced here": "#e08214",
}
MARKERS = {"paper": "s", "tuned": "o"}


def forest_data(ledger: Any) -> list[dict[str, Any]]:
    """One point per entry for a forest plot, in display units: ``x``, ``low``, ``high`` in
    percentage points (accuracy) or as a speed-up factor (time), with the row label (claim id, then
    setting and K on a second line), arm, verdict, unit, equivalence margin (display units) and precondition status
    (None when the claim has none, else "met", "absent" or "precondition not measured")."""
    out = []
    for e in _entries(ledger):
        low, high = e["ci95"]
        if e.get("unit") == "log_ratio":
            convert, unit = math.exp, "speed-up (x)"
        else:
            convert, unit = (lambda v: 100.0 * v), "percentage points"
        key = _row_key(e)
        pre = e.get("precondition")
        out.append(
            {
                "row": f"{key[0]}\n{key[1]} · K={key[2]}",
                "arm": e["arm"],
                "x": convert(e["effect"]),
                "low": convert(low) if math.isfinite(low) else math.nan,
                "high": convert(high) if math.isfinite(high) else math.nan,
                "verdict": e["verdict"],
                "unit": unit,
                "margin": 100.0 * e["margin"] if e.get("margin") else None,
                "precondition": None if pre is None else pre["status"],
                "counted": e.get("status", "finding") == "finding",
            }
        )
    return out


def _flagged(row: str, states: set[tuple[str, Any]]) -> str:
    """A forest-plot row label with its precondition state on a third line; ``states`` holds
    (arm, precondition status) pairs, and a state that holds in one arm only names it."""
    arms = {a for a, _ in states}
    for state, text in (("absent", "precondition absent"), ("precondition not measured", "precondition not measured")):
        hit = sorted(a for a, s in states if s == state)
        if hit:
            return f"{row}\n({text}" + ("" if set(hit) == arms else f": {' and '.join(hit)} arm") + ")"
    return row


def _wrapped(label: str, width: int = 32) -> str:
    """A row label for a column-wide figure: every line wrapped at ``width`` characters."""
    return "\n".join(textwrap.fill(line, width) for line in label.split("\n"))


def _clip_to_findings(ax: Any, points: list[dict[str, Any]], rows: list[str], offset: dict[str, float]) -> None:
    """Limit an accuracy panel to the intervals of the counted entries (so that an entry that is
    no finding, e.g. a -25 pp trap, does not squeeze the rest) and mark every point left outside
    at the panel's edge with its value."""
    counted = [p for p in points if p["counted"]] or points
    ends = [v for p in counted for v in (p["low"], p["high"], p["x"]) if math.isfinite(v)] + [0.0]
    low, high = min(ends), max(ends)
    pad = 0.08 * (high - low or 1.0)
    low, high = low - pad, high + pad
    ax.set_xlim(low, high)
    for p in points:
        if low <= p["x"] <= high:
            continue
        edge, marker, align = (low, "<", "left") if p["x"] < low else (high, ">", "right")
        y = rows.index(p["row"]) + offset[p["arm"]]
        ax.plot([edge], [y], marker, color=COLOURS[p["verdict"]], ms=7, mfc="white", clip_on=False)
        ax.annotate(f"{p['x']:+.1f}", (edge, y), xytext=(6 if align == "left" else -6, 0), textcoords="offset points",
                    ha=align, va="center", fontsize=9)  # fmt: skip


def forest_plot(ledger: Any, *, title: str = "", figsize: tuple[float, float] | None = None):
    """Forest plot of the ledger, both arms per claim and setting: the mean paired effect (marker:
    square = paper arm, circle = tuned arm) with its 95% interval, coloured by verdict (hollow and
    dotted: an entry not counted as a finding: precondition absent, confounded, not evidence); a grey band
    marks an equivalence margin; a row whose precondition was measured absent says so; an accuracy
    panel spans the counted entries, a point beyond it is marked at the edge with its value. Accuracy
    effects (percentage points) and time effects (speed-up factor, log axis) get their own panel.
    The figure is as wide as the book's column (:data:`~avgk_book.plotting.COLUMN_WIDTH_IN`),
    so its fonts (at least 9 pt) are the sizes the reader sees. Returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    from .plotting import COLUMN_WIDTH_IN

    points = forest_data(ledger)
    if not points:
        raise ValueError("`ledger` has no entries to plot")
    status: dict[str, set] = {}
    for p in points:
        status.setdefault(p["row"], set()).add((p["arm"], p["precondition"]))
    units = list(dict.fromkeys(p["unit"] for p in points))
    rows_of = {u: list(dict.fromkeys(p["row"] for p in points if p["unit"] == u)) for u in units}
    heights = [max(len(rows_of[u]), 1) for u in units]
    width, height = figsize or (COLUMN_WIDTH_IN, 0.72 * sum(heights) + 1.3 * len(units) + 1.1)
    fig, axes = plt.subplots(
        len(units), 1, figsize=(width, height), squeeze=False, gridspec_kw={"height_ratios": heights}
    )
    offset = {"paper": -0.17, "tuned": 0.17}
    for ax, unit in zip(axes[:, 0], units, strict=True):
        rows = rows_of[unit]
        for p in (p for p in points if p["unit"] == unit):
            y = rows.index(p["row"]) + offset[p["arm"]]
            colour = COLOURS[p["verdict"]]
            if p["margin"]:
                ax.fill_betweenx([y - 0.15, y + 0.15], -p["margin"], p["margin"], color="#d9d9d9", lw=0)
            style = "-" if p["counted"] else ":"
            if math.isfinite(p["low"]):
                ax.plot([p["low"], p["high"]], [y, y], color=colour, lw=2.2, ls=style)
            ax.plot([p["x"]], [y], MARKERS[p["arm"]], color=colour, ms=7, mfc=colour if p["counted"] else "white")
        ax.axvline(1.0 if unit.startswith("speed") else 0.0, color="black", lw=1)
        if not unit.startswith("speed"):
            _clip_to_findings(ax, [p for p in points if p["unit"] == unit], rows, offset)
        if unit.startswith("speed"):
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"x{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"x{v:g}"))
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([_wrapped(_flagged(r, status[r])) for r in rows], fontsize=9)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.tick_params(axis="x", labelsize=9)
        ax.grid(axis="x", alpha=0.4)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel(f"paired effect, {unit}\n(claimed direction > 0; 95% interval)", fontsize=10)
    handles = [Line2D([], [], marker=MARKERS[a], ls="", color="black", label=f"{a} arm") for a in ARMS]
    handles += [Line2D([], [], color=c, lw=3, label=v) for v, c in COLOURS.items()]
    handles.append(Patch(color="#d9d9d9", label="equivalence margin"))
    handles.append(
        Line2D([], [], marker="o", ls=":", color="black", mfc="white", label="not a finding (confounded, ...)")
    )
    fig.legend(handles=handles, fontsize=9, loc="lower center", ncol=3, frameon=False)
    if title:
        axes[0, 0].set_title(title, fontsize=11)
    fig.tight_layout(rect=(0.0, 0.95 / height, 1.0, 1.0), pad=1.0)
    return fig


# ------------------------------------------------------------------------------ the ledger in one minute

#: verdict badges: text and colour (never colour alone), white text on the verdict's colour
BADGE = '<span style="background:{colour};color:#fff;padding:0 0.35em;border-radius:3px">{text}</span>'


def badge(verdict: str) -> str:
    """An inline HTML badge of a verdict: its name on its colour (:data:`COLOURS`).

    Example:
        >>> "supported" in badge("supported") and "#1b7837" in badge("supported")
        True
    """
    if verdict not in COLOURS:
        raise ValueError(f"`verdict` must be one of {', '.join(COLOURS)}, got {verdict!r}")
    return BADGE.format(colour=COLOURS[verdict], text=verdict)


def why_text(entries: Sequence[Mapping[str, Any]]) -> str:
    """One line on what decides a claim's entries: the absent preconditions, the named confounds,
    the settings that are not evidence, and "not significant after Holm" for inconclusive findings whose
    95% interval excludes 0 (significant alone, not after the correction)."""
    reasons: list[str] = []
    for status, text in (
        ("precondition absent", "precondition absent (needed: {})"),
        ("confounded", "decided by a named confound or artefact ({})"),
        ("not counted", "not evidence ({})"),
    ):
        hit = [e for e in entries if e.get("status") == status]
        if hit:
            names = sorted({(e.get("precondition") or {}).get("name", "").split(":")[0] for e in hit} - {""})
            if status == "confounded":
                names = sorted({f"{e['arm']} arm" + (": tied scores" if e.get("artefact") else "") for e in hit})
            if status == "not counted":
                names = sorted({setting_label(e["setting"]) for e in hit})
            reasons.append(text.format(", ".join(names)))
    ns = [e for e in entries if e.get("status", "finding") == "finding" and e["verdict"] == "inconclusive"]
    if any(e["test"] == "equivalence" for e in ns):
        reasons.append("equivalence within the margin not shown after Holm")
    superiority = [e for e in ns if e["test"] != "equivalence"]
    if any(e["ci95"][0] > 0 or e["ci95"][1] < 0 for e in superiority if math.isfinite(e["ci95"][0])):
        reasons.append("some intervals exclude 0 but are not significant after Holm")
    elif superiority:
        reasons.append("not significant after Holm")
    from .plotting import method_label

    found = [e for e in entries if e.get("status", "finding") == "finding"]
    lost = [e for e in found if e["verdict"] == "contradicted" and e["test"] == "superiority"]
    if lost:
        rivals = ", ".join(sorted({method_label(e["rival"]) for e in lost}))
        arms = sorted({e["arm"] for e in lost})
        reasons.append(f"{rivals} significantly ahead in the {' and '.join(arms)} arm{'s' * (len(arms) > 1)}")
    if {"supported", "contradicted"} <= {e["verdict"] for e in found}:
        reasons.append("the arms or settings disagree")
    return "; ".join(reasons) or "significant after Holm"


#: how a verdict counted apart is marked beside its badge (the status "precondition absent" has its
#: own verdict, "not reproduced here")
APART_QUALIFIERS = {"confounded": " (confounded)", "not counted": " (not counted)"}


def _arm_summary(entries: Sequence[Mapping[str, Any]]) -> str:
    """One arm's cell of the at-a-glance table: per verdict (and counting status) a badge with the
    number of entries, the range of their effects (a single entry's with its 95% interval) and
    the settings they come from."""
    if not entries:
        return "not run"
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for e in entries:
        groups.setdefault((e["verdict"], e.get("status", "finding")), []).append(e)
    parts = []
    for (verdict, status), group in groups.items():
        qualifier = APART_QUALIFIERS.get(status, "")
        effects = sorted(group, key=lambda e: e["effect"])
        span = effect_text(effects[0], interval=len(effects) == 1)
        if len(effects) > 1:
            span += " to " + effect_text(effects[-1], interval=False)
        count = f" x{len(group)}" if len(group) > 1 else ""
        where = ", ".join(dict.fromkeys(setting_label(e["setting"]) for e in effects))
        parts.append(f"{badge(verdict)}{count}{qualifier}: {span} ({where})")
    return "<br>".join(parts)


def at_a_glance_markdown(ledger: Any) -> str:
    """One row per claim: its id (the full table below gives its words), a verdict badge per arm and
    setting with the effect and its 95% interval (percentage points; a speed-up factor for the cost
    claim), and a one-line why (:func:`why_text`)."""
    entries = _entries(ledger)
    if not entries:
        return "_The ledger is empty._"
    lines = ["| claim | paper arm | tuned arm | why |", "|---|---|---|---|"]
    for claim_id in dict.fromkeys(e["id"] for e in entries):
        mine = [e for e in entries if e["id"] == claim_id]
        cells = [_arm_summary([e for e in mine if e["arm"] == arm]) for arm in ARMS]
        if mine[0].get("preset") == "benchmark":
            cells[1] = "n/a (a benchmark)"
        kind = " (equivalence)" if mine[0].get("test") == "equivalence" else ""
        lines.append(f"| **{claim_id}**{kind} | {cells[0]} | {cells[1]} | {why_text(mine)} |")
    return "\n".join(lines)


def holm_example(ledger: Any) -> str:
    """A worked example, from the ledger itself, of an entry whose 95% interval excludes 0 while
    Holm says inconclusive: its p, the Holm-adjusted p and the family size (empty when none)."""
    entries = _entries(ledger)
    family = sum(len(_hypotheses(e)) for e in entries)
    for e in entries:
        low, high = e["ci95"]
        candidate = e.get("status") == "finding" and e["verdict"] == "inconclusive" and e["test"] == "superiority"
        if candidate and e.get("p") is not None and (low > 0 or high < 0):
            rank = 1 + sum(h["p"] < e["p"] for x in entries for h in _hypotheses(x))
            return (
                f"**Why an interval can exclude 0 while the verdict is inconclusive.** Take {e['id']} "
                f"({e['arm']} arm, {setting_label(e['setting'])}, K = {e['K']:g}): its effect is {effect_text(e)} "
                f"(95% interval over {e['n_seeds']} seeds), so this one test alone gives p = {e['p']:.2g} < 0.05. "
                f"But the ledger makes {family} tests; if each used 0.05 and no claim held, about "
                f"{0.05 * family:.1f} false verdicts would be expected by chance alone. Holm's correction "
                f"multiplies the smallest p-value by {family}, the next by {family - 1}, and so on; this "
                f"entry's p is the {rank}th smallest, so it is multiplied by {family - rank + 1} (or takes a "
                f"larger p's adjusted value if that is larger): adjusted p {e['p_holm']:.2g} "
                f"> 0.05, so the ledger calls it inconclusive."
            )
    return ""


def _block(text: str):
    from .display import Block

    return Block(None, text)


def show_at_a_glance(ledger: Any):
    """The ledger in one minute, for a notebook cell: :func:`at_a_glance_markdown`, then the worked
    example of :func:`holm_example`."""
    return _block(at_a_glance_markdown(ledger) + "\n\n" + holm_example(ledger))


def show_full_ledger(ledger: Any, *, link_from: str = "notebooks"):
    """Every entry, for a notebook cell: :func:`synthesis_markdown`, :func:`ledger_markdown` and
    :func:`preconditions_markdown`."""
    parts = [synthesis_markdown(ledger, link_from=link_from), ledger_markdown(ledger, link_from=link_from)]
    parts += ["**Measured preconditions**", preconditions_markdown(ledger)]
    return _block("\n\n".join(parts))
