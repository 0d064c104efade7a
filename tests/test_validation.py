"""Every public loss and metric rejects bad input with an error naming the argument."""

import math

import numpy as np
import pytest
import torch

from avgk_book.analysis import accuracy_by_class_frequency
from avgk_lib import conformal as C_
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


# ---------------------------------------------------------------------------------------------
# One check_k: the functional form and the module accept and reject the same K
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 2.0, np.int64(2), np.int32(2), np.float32(2.0), np.float64(2.0)])
def test_integral_k_is_accepted_everywhere_with_the_same_result(k):
    noise = torch.randn(5, 4, C)
    ref = AF.noised_topk_loss(S, Y, 2, noise=noise)
    assert torch.equal(AF.noised_topk_loss(S, Y, k, noise=noise), ref)
    assert AL.NoisedTopKLoss(k).k == 2 and type(AL.NoisedTopKLoss(k).k) is int
    assert torch.equal(AL.TopKHingeLoss(k)(S, Y), AF.topk_hinge_loss(S, Y, 2))
    assert torch.equal(AL.SmoothTopKSVMLoss(k)(S, Y), AF.smooth_topk_svm_loss(S, Y, 2))
    assert M.topk_accuracy(S, Y, k) == M.topk_accuracy(S, Y, 2)
    assert torch.equal(M.topk_sets(S, k), M.topk_sets(S, 2))
    assert torch.equal(noised_topk(S, k, epsilon=0.0), noised_topk(S, 2, epsilon=0.0))


@pytest.mark.parametrize(
    "make",
    [
        lambda k: AF.noised_topk_loss(S, Y, k),
        lambda k: AL.NoisedTopKLoss(k),
        lambda k: AF.topk_hinge_loss(S, Y, k),
        lambda k: AL.TopKHingeLoss(k),
        lambda k: AL.ImbalancedNoisedTopKLoss(k, COUNTS),
        lambda k: AL.SmoothTopKSVMLoss(k),
        lambda k: M.topk_accuracy(S, Y, k),
        lambda k: noised_topk(S, k),
    ],
)
@pytest.mark.parametrize("k", [2.5, np.float32(1.5), True, float("inf"), float("nan"), "2", None])
def test_bad_integer_k_is_rejected_by_functional_and_module_alike(make, k):
    with pytest.raises((ValueError, TypeError), match="`k`"):
        make(k)


@pytest.mark.parametrize("k", [1.5, np.float32(1.5), np.float64(1.5)])
def test_fractional_k_only_for_average_k(k):
    assert float(M.average_k_threshold(S, k)) == float(M.average_k_threshold(S, 1.5))
    assert torch.equal(AF.pseudo_labels(S.softmax(1), Y, k), AF.pseudo_labels(S.softmax(1), Y, 1.5))
    assert AL.TwoHeadLoss(k).k == 1.5
    assert AL.EPRLoss(k).expected_positives == 1.5


@pytest.mark.parametrize(
    "fn",
    [
        lambda: AL.TwoHeadLoss(float("inf")),
        lambda: AL.TwoHeadLoss(float("nan")),
        lambda: AL.EPRLoss(float("inf")),
        lambda: AF.two_head_loss(S, S, Y, float("inf")),
        lambda: AF.epr_loss(S, Y, float("nan")),
        lambda: M.average_k_threshold(S, float("inf")),
    ],
)
def test_infinite_or_nan_k_is_rejected_with_its_name(fn):
    with pytest.raises(ValueError, match="`(k|expected_positives)` must be finite"):
        fn()


def test_numpy_scalars_accepted_for_hyperparameters_and_thresholds():
    noise = torch.randn(5, 4, C)
    ref = AF.imbalanced_noised_topk_loss(S, Y, 2, COUNTS, 0.01, 5, 0.2, 60.0, noise=noise)
    ours = AF.imbalanced_noised_topk_loss(
        S,
        Y,
        np.int64(2),
        np.array(COUNTS),
        np.float32(0.01),
        np.int64(5),
        np.float64(0.2),
        np.float32(60.0),
        noise=noise,
    )
    torch.testing.assert_close(ours, ref)
    assert M.average_k_accuracy(S, Y, np.float32(0.0)) == M.average_k_accuracy(S, Y, 0.0)
    assert torch.equal(M.average_k_sets(S, np.float64(0.1)), M.average_k_sets(S, 0.1))
    assert AL.SmoothTopKSVMLoss(np.int64(2), tau=np.float32(0.5)).tau == 0.5
    probs = S.softmax(1)
    assert C_.conformal_quantile(probs[:, 0], np.float32(0.25)) == C_.conformal_quantile(probs[:, 0], 0.25)
    assert torch.equal(
        C_.class_scores(probs, "raps", lam=np.float32(0.5), k_reg=np.int64(1), randomized=np.bool_(False)),
        C_.class_scores(probs, "raps", lam=0.5, k_reg=1, randomized=False),
    )


