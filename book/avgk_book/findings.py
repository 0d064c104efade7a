"""What an experiment chapter states: its setting, tuning, results and findings, as Markdown.

Everything here is computed from rows of :func:`avgk_book.experiments.run_experiment` (the
reader's run) or from a committed reference; nothing is typed in by hand. Reference numbers and
the reader's own numbers are always labelled with their source (preset, seeds, commit).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from avgk_lib.metrics import metric_key

from . import experiments as E
from . import stats as S
from .claims import (
    APART_QUALIFIERS,
    ARMS,
    build_ledger,
    effect_text,
    merged_into,
    precondition_value,
    setting_label,
    verdict_text,
)
from .display import markdown_table
from .plotting import METHOD_LABELS, method_label


def source_line(reference: dict[str, Any] | None, rows: list[dict[str, Any]], preset: str, seeds) -> str:
    """Where the numbers come from: the committed reference and this session's run."""
    own = f"**your run**: preset `{preset}`, seeds {list(seeds)}, {len(rows)} runs"
    if reference is None:
        return f"{own}; no committed reference for this preset."
    prov = reference["provenance"]
    arm = reference.get("arm", "tuned")
    draws = reference.get("tuning_seeds") or [reference.get("tuning_seed", "n/a")]
    tuning = f"tuning draws {draws}, " if arm == "tuned" else "nothing tuned, "
    ref = (
        f"**committed reference** ({arm} arm): preset `{reference['preset']}`, seeds {reference['seeds']}, "
        f"{tuning}commit `{prov['git_commit'][:8]}`, {prov['device_name']}, "
        f"{reference['total_wall_seconds'] / 60:.0f} min of training"
    )
    return f"{ref}; {own}."


def setting_markdown(name: str, preset: str) -> str:
    """The settings and methods of an experiment at a preset, read from its definition."""
    experiment = E.get_experiment(name)
    spec = experiment.preset(preset)
    paper_epochs = {tuple(sorted(p.labels.items())): p.recipe["epochs"] for p in spec.paper or []}
    rows = []
    for s in spec.settings:
        label = setting_label(s.labels)
        data = s.dataset + (f" ({s.options['n_classes']} classes)" if "n_classes" in s.options else "")
        if s.options.get("imbalance_ratio", 1) > 1:
            data += f", long tail ratio {s.options['imbalance_ratio']:g}"
            data += ", balanced val/test" if s.options.get("balanced_eval") else ", val/test long-tailed"
        ks = ", ".join(f"{k:g}" for k in s.ks)
        seeds = f"first {s.max_seeds}" if s.max_seeds else "all"
        paper = paper_epochs.get(tuple(sorted(s.labels.items())), "-")
        rows.append([label, data, ks, f"`{s.select_key(s.tune_k)}`", f"{s.recipe['epochs']} / {paper}", seeds])
    headers = ["setting", "data", "K", "selection metric", "epochs (tuned / paper arm)", "seeds"]
    lines = [markdown_table(headers, rows), ""]
    methods = []
    for method_name, m in experiment.methods.items():
        fixed = ", ".join(f"{k}={v}" for k, v in m.options.items()) or "-"
        knobs = ", ".join(f"{k} in {v}" for k, v in m.grid.items()) or "lr only"
        if m.lr_per_scale:
            knobs += " (each lr divided by the scale)"
        methods.append([method_label(method_name), fixed, knobs])
    lines.append(markdown_table(["method", "fixed options", "tuned knobs (x lr grid)"], methods))
    grid = ", ".join(f"{x:g}" for x in spec.lr_grid)
    tuned = f"lr grid {{{grid}}}, tuned on validation" if spec.tune and not experiment.tuned_by else "not tuned here"
    note = f" ({spec.note})" if spec.note else ""
    lines += ["", f"Preset `{preset}`{note}: {tuned}."]
    return "\n".join(lines)


def tuning_markdown(reference: dict[str, Any] | None) -> str:
    """The tuning of a reference: per setting and method, the grid size, best validation score,
    choice and whether every knob was bracketed (the best inside the values tried)."""
    if reference and reference.get("arm") == "paper":
        return "_The paper arm tunes nothing: each method runs with its paper's own values (the protocol page)._"
    if not reference or not reference.get("tuning"):
        return "_No tuning recorded for this preset._"
    rows = []
    for key, entry in reference["tuning"].items():
        scores = [p["val"] for p in entry["grid"]]
        values = [v for v in scores if math.isfinite(v)] or [math.nan]
        diverged = len(scores) - sum(math.isfinite(v) for v in scores)
        chosen = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry["chosen"].items())
        reused = " (reused)" if "reused_from" in entry else ""
        *labels, method = key.split("/")
        key_text = ", ".join([*(label.removeprefix("dataset=") for label in labels), method_label(method)])
        span = f"{min(values):.3f} - {max(values):.3f}" + (f" ({diverged} diverged)" if diverged else "")
        rows.append([f"{key_text}{reused}", len(scores), span, chosen, f"{max(values):.3f}", _bracket_text(entry)])
    headers = ["setting / method", "points", "val range", "chosen", "best val", "bracketed"]
    return markdown_table(headers, rows)


def _bracket_text(entry: Mapping[str, Any]) -> str:
    """``yes`` when every knob's choice is inside the values tried; else the knobs left at an edge
    (``hard limit`` where the extension stopped at the knob's documented limit)."""
    knobs = entry.get("knobs")
    if not knobs:
        return "n/a"
    edges = [f"{name}{' (hard limit)' if k.get('limit') else ''}" for name, k in knobs.items() if not k["bracketed"]]
    return "yes" if not edges else "no: " + ", ".join(edges) + " at an edge"


