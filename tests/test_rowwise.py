"""Per-row / per-member hyperparameters and the stacked (M, B, C) form of every loss.

The oracle is the scalar form called member by member (float64, the same noise): a stacked call
with a tensor of per-member hyperparameters must give, for member m, exactly what the call on
``scores[m], targets[m]`` with the m-th values gives, in value and in gradient. Then: bad tensors
raise naming the argument, the noise of per-member generators can be stacked, and extreme
hyperparameters never give a silent NaN or infinity (issue 18).
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from avgk_lib import functional as AF
from avgk_lib import losses as AL
from avgk_lib import ops

M, B, C, S = 3, 5, 7, 4
COUNTS = torch.tensor([50.0, 30, 20, 10, 5, 3, 1])
MEMBER_COUNTS = torch.stack([COUNTS, COUNTS.flip(0), torch.arange(1.0, C + 1)])


def stacked_scores(seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(M, B, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def stacked_targets(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, C, (M, B), generator=torch.Generator().manual_seed(seed))


def stacked_noise(seed: int = 2) -> torch.Tensor:
    return torch.randn(S, M, B, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# Each case: (function, per-member hyperparameters, fixed keyword arguments, extra stacked inputs).
# A per-member hyperparameter is a list of M values; "noise" and "label_logits"/"multilabel_logits"
# are sliced per member for the scalar calls.
CASES = {
    "noised_topk_loss": (
        AF.noised_topk_loss,
        {"k": [1, 2, 3], "epsilon": [0.0, 0.5, 1.5]},
        {"n_samples": S},
        {"noise": stacked_noise},
    ),
    "imbalanced_noised_topk_loss": (
        AF.imbalanced_noised_topk_loss,
        {"k": [2, 1, 3], "epsilon": [0.01, 0.0, 0.3], "max_margin": [0.2, 0.0, 0.5], "scale": [60.0, 1.0, 10.0]},
        {"class_counts": COUNTS, "n_samples": S},
        {"noise": stacked_noise},
    ),
    "imbalanced_noised_topk_loss(member counts)": (
        AF.imbalanced_noised_topk_loss,
        {"k": [2, 1, 3], "scale": [60.0, 1.0, 10.0]},
        {"n_samples": S},
        {"noise": stacked_noise, "class_counts": lambda: MEMBER_COUNTS},
    ),
    "topk_hinge_loss": (AF.topk_hinge_loss, {"k": [1, 3, 2]}, {}, {}),
    "smooth_topk_svm_loss": (
        AF.smooth_topk_svm_loss,
        {"k": [1, 2, 4], "tau": [0.1, 1.0, 3.0], "alpha": [0.0, 1.0, 0.5]},
        {},
        {},
    ),
    "focal_loss": (AF.focal_loss, {"gamma": [0.0, 0.5, 2.0]}, {}, {}),
    "ldam_loss": (
        AF.ldam_loss,
        {"max_margin": [0.5, 0.0, 0.2], "scale": [30.0, 1.0, 40.0]},
        {"class_counts": COUNTS},
        {},
    ),
    "ldam_loss(member counts)": (
        AF.ldam_loss,
        {"max_margin": [0.5, 0.1, 0.2]},
        {},
        {"class_counts": lambda: MEMBER_COUNTS},
    ),
    "assume_negative_loss": (
        AF.assume_negative_loss,
        {"label_smoothing": [0.0, 0.1, 0.3], "negative_weight": [1.0, 1 / (C - 1), 0.5]},
        {},
        {},
    ),
    "epr_loss": (AF.epr_loss, {"expected_positives": [1.0, 2.0, 3.5]}, {}, {}),
    "role_loss": (
        AF.role_loss,
        {"expected_positives": [1.0, 2.0, 3.5]},
        {},
        {"label_logits": lambda: stacked_scores(5, 1.0)},
    ),
    "two_head_loss": (
        AF.two_head_loss,
        {"k": [1.0, 1.5, 3.0], "weight": [0.0, 1.0, 10.0]},
        {},
        {"multilabel_logits": lambda: stacked_scores(6, 1.0)},
    ),
    "two_head_loss(threshold)": (
        AF.two_head_loss,
        {"k": [1.2, 2.0, 2.6]},
        {"rule": "threshold", "class_reduction": "sum"},
        {"multilabel_logits": lambda: stacked_scores(6, 1.0)},
    ),
}
# losses whose value couples the rows of a batch (a batch penalty, pseudo-labels of the batch)
BATCH_LEVEL = {"epr_loss", "role_loss", "two_head_loss", "two_head_loss(threshold)"}


def _first_arg(fn) -> str:
    return {AF.two_head_loss: "softmax_logits"}.get(fn, "scores")


def _call(fn, scores, targets, **kwargs):
    if fn is AF.two_head_loss:
        multilabel = kwargs.pop("multilabel_logits")
        return fn(scores, multilabel, targets, **kwargs)
    if fn is AF.role_loss:
        label_logits = kwargs.pop("label_logits")
        return fn(scores, targets, label_logits, **kwargs)
    return fn(scores, targets, **kwargs)


def _member_kwargs(case, m: int, extras: dict) -> dict:
    fn, hyper, fixed, _ = case
    kwargs = dict(fixed)
    kwargs.update({name: values[m] for name, values in hyper.items()})
    for name, value in extras.items():
        kwargs[name] = value[:, m] if name == "noise" else value[m]
    return kwargs


def _stacked_kwargs(case, extras: dict, as_rows: bool = False) -> dict:
    """Per-member tensors (M,), or with ``as_rows`` the same values per row (M, B)."""
    _, hyper, fixed, _ = case
    kwargs = dict(fixed)
    for name, values in hyper.items():
        dtype = torch.long if all(isinstance(v, int) for v in values) else torch.float64
        tensor = torch.tensor(values, dtype=dtype)
        kwargs[name] = tensor[:, None].expand(M, B).clone() if as_rows else tensor
    kwargs.update(extras)
    return kwargs


def _extras(case) -> dict:
    return {name: make() for name, make in case[3].items()}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_stacked_call_equals_member_by_member(name, reduction):
    case = CASES[name]
    fn = case[0]
    extras = _extras(case)
    scores = stacked_scores().requires_grad_(True)
    targets = stacked_targets()
    stacked = _call(fn, scores, targets, **_stacked_kwargs(case, extras), reduction=reduction)
    assert stacked.shape == ((M, B) if reduction == "none" else (M,))
    (grad,) = torch.autograd.grad(stacked.sum(), scores)
    for m in range(M):
        member_scores = scores.detach()[m].clone().requires_grad_(True)
        expected = _call(fn, member_scores, targets[m], **_member_kwargs(case, m, extras), reduction=reduction)
        torch.testing.assert_close(stacked[m], expected, rtol=1e-12, atol=1e-12)
        (member_grad,) = torch.autograd.grad(expected.sum(), member_scores)
        torch.testing.assert_close(grad[m], member_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_per_row_tensors_of_shape_rows_equal_per_member_tensors(name):
    """(M, B) per-row tensors holding each member's value give the (M,) result."""
    case = CASES[name]
    extras = _extras(case)
    scores, targets = stacked_scores(), stacked_targets()
    by_member = _call(case[0], scores, targets, **_stacked_kwargs(case, extras), reduction="none")
    by_row = _call(case[0], scores, targets, **_stacked_kwargs(case, extras, as_rows=True), reduction="none")
    torch.testing.assert_close(by_row, by_member, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(n for n in CASES if n not in BATCH_LEVEL and "member counts" not in n))
