r"""Computations behind the book's figures and tables (each one short, tested, reused).

The notebooks only call these functions and :mod:`avgk_book.plotting`; every number they show
is computed here from the library's losses, metrics, datasets and finished runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from avgk_lib import functional as AF
from avgk_lib import metrics as M
from avgk_lib._checks import check_count, check_counts_vector
from avgk_lib.data.oracle import bayes_average_k_sets, bayes_topk_sets, expected_set_accuracy
from avgk_lib.data.synthetic import SyntheticSpec, SyntheticTask
from avgk_lib.ops import noised_topk


def clark_smoothed_max(x1: float, x2: float, epsilon: float) -> tuple[float, float]:
    r"""Clark (1961): :math:`\mathbb E\max(x_1 + \epsilon Z_1, x_2 + \epsilon Z_2)` and its derivative
    in :math:`x_1`, for independent standard normals:

    .. math:: \mathbb E\max = x_1\Phi(d) + x_2\Phi(-d) + \theta\varphi(d),\quad
              \theta = \epsilon\sqrt2,\ d = (x_1 - x_2)/\theta,\qquad \partial_{x_1} = \Phi(d).
    """
    theta = epsilon * math.sqrt(2.0)
    d = (x1 - x2) / theta
    cdf = 0.5 * (1.0 + math.erf(d / math.sqrt(2.0)))
    pdf = math.exp(-0.5 * d * d) / math.sqrt(2.0 * math.pi)
    return x1 * cdf + x2 * (1.0 - cdf) + theta * pdf, cdf


def smoothing_curve(
    x: torch.Tensor, k: int, epsilons: list[float], n_samples: int = 2000, seed: int = 0
) -> dict[str, list[float]]:
    """Smoothed k-th largest value of the vector ``x`` and its gradient entries for several epsilon."""
    out: dict[str, list[Any]] = {"epsilon": [], "value": [], "gradient": []}
    for eps in epsilons:
        xx = x.detach().double().clone().requires_grad_(True)
        value = noised_topk(xx, k, eps, n_samples, generator=torch.Generator().manual_seed(seed))
        (grad,) = torch.autograd.grad(value, xx)
        out["epsilon"].append(eps)
        out["value"].append(float(value.detach()))
        out["gradient"].append(grad.tolist())
    return out


def monte_carlo_spread(
    x: torch.Tensor, k: int, epsilon: float, sample_sizes: list[int], repeats: int = 200, seed: int = 0
) -> dict[str, list[float]]:
    """Standard deviation of the noised k-th largest estimate over repeated draws, per n_samples."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, list[float]] = {"n_samples": [], "std": []}
    batch = x.detach().double().expand(repeats, -1)
    for s in sample_sizes:
        estimates = noised_topk(batch, k, epsilon, s, generator=g)
        out["n_samples"].append(s)
        out["std"].append(float(estimates.std()))
    return out


def clark_check(
    x1: float, x2: float, epsilons: list[float], n_samples: int = 20_000, seed: int = 0
) -> dict[str, list[float]]:
    """Monte Carlo smoothed max of two scores (our operator, k=1) against Clark's closed form."""
    out: dict[str, list[float]] = {
        "epsilon": [],
        "monte_carlo": [],
        "closed_form": [],
        "grad_mc": [],
        "grad_closed_form": [],
    }
    for eps in epsilons:
        x = torch.tensor([[x1, x2]], dtype=torch.float64, requires_grad=True)
        value = noised_topk(x, 1, eps, n_samples, generator=torch.Generator().manual_seed(seed))
        (grad,) = torch.autograd.grad(value.sum(), x)
        exact, dexact = clark_smoothed_max(x1, x2, eps)
        out["epsilon"].append(eps)
        out["monte_carlo"].append(float(value.detach()))
        out["closed_form"].append(exact)
        out["grad_mc"].append(float(grad[0, 0]))
        out["grad_closed_form"].append(dexact)
    return out