# ---------------------------------------------------------------------------------------------
# Issue 11 item 6: the validation gaps, one test each
# ---------------------------------------------------------------------------------------------

P = S.softmax(1)


@pytest.mark.parametrize("alpha", [float("nan"), 0.0, 1.0, -0.1, 1.5, float("inf"), "0.1", None, True])
def test_conformal_alpha_out_of_range_or_nan(alpha):
    with pytest.raises((ValueError, TypeError), match="`alpha`"):
        C_.calibrate(P, Y, alpha)
    with pytest.raises((ValueError, TypeError), match="`alpha`"):
        C_.conformal_quantile(P[:, 0], alpha)


def test_conformal_empty_scores():
    with pytest.raises(ValueError, match="`scores` is empty"):
        C_.conformal_quantile(torch.empty(0), 0.1)
    with pytest.raises(ValueError, match="`scores` is empty"):
        C_.calibrate(torch.empty(0, C), torch.empty(0, dtype=torch.long), 0.1)


@pytest.mark.parametrize("lam", [-0.1, float("nan"), float("inf"), "0.1"])
def test_conformal_bad_lam(lam):
    with pytest.raises((ValueError, TypeError), match="`lam`"):
        C_.class_scores(P, "raps", lam=lam)


@pytest.mark.parametrize("k_reg", [1.5, -1, True, "2"])
def test_conformal_bad_k_reg(k_reg):
    with pytest.raises((ValueError, TypeError), match="`k_reg`"):
        C_.calibrate(P, Y, 0.1, "raps", k_reg=k_reg)


@pytest.mark.parametrize(
    "scores,match",
    [
        (S, "probabilities in \\[0, 1\\]"),  # logits: negative entries
        (P * 0.5, "sum to 1"),  # rows do not sum to 1
        (P * 0.5 + 0.25, "sum to 1"),  # entries in [0.25, 0.75], rows sum to 0.5 + 1.5
    ],
)
@pytest.mark.parametrize("method", ["lac", "aps", "raps"])
def test_conformal_requires_probabilities(scores, match, method):
    with pytest.raises(ValueError, match=match):
        C_.calibrate(scores, Y, 0.1, method)
    with pytest.raises(ValueError, match=match):
        C_.conformal_sets(scores, 0.5, method)


@pytest.mark.parametrize(
    "targets",
    [Y[:3], torch.tensor([0, 1, 2, C]), torch.tensor([0, -1, 2, 3]), Y.float(), Y[None], Y.numpy()],
)
def test_conformal_bad_targets(targets):
    with pytest.raises((ValueError, TypeError), match="`targets`"):
        C_.calibrate(P, targets, 0.1)
    with pytest.raises((ValueError, TypeError), match="`targets`"):
        C_.class_conditional_coverage(P > 0.1, targets)


def test_conformal_uses_one_vocabulary():
    import inspect

    from avgk_book.conformal_reference import alpha_for_mean_size

    functions = [getattr(C_, n) for n in ("class_scores", "conformity_scores", "conformal_sets", "calibrate")]
    for function in [*functions, alpha_for_mean_size]:
        params = inspect.signature(function).parameters
        assert "scores" in params and "probs" not in params and "labels" not in params, function.__name__
    assert list(inspect.signature(C_.calibrate).parameters)[:3] == ["scores", "targets", "alpha"]


