"""Loss and calibration speed against the peers, in one run (ratios, not absolute claims).

    python benchmarks/bench_losses.py [--device cuda] [--threads N] [--json PATH | --no-json]

The results are written, with the provenance block of every reference (git commit, versions,
device), to ``book/avgk_book/reference_results/bench_losses_<cpu|cuda>.json`` unless ``--json`` names
another file or ``--no-json`` is given.

Forward + backward of one batch (B=128 by default, float32) for
  ours: noised_topk_loss, smooth_topk_svm_loss, topk_hinge_loss
  peers: pytopk.BalNoisedTopK (P1 authors), difftopk.SmoothTopKLoss (Berrada's smooth SVM),
         F.cross_entropy
  floor: drawing the (n_samples, B, C) Gaussian noise alone (torch.randn)
and the average-K calibration at Pl@ntNet-300K validation size (31,118 x 1,081) against a full
torch.sort. Times are medians of torch.utils.benchmark's blocked_autorange, in ``--rounds``
interleaved rounds (each row keeps every round's time in ``repeats_ms``). The machine's load
average (1, 5, 15 minutes) before and after the run is kept beside the times: on a shared machine
a loaded run says so.

``--cpu-clock`` (CPU only, one thread) times the same forward + backward calls by the CPU time of
the calling thread instead of the wall clock, the minimum over ``--rounds`` interleaved rounds:
a measure of the work done that holds on a loaded shared machine, where the wall clock counts the
time other processes hold the core (and, with several threads, every wait at a parallel region
for a descheduled thread). It prints the same table and writes no reference unless ``--json``
names a file.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from avgk_book.benchmarking import HEADER, bench_calibration, bench_losses, format_row, import_peers
from avgk_book.references import reference_dir, write_reference
from avgk_lib import functional as AF

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
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--cpu-clock", action="store_true", help="thread CPU time, one thread (see above)")
    args = parser.parse_args(argv)
    if args.cpu_clock:
        if args.device != "cpu" or args.threads not in (None, 1):
            parser.error("--cpu-clock times one CPU thread: use it with --device cpu and --threads 1 (or none)")
        args.threads, args.skip_calibration = 1, True
        args.no_json = args.no_json or not args.json
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_before = list(os.getloadavg())
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(
        f"device={device} ({name}), torch {torch.__version__}, threads={torch.get_num_threads()}, "
        f"float32, B={args.batch}, n_samples={args.n_samples}; times in ms (fwd+bwd, "
        f"{'minimum thread CPU time' if args.cpu_clock else 'median wall time'})"
    )
    print(HEADER)
    if args.cpu_clock:
        rows = bench_losses_cpu_clock(args.batch, args.n_samples, args.min_run_time, args.rounds)
    else:
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
    load_after = list(os.getloadavg())
    print(f"load average (1, 5, 15 min): before {load_before}, after {load_after}")
    if not args.no_json:
        payload = {
            "benchmark": "bench_losses",
            # read by chapter 3 (the same facts are in "provenance")
            "device": str(device),
            "device_name": name,
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "settings": {
                "clock": "thread_cpu" if args.cpu_clock else "wall",
                "batch": args.batch,
                "n_samples": args.n_samples,
                "min_run_time": args.min_run_time,
                "rounds": args.rounds,
            },
            "losses": rows,
            "calibration": calibration,
            "load_average": {"before": load_before, "after": load_after},
        }
        path = Path(args.json) if args.json else reference_dir() / f"bench_losses_{device.type}.json"
        print(f"wrote {write_reference(path.stem, payload, device=device, directory=path.parent)}")
    return 0


def _thread_cpu_ms(fn, seconds: float) -> float:
    """Thread CPU milliseconds per call of ``fn``, over about ``seconds`` of CPU time."""
    fn()  # warm-up
    start, calls = time.thread_time(), 0
    while time.thread_time() - start < seconds / 10:
        fn()
        calls += 1
    calls = max(1, calls * 10)
    start = time.thread_time()
    for _ in range(calls):
        fn()
    return (time.thread_time() - start) / calls * 1e3


def bench_losses_cpu_clock(
    batch: int, n_samples: int, min_run_time: float, rounds: int, classes=(100, 1081), ks=(1, 5, 10)
) -> list[dict]:
    """The rows of :func:`~avgk_book.benchmarking.bench_losses` (same candidates, same inputs)
    timed by thread CPU time on one thread; each value is the minimum over ``rounds`` interleaved
    rounds (every round's time is kept in ``repeats_ms``)."""
    difftopk, pytopk = import_peers()
    rows = []
    for n_classes in classes:
        for k in ks:
            g = torch.Generator().manual_seed(0)
            scores = torch.randn(batch, n_classes, generator=g)
            targets = torch.randint(0, n_classes, (batch,), generator=g)
            pytopk_loss = pytopk.BalNoisedTopK(k=k, epsilon=1.0, n_sample=n_samples)
            svm_peer = difftopk.SmoothTopKLoss(n_classes, k, tau=1.0, device="cpu")

            def fwd_bwd(loss_fn, scores=scores, targets=targets):
                def run() -> None:
                    x = scores.detach().requires_grad_(True)
                    loss_fn(x, targets).backward()

                return run

            candidates = {
                "noise_draw": lambda shape=(n_samples, batch, n_classes): torch.randn(shape),
                "ours_noised": fwd_bwd(lambda s, y, k=k: AF.noised_topk_loss(s, y, k, 1.0, n_samples)),
                "pytopk_noised": fwd_bwd(pytopk_loss),
                "ours_svm": fwd_bwd(lambda s, y, k=k: AF.smooth_topk_svm_loss(s, y, k, 1.0)),
                "difftopk_svm": fwd_bwd(svm_peer),
                "ours_hinge": fwd_bwd(lambda s, y, k=k: AF.topk_hinge_loss(s, y, k)),
                "cross_entropy": fwd_bwd(F.cross_entropy),
            }
            repeats: dict[str, list[float]] = {name: [] for name in candidates}
            for _ in range(rounds):
                for name, fn in candidates.items():
                    repeats[name].append(_thread_cpu_ms(fn, min_run_time / rounds))
            row: dict = {"C": n_classes, "K": k, "B": batch}
            row.update({name: min(values) for name, values in repeats.items()})
            row["repeats_ms"] = repeats
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