def test_flattened_rows_with_per_row_tensors_equal_stacked(name):
    """Row-wise losses: (M*B, C) scores with (M*B,) hyperparameters give the stacked per-sample losses."""
    case = CASES[name]
    extras = _extras(case)
    scores, targets = stacked_scores(), stacked_targets()
    stacked = _call(case[0], scores, targets, **_stacked_kwargs(case, extras), reduction="none")
    flat_kwargs = _stacked_kwargs(case, {}, as_rows=True)
    flat_kwargs = {k: (v.reshape(-1) if isinstance(v, torch.Tensor) else v) for k, v in flat_kwargs.items()}
    if "noise" in extras:
        flat_kwargs["noise"] = extras["noise"].reshape(S, M * B, C)
    flat = _call(case[0], scores.reshape(M * B, C), targets.reshape(-1), **flat_kwargs, reduction="none")
    torch.testing.assert_close(flat, stacked.reshape(-1), rtol=1e-12, atol=1e-12)
    # "mean" over the flattened rows is the mean of the members' means (equal batch sizes)
    flat_mean = _call(case[0], scores.reshape(M * B, C), targets.reshape(-1), **flat_kwargs)
    torch.testing.assert_close(flat_mean, stacked.mean(), rtol=1e-12, atol=1e-12)