def _all_integers(values: list[Any]) -> bool:
    return bool(values) and all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _mean_cell(value: float, ci: float, n_seeds: int, integer: bool) -> str:
    """``mean ± ci`` of one table cell; a count (epochs) keeps integer form: ``17``, ``17.4 ± 2.1``."""
    if math.isnan(value):
        return "n/a"
    if integer:
        if n_seeds == 1 or (ci == 0 and float(value).is_integer()):
            return f"{value:.0f}"
        return f"{value:.1f} ± {ci:.1f}"
    return f"{value:.4f} ± {ci:.4f}" if n_seeds > 1 else f"{value:.4f}"


def _group_cell(column: str, value: Any) -> str:
    """A grouping cell: a readable method name for ``loss``, ``-`` for None, ``3`` for ``3.0``."""
    if value is None:
        return "-"
    if column == "loss" and isinstance(value, str):
        return method_label(value)
    if isinstance(value, float) and value.is_integer():
        return f"{value:.0f}"
    return str(value)


def results_markdown(rows: list[dict[str, Any]], by: list[str], metrics: dict[str, str]) -> str:
    """Mean and 95% interval over seeds of ``metrics`` (column -> header) per group ``by``.

    A metric whose values are all integers (an epoch number) is printed as an integer when every
    seed agrees, else with one decimal, never as ``5.0000 ± 0.0000``."""
    summary = E.summarize(rows, by=by, metrics=list(metrics))
    integer = {m: _all_integers([r[m] for r in rows if m in r]) for m in metrics}
    counts = {entry["n_seeds"] for entry in summary}
    table = []
    for entry in sorted(summary, key=lambda e: tuple(str(e[b]) for b in by)):
        cells = [_group_cell(b, entry[b]) for b in by]
        cells += [_mean_cell(entry[m], entry[f"{m}_ci95"], entry["n_seeds"], integer[m]) for m in metrics]
        table.append(cells if len(counts) == 1 else [*cells, entry["n_seeds"]])
    headers = [*({"loss": "method"}.get(b, b) for b in by), *metrics.values()]
    if len(counts) != 1:
        return markdown_table([*headers, "seeds"], table) + "\n\nEach cell: mean ± half-width of its 95% interval."
    (n,) = counts
    what = "mean ± half-width of the 95% interval over" if n > 1 else "one run:"
    return markdown_table(headers, table) + f"\n\nEach cell: {what} {n} seed{'s' * (n != 1)}."


