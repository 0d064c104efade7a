"""What an experiment chapter states: its setting, tuning, results and findings, as Markdown.

Everything here is computed from rows of :func:`avgk_lib.experiments.run_experiment` (the
reader's run) or from a committed reference; nothing is typed in by hand. Reference numbers and
the reader's own numbers are always labelled with their source (preset, seeds, commit).
"""

from __future__ import annotations

import math
from typing import Any

from .. import experiments as E
from ..metrics import k_label, metric_key
from .claims import build_ledger
from .display import markdown_table


def source_line(reference: dict[str, Any] | None, rows: list[dict[str, Any]], preset: str, seeds) -> str:
    """Where the numbers come from: the committed reference and this session's run."""
    own = f"**your run**: preset `{preset}`, seeds {list(seeds)}, {len(rows)} runs"
    if reference is None:
        return f"{own}; no committed reference for this preset."
    prov = reference["provenance"]
    ref = (
        f"**committed reference**: preset `{reference['preset']}`, seeds {reference['seeds']}, "
        f"tuning seed {reference.get('tuning_seed', 'n/a')}, commit `{prov['git_commit'][:8]}`, {prov['device_name']}, "
        f"{reference['total_wall_seconds'] / 60:.0f} min of training"
    )
    return f"{ref}; {own}."


def setting_markdown(name: str, preset: str) -> str:
    """The settings and methods of an experiment at a preset, read from its definition."""
    experiment = E.get_experiment(name)
    spec = experiment.preset(preset)
    rows = []
    for s in spec.settings:
        label = ", ".join(f"{k}={v}" for k, v in s.labels.items())
        data = s.dataset + (f" ({s.options['n_classes']} classes)" if "n_classes" in s.options else "")
        if s.options.get("imbalance_ratio", 1) > 1:
            data += f", long tail ratio {s.options['imbalance_ratio']:g}"
            data += ", balanced val/test" if s.options.get("balanced_eval") else ", val/test long-tailed"
        ks = ", ".join(f"{k:g}" for k in s.ks)
        seeds = f"first {s.max_seeds}" if s.max_seeds else "all"
        rows.append([label, data, ks, f"`{s.select.format(k=k_label(s.tune_k))}`", s.recipe["epochs"], seeds])
    lines = [markdown_table(["setting", "data", "K", "selection metric", "epochs", "seeds"], rows), ""]
    methods = []
    for method_name, m in experiment.methods.items():
        fixed = ", ".join(f"{k}={v}" for k, v in m.options.items()) or "-"
        knobs = ", ".join(f"{k} in {v}" for k, v in m.grid.items()) or "lr only"
        if m.lr_per_scale:
            knobs += " (grid on lr x scale)"
        methods.append([f"`{method_name}`", fixed, knobs])
    lines.append(markdown_table(["method", "fixed options", "tuned knobs (x lr grid)"], methods))
    grid = ", ".join(f"{x:g}" for x in spec.lr_grid)
    tuned = f"lr grid {{{grid}}}, tuned on validation" if spec.tune and not experiment.tuned_by else "not tuned here"
    lines += ["", f"Preset `{preset}`: {tuned}. {spec.note}"]
    return "\n".join(lines)


def tuning_markdown(reference: dict[str, Any] | None) -> str:
    """The tuning of a reference: per setting and method, the grid size, best validation score and choice."""
    if not reference or not reference.get("tuning"):
        return "_No tuning recorded for this preset._"
    rows = []
    for key, entry in reference["tuning"].items():
        values = [p["val"] for p in entry["grid"]]
        chosen = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry["chosen"].items())
        reused = " (reused)" if "reused_from" in entry else ""
        span = f"{min(values):.3f} - {max(values):.3f}"
        rows.append([f"{key}{reused}", len(values), span, chosen, f"{max(values):.3f}"])
    return markdown_table(["setting / method", "points", "val range", "chosen", "best val"], rows)


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