def loss_landscape(
    scores: torch.Tensor,
    target: int,
    k: int,
    shifts: torch.Tensor,
    epsilon: float = 0.5,
    tau: float = 0.5,
    n_samples: int = 500,
) -> dict[str, list[float]]:
    """Losses of one score vector as the true class's score moves by ``shifts``: the hard hinge,
    the noised hinge and Berrada's smooth SVM (values side by side for a plot)."""
    out: dict[str, list[float]] = {"shift": shifts.tolist(), "topk_hinge": [], "noised_topk": [], "smooth_svm": []}
    y = torch.tensor([target])
    for shift in shifts.tolist():
        s = scores.detach().double().clone()[None]
        s[0, target] += shift
        out["topk_hinge"].append(float(AF.topk_hinge_loss(s, y, k)))
        out["noised_topk"].append(
            float(AF.noised_topk_loss(s, y, k, epsilon, n_samples, generator=torch.Generator().manual_seed(0)))
        )
        out["smooth_svm"].append(float(AF.smooth_topk_svm_loss(s, y, k, tau=tau)))
    return out


def loss_gradients(
    scores: torch.Tensor, target: int, k: int, epsilon: float = 0.5, tau: float = 0.5, n_samples: int = 2000
) -> dict[str, list[float]]:
    """Gradient of each top-K loss with respect to the scores of one sample."""
    y = torch.tensor([target])
    losses = {
        "topk_hinge": lambda s: AF.topk_hinge_loss(s, y, k),
        "noised_topk": lambda s: AF.noised_topk_loss(
            s, y, k, epsilon, n_samples, generator=torch.Generator().manual_seed(0)
        ),
        "smooth_svm": lambda s: AF.smooth_topk_svm_loss(s, y, k, tau=tau),
        "cross_entropy": lambda s: torch.nn.functional.cross_entropy(s, y),
    }
    out = {}
    for name, fn in losses.items():
        s = scores.detach().double().clone()[None].requires_grad_(True)
        (g,) = torch.autograd.grad(fn(s), s)
        out[name] = g[0].tolist()
    return out


