r"""Per-run diagnostics behind the fair-comparison chapters, computed from a finished run's folder.

:func:`add_diagnostics` extends experiment rows (:func:`avgk_book.experiments.run_row`) with

* ``test_avg{K}_ambiguous`` / ``test_avg{K}_clear``: average-K accuracy on the 20% of test inputs
  whose *Bayes* posterior has the highest / lowest entropy (synthetic data only: the posterior is
  known), K the run's training K (or its first evaluated K);
* ``test_avg{K}_tail`` / ``test_avg{K}_head``: macro average-K accuracy over the rarest / most
  frequent third of the classes by training count (long-tailed data);
* ``pseudo_in_bayes_topk``: for two-head runs on synthetic data, the share of the pseudo-positives
  that P2's rule draws from the trained softmax head (validation inputs in batches of the training
  batch size) which lie in the Bayes top-:math:`\lceil K\rceil` set of their input;
* ``bayes_avg{K}_micro`` / ``bayes_top{K}_micro`` (synthetic data, every evaluated K): the expected
  accuracy of the Bayes-optimal average-K sets (the test posteriors at one global threshold) and
  top-K sets on this run's test inputs: the ceiling of the headroom precondition
  (``book/protocol.md``, A3);
* ``test_tied_topk_share``: the share of test inputs whose :math:`\lceil K\rceil`-th and next
  probabilities of the evaluated head are equal, from the best checkpoint re-evaluated in float32
  (``book/protocol.md``, A13: underflowed probabilities tie, and a tie counts as a top-K hit);
* ``test_dead_classes``: the classes present in the test split that are never in the run's top-
  :math:`\lceil K\rceil` set (best-validation checkpoint): a collapsed class has recall 0;
* ``test_topk_recall_by_class`` / ``test_rank_k1_share_by_class`` (datasets of at most
  :data:`PER_CLASS_MAX` classes): per class, the share of its test inputs whose top-
  :math:`\lceil K\rceil` set holds it, and the share whose label sits exactly at rank
  :math:`\lceil K\rceil + 1`, where a top-K hinge is flat (chapter 4's stall).
"""

from __future__ import annotations

import copy
import functools
import json
import math
from pathlib import Path
from typing import Any

import torch

from avgk_book.analysis import load_run_scores, run_results
from avgk_lib import functional as AF
from avgk_lib import metrics as M
from avgk_lib.data import load_dataset
from avgk_lib.data.oracle import bayes_average_k_sets, bayes_topk_sets, expected_set_accuracy
from avgk_lib.metrics import k_label
from avgk_lib.rundir import RunDir

EXTREME_SHARE = 0.2
#: per-class diagnostics are stored for datasets with at most this many classes (Fashion-MNIST)
PER_CLASS_MAX = 20


@functools.lru_cache(maxsize=8)
def _posteriors(options_json: str) -> tuple[torch.Tensor, torch.Tensor]:
    bundle = load_dataset("synthetic", **json.loads(options_json))
    return bundle.extra["val_posterior"], bundle.extra["test_posterior"]


def _hits(val: torch.Tensor, test: torch.Tensor, targets: torch.Tensor, k: float) -> torch.Tensor:
    sets = M.average_k_sets(test, M.average_k_threshold(val, k))
    return sets[torch.arange(len(targets)), targets]


def entropy_split(posterior: torch.Tensor, hits: torch.Tensor, share: float = EXTREME_SHARE) -> dict[str, float]:
    """Accuracy on the ``share`` most ambiguous and the ``share`` clearest inputs (Bayes entropy)."""
    entropy = -(posterior * posterior.clamp_min(1e-300).log()).sum(1)
    order = torch.argsort(entropy, stable=True)
    n = max(1, int(round(share * len(order))))
    return {"clear": float(hits[order[:n]].double().mean()), "ambiguous": float(hits[order[-n:]].double().mean())}


