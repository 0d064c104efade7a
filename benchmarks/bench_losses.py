"""Loss and calibration speed against the peers, in one run (ratios, not absolute claims).

    python benchmarks/bench_losses.py [--device cuda] [--json results/bench_losses_cpu.json]

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
import torch.nn.functional as F
from torch.utils.benchmark import Timer

import avgk_lib
from avgk_lib import functional as AF
from avgk_lib.metrics import average_k_threshold

warnings.filterwarnings("ignore")


def _median_ms(fn, min_run_time: float) -> float:
    fn()  # warm-up
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def _fwd_bwd(loss_fn, scores: torch.Tensor, targets: torch.Tensor, device: torch.device):
    def run() -> None:
        x = scores.detach().requires_grad_(True)
        loss_fn(x, targets).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return run


def bench_losses(device: torch.device, batch: int, n_samples: int, min_run_time: float) -> list[dict]:
    import difftopk
    import pytopk

    rows = []
    for n_classes in (100, 1081):
        for k in (1, 5, 10):
            g = torch.Generator().manual_seed(0)
            scores = torch.randn(batch, n_classes, generator=g).to(device)
            targets = torch.randint(0, n_classes, (batch,), generator=g).to(device)
            pytopk_loss = pytopk.BalNoisedTopK(k=k, epsilon=1.0, n_sample=n_samples)
            svm_peer = difftopk.SmoothTopKLoss(n_classes, k, tau=1.0, device=str(device))

            def noise_floor(shape=(n_samples, batch, n_classes)):
                torch.randn(shape, device=device)
                if device.type == "cuda":
                    torch.cuda.synchronize()

            candidates = {
                "noise_draw": noise_floor,
                "ours_noised": _fwd_bwd(
                    lambda s, y, k=k: AF.noised_topk_loss(s, y, k, 1.0, n_samples), scores, targets, device
                ),
                "pytopk_noised": _fwd_bwd(pytopk_loss, scores, targets, device),
                "ours_svm": _fwd_bwd(lambda s, y, k=k: AF.smooth_topk_svm_loss(s, y, k, 1.0), scores, targets, device),
                "difftopk_svm": _fwd_bwd(svm_peer, scores, targets, device),
                "ours_hinge": _fwd_bwd(lambda s, y, k=k: AF.topk_hinge_loss(s, y, k), scores, targets, device),
                "cross_entropy": _fwd_bwd(F.cross_entropy, scores, targets, device),
            }
            row = {"C": n_classes, "K": k, "B": batch}
            for name, fn in candidates.items():
                row[name] = _median_ms(fn, min_run_time)
            rows.append(row)
            print(_format_row(row), flush=True)
    return rows


HEADER = (
    f"{'C':>5} {'K':>3} | {'noise':>7} {'noised':>7} {'pytopk':>7} {'svm':>7} {'difftopk':>8} {'hinge':>7} {'CE':>6}"
    f" | {'pytopk/ours':>11} {'ours/noise':>10} {'dtk/ours_nz':>11} {'dtk/svm':>7} {'ours/CE':>7}"
)


def _format_row(r: dict) -> str:
    return (
        f"{r['C']:>5} {r['K']:>3} | {r['noise_draw']:7.3f} {r['ours_noised']:7.3f} {r['pytopk_noised']:7.3f}"
        f" {r['ours_svm']:7.3f} {r['difftopk_svm']:8.3f} {r['ours_hinge']:7.3f} {r['cross_entropy']:6.3f}"
        f" | {r['pytopk_noised'] / r['ours_noised']:11.2f} {r['ours_noised'] / r['noise_draw']:10.2f}"
        f" {r['difftopk_svm'] / r['ours_noised']:11.2f} {r['difftopk_svm'] / r['ours_svm']:7.2f}"
        f" {r['ours_noised'] / r['cross_entropy']:7.1f}"
    )


def bench_calibration(device: torch.device, n: int = 31_118, n_classes: int = 1_081, k: float = 5.0) -> dict:
    g = torch.Generator().manual_seed(0)
    scores = torch.softmax(torch.randn(n, n_classes, generator=g) * 3, dim=1).to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def ours():
        average_k_threshold(scores, k)
        sync()

    def full_sort():
        torch.sort(scores.reshape(-1), descending=True)
        sync()

    t_ours = _median_ms(ours, 1.0)
    t_sort = _median_ms(full_sort, 1.0)
    threshold = average_k_threshold(scores, k)
    selected = int((scores >= threshold).sum())
    return {
        "n": n,
        "C": n_classes,
        "K": k,
        "ours_ms": t_ours,
        "sort_ms": t_sort,
        "speedup": t_sort / t_ours,
        "selected": selected,
        "target_selected": round(n * k),
    }


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
