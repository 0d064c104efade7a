"""GPU training throughput: CIFAR-100-shaped ResNet-18 under autocast (bf16 / fp16 / off) and channels_last.

    python benchmarks/bench_gpu_training.py [--batch 512] [--steps 60] [--variants bf16+cl fp16+cl off]
                                            [--compile] [--json PATH | --no-json] [--device cuda]

Trains on random CIFAR-shaped uint8 images held on the device (the in-memory pipeline of
``avgk_lib.data``: crop + flip + normalise on the device), so the number measures the model,
the loss and the input pipeline, not a disk. For each variant (``<amp>`` or ``<amp>+cl`` for
channels_last; amp one of bf16, fp16 (with a gradient scaler), off) it reports images/s with
cross-entropy and with the noised top-K loss (K=5, epsilon=0.2, n_samples=10), and the share of
a training step the noised loss costs beyond cross-entropy. Peers in the same run, ratios only.

The results are written with the provenance block of every reference (git commit, versions,
device) to ``book/avgk_book/reference_results/bench_gpu_training_<device type>.json`` unless ``--json``
names another file or ``--no-json`` is given. ``--device cpu`` (tiny sizes) only checks the code.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from avgk_book.references import reference_dir, write_reference
from avgk_lib import functional as AF
from avgk_lib.data import DatasetBundle, TensorSplit, make_loader
from avgk_lib.data.cifar100 import MEAN, STD
from avgk_lib.models import build_model

LOSSES = {
    "cross_entropy": lambda s, y: F.cross_entropy(s, y),
    "noised_topk": lambda s, y: AF.noised_topk_loss(s, y, 5, 0.2, 10),
}
AMP = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


def random_cifar(n: int) -> DatasetBundle:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    split = TensorSplit(x, torch.randint(0, 100, (n,), generator=g))
    names = [str(i) for i in range(100)]
    return DatasetBundle("cifar100-shaped", 100, split, split, split, (3, 32, 32), names, [n // 100] * 100, MEAN, STD)


def parse_variant(text: str) -> tuple[str, bool]:
    amp, _, layout = text.partition("+")
    if amp not in AMP or layout not in ("", "cl"):
        raise argparse.ArgumentTypeError(f"variant {text!r}: expected <bf16|fp16|off>[+cl]")
    return amp, layout == "cl"


def images_per_second(bundle, loss_name: str, amp: str, channels_last: bool, args, device: torch.device) -> float:
    """Throughput of ``args.steps`` timed SGD steps after 10 warm-up steps."""
    torch.manual_seed(0)
    model = build_model("resnet18_cifar", 100, (3, 32, 32)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if args.compile else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    loader = make_loader(bundle, "train", args.batch, device, train=True, channels_last=channels_last)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    seen, start = 0, time.perf_counter()
    for i, (x, y, _) in enumerate(loader):
        if i == 10:
            sync()
            start, seen = time.perf_counter(), 0
        with torch.autocast(device.type, dtype=AMP[amp] or torch.float32, enabled=AMP[amp] is not None):
            loss = LOSSES[loss_name](step_model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        seen += y.shape[0]
    sync()
    return seen / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--variants", nargs="+", type=parse_variant, default=[("bf16", True)])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", help="write the results here (default: the package's reference_results folder)")
    parser.add_argument("--no-json", action="store_true", help="print only")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("this benchmark needs CUDA (or --device cpu to check the code)")
    torch.backends.cudnn.benchmark = True
    bundle = random_cifar(args.batch * (args.steps + 10))
    rows = []
    for amp, channels_last in args.variants:
        row = {"amp": amp, "channels_last": channels_last}
        for loss_name in LOSSES:
            row[f"{loss_name}_images_per_s"] = images_per_second(bundle, loss_name, amp, channels_last, args, device)
        row["noised_overhead_fraction"] = row["cross_entropy_images_per_s"] / row["noised_topk_images_per_s"] - 1
        rows.append(row)
        print(
            f"amp {amp:<4} channels_last {channels_last!s:<5}  cross-entropy {row['cross_entropy_images_per_s']:9.0f}"
            f"  noised top-K {row['noised_topk_images_per_s']:9.0f} images/s;"
            f"  noised-loss overhead {100 * row['noised_overhead_fraction']:.1f}% of a step",
            flush=True,
        )
    if not args.no_json:
        settings = {"batch": args.batch, "steps": args.steps, "compile": args.compile, "model": "resnet18_cifar"}
        payload = {"benchmark": "bench_gpu_training", "settings": settings, "rows": rows}
        path = Path(args.json) if args.json else reference_dir() / f"bench_gpu_training_{device.type}.json"
        print(f"wrote {write_reference(path.stem, payload, device=device, directory=path.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