def ledger_for(name: str, reference: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The claims of one experiment evaluated on a reference (or on rows wrapped like one)."""
    if not reference or not reference.get("rows"):
        return []
    return build_ledger({name: reference})


_PART = {
    "micro": "accuracy",
    "macro": "macro accuracy",
    "ambiguous": "accuracy on the most ambiguous 20% of test inputs",
    "clear": "accuracy on the clearest 20% of test inputs",
    "tail": "macro accuracy over the rarest third of the classes",
    "head": "macro accuracy over the most frequent third of the classes",
}
_METRIC = re.compile(r"(test|last|softmax)_(top|avg)([0-9p.]+)_([a-z_]+)")


def metric_text(metric: str) -> str:
    """A ledger metric in words: ``"test_top5_micro"`` -> ``"top-5 accuracy (best-validation
    checkpoint)"``; a gain metric ``"a - b"`` reads "a minus b".

    Example:
        >>> metric_text("last_avg1p5_macro")
        'average-1.5 macro accuracy (last epoch)'
    """
    if not isinstance(metric, str) or not metric:
        raise TypeError(f"`metric` must be a non-empty string, got {metric!r}")
    if " - " in metric:
        where, elsewhere = (metric_text(m).split(" (")[0] for m in metric.split(" - ", 1))
        return f"{where}, minus the {elsewhere.split(' ', 1)[1]}"
    match = _METRIC.fullmatch(metric)
    if not match:
        return metric
    when, kind, k, part = match.groups()
    k = k.replace("p", ".")
    name = f"top-{k}" if kind == "top" else f"average-{k}"
    checkpoint = {"test": "best-validation checkpoint", "last": "last epoch", "softmax": "softmax head"}[when]
    return f"{name} {_PART.get(part, part)} ({checkpoint})"


def _ceiling_metric(metric: str, options: Mapping[str, Any]) -> tuple[str, float] | None:
    """(set kind, K) when the Bayes sets bound ``metric`` on this synthetic setting, else None:
    micro accuracy always; macro accuracy only on a balanced test split (the Bayes sets of the
    balanced posterior maximise it); the ambiguity and frequency slices are not bounded here."""
    match = _METRIC.fullmatch(metric)
    if not match or match.group(1) == "softmax":
        return None
    balanced = options.get("balanced_eval") or options.get("imbalance_ratio", 1.0) == 1.0
    if match.group(4) != "micro" and not (match.group(4) == "macro" and balanced):
        return None
    return ("topk" if match.group(2) == "top" else "average_k"), float(match.group(3).replace("p", "."))


_CEILINGS: dict[tuple, float | None] = {}


def bayes_ceiling(entry: Mapping[str, Any]) -> float | None:
    r"""The Bayes ceiling of a ledger entry: on a synthetic setting (posterior known) the expected
    accuracy of the Bayes-optimal sets on the test inputs of each of the entry's seeds,
    :math:`\frac1n \sum_i \sum_{j \in S^*(x_i)} p(j \mid x_i)` with :math:`S^*` the top-K of the
    posterior (top-K metrics) or its average-K sets at one global threshold (average-K metrics),
    averaged over the seeds. No trained model can beat it in expectation. None for real data,
    for metrics it does not bound (see :func:`_ceiling_metric`) and for entries without seeds."""
    if not isinstance(entry, Mapping):
        raise TypeError(f"`entry` must be a ledger entry dict, got {type(entry).__name__}")
    seeds = tuple((entry.get("per_seed") or {}).get("seeds") or ())
    if not seeds or not isinstance(entry.get("metric"), str) or entry.get("experiment") not in E.EXPERIMENTS:
        return None
    key = (entry["experiment"], entry["preset"], tuple(sorted(entry["setting"].items())), entry["metric"], seeds)
    if key not in _CEILINGS:
        _CEILINGS[key] = _compute_ceiling(entry, seeds)
    return _CEILINGS[key]


def _compute_ceiling(entry: Mapping[str, Any], seeds: tuple[int, ...]) -> float | None:
    from avgk_lib.data import load_dataset
    from avgk_lib.data.oracle import bayes_average_k_sets, bayes_topk_sets, expected_set_accuracy

    values = []
    for seed in seeds:
        runs = [
            r
            for r in E.expand(entry["experiment"], entry["preset"], [seed])
            if all(r.labels.get(k) == v for k, v in entry["setting"].items())
        ]
        if not runs or runs[0].config.dataset != "synthetic":
            return None
        options = runs[0].config.dataset_options
        target = _ceiling_metric(entry["metric"], options)
        if target is None:
            return None
        kind, k = target
        posterior = load_dataset("synthetic", **options).extra["test_posterior"]
        sets = bayes_topk_sets(posterior, int(k)) if kind == "topk" else bayes_average_k_sets(posterior, k)
        values.append(expected_set_accuracy(posterior, sets))
    return math.fsum(values) / len(values)


def _p_text(p: float | None, label: str) -> str:
    return "" if p is None else f", {label} = {p:.2g}" if p >= 0.001 else f", {label} < 0.001"


def entry_markdown(
    entry: Mapping[str, Any],
    *,
    ceiling: float | None = None,
    holm: bool = True,
    arm: bool = True,
    claim: bool = True,
) -> str:
    """One result in words, every number from the entry: verdict, arm, setting, K, seeds, both
    methods' means (readable names), the paired effect with its 95% interval, the (Holm) p-value,
    the equivalence margin or the gain where the claim looks, the precondition, the Bayes ceiling
    when given, and the entry's notes. ``arm=False`` leaves the arm out (the reader's own run is
    no arm of the ledger); ``claim=False`` leaves the claim's wording out (it heads a group)."""
    if not isinstance(entry, Mapping):
        raise TypeError(f"`entry` must be a ledger entry dict, got {type(entry).__name__}")
    ours, rival = method_label(entry["ours"]), method_label(entry["rival"]) if entry.get("rival") else "-"
    seeds = entry["n_seeds"]
    head = (
        f"{verdict_text(entry)} ({entry['arm'] + ' arm; ' if arm else ''}{setting_label(entry['setting'])}; "
        f"K = {entry['K']:g}; "
        f"{seeds} {_unit_of_repeats(entry)}{'s' * (seeds != 1)})" + (f": {entry['claim']}." if claim else ":")
    )
    what = metric_text(entry["metric"])
    p = _p_text(entry.get("p_holm") if holm else entry.get("p"), "Holm-adjusted p" if holm else "p")
    if entry.get("test") == "gain":
        ci = entry.get("gain_where_ci95") or [math.nan, math.nan]
        gain = effect_text({"effect": entry["gain_where"], "ci95": ci, "unit": "accuracy"})
        body = (
            f"Gain of {ours} over {rival} where the claim looks: {gain}; that gain minus the gain elsewhere "
            f"({what}): {effect_text(entry)}{p}."
        )
    else:
        body = (
            f"{ours} {entry['ours_mean']:.4f} against {rival} {entry['rival_mean']:.4f} in {what}: paired effect "
            f"{effect_text(entry)}{p}."
        )
        if entry.get("margin"):
            low, high = entry.get("ci90", [math.nan, math.nan])
            margin = f"±{100 * entry['margin']:g} pp"
            interval = f"90% interval [{100 * low:+.2f}, {100 * high:+.2f}] pp" if math.isfinite(low) else "no interval"
            body += f" Equivalence margin {margin}, {interval}."
            worse = (entry.get("inferiority") or {}).get("p_holm" if holm else "p")
            if worse is not None:
                body += (
                    f" The p above tests equivalence (TOST); worse by more than the margin"
                    f"{_p_text(worse, 'Holm-adjusted p' if holm else 'p')}."
                )
    pre = entry.get("precondition")
    if pre:
        measured = "not measured" if pre["measured"] is None else f"{precondition_value(pre)}, {pre['status']}"
        body += f" Precondition ({pre['name']}): {measured}."
    if entry.get("mde") is not None and entry.get("unit") != "log_ratio":
        body += f" Minimum detectable effect at 80% power: {100 * entry['mde']:.2f} pp."
    if ceiling is not None:
        body += f" Bayes ceiling on these test inputs: {ceiling:.4f}."
    # notes the head (verdict text) or the precondition sentence already states
    said = (
        "precondition not measured",
        "precondition not met",
        "not counted as evidence",
        "decided by a named confound",
        "decided by a metric artefact",
    )
    notes = [readable_note(n) for n in entry.get("notes", []) if not n.startswith(said)]
    if notes:
        body += " Notes: " + "; ".join(notes) + "."
    return f"{head} {body}"


