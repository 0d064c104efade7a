"""Every public loss and metric rejects bad input with an error naming the argument."""

import math

import pytest
import torch

from avgk_lib import functional as AF
from avgk_lib import losses as AL
from avgk_lib import metrics as M
from avgk_lib import set_value_checks, value_checks
from avgk_lib.ops import noised_topk

C = 6
S = torch.randn(4, C)
Y = torch.tensor([0, 1, 2, 5])
COUNTS = [10, 20, 30, 40, 50, 60]

# (name, callable(scores, targets)) for every loss taking (scores, targets)
LOSSES = {
    "noised_topk_loss": lambda s, y, **kw: AF.noised_topk_loss(s, y, 2, **kw),
    "imbalanced_noised_topk_loss": lambda s, y, **kw: AF.imbalanced_noised_topk_loss(s, y, 2, COUNTS, **kw),
    "topk_hinge_loss": lambda s, y, **kw: AF.topk_hinge_loss(s, y, 2, **kw),
    "smooth_topk_svm_loss": lambda s, y, **kw: AF.smooth_topk_svm_loss(s, y, 2, **kw),
    "focal_loss": lambda s, y, **kw: AF.focal_loss(s, y, **kw),
    "ldam_loss": lambda s, y, **kw: AF.ldam_loss(s, y, COUNTS, **kw),
    "assume_negative_loss": lambda s, y, **kw: AF.assume_negative_loss(s, y, **kw),
    "epr_loss": lambda s, y, **kw: AF.epr_loss(s, y, 2.0, **kw),
    "two_head_loss": lambda s, y, **kw: AF.two_head_loss(s, S.clone(), y, 2.0, **kw),
    "role_loss": lambda s, y, **kw: AF.role_loss(s, y, torch.zeros(4, C), 2.0, **kw),
}
METRICS = {
    "topk_accuracy": lambda s, y: M.topk_accuracy(s, y, 2),
    "average_k_accuracy": lambda s, y: M.average_k_accuracy(s, y, 0.0),
}
EVERYTHING = {**LOSSES, **METRICS}


@pytest.mark.parametrize("name", sorted(EVERYTHING))
def test_valid_input_runs(name):
    out = EVERYTHING[name](S, Y)
    assert math.isfinite(float(out))


@pytest.mark.parametrize("name", sorted(EVERYTHING))
@pytest.mark.parametrize(
    "scores,targets,error,match",
    [
        (S[0], Y, ValueError, "dimensions"),
        (S, Y[:3], ValueError, "targets"),
        (S, Y.float(), TypeError, "targets"),
        (S, Y.bool(), TypeError, "targets"),
        (S, torch.tensor([0, 1, 2, 6]), ValueError, "targets"),
        (S, torch.tensor([0, -1, 2, 3]), ValueError, "targets"),
        (S.long(), Y, TypeError, "floating"),
        (torch.tensor([[float("nan")] * C] * 4), Y, ValueError, "NaN"),
        (S.clone().index_fill_(1, torch.tensor([2]), float("inf")), Y, ValueError, "infinite"),
        (torch.empty(0, C), torch.empty(0, dtype=torch.long), ValueError, "empty"),
        (S.numpy(), Y, TypeError, "torch.Tensor"),
    ],
)
def test_bad_scores_and_targets(name, scores, targets, error, match):
    with pytest.raises(error, match=match):
        EVERYTHING[name](scores, targets)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bad_reduction(name):
    with pytest.raises(ValueError, match="reduction"):
        LOSSES[name](S, Y, reduction="avg")


