"""Loss and calibration timings against the peers, measured in one process (ratios, not claims).

Used by ``benchmarks/bench_losses.py`` (the command-line table) and by the book's chapter on
cost. Peers: the P1 authors' ``pytopk`` (``BalNoisedTopK``), Berrada's smooth top-k SVM as
shipped by ``difftopk`` (``SmoothTopKLoss``) and ``F.cross_entropy``; the floor of the noised
loss is the time to draw its Gaussian noise. Times are medians of
``torch.utils.benchmark.Timer.blocked_autorange`` (forward + backward of one batch).
"""

from __future__ import annotations

import logging
import statistics

import torch
import torch.nn.functional as F

from avgk_lib import functional as AF
from avgk_lib.metrics import average_k_threshold

# torch.utils.benchmark imports cpp_extension, which warns about CUDA_HOME on CPU-only machines
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils.benchmark import Timer  # noqa: E402


def import_peers():
    """Import ``difftopk`` and ``pytopk`` without their import-time chatter (a missing optional
    torch-sparse notice and a CUDA_HOME warning on CPU machines)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        import difftopk
        import pytopk
    return difftopk, pytopk


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


def bench_losses(
    device: torch.device,
    batch: int = 128,
    n_samples: int = 5,
    min_run_time: float = 0.5,
    classes: tuple[int, ...] = (100, 1081),
    ks: tuple[int, ...] = (1, 5, 10),
    echo: bool = True,
    rounds: int = 1,
) -> list[dict]:
    """Median forward+backward milliseconds of each loss, per (C, K).

    With ``rounds`` > 1 the candidates are timed in interleaved rounds (round r times every loss
    once, ``min_run_time / rounds`` seconds each, so a burst of machine load hits every loss of
    the round alike); each row then also holds ``repeats_ms``: per loss, its median of every round
    (what the ledger's paired cost claim reads), and the row's value is the median of the rounds."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"`rounds` must be an integer >= 1, got {rounds!r}")
    difftopk, pytopk = import_peers()

    rows = []
    for n_classes in classes:
        for k in ks:
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
            row: dict = {"C": n_classes, "K": k, "B": batch}
            repeats: dict[str, list[float]] = {name: [] for name in candidates}
            for _ in range(rounds):
                for name, fn in candidates.items():
                    repeats[name].append(_median_ms(fn, min_run_time / rounds))
            for name, values in repeats.items():
                row[name] = statistics.median(values)
            if rounds > 1:
                row["repeats_ms"] = repeats
            rows.append(row)
            if echo:
                print(format_row(row), flush=True)
    return rows


HEADER = (
    f"{'C':>5} {'K':>3} | {'noise':>7} {'noised':>7} {'pytopk':>7} {'svm':>7} {'difftopk':>8} {'hinge':>7} {'CE':>6}"
    f" | {'pytopk/ours':>11} {'ours/noise':>10} {'dtk/ours_nz':>11} {'dtk/svm':>7} {'ours/CE':>7}"
)


def format_row(r: dict) -> str:
    return (
        f"{r['C']:>5} {r['K']:>3} | {r['noise_draw']:7.3f} {r['ours_noised']:7.3f} {r['pytopk_noised']:7.3f}"
        f" {r['ours_svm']:7.3f} {r['difftopk_svm']:8.3f} {r['ours_hinge']:7.3f} {r['cross_entropy']:6.3f}"
        f" | {r['pytopk_noised'] / r['ours_noised']:11.2f} {r['ours_noised'] / r['noise_draw']:10.2f}"
        f" {r['difftopk_svm'] / r['ours_noised']:11.2f} {r['difftopk_svm'] / r['ours_svm']:7.2f}"
        f" {r['ours_noised'] / r['cross_entropy']:7.1f}"
    )


def bench_calibration(
    device: torch.device, n: int = 31_118, n_classes: int = 1_081, k: float = 5.0, min_run_time: float = 1.0
) -> dict:
    """average_k_threshold against a full torch.sort of the pooled scores."""
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

    t_ours = _median_ms(ours, min_run_time)
    t_sort = _median_ms(full_sort, min_run_time)
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
