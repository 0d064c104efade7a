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


# ---- P2's open choices (book/protocol.md, A8), each against a float64 brute force written here


def _softmax_by_hand(s: torch.Tensor) -> list[list[float]]:
    out = []
    for row in s.tolist():
        top = max(row)
        e = [math.exp(v - top) for v in row]
        out.append([v / sum(e) for v in e])
    return out


def _positives_by_hand(p, y, k, rule="exact", force_true=True) -> set[tuple[int, int]]:
    """Sort the whole batch in Python: the round(kB) largest entries (force_true=False), or the
    true labels plus the round((k-1)B) largest others ("exact") / the round(kB) largest ("threshold")."""
    b, c = len(p), len(p[0])
    true = {(i, int(y[i])) for i in range(b)} if force_true else set()
    extras_only = force_true and rule == "exact"
    entries = [(p[i][j], i, j) for i in range(b) for j in range(c) if not (extras_only and (i, j) in true)]
    count = round((k - 1 if extras_only else k) * b)
    return {(i, j) for _, i, j in sorted(entries, reverse=True)[:count]} | true


def _epoch_threshold_by_hand(batches, k, extras_only) -> float:
    """The average-K rule on the pooled probabilities of an epoch: midpoint of the m-th and
    (m+1)-th largest, m = floor(n k + 1/2) (k - 1 and the non-true entries when ``extras_only``)."""
    values, n = [], 0
    for s, y in batches:
        for i, row in enumerate(_softmax_by_hand(s)):
            n += 1
            values += [v for j, v in enumerate(row) if not (extras_only and j == int(y[i]))]
    m = math.floor(n * (k - 1 if extras_only else k) + 0.5)
    values.sort(reverse=True)
    return math.inf if m == 0 else (values[m - 1] + values[m]) / 2


def _two_head_by_hand(s, m, y, positives, weight, soft=False, force_true=True):
    """(loss, d loss / d m) of the two-head loss, class mean of the BCEs, batch mean, in float64."""
    p = _softmax_by_hand(s)
    b, c = s.shape
    total, grad = 0.0, [[0.0] * c for _ in range(b)]
    for i in range(b):
        yi = int(y[i])
        bce = 0.0
        for j in range(c):
            if (i, j) not in positives:
                t = 0.0
            elif not soft or (force_true and j == yi):
                t = 1.0
            else:
                t = p[i][j]
            sig = 1.0 / (1.0 + math.exp(-float(m[i, j])))
            bce -= t * math.log(sig) + (1 - t) * math.log(1 - sig)
            grad[i][j] = weight * (sig - t) / (c * b)
        total += -math.log(p[i][yi]) + weight * bce / c
    return total / b, torch.tensor(grad, dtype=torch.float64)


def _logits(b, c, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g, dtype=torch.float64) * 2


@pytest.mark.parametrize("force_true", [True, False])
@pytest.mark.parametrize("rule", ["exact", "threshold"])
@pytest.mark.parametrize("k", [1.0, 1.5, 3.0])
def test_soft_pseudo_labels_match_brute_force(k, rule, force_true):
    s = _logits(7, 6, seed=1).requires_grad_(True)
    m = _logits(7, 6, seed=2).requires_grad_(True)
    y = random_targets(7, 6, seed=3)
    positives = _positives_by_hand(_softmax_by_hand(s.detach()), y, k, rule, force_true)
    loss = AF.two_head_loss(s, m, y, k, 0.7, rule=rule, soft_labels=True, force_true=force_true)
    expected, grad_m = _two_head_by_hand(s.detach(), m.detach(), y, positives, 0.7, soft=True, force_true=force_true)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-12)
    gs, gm = torch.autograd.grad(loss, (s, m))
    torch.testing.assert_close(gm, grad_m, rtol=1e-10, atol=1e-14)
    # the soft targets are detached: the softmax head gets the cross-entropy gradient only
    torch.testing.assert_close(gs, torch.autograd.grad(F.cross_entropy(s, y), s)[0])
    module = AL.TwoHeadLoss(k, 0.7, rule=rule, soft_labels=True, force_true=force_true)
    torch.testing.assert_close(module(s, m, y), loss)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), c=st.integers(2, 9), k_frac=st.floats(0, 1), seed=st.integers(0, 1000))
