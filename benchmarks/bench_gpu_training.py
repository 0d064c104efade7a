"""GPU training throughput: CIFAR-100-shaped ResNet-18, bf16 autocast, channels_last.

    python benchmarks/bench_gpu_training.py [--batch 512] [--steps 60] [--json out.json]

Trains on random CIFAR-shaped uint8 images held on the GPU (the in-memory pipeline of
``avgk_lib.data``: crop + flip + normalise on the device), so the number measures the model,
the loss and the input pipeline, not a disk. Reports images/s for cross-entropy and for the
noised top-K loss (K=5, epsilon=0.2, n_samples=10) and the share of a training step the noised
loss costs beyond cross-entropy. Needs CUDA.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs CUDA")
    from avgk_lib import functional as AF
    from avgk_lib.data import DatasetBundle, TensorSplit, make_loader
    from avgk_lib.data.cifar100 import MEAN, STD
    from avgk_lib.models import build_model

    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    n = args.batch * (args.steps + 10)
    g = torch.Generator().manual_seed(0)
    split = TensorSplit(
        torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 100, (n,), generator=g)
    )
    bundle = DatasetBundle(
        "cifar100-shaped",
        100,
        split,
        split,
        split,
        (3, 32, 32),
        [str(i) for i in range(100)],
        [n // 100] * 100,
        MEAN,
        STD,
        "crop_flip",
        4,
    )
    losses = {
        "cross_entropy": lambda s, y: F.cross_entropy(s, y),
        "noised_topk": lambda s, y: AF.noised_topk_loss(s, y, 5, 0.2, 10),
    }
    out = {"device": torch.cuda.get_device_name(), "batch": args.batch, "torch": torch.__version__}
    for name, loss_fn in losses.items():
        torch.manual_seed(0)
        model = build_model("resnet18_cifar", 100, (3, 32, 32)).to(device).to(memory_format=torch.channels_last)
        step_model = torch.compile(model) if args.compile else model
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        loader = make_loader(bundle, "train", args.batch, device, train=True, channels_last=True)
        seen, start = 0, None
        for i, (x, y, _) in enumerate(loader):
            if i == 10:
                torch.cuda.synchronize()
                start, seen = time.perf_counter(), 0
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = loss_fn(step_model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += y.shape[0]
        torch.cuda.synchronize()
        out[f"{name}_images_per_s"] = seen / (time.perf_counter() - start)
        print(f"{name:<14} {out[f'{name}_images_per_s']:10.0f} images/s")
    overhead = out["cross_entropy_images_per_s"] / out["noised_topk_images_per_s"] - 1
    out["noised_overhead_fraction"] = overhead
    print(
        f"device {out['device']}, batch {args.batch}, bf16 + channels_last; noised-loss overhead "
        f"{100 * overhead:.1f}% of a step"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