def test_scalar_hyperparameters_on_stacked_input_equal_member_calls():
    scores, targets = stacked_scores(), stacked_targets()
    stacked = AF.smooth_topk_svm_loss(scores, targets, 2, tau=0.5)
    for m in range(M):
        torch.testing.assert_close(stacked[m], AF.smooth_topk_svm_loss(scores[m], targets[m], 2, tau=0.5))


def test_pseudo_labels_select_within_each_members_batch():
    probs = stacked_scores().softmax(-1)
    targets = stacked_targets()
    for rule in ("exact", "threshold"):
        k = torch.tensor([1.0, 1.6, 3.0])
        stacked = AF.pseudo_labels(probs, targets, k, rule=rule)
        assert stacked.shape == (M, B, C)
        for m in range(M):
            assert torch.equal(stacked[m], AF.pseudo_labels(probs[m], targets[m], float(k[m]), rule=rule))
    # exactly round(k B) positives per member with the exact rule
    stacked = AF.pseudo_labels(probs, targets, torch.tensor([1.0, 1.6, 3.0]))
    assert stacked.sum(dim=(1, 2)).tolist() == [5, 8, 15]


def test_noised_topk_per_row_k_and_epsilon():
    x = stacked_scores()[0]
    noise = torch.randn(S, B, C, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    k = torch.tensor([1, 2, 3, 7, 4])
    eps = torch.tensor([0.0, 0.1, 1.0, 2.0, 0.5])
    out = ops.noised_topk(x, k, eps, S, noise=noise)
    for r in range(B):
        expected = ops.noised_topk(x[r], int(k[r]), float(eps[r]), S, noise=noise[:, r])
        torch.testing.assert_close(out[r], expected, rtol=1e-12, atol=1e-12)


def test_stacked_noise_from_per_member_generators():
    """The lead's recipe: each member draws (S, B, C) noise from its own generator; the stack
    (S, M, B, C) reproduces the member calls that use ``generator=`` directly."""
    scores, targets = stacked_scores(), stacked_targets()
    seeds = [11, 12, 13]
    noise = torch.stack(
        [torch.randn(S, B, C, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in seeds], dim=1
    )
    eps = torch.tensor([0.2, 1.0, 0.5])
    stacked = AF.noised_topk_loss(scores, targets, 2, eps, S, noise=noise, reduction="none")
    for m, seed in enumerate(seeds):
        expected = AF.noised_topk_loss(
            scores[m], targets[m], 2, float(eps[m]), S, generator=torch.Generator().manual_seed(seed), reduction="none"
        )
        torch.testing.assert_close(stacked[m], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("eps", [0.5, torch.tensor([0.2, 0.0, 1.0])], ids=["scalar", "per-member-with-a-zero"])
def test_a_list_of_member_generators_reproduces_single_model_draws(eps):
    """generator=[g_0, .., g_{M-1}]: member m gets the noise (and its generator ends in the state)
    of the single-model call with g_m; a member with epsilon 0 draws nothing, as the scalar call."""
    scores, targets = stacked_scores(), stacked_targets()
    seeds = [21, 22, 23]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    module = AL.NoisedTopKLoss(2, eps, n_samples=S, generator=gens, reduction="none")
    stacked = [module(scores, targets) for _ in range(2)]  # two steps: the generators advance
    for m, seed in enumerate(seeds):
        eps_m = float(eps[m]) if isinstance(eps, torch.Tensor) else eps
        single_gen = torch.Generator().manual_seed(seed)
        single = AL.NoisedTopKLoss(2, eps_m, n_samples=S, generator=single_gen, reduction="none")
        for step in range(2):
            torch.testing.assert_close(stacked[step][m], single(scores[m], targets[m]), rtol=1e-12, atol=1e-12)
        assert torch.equal(gens[m].get_state(), single_gen.get_state())


def test_member_generators_and_noise_are_validated():
    scores, targets = stacked_scores(), stacked_targets()
    gens = [torch.Generator() for _ in range(M - 1)]
    with pytest.raises(ValueError, match="`generator`"):
        AF.noised_topk_loss(scores, targets, 2, generator=gens)
    with pytest.raises(TypeError, match="`generator`"):
        AF.noised_topk_loss(scores, targets, 2, generator=[torch.Generator(), None, 3])
    with pytest.raises(TypeError, match="`generator`"):
        AL.NoisedTopKLoss(2, generator=[torch.Generator(), "seed"])
    with pytest.raises(ValueError, match="`generator`"):
        ops.noised_topk(scores[0, 0], 2, generator=[torch.Generator()])  # 1-D scores have no member dim
    noise = stacked_noise()
    module = AL.ImbalancedNoisedTopKLoss(2, COUNTS, epsilon=torch.tensor([0.1, 0.2, 0.3]), n_samples=S)
    by_module = module(scores, targets, noise=noise)
    by_function = AF.imbalanced_noised_topk_loss(
        scores, targets, 2, COUNTS, torch.tensor([0.1, 0.2, 0.3]), S, noise=noise
    )
    torch.testing.assert_close(by_module, by_function)


def test_modules_take_tensor_hyperparameters_and_stacked_input():
    scores, targets = stacked_scores(), stacked_targets()
    eps = torch.tensor([0.0, 0.5, 1.0])
    module = AL.SmoothTopKSVMLoss(torch.tensor([1, 2, 3]), tau=torch.tensor([0.5, 1.0, 2.0]))
    out = module(scores, targets)
    assert out.shape == (M,)
    for m in range(M):
        torch.testing.assert_close(out[m], AL.SmoothTopKSVMLoss(m + 1, tau=[0.5, 1.0, 2.0][m])(scores[m], targets[m]))
    two_head = AL.TwoHeadLoss(torch.tensor([1.5, 2.0, 3.0]), weight=torch.tensor([1.0, 2.0, 0.5]))
    out = two_head(scores, scores * 0.5, targets)
    for m in range(M):
        single = AL.TwoHeadLoss([1.5, 2.0, 3.0][m], weight=[1.0, 2.0, 0.5][m])(scores[m], scores[m] * 0.5, targets[m])
        torch.testing.assert_close(out[m], single)
    noised = AL.NoisedTopKLoss(2, eps, n_samples=S)
    assert noised(scores, targets).shape == (M,)
    with pytest.raises(ValueError, match="`epsilon`"):
        noised(scores[0], targets[0])  # (M,) = (3,) values for a batch of 5 rows


def test_role_module_stacked_equals_member_tables():
    n_train = 12
    stacked = AL.ROLELoss(n_train, C, 2.0, n_members=M, generator=torch.Generator().manual_seed(0)).double()
    singles = []
    for m in range(M):
        single = AL.ROLELoss(n_train, C, 2.0, init_probability=0.5).double()
        with torch.no_grad():
            single.label_logits.copy_(stacked.label_logits[m])
        singles.append(single)
    scores = stacked_scores().requires_grad_(True)
    targets = stacked_targets()
    indices = torch.stack([torch.randperm(n_train, generator=torch.Generator().manual_seed(m))[:B] for m in range(M)])
    out = stacked(scores, targets, indices)
    out.sum().backward()
    for m, single in enumerate(singles):
        member_scores = scores.detach()[m].clone().requires_grad_(True)
        expected = single(member_scores, targets[m], indices[m])
        expected.backward()
        torch.testing.assert_close(out[m], expected)
        torch.testing.assert_close(scores.grad[m], member_scores.grad)
        torch.testing.assert_close(stacked.label_logits.grad[m], single.label_logits.grad)
        torch.testing.assert_close(stacked.label_logits.detach()[m], single.label_logits.detach())


# ---------------------------------------------------------------------------------------------
# bad tensors
# ---------------------------------------------------------------------------------------------

_BAD_TENSORS = {
    "wrong-shape": lambda values: torch.tensor([*values, values[0]]),
    "2-D wrong": lambda values: torch.tensor(values)[:, None].expand(M, B + 1).clone(),
    "nan": lambda values: torch.tensor([math.nan, *values[1:]], dtype=torch.float64),
    "negative": lambda values: torch.tensor([-1.0, *values[1:]], dtype=torch.float64),
    "bool": lambda values: torch.ones(M, dtype=torch.bool),
}
BAD_CASES = [
    (name, arg, label)
    for name, (fn, hyper, fixed, extras) in sorted(CASES.items())
    for arg in hyper
    for label in _BAD_TENSORS
]


@pytest.mark.parametrize(("name", "arg", "label"), BAD_CASES, ids=["-".join(c) for c in BAD_CASES])
def test_bad_hyperparameter_tensors_raise_naming_the_argument(name, arg, label):
    case = CASES[name]
    kwargs = _stacked_kwargs(case, _extras(case))
    kwargs[arg] = _BAD_TENSORS[label](case[1][arg])
    with pytest.raises((ValueError, TypeError), match=re.escape(f"`{arg}`")):
        _call(case[0], stacked_scores(), stacked_targets(), **kwargs)


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (lambda s, y: AF.topk_hinge_loss(s, y, torch.tensor([1, 2, C])), "`k`"),  # k < C
        (lambda s, y: AF.topk_hinge_loss(s, y, torch.tensor([1.0, 2.5, 3.0])), "`k`"),
        (
            lambda s, y: AF.assume_negative_loss(s, y, label_smoothing=torch.tensor([0.0, 1.0, 0.1])),
            "`label_smoothing`",
        ),
        (lambda s, y: AF.epr_loss(s, y, torch.tensor([1.0, 2.0, C + 1.0])), "`expected_positives`"),
        (lambda s, y: AF.two_head_loss(s, s, y, torch.tensor([0.5, 2.0, 2.0])), "`k`"),
        (lambda s, y: AF.ldam_loss(s, y, MEMBER_COUNTS[:2]), "`class_counts`"),
        (lambda s, y: AF.ldam_loss(s, y, MEMBER_COUNTS * torch.tensor([[1.0], [0.0], [1.0]])), "`class_counts`"),
        (lambda s, y: AF.smooth_topk_svm_loss(s, y, 2, tau=torch.tensor([1.0, 0.0, 1.0])), "`tau`"),
        (lambda s, y: AF.focal_loss(s, y, torch.tensor([1.0, math.inf, 1.0])), "`gamma`"),
        (lambda s, y: AF.noised_topk_loss(s, y[:, :-1], 2), "`targets`"),
        (lambda s, y: AF.noised_topk_loss(s, y, 2, noise=torch.zeros(S, B, C, dtype=torch.float64)), "`noise`"),
        (lambda s, y: AF.role_loss(s, y, s[:, :-1], 2.0), "`label_logits`"),
    ],
)
def test_more_bad_stacked_inputs(fn, match):
    with pytest.raises((ValueError, TypeError), match=re.escape(match)):
        fn(stacked_scores(), stacked_targets())


# ---------------------------------------------------------------------------------------------
# never a silent NaN or infinity (issue 18)
# ---------------------------------------------------------------------------------------------

EXTREME = [1e-300, 1e-40, 1e-30, 1e-10, 1e10, 1e30, 1e38, 1e300]


def _extreme_calls():
    counts = COUNTS.tolist()
    return {
        ("noised_topk_loss", "epsilon"): lambda s, y, v: AF.noised_topk_loss(s, y, 2, v, 3),
        ("imbalanced_noised_topk_loss", "scale"): lambda s, y, v: AF.imbalanced_noised_topk_loss(
            s, y, 2, counts, scale=v
        ),
        ("imbalanced_noised_topk_loss", "epsilon"): lambda s, y, v: AF.imbalanced_noised_topk_loss(
            s, y, 2, counts, epsilon=v
        ),
        ("imbalanced_noised_topk_loss", "max_margin"): lambda s, y, v: AF.imbalanced_noised_topk_loss(
            s, y, 2, counts, max_margin=v
        ),
        ("ldam_loss", "scale"): lambda s, y, v: AF.ldam_loss(s, y, counts, scale=v),
        ("ldam_loss", "max_margin"): lambda s, y, v: AF.ldam_loss(s, y, counts, max_margin=v),
        ("smooth_topk_svm_loss", "tau"): lambda s, y, v: AF.smooth_topk_svm_loss(s, y, 2, tau=v),
        ("smooth_topk_svm_loss", "alpha"): lambda s, y, v: AF.smooth_topk_svm_loss(s, y, 2, alpha=v),
        ("focal_loss", "gamma"): lambda s, y, v: AF.focal_loss(s, y, v),
        ("assume_negative_loss", "negative_weight"): lambda s, y, v: AF.assume_negative_loss(s, y, negative_weight=v),
        ("two_head_loss", "weight"): lambda s, y, v: AF.two_head_loss(s, s, y, 2.0, weight=v),
    }


EXTREME_CASES = [
    (loss, arg, value, dtype, spread)
    for (loss, arg) in _extreme_calls()
    for value in EXTREME
    for dtype in (torch.float32, torch.float64)
    for spread in (3.0, 1e4)
]


@pytest.mark.parametrize(
    ("loss", "arg", "value", "dtype", "spread"),
    EXTREME_CASES,
    ids=[f"{c[0]}-{c[1]}={c[2]:g}-{str(c[3])[6:]}-x{c[4]:g}" for c in EXTREME_CASES],
)
def test_extreme_hyperparameters_give_finite_values_or_name_the_argument(loss, arg, value, dtype, spread):
    """Either a finite loss with a finite gradient, or a ValueError naming the hyperparameter."""
    fn = _extreme_calls()[(loss, arg)]
    torch.manual_seed(0)
    scores = (torch.randn(6, C, dtype=torch.float64) * spread).to(dtype).requires_grad_(True)
    targets = torch.arange(6) % C
    try:
        out = fn(scores, targets, value)
    except ValueError as err:
        assert f"`{arg}`" in str(err), str(err)
        return
    assert bool(torch.isfinite(out).all()), f"{loss}({arg}={value:g}) = {out}"
    out.sum().backward()
    assert bool(torch.isfinite(scores.grad).all()), f"{loss}({arg}={value:g}) has a non-finite gradient"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("logit", [30.0, 1e4, 1e30])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
def test_focal_loss_is_finite_for_huge_logits(dtype, logit, gamma):
    """p_y rounds to 1 (or to 0): the value and gradient stay finite for every gamma."""
    scores = torch.tensor([[logit, 0.0, -1.0], [0.0, logit, 1.0]], dtype=dtype, requires_grad=True)
    targets = torch.tensor([0, 0])  # the first sample certain and right, the second certain and wrong
    out = AF.focal_loss(scores, targets, gamma, reduction="none")
    out.sum().backward()
    assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(scores.grad).all())
    assert out[0].item() == pytest.approx(0.0, abs=1e-6)
    assert out[1].item() == pytest.approx(logit, rel=1e-3)  # -log p_y ~ the logit gap when p_y ~ 0