def test_true_label_not_forced_takes_the_largest_of_the_batch(n, c, k_frac, seed):
    k = 1 + k_frac * (c - 1)
    s = _logits(n, c, seed)
    y = random_targets(n, c, seed=seed)
    p = _softmax_by_hand(s)
    positive = AF.pseudo_labels(torch.softmax(s, 1), y, k, force_true=False)
    by_hand = _positives_by_hand(p, y, k, force_true=False)
    assert {(i, j) for i, j in positive.nonzero().tolist()} == by_hand
    assert int(positive.sum()) == round(k * n)  # exact count, true labels included only if selected
    for rule in ("exact", "threshold"):  # the rule is moot without the forced true label
        assert torch.equal(AF.pseudo_labels(torch.softmax(s, 1), y, k, rule, force_true=False), positive)


def test_true_label_not_forced_can_leave_it_out():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]], dtype=torch.float64)
    y = torch.tensor([2, 0])
    # K = 1.5: the 3 largest of the batch; the true label 2 of the first row (0.1) is not among them
    expected = torch.tensor([[True, False, False], [True, True, False]])
    assert torch.equal(AF.pseudo_labels(probs, y, 1.5, force_true=False), expected)
    s, m = torch.log(probs), torch.zeros(2, 3, dtype=torch.float64)
    loss = AF.two_head_loss(s, m, y, 1.5, 1.0, force_true=False)
    by_hand, _ = _two_head_by_hand(s, m, y, {(0, 0), (1, 0), (1, 1)}, 1.0)
    assert float(loss) == pytest.approx(by_hand, rel=1e-12)
    # soft targets without the forced true label: every selected entry gets its probability
    soft = AF.two_head_loss(s, m, y, 1.5, 1.0, force_true=False, soft_labels=True)
    by_hand, _ = _two_head_by_hand(s, m, y, {(0, 0), (1, 0), (1, 1)}, 1.0, soft=True, force_true=False)
    assert float(soft) == pytest.approx(by_hand, rel=1e-12)


def test_fixed_threshold_selects_above_it():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]], dtype=torch.float64)
    y = torch.tensor([2, 0])
    want = torch.tensor([[True, False, True], [True, True, False]])
    assert torch.equal(AF.pseudo_labels(probs, y, 1.5, fixed_threshold=0.25), want)
    assert torch.equal(AF.pseudo_labels(probs, y, 1.5, fixed_threshold=torch.tensor(0.25)), want)
    assert torch.equal(AF.pseudo_labels(probs, y, 1.5, fixed_threshold=0.25, force_true=False), probs >= 0.25)
    assert torch.equal(AF.pseudo_labels(probs, y, 1.5, fixed_threshold=math.inf), F.one_hot(y, 3).bool())
    for bad, err in [(math.nan, ValueError), ("0.5", TypeError), (True, TypeError), (torch.ones(2), ValueError)]:
        with pytest.raises(err, match="`fixed_threshold`"):
            AF.pseudo_labels(probs, y, 1.5, fixed_threshold=bad)


CHOICES = [("exact", True), ("threshold", True), ("exact", False)]


