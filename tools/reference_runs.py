"""Compute the committed reference results: every experiment at a preset, seed after seed.

    python tools/reference_runs.py --preset cpu --seeds 0 1 2

After each seed pass the reference files ``results/<experiment>_<preset>.json`` are rewritten
with the seeds finished so far, so an interrupted session still leaves usable references.
"""

from __future__ import annotations

import argparse
import time

from avgk_lib.experiments import EXPERIMENTS, run_experiment, save_reference


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--experiments", nargs="*", default=list(EXPERIMENTS))
    args = parser.parse_args()
    done: list[int] = []
    for seed in args.seeds:
        done.append(seed)
        for name in args.experiments:
            start = time.time()
            run_experiment(name, args.preset, [seed], progress=False, log=lambda m: print(m, flush=True))
            print(f"== {name} seed {seed}: {time.time() - start:.0f} s", flush=True)
        for name in args.experiments:
            rows = run_experiment(name, args.preset, done, progress=False, log=lambda m: None)
            print(f"wrote {save_reference(name, args.preset, done, rows)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
