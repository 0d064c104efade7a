"""Every loss works on float16, bfloat16, float32 and float64, under autocast, and after .to()."""

import pytest
import torch

from avgk_lib import functional as AF
from avgk_lib import losses as AL
from avgk_lib import metrics as M

C = 50
COUNTS = torch.arange(1, C + 1) * 3
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def modules():
    return {
        "noised": (AL.NoisedTopKLoss(5, 1.0, 5), 2),
        "imbalanced": (AL.ImbalancedNoisedTopKLoss(5, COUNTS), 2),
        "hinge": (AL.TopKHingeLoss(5), 2),
        "svm": (AL.SmoothTopKSVMLoss(5, tau=0.1), 2),
        "focal": (AL.FocalLoss(), 2),
        "ldam": (AL.LDAMLoss(COUNTS), 2),
        "an": (AL.AssumeNegativeLoss(0.1, 1 / (C - 1)), 2),
        "epr": (AL.EPRLoss(3.0), 2),
        "two_head": (AL.TwoHeadLoss(3.0), 3),
    }


def _call(module, n_args, scores, targets):
    if n_args == 3:
        return module(scores, scores * 0.5, targets)
    return module(scores, targets)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(modules()))
def test_finite_value_and_gradient_in_every_dtype(name, dtype, device):
    module, n_args = modules()[name]
    module = module.to(device)
    scores = (torch.randn(16, C) * 3).to(device=device, dtype=dtype).requires_grad_(True)
    targets = torch.randint(0, C, (16,), device=device)
    loss = _call(module, n_args, scores, targets)
    loss.backward()
    assert loss.device.type == device
    assert torch.isfinite(loss).item()
    assert scores.grad.dtype == dtype and bool(torch.isfinite(scores.grad).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(modules()))
def test_bfloat16_under_autocast(name, device):
    module, n_args = modules()[name]
    module = module.to(device)
    layer = torch.nn.Linear(8, C).to(device)
    x = torch.randn(16, 8, device=device)
    targets = torch.randint(0, C, (16,), device=device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        scores = layer(x)
        assert scores.dtype == torch.bfloat16
        loss = _call(module, n_args, scores, targets)
    loss.backward()
    assert torch.isfinite(loss).item() and bool(torch.isfinite(layer.weight.grad).all())


@pytest.mark.parametrize("device", DEVICES)
def test_modules_move_with_to_and_keep_state(device):
    ldam = AL.LDAMLoss(COUNTS).to(device)
    assert ldam.class_counts.device.type == device
    role = AL.ROLELoss(10, C, 2.0).to(device)
    assert role.label_logits.device.type == device
    scores = torch.randn(4, C, device=device)
    targets = torch.randint(0, C, (4,), device=device)
    role(scores, targets, torch.tensor([0, 1, 2, 3], device=device)).backward()
    assert role.label_logits.grad is not None
    # state dicts round-trip
    clone = AL.LDAMLoss(torch.ones(C))
    clone.load_state_dict(ldam.state_dict())
    torch.testing.assert_close(clone.class_counts.to(device), ldam.class_counts)
    # a float64 module still accepts float32 scores and vice versa
    assert torch.isfinite(AL.ImbalancedNoisedTopKLoss(2, COUNTS).double()(scores, targets))


@pytest.mark.parametrize("device", DEVICES)
def test_metrics_and_threshold_stay_on_device(device):
    scores = torch.rand(100, C, device=device)
    targets = torch.randint(0, C, (100,), device=device)
    threshold = M.average_k_threshold(scores, 2.0)
    assert threshold.device.type == device
    assert 0.0 <= M.average_k_accuracy(scores, targets, threshold) <= 1.0
    assert 0.0 <= M.topk_accuracy(scores, targets, 3, average="macro") <= 1.0


def test_half_precision_losses_match_float32():
    scores = torch.randn(32, C)
    targets = torch.randint(0, C, (32,))
    for fn in (
        lambda s: AF.smooth_topk_svm_loss(s, targets, 5),
        lambda s: AF.topk_hinge_loss(s, targets, 5),
        lambda s: AF.focal_loss(s, targets),
    ):
        reference = fn(scores)
        for dtype in (torch.float16, torch.bfloat16):
            value = fn(scores.to(dtype))
            assert value.dtype == torch.float32
            torch.testing.assert_close(value, fn(scores.to(dtype).float()))
            assert abs(value.item() - reference.item()) < 0.05 * max(1.0, abs(reference.item()))


def stacked_modules():
    """Every loss with per-member tensor hyperparameters, for stacked (M, B, C) scores (M = 3)."""
    return {
        "noised": (AL.NoisedTopKLoss(torch.tensor([1, 3, 5]), torch.tensor([0.0, 0.5, 1.0]), 5), 2),
        "imbalanced": (AL.ImbalancedNoisedTopKLoss(5, COUNTS, scale=torch.tensor([1.0, 30.0, 60.0])), 2),
        "hinge": (AL.TopKHingeLoss(torch.tensor([1, 2, 5])), 2),
        "svm": (AL.SmoothTopKSVMLoss(torch.tensor([1, 2, 5]), tau=torch.tensor([0.1, 1.0, 2.0])), 2),
        "focal": (AL.FocalLoss(torch.tensor([0.0, 0.5, 2.0])), 2),
        "ldam": (AL.LDAMLoss(COUNTS, max_margin=torch.tensor([0.0, 0.2, 0.5])), 2),
        "an": (AL.AssumeNegativeLoss(torch.tensor([0.0, 0.1, 0.2]), torch.tensor([1.0, 0.5, 1 / (C - 1)])), 2),
        "epr": (AL.EPRLoss(torch.tensor([1.0, 3.0, 5.0])), 2),
        "two_head": (AL.TwoHeadLoss(torch.tensor([1.0, 2.0, 3.0]), weight=torch.tensor([0.0, 1.0, 10.0])), 3),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(stacked_modules()))
def test_stacked_losses_in_every_dtype_match_float64(name, dtype, device):
    """(M, B, C) scores with per-member tensors: one finite loss per member in every dtype, close
    to the float64 losses (the noised losses draw their noise in the compute dtype: checked finite
    only)."""
    module, n_args = stacked_modules()[name]
    torch.manual_seed(0)
    base = torch.randn(3, 16, C) * 3
    targets = torch.randint(0, C, (3, 16), device=device)
    scores = base.to(device=device, dtype=dtype).requires_grad_(True)
    loss = _call(module, n_args, scores, targets)
    assert loss.shape == (3,) and bool(torch.isfinite(loss).all())
    loss.sum().backward()
    assert scores.grad.dtype == dtype and bool(torch.isfinite(scores.grad).all())
    if name not in ("noised", "imbalanced"):
        reference = _call(module, n_args, scores.detach().double(), targets)
        tolerance = 0.05 if dtype in (torch.float16, torch.bfloat16) else 1e-4
        torch.testing.assert_close(loss.double(), reference, rtol=tolerance, atol=tolerance)