@pytest.mark.parametrize(("rule", "force_true"), CHOICES)
@pytest.mark.parametrize("soft", [False, True])
def test_threshold_per_epoch_matches_brute_force(rule, force_true, soft):
    k, c = 2.5, 6
    epochs = [[(_logits(5, c, 10 * e + b), random_targets(5, c, seed=10 * e + b)) for b in range(3)] for e in range(3)]
    loss = AL.TwoHeadLoss(k, 0.7, rule=rule, force_true=force_true, soft_labels=soft, threshold="epoch")
    extras_only = force_true and rule == "exact"
    previous = None
    for e, batches in enumerate(epochs):
        loss.set_epoch(e)
        if e == 0:  # no previous epoch: the per-batch rule
            assert loss.epoch_threshold is None
        else:
            lam = _epoch_threshold_by_hand(previous, k, extras_only)
            assert loss.epoch_threshold == pytest.approx(lam, rel=1e-12)
            # on the epoch it was calibrated on, it selects round(nK) entries (the extras when exact)
            pooled = torch.cat([torch.softmax(s, 1) for s, _ in previous])
            pooled_y = torch.cat([y for _, y in previous])
            if extras_only:
                pooled = pooled.masked_fill(F.one_hot(pooled_y, c).bool(), -1.0)
            wanted = math.floor(len(pooled_y) * (k - 1 if extras_only else k) + 0.5)  # average_k_threshold's m
            assert int((pooled >= loss.epoch_threshold).sum()) == wanted
        for s, y in batches:
            m = _logits(5, c, 99)
            p = _softmax_by_hand(s)
            if e == 0:
                positives = _positives_by_hand(p, y, k, rule, force_true)
            else:
                positives = {(i, j) for i in range(5) for j in range(c) if p[i][j] >= lam}
                positives |= {(i, int(y[i])) for i in range(5)} if force_true else set()
            expected, _ = _two_head_by_hand(s, m, y, positives, 0.7, soft=soft, force_true=force_true)
            assert float(loss(s, m, y)) == pytest.approx(expected, rel=1e-12)
        previous = batches


def test_threshold_per_epoch_state_survives_a_checkpoint():
    import io

    k, c = 2.0, 5
    batches = [(_logits(8, c, b), random_targets(8, c, seed=b)) for b in range(4)]
    m = _logits(8, c, 50)
    loss = AL.TwoHeadLoss(k, threshold="epoch")
    loss.set_epoch(0)
    for s, y in batches:
        loss(s, m, y)
    buffer = io.BytesIO()
    torch.save(loss.state_dict(), buffer)  # an end-of-epoch checkpoint
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = AL.TwoHeadLoss(k, threshold="epoch")
    resumed.load_state_dict(state)
    loss.set_epoch(1)
    resumed.set_epoch(1)
    assert loss.epoch_threshold is not None and resumed.epoch_threshold == loss.epoch_threshold
    for s, y in batches:
        assert torch.equal(resumed(s, m, y), loss(s, m, y))
    # a per-batch loss loads checkpoints written before it had any state; the per-epoch one refuses them
    AL.TwoHeadLoss(k).load_state_dict({})
    with pytest.raises(RuntimeError, match="_extra_state"):
        AL.TwoHeadLoss(k, threshold="epoch").load_state_dict({})
    with pytest.raises(ValueError, match="threshold='epoch'"):
        AL.TwoHeadLoss(k).load_state_dict(state)


def test_threshold_per_epoch_pools_training_calls_only_and_refuses_stacks():
    s, m, y = _logits(6, 4, 0), _logits(6, 4, 1), random_targets(6, 4)
    loss = AL.TwoHeadLoss(2.0, threshold="epoch").eval()
    loss.set_epoch(0)
    loss(s, m, y)
    loss.set_epoch(1)
    assert loss.epoch_threshold is None  # nothing was pooled in eval mode
    assert not loss.stackable and AL.TwoHeadLoss(2.0, soft_labels=True, force_true=False).stackable
    with pytest.raises(ValueError, match="stacked"):
        loss(s.expand(2, 6, 4), m.expand(2, 6, 4), y.expand(2, 6))
    with pytest.raises(ValueError, match="`threshold`"):
        AL.TwoHeadLoss(2.0, threshold="step")
    with pytest.raises(ValueError, match="`k`"):
        AL.TwoHeadLoss(torch.tensor([2.0, 3.0]), threshold="epoch")
    with pytest.raises(TypeError, match="`soft_labels`"):
        AL.TwoHeadLoss(2.0, soft_labels=1)
    with pytest.raises(TypeError, match="`force_true`"):
        AF.two_head_loss(s, m, y, 2.0, force_true="no")