def test_metric_helpers_validate():
    with pytest.raises(TypeError, match="`correct`"):
        M.aggregate_hits(torch.ones(4), Y, C)
    with pytest.raises(TypeError, match="`correct`"):
        M.aggregate_hits(torch.tensor([0, 1, 1, 0]), Y, C)
    with pytest.raises(ValueError, match="`n_bins`"):
        accuracy_by_class_frequency(torch.ones(4, dtype=torch.bool), Y, COUNTS, n_bins=0)
    with pytest.raises(ValueError, match="`train_counts`"):
        accuracy_by_class_frequency(torch.ones(4, dtype=torch.bool), Y, [-1, 2, 3, 4, 5, 6])
    with pytest.raises(ValueError, match="`n_classes`"):
        M.per_class_accuracy(torch.ones(4, dtype=torch.bool), Y, 0)
    # zero training counts are allowed (a class may be absent from training)
    out = accuracy_by_class_frequency(torch.ones(4, dtype=torch.bool), Y, [0, 2, 3, 4, 5, 6], n_bins=2)
    assert out["bin_accuracy"].tolist() == [1.0, 1.0]


def test_ops_validate():
    from avgk_lib.ops import elementary_symmetric, log_elementary_symmetric, log_elementary_symmetric_fast

    for bad in [float("nan"), float("inf"), -float("inf")]:
        x = S.clone()
        x[1, 2] = bad
        for fn in (log_elementary_symmetric, log_elementary_symmetric_fast):
            with pytest.raises(ValueError, match="`log_x` contains NaN or infinite"):
                fn(x, 2)
    with pytest.raises(ValueError, match="`block`"):
        elementary_symmetric(P, 2, block=0)
    with pytest.raises(ValueError, match="`x` must be non-negative"):
        elementary_symmetric(S, 2)
    with pytest.raises(ValueError, match="`k`"):
        log_elementary_symmetric(S, C + 1)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize(
    "fn",
    [
        lambda noise: AF.noised_topk_loss(S, Y, 2, noise=noise),
        lambda noise: AF.imbalanced_noised_topk_loss(S, Y, 2, COUNTS, noise=noise),
        lambda noise: noised_topk(S, 3, noise=noise),
        lambda noise: noised_topk(S, 3, epsilon=0.0, noise=noise),  # validated even when unused
    ],
)
def test_non_finite_noise_is_an_error_not_a_nan_loss(fn, bad):
    noise = torch.randn(5, 4, C)
    noise[2, 1, 3] = bad
    with pytest.raises(ValueError, match="`noise` contains NaN"):
        fn(noise)


@pytest.mark.parametrize(
    "noise", [torch.randn(5, 4, C + 1), torch.randn(4, C), torch.zeros(5, 4, C, dtype=torch.long), np.zeros((5, 4, C))]
)
def test_wrongly_shaped_or_typed_noise(noise):
    with pytest.raises((ValueError, TypeError), match="`noise`"):
        AF.noised_topk_loss(S, Y, 2, noise=noise)