def _unit_of_repeats(entry: Mapping[str, Any]) -> str:
    """What an entry's repeats are: timing rounds for a benchmark, seeds otherwise."""
    return "timing round" if entry.get("preset") == "benchmark" else "seed"


def readable_note(note: str) -> str:
    """A ledger note with readable names: a method key in parentheses becomes its label and a
    metric in backticks its description.

    Example:
        >>> readable_note("unbracketed tuning of ours (noised_topk): epsilon=1")
        'unbracketed tuning of ours (noised top-K): epsilon=1'
    """
    if not isinstance(note, str):
        raise TypeError(f"`note` must be a string, got {note!r}")
    note = re.sub(r"\((\w+)\)", lambda m: f"({METHOD_LABELS.get(m.group(1), m.group(1))})", note)
    return re.sub(r"`([a-z0-9_.]+)`", lambda m: metric_text(m.group(1)), note)


def claim_headline(entries: Sequence[Mapping[str, Any]], claim_id: str, what: str) -> str:
    """One sentence on a claim's entries per arm: how many settings (dataset and K) each verdict
    has, marked when counted apart (confounded, not counted), and the range of the effects, e.g.
    "paper arm: contradicted in 3 of 3 settings (-2.5 to -1.9 pp)". ``what`` names the contrast
    ("the two-head loss minus softmax thresholding").

    Example:
        >>> e = [{"id": "c", "arm": "tuned", "verdict": "contradicted", "effect": -0.02, "unit": "accuracy"},
        ...      {"id": "c", "arm": "tuned", "verdict": "inconclusive", "effect": 0.001, "unit": "accuracy"}]
        >>> claim_headline(e, "c", "ours - theirs")
        '**ours - theirs**, tuned arm: contradicted in 1, inconclusive in 1 of 2 settings (effects -2.00 to +0.10 pp).'
    """
    mine = [e for e in entries if e["id"] == claim_id and e.get("unit") == "accuracy"]
    if not mine:
        return f"_No committed entry of {claim_id} yet._"
    parts = []
    for arm in ARMS:
        here = [e for e in mine if e["arm"] == arm]
        if not here:
            continue
        counts: dict[str, int] = {}
        for e in here:
            apart = APART_QUALIFIERS.get(e.get("status", ""), "")
            counts[e["verdict"] + apart] = counts.get(e["verdict"] + apart, 0) + 1
        low, high = min(e["effect"] for e in here), max(e["effect"] for e in here)
        verdicts = ", ".join(f"{v} in {n}" for v, n in counts.items())
        parts.append(
            f"{arm} arm: {verdicts} of {len(here)} settings (effects {100 * low:+.2f} to {100 * high:+.2f} pp)"
        )
    return f"**{what}**, " + "; ".join(parts) + "."


def ledger_findings_markdown(entries: list[Mapping[str, Any]], *, ceilings: bool = True) -> str:
    """The committed verdicts of a chapter: one bullet per claim (its id and wording) and under it
    one bullet per ledger entry (:func:`entry_markdown`: setting, arm, numbers, verdict), with the
    Bayes ceiling (:func:`bayes_ceiling`) where the posterior is known, and a closing
    line with the verdict counts. ``entries`` come from
    :func:`avgk_book.claims.entries_for` (Holm over the whole ledger)."""
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        raise TypeError("`entries` must be a list of ledger entry dicts")
    if not entries:
        return "_The committed ledger has no entry for this experiment._"
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for e in entries:
        groups.setdefault(e["id"], []).append(e)
    lines = []
    present = [a for a in ARMS if any(e["arm"] == a for e in entries)]  # an absent arm: the closing line
    merged = merged_into(entries)
    for claim_id, group in groups.items():
        lines.append(f"- **{claim_id}**: {group[0]['claim']}.")
        for e in group:
            text = entry_markdown(e, ceiling=bayes_ceiling(e) if ceilings else None, claim=False)
            lines.append(f"  - {text}")
        lines += _pending_arms(group, present, merged)
    counts = {v: sum(e["verdict"] == v for e in entries) for v in dict.fromkeys(e["verdict"] for e in entries)}
    tally = ", ".join(f"{n} {v}" for v, n in counts.items())
    missing = [a for a in ARMS if a not in present]
    absent = f" The {' and '.join(missing)} arm has no runs in the committed references yet." if missing else ""
    noun = "entry" if len(entries) == 1 else "entries"
    held = f"{' and '.join(present)} arm{'s' * (len(present) > 1)}"
    return "\n".join(lines) + f"\n\nIn all: {len(entries)} {noun} ({held}): {tally}.{absent}"


def _pending_arms(
    group: list[Mapping[str, Any]], arms: Sequence[str] = ARMS, merged: Mapping[tuple, str] | None = None
) -> list[str]:
    """A line per arm of ``arms`` that lacks some setting of ``group`` that another arm has (a
    benchmark has one protocol): merged into another entry (``merged``, from
    :func:`~avgk_book.claims.merged_into`), or not run yet."""
    if any(e.get("preset") == "benchmark" for e in group):
        return []
    settings = list(dict.fromkeys(setting_label(e["setting"]) for e in group))
    merged, claim = merged or {}, group[0].get("id")
    out = []
    for arm in arms:
        held = {setting_label(e["setting"]) for e in group if e["arm"] == arm}
        missing = [s for s in settings if s not in held]
        for s in [s for s in missing if (arm, s, claim) in merged]:
            kept = merged[(arm, s, claim)]
            out.append(f"  - *{arm} arm, {s}: merged into {kept} (identical per-seed values: the same evidence).*")
        if unrun := [s for s in missing if (arm, s, claim) not in merged]:
            out.append(f"  - *{arm} arm: not run yet on {'; '.join(unrun)}.*")
    return out