def test_new_choices_stack_like_separate_calls():
    s, m = _logits(3 * 5, 4, 0).reshape(3, 5, 4), _logits(3 * 5, 4, 1).reshape(3, 5, 4)
    y = random_targets(15, 4).reshape(3, 5)
    k = torch.tensor([1.5, 2.0, 3.0], dtype=torch.float64)
    for options in ({"soft_labels": True}, {"force_true": False}, {"soft_labels": True, "force_true": False}):
        stacked = AF.two_head_loss(s, m, y, k, 0.5, **options)
        separate = torch.stack([AF.two_head_loss(s[i], m[i], y[i], float(k[i]), 0.5, **options) for i in range(3)])
        torch.testing.assert_close(stacked, separate)
        module = AL.TwoHeadLoss(k, 0.5, **options)
        torch.testing.assert_close(module(s, m, y), separate)


def test_combined_head_is_the_mean_of_both_heads():
    from avgk_lib.config import ConfigError
    from avgk_lib.objectives import OBJECTIVES, assemble_objective
    from avgk_lib.runspec import RunSpec
    from avgk_lib.train import TrainConfig

    run = {"k": 2.0, "n_classes": 5, "class_counts": [1] * 5, "n_train": 5}
    objective = assemble_objective(OBJECTIVES["two_head"], OBJECTIVES["two_head"].defaults, run=run)
    s, m = _logits(4, 5, 0), _logits(4, 5, 1)
    p = _softmax_by_hand(s)
    by_hand = [[(p[i][j] + 1 / (1 + math.exp(-float(m[i, j])))) / 2 for j in range(5)] for i in range(4)]
    scores = objective.head_scores((s, m))
    torch.testing.assert_close(scores["combined"], torch.tensor(by_hand, dtype=torch.float32))
    assert tuple(scores) == ("softmax", "multilabel", "combined")
    cfg = TrainConfig(loss="two_head", k=2.0, eval_head="combined")
    assert RunSpec.resolve(cfg).heads == ("softmax", "multilabel", "combined")
    with pytest.raises(ConfigError, match="eval_head"):
        TrainConfig(loss="two_head", k=2.0, eval_head="both").validate()


def test_threshold_per_epoch_run_resumes_to_the_same_results(tmp_path, monkeypatch):
    """A run interrupted after its first epoch resumes with the threshold the first epoch pooled."""
    from avgk_lib import engine
    from avgk_lib.train import TrainConfig, train

    tiny = {"n_classes": 8, "dim": 6, "n_groups": 2, "n_train": 600, "n_val": 200, "n_test": 200}
    cfg = TrainConfig(
        dataset="synthetic",
        dataset_options=tiny,
        loss="two_head",
        k=2.0,
        epochs=3,
        batch_size=64,
        eval_ks=[2.0],
        loss_options={"threshold": "epoch", "soft_labels": True},
        eval_head="combined",
    )
    quiet = lambda *_: None  # noqa: E731
    reference = train(cfg, tmp_path / "reference", progress=False, log=quiet)
    assert set(reference["test_heads"]) == {"softmax", "multilabel", "combined"}
    assert reference["test"] == reference["test_heads"]["combined"]
    one_epoch = engine.train_one_epoch

    def interrupted(run, epoch, *args, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt
        return one_epoch(run, epoch, *args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "resumed", progress=False, log=quiet)
    monkeypatch.setattr(engine, "train_one_epoch", one_epoch)
    resumed = train(cfg, tmp_path / "resumed", resume=True, progress=False, log=quiet)
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in reference["history"]]
    assert resumed["test"] == reference["test"]
