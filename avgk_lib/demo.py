"""``python -m avgk_lib demo``: a one-minute tour of the library's public API on synthetic data."""

from __future__ import annotations

import torch

from . import functional as AF
from . import metrics as M


def demo() -> int:
    """Train a linear model on a synthetic 20-class problem with three losses and report top-K
    and average-K accuracy, all with the library's public API."""
    torch.manual_seed(0)
    n_classes, dim, k = 20, 10, 3
    centers = torch.randn(n_classes, dim) * 1.2

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, n_classes, (n,))
        return centers[y] + torch.randn(n, dim), y

    (x_train, y_train), (x_val, _), (x_test, y_test) = sample(4000), sample(1000), sample(1000)
    losses = {
        "cross_entropy": lambda s, y: torch.nn.functional.cross_entropy(s, y),
        f"noised_topk (K={k})": lambda s, y: AF.noised_topk_loss(s, y, k, epsilon=1.0, n_samples=5),
        f"smooth_topk_svm (K={k})": lambda s, y: AF.smooth_topk_svm_loss(s, y, k, tau=1.0),
    }
    print(f"synthetic data: {n_classes} overlapping Gaussian classes in {dim} dims; linear model, 200 steps of SGD")
    print(f"{'loss':<26} {'top-1':>6} {'top-3':>6} {'avg-3 acc':>9} {'avg set size':>12}")
    for name, loss_fn in losses.items():
        model = torch.nn.Linear(dim, n_classes)
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        for _ in range(200):
            idx = torch.randint(0, len(y_train), (256,))
            opt.zero_grad()
            loss_fn(model(x_train[idx]), y_train[idx]).backward()
            opt.step()
        with torch.no_grad():
            val_probs, test_probs = model(x_val).softmax(1), model(x_test).softmax(1)
        threshold = M.average_k_threshold(val_probs, k)
        sizes = M.set_size_stats(M.average_k_sets(test_probs, threshold))
        print(
            f"{name:<26} {M.topk_accuracy(test_probs, y_test, 1):6.3f} {M.topk_accuracy(test_probs, y_test, 3):6.3f}"
            f" {M.average_k_accuracy(test_probs, y_test, threshold):9.3f} {sizes['mean']:12.2f}"
        )
    return 0
