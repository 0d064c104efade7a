"""P2 losses: weakly supervised multi-label baselines, pseudo-labels and the two-head loss."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from avgk_lib import functional as AF
from avgk_lib import losses as AL
from tests.conftest import random_targets, tie_free_scores


def test_assume_negative_equals_bce_with_one_hot_targets():
    z = torch.randn(10, 7, dtype=torch.float64, requires_grad=True)
    y = random_targets(10, 7)
    ours = AF.assume_negative_loss(z, y)
    ref = F.binary_cross_entropy_with_logits(z, F.one_hot(y, 7).double())
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours, z)[0], torch.autograd.grad(ref, z)[0])


def test_label_smoothed_and_weak_assume_negative_by_hand():
    z = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    y = torch.tensor([0])
    p = torch.sigmoid(z)[0].tolist()

    def bce(q, t):
        return -(t * math.log(q) + (1 - t) * math.log(1 - q))

    eps = 0.1
    expected_ls = (bce(p[0], 1 - eps) + bce(p[1], eps) + bce(p[2], eps)) / 3
    assert AF.assume_negative_loss(z, y, label_smoothing=eps).item() == pytest.approx(expected_ls, rel=1e-12)
    gamma = 1 / 2  # 1 / (C - 1)
    expected_wan = (bce(p[0], 1) + gamma * bce(p[1], 0) + gamma * bce(p[2], 0)) / 3
    assert AF.assume_negative_loss(z, y, negative_weight=gamma).item() == pytest.approx(expected_wan, rel=1e-12)


def test_epr_by_hand():
    """Cole et al.'s normalisation: the positive term over B x C, the penalty over C^2, added once."""
    z = torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([1, 0])
    p = torch.sigmoid(z)
    positive = (-math.log(p[0, 1].item()) - math.log(p[1, 0].item())) / (2 * 3)
    penalty = ((p.sum().item() / 2) - 1.5) ** 2 / 9
    assert AF.epr_loss(z, y, 1.5).item() == pytest.approx(positive + penalty, rel=1e-12)
    assert AF.epr_loss(z, y, 1.5, reduction="sum").item() == pytest.approx(2 * (positive + penalty), rel=1e-12)
    per_sample = AF.epr_loss(z, y, 1.5, reduction="none")
    torch.testing.assert_close(per_sample.mean(), AF.epr_loss(z, y, 1.5))


def _role_by_hand(z, y, theta, k):
    """ROLE as Cole et al.'s ``loss_role``: loss matrix / (B C) summed, plus the halved penalties."""
    b, c = z.shape
    f, g = torch.sigmoid(z), torch.sigmoid(theta)
    observed = F.one_hot(y, c).bool()

    def neg_log(x):
        return -torch.log(x)

    pos_1 = torch.where(observed, neg_log(f), torch.zeros_like(f))
    cross_1 = g.detach() * neg_log(f) + (1 - g.detach()) * neg_log(1 - f)
    pos_2 = torch.where(observed, neg_log(g), torch.zeros_like(g))
    cross_2 = f.detach() * neg_log(g) + (1 - f.detach()) * neg_log(1 - g)
    reg_1 = (f.sum(1).mean() - k) ** 2 / c**2
    reg_2 = (g.sum(1).mean() - k) ** 2 / c**2
    matrix = 0.5 * (pos_1 + pos_2) + 0.5 * (cross_1 + cross_2)
    return (matrix / (b * c)).sum() + 0.5 * (reg_1 + reg_2)