@pytest.mark.parametrize(
    "fn,match",
    [
        (lambda: AL.LDAMLoss("ab"), "`class_counts`"),
        (lambda: AL.ImbalancedNoisedTopKLoss(2, "ab"), "`class_counts`"),
        (lambda: AL.ImbalancedNoisedTopKLoss(2, [1.0, float("nan")]), "`class_counts`"),
        (lambda: AL.TwoHeadLoss(k=float("inf")), "`k`"),
        (lambda: AF.class_margins(COUNTS, C, max_margin=-1), "`max_margin`"),
        (lambda: AF.class_margins(COUNTS, C, max_margin=float("nan")), "`max_margin`"),
        (lambda: AL.NoisedTopKLoss(2, epsilon=-1.0), "`epsilon`"),
        (lambda: AL.SmoothTopKSVMLoss(2, tau=-1.0), "`tau`"),
        (lambda: AL.LDAMLoss(COUNTS, scale=-1.0), "`scale`"),
        (lambda: AL.ImbalancedNoisedTopKLoss(2, COUNTS, scale=0.0), "`scale`"),
        (lambda: AL.NoisedTopKLoss(2, n_samples=0), "`n_samples`"),
        (lambda: AL.NoisedTopKLoss(2, generator=0), "`generator`"),
        (lambda: AL.ROLELoss(10, C, 1.5, init_probability=float("nan")), "`init_probability`"),
        (lambda: AL.ROLELoss(10, 2, 2.0, init_probability=1.0), "`init_probability`"),
        (lambda: AL.TwoHeadLoss(2.0, rule="nosuch"), "`rule`"),
        (lambda: AL.TwoHeadLoss(2.0).set_epoch(-1), "`epoch`"),
    ],
)
def test_loss_constructors_validate_at_construction(fn, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fn()


def test_string_options_are_literal_types_listing_their_values():
    import typing

    from avgk_lib import _checks

    checks = {
        (AF.noised_topk_loss, "reduction"): _checks.Reduction,
        (AF.two_head_loss, "rule"): _checks.PseudoLabelRule,
        (AF.two_head_loss, "class_reduction"): _checks.ClassReduction,
        (AF.pseudo_labels, "rule"): _checks.PseudoLabelRule,
        (M.topk_accuracy, "average"): _checks.Average,
        (M.aggregate_hits, "average"): _checks.Average,
        (C_.calibrate, "method"): _checks.ConformalMethod,
        (AL.TwoHeadLoss.__init__, "class_reduction"): _checks.ClassReduction,
        (AL.FocalLoss.__init__, "reduction"): _checks.Reduction,
    }
    for (fn, arg), literal in checks.items():
        assert typing.get_type_hints(fn)[arg] == literal, (fn, arg)
    with pytest.raises(ValueError, match=r"\('mean', 'sum', 'none'\)"):
        AF.focal_loss(S, Y, reduction="MEAN")
    with pytest.raises(ValueError, match=r"\('lac', 'aps', 'raps'\)"):
        C_.class_scores(P, "naive")


# ---------------------------------------------------------------------------------------------
# The hot path: with the value checks off, validation reads nothing back from the device
# ---------------------------------------------------------------------------------------------

_HOST_READS = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist")


def _count_host_reads(fn) -> int:
    """Number of tensor -> Python conversions (each one a device synchronisation on CUDA)."""
    calls = []
    originals = {name: getattr(torch.Tensor, name) for name in _HOST_READS}

    def counting(name):
        def read(self, *args, **kwargs):
            calls.append(name)
            return originals[name](self, *args, **kwargs)

        return read

    try:
        for name in _HOST_READS:
            setattr(torch.Tensor, name, counting(name))
        out = fn()
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.backward()
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
    return len(calls)


@pytest.mark.parametrize(
    "name,fn",
    [
        ("noised_topk_loss", lambda s, y: AF.noised_topk_loss(s, y, 2)),
        ("NoisedTopKLoss", lambda s, y: AL.NoisedTopKLoss(2.0)(s, y)),
        ("topk_hinge_loss", lambda s, y: AF.topk_hinge_loss(s, y, 2)),
        ("SmoothTopKSVMLoss", lambda s, y: AL.SmoothTopKSVMLoss(2)(s, y)),
        ("focal_loss", lambda s, y: AF.focal_loss(s, y)),
        ("assume_negative_loss", lambda s, y: AF.assume_negative_loss(s, y)),
        ("epr_loss", lambda s, y: AF.epr_loss(s, y, 2.0)),
        ("TwoHeadLoss", lambda s, y: AL.TwoHeadLoss(2.0)(s, s, y)),
        ("topk_correct", lambda s, y: M.topk_correct(s.detach(), y, 2)),
        ("average_k_threshold", lambda s, y: M.average_k_threshold(s.detach(), 2.0)),
    ],
)
def test_no_host_reads_with_value_checks_off(name, fn):
    s = S.clone().requires_grad_(True)
    with value_checks(False):
        assert _count_host_reads(lambda: fn(s, Y)) == 0, name
    # with the checks on, the data-dependent checks do read (finite scores, target range)
    assert _count_host_reads(lambda: fn(s, Y)) > 0, name


def test_probabilities_stored_in_half_precision_are_accepted():
    probs = torch.randn(2000, 100, generator=torch.Generator().manual_seed(0)).mul(3).softmax(1)
    targets = torch.randint(0, 100, (2000,), generator=torch.Generator().manual_seed(1))
    stored = probs.half().float()  # how train.py saves scores.pt
    assert C_.calibrate(stored, targets, 0.1, "aps", generator=torch.Generator().manual_seed(2)) > 0
    assert C_.class_scores(probs.double(), "lac").dtype == torch.float64