def test_ldam_large_scale_is_computed_stably():
    """scale 1e30 on cosine-like scores: the naive CE(scale * s) overflows float32 and returns
    NaN; the loss here equals the float64 value."""
    torch.manual_seed(0)
    scores = torch.rand(8, C) * 2 - 1
    targets = torch.arange(8) % C
    value32 = AF.ldam_loss(scores, targets, COUNTS, scale=1e30)
    value64 = AF.ldam_loss(scores.double(), targets, COUNTS, scale=1e30)
    assert math.isfinite(value32.item())
    assert value32.item() == pytest.approx(value64.item(), rel=1e-5)


@pytest.mark.parametrize(
    ("call", "arg"),
    [
        (lambda s, y: AF.noised_topk_loss(s, y, 2, 1e308), "epsilon"),
        (lambda s, y: AF.noised_topk_loss(s, y, 2, torch.full((6,), 1e308, dtype=torch.float64)), "epsilon"),
        (lambda s, y: ops.noised_topk(s, 2, 1e39), "epsilon"),
        (lambda s, y: AF.imbalanced_noised_topk_loss(s, y, 2, COUNTS, scale=1e39), "scale"),
        (lambda s, y: AF.ldam_loss(s, y, COUNTS, scale=1e300), "scale"),
        (lambda s, y: AF.smooth_topk_svm_loss(s, y, 2, tau=1e-300), "tau"),
        (lambda s, y: AF.two_head_loss(s, s, y, 2.0, weight=1e39), "weight"),
    ],
)
def test_values_that_overflow_float32_raise_naming_the_argument(call, arg):
    scores = torch.randn(6, C)
    targets = torch.arange(6) % C
    with pytest.raises(ValueError, match=re.escape(f"`{arg}`")):
        call(scores, targets)