def test_role_matches_cole_formula_and_stop_gradients():
    n_train, c = 20, 6
    role = AL.ROLELoss(n_train, c, expected_positives=2.0, generator=torch.Generator().manual_seed(1)).double()
    z = torch.randn(4, c, dtype=torch.float64, requires_grad=True)
    y = random_targets(4, c)
    idx = torch.tensor([3, 7, 11, 19])
    total = role(z, y, idx)  # first visit: the observed positives are set to logit(0.995)
    theta = role.label_logits
    rows = theta[idx]
    assert torch.sigmoid(rows[torch.arange(4), y]).tolist() == pytest.approx([0.995] * 4, rel=1e-12)
    expected = _role_by_hand(z, y, rows, 2.0)
    torch.testing.assert_close(total, expected)
    g_theta, g_z = torch.autograd.grad(total, (theta, z))
    e_theta, e_z = torch.autograd.grad(_role_by_hand(z, y, theta[idx], 2.0), (theta, z))
    torch.testing.assert_close(g_theta, e_theta)
    torch.testing.assert_close(g_z, e_z)
    # rows of samples not in the batch get no gradient
    untouched = torch.ones(n_train, dtype=torch.bool)
    untouched[idx] = False
    assert bool((g_theta[untouched] == 0).all())
    # stop-gradients: z reaches theta's gradient only through f.detach() and vice versa
    f_only = _role_by_hand(z, y, theta[idx].detach(), 2.0)
    torch.testing.assert_close(torch.autograd.grad(f_only, z)[0], g_z)


def test_role_table_initialisation_is_cole():
    n_train, c = 500, 8
    targets = torch.randint(0, c, (n_train,), generator=torch.Generator().manual_seed(0))
    role = AL.ROLELoss(n_train, c, 2.0, train_targets=targets, generator=torch.Generator().manual_seed(0))
    g = torch.sigmoid(role.label_logits.detach().double())
    observed = F.one_hot(targets, c).bool()
    torch.testing.assert_close(g[observed], torch.full((n_train,), 0.995, dtype=torch.float64))
    unknown = g[~observed]
    assert float(unknown.min()) >= 0.4 - 1e-6 and float(unknown.max()) <= 0.6 + 1e-6
    # uniform in logit space over [-logit(0.6), logit(0.6)]: mean ~ 0, spread ~ its full width
    logits = role.label_logits.detach()[~observed]
    q = math.log(0.6 / 0.4)
    assert abs(float(logits.mean())) < 0.05 and float(logits.max() - logits.min()) > 1.9 * q
    # the constant initialisation is still available
    constant = AL.ROLELoss(10, c, 2.0, init_probability=0.25)
    assert torch.allclose(torch.sigmoid(constant.label_logits), torch.full((10, c), 0.25))


def test_role_table_moves_under_adam_with_lr_multiplier_10():
    """Cole et al.'s train.py: Adam, the table in its own group at lr x 10. Each visited unknown
    entry must move by a sizeable fraction of lr x 10 per step (Adam normalises the tiny ROLE
    gradients, about 1/(B C) per entry), not stay at its initial value."""
    torch.manual_seed(0)
    n_train, c, d, batch, lr, steps = 32, 10, 5, 8, 1e-3, 3
    x = torch.randn(n_train, d)
    y = torch.randint(0, c, (n_train,))
    model = torch.nn.Linear(d, c)
    role = AL.ROLELoss(n_train, c, 2.0, train_targets=y, generator=torch.Generator().manual_seed(0))
    start = role.label_logits.detach().clone()
    optimizer = torch.optim.Adam([{"params": model.parameters()}, {"params": role.parameters(), "lr": lr * 10}], lr=lr)
    for step in range(steps):
        idx = torch.arange(step * batch, (step + 1) * batch) % n_train
        optimizer.zero_grad()
        role(model(x[idx]), y[idx], idx).backward()
        optimizer.step()
    moved = (role.label_logits.detach() - start).abs()
    visited = torch.zeros(n_train, dtype=torch.bool)
    visited[torch.arange(steps * batch) % n_train] = True
    unknown = ~F.one_hot(y, c).bool() & visited[:, None]
    # Adam's first step moves every entry with a non-zero gradient by lr x 10 exactly
    assert float(moved[unknown].median()) > 0.5 * lr * 10
    assert float(moved[~visited].max()) == 0.0  # samples never in a batch keep their initial estimate