def findings_markdown(entries: list[dict[str, Any]], source: str) -> str:
    """Verdicts computed on ``source`` (the reader's run), one bullet per claim and setting, with
    uncorrected p-values (Holm over this run's tests only): :func:`entry_markdown` without ceiling."""
    if not isinstance(source, str) or not source:
        raise TypeError(f"`source` must be a non-empty string, got {source!r}")
    if not entries:
        return f"_No claim could be evaluated on {source}._"
    lines = [f"Verdicts on {source} (paired per-seed differences, 95% Student-t interval, Holm over this run):", ""]
    lines += [f"- {entry_markdown(e, arm=False)}" for e in entries]
    return "\n".join(lines)


def memorisation_facts(arms: Mapping[str, Mapping[str, Any] | None], ks: Mapping[str, int]) -> list[str]:
    """One sentence per (arm, noisy setting, loss) of a label-noise reference, for cross-entropy and
    the noised loss: the mean best epoch, the last epoch's distance from the best in test top-K,
    the largest fit of the flipped training labels (mean over seeds of the max over epochs of
    ``train_fit["flipped_acc"]``, when the rows carry a ``history``), the first seed's validation
    top-K after epoch 1 and the mean rise from there to the best; then the tuned arm's choice of
    epsilon. ``arms`` maps an arm to its part (:func:`~avgk_book.experiments.load_arm`; None: not
    run), ``ks`` a dataset label to the K of its top-K metric."""
    facts = []
    for arm, part in arms.items():
        rows = part["rows"] if part else []
        for dataset, p in sorted({(r["dataset"], r["label_noise"]) for r in rows if r["label_noise"]}):
            k = ks[dataset]
            for loss in ("cross_entropy", "noised_topk"):
                runs = [r for r in rows if (r["dataset"], r["label_noise"], r["loss"]) == (dataset, p, loss)]
                if runs:
                    facts.append(f"{arm} arm, {dataset}, p = {p}, {method_label(loss)}: {_fit_text(runs, k)}.")
            key = E.tuning_key({"dataset": dataset, "label_noise": p}, "noised_topk")
            tuning = part.get("tuning", {}).get(key)
            if tuning:
                grid = sorted({g["epsilon"] for g in tuning["grid"]})
                facts.append(
                    f"{arm} arm, {dataset}, p = {p}: the noised loss's tuning chose epsilon = "
                    f"{tuning['chosen']['epsilon']} from {grid}."
                )
    return facts


def _fit_text(runs: list[Mapping[str, Any]], k: int) -> str:
    n = len(runs)
    best = sum(r["best_epoch"] for r in runs) / n
    key = metric_key("top", k)
    gap = sum(r[f"last_{key}"] - r[f"test_{key}"] for r in runs) / n
    fits = [max(e["train_fit"]["flipped_acc"] for e in r["history"]) for r in runs if r.get("history")]
    fit = f"; it fits {sum(fits) / len(fits):.0%} of the flipped training labels at most" if fits else ""
    rise = sum(max(r["val_curve"]) - r["val_curve"][0] for r in runs) / n
    return (
        f"best epoch {best:.3g} of {len(runs[0]['val_curve'])} (mean of {n} seeds), last epoch "
        f"{100 * gap:+.2f} pp from the best in test top-{k}{fit}; validation top-{k} "
        f"{runs[0]['val_curve'][0]:.3f} after the first epoch (seed {runs[0]['seed']}), "
        f"{100 * rise:+.1f} pp to its best (mean)"
    )


def collapse_markdown(rows: list[dict[str, Any]], threshold: float = 0.5) -> str:
    """Runs whose top-1 prediction is one class for more than ``threshold`` of the test inputs,
    then the classes that runs never put in their top-K (:func:`dead_classes_markdown`)."""
    dead = dead_classes_markdown(rows)
    dead = f" {dead}" if dead else ""
    flagged = [r for r in rows if r.get("test_top1_mode_share", 0.0) > threshold]
    if not flagged:
        if not rows:
            return "No run to check for collapse."
        worst = max(rows, key=lambda r: r.get("test_top1_mode_share", 0.0))
        where = ", ".join(str(worst[k]) for k in ("arm", "dataset", "loss") if k in worst)
        return (
            f"No collapsed run: the largest share of test inputs given the same top-1 class is "
            f"{worst.get('test_top1_mode_share', 0.0):.1%} ({where}, seed {worst.get('seed')}).{dead}"
        )
    names = "; ".join(
        f"{r.get('dataset')}/{r['loss']}/seed {r['seed']}: {r['test_top1_mode_share']:.0%}" for r in flagged
    )
    return (
        f"**{len(flagged)} collapsed run(s)** (one class is the top-1 prediction for over half the inputs): "
        f"{names}.{dead}"
    )


def _class_name(dataset: str, c: int) -> str:
    if str(dataset).startswith("fashion_mnist"):
        from avgk_lib.data.fashion_mnist import CLASSES

        return CLASSES[c]
    return f"class {c}"


