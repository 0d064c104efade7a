"""Fashion-MNIST training throughput: our on-device in-memory pipeline vs a plain torchvision loop.

    python benchmarks/bench_fmnist_pipeline.py [--batches 150] [--full]

Both loops train the same SmallCNN with cross-entropy, SGD, batch 128 and the same augmentation
(random crop with 2 pixels of padding, horizontal flip, normalisation):

* ours: ``avgk_lib.data.make_loader`` (uint8 tensor in memory, batched augmentation);
* plain: ``torchvision.datasets.FashionMNIST`` + ``transforms`` + ``DataLoader`` (2 workers).

``--full`` also runs the cpu-preset recipe (5 epochs, one-cycle) through ``avgk_lib.train`` and
reports the test top-1 accuracy and the training time.

The results are written with the provenance block of every reference (git commit, versions,
device) to ``book/avgk_book/reference_results/bench_fmnist_pipeline_cpu.json`` unless ``--json`` names
another file or ``--no-json`` is given.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from avgk_book.references import reference_dir, write_reference


def _train_steps(model, batches, n_batches: int) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    model.train()
    seen, start = 0, None
    for i, (x, y, *_) in enumerate(batches):
        if i == 3:  # warm-up batches are not timed
            start, seen = time.perf_counter(), 0
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        seen += y.shape[0]
        if i + 1 >= n_batches:
            break
    return seen / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=150)
    parser.add_argument("--full", action="store_true", help="also train the cpu preset to completion")
    parser.add_argument("--json", help="write the results here (default: the package's reference_results folder)")
    parser.add_argument("--no-json", action="store_true", help="print only")
    args = parser.parse_args(argv)
    import torchvision
    from torchvision import transforms as T

    from avgk_lib.data import load_dataset, make_loader
    from avgk_lib.models import build_model

    device = torch.device("cpu")
    bundle = load_dataset("fashion_mnist")
    torch.manual_seed(0)
    ours = _train_steps(
        build_model("small_cnn", 10, (1, 28, 28)), make_loader(bundle, "train", 128, device, train=True), args.batches
    )
    root = tempfile.mkdtemp()
    from avgk_lib.data.fashion_mnist import locate_raw_files

    locate_raw_files(root=Path(root))
    transform = T.Compose(
        [T.RandomCrop(28, padding=2), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(bundle.mean, bundle.std)]
    )
    dataset = torchvision.datasets.FashionMNIST(root, train=True, download=False, transform=transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=128, shuffle=True, num_workers=2, drop_last=True, persistent_workers=True
    )
    torch.manual_seed(0)
    plain = _train_steps(build_model("small_cnn", 10, (1, 28, 28)), loader, args.batches)
    print(f"threads={torch.get_num_threads()}  batch 128, SmallCNN, cross-entropy, SGD; {args.batches} batches")
    print(f"ours (in-memory, batched augmentation): {ours:8.0f} images/s")
    print(f"plain torchvision DataLoader (2 workers): {plain:8.0f} images/s")
    print(f"ratio ours / plain: {ours / plain:.2f}x")
    payload = {
        "benchmark": "bench_fmnist_pipeline",
        "settings": {"batches": args.batches, "batch": 128, "model": "small_cnn", "plain_workers": 2},
        "ours_images_per_s": ours,
        "plain_images_per_s": plain,
        "ratio": ours / plain,
    }
    if args.full:
        from avgk_book.experiments import CPU_FMNIST
        from avgk_lib.train import TrainConfig, train

        cfg = TrainConfig(
            dataset="fashion_mnist",
            loss="cross_entropy",
            k=2,
            eval_ks=[1.0, 2.0],
            select_metric="top1_micro",
            lr=0.05,
            **CPU_FMNIST,
        )
        results = train(cfg, None, progress=False, bundle=bundle, log=print)
        train_seconds = sum(h["seconds"] for h in results["history"])
        print(
            f"cpu preset, cross-entropy: test top-1 {results['test']['top1_micro']:.4f} after "
            f"{cfg.epochs} epochs, {train_seconds:.0f} s of training+validation "
            f"({len(bundle.train) * cfg.epochs / train_seconds:.0f} images/s overall)"
        )
        payload["full"] = {"test_top1": results["test"]["top1_micro"], "train_seconds": train_seconds}
    if not args.no_json:
        path = Path(args.json) if args.json else reference_dir() / f"bench_fmnist_pipeline_{device.type}.json"
        print(f"wrote {write_reference(path.stem, payload, device=device, directory=path.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