def test_role_warns_about_huge_tables_and_checks_indices():
    with pytest.warns(ResourceWarning):
        AL.ROLELoss(10, 10, 1.0, memory_warning_bytes=100)
    role = AL.ROLELoss(5, 4, 1.0)
    with pytest.raises(ValueError, match="indices"):
        role(torch.randn(2, 4), torch.tensor([0, 1]), torch.tensor([0, 5]))
    with pytest.raises(TypeError, match="indices"):
        role(torch.randn(2, 4), torch.tensor([0, 1]), torch.tensor([0.0, 1.0]))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 12),
    c=st.integers(2, 9),
    k_frac=st.floats(0, 1),
    seed=st.integers(0, 1000),
)
def test_pseudo_labels_exact_count_and_true_labels(n, c, k_frac, seed):
    k = 1 + k_frac * (c - 1)
    probs = tie_free_scores(n, c, seed=seed) + 10  # distinct across the batch (softmax may tie)
    y = random_targets(n, c, seed=seed)
    positive = AF.pseudo_labels(probs, y, k)
    assert positive.dtype == torch.bool and positive.shape == (n, c)
    assert int(positive.sum()) == int(round((k - 1) * n)) + n
    assert bool(positive[torch.arange(n), y].all())
    # the extras are the largest non-target probabilities of the batch
    extras = positive.clone()
    extras[torch.arange(n), y] = False
    others = probs.masked_fill(F.one_hot(y, c).bool(), -1.0)
    if extras.any() and (~extras & (others >= 0)).any():
        assert others[extras].min() > others[~extras & (others >= 0)].max()


def test_pseudo_labels_threshold_rule_counts_true_labels():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]])
    y = torch.tensor([2, 0])
    # K=1.5: the 3 largest are 0.7, 0.6, 0.3; the true label (0, 2) is added
    expected = torch.tensor([[True, False, True], [True, True, False]])
    assert torch.equal(AF.pseudo_labels(probs, y, 1.5, rule="threshold"), expected)
    # exact rule: true labels + round(0.5 * 2) = 1 extra, the largest remaining (0.7)
    expected_exact = torch.tensor([[True, False, True], [True, False, False]])
    assert torch.equal(AF.pseudo_labels(probs, y, 1.5), expected_exact)


def test_two_head_loss_is_ce_plus_weighted_bce_on_detached_pseudo_labels():
    s = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    m = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    y = random_targets(8, 5)
    loss = AF.two_head_loss(s, m, y, k=2, weight=0.5)
    targets = AF.pseudo_labels(torch.softmax(s.detach(), 1), y, 2).double()
    expected = F.cross_entropy(s, y) + 0.5 * F.binary_cross_entropy_with_logits(m, targets)
    torch.testing.assert_close(loss, expected)
    gs, gm = torch.autograd.grad(loss, (s, m))
    torch.testing.assert_close(gs, torch.autograd.grad(F.cross_entropy(s, y), s)[0])
    torch.testing.assert_close(gm, torch.autograd.grad(0.5 * F.binary_cross_entropy_with_logits(m, targets), m)[0])
    summed = AF.two_head_loss(s, m, y, k=2, weight=0.5, class_reduction="sum")
    torch.testing.assert_close(summed, F.cross_entropy(s, y) + 0.5 * 5 * F.binary_cross_entropy_with_logits(m, targets))
    module = AL.TwoHeadLoss(2, 0.5)
    torch.testing.assert_close(module(s, m, y), loss)


def test_two_head_warmup_trains_only_the_softmax_head_first():
    s = torch.randn(6, 4, requires_grad=True)
    m = torch.randn(6, 4, requires_grad=True)
    y = random_targets(6, 4)
    loss = AL.TwoHeadLoss(2.0, weight=1.0, warmup_epochs=2)
    loss.set_epoch(1)
    torch.testing.assert_close(loss(s, m, y), F.cross_entropy(s, y))
    (gm,) = torch.autograd.grad(loss(s, m, y), m)
    assert bool((gm == 0).all())
    loss.set_epoch(2)
    (gm,) = torch.autograd.grad(loss(s, m, y), m)
    assert bool((gm != 0).any())