def frequency_split(hits: torch.Tensor, targets: torch.Tensor, counts: list[int]) -> dict[str, float]:
    """Macro accuracy over the rarest and the most frequent third of the classes present."""
    n_classes = len(counts)
    per_class = torch.bincount(targets, weights=hits.double(), minlength=n_classes)
    support = torch.bincount(targets, minlength=n_classes)
    present = (support > 0).nonzero().squeeze(1)
    by_count = present[torch.argsort(torch.tensor(counts)[present], stable=True)]
    third = max(1, len(by_count) // 3)
    acc = per_class / support.clamp_min(1)
    return {"tail": float(acc[by_count[:third]].mean()), "head": float(acc[by_count[-third:]].mean())}


def pseudo_label_quality(val_probs: torch.Tensor, targets: torch.Tensor, posterior: torch.Tensor, k: float, batch: int):
    """Share of P2's pseudo-positives (batches of ``batch`` validation inputs) inside the Bayes
    top-ceil(K) set of their input."""
    bayes = M.topk_sets(posterior, math.ceil(k))
    inside = total = 0
    for start in range(0, len(targets) - batch + 1, batch):
        rows = slice(start, start + batch)
        positives = AF.pseudo_labels(val_probs[rows], targets[rows], k)
        inside += int((positives & bayes[rows]).sum())
        total += int(positives.sum())
    return inside / total if total else math.nan


def bayes_ceilings(posterior: torch.Tensor, ks: list[float]) -> dict[str, float]:
    """Expected micro accuracy of the Bayes average-K sets (every K) and top-K sets (integer K) on
    the inputs of ``posterior`` (n, C)."""
    out = {}
    for k in ks:
        name = k_label(float(k))
        out[f"bayes_avg{name}_micro"] = expected_set_accuracy(posterior, bayes_average_k_sets(posterior, float(k)))
        if float(k).is_integer():
            out[f"bayes_top{name}_micro"] = expected_set_accuracy(posterior, bayes_topk_sets(posterior, int(k)))
    return out


def dead_classes(scores: torch.Tensor, targets: torch.Tensor, k: float) -> list[int]:
    r"""Classes present in ``targets`` that are in no top-:math:`\lceil k\rceil` set of ``scores``."""
    sets = M.topk_sets(scores, math.ceil(k))
    hit = sets[torch.arange(len(targets)), targets]
    per_class = torch.bincount(targets, weights=hit.double(), minlength=scores.shape[1])
    present = torch.bincount(targets, minlength=scores.shape[1]) > 0
    return [int(c) for c in ((per_class == 0) & present).nonzero().flatten()]


def recall_and_rank_k1_by_class(scores: torch.Tensor, targets: torch.Tensor, k: float) -> tuple[list, list]:
    r"""Per class (present in ``targets``; ``None`` for an absent one): the share of its inputs
    whose top-:math:`\lceil k\rceil` set of ``scores`` holds the label, and the share whose label
    has exactly :math:`\lceil k\rceil` classes scored above it (rank :math:`\lceil k\rceil + 1`)."""
    kk = math.ceil(k)
    above = (scores > scores.gather(1, targets[:, None])).sum(1)
    support = torch.bincount(targets, minlength=scores.shape[1])

    def share(hit: torch.Tensor) -> list:
        per = torch.bincount(targets, weights=hit.double(), minlength=scores.shape[1]) / support.clamp_min(1)
        return [round(float(v), 6) if n else None for v, n in zip(per, support.tolist(), strict=True)]

    return share(above < kk), share(above == kk)


#: the diagnostic added last: a reference part whose rows lack it is diagnosed again (tools/reference_runs.py)
NEWEST_DIAGNOSTIC = "test_tied_topk_share"


def tied_topk_share(scores: torch.Tensor, k: float) -> float:
    r"""The share of rows whose :math:`\lceil k\rceil`-th and next largest scores are equal: inputs
    whose top-K set the scores do not determine (protocol A13; underflowed probabilities tie at 0)."""
    kk = math.ceil(k)
    if kk >= scores.shape[1]:
        return 0.0
    top = scores.float().topk(kk + 1, dim=1).values
    return float((top[:, kk - 1] == top[:, kk]).double().mean())


@functools.lru_cache(maxsize=2)
def _bundle(dataset: str, options_json: str) -> Any:
    """A dataset as the runs load it, kept for the next run: the methods of one seed share a draw."""
    return load_dataset(dataset, **json.loads(options_json))


def best_checkpoint_test_scores(folder: str | Path) -> torch.Tensor:
    """The float32 test scores of a finished run's evaluated head, recomputed from its best
    checkpoint (``scores.pt`` keeps half precision, whose ties exaggerate A13's)."""
    from avgk_lib.build import build_run
    from avgk_lib.config import TrainConfig
    from avgk_lib.engine import collect_scores
    from avgk_lib.runspec import RunSpec

    config = run_results(folder)["config"]
    spec = RunSpec.resolve(TrainConfig(**{k: v for k, v in config.items() if k in TrainConfig.__dataclass_fields__}))
    cfg = spec.config
    run = build_run(spec, bundle=_bundle(cfg.dataset, json.dumps(cfg.dataset_options, sort_keys=True)))
    run.model.load_state_dict(RunDir(folder).load_best(spec.fingerprint)["model"])
    with torch.no_grad():
        scores, _ = collect_scores(run.model, run.test_loader, run.objective.head_scores, run.autocast())
    return scores[spec.eval_head]


def run_diagnostics(folder: str | Path, k: float | None = None) -> dict[str, Any]:
    """The diagnostics of one finished run (empty when its scores were not saved)."""
    if not RunDir(folder).scores.exists():
        return {}
    results, scores = run_results(folder), load_run_scores(folder)
    config = results["config"]
    k = float(k if k is not None else config["k"])
    name = k_label(k)
    yv, yt = scores["val_targets"].long(), scores["test_targets"].long()
    hits = _hits(scores["val_scores"], scores["test_scores"], yt, k)
    out: dict[str, Any] = {
        f"test_avg{name}_{part}": v for part, v in frequency_split(hits, yt, results["summary"]["class_counts"]).items()
    }
    out[NEWEST_DIAGNOSTIC] = tied_topk_share(best_checkpoint_test_scores(folder), k)
    out["test_dead_classes"] = dead_classes(scores["test_scores"], yt, k)
    if scores["test_scores"].shape[1] <= PER_CLASS_MAX:
        recall, at_k1 = recall_and_rank_k1_by_class(scores["test_scores"], yt, k)
        out.update(test_topk_recall_by_class=recall, test_rank_k1_share_by_class=at_k1)
    if config["dataset"] == "synthetic":
        val_post, test_post = _posteriors(json.dumps(config["dataset_options"], sort_keys=True))
        out.update({f"test_avg{name}_{part}": v for part, v in entropy_split(test_post, hits).items()})
        out.update(bayes_ceilings(test_post, sorted({float(x) for x in config["eval_ks"]} | {k})))
        if "val_scores_softmax" in scores:
            probs = scores["val_scores_softmax"]
            out["pseudo_in_bayes_topk"] = pseudo_label_quality(probs, yv, val_post, k, config["batch_size"])
    return out


#: the diagnostics of finished runs already computed in this process, by (folder, K): a reference
#: is rewritten after every pass with the rows of all its seeds so far
_DIAGNOSED: dict[tuple[str, float | None], dict[str, Any]] = {}


def add_diagnostics(rows: list[dict[str, Any]], k: float | None = None) -> list[dict[str, Any]]:
    """Rows with :func:`run_diagnostics` of their run folders merged in (rows without a folder
    unchanged); a folder is diagnosed once per process."""
    out = []
    for row in rows:
        if "run" not in row:
            out.append(row)
            continue
        key = (str(row["run"]), k)
        if key not in _DIAGNOSED:
            _DIAGNOSED[key] = run_diagnostics(row["run"], k)
        out.append({**row, **copy.deepcopy(_DIAGNOSED[key])})
    return out
