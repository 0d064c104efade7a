r"""Differentiable primitives: the perturbed k-th largest value and log-space symmetric polynomials.

These are the two numerical kernels behind the losses of :mod:`avgk_lib.functional`:

* :func:`noised_topk` is the perturbed-optimizer smoothing (Berthet et al., 2020) of the k-th
  largest entry used by the P1 loss (Garcin et al., ICML 2022);
* :func:`log_elementary_symmetric` evaluates
  :math:`\log e_j(\exp(u))` for :math:`j = 0..k` stably, which is what Berrada et al. (2018)'s
  smooth top-k SVM needs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._checks import (
    all_finite,
    check_count,
    check_generator,
    check_hyper,
    check_k,
    check_nonnegative,
    check_scores,
    check_tensor,
    value_checks_on,
)

# Stand-in for log(0) in the log-space polynomials. Finite so that logsumexp and its gradient
# never see (-inf) - (-inf); exp(PAD - anything reasonable) is exactly 0 in float32 and float64.
LOG_ZERO = -1e30


def log_zero(dtype: torch.dtype) -> float:
    """:data:`LOG_ZERO` where ``dtype`` can hold it, else a quarter of the most negative finite
    value of ``dtype`` (float16: -16376), so that a sum of two stand-ins never overflows."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"`dtype` must be a floating torch.dtype, got {dtype!r}")
    return max(LOG_ZERO, torch.finfo(dtype).min / 4)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs are computed in float32 (sort-like ops and exp are unsafe in fp16)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class _NoisedKthLargest(torch.autograd.Function):
    """Monte Carlo k-th largest of ``x + noise`` with the perturbed-optimizer gradient.

    forward:  :math:`\\frac1S \\sum_s (x + Z_s)_{[k]}`, given the k-th largest value of every
    draw (``kth_values``, shape ``(S, *x.shape[:-1])``) and its index (``kth_indices``).
    backward: :math:`\\frac1S \\sum_s \\mathbf e_{i_s}` with :math:`i_s` the selected index.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, kth_values: torch.Tensor, kth_indices: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(kth_indices)
        ctx.x_shape = x.shape
        ctx.x_dtype = x.dtype
        return kth_values.mean(dim=0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        (kth_indices,) = ctx.saved_tensors
        grad = _NoisedKthLargest.scatter_draws(grad_output.to(_work_dtype(ctx.x_dtype)), kth_indices, ctx.x_shape)
        return grad.to(ctx.x_dtype), None, None

    @staticmethod
    def scatter_draws(grad_rows: torch.Tensor, kth_indices: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
        """The gradient: ``grad_rows / S`` added at each draw's selected index, draw after draw
        (the order autograd has always used, so the sums are bitwise stable)."""
        n_samples = kth_indices.shape[0]
        # (S, *batch) -> (*batch, S): one selected index per draw, scattered into the class axis.
        index = kth_indices.movedim(0, -1)
        src = (grad_rows / n_samples).unsqueeze(-1).expand(index.shape)
        grad = torch.zeros(x_shape, dtype=src.dtype, device=src.device)
        return grad.scatter_add_(-1, index, src)


def noised_topk(
    x: torch.Tensor,
    k: int | torch.Tensor,
    epsilon: float | torch.Tensor = 1.0,
    n_samples: int = 5,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> torch.Tensor:
    r"""Smoothed k-th largest value along the last dimension (P1, Garcin et al. 2022, eq. 4).

    .. math::
        \hat x_{[k]}^{\epsilon} = \frac{1}{S}\sum_{s=1}^{S} \big(x + \epsilon Z_s\big)_{[k]},
        \qquad
        \nabla_x \hat x_{[k]}^{\epsilon} = \frac1S \sum_{s=1}^S \mathbf e_{\arg (x+\epsilon Z_s)_{[k]}},

    with :math:`Z_s \sim \mathcal N(0, I)` drawn independently per sample, class and draw
    (Berthet et al. 2020, perturbed optimizers). The gradient is the Monte Carlo estimate of the
    gradient of the smoothed function, so each row of it is a probability vector.

    Args:
        x: scores, shape ``(*batch, C)``, any floating dtype and device.
        k: rank, ``1 <= k <= C`` (``k=1`` is the smoothed max); or an integer tensor of ranks,
            one per row (see below).
        epsilon: noise scale, ``>= 0``; ``0`` gives the exact (hard) k-th largest value; or a
            tensor of scales, one per row. It must stay finite in the compute dtype.
        n_samples: number of Monte Carlo draws ``S >= 1``.
        noise: optional standard normal draws of shape ``(S, *x.shape)`` (scaled by ``epsilon``
            here); makes the result deterministic.
        generator: ``torch.Generator`` for drawing the noise (ignored when ``noise`` is given);
            or a list of generators, one per entry of the leading dimension (per member of
            stacked ``(M, B, C)`` scores): member m's noise is then drawn from ``generator[m]``
            exactly as the call on ``x[m]`` with that generator draws it.

    Returns:
        Tensor of shape ``x.shape[:-1]`` and dtype ``x.dtype``.

    Ties in ``x + epsilon Z`` have probability zero for ``epsilon > 0``; for ``epsilon = 0`` the
    value is exact and the gradient goes to the index that :func:`torch.topk` reports.

    Per-row hyperparameters: ``k`` and ``epsilon`` may be tensors of shape ``()``,
    ``(x.shape[0],)`` (one per entry of the leading dimension: a row of ``(B, C)`` scores, a
    member of stacked ``(M, B, C)`` scores) or ``x.shape[:-1]`` (one per row); see
    :func:`avgk_lib._checks.check_hyper`. Row ``r`` then gets exactly the value the scalar call
    with ``k[r]``, ``epsilon[r]`` and the same ``noise[:, r]`` gives. A tensor ``epsilon`` always
    uses the noise (a row with ``epsilon = 0`` adds ``0 * Z``).

    Example:
        >>> x = torch.tensor([[3.0, 1.0, 2.0]])
        >>> noised_topk(x, 2, epsilon=0.0)
        tensor([2.])
    """
    check_scores(x, "x", ndim=None)
    rows, work = tuple(x.shape[:-1]), _work_dtype(x.dtype)
    k = check_hyper(k, "k", rows, lambda v: int(check_k(v, n_classes=x.shape[-1])), integer=True, device=x.device)
    epsilon = check_hyper(
        epsilon, "epsilon", rows, lambda v: check_nonnegative(v, "epsilon"), dtype=work, device=x.device
    )
    n_samples = check_count(n_samples, "n_samples")
    return noised_topk_unchecked(x, k, epsilon, n_samples, noise=noise, generator=generator)


def noised_topk_unchecked(
    x: torch.Tensor,
    k: int | torch.Tensor,
    epsilon: float | torch.Tensor,
    n_samples: int,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    per_draw: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """:func:`noised_topk` for arguments the caller has already validated (scores, k, epsilon, S).

    ``noise`` and ``generator`` are still checked here (type, shape, dtype, device; the noise's
    finiteness with the value checks on), whatever ``epsilon``. A tensor ``k`` (long) or
    ``epsilon`` (compute dtype) must already broadcast against ``x.shape[:-1]`` (as
    :func:`~avgk_lib._checks.check_hyper` returns them).

    With ``per_draw=True`` nothing is averaged and nothing is recorded for autograd: the result
    is ``(kth_values, kth_indices)``, the k-th largest of every draw of ``x + epsilon Z`` (compute
    dtype) and its index, each of shape ``(S, *x.shape[:-1])`` (``S = 1`` when ``epsilon`` is the
    number 0), for a caller that builds its own backward (the fused hinge of
    :func:`~avgk_lib.functional.noised_topk_loss`).

    Overflow: with the value checks on, a selected value ``x + epsilon Z`` that is not finite
    raises (naming ``epsilon``). An entry that overflows without being selected changes
    nothing: its rank, and so the selection, is the same as in exact arithmetic."""
    work = _work_dtype(x.dtype)
    x_work = x.detach().to(work)
    shape = (n_samples, *x.shape)
    if noise is not None:
        _check_noise(noise, shape, x.device)
    if isinstance(generator, (list, tuple)):
        generators = _check_member_generators(generator, x)
        if noise is None and not (not isinstance(epsilon, torch.Tensor) and epsilon == 0.0):
            noise = _member_noise(generators, epsilon, n_samples, x, work)
        generator = None
    check_generator(generator)
    if isinstance(epsilon, torch.Tensor):
        z = (
            noise.detach().to(work)
            if noise is not None
            else torch.randn(shape, generator=generator, dtype=work, device=x.device)
        )
        perturbed = torch.addcmul(x_work, epsilon.to(work).unsqueeze(-1), z)
    elif epsilon == 0.0:
        perturbed = x_work.unsqueeze(0)
    elif noise is not None:
        perturbed = torch.add(x_work, noise.detach().to(work), alpha=epsilon)
    else:
        perturbed = torch.randn(shape, generator=generator, dtype=work, device=x.device)
        # one fused pass, in place on the fresh buffer: perturbed = x + epsilon * Z
        torch.add(x_work, perturbed, alpha=epsilon, out=perturbed)
    # perturbed is a fresh buffer, except for epsilon = 0 (a view of x): the selection may overwrite it
    fresh = isinstance(epsilon, torch.Tensor) or epsilon != 0.0
    kth_values, kth_indices = _kth_largest_with_index(perturbed, k, overwrite=fresh)
    # the selected values only (S x rows, not S x rows x C): cheap, and what the result depends on
    if value_checks_on() and not all_finite(kth_values):
        raise ValueError(
            f"`epsilon` is too large for these scores: x + epsilon * noise overflows {work} "
            f"(largest finite value {torch.finfo(work).max:g})"
        )
    if per_draw:
        return kth_values, kth_indices
    return _NoisedKthLargest.apply(x, kth_values, kth_indices)


def _check_member_generators(generators: object, x: torch.Tensor) -> list[torch.Generator]:
    """One :class:`torch.Generator` per entry of the leading dimension of ``x`` (per member of
    stacked ``(M, B, C)`` scores)."""
    if not isinstance(generators, (list, tuple)) or not generators:
        raise TypeError("`generator` must be a torch.Generator, None, or a non-empty list of generators")
    for g in generators:
        check_generator(g)
        if g is None:
            raise TypeError("`generator`: a list of generators must hold torch.Generator objects, not None")
    if x.dim() < 2 or len(generators) != x.shape[0]:
        raise ValueError(
            f"`generator` lists {len(generators)} generators but the scores have shape {tuple(x.shape)}: "
            "give one per entry of the leading (member) dimension"
        )
    return list(generators)


def _member_noise(
    generators: list[torch.Generator], epsilon, n_samples: int, x: torch.Tensor, work: torch.dtype
) -> torch.Tensor:
    """Noise ``(S, M, *rest)`` whose member m is drawn from ``generators[m]`` exactly as the
    single-model call (shape ``(S, *rest)``, same dtype and device) draws it. A member whose
    ``epsilon`` is 0 everywhere draws nothing (as the scalar call with ``epsilon=0``), so its
    generator stays in step with the single-model run."""
    per_member = (n_samples, *x.shape[1:])
    if isinstance(epsilon, torch.Tensor):
        active = epsilon.expand(x.shape[:-1]).reshape(x.shape[0], -1).ne(0).any(dim=1).tolist()
    else:
        active = [True] * x.shape[0]
    draws = [
        torch.randn(per_member, generator=g, dtype=work, device=x.device)
        if on
        else torch.zeros(per_member, dtype=work, device=x.device)
        for g, on in zip(generators, active, strict=True)
    ]
    return torch.stack(draws, dim=1)


def _check_noise(noise: object, shape: tuple[int, ...], device: torch.device) -> None:
    """``noise`` for :func:`noised_topk`: floating tensor of ``shape`` on ``device``, finite."""
    noise = check_tensor(noise, "noise")
    if not noise.is_floating_point():
        raise TypeError(f"`noise` must be floating point, got {noise.dtype}")
    if tuple(noise.shape) != shape:
        raise ValueError(f"`noise` must have shape (n_samples, *x.shape) = {shape}, got {tuple(noise.shape)}")
    if noise.device != device:
        raise ValueError(f"`noise` is on {noise.device} but the scores are on {device}")
    if value_checks_on() and not all_finite(noise):
        raise ValueError("`noise` contains NaN or infinite values")


# Ranks up to this are selected by repeated elimination of the maximum (see _kth_largest_by_elimination).
ELIMINATION_MAX_RANK = 7


def _kth_largest_with_index(
    x: torch.Tensor, k: int | torch.Tensor, *, overwrite: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-th largest along the last dim and its index; a tensor ``k`` (long, broadcasting against
    ``x.shape[:-1]``, or its trailing dims) gives each row its own rank: one selection with the
    largest rank, then a gather.

    ``overwrite=True`` (``x`` is a fresh buffer of the caller: the perturbed scores) allows
    :func:`_kth_largest_by_elimination` where it is the faster one on a CPU (measured there
    only): a small rank in a row short enough that :func:`torch.topk` would use a full
    ``nth_element``. Without ties both give the same value and index; with ties, the same value."""
    k_max = int(k.max()) if isinstance(k, torch.Tensor) else k
    if overwrite and x.device.type == "cpu" and k_max <= ELIMINATION_MAX_RANK and 64 * k_max > x.shape[-1]:
        if not isinstance(k, torch.Tensor):
            return _kth_largest_by_elimination(x, k, all_ranks=False)
        values, indices = _kth_largest_by_elimination(x, k_max)
    else:
        values, indices = torch.topk(x, k_max, dim=-1, sorted=True)
    if not isinstance(k, torch.Tensor):
        return values[..., k - 1], indices[..., k - 1]
    position = (k - 1).expand(x.shape[:-1]).unsqueeze(-1)
    return values.gather(-1, position).squeeze(-1), indices.gather(-1, position).squeeze(-1)


