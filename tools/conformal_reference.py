"""Compute chapter 9's committed conformal reference from the runs of the ``average_k`` references.

    AVGK_CACHE_DIR=/path/to/run/cache python tools/conformal_reference.py            # cpu, the chapters' arm
    python tools/conformal_reference.py --arm paper --losses cross_entropy two_head
    python tools/conformal_reference.py --dry-run                                     # which runs, found or missing

The committed references ``average_k_<preset>.json`` and ``average_k_long_tail_<preset>.json`` hold
rows without local paths. Each row's run folder is recomputed from its configuration:
:func:`avgk_book.experiments.expand` rebuilds the runs of the arm (its seeds, and in the tuned arm the
recorded tuning choices) and :func:`avgk_book.experiments.run_dir` names the folder in the run cache
``$AVGK_CACHE_DIR``. Only the runs whose (dataset, loss, seed, train_k) appear in the reference are
used; when the arm records its run fingerprints, a run whose configuration is not among them (the
library changed since) counts as missing, as does a run whose folder holds no intact result of that
configuration or no ``scores.pt``: the script lists every missing run and writes nothing unless
``--allow-partial`` is given.

Nothing is trained here. The rows (:func:`conformal_rows`: per run, the numbers that
:mod:`avgk_book.conformal_reference` describes and reads) go to
``book/avgk_book/reference_results/conformal_<preset>.json`` with provenance, a checksum and, per
source experiment, the reference they came from (its ``created`` time and checksum).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from avgk_book import conformal_reference as CR
from avgk_book.experiments import ARMS, RESULTS_DIR, expand, load_arm, load_reference, reference_tuning, run_dir
from avgk_book.references import write_reference
from avgk_lib import conformal as C
from avgk_lib import metrics as M
from avgk_lib import sets as S
from avgk_lib._checks import check_probabilities
from avgk_lib.rundir import RunDir

#: the head whose probabilities a two-head run is calibrated on (its multi-label head holds no distribution)
HEADS = {"two_head": "softmax"}


# ------------------------------------------------------------------ the numbers of one run


def _check_scores(scores: object) -> dict[str, torch.Tensor]:
    """The four tensors of ``scores.pt`` as float32 probabilities and int64 targets."""
    if not isinstance(scores, Mapping):
        raise TypeError(f"`scores` must be a dict with {', '.join(CR.SCORE_KEYS)}, got {type(scores).__name__}")
    missing = [k for k in CR.SCORE_KEYS if not isinstance(scores.get(k), torch.Tensor)]
    if missing:
        raise ValueError(f"`scores` lacks the tensors {', '.join(missing)}")
    out = {k: scores[k].float() if scores[k].is_floating_point() else scores[k].long() for k in CR.SCORE_KEYS}
    for split in ("val", "test"):
        p, y = out[f"{split}_scores"], out[f"{split}_targets"]
        if p.dim() != 2 or y.shape != (p.shape[0],) or p.shape[0] == 0:
            raise ValueError(
                f"`scores` {split}: scores (n, C) and n targets expected, got {tuple(p.shape)}, {tuple(y.shape)}"
            )
        check_probabilities(p, f"scores[{split}_scores]")
    if out["val_scores"].shape[1] != out["test_scores"].shape[1]:
        raise ValueError("`scores`: validation and test scores have different numbers of classes")
    return out


def _check_ks(ks: object, n_classes: int) -> list[float]:
    if not isinstance(ks, (list, tuple)) or not ks:
        raise ValueError(f"`ks` must be a non-empty list of average set sizes, got {ks!r}")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 < float(k) <= n_classes:
            raise ValueError(f"`ks` must hold sizes in (0, {n_classes}], got {k!r}")
    return [float(k) for k in ks]


def _check_alphas(alphas: object) -> list[float]:
    if not isinstance(alphas, (list, tuple)) or not alphas:
        raise ValueError(f"`alphas` must be a non-empty list of levels in (0, 1), got {alphas!r}")
    return [CR.check_alpha(a) for a in alphas]


def _coverage(sets: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    return {
        "micro": S.set_coverage(sets, targets, "micro"),
        "macro": S.set_coverage(sets, targets, "macro"),
        "size": S.set_size(sets),
    }


def _conformal(p_val, y_val, p_test, method: str, alpha: float, seed: int) -> torch.Tensor:
    """Test sets of ``method`` at ``alpha``, calibrated on the validation split."""
    qhat = C.calibrate(p_val, y_val, alpha, method, generator=torch.Generator().manual_seed(seed))
    return C.conformal_sets(p_test, qhat, method, generator=torch.Generator().manual_seed(seed + 1))


def _average_k(p_val: torch.Tensor, p_test: torch.Tensor, k: float) -> torch.Tensor:
    return M.average_k_sets(p_test, M.average_k_threshold(p_val, k))


def _rare_third(class_counts: object, n_classes: int) -> torch.Tensor:
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.shape != (n_classes,) or bool((counts < 0).any()):
        raise ValueError(f"`class_counts` must hold {n_classes} non-negative training counts, got {class_counts!r}")
    return counts <= torch.quantile(counts, 1 / 3)


def _class_summary(sets: torch.Tensor, targets: torch.Tensor, rare: torch.Tensor) -> dict[str, float]:
    cov = C.class_conditional_coverage(sets, targets).double()
    return {
        "rare": float(cov[rare].nanmean()),
        "rest": float(cov[~rare].nanmean()),
        "lowest": float(cov[~cov.isnan()].min()),
    }


def conformal_metrics(
    scores: Mapping[str, torch.Tensor],
    ks: Sequence[float],
    *,
    alphas: Sequence[float] = CR.ALPHAS,
    class_counts: Sequence[int] | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """The chapter's headline numbers of one model (the docstring of :mod:`avgk_book.conformal_reference`):
    keys ``CR.conformal_key``, ``CR.average_k_key``, ``CR.matched_size_key``, ``coverage_k`` /
    ``coverage_avgk_micro`` / ``coverage_avgk_size`` (matched coverage) and, with ``class_counts``,
    ``rare_lac``, ``rest_lac``, ``lowest_lac``, ``rare_avgk``, ``rest_avgk``, ``lowest_avgk`` and ``rare_k``.

    Args:
        scores: ``val_scores``, ``val_targets``, ``test_scores``, ``test_targets`` (probabilities
            and class indices, as a run's ``scores.pt`` holds them).
        ks: average set sizes of the setting. alphas: conformal levels (the matched-coverage
            and rare-class numbers always use ``CR.MAIN_ALPHA``). class_counts: training images
            per class (long-tailed settings). seed: of the APS/RAPS uniform draws.
    """
    data = _check_scores(scores)
    pv, yv, pt, yt = (data[k] for k in CR.SCORE_KEYS)
    n_classes = pv.shape[1]
    ks = _check_ks(ks, n_classes)
    alphas = _check_alphas(alphas)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}")
    rare = None if class_counts is None else _rare_third(class_counts, n_classes)
    row: dict[str, float] = {"n_val": len(yv), "n_test": len(yt), "n_classes": n_classes}
    for method in C.METHODS:
        for alpha in alphas:
            for stat, value in _coverage(_conformal(pv, yv, pt, method, alpha, seed), yt).items():
                row[CR.conformal_key(method, alpha, stat)] = value
    for k in ks:
        for stat, value in _coverage(_average_k(pv, pt, k), yt).items():
            row[CR.average_k_key(k, stat)] = value
        for method in C.METHODS:
            alpha = CR.alpha_for_mean_size(pv, yv, k, method)
            sets = _conformal(pv, yv, pt, method, alpha, seed)
            row[CR.matched_size_key(k, method, "alpha")] = alpha
            row[CR.matched_size_key(k, method, "micro")] = S.set_coverage(sets, yt)
            row[CR.matched_size_key(k, method, "size")] = S.set_size(sets)
    lac_qhat = C.calibrate(pv, yv, CR.MAIN_ALPHA, "lac")
    lac_val = C.conformal_sets(pv, lac_qhat, "lac")
    k_cov = CR.average_k_for_coverage(pv, yv, S.set_coverage(lac_val, yv))
    matched = _average_k(pv, pt, k_cov)
    row.update(
        coverage_k=k_cov, coverage_avgk_micro=S.set_coverage(matched, yt), coverage_avgk_size=S.set_size(matched)
    )
    if rare is not None:
        k_rare = S.set_size(lac_val)
        for name, sets in (("lac", C.conformal_sets(pt, lac_qhat, "lac")), ("avgk", _average_k(pv, pt, k_rare))):
            for part, value in _class_summary(sets, yt, rare).items():
                row[f"{part}_{name}"] = value
        row["rare_k"] = k_rare
    return row


def conformal_rows(
    runs: Sequence[Mapping[str, Any]], *, alphas: Sequence[float] = CR.ALPHAS, seed: int = 0
) -> list[dict]:
    """One row per finished run: its ``labels`` then :func:`conformal_metrics` of its ``scores.pt``.

    Each entry of ``runs`` holds ``run`` (the run folder), ``labels`` (dataset, loss, seed, arm,
    ...: copied into the row), ``ks`` (the setting's average set sizes) and optionally
    ``class_counts`` (training counts: the rare-class numbers) and ``head`` (a two-head run's
    head whose probabilities to use, ``val_scores_<head>``; the row records it)."""
    if not isinstance(runs, (list, tuple)) or not runs:
        raise ValueError(f"`runs` must be a non-empty list of {{'run', 'labels', 'ks'}} entries, got {runs!r}")
    rows = []
    for entry in runs:
        if not isinstance(entry, Mapping) or not {"run", "labels", "ks"} <= set(entry):
            raise ValueError(f"`runs` entries need 'run', 'labels' and 'ks', got {entry!r}")
        folder = Path(entry["run"])
        if not (folder / "scores.pt").is_file():
            raise ValueError(f"`runs`: {folder} holds no scores.pt (not a finished run)")
        data = RunDir(folder).load_scores()
        head = entry.get("head")
        if head is not None:
            data = {**data, "val_scores": data[f"val_scores_{head}"], "test_scores": data[f"test_scores_{head}"]}
        metrics = conformal_metrics(data, entry["ks"], alphas=alphas, class_counts=entry.get("class_counts"), seed=seed)
        rows.append({**dict(entry["labels"]), **({"head": head} if head else {}), **metrics})
    return rows


def write_conformal_reference(
    rows: Sequence[Mapping[str, Any]],
    *,
    preset: str,
    arm: str,
    seeds: Sequence[int],
    sources: Mapping[str, Any],
    alphas: Sequence[float] = CR.ALPHAS,
    seed: int = 0,
    directory: str | Path | None = None,
    device: str = "cpu",
) -> Path:
    """Commit ``rows`` as ``conformal_<preset>.json`` through :func:`avgk_book.references.write_reference`
    (provenance and checksum added), with the ``preset``, ``arm``, training ``seeds``, ``alphas``,
    the uniform-draw ``seed`` and ``sources``: per source experiment, what identifies the reference
    the runs were read from (its ``created`` time and checksum)."""
    if not isinstance(rows, (list, tuple)) or not rows or not all(isinstance(r, Mapping) for r in rows):
        raise ValueError("`rows` must be a non-empty list of row dicts")
    if arm not in ARMS:
        raise ValueError(f"`arm` must be one of {', '.join(ARMS)}, got {arm!r}")
    if not isinstance(seeds, (list, tuple)) or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"`seeds` must be a list of integers, got {seeds!r}")
    if not isinstance(sources, Mapping) or not sources:
        raise ValueError(f"`sources` must name the references the runs come from, got {sources!r}")
    payload = {
        "experiment": "conformal",
        "preset": preset,
        "arm": arm,
        "seeds": list(seeds),
        "alphas": _check_alphas(list(alphas)),
        "main_alpha": CR.MAIN_ALPHA,
        "uniform_seed": seed,
        "sources": dict(sources),
        "rows": [dict(r) for r in rows],
    }
    return write_reference(CR.stem(preset), payload, device=device, directory=directory)


# ------------------------------------------------------------------ the runs of the references


def _row_key(labels: dict[str, Any]) -> tuple:
    return (labels.get("dataset"), labels.get("loss"), labels.get("seed"), labels.get("train_k"))


def source_runs(
    name: str, preset: str, arm: str | None, losses: list[str], directory: Path
) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """(source record, entries for :func:`conformal_rows`, missing runs) of one experiment's reference."""
    part = load_arm(name, preset, arm, directory)
    if part is None:
        raise SystemExit(f"no {arm or 'default'} arm in the reference {name}_{preset}.json of {directory}")
    chosen_arm = part["arm"]
    wanted = {_row_key(r) for r in part["rows"] if r.get("loss") in losses}
    chosen = None
    if chosen_arm == "tuned":
        chosen = {k: v["chosen"] for k, v in reference_tuning(load_reference(name, preset, directory)).items()}
    runs = [
        r for r in expand(name, preset, part["seeds"], chosen=chosen, arm=chosen_arm) if _row_key(r.labels) in wanted
    ]
    recorded = set(part.get("fingerprints") or [])  # the arm's run fingerprints, when the reference records them
    entries, missing = [], []
    for run in runs:
        folder = run_dir(run.config)
        label = ", ".join(f"{k}={v}" for k, v in run.labels.items() if v is not None)
        if recorded and run.config.fingerprint() not in recorded:
            missing.append(f"{name}: {label}: its configuration today is not one the reference recorded ({folder})")
            continue
        result, why = RunDir(folder).read_result(run.config.fingerprint())
        if result is None or not (folder / "scores.pt").is_file():
            missing.append(
                f"{name}: {label}: {why or 'no finished run'}{'' if result is None else ', no scores.pt'} ({folder})"
            )
            continue
        counts = result.summary.get("class_counts") if run.config.dataset_options.get("imbalance_ratio") else None
        entries.append(
            {
                "run": str(folder),
                "labels": {"experiment": name, **run.labels},
                "ks": [float(k) for k in run.config.eval_ks],
                **({"class_counts": counts} if counts else {}),
                **({"head": HEADS[run.labels["loss"]]} if run.labels["loss"] in HEADS else {}),
            }
        )
    if len(runs) < len(wanted):
        found = {_row_key(r.labels) for r in runs}
        missing += [
            f"{name}: reference row {key} matches no run of the current configuration" for key in wanted - found
        ]
    raw = json.loads((directory / f"{name}_{preset}.json").read_text())
    record = {
        "arm": chosen_arm,
        "seeds": part["seeds"],
        "created": part.get("created"),
        "sha256": raw.get("sha256"),
        "runs": len(runs),
        "missing": len(missing),
    }
    return record, entries, missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--arm", choices=ARMS, default=None, help="default: the tuned arm when present, else paper")
    parser.add_argument("--losses", nargs="+", default=["cross_entropy"], help="models whose scores to calibrate")
    parser.add_argument("--references", type=Path, default=RESULTS_DIR, help="folder of the source references")
    parser.add_argument("--out", type=Path, default=None, help="folder to write into (default: the package's)")
    parser.add_argument("--allow-partial", action="store_true", help="write even when runs are missing")
    parser.add_argument("--dry-run", action="store_true", help="list the runs found and missing, compute nothing")
    args = parser.parse_args(argv)

    sources, entries, missing = {}, [], []
    for name in CR.SOURCES:
        record, found, lost = source_runs(name, args.preset, args.arm, args.losses, args.references)
        sources[name], entries, missing = record, entries + found, missing + lost
        print(f"{name}: {record['arm']} arm, seeds {record['seeds']}: {len(found)} runs found, {len(lost)} missing")
    arms = {record["arm"] for record in sources.values()}
    if len(arms) != 1:
        print(f"the source references give different arms {sorted(arms)}: pass --arm", file=sys.stderr)
        return 2
    if missing:
        print(f"{len(missing)} runs missing from the run cache:", *missing, sep="\n  ", file=sys.stderr)
        if not args.allow_partial and not args.dry_run:
            print("writing nothing (a partial reference needs --allow-partial)", file=sys.stderr)
            return 1
    if args.dry_run or not entries:
        return 0 if args.dry_run else 1
    rows = conformal_rows(entries)
    for row in rows:
        row.pop("run", None)
    seeds = sorted({row["seed"] for row in rows})
    path = write_conformal_reference(
        rows, preset=args.preset, arm=arms.pop(), seeds=seeds, sources=sources, directory=args.out
    )
    print(f"wrote {path} ({len(rows)} rows{', PARTIAL' if missing else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
