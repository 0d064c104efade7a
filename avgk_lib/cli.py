"""``python -m avgk_lib``: ``train`` one run, ``run`` a named experiment, ``list``, ``demo``."""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import Any

from .objectives import OBJECTIVES

# loss hyperparameter flags -> loss option names (None = not given: the objective's default)
LOSS_FLAGS = {
    "epsilon": float,
    "n_samples": int,
    "tau": float,
    "alpha": float,
    "gamma": float,
    "max_margin": float,
    "scale": float,
    "label_smoothing": float,
    "weight": float,
    "rule": str,
    "class_reduction": str,
    "warmup_epochs": int,
}
DATASET_FLAGS = {
    "label_noise": float,
    "noise_block_size": int,
    "imbalance_ratio": float,
    "train_subset": int,
    "n_classes": int,
    "ambiguity": float,
    "n_train": int,
    "download": bool,
    "root": str,
}


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.replace(",", " ").split()]


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.replace(",", " ").split()]


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    from .train import TrainConfig

    d = TrainConfig()
    g = p.add_argument_group("run")
    g.add_argument("--dataset", default=d.dataset, help="synthetic, fashion_mnist, cifar100, plantnet300k")
    g.add_argument("--model", default=d.model, help="auto, mlp, small_cnn, resnet18_cifar, densenet_bc_40_40, resnet50")
    g.add_argument("--loss", default=d.loss, help="one of: " + ", ".join(sorted(OBJECTIVES)))
    g.add_argument("--k", type=float, default=d.k, help="K of the loss (average-K losses accept fractions)")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1 ...")
    g.add_argument("--out", type=Path, help="run folder (default: $AVGK_CACHE_DIR/runs/<config hash>)")
    g.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    o = p.add_argument_group("optimisation")
    o.add_argument("--optimizer", default=d.optimizer, choices=["sgd", "adamw"])
    o.add_argument("--momentum", type=float, default=d.momentum)
    o.add_argument("--no-nesterov", action="store_true")
    o.add_argument("--weight-decay", type=float, default=d.weight_decay)
    o.add_argument("--scheduler", default=d.scheduler, choices=["step", "cosine", "onecycle", "none"])
    o.add_argument(
        "--milestones", type=_ints, default=d.milestones, help="epochs where step decay starts, e.g. '151 226'"
    )
    o.add_argument("--lr-gamma", type=float, default=d.lr_gamma)
    o.add_argument("--loss-lr-multiplier", type=float, default=d.loss_lr_multiplier, help="lr factor of ROLE's table")
    o.add_argument("--amp", default=d.amp, choices=["auto", "bf16", "fp16", "off"])
    o.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    o.add_argument("--compile", action="store_true", help="torch.compile the model")
    o.add_argument("--workers", type=int, default=d.workers, help="DataLoader workers (image folders)")
    o.add_argument("--max-batches", type=int, help="cap training batches per epoch (smoke runs)")
    e = p.add_argument_group("evaluation and model")
    e.add_argument("--eval-ks", type=_floats, default=d.eval_ks, help="K values of the metrics, e.g. '1 2 3 5'")
    e.add_argument("--select-metric", default=d.select_metric, help="validation metric of the best epoch")
    e.add_argument(
        "--eval-head", default=d.eval_head, choices=["multilabel", "softmax"], help="two_head: head thresholded"
    )
    e.add_argument("--head", default=d.head, choices=["auto", "linear", "cosine"])
    e.add_argument(
        "--detach-multilabel", action="store_true", help="two_head: multi-label head does not train the backbone"
    )
    e.add_argument(
        "--pretrained", action="store_true", help="ImageNet weights (resnet50; needs them cached or internet)"
    )
    lg = p.add_argument_group("loss hyperparameters (default: the loss's own)")
    for name, kind in LOSS_FLAGS.items():
        lg.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None)
    dg = p.add_argument_group("dataset options (each dataset accepts its own)")
    for name, kind in DATASET_FLAGS.items():
        if kind is bool:
            dg.add_argument(f"--{name.replace('_', '-')}", action="store_true", default=None)
        else:
            dg.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None)


