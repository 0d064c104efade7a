"""Loss and calibration speed against the peers, in one run (ratios, not absolute claims).

    python benchmarks/bench_losses.py [--device cuda] [--json PATH | --no-json]

The results are written, with the provenance block of every reference (git commit, versions,
device), to ``avgk_lib/reference_results/bench_losses_<cpu|cuda>.json`` unless ``--json`` names
another file or ``--no-json`` is given.

Forward + backward of one batch (B=128 by default, float32) for
  ours: noised_topk_loss, smooth_topk_svm_loss, topk_hinge_loss
  peers: pytopk.BalNoisedTopK (P1 authors), difftopk.SmoothTopKLoss (Berrada's smooth SVM),
         F.cross_entropy
  floor: drawing the (n_samples, B, C) Gaussian noise alone (torch.randn)
and the average-K calibration at Pl@ntNet-300K validation size (31,118 x 1,081) against a full
torch.sort. Times are medians of torch.utils.benchmark's blocked_autorange, in ``--rounds``
interleaved rounds (each row keeps every round's time in ``repeats_ms``).
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings
from pathlib import Path

import torch

from avgk_lib.book.benchmarking import HEADER, bench_calibration, bench_losses
from avgk_lib.references import reference_dir, write_reference

warnings.filterwarnings("ignore")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--n-samples", type=int, default=5)
    parser.add_argument("--min-run-time", type=float, default=2.0, help="seconds per loss and setting, all rounds")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (the ledger's cost claim pairs them)")
    parser.add_argument("--json", help="write the results here (default: the package's reference_results folder)")
    parser.add_argument("--no-json", action="store_true", help="print only")
    parser.add_argument("--skip-calibration", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(
        f"device={device} ({name}), torch {torch.__version__}, threads={torch.get_num_threads()}, "
        f"float32, B={args.batch}, n_samples={args.n_samples}; times in ms (fwd+bwd, median)"
    )
    print(HEADER)
    rows = bench_losses(device, args.batch, args.n_samples, args.min_run_time, rounds=args.rounds)
    calibration = None
    if not args.skip_calibration:
        calibration = bench_calibration(device)
        print(
            f"\naverage_k_threshold on {calibration['n']} x {calibration['C']} (K={calibration['K']}): "
            f"{calibration['ours_ms']:.1f} ms vs full torch.sort {calibration['sort_ms']:.1f} ms "
            f"-> {calibration['speedup']:.1f}x; selected {calibration['selected']} of target "
            f"{calibration['target_selected']}"
        )
    if not args.no_json:
        payload = {
            "benchmark": "bench_losses",
            # read by chapter 3 (the same facts are in "provenance")
            "device": str(device),
            "device_name": name,
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "settings": {
                "batch": args.batch,
                "n_samples": args.n_samples,
                "min_run_time": args.min_run_time,
                "rounds": args.rounds,
            },
            "losses": rows,
            "calibration": calibration,
        }
        path = Path(args.json) if args.json else reference_dir() / f"bench_losses_{device.type}.json"
        print(f"wrote {write_reference(path.stem, payload, device=device, directory=path.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