def dead_classes_markdown(rows: list[dict[str, Any]]) -> str:
    """The dead classes of the rows that record them (``test_dead_classes``: classes of the test
    split in no top-K set of the run, so a top-K recall of 0), grouped by arm, dataset and loss,
    each class with the number of seeds where it is dead; ``""`` when no row records them.

    Example:
        >>> rows = [{"arm": "paper", "dataset": "d", "loss": "a", "seed": s, "test_dead_classes": dead}
        ...         for s, dead in ((0, [3]), (1, [3, 4]), (2, []))]
        >>> dead_classes_markdown(rows).split(": ", 1)[1]
        'paper, d, a: class 3 (2 of 3 runs), class 4 (1 of 3 runs).'
    """
    checked = [r for r in rows if r.get("test_dead_classes") is not None]
    if not checked:
        return ""
    dead = [r for r in checked if r["test_dead_classes"]]
    if not dead:
        return f"No dead class: every test class is in some top-K set in each of the {len(checked)} runs."
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in checked:
        groups.setdefault(tuple(r.get(k) for k in ("arm", "dataset", "loss")), []).append(r)
    parts = []
    for key, runs in groups.items():
        counts: dict[int, int] = {}
        for r in runs:
            for c in r["test_dead_classes"]:
                counts[c] = counts.get(c, 0) + 1
        if counts:
            parts.append(f"{', '.join(str(k) for k in key if k is not None)}: {_dead_list(key[1], counts, runs)}")
    return (
        f"**Dead classes** (never in a top-K set on test, K the run's own; recall 0), in {len(dead)} of "
        f"{len(checked)} runs: " + "; ".join(parts) + "."
    )


#: a group with more dead classes than this is summarised: its mean per run and the most frequent
DEAD_LISTED = 6


def _dead_list(dataset: str, counts: dict[int, int], runs: list[dict[str, Any]]) -> str:
    """Each dead class with its seed count, or, past :data:`DEAD_LISTED` classes, the mean number
    per run and the classes dead most often."""
    ranked = sorted(counts.items(), key=lambda cn: (-cn[1], cn[0]))
    listed = ", ".join(f"{_class_name(dataset, c)} ({n} of {len(runs)} runs)" for c, n in ranked[:DEAD_LISTED])
    if len(ranked) <= DEAD_LISTED:
        return listed
    per_run = _mean([len(r["test_dead_classes"]) for r in runs])
    return f"{per_run:.1f} per run, {len(ranked)} classes in all; most often {listed}"


def oracle_markdown(name: str, dataset: str, rows: list[dict[str, Any]], ks: list[float]) -> str:
    """Bayes oracle against softmax thresholding and the two-head loss (both heads), with the
    share of pseudo-positives inside the Bayes top-ceil(K), on a synthetic setting of ``name``;
    every column is a mean over the seeds of ``rows`` (the oracle on each seed's own test inputs)."""
    from .analysis import synthetic_oracle

    part = [r for r in rows if r.get("dataset") == dataset]
    if not part:
        return f"_No run on {dataset}._"
    seeds = sorted({r["seed"] for r in part})
    runs = {r.labels["seed"]: r for r in E.expand(name, "cpu", seeds) if r.labels["dataset"] == dataset}
    per_seed = [synthetic_oracle(runs[s].config.dataset_options, ks) for s in seeds]  # each seed draws its test set
    oracle = {k: math.fsum(o[k] for o in per_seed) / len(per_seed) for k in ks}
    rows = []
    for k in ks:
        key = metric_key("avg", k, "micro")
        ce = E.summarize([r for r in part if r["loss"] == "cross_entropy"], ["loss"], ["test_" + key])
        metrics = ["test_" + key, "softmax_" + key, "pseudo_in_bayes_topk"]
        th = E.summarize([r for r in part if r["loss"] == "two_head" and r["train_k"] == k], ["loss"], metrics)
        if not ce or not th:
            continue
        cells = [oracle[k], ce[0][metrics[0]], *(th[0][m] for m in metrics)]
        rows.append([f"{k:g}", *(f"{v:.4f}" for v in cells)])
    header = ["K", "Bayes oracle", "softmax thresholding", "two-head, multi-label head", "two-head, softmax head"]
    return markdown_table([*header, "pseudo-positives in Bayes top-K"], rows)


def ablation_differences(rows: list[Mapping[str, Any]], baseline: str = "default") -> list[dict[str, Any]]:
    r"""Per ablation variant and training K: the paired difference to ``baseline`` (same seed, same
    K) in average-K accuracy (micro, best-validation checkpoint), mean over seeds and half-width of
    its 95% Student-t interval: ``{"variant", "d{K}", "d{K}_ci95", "n{K}"}`` per variant, in the
    order the variants first appear (``baseline`` left out)."""
    if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
        raise TypeError("`rows` must be a list of ablation rows")
    base = {(r["seed"], r["train_k"]): r for r in rows if r.get("variant") == baseline}
    out: dict[str, dict[str, Any]] = {}
    for variant in dict.fromkeys(r.get("variant") for r in rows):
        if variant in (None, baseline):
            continue
        entry = out.setdefault(variant, {"variant": variant})
        for k in sorted({r["train_k"] for r in rows if r.get("variant") == variant}):
            name = f"{k:g}"
            metric = f"test_avg{name}_micro"
            d = [
                r[metric] - base[r["seed"], k][metric]
                for r in rows
                if r.get("variant") == variant and r["train_k"] == k and (r["seed"], k) in base
            ]
            if len(d) >= 2:
                low, high = S.t_test(d)["ci"]
                entry.update({f"d{name}": sum(d) / len(d), f"d{name}_ci95": (high - low) / 2, f"n{name}": len(d)})
    return list(out.values())


