"""Compute the committed reference results and the claims ledger.

    python tools/reference_runs.py --preset cpu --seeds 0 1 2 3 4
    python tools/reference_runs.py --ledger-only

For each experiment: the tuning grid (validation split, tuning seed, equal lr grid for every
method; skipped for presets without tuning), then the chosen values over the seeds, pass after
pass (``--pass-size`` seeds at a time). After the tuning and after every pass the reference file
``avgk_lib/reference_results/<experiment>_<preset>.json`` is rewritten, so an interrupted session
still leaves usable references; the ledger ``claims.json`` is rebuilt from every reference of the
preset at the end. Runs are cached (``$AVGK_CACHE_DIR``): a second invocation only adds what is
missing.

The ledger (format 2, :mod:`avgk_lib.book.claims`) reads every experiment reference of the preset
(one arm, or ``"arms": {"paper": ..., "tuned": ...}``) and every loss benchmark
``bench_losses_<device>.json`` (the cost claim, when it holds repeated timings); ``--ledger-only``
rebuilds it from the committed files without training anything.
"""

from __future__ import annotations

import argparse
import time

from avgk_lib.book.claims import VERDICTS, ledger_document, usable_reference
from avgk_lib.book.diagnostics import add_diagnostics
from avgk_lib.checkpoint import atomic_write_json
from avgk_lib.experiments import EXPERIMENTS, RESULTS_DIR, load_reference, run_experiment, save_reference, tune
from avgk_lib.references import load_json_reference, reference_names, seal


def log(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


def write_ledger(preset: str) -> None:
    """Rebuild ``claims.json`` from the references of ``preset`` (current format, with runs) and
    the committed loss benchmarks."""
    references = {name: ref for name in EXPERIMENTS if usable_reference(ref := load_reference(name, preset))}
    benchmarks = {stem: load_json_reference(stem) for stem in reference_names() if stem.startswith("bench_losses")}
    payload = ledger_document(references, benchmarks, preset=preset)
    path = RESULTS_DIR / "claims.json"
    atomic_write_json(path, seal(payload))
    counts = ", ".join(f"{sum(e['verdict'] == v for e in payload['claims'])} {v}" for v in VERDICTS)
    log(f"wrote {path} ({len(payload['claims'])} entries, Holm over {payload['holm_family_size']} tests: {counts})")
    for note in payload["skipped"]:
        log(f"skipped {note['id']}: {note['reason']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--pass-size", type=int, default=3, help="seeds per pass between two reference writes")
    parser.add_argument("--experiments", nargs="*", default=list(EXPERIMENTS))
    parser.add_argument("--ledger-only", action="store_true", help="only rebuild claims.json from the references")
    args = parser.parse_args()
    unknown = [n for n in args.experiments if n not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiments {unknown}; valid names: {', '.join(EXPERIMENTS)}")
    if args.ledger_only:
        write_ledger(args.preset)
        return 0
    tunings = {}
    for name in args.experiments:
        start = time.time()
        tunings[name] = tune(name, args.preset, log=log)
        save_reference(name, args.preset, [], [], tuning=tunings[name])
        log(f"== {name}: tuning done in {time.time() - start:.0f} s")
    done: list[int] = []
    for first in range(0, len(args.seeds), args.pass_size):
        done += args.seeds[first : first + args.pass_size]
        for name in args.experiments:
            start = time.time()
            rows = add_diagnostics(run_experiment(name, args.preset, done, progress=False, log=log))
            path = save_reference(name, args.preset, done, rows, tuning=tunings[name])
            log(f"== {name} seeds {done}: {time.time() - start:.0f} s, wrote {path}")
        write_ledger(args.preset)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
