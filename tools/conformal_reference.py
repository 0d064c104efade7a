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

Nothing is trained here. The rows (:func:`avgk_book.conformal_reference.conformal_rows`) go to
``book/avgk_book/reference_results/conformal_<preset>.json`` with provenance, a checksum and, per source
experiment, the reference they came from (its ``created`` time and checksum).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from avgk_book import conformal_reference as CR
from avgk_book.experiments import ARMS, RESULTS_DIR, expand, load_arm, load_reference, reference_tuning, run_dir
from avgk_lib.rundir import RunDir

#: the head whose probabilities a two-head run is calibrated on (its multi-label head holds no distribution)
HEADS = {"two_head": "softmax"}


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
    rows = CR.conformal_rows(entries)
    for row in rows:
        row.pop("run", None)
    seeds = sorted({row["seed"] for row in rows})
    path = CR.write_conformal_reference(
        rows, preset=args.preset, arm=arms.pop(), seeds=seeds, sources=sources, directory=args.out
    )
    print(f"wrote {path} ({len(rows)} rows{', PARTIAL' if missing else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
