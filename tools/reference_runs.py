"""Compute the committed reference results of both protocols and the claims ledger.

    python tools/reference_runs.py                      # every experiment, both arms, seeds 0-4
    python tools/reference_runs.py --jobs 2             # the same in two processes (what `make references` runs)
    python tools/reference_runs.py --dry-run            # runs per experiment and arm, estimated cost
    python tools/reference_runs.py --arm paper --experiments label_noise
    python tools/reference_runs.py --ledger-only

Per experiment (``book/protocol.md``):

* **paper arm**: each method with its paper's fixed recipe over the seeds, nothing tuned;
* **tuned arm**: the bracketing search on the validation split (every point on the two tuning
  draws), then the chosen values over the seeds.

The reference file ``book/avgk_book/reference_results/<experiment>_<preset>.json`` (``"arms": {"paper":
{"rows", "seeds", ...}, "tuned": {"rows", "seeds", "tuning", ...}}``) is rewritten after the
tuning and after every pass (``--pass-size`` seeds at a time), so a killed session loses at most
the runs in progress: runs are cached (``$AVGK_CACHE_DIR``) and resumed from their last epoch, and
a part already finished is skipped: an arm whose recorded run fingerprints include those of the
runs it would train now, a tuning whose recorded base grid equals the current one. The ledger
``claims.json`` is rebuilt from every reference of the preset after each experiment; the script
prints its total wall time at the end. ``--jobs N`` splits the experiments into N processes of one
thread each, balanced by the estimated cost (an experiment tuned by another runs after it in the
same process), and rebuilds the ledger when all are done.

The ledger (format 2, :mod:`avgk_book.claims`) reads every experiment reference of the preset
and every loss benchmark ``bench_losses_<device>.json`` (the cost claim, when it holds repeated
timings); ``--ledger-only`` rebuilds it from the committed files without training anything.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from avgk_book.claims import VERDICTS, ledger_document, usable_reference
from avgk_book.experiments import (
    EXPERIMENTS,
    RESULTS_DIR,
    TUNING_SEEDS,
    chosen_from_reference,
    expand,
    load_reference,
    run_experiment,
    save_arms_reference,
    tune,
)
from avgk_book.experiments.grid import _config, _methods_of, lr_grid_of, tuning_keys
from avgk_book.experiments.tuning import MAX_EXTENSIONS, _unbalanced_twin
from avgk_book.references import load_json_reference, reference_names, seal
from avgk_lib.config import TrainConfig
from avgk_lib.rundir import atomic_write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling module, also when this file is loaded by path
from reference_diagnostics import NEWEST_DIAGNOSTIC, add_diagnostics  # noqa: E402  (tools/reference_diagnostics.py)

#: seconds per training epoch, measured on this machine (2 CPU cores, two single-thread processes
#: at a time), per dataset family and loss; a loss missing here costs as cross-entropy.
#: synthetic: at batch 128, the median of wall_seconds / epochs over the runs of the committed cpu
#: references of the single-arm protocol (November 2026); an epoch at batch b counts 128 / b times
#: as long (its steps: the MLP's step costs about the same at any of these batch sizes).
#: fashion_mnist: the median of the per-epoch seconds of the paper arm's runs (batch 64, stacks of
#: 2-6 members, November 2026), whatever the batch (the CNN's epoch is compute bound). CPU runs of
#: convolutional models are no longer stacked (stacked.stacking_pays): one by one they were about
#: 1.4x faster in benchmarks/bench_train_many.py, so this figure is now an upper bound.
SECONDS_PER_EPOCH = {
    ("synthetic", "cross_entropy"): 0.19,
    ("synthetic", "smooth_topk_svm"): 0.92,
    ("synthetic", "noised_topk"): 0.40,
    ("synthetic", "imbalanced_noised_topk"): 0.58,
    ("synthetic", "focal"): 0.30,
    ("synthetic", "ldam"): 0.36,
    ("synthetic", "assume_negative"): 0.24,
    ("synthetic", "an_ls"): 0.24,
    ("synthetic", "wan"): 0.23,
    ("synthetic", "epr"): 0.24,
    ("synthetic", "role"): 0.66,
    ("synthetic", "two_head"): 0.26,
    ("fashion_mnist", "cross_entropy"): 19.3,
    ("fashion_mnist", "smooth_topk_svm"): 20.8,
    ("fashion_mnist", "noised_topk"): 19.5,
    ("fashion_mnist", "two_head"): 26.2,
}
#: seconds per run outside its epochs (data, the final evaluations of the best and the last epoch):
#: the paper arm's Fashion-MNIST pass of 9 runs took 2,200 s, 44 s a run more than its epochs
SECONDS_PER_RUN = {"synthetic": 1.0, "fashion_mnist": 44.0}


#: where the references and the ledger are written (the committed folder; a test points it elsewhere)
OUT = RESULTS_DIR
#: the dataset families whose settings run (``--datasets``; None: all): a partial regeneration
DATASETS: list[str] | None = None


def log(message: str) -> None:
    job = os.environ.get("AVGK_JOB")
    print(time.strftime("%H:%M:%S"), *([f"[job {job}]"] if job else []), message, flush=True)


def ledger_path(preset: str) -> Path:
    """The ledger of ``preset``: ``claims.json`` for ``cpu`` (the one the book reads), else
    ``claims_<preset>.json`` (a smoke or colab regeneration never overwrites the book's ledger)."""
    return OUT / ("claims.json" if preset == "cpu" else f"claims_{preset}.json")


def write_ledger(preset: str) -> None:
    """Rebuild the ledger of ``preset`` (:func:`ledger_path`) from its references (current format,
    with runs) and the committed loss benchmarks."""
    references = {name: ref for name in EXPERIMENTS if usable_reference(ref := load_reference(name, preset, OUT))}
    benchmarks = {stem: load_json_reference(stem) for stem in reference_names() if stem.startswith("bench_losses")}
    payload = ledger_document(references, benchmarks, preset=preset)
    path = ledger_path(preset)
    atomic_write_json(path, seal(payload))
    counts = ", ".join(f"{sum(e['verdict'] == v for e in payload['claims'])} {v}" for v in VERDICTS)
    log(f"wrote {path} ({len(payload['claims'])} entries, Holm over {payload['holm_family_size']} tests: {counts})")
    for note in payload["skipped"]:
        log(f"skipped {note['id']}: {note['reason']}")


# ------------------------------------------------------------------------------ plans and costs


def tuning_base(name: str, preset: str, *, every_family: bool = False) -> list[tuple[str, TrainConfig]]:
    """(method, config) of every run of the tuning's first round: each method's base grid on every
    tuning draw (extensions come on top), of the asked dataset families (``--datasets``) or, with
    ``every_family``, of all (what a reference's ``tuning_base`` digest covers); empty for an
    experiment without tuning."""
    experiment = EXPERIMENTS[name]
    spec = experiment.preset(preset)
    if experiment.tuned_from or not spec.tune:
        return []
    out = []
    for setting in spec.settings:
        asked = every_family or setting.picked_by(DATASETS)
        if _unbalanced_twin(spec, setting) is not None or not asked:
            continue
        for method_name, method in _methods_of(experiment, setting).items():
            grid = method.knob_grid(lr_grid_of(spec, setting, method))
            for values, seed in itertools.product(itertools.product(*grid.values()), TUNING_SEEDS):
                point = method.point(dict(zip(grid, values, strict=True)))
                out.append((method_name, _config(setting, method, point, setting.tune_k, seed, {})))
    return out


def _extension_bound(name: str, preset: str) -> int:
    """The most tuning runs the extensions can add: every knob extended twice (grid stays a product)."""
    experiment = EXPERIMENTS[name]
    spec = experiment.preset(preset)
    if experiment.tuned_from or not spec.tune:
        return 0
    extra = 0
    for setting in spec.settings:
        if _unbalanced_twin(spec, setting) is None and setting.picked_by(DATASETS):
            for method in _methods_of(experiment, setting).values():
                sizes = [len(v) for v in method.knob_grid(lr_grid_of(spec, setting, method)).values()]
                full = 1
                for n in sizes:
                    full *= n + MAX_EXTENSIONS if n > 1 else n
                base = 1
                for n in sizes:
                    base *= n
                extra += (full - base) * len(TUNING_SEEDS)
    return extra


def digest(configs: list[TrainConfig]) -> str:
    return hashlib.sha256("".join(sorted(c.fingerprint() for c in configs)).encode()).hexdigest()[:16]


def seconds(config: TrainConfig) -> float:
    """Estimated training time of one run from :data:`SECONDS_PER_EPOCH` (measured on this
    project's 2-core CPU for the synthetic and Fashion-MNIST runs; NaN for any other dataset, whose
    runs belong on a GPU: ``book/how_to_run.md`` gives their times)."""
    if config.dataset not in ("synthetic", "fashion_mnist"):
        return math.nan
    family = config.dataset
    per_epoch = SECONDS_PER_EPOCH.get((family, config.loss), SECONDS_PER_EPOCH[(family, "cross_entropy")])
    if family == "synthetic":
        per_epoch *= 128 / config.batch_size
    if config.max_batches:
        n_train = config.dataset_options.get("n_train") or config.dataset_options.get("train_subset") or 10_000
        per_epoch *= min(1.0, config.max_batches * config.batch_size / n_train)
    return per_epoch * config.epochs + SECONDS_PER_RUN[family]


def runs_here(name: str, preset: str, arm: str) -> bool:
    """Whether ``name`` has an ``arm`` at ``preset`` with a setting of the asked dataset families."""
    if preset not in EXPERIMENTS[name].presets:
        return False
    spec = EXPERIMENTS[name].preset(preset)
    if arm == "paper" and spec.paper is None:
        return False
    return any(s.picked_by(DATASETS) for s in spec.arm(arm))


def arm_cost(name: str, preset: str, seeds: list[int], arm: str) -> dict[str, Any]:
    """Estimated seconds of one arm: ``seed_runs`` and ``tuning_runs`` (counts), ``seconds`` (the
    tuning's base grid and the seed runs) and ``worst`` (every knob extended twice)."""
    runs = expand(name, preset, seeds, arm=arm, datasets=DATASETS)
    cost = sum(seconds(r.config) for r in runs)
    tuning = tuning_base(name, preset) if arm == "tuned" else []
    extra = _extension_bound(name, preset) if arm == "tuned" else 0
    base_cost = sum(seconds(c) for _, c in tuning)
    worst = base_cost + (extra * base_cost / len(tuning) if tuning else 0.0)
    return {
        "seed_runs": len(runs),
        "tuning_runs": len(tuning),
        "extensions": extra,
        "seconds": cost + base_cost,
        "worst": cost + worst,
    }


def experiment_cost(name: str, preset: str, seeds: list[int], arms: list[str]) -> float:
    """Estimated seconds of every asked arm of one experiment (extensions not counted)."""
    return sum(arm_cost(name, preset, seeds, arm)["seconds"] for arm in arms if runs_here(name, preset, arm))


def dry_run(names: list[str], preset: str, seeds: list[int], arms: list[str], jobs: int = 1) -> None:
    """Print the runs per experiment and arm and their estimated cost on this machine."""
    names = [n for n in names if any(runs_here(n, preset, arm) for arm in arms)]
    total = 0.0
    print(f"preset {preset}, seeds {seeds}, tuning draws {list(TUNING_SEEDS)}")
    print(f"{'experiment':22} {'arm':6} {'tuning runs':>22} {'seed runs':>9} {'estimate':>14}")
    for name in names:
        for arm in arms:
            if not runs_here(name, preset, arm):
                continue
            c = arm_cost(name, preset, seeds, arm)
            total += c["seconds"]
            cells = f"{c['tuning_runs']} (+ <= {c['extensions']})" if c["tuning_runs"] else "0"
            hours = (
                f"{c['seconds'] / 3600:.2f}-{c['worst'] / 3600:.2f} h" if math.isfinite(c["seconds"]) else "GPU runs"
            )
            print(f"{name:22} {arm:6} {cells:>22} {c['seed_runs']:>9} {hours:>14}")
    if not math.isfinite(total):
        print("no CPU estimate: these runs need a GPU (book/how_to_run.md gives measured GPU times)")
        return
    print(f"total (without extensions): {total / 3600:.2f} h of process time, one run at a time (stacked MLPs: less)")
    if jobs > 1:
        groups = job_groups(names, {n: experiment_cost(n, preset, seeds, arms) for n in names}, jobs)
        for i, (group, cost) in enumerate(groups):
            print(f"job {i + 1}: {' '.join(group)} ({cost / 3600:.2f} h)")
        print(f"wall time with --jobs {jobs} (one thread each): about {max(c for _, c in groups) / 3600:.2f} h")


def job_groups(names: list[str], cost: dict[str, float], jobs: int) -> list[tuple[list[str], float]]:
    """Split ``names`` into at most ``jobs`` groups of about equal estimated cost (longest first to
    the cheapest group); an experiment ``tuned_by`` another goes after it in its group (it reads
    that experiment's tuning)."""
    chains: dict[str, list[str]] = {}
    for name in names:
        root = next((r for r in EXPERIMENTS[name].tuned_from if r in names), name)
        chains.setdefault(root, []).append(name)
    for root, chain in chains.items():
        chain.sort(key=lambda n: n != root)  # the tuner first
    groups: list[tuple[list[str], float]] = [([], 0.0) for _ in range(max(1, min(jobs, len(chains))))]
    for chain in sorted(chains.values(), key=lambda c: -sum(cost[n] for n in c)):
        i = min(range(len(groups)), key=lambda j: groups[j][1])
        groups[i] = (groups[i][0] + chain, groups[i][1] + sum(cost[n] for n in chain))
    return [g for g in groups if g[0]]


def run_jobs(args: argparse.Namespace, arms: list[str]) -> int:
    """``--jobs N``: the experiments in N processes of one thread each (:func:`job_groups`), then the
    ledger; the exit status is the first failing job's."""
    groups = job_groups(
        args.experiments, {n: experiment_cost(n, args.preset, args.seeds, arms) for n in args.experiments}, args.jobs
    )
    common = [
        "--preset",
        args.preset,
        "--seeds",
        *map(str, args.seeds),
        "--pass-size",
        str(args.pass_size),
        "--arm",
        args.arm,
    ]
    if args.datasets:
        common += ["--datasets", *args.datasets]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = []
    for i, (group, cost) in enumerate(groups):
        log(f"job {i + 1}: {' '.join(group)} (estimate {cost / 3600:.2f} h)")
        command = [sys.executable, __file__, *common, "--experiments", *group]
        procs.append(subprocess.Popen(command, env={**env, "AVGK_JOB": str(i + 1)}))
    codes = [p.wait() for p in procs]
    write_ledger(args.preset)
    failed = [i + 1 for i, code in enumerate(codes) if code]
    if failed:
        log(f"jobs {failed} failed (their output above); rerun the same command to resume")
    return next((c for c in codes if c), 0)


# ------------------------------------------------------------------------------ running


def _arms_of(name: str, preset: str) -> dict[str, Any]:
    reference = load_reference(name, preset, OUT)
    return dict(reference["arms"]) if reference and "arms" in reference else {}


def _label_picked(name: str, preset: str, label: str) -> bool:
    """Whether ``--datasets`` selects the setting of this dataset label (by its label or family)."""
    family = {s.labels["dataset"]: s.dataset for s in EXPERIMENTS[name].preset(preset).settings}
    return DATASETS is None or label in DATASETS or family.get(label, label) in DATASETS


def _other_family_tuning(name: str, preset: str, tuning: dict[str, Any]) -> dict[str, Any]:
    """The recorded tuning entries of the settings ``--datasets`` leaves out (kept as they are)."""
    if DATASETS is None:
        return {}
    return {
        key: entry
        for key, entry in tuning.items()
        if not _label_picked(name, preset, key.split("/", 1)[0].removeprefix("dataset="))
    }


def _carried_rows(name: str, preset: str, arm: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The recorded rows of the settings ``--datasets`` leaves out: kept as they are (a partial
    regeneration, e.g. 20 synthetic seeds, keeps the committed Fashion-MNIST runs)."""
    if DATASETS is None:
        return []
    return [r for r in rows if not _label_picked(name, preset, r["dataset"])]


def _carried_fingerprints(name: str, preset: str, arm: str, part: dict[str, Any], chosen: dict | None) -> list[str]:
    """The recorded run fingerprints of the families ``--datasets`` leaves out (those of the carried
    rows, :func:`_carried_rows`): every recorded one that is not a run of the asked families at
    the recorded seeds. Without them a tool that checks rows against fingerprints (chapter 9's
    conformal reference) would take the carried rows for unverified ones."""
    recorded = part.get("fingerprints") or []
    if DATASETS is None or not recorded:
        return []
    asked = set(fingerprints(name, preset, part["seeds"], chosen, arm)) if part.get("seeds") else set()
    return [fp for fp in recorded if fp not in asked]


def _diagnosed(name: str, preset: str, rows: list[dict[str, Any]]) -> bool:
    """Whether the rows of the asked families hold today's diagnostics (their newest key,
    :data:`NEWEST_DIAGNOSTIC`): a part recorded with the same runs but older diagnostics is run
    again, from the run cache, so that its rows gain them (no run is trained again)."""
    asked = [r for r in rows if DATASETS is None or _label_picked(name, preset, r["dataset"])]
    return all(NEWEST_DIAGNOSTIC in r for r in asked)


def _passes(seeds: list[int], size: int) -> list[list[int]]:
    return [seeds[: i + size] for i in range(0, len(seeds), size)]


def run_arm(name: str, preset: str, arm: str, seeds: list[int], pass_size: int, arms: dict[str, Any]) -> None:
    """One arm of one experiment (tuned: its tuning first), pass after pass, the reference
    rewritten after each; a part recorded with the same runs as now is skipped."""
    part = dict(arms.get(arm, {}))
    chosen = None
    if arm == "tuned":
        part = _tuning_part(name, preset, part, arms)
        # None: an experiment tuned_by another (or untuned) reads the committed choices
        chosen = {key: entry["chosen"] for key, entry in part["tuning"].items()} or None
    recorded = set(part.get("fingerprints") or [])
    same_runs = part.get("seeds") == seeds and set(fingerprints(name, preset, seeds, chosen, arm)) <= recorded
    if same_runs and _diagnosed(name, preset, part.get("rows", [])):
        log(f"== {name} {arm}: seeds {seeds} recorded with the same runs, skipped")
        return
    carried = _carried_rows(name, preset, arm, part.get("rows", []))
    carried_fingerprints = _carried_fingerprints(name, preset, arm, part, chosen)
    for done in _passes(seeds, pass_size):
        start = time.time()
        rows = run_experiment(name, preset, done, progress=False, log=log, chosen=chosen, arm=arm, datasets=DATASETS)
        # a partial run (--datasets) keeps the seeds of the rows it carries: the arm's seeds are both
        kept = part.get("seeds") or [] if carried else []
        part = {**part, "rows": carried + add_diagnostics(rows), "seeds": sorted({*kept, *done})}
        part["fingerprints"] = carried_fingerprints + fingerprints(name, preset, done, chosen, arm)
        arms[arm] = part
        path = save_arms_reference(name, preset, arms, OUT)
        log(f"== {name} {arm} seeds {done}: {time.time() - start:.0f} s, wrote {path}")


def _untuned(name: str, preset: str, recorded: dict[str, Any]) -> list[str]:
    """The tuning keys of the experiment's own settings and methods that ``recorded`` lacks: a
    partial run that tuned anew records the base digest of every family but tunes only its own."""
    experiment = EXPERIMENTS[name]
    if experiment.tuned_from or not experiment.preset(preset).tune:  # nothing of its own to tune
        return []
    return [key for key in tuning_keys(name, preset) if key not in recorded]


def _tuning_part(name: str, preset: str, part: dict[str, Any], arms: dict[str, Any]) -> dict[str, Any]:
    """The tuned arm's part with its tuning: the recorded one when its base grid equals today's; the
    recorded one plus the tuning of the methods it lacks when the recorded entries' base grid is
    unchanged (a method added to an experiment tunes alone); a new tuning otherwise."""
    base_runs = tuning_base(name, preset, every_family=True)
    base = digest([c for _, c in base_runs])
    recorded = part.get("tuning")
    if recorded is not None and part.get("tuning_base") == base and not _untuned(name, preset, recorded):
        log(f"== {name} tuned: tuning recorded, skipped")
        return part
    start = time.time()
    have = {m for m, _ in base_runs if any(key.endswith("/" + m) for key in recorded or {})}
    missing = sorted({m for m, _ in base_runs} - have)
    if recorded and missing and part.get("tuning_base") == digest([c for m, c in base_runs if m in have]):
        log(f"== {name} tuned: tuning recorded for {sorted(have)}; tuning {missing}")
        tuning = {**recorded, **tune(name, preset, log=log, datasets=DATASETS, methods=missing)}
        part = {**part, "tuning": tuning, "tuning_base": base}
    else:
        kept = _other_family_tuning(name, preset, recorded or {})
        old_chosen = {key: entry["chosen"] for key, entry in (recorded or {}).items()} or None
        # the rows, seeds and run fingerprints of the families left out are carried over as they are
        carried = _carried_fingerprints(name, preset, "tuned", part, old_chosen) if part.get("seeds") else []
        tuning = {**kept, **tune(name, preset, log=log, datasets=DATASETS)}
        rows = _carried_rows(name, preset, "tuned", part.get("rows", []))
        seeds = sorted({r["seed"] for r in rows})
        part = {"rows": rows, "seeds": seeds, "fingerprints": carried, "tuning": tuning, "tuning_base": base}
    arms["tuned"] = part
    save_arms_reference(name, preset, arms, OUT)
    log(f"== {name} tuned: tuning done in {time.time() - start:.0f} s")
    return part


def fingerprints(name: str, preset: str, seeds: list[int], chosen: dict | None, arm: str) -> list[str]:
    """The run fingerprints of an arm over ``seeds``, as :func:`run_experiment` would train them."""
    if arm == "tuned" and chosen is None:
        chosen = chosen_from_reference(name, preset, arm)
    return [r.config.fingerprint() for r in expand(name, preset, seeds, chosen, arm=arm, datasets=DATASETS)]


def _seed(text: str) -> int:
    """A ``--seeds`` value: an integer in ``[0, 2**63)``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: an integer >= 0") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"invalid seed {value}: seeds are integers in [0, 2**63)")
    return value


def _dataset_families() -> list[str]:
    """Every dataset family and dataset label of the catalog (the values ``--datasets`` accepts)."""
    families = set()
    for experiment in EXPERIMENTS.values():
        for spec in experiment.presets.values():
            for s in [*spec.settings, *(spec.paper or [])]:
                families.update({s.dataset, s.labels.get("dataset", s.dataset)})
    return sorted(families)


def main() -> int:
    from avgk_book.experiments import PRESETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", choices=list(PRESETS))
    # 20 seeds (book/protocol.md, A2); settings with max_seeds (Fashion-MNIST: 5) take the first ones
    parser.add_argument("--seeds", type=_seed, nargs="+", default=list(range(20)))
    parser.add_argument("--pass-size", type=int, default=3, help="seeds per pass between two reference writes")
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=list(EXPERIMENTS))
    parser.add_argument("--arm", choices=["paper", "tuned", "both"], default="both")
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=None,
        choices=_dataset_families(),
        help="only the settings of these dataset families or labels, e.g. synthetic or fashion_mnist-pairs",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="processes in parallel, one thread each (2 on a 2-core machine)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the runs and the estimated cost, train nothing")
    parser.add_argument("--ledger-only", action="store_true", help="only rebuild claims.json from the references")
    args = parser.parse_args()
    unknown = [n for n in args.experiments if n not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiments {unknown}; valid names: {', '.join(EXPERIMENTS)}")
    if args.pass_size < 1:
        parser.error("--pass-size must be >= 1")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    arms = ["paper", "tuned"] if args.arm == "both" else [args.arm]
    global DATASETS
    DATASETS = args.datasets
    if args.dry_run:
        dry_run(args.experiments, args.preset, args.seeds, arms, args.jobs)
        return 0
    started = time.time()
    if args.ledger_only:
        write_ledger(args.preset)
        return 0
    args.experiments = [n for n in args.experiments if any(runs_here(n, args.preset, arm) for arm in arms)]
    if not args.experiments:
        parser.error(f"nothing to run: no experiment has a setting of {args.datasets} in these arms at {args.preset}")
    if args.jobs > 1:
        code = run_jobs(args, arms)
        log(f"total wall time {time.time() - started:.0f} s")
        return code
    for name in args.experiments:
        recorded = _arms_of(name, args.preset)
        for arm in arms:
            if not runs_here(name, args.preset, arm):
                continue
            run_arm(name, args.preset, arm, args.seeds, args.pass_size, recorded)
        write_ledger(args.preset)
    log(f"total wall time {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
