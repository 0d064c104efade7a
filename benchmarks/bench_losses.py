"""Loss and calibration speed against the peers, in one run (ratios, not absolute claims).

    python benchmarks/bench_losses.py [--device cuda] [--json avgk_lib/reference_results/bench_losses_cpu.json]

Forward + backward of one batch (B=128 by default, float32) for
  ours: noised_topk_loss, smooth_topk_svm_loss, topk_hinge_loss
  peers: pytopk.BalNoisedTopK (P1 authors), difftopk.SmoothTopKLoss (Berrada's smooth SVM),
         F.cross_entropy
  floor: drawing the (n_samples, B, C) Gaussian noise alone (torch.randn)
and the average-K calibration at Pl@ntNet-300K validation size (31,118 x 1,081) against a full
torch.sort. Times are medians of torch.utils.benchmark's blocked_autorange.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings

import torch

import avgk_lib
from avgk_lib.book.benchmarking import HEADER, bench_calibration, bench_losses

warnings.filterwarnings("ignore")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--n-samples", type=int, default=5)
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per measurement")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--skip-calibration", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(
        f"device={device} ({name}), torch {torch.__version__}, threads={torch.get_num_threads()}, "
        f"float32, B={args.batch}, n_samples={args.n_samples}; times in ms (fwd+bwd, median)"
    )
    print(HEADER)
    rows = bench_losses(device, args.batch, args.n_samples, args.min_run_time)
    calibration = None
    if not args.skip_calibration:
        calibration = bench_calibration(device)
        print(
            f"\naverage_k_threshold on {calibration['n']} x {calibration['C']} (K={calibration['K']}): "
            f"{calibration['ours_ms']:.1f} ms vs full torch.sort {calibration['sort_ms']:.1f} ms "
            f"-> {calibration['speedup']:.1f}x; selected {calibration['selected']} of target "
            f"{calibration['target_selected']}"
        )
    if args.json:
        payload = {
            "benchmark": "bench_losses",
            "device": str(device),
            "device_name": name,
            "torch": torch.__version__,
            "avgk_lib": avgk_lib.__version__,
            "threads": torch.get_num_threads(),
            "python": sys.version.split()[0],
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "losses": rows,
            "calibration": calibration,
        }
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