def _kth_largest_by_elimination(
    x: torch.Tensor, k: int, *, all_ranks: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries of each row and their indices, in decreasing order, as
    :func:`torch.topk` gives them (``all_ranks=False``: the k-th only, without the last axis),
    found by taking the row maximum k times and overwriting it with -inf after each. A
    vectorized pass per rank: on CPU it beats ``topk``'s ``nth_element`` (a branch
    misprediction per comparison on random data) for the small ranks that the losses use. The
    passes run over a copy with the class axis moved before the last one, so that each maximum
    is taken across contiguous lanes of rows (faster than along the class axis at C = 100;
    ``x`` is left as it is). One entry is eliminated at a time, so ties keep their multiplicity."""
    flat = x.dim() < 2
    lanes = (x.unsqueeze(-1) if flat else x.transpose(-1, -2)).contiguous()  # (..., C, rows)
    values, indices = [], []
    for rank in range(k):
        value, index = lanes.max(dim=-2, keepdim=True)
        values.append(value)
        indices.append(index)
        if rank < k - 1:
            lanes.scatter_(-2, index, float("-inf"))
    if not all_ranks:
        values, indices = values[-1:], indices[-1:]
    value, index = torch.cat(values, dim=-2), torch.cat(indices, dim=-2)  # (..., ranks, rows)
    value, index = (value.squeeze(-1), index.squeeze(-1)) if flat else (value.mT, index.mT)
    return (value, index) if all_ranks else (value.squeeze(-1), index.squeeze(-1))


def _kth_largest(x: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    if isinstance(k, torch.Tensor):
        return _kth_largest_with_index(x, k)[0]
    return torch.topk(x, k, dim=-1, sorted=True).values[..., k - 1]


def kth_largest(x: torch.Tensor, k: int) -> torch.Tensor:
    r"""Exact k-th largest value along the last dim, :math:`x_{[k]}` (differentiable a.e.;
    ``1 <= k <= x.shape[-1]``)."""
    check_scores(x, "x", ndim=None)
    return _kth_largest(x, int(check_k(k, n_classes=x.shape[-1])))


def _anti_diagonal_index(degree: int, new_degree: int, device: torch.device) -> torch.Tensor:
    """Index into a flattened (d+1)x(d+1) outer sum (plus one LOG_ZERO slot) whose rows list
    the pairs (i, m - i) contributing to the coefficient of degree m of a polynomial product."""
    width = degree + 1
    pad_slot = width * width
    m = torch.arange(new_degree + 1, device=device)[:, None]
    i = torch.arange(width, device=device)[None, :]
    j = m - i
    valid = (j >= 0) & (j <= degree)
    return torch.where(valid, i * width + j.clamp(0, degree), torch.full_like(j, pad_slot))


def _check_log_polynomial_args(log_x: object, k: object) -> int:
    """``log_x``: floating ``(*batch, n)``, finite (use :func:`log_zero` for log 0); ``0 <= k <= n``."""
    check_scores(log_x, "log_x", ndim=None)
    return int(check_k(k, n_classes=log_x.shape[-1], minimum=0))  # type: ignore[union-attr]


def _in_work_dtype(fn, log_x: torch.Tensor, k: int) -> torch.Tensor:
    """Run ``fn`` in float32 for half inputs; stand-ins for log 0 come back as :func:`log_zero`
    of the input dtype instead of overflowing to -inf."""
    work = _work_dtype(log_x.dtype)
    if work == log_x.dtype:
        return fn(log_x, k)
    return fn(log_x.to(work), k).clamp_min(log_zero(log_x.dtype)).to(log_x.dtype)


def log_elementary_symmetric(log_x: torch.Tensor, k: int) -> torch.Tensor:
    r"""Log elementary symmetric polynomials :math:`\log e_j(e^{u_1},\dots,e^{u_n})`, ``j = 0..k``.

    .. math:: e_j(x) = \sum_{|S| = j} \prod_{i\in S} x_i
              \quad\text{is the coefficient of } t^j \text{ in } \prod_i (1 + x_i t).

    The product is evaluated by divide and conquer: pairs of polynomials are multiplied in log
    space (each coefficient a ``logsumexp`` over an anti-diagonal of the outer sum), truncated at
    degree ``k``, halving the number of factors per level (``ceil(log2 n)`` levels, each a few
    batched tensor ops). No subtraction is ever performed, so the result is accurate to a few ulps
    whatever the spread of ``u``. Entries equal to :data:`LOG_ZERO` (:func:`log_zero` of the
    dtype) act as ``x_i = 0``; NaN and infinities are rejected. Half-precision inputs are
    computed in float32.

    Args:
        log_x: ``(*batch, n)`` log values :math:`u`, finite.
        k: highest degree wanted, ``0 <= k <= n``.

    Returns:
        ``(*batch, k + 1)``; entry ``j`` is :math:`\log e_j`.
    """
    k = _check_log_polynomial_args(log_x, k)
    return _in_work_dtype(_log_elementary_symmetric, log_x, k)


def _log_elementary_symmetric(log_x: torch.Tensor, k: int) -> torch.Tensor:
    """:func:`log_elementary_symmetric` without argument checks (float32/float64 ``log_x``)."""
    *batch, n = log_x.shape
    # factors (1 + x_i t) as coefficient rows [log 1, log x_i]
    poly = torch.stack([torch.zeros_like(log_x), log_x], dim=-1)  # (*batch, n, 2)
    degree = 1
    if k == 0:
        return torch.zeros((*batch, 1), dtype=log_x.dtype, device=log_x.device)
    index_cache: dict[tuple[int, int], torch.Tensor] = {}
    while poly.shape[-2] > 1:
        count = poly.shape[-2]
        if count % 2:
            identity = torch.full((*batch, 1, degree + 1), LOG_ZERO, dtype=poly.dtype, device=poly.device)
            identity[..., 0] = 0.0
            poly = torch.cat([poly, identity], dim=-2)
            count += 1
        pairs = poly.unflatten(-2, (count // 2, 2))
        a, b = pairs[..., 0, :], pairs[..., 1, :]
        new_degree = min(2 * degree, k)
        outer = (a.unsqueeze(-1) + b.unsqueeze(-2)).flatten(-2)  # (..., (d+1)^2)
        outer = torch.cat([outer, torch.full_like(outer[..., :1], LOG_ZERO)], dim=-1)
        key = (degree, new_degree)
        if key not in index_cache:
            index_cache[key] = _anti_diagonal_index(degree, new_degree, log_x.device)
        index = index_cache[key]
        terms = outer[..., index]  # (..., new_degree + 1, degree + 1)
        poly = torch.logsumexp(terms, dim=-1)
        degree = new_degree
    poly = poly.squeeze(-2)
    if degree < k:  # fewer factors than k: missing coefficients are log 0
        pad = torch.full((*batch, k - degree), LOG_ZERO, dtype=poly.dtype, device=poly.device)
        poly = torch.cat([poly, pad], dim=-1)
    return poly


def _cauchy_pairs(k: int, device: torch.device, dtype: torch.dtype):
    """0/1 matrices for a truncated polynomial product as matmuls: ``(a @ L) * (b @ R) @ D``.

    L and R pick, for every pair (i, j) with i + j <= k, the coefficients a_i and b_j; D sums
    the products a_i b_j into degree i + j.

    Only the pairs that survive truncation at degree k are ever formed, so no product can
    overflow (each is bounded by the coefficient it contributes to)."""
    i, j = torch.meshgrid(torch.arange(k + 1), torch.arange(k + 1), indexing="ij")
    keep = (i + j) <= k
    i, j = i[keep], j[keep]
    degrees = torch.arange(k + 1)[:, None]
    select_left, select_right = degrees == i[None, :], degrees == j[None, :]
    to_degree = (i + j)[:, None] == degrees.T
    return tuple(m.to(device=device, dtype=dtype) for m in (select_left, select_right, to_degree))


def elementary_symmetric(x: torch.Tensor, k: int, block: int = 16) -> torch.Tensor:
    r"""Elementary symmetric polynomials :math:`e_0..e_k` of non-negative ``x`` (last dim), in linear space.

    The factors :math:`(1 + x_i t)` are first multiplied within blocks of ``block`` entries by
    the recursion :math:`e_j \leftarrow e_j + x_i e_{j-1}` (vectorized over blocks), then the
    block polynomials are multiplied pairwise, truncated at degree k, with small matrix products
    until one is left. Every term is non-negative, so there is no cancellation: the relative
    error is a few ulps per step. The caller keeps values in range (entries in [0, 1] give
    :math:`e_j \le \binom{n}{j}`).

    Args:
        x: ``(*batch, n)`` finite, non-negative. k: ``0 <= k <= n``. block: block length ``>= 1``.
    """
    check_scores(x, "x", ndim=None)
    k = int(check_k(k, n_classes=x.shape[-1], minimum=0))
    block = check_count(block, "block")
    if value_checks_on() and bool((x.detach() < 0).any()):
        raise ValueError("`x` must be non-negative (elementary_symmetric works in linear space)")
    return _elementary_symmetric(x, k, block)


def _elementary_symmetric(x: torch.Tensor, k: int, block: int = 16) -> torch.Tensor:
    """:func:`elementary_symmetric` without argument checks."""
    *batch, n = x.shape
    n_blocks = -(-n // block)
    if n_blocks * block != n:
        x = F.pad(x, (0, n_blocks * block - n))
    blocks = x.unflatten(-1, (n_blocks, block))
    poly = F.pad(torch.ones_like(blocks[..., :1]), (0, k))  # (*batch, n_blocks, k+1) = [1, 0, ..]
    for xi in blocks.unbind(-1):
        shifted = F.pad(poly[..., :-1], (1, 0))  # coefficients of t * poly
        poly = torch.addcmul(poly, xi.unsqueeze(-1), shifted)
    left, right, to_degree = _cauchy_pairs(k, x.device, x.dtype)
    while poly.shape[-2] > 1:
        count = poly.shape[-2]
        if count % 2:
            identity = F.pad(torch.ones_like(poly[..., :1, :1]), (0, k))
            poly = torch.cat([poly, identity], dim=-2)
            count += 1
        pairs = poly.unflatten(-2, (count // 2, 2))
        poly = ((pairs[..., 0, :] @ left) * (pairs[..., 1, :] @ right)) @ to_degree
    return poly.squeeze(-2)


def log_elementary_symmetric_fast(log_x: torch.Tensor, k: int) -> torch.Tensor:
    r"""Same value as :func:`log_elementary_symmetric`, split into an exact log-space head and a
    linear-space tail for speed.

    The ``k + 1`` largest entries (the head H) are handled in log space. The others (the tail T)
    are rescaled by the largest of them, :math:`r`, so :math:`x_t / r \in [0, 1]`, and their
    polynomials are computed in linear space by :func:`elementary_symmetric`. Then

    .. math:: \log e_j = \operatorname{LSE}_{i=0}^{j}\big(\log e_{j-i}(H) + i\log r + \log e_i(T/r)\big).

    Tail values that underflow are negligible: every head entry is at least :math:`r`, so a
    subset using an entry :math:`x_t < r \cdot \mathrm{tiny}` is outweighed by at least one subset
    using a head entry instead, by a factor larger than :math:`1/\mathrm{tiny}`.

    Arguments as in :func:`log_elementary_symmetric`.
    """
    k = _check_log_polynomial_args(log_x, k)
    return _in_work_dtype(_log_elementary_symmetric_fast, log_x, k)


def _log_elementary_symmetric_fast(log_x: torch.Tensor, k: int) -> torch.Tensor:
    """:func:`log_elementary_symmetric_fast` without argument checks (float32/float64 ``log_x``)."""
    *batch, n = log_x.shape
    head_size = k + 1
    if n <= 2 * head_size:
        return _log_elementary_symmetric(log_x, k)
    top = torch.topk(log_x, head_size, dim=-1, sorted=True)
    log_head = _log_elementary_symmetric(top.values, k)  # (*batch, k+1)
    # the tail: every entry but the head, rescaled by its own maximum r (detached: a constant
    # scale that appears on both sides of e_i(T) = r^i e_i(T / r))
    is_head = torch.zeros_like(log_x, dtype=torch.bool).scatter_(-1, top.indices, True)
    tail = log_x.masked_fill(is_head, LOG_ZERO)
    log_r = tail.detach().amax(dim=-1, keepdim=True)
    # e_i(T/r) <= C(n, i): float32 holds it up to about e^88
    log_binom = math.lgamma(n + 1.0) - math.lgamma(k + 1.0) - math.lgamma(n - k + 1.0)  # host math, no tensor
    tail_dtype = torch.float64 if log_binom > 60 else log_x.dtype
    e_tail = _elementary_symmetric((tail.to(tail_dtype) - log_r.to(tail_dtype)).exp(), k)
    tiny = torch.finfo(tail_dtype).tiny
    log_tail = e_tail.clamp_min(tiny).log().to(log_x.dtype)  # (*batch, k+1)
    log_tail = log_tail + torch.arange(k + 1, device=log_x.device, dtype=log_x.dtype) * log_r
    # Cauchy product in log space: out_j = LSE_i (head_{j-i} + tail_i)
    outer = (log_head.unsqueeze(-1) + log_tail.unsqueeze(-2)).flatten(-2)
    outer = torch.cat([outer, torch.full_like(outer[..., :1], LOG_ZERO)], dim=-1)
    return torch.logsumexp(outer[..., _anti_diagonal_index(k, k, log_x.device)], dim=-1)
