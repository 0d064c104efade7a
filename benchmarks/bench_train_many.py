"""train_many against sequential train calls, measured side by side in one process.

For each thread count, task (synthetic-100 MLP with cross-entropy and with the noised top-K
loss; Fashion-MNIST small CNN with cross-entropy) and stack size M: the wall time of M
sequential ``train`` calls (in this process, so imports are paid once: the comparison most
favourable to the sequential side), the wall time of one ``train_many`` call over the same M
configurations (M seeds, each with its own data draw, as the experiments run them), and the
bare-loop floor (one model, plain torch: forward, loss, backward, SGD step; no validation,
checkpoints or metrics) times M. Both sides train in memory
(no run folders). Each row gives ``train_many / sequential`` and ``train_many / floor`` beside
the targets of issue 30 (cross-entropy: 1/5 of sequential at 2 threads, 1/3 at 1; noised top-K:
1/3 at 2 threads, 1/2 at 1) and the load average before and after it (``os.getloadavg``):
on a shared machine the load says how far the seconds can be trusted.

    python benchmarks/bench_train_many.py                      # 16 and 32 members, 1 and 2 threads
    python benchmarks/bench_train_many.py --epochs 3 --members 16 --tasks synthetic_ce --threads 1
    python benchmarks/bench_train_many.py --tasks fmnist_cnn --members 8 --epochs 2 --keep-rows --force-stack

On a CPU ``train_many`` trains convolutional models one by one (``stacked.stacking_pays``), so
the ``fmnist_cnn`` row compares sequential with sequential unless ``--force-stack`` stacks them
anyway (how the rule was measured).

``--keep-rows`` keeps the rows of the written file that this call does not measure (another
task, stack size or thread count); each row names the commit, time and thread count it was
measured at.

Writes ``book/avgk_book/reference_results/bench_train_many_<device>.json`` with provenance.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import torch

from avgk_book.experiments.catalog import SYNTHETIC_100
from avgk_book.references import load_json_reference, write_reference
from avgk_lib import stacked
from avgk_lib._checks import value_checks
from avgk_lib.build import build_run
from avgk_lib.rundir import git_commit
from avgk_lib.runspec import RunSpec
from avgk_lib.train import TrainConfig, train, train_many

_COMMIT = git_commit()  # the code this process runs (HEAD may move while it measures)

TASKS = {
    "synthetic_ce": dict(dataset="synthetic", dataset_options=SYNTHETIC_100, loss="cross_entropy", k=5, lr=0.1),
    "synthetic_noised": dict(
        dataset="synthetic",
        dataset_options=SYNTHETIC_100,
        loss="noised_topk",
        k=5,
        lr=0.1,
        loss_options={"epsilon": 1.0, "n_samples": 5},
    ),
    "fmnist_cnn": dict(
        dataset="fashion_mnist", dataset_options={"train_subset": 10_000}, loss="cross_entropy", k=2, lr=0.1
    ),
}


def _configs(task: str, members: int, epochs: int, device: str) -> list[TrainConfig]:
    base = dict(TASKS[task], epochs=epochs, batch_size=128, scheduler="cosine", weight_decay=5e-4, device=device)
    base["eval_ks"] = [1.0, float(base["k"])]
    options = base.pop("dataset_options")
    draws = {"synthetic": "sample_seed", "fashion_mnist": "split_seed"}  # each seed its own data, as experiments run
    return [
        TrainConfig(**base, dataset_options={**options, draws[base["dataset"]]: seed}, seed=seed)
        for seed in range(members)
    ]


def _bare_loop(cfg: TrainConfig) -> float:
    """Seconds of ``cfg.epochs`` epochs of one model in a plain loop (the floor)."""
    run = build_run(RunSpec.resolve(cfg))
    model, loss_fn = run.model, run.objective.loss_fn
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    began = time.perf_counter()
    for epoch in range(cfg.epochs):
        run.train_loader.set_epoch(epoch)
        for x, y, _ in run.train_loader:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - began


def _stacked_bare_loop(configs: list[TrainConfig]) -> float | None:
    """Seconds of ``epochs`` epochs of the M models as one minimal stacked loop in plain torch
    (the stacked floor: the members' batches gathered by one index from one data tensor, a
    ``baddbmm`` MLP forward, one loss call over (M, B, C) with one noise draw, one backward,
    one foreach SGD step with a per-member lr tensor; no validation, schedule, guard or
    checkpoint). ``None`` for models other than the MLP."""
    runs = [build_run(RunSpec.resolve(c)) for c in configs]
    if runs[0].spec.model != "mlp" or runs[0].spec.two_head:
        return None
    first, m, b = runs[0], len(runs), configs[0].batch_size
    x = torch.stack([r.train_loader.x for r in runs]).flatten(0, 1)
    y = torch.stack([r.train_loader.y for r in runs]).flatten(0, 1)
    n = runs[0].train_loader.y.shape[0]
    layers = [mod for mod in first.model.modules() if isinstance(mod, torch.nn.Linear)]
    names = [n_ for n_, mod in first.model.named_modules() if isinstance(mod, torch.nn.Linear)]
    weights = [torch.stack([dict(r.model.named_modules())[k].weight.detach() for r in runs]) for k in names]
    biases = [torch.stack([dict(r.model.named_modules())[k].bias.detach() for r in runs]) for k in names]
    params = [t.requires_grad_() for pair in zip(weights, biases, strict=True) for t in pair]
    bufs = [torch.zeros_like(p) for p in params]
    lr = torch.full((m,), configs[0].lr)
    lr_views = [lr.view(-1, *[1] * (p.dim() - 1)) for p in params]
    wd_views = [torch.full((m, 1, 1), 5e-4) for _ in weights]
    loss_fn = first.objective.loss_fn
    noised = first.spec.objective.name == "noised_topk"
    n_samples = first.spec.loss_options.get("n_samples", 0)
    noise_gen = torch.Generator().manual_seed(0)
    offset = (torch.arange(m) * n).unsqueeze(1)
    steps = n // b
    began = time.perf_counter()
    for _ in range(configs[0].epochs):
        rows = torch.stack([torch.randperm(n) for _ in range(m)]) + offset
        for step in range(steps):
            idx = rows[:, step * b : (step + 1) * b]
            h, target = x[idx], y[idx]
            for i in range(len(layers)):
                h = torch.baddbmm(params[2 * i + 1].unsqueeze(1), h, params[2 * i].transpose(1, 2))
                h = torch.relu(h) if i < len(layers) - 1 else h
            if noised:
                noise = torch.randn((n_samples, *h.shape), generator=noise_gen)
                loss = loss_fn(h, target, noise=noise)
            else:
                loss = torch.nn.functional.cross_entropy(h.flatten(0, 1), target.flatten(), reduction="none")
            loss.sum().backward()
            with torch.no_grad():
                grads = [p.grad for p in params]
                torch._foreach_addcmul_(grads[0::2], params[0::2], wd_views)
                torch._foreach_mul_(bufs, 0.9)
                torch._foreach_add_(bufs, grads)
                torch._foreach_add_(grads, bufs, alpha=0.9)
                torch._foreach_addcmul_(params, grads, lr_views, value=-1.0)
            for p in params:
                p.grad = None
    return time.perf_counter() - began


def _timed(fn) -> float:
    began = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - began


#: issue 30's targets: train_many at most this share of sequential train, by task and threads
TARGETS = {("synthetic_ce", 1): 1 / 3, ("synthetic_ce", 2): 1 / 5, ("synthetic_noised", 1): 1 / 2}
TARGETS[("synthetic_noised", 2)] = 1 / 3


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def measure(task: str, members: int, epochs: int, device: str, force_stack: bool = False) -> dict:
    load_before = _load()
    configs = _configs(task, members, epochs, device)
    quiet = lambda *_: None  # noqa: E731
    warm = [dataclasses.replace(c, epochs=1, max_batches=2) for c in configs[:2]]
    train(warm[0], progress=False, log=quiet)  # one-time costs (imports, caches) paid by neither side
    train_many(warm, progress=False, log=quiet)
    sequential = _timed(lambda: [train(c, progress=False, log=quiet) for c in configs])
    many = _timed(lambda: train_many(configs, progress=False, log=quiet))
    floor = _bare_loop(configs[0]) * members
    with value_checks(False):  # as in a stack: no per-call host reads
        stacked_floor = _stacked_bare_loop(configs)
    threads = torch.get_num_threads()
    row = {"task": task, "members": members, "threads": threads, "epochs": epochs}
    row.update(sequential_s=sequential, train_many_s=many, bare_loop_x_members_s=floor, force_stack=force_stack)
    row.update(train_many_vs_sequential=many / sequential, train_many_vs_floor=many / floor)
    row.update(sequential_vs_floor=sequential / floor, speedup=sequential / many)
    row["stacked_bare_loop_s"] = stacked_floor  # the minimal stacked prototype's training alone
    if stacked_floor is not None:
        row.update(stacked_floor_vs_floor=stacked_floor / floor, stacked_floor_vs_sequential=stacked_floor / sequential)
    target = TARGETS.get((task, threads))
    row.update(target_vs_sequential=target, target_met=None if target is None else many / sequential <= target)
    row["load_average_1_5_15"] = {"before": load_before, "after": _load()}
    row["measured"] = {"git_commit": _COMMIT, "threads": threads, "time": time.strftime("%FT%T%z")}
    goal = "" if target is None else f"  (target <= {target:.2f}: {'met' if row['target_met'] else 'NOT met'})"
    print(
        f"{task:<17} M={members:<3} threads={threads}  sequential {sequential:7.1f}s  train_many {many:6.1f}s"
        f"  bare loop x M {floor:6.1f}s  train_many/sequential {many / sequential:.3f}"
        f"  train_many/floor {many / floor:.2f}{goal}  stacked bare loop {stacked_floor or 0:.1f}s"
        f"  load {load_before} -> {row['load_average_1_5_15']['after']}",
        flush=True,
    )
    return row


def _row_key(row: dict) -> tuple:
    return row["task"], row["members"], row.get("threads", row["measured"]["threads"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["synthetic_ce", "synthetic_noised"], choices=list(TASKS))
    parser.add_argument("--members", nargs="+", type=int, default=[16, 32])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="torch.set_num_threads per pass")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (short: a shared machine)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--keep-rows", action="store_true", help="keep the file's rows of other tasks or sizes")
    parser.add_argument("--force-stack", action="store_true", help="stack where stacking_pays says no")
    args = parser.parse_args()
    if args.force_stack:
        stacked.stacking_pays = lambda model, device: True
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        rows += [measure(t, m, args.epochs, args.device, args.force_stack) for t in args.tasks for m in args.members]
    if not args.no_write:
        stem = f"bench_train_many_{torch.device(args.device).type}"
        if args.keep_rows:
            measured = {_row_key(r) for r in rows}
            kept = (load_json_reference(stem) or {}).get("rows", [])
            rows = [r for r in kept if _row_key(r) not in measured] + rows
        payload = {"benchmark": "train_many vs sequential train", "threads": args.threads, "rows": rows}
        payload["cpu_count"] = os.cpu_count()
        path = write_reference(stem, payload, device=args.device)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