@pytest.mark.parametrize(
    "fn,match",
    [
        (lambda: AF.noised_topk_loss(S, Y, 0), "k"),
        (lambda: AF.noised_topk_loss(S, Y, C), "k"),
        (lambda: AF.noised_topk_loss(S, Y, 2.5), "k"),
        (lambda: AF.noised_topk_loss(S, Y, 2, epsilon=-1.0), "epsilon"),
        (lambda: AF.noised_topk_loss(S, Y, 2, n_samples=0), "n_samples"),
        (lambda: AF.noised_topk_loss(S, Y, 2, noise=torch.randn(3, 4, C)), "noise"),
        (lambda: AF.imbalanced_noised_topk_loss(S, Y, 2, COUNTS[:3]), "class_counts"),
        (lambda: AF.imbalanced_noised_topk_loss(S, Y, 2, [0] * C), "class_counts"),
        (lambda: AF.imbalanced_noised_topk_loss(S, Y, 2, COUNTS, scale=0.0), "scale"),
        (lambda: AF.topk_hinge_loss(S, Y, C), "k"),
        (lambda: AF.smooth_topk_svm_loss(S, Y, 2, tau=0.0), "tau"),
        (lambda: AF.smooth_topk_svm_loss(S, Y, 2, tau=-1.0), "tau"),
        (lambda: AF.smooth_topk_svm_loss(S, Y, 2, alpha=-1.0), "alpha"),
        (lambda: AF.smooth_topk_svm_loss(S, Y, 0), "k"),
        (lambda: AF.focal_loss(S, Y, gamma=-1.0), "gamma"),
        (lambda: AF.ldam_loss(S, Y, COUNTS, max_margin=-0.1), "max_margin"),
        (lambda: AF.assume_negative_loss(S, Y, label_smoothing=1.0), "label_smoothing"),
        (lambda: AF.assume_negative_loss(S, Y, negative_weight=-1.0), "negative_weight"),
        (lambda: AF.epr_loss(S, Y, 0.0), "expected_positives"),
        (lambda: AF.epr_loss(S, Y, C + 1.0), "expected_positives"),
        (lambda: AF.pseudo_labels(S.softmax(1), Y, 0.5), "k"),
        (lambda: AF.pseudo_labels(S.softmax(1), Y, 2.0, rule="other"), "rule"),
        (lambda: AF.two_head_loss(S, S[:, :3], Y, 2.0), "multilabel_logits"),
        (lambda: AF.two_head_loss(S, S, Y, 2.0, weight=-1.0), "weight"),
        (lambda: AF.two_head_loss(S, S, Y, 2.0, class_reduction="max"), "class_reduction"),
        (lambda: noised_topk(S, 0), "k"),
        (lambda: noised_topk(S, C + 1), "k"),
        (lambda: M.topk_accuracy(S, Y, 0), "k"),
        (lambda: M.topk_accuracy(S, Y, C + 1), "k"),
        (lambda: M.topk_accuracy(S, Y, 2, average="weighted"), "average"),
        (lambda: M.average_k_threshold(S, 0.0), "k"),
        (lambda: M.average_k_threshold(S, C + 0.5), "k"),
        (lambda: M.average_k_threshold(S, float("nan")), "k"),
        (lambda: M.average_k_accuracy(S, Y, float("nan")), "threshold"),
        (lambda: M.average_k_sets(S, torch.zeros(2)), "threshold"),
        (lambda: M.set_sizes(S), "sets"),
        (lambda: AL.NoisedTopKLoss(0), "k"),
        (lambda: AL.SmoothTopKSVMLoss(2, tau=0.0), "tau"),
        (lambda: AL.LDAMLoss([1, -1]), "class_counts"),
        (lambda: AL.TwoHeadLoss(0.5), "k"),
        (lambda: AL.FocalLoss(reduction="avg"), "reduction"),
    ],
)
def test_bad_arguments_name_the_argument(fn, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fn()


def test_value_checks_can_be_switched_off_and_restored():
    bad = S.clone()
    bad[0, 0] = float("nan")
    with value_checks(False):
        AF.focal_loss(bad, Y)  # no error: the caller opted out
    with pytest.raises(ValueError):
        AF.focal_loss(bad, Y)
    set_value_checks(True)