def config_from_args(args: argparse.Namespace):
    from .data import LOADERS
    from .objectives import get_objective
    from .train import TrainConfig

    get_objective(args.loss)
    if args.dataset not in LOADERS:
        raise SystemExit(f"error: unknown dataset {args.dataset!r}; valid names: {', '.join(sorted(LOADERS))}")
    accepted = inspect.signature(LOADERS[args.dataset]).parameters
    dataset_options: dict[str, Any] = {}
    for name in DATASET_FLAGS:
        value = getattr(args, name)
        if value is None:
            continue
        if name not in accepted:
            raise SystemExit(f"error: --{name.replace('_', '-')} does not apply to dataset {args.dataset!r}")
        dataset_options[name] = value
    loss_options = {name: getattr(args, name) for name in LOSS_FLAGS if getattr(args, name) is not None}
    return TrainConfig(
        dataset=args.dataset,
        dataset_options=dataset_options,
        model=args.model,
        loss=args.loss,
        k=args.k,
        loss_options=loss_options,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        nesterov=not args.no_nesterov,
        weight_decay=args.weight_decay,
        scheduler=args.scheduler,
        milestones=args.milestones,
        lr_gamma=args.lr_gamma,
        loss_lr_multiplier=args.loss_lr_multiplier,
        seed=args.seed,
        device=args.device,
        amp=args.amp,
        channels_last=args.channels_last,
        compile=args.compile,
        eval_ks=args.eval_ks,
        select_metric=args.select_metric,
        eval_head=args.eval_head,
        head=args.head,
        detach_multilabel=args.detach_multilabel,
        pretrained=args.pretrained,
        workers=args.workers,
        max_batches=args.max_batches,
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from .data import cache_dir
    from .train import train

    try:
        cfg = config_from_args(args)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    out = args.out or cache_dir() / "runs" / cfg.fingerprint()
    train(cfg, out, resume=args.resume, progress=not args.no_progress)
    print(f"results: {Path(out) / 'results.json'}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .experiments import run_experiment

    table = run_experiment(
        args.experiment, args.preset, seeds=args.seeds, progress=not args.no_progress, force=args.force
    )
    print(json.dumps(table, indent=1) if args.json else table_to_text(table))
    return 0


def table_to_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no runs)"
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(_fmt(r.get(k))) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys)]
    lines += ["  ".join(_fmt(r.get(k)).ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _cmd_list(args: argparse.Namespace) -> int:
    from .experiments import EXPERIMENTS

    print("losses:")
    for name, objective in sorted(OBJECTIVES.items()):
        print(f"  {name:<24} {objective.description}")
    print("experiments (python -m avgk_lib run NAME --preset smoke|cpu|gpu):")
    for name, experiment in EXPERIMENTS.items():
        print(f"  {name:<24} {experiment.description}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m avgk_lib", description="top-K and average-K classification")
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train one model", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_train_arguments(p_train)
    p_run = sub.add_parser("run", help="run a named experiment (cached by configuration)")
    p_run.add_argument("experiment")
    p_run.add_argument("--preset", default="cpu", choices=["smoke", "cpu", "gpu"])
    p_run.add_argument("--seeds", type=int, nargs="+", default=[0])
    p_run.add_argument("--force", action="store_true", help="retrain even when a cached run exists")
    p_run.add_argument("--json", action="store_true", help="print the table as JSON")
    p_run.add_argument("--save-reference", action="store_true", help="write results/<experiment>_<preset>.json")
    p_run.add_argument("--no-progress", action="store_true")
    sub.add_parser("list", help="list losses and experiments")
    sub.add_parser("demo", help="one-minute tour of the library")
    args = parser.parse_args(argv)
    if args.command == "train":
        return _cmd_train(args)
    if args.command == "run":
        return _cmd_run(args)
    if args.command == "list":
        return _cmd_list(args)
    from .__main__ import demo

    return demo()


if __name__ == "__main__":
    sys.exit(main())