def uncalibrated_topk_hinge(scores: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    r"""Per-sample top-K hinge in the form of Lapin et al. (2015) and Berrada et al. (2018),
    :math:`\big(1 + (s_{\setminus y})_{[K]} - s_y\big)_+`: the true score against the K-th largest
    of the **other** scores. It equals the calibrated :math:`(1 + s_{[K+1]} - s_y)_+` when y is in
    the top K and exceeds it otherwise; Yang & Koyejo (2020) show it is not top-K calibrated."""
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2 or not scores.is_floating_point():
        raise TypeError("`scores` must be a floating (B, C) tensor")
    if not isinstance(targets, torch.Tensor) or targets.shape != scores.shape[:1]:
        raise ValueError("`targets` must be a (B,) tensor of class indices")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < scores.shape[1]:
        raise ValueError(f"`k` must be an integer in [1, C - 1], got {k!r}")
    rows = torch.arange(len(targets))
    own = scores[rows, targets]
    others = scores.clone()
    others[rows, targets] = -torch.inf
    return torch.relu(1.0 + torch.topk(others, k, dim=1).values[:, k - 1] - own)


def conditional_risks(posterior: torch.Tensor, candidates: dict[str, torch.Tensor], k: int) -> list[dict[str, Any]]:
    r"""Conditional risk :math:`\sum_y p_y\,\ell(s, y)` of each candidate score vector ``s`` for one
    input with class probabilities ``posterior``, under the calibrated top-K hinge
    :math:`(1 + s_{[K+1]} - s_y)_+` and the uncalibrated form of :func:`uncalibrated_topk_hinge`."""
    p = torch.as_tensor(posterior, dtype=torch.float64)
    if p.ndim != 1 or (p < 0).any() or abs(float(p.sum()) - 1.0) > 1e-6:
        raise ValueError("`posterior` must be one probability vector")
    if not candidates:
        raise ValueError("`candidates` is empty")
    labels = torch.arange(len(p))
    out = []
    for name, s in candidates.items():
        scores = torch.as_tensor(s, dtype=torch.float64).expand(len(p), -1)
        if scores.shape[1] != len(p):
            raise ValueError(f"`candidates[{name!r}]` must have {len(p)} entries")
        calibrated = AF.topk_hinge_loss(scores, labels, k, reduction="none")
        lapin = uncalibrated_topk_hinge(scores, labels, k)
        out.append(
            {
                "candidate": name,
                "scores": [float(v) for v in scores[0]],
                "calibrated risk": float(p @ calibrated),
                "uncalibrated risk": float(p @ lapin),
            }
        )
    return out


def hinge_bias(
    scores: torch.Tensor,
    target: int,
    k: int,
    epsilon: float,
    sample_sizes: list[int],
    repeats: int = 2000,
    reference_samples: int = 200_000,
    seed: int = 0,
) -> dict[str, list[float]]:
    r"""Bias of the Monte Carlo noised hinge: mean over ``repeats`` independent estimates of
    :math:`(1 + \hat s^{\epsilon}_{[K+1]} - s_y)_+` with M draws, minus the same loss with
    ``reference_samples`` draws (a proxy of the exact smoothed loss). Jensen's inequality makes
    it non-negative (the hinge is convex); it shrinks as M grows."""
    x = scores.detach().double()[None]
    y = torch.tensor([target])
    g = torch.Generator().manual_seed(seed)
    exact = float(AF.noised_topk_loss(x, y, k, epsilon, reference_samples, generator=g))
    out: dict[str, list[float]] = {"n_samples": [], "bias": [], "stderr": []}
    batch, ys = x.expand(repeats, -1), y.expand(repeats)
    for m in sample_sizes:
        losses = AF.noised_topk_loss(batch, ys, k, epsilon, m, generator=g, reduction="none")
        out["n_samples"].append(m)
        out["bias"].append(float(losses.mean()) - exact)
        out["stderr"].append(float(losses.std() / math.sqrt(repeats)))
    return out


def cost_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (C, K) row of a loss benchmark: the ratios a reader compares (how many times slower
    than cross-entropy the noised loss is, how many times faster than the smooth SVMs)."""
    need = {"C", "K", "cross_entropy", "ours_noised", "pytopk_noised", "ours_svm", "difftopk_svm", "noise_draw"}
    if not rows or any(not need <= set(r) for r in rows):
        raise ValueError(f"`rows` must be non-empty benchmark rows with keys {sorted(need)}")
    return [
        {
            "C": r["C"],
            "K": r["K"],
            "noised / CE": r["ours_noised"] / r["cross_entropy"],
            "noise draw share": r["noise_draw"] / r["ours_noised"],
            "pytopk / noised": r["pytopk_noised"] / r["ours_noised"],
            "smooth SVM (ours) / noised": r["ours_svm"] / r["ours_noised"],
            "smooth SVM (difftopk) / noised": r["difftopk_svm"] / r["ours_noised"],
        }
        for r in rows
    ]


def cost_findings(ratios: list[dict[str, Any]], where: str = "this CPU") -> list[str]:
    """Sentences stating what rows of :func:`cost_ratios` show (ranges over C and K, and the
    growth with K of the smooth SVM's time at the largest C), computed, never typed by hand."""
    if not ratios:
        raise ValueError("`ratios` is empty")

    def span(key: str, fmt: str) -> str:
        values = [r[key] for r in ratios]
        return f"{format(min(values), fmt)} to {format(max(values), fmt)}"

    c_max = max(r["C"] for r in ratios)
    growth = ", ".join(
        f"{r['smooth SVM (difftopk) / noised']:.1f}x at K = {r['K']}"
        for r in sorted((r for r in ratios if r["C"] == c_max), key=lambda r: r["K"])
    )
    return [
        f"The noised loss costs {span('noised / CE', '.0f')} times cross-entropy on {where}; drawing its noise "
        f"takes {span('noise draw share', '.0%')} of its time.",
        f"Berrada's smooth SVM (difftopk) is {span('smooth SVM (difftopk) / noised', '.1f')} times slower than the "
        f"noised loss, and the gap grows with K: {growth} for C = {c_max}.",
        f"Our exact smooth SVM is {span('smooth SVM (ours) / noised', '.1f')} times the noised loss, and the P1 "
        f"authors' noised loss (pytopk) {span('pytopk / noised', '.1f')} times ours.",
    ]


def oracle_accuracy_curves(
    task: SyntheticTask, n: int = 20_000, ks: list[int] | None = None, seed: int = 0
) -> dict[str, list[float]]:
    """Expected accuracy of the Bayes top-K and average-K sets for K = 1..C (or ``ks``)."""
    _, _, posterior = task.sample(n, seed=seed)
    ks = ks or list(range(1, task.n_classes + 1))
    out: dict[str, list[float]] = {"k": [], "topk": [], "average_k": []}
    for k in ks:
        out["k"].append(k)
        out["topk"].append(expected_set_accuracy(posterior, bayes_topk_sets(posterior, k)))
        out["average_k"].append(expected_set_accuracy(posterior, bayes_average_k_sets(posterior, k)))
    return out


def average_k_gain_vs_ambiguity(
    levels: list[float], k: int = 2, n: int = 20_000, **spec: Any
) -> dict[str, list[float]]:
    """Bayes average-K minus top-K accuracy (equal average size K) as the spread of ambiguity grows.

    ``levels`` are values of :class:`SyntheticSpec.ambiguity`: 0 makes every group equally easy;
    1 makes the tightest group fully ambiguous while the loosest stays easy."""
    out: dict[str, list[float]] = {"ambiguity": [], "topk": [], "average_k": [], "gain": [], "entropy_std": []}
    for level in levels:
        task = SyntheticTask(SyntheticSpec(ambiguity=level, **spec))
        _, _, posterior = task.sample(n, seed=1)
        top = expected_set_accuracy(posterior, bayes_topk_sets(posterior, k))
        avg = expected_set_accuracy(posterior, bayes_average_k_sets(posterior, k))
        out["ambiguity"].append(level)
        out["topk"].append(top)
        out["average_k"].append(avg)
        out["gain"].append(avg - top)
        out["entropy_std"].append(float(task.bayes_entropy(posterior).std()))
    return out


def load_run_scores(run: str | Path) -> dict[str, torch.Tensor]:
    """Validation and test scores (float32) and labels saved by a finished run (``scores.pt``)."""
    from avgk_lib.rundir import RunDir

    data = RunDir(run).load_scores()  # verifies the format version and checksum
    return {k: (v.float() if v.is_floating_point() else v) for k, v in data.items() if isinstance(v, torch.Tensor)}


def run_sets(run: str | Path, k: float, kind: str = "average_k") -> dict[str, torch.Tensor]:
    """Test prediction sets of a finished run: average-K (threshold calibrated on its validation
    scores) or top-K; with the test scores, labels, per-sample hits and set sizes."""
    data = load_run_scores(run)
    if kind == "average_k":
        sets = M.average_k_sets(data["test_scores"], M.average_k_threshold(data["val_scores"], k))
    elif kind == "topk":
        sets = M.topk_sets(data["test_scores"], int(k))
    else:
        raise ValueError(f"`kind` must be 'average_k' or 'topk', got {kind!r}")
    y = data["test_targets"]
    return {
        "sets": sets,
        "scores": data["test_scores"],
        "targets": y,
        "hit": sets[torch.arange(len(y)), y],
        "size": sets.sum(1),
    }


def accuracy_by_class_frequency(
    correct: torch.Tensor, targets: torch.Tensor, train_counts, n_bins: int = 5
) -> dict[str, torch.Tensor]:
    """Accuracy per class against its training frequency, plus the same in ``n_bins`` bins of
    classes sorted by frequency (equal numbers of classes, rarest first), for long-tail plots.

    Returns ``train_count`` and ``accuracy`` per class (classes absent from the evaluation
    dropped) and ``bin_accuracy`` (macro accuracy of each bin), ``bin_min_count``,
    ``bin_max_count``.

    Args:
        correct: bool ``(n,)`` hits. targets: ``(n,)`` class indices. train_counts: C training
            counts, finite and >= 0 (a class may be absent from training). n_bins: >= 1.
    """
    counts = check_counts_vector(train_counts, "train_counts", positive=False, device="cpu")
    n_bins = check_count(n_bins, "n_bins")
    n_classes = counts.numel()
    breakdown = M.per_class_accuracy(correct, targets, n_classes)
    present = breakdown["support"] > 0
    acc, freq = breakdown["accuracy"][present], counts[present]
    order = torch.argsort(freq, stable=True)
    bins = torch.tensor_split(order, min(n_bins, order.numel()))
    return {
        "train_count": freq,
        "accuracy": acc,
        "bin_accuracy": torch.stack([acc[b].mean() for b in bins]),
        "bin_min_count": torch.stack([freq[b].min() for b in bins]),
        "bin_max_count": torch.stack([freq[b].max() for b in bins]),
    }


def by_class_frequency(
    run: str | Path, k: float, train_counts: list[int] | None = None, kind: str = "average_k", n_bins: int = 5
) -> dict[str, Any]:
    """Accuracy and mean set size per class against the class's training frequency (by default
    the class counts recorded in the run's ``results.json``)."""
    if train_counts is None:
        train_counts = run_results(run)["summary"]["class_counts"]
    s = run_sets(run, k, kind)
    freq = accuracy_by_class_frequency(s["hit"], s["targets"], train_counts, n_bins)
    n_classes = s["sets"].shape[1]
    sizes = torch.bincount(s["targets"], weights=s["size"].double(), minlength=n_classes)
    support = torch.bincount(s["targets"], minlength=n_classes).double()
    present = support > 0
    freq["mean_set_size"] = sizes[present] / support[present]
    return freq


def by_quantile(
    values: torch.Tensor, hits: torch.Tensor, sizes: torch.Tensor, n_bins: int = 5
) -> dict[str, list[float]]:
    """Accuracy and mean set size in ``n_bins`` equal-count bins of ``values`` (e.g. oracle entropy)."""
    order = torch.argsort(values, stable=True)
    out: dict[str, list[float]] = {"low": [], "high": [], "accuracy": [], "mean_size": []}
    for chunk in torch.tensor_split(order, n_bins):
        out["low"].append(float(values[chunk].min()))
        out["high"].append(float(values[chunk].max()))
        out["accuracy"].append(float(hits[chunk].double().mean()))
        out["mean_size"].append(float(sizes[chunk].double().mean()))
    return out


def run_results(run: str | Path) -> dict[str, Any]:
    """The result of a finished run (``config``, ``summary``, ``history``, ``test`` ...), read and
    verified by :meth:`avgk_lib.rundir.RunDir.read_result`; ``ValueError`` when the folder holds no
    intact result."""
    from avgk_lib.rundir import RunDir

    folder = RunDir(run)
    result, why = folder.read_result()
    if result is None:
        raise ValueError(why or f"{folder.path} holds no finished run")
    return result.to_dict()


def synthetic_oracle(dataset_options: dict[str, Any], ks: list[float]) -> dict[float, float]:
    """Expected average-K accuracy of the Bayes oracle on the test inputs of a synthetic dataset."""
    from avgk_lib.data import load_dataset

    posterior = load_dataset("synthetic", **dataset_options).extra["test_posterior"]
    return {k: expected_set_accuracy(posterior, bayes_average_k_sets(posterior, k)) for k in ks}


def conformal_comparison(
    run: str | Path, target_size: float = 2.0, alphas: list[float] | None = None, seed: int = 0
) -> dict[str, Any]:
    """Average-K and split-conformal sets (LAC, APS, RAPS) from the same model's scores.

    Validation scores calibrate everything; test scores are evaluated. Returns coverage-size
    curves (over alpha for conformal, over K for average-K) and two comparisons: at matched
    average size ``target_size`` and at matched coverage (that of LAC at ``alpha=0.1``)."""
    from avgk_lib import conformal as C

    from .conformal_reference import alpha_for_mean_size, average_k_for_coverage

    data = load_run_scores(run)
    pv, yv, pt, yt = data["val_scores"], data["val_targets"], data["test_scores"], data["test_targets"]
    alphas = alphas or [0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4]
    curves: dict[str, dict[str, list[float]]] = {}

    def evaluate(sets: torch.Tensor) -> tuple[float, float]:
        return float(sets[torch.arange(len(yt)), yt].double().mean()), float(sets.sum(1).double().mean())

    for method in C.METHODS:
        cov, size = [], []
        for alpha in alphas:
            g = torch.Generator().manual_seed(seed)
            qhat = C.calibrate(pv, yv, alpha, method, generator=g)
            c, s = evaluate(C.conformal_sets(pt, qhat, method, generator=g))
            cov.append(c)
            size.append(s)
        curves[method] = {"coverage": cov, "size": size}
    ks = [k for k in (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0) if k <= pv.shape[1]]
    avg = [evaluate(M.average_k_sets(pt, M.average_k_threshold(pv, k))) for k in ks]
    curves["average-K"] = {"coverage": [a[0] for a in avg], "size": [a[1] for a in avg]}

    matched_size = {}
    for method in C.METHODS:
        alpha = alpha_for_mean_size(pv, yv, target_size, method)
        g = torch.Generator().manual_seed(seed)
        matched_size[method] = evaluate(
            C.conformal_sets(pt, C.calibrate(pv, yv, alpha, method, generator=g), method, generator=g)
        )
    matched_size["average-K"] = evaluate(M.average_k_sets(pt, M.average_k_threshold(pv, target_size)))
    lac_qhat = C.calibrate(pv, yv, 0.1, "lac")
    lac_coverage = float(C.conformal_sets(pv, lac_qhat, "lac")[torch.arange(len(yv)), yv].double().mean())
    k_cov = average_k_for_coverage(pv, yv, lac_coverage)
    matched_coverage = {
        "lac": evaluate(C.conformal_sets(pt, lac_qhat, "lac")),
        "average-K": evaluate(M.average_k_sets(pt, M.average_k_threshold(pv, k_cov))),
    }
    return {
        "curves": curves,
        "matched_size": matched_size,
        "matched_coverage": matched_coverage,
        "target_size": target_size,
        "k_for_coverage": k_cov,
    }


def by_entropy_table(runs: dict[str, str | Path], k: float, n_bins: int = 5) -> dict[str, list[float]]:
    """Average-K accuracy and mean set size of finished synthetic runs in ``n_bins`` equal-count bins
    of the *Bayes* posterior entropy of their test inputs (columns ``entropy`` (bin centre),
    ``<name> accuracy`` and ``<name> size`` per run name). The runs must share one dataset."""
    from avgk_lib.data import load_dataset

    if not runs:
        raise ValueError("`runs` must name at least one finished run")
    options = run_results(next(iter(runs.values())))["config"]["dataset_options"]
    bundle = load_dataset("synthetic", **options)
    entropy = bundle.extra["task"].bayes_entropy(bundle.extra["test_posterior"])
    table: dict[str, list[float]] = {}
    for name, run in runs.items():
        sets = run_sets(run, k)
        groups = by_quantile(entropy, sets["hit"], sets["size"], n_bins=n_bins)
        table.setdefault("entropy", [(lo + hi) / 2 for lo, hi in zip(groups["low"], groups["high"], strict=True)])
        table[f"{name} accuracy"], table[f"{name} size"] = groups["accuracy"], groups["mean_size"]
    return table