COLLAPSE_DROP = 0.2  # a run this far below the default's median accuracy lost the task (ablation, descriptive)


def collapsed_seeds(rows: list[Mapping[str, Any]], baseline: str = "default") -> dict[tuple[str, float], list[int]]:
    """Per (variant, training K): the seeds whose average-K accuracy (micro, best checkpoint) is
    more than :data:`COLLAPSE_DROP` below the median of ``baseline`` at that K: a run that lost
    much of the task, not a small difference. The rule is descriptive (the ablation adds no ledger
    entry, protocol A8).

    Example:
        >>> rows = [{"variant": v, "seed": s, "train_k": 3.0, "test_avg3_micro": a}
        ...         for v, s, a in [("default", 0, .7), ("default", 1, .3), ("default", 2, .7), ("x", 0, .6)]]
        >>> collapsed_seeds(rows)
        {('default', 3.0): [1]}
    """
    if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
        raise TypeError("`rows` must be a list of ablation rows")
    out: dict[tuple[str, float], list[int]] = {}
    for k in sorted({r["train_k"] for r in rows}):
        metric = f"test_avg{k:g}_micro"
        base = [r[metric] for r in rows if r.get("variant") == baseline and r["train_k"] == k]
        if not base:
            continue
        floor = statistics.median(base) - COLLAPSE_DROP
        for r in rows:
            if r["train_k"] == k and r[metric] < floor:
                out.setdefault((r.get("variant"), k), []).append(r["seed"])
    return {key: sorted(seeds) for key, seeds in out.items()}


def _seed_list(seeds: list[int], n_seeds: int) -> str:
    return (
        f"seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}"
        if len(seeds) <= 5
        else f"{len(seeds)} of {n_seeds} seeds"
    )


def ablation_findings(reference: Mapping[str, Any] | None) -> list[str]:
    """What the ablation shows, in sentences computed from its rows: per training K, the variants
    whose paired difference to the default has a 95% interval above or below 0 (not Holm-corrected:
    the ablation is descriptive), then the collapsed seeds (:func:`collapsed_seeds`), which decide
    the wide intervals."""
    if not reference or not reference.get("rows"):
        return []
    rows = reference["rows"]
    diffs = ablation_differences(rows)
    n_seeds = len({r["seed"] for r in rows})
    out = []
    for k in sorted({r["train_k"] for r in rows}):
        name = f"{k:g}"
        has = [(d["variant"], d[f"d{name}"], d[f"d{name}_ci95"]) for d in diffs if f"d{name}" in d]
        text = {v: f"{v} {100 * m:+.2f} ± {100 * h:.2f} pp" for v, m, h in has}
        better = [text[v] for v, m, h in has if m - h > 0]
        worse = [text[v] for v, m, h in has if m + h < 0]
        level = [text[v] for v, m, h in has if m - h <= 0 <= m + h]
        out.append(
            f"K = {name} ({n_seeds} seeds; ± is the half-width of the 95% interval): above the default: "
            f"{'; '.join(better) or 'none'}. Below it: {'; '.join(worse) or 'none'}. Not told apart from it "
            f"(the interval holds 0): {'; '.join(level) or 'none'}."
        )
    drop = f"{100 * COLLAPSE_DROP:g} pp"
    collapsed = collapsed_seeds(rows)
    if not collapsed:
        return [*out, f"No run collapsed (none is more than {drop} below the default's median)."]
    parts = [f"{v} at K = {k:g}: {_seed_list(s, n_seeds)}" for (v, k), s in collapsed.items()]
    out.append(
        f"Collapsed runs (average-K accuracy more than {drop} below the default's median at that K): "
        + "; ".join(parts)
        + f". A seed that loses 40 pp moves a mean over {n_seeds} seeds by {40 / n_seeds:.1f} pp: the wide "
        "intervals of the figure are such runs, not small effects on every seed."
    )
    return out


def plot_ablation(reference: Mapping[str, Any] | None):
    """The two-head ablation's figure: each variant's paired difference to the default
    (percentage points, 95% intervals, one bar per training K); None without a reference."""
    from .plotting import bar_table

    if not reference or not reference.get("rows"):
        return None
    rows = reference["rows"]
    ks = sorted({r["train_k"] for r in rows})
    scaled = [
        {"variant": d["variant"], **{k: 100 * v for k, v in d.items() if k.startswith("d")}}
        for d in ablation_differences(rows)
    ]
    fig = bar_table(
        scaled,
        "variant",
        {f"d{k:g}": f"average-{k:g}" for k in ks},
        ylabel="minus the default (pp)",
        title="Two-head loss: one choice at a time, paired difference to the default",
    )
    fig.axes[0].axhline(0.0, color="black", linewidth=1)
    return fig


def ablation_tables(reference: Mapping[str, Any] | None):
    """The two-head ablation's absolute average-K accuracies per variant, one table per training K."""
    from .display import Block

    if not reference or not reference.get("rows"):
        return Block(None, "_No ablation reference is committed for this preset._")
    rows = reference["rows"]
    tables = []
    for k in sorted({r["train_k"] for r in rows}):
        part = [r for r in rows if r["train_k"] == k]
        name = f"{k:g}"
        metrics = {f"test_avg{name}_micro": f"average-{name} micro", f"test_avg{name}_macro": f"average-{name} macro"}
        tables.append(f"**K = {name}**\n\n" + results_markdown(part, ["variant"], metrics))
    return Block(None, "\n\n".join(tables))


# ------------------------------------------------------------- Fashion-MNIST noise designs (chapter 4)