def results_markdown(rows: list[dict[str, Any]], by: list[str], metrics: dict[str, str]) -> str:
    """Mean and 95% interval over seeds of ``metrics`` (column -> header) per group ``by``.

    A metric whose values are all integers (an epoch number) is printed as an integer when every
    seed agrees, else with one decimal, never as ``5.0000 ± 0.0000``."""
    summary = E.summarize(rows, by=by, metrics=list(metrics))
    integer = {m: _all_integers([r[m] for r in rows if m in r]) for m in metrics}
    rows = []
    for entry in sorted(summary, key=lambda e: tuple(str(e[b]) for b in by)):
        cells = [str(entry[b]) if entry[b] is not None else "-" for b in by]
        cells += [_mean_cell(entry[m], entry[f"{m}_ci95"], entry["n_seeds"], integer[m]) for m in metrics]
        rows.append([*cells, entry["n_seeds"]])
    return markdown_table([*by, *metrics.values(), "seeds"], rows)


def ledger_for(name: str, reference: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The claims of one experiment evaluated on a reference (or on rows wrapped like one)."""
    if not reference or not reference.get("rows"):
        return []
    return build_ledger({name: reference})


def findings_markdown(entries: list[dict[str, Any]], source: str) -> str:
    """One bullet per claim and setting: effect in percentage points, interval, seeds, verdict."""
    if not entries:
        return f"_No claim could be evaluated on {source}._"
    lines = [f"Verdicts on {source} (paired per-seed differences, 95% Student-t interval):", ""]
    for e in entries:
        low, high = e["ci95"]
        ci = f"[{100 * low:+.2f}, {100 * high:+.2f}] pp" if math.isfinite(low) else "no interval (one seed)"
        versus = f" vs `{e['rival']}`" if e.get("rival") else ""
        extra = ""
        if "ours_mean" in e:
            extra = f" ({e['ours_mean']:.4f} vs {e['rival_mean']:.4f})"
        if "gain_where" in e:
            extra = f" (gain where the claim looks: {100 * e['gain_where']:+.2f} pp)"
        lines.append(
            f"- **{e['verdict']}**: {e['claim']}: {e['dataset']}, K={e['K']:g}{versus}, `{e['metric']}` "
            f"{100 * e['effect']:+.2f} pp{extra}, {ci}, {e['n_seeds']} seed{'s' * (e['n_seeds'] != 1)}."
        )
    return "\n".join(lines)


def collapse_markdown(rows: list[dict[str, Any]], threshold: float = 0.5) -> str:
    """Runs whose top-1 prediction is one class for more than ``threshold`` of the test inputs."""
    flagged = [r for r in rows if r.get("test_top1_mode_share", 0.0) > threshold]
    worst = max((r.get("test_top1_mode_share", 0.0) for r in rows), default=math.nan)
    if not flagged:
        return f"No collapsed run: the largest share of test inputs given the same top-1 class is {worst:.1%}."
    names = "; ".join(
        f"{r.get('dataset')}/{r['loss']}/seed {r['seed']}: {r['test_top1_mode_share']:.0%}" for r in flagged
    )
    return f"**{len(flagged)} collapsed run(s)** (one class is the top-1 prediction for over half the inputs): {names}."


def oracle_markdown(name: str, dataset: str, rows: list[dict[str, Any]], ks: list[float]) -> str:
    """Bayes oracle against softmax thresholding and the two-head loss (both heads), with the
    share of pseudo-positives inside the Bayes top-ceil(K), on a synthetic setting of ``name``."""
    from .analysis import synthetic_oracle

    part = [r for r in rows if r.get("dataset") == dataset]
    if not part:
        return f"_No run on {dataset}._"
    run = next(r for r in E.expand(name, "cpu", [0]) if r.labels["dataset"] == dataset)
    oracle = synthetic_oracle(run.config.dataset_options, ks)
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