#: the two Fashion-MNIST label-noise settings of chapter 4, by dataset label (protocol A5, A11)
FASHION_DESIGNS = {"fashion_mnist": "groups of 4 and 3 (the trap)", "fashion_mnist-pairs": "pairs (P1's rule)"}
_DESIGN_NAMES = {"fashion_mnist": "trap design (groups of 4 and 3)", "fashion_mnist-pairs": "pairs design (P1's rule)"}


def _fashion_runs(arms: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, list[dict[str, Any]]]]:
    """(dataset label, arm) -> loss -> the committed rows of the Fashion-MNIST noise settings."""
    out: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for part in arms.values():
        for r in (part or {}).get("rows", []):
            if r["dataset"] in FASHION_DESIGNS:
                out.setdefault((r["dataset"], r["arm"]), {}).setdefault(r["loss"], []).append(r)
    return dict(sorted(out.items()))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def fashion_noise_table(arms: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per noise design and arm: the noised loss's epsilon, the mean test top-2 of the
    noised loss, cross-entropy and the smooth SVM, and the noised loss's dead classes per run
    ("not recorded" when a run predates them)."""
    table = []
    for (dataset, arm), by_loss in _fashion_runs(arms).items():
        noised = by_loss.get("noised_topk", [])
        if not noised:
            continue
        recorded = all(r.get("test_dead_classes") is not None for r in noised)
        row = {"noise groups": FASHION_DESIGNS[dataset], "arm": arm, "epsilon": noised[0].get("opt_epsilon")}
        for loss, name in (
            ("noised_topk", "noised top-K"),
            ("cross_entropy", "cross-entropy"),
            ("smooth_topk_svm", "smooth SVM"),
        ):
            row[f"top-2, {name}"] = _mean([r["test_top2_micro"] for r in by_loss[loss]]) if loss in by_loss else None
        row["dead classes, noised top-K"] = (
            _mean([len(r["test_dead_classes"]) for r in noised]) if recorded else "not recorded"
        )
        table.append(row)
    return table


def _class_means(rows: list[dict[str, Any]], key: str) -> list[float] | None:
    if not rows or not all(r.get(key) for r in rows):
        return None
    return [_mean([r[key][c] for r in rows]) for c in range(len(rows[0][key]))]


def fashion_recall_by_class(arms: Mapping[str, Any], arm: str = "paper") -> dict[str, list[float]]:
    """Per series "<loss>, <design>" (noised loss and smooth SVM, ``arm``): each class's top-2
    recall on test, mean over the seeds that record it."""
    out = {}
    for (dataset, run_arm), by_loss in _fashion_runs(arms).items():
        for loss in ("noised_topk", "smooth_topk_svm"):
            means = _class_means(by_loss.get(loss, []), "test_topk_recall_by_class") if run_arm == arm else None
            if means is not None:
                out[f"{method_label(loss)}, {FASHION_DESIGNS[dataset]}"] = means
    return out


def rank_k1_markdown(arms: Mapping[str, Any], dataset: str = "fashion_mnist-pairs", arm: str = "paper") -> str:
    """The class whose label the noised loss leaves at rank K + 1 most often (a flat hinge), with
    that share and the class's top-2 recall for the noised loss, the smooth SVM and cross-entropy;
    ``""`` when the rows do not record it."""
    from avgk_lib.data.fashion_mnist import CLASSES

    by_loss = _fashion_runs(arms).get((dataset, arm), {})
    losses = ("noised_topk", "smooth_topk_svm", "cross_entropy")
    at_k1 = {loss: _class_means(by_loss.get(loss, []), "test_rank_k1_share_by_class") for loss in losses}
    recall = {loss: _class_means(by_loss.get(loss, []), "test_topk_recall_by_class") for loss in losses}
    if any(v is None for v in (*at_k1.values(), *recall.values())):
        return ""
    worst = max(range(len(CLASSES)), key=at_k1["noised_topk"].__getitem__)
    ce_worst = max(range(len(CLASSES)), key=at_k1["cross_entropy"].__getitem__)
    gap = {loss: _mean([r["test_top2_micro"] for r in by_loss[loss]]) for loss in losses}
    # Fashion-MNIST's test split is balanced (1,000 images a class): a class weighs 1/10 of top-2
    share = (recall["smooth_topk_svm"][worst] - recall["noised_topk"][worst]) / len(CLASSES)
    return (
        f"In the {_DESIGN_NAMES[dataset]}, {arm} arm, {len(by_loss['noised_topk'])} seeds, the noised loss leaves "
        f"{at_k1['noised_topk'][worst]:.0%} of the test inputs of **{CLASSES[worst]}** with their label at rank 3, "
        f"where its hinge is flat (smooth SVM {at_k1['smooth_topk_svm'][worst]:.0%}, cross-entropy "
        f"{at_k1['cross_entropy'][worst]:.0%}); that class's top-2 recall is {recall['noised_topk'][worst]:.3f}, "
        f"against {recall['smooth_topk_svm'][worst]:.3f} for the smooth SVM and {recall['cross_entropy'][worst]:.3f} "
        f"for cross-entropy. On the balanced test split that class alone costs the noised loss "
        f"{100 * share:.1f} of the {100 * (gap['smooth_topk_svm'] - gap['noised_topk']):.1f} pp of top-2 it trails "
        f"the smooth SVM by. The class cross-entropy itself leaves at rank 3 most often is {CLASSES[ce_worst]} "
        f"({at_k1['cross_entropy'][ce_worst]:.0%})."
    )
