r"""Many small runs trained as one stacked model (the engine of :func:`avgk_lib.train.train_many`).

On small tasks one training step of one model leaves the hardware idle: Python and dispatch
overhead dominate. A :class:`Stack` trains M member runs that share a model shape, a loss and a
schedule as one model, with a fixed number of operations per step whatever M:

* the members' training sets are one tensor and each step gathers every member's batch
  ``(M, B, ...)`` with one indexing operation (:class:`StackedBatches`), from each member's own
  permutation and augmentation draws (those its own loader makes);
* one forward: the parameters are stacked along a new leading dimension
  (``torch.func.stack_module_state``) and the forward is ``vmap`` of ``functional_call``;
* one loss call over the ``(M, B, C)`` outputs (the stacked form of :mod:`avgk_lib.functional`,
  per-member knobs as ``(M,)`` tensors, :func:`stacked_loss_module`) giving ``(M,)`` losses,
  times each member's ``loss_weight``; their sum is backpropagated once, and since the members
  share no parameter, :math:`\partial \sum_i L_i / \partial \theta_j = \partial L_j / \partial \theta_j`;
* the noised losses' noise ``(n_samples, M, B, C)`` drawn in one call from the stack's own
  generator, seeded per epoch from the members' seeds: a noised member's noise therefore
  differs from its single run's (the same distribution; its results agree in distribution, not
  draw for draw);
* one foreach SGD step (``torch._foreach_*``: momentum, Nesterov, weight decay on weights only,
  as ``torch.optim.SGD``) with per-member lr and weight decay as ``(M,)`` tensors; each
  member's lr comes from its own ``torch.optim.lr_scheduler``, stepped through the epoch at its
  start into an ``(steps, M)`` table;
* no host synchronisation per step: the losses are summed on the device, and the divergence
  rule of :class:`~avgk_lib.engine.DivergenceGuard` runs on the stacked losses every
  :attr:`Stack.CHECK_EVERY` steps and at the end of each epoch (one flag read on the host); a
  member whose loss explodes stops (its lr becomes 0; no results, as in ``train``), the
  others go on.

Initialisation and data come from each member's own seed (:func:`avgk_lib.build.build_run`
builds each member), so with a noise-free loss a member follows its single run up to float
rounding of the batched arithmetic.

After each epoch the stacked weights and momentum buffers are written back into each member's
model and optimizer; the members are validated at once (one stacked forward per validation batch,
then :func:`~avgk_lib.metrics.stacked_metric_dicts`: thresholds, counts and comparisons over the
whole stack, each value the one ``metric_dict`` gives the member), and the single-run code
selects, checkpoints and reports every member; at the end each member's test scores come from its
own model and their metrics are again computed at once (:func:`final_evaluations`). A member's
run folder therefore cannot be told from a folder written by ``train``; it resumes
with ``train`` or ``train_many`` (the stack's noise is seeded per epoch, so a resumed stack
draws the noise of the uninterrupted one).

Members are stacked only when :func:`stack_key` says they can share a stack: they agree on every
configuration field except the short declared list :data:`MEMBER_FIELDS` (seed and data draw, lr,
weight decay, the loss knobs taken as per-member tensors, evaluation and selection settings), so
a field added later keeps runs apart until it is declared safe; and each can be stacked at all
(:func:`stackable`: SGD, no loss parameters, one process, no AMP or compile, in-memory data,
:func:`stacking_pays`). The rest train one by one. The stacked forward is built from the first
member's model, so :class:`Stack` also refuses members whose models differ in any plain option.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ._checks import value_checks
from .build import Run
from .data.base import derived_seed
from .data.loader import InMemoryLoader, crop_at
from .engine import DivergenceGuard, TrainingDiverged
from .metrics import stacked_calibrated_test_metrics, stacked_metric_dicts
from .models import MLP, Classifier, NormedLinear
from .runspec import RunSpec
from .seeding import set_rng_state


def stacking_pays(model: nn.Module, device: torch.device) -> bool:
    """Whether a stack of ``model`` s trains faster than the same runs one by one. Not for a
    convolutional model on a CPU: ``vmap`` turns its convolutions into grouped ones and its batch
    norms into per-member copies; measured on 2 cores (one thread, the cpu preset's small CNN on
    Fashion-MNIST, 8 members, 2 epochs, ``benchmarks/bench_train_many.py``), the stack took
    1.4x the time of the sequential runs, and one stacked step 2.3x the time of 8 single steps."""
    convolutional = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    return not (convolutional and torch.device(device).type == "cpu")


#: The :class:`~avgk_lib.config.TrainConfig` fields a member of a stack may hold on its own, and
#: why each cannot reach another member. Every other field must be equal within a stack
#: (:func:`shared_config`), so a field added later keeps its runs apart until it is listed here.
MEMBER_FIELDS: dict[str, str] = {
    "seed": "the member's initialisation, batch order, augmentation and loss noise",
    "lr": "one element of the stack's per-member learning-rate tensor",
    "weight_decay": "one element of the stack's per-member weight-decay tensor",
    "loss_weight": "one element of the per-member factor on the stacked loss",
    "loss_options": "only the knobs of MEMBER_LOSS_OPTIONS, taken by the stacked loss as per-member tensors",
    "dataset_options": "only the data-draw seeds of MEMBER_DATASET_OPTIONS (same shapes, the member's own data)",
    "eval_ks": "metrics computed per member after the stacked forward",
    "select_metric": "the best epoch, selected per member",
    "eval_head": "the head whose metrics a member reports (read after the stacked forward)",
    "save_scores": "whether the member's folder keeps scores.pt",
}
#: Loss options a member may hold on its own: those the stacked loss takes as ``(M,)`` tensors.
MEMBER_LOSS_OPTIONS: dict[str, tuple[str, ...]] = {
    "noised_topk": ("epsilon",),
    "imbalanced_noised_topk": ("epsilon", "max_margin", "scale"),
    "smooth_topk_svm": ("tau", "alpha"),
    "focal": ("gamma",),
    "ldam": ("max_margin", "scale"),
    "an_ls": ("label_smoothing",),
    "two_head": ("weight",),
}
#: Dataset options that only choose which samples a member draws (never a shape or a distribution).
MEMBER_DATASET_OPTIONS = frozenset({"sample_seed", "split_seed", "noise_seed"})


def _frozen(value: Any) -> str:
    """A hashable, order-independent form of a config value (lists, dicts, numbers, strings)."""
    return json.dumps(value, sort_keys=True, default=str)


def shared_config(spec: RunSpec) -> tuple[tuple[str, str], ...]:
    """The part of a run's configuration every member of its stack must share: every
    :class:`~avgk_lib.config.TrainConfig` field except :data:`MEMBER_FIELDS`; of ``loss_options``
    (merged with the loss's defaults) and ``dataset_options``, every key but the per-member ones."""
    cfg = spec.config
    out = []
    for f in dataclasses.fields(cfg):
        if f.name not in MEMBER_FIELDS:
            out.append((f.name, _frozen(getattr(cfg, f.name))))
    member_loss = MEMBER_LOSS_OPTIONS.get(spec.objective.name, ())
    loss = {k: v for k, v in spec.loss_options.items() if k not in member_loss}
    data = {k: v for k, v in cfg.dataset_options.items() if k not in MEMBER_DATASET_OPTIONS}
    out += [("loss_options*", _frozen(loss)), ("dataset_options*", _frozen(data))]
    return tuple(out)


def stackable(run: Run) -> bool:
    """Whether ``run`` can train in a stack at all: SGD, one process, no AMP or compile,
    in-memory data, no loss parameters, a loss whose state is not one model's own (``stackable``,
    e.g. False for the two-head loss's per-epoch threshold, pooled from one model's probabilities),
    and :func:`stacking_pays`."""
    cfg = run.cfg
    return (
        stacking_pays(run.model, run.device)
        and cfg.optimizer == "sgd"
        and run.world == 1
        and run.amp_mode == "off"
        and not cfg.compile
        and isinstance(run.train_loader, InMemoryLoader)
        and not any(p.requires_grad for p in run.loss_fn.parameters())
        and getattr(run.loss_fn, "stackable", True)
    )


def stack_key(run: Run) -> tuple | None:
    """What members of one stack must share (:func:`shared_config`, plus the facts the built run
    derives from it: device, parameter shapes, input shape, steps per epoch), or ``None`` when
    ``run`` cannot (or would not gain from being) stacked (:func:`stackable`)."""
    if not stackable(run):
        return None
    shapes = tuple((name, tuple(p.shape)) for name, p in run.model.named_parameters())
    derived = (str(run.device), shapes, tuple(run.bundle.input_shape), run.steps_per_epoch)
    return shared_config(run.spec), derived


def _forward_options(model: nn.Module) -> list[dict[str, Any]]:
    """Every submodule's plain attributes (flags such as ``detach_multilabel``, sizes), the
    options a forward may read besides the parameters and buffers."""
    plain = (bool, int, float, str, tuple, type(None))

    def keep(name: str, value: Any) -> bool:
        return not name.startswith("_") and name != "training" and isinstance(value, plain)

    return [{k: v for k, v in vars(m).items() if keep(k, v)} for m in model.modules()]


def _step_schedule(run: Run) -> None:
    """Step a member's scheduler; its optimizer only carries the lr (the stack updates the
    weights), so torch's "scheduler stepped before the optimizer" warning does not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
        run.scheduler.step()


@dataclass
class Member:
    """One run of a stack: its built :class:`~avgk_lib.build.Run`, its generator states, its
    divergence guard and, once it diverged, the error."""

    run: Run
    rng: dict[str, Any]
    guard: DivergenceGuard
    error: TrainingDiverged | None = None
    loss_sum: float = 0.0
    seen: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.error is None


# ------------------------------------------------------------------------------------------------
# the members' training data as one tensor
# ------------------------------------------------------------------------------------------------


class StackedBatches:
    r"""Every member's training batches, gathered with one indexing operation per step.

    The distinct training sets of the members (members drawn with the same data seed share one)
    are stacked into ``x`` of shape ``(U N, ...)``; member :math:`m` reads set :math:`u_m`. Each
    epoch, member :math:`m`'s loader gives its own permutation :math:`\pi_m` (the order its single
    run iterates), and step :math:`t` takes rows :math:`u_m N + \pi_m[tB : (t+1)B]` for every
    member at once: an ``(M, B)`` index into ``x``. Image augmentation (random crop and flip) is
    drawn per member from the generator its loader would use, in the loader's order, once per
    epoch, and applied to the ``(M B)`` images at once."""

    def __init__(self, loaders: list[InMemoryLoader], steps: int) -> None:
        self.loaders, self.steps = loaders, steps
        first = loaders[0]
        self.batch_size, self.device, self.is_image = first.batch_size, first.device, first.is_image
        slots: dict[tuple[int, int], int] = {}
        which = [slots.setdefault((lo.x.data_ptr(), lo.y.data_ptr()), len(slots)) for lo in loaders]
        sets = {slot: lo for lo, slot in zip(loaders, which, strict=True)}
        self.n = first.y.shape[0]
        self.x = torch.cat([sets[u].x for u in range(len(sets))]) if len(sets) > 1 else first.x
        self.y = torch.cat([sets[u].y for u in range(len(sets))]) if len(sets) > 1 else first.y
        self.offset = (torch.tensor(which) * self.n).unsqueeze(1)
        self.augment = first.crop or first.flip
        if self.is_image and first.mean is not None:
            self.mean = torch.stack([lo.mean for lo in loaders])  # (M, 1, C, 1, 1): each loader's is (1, C, 1, 1)
            self.std = torch.stack([lo.std for lo in loaders])
        else:
            self.mean = self.std = None
        self.rows = self.order = torch.empty(0)
        self.draws: dict[str, torch.Tensor] = {}

    def set_epoch(self, epoch: int) -> None:
        """Each member's permutation of this epoch (and its augmentation draws)."""
        for lo in self.loaders:
            lo.set_epoch(epoch)
        used = self.steps * self.batch_size
        order = torch.stack([lo._order()[:used] for lo in self.loaders])
        self.order = order.to(self.device)
        self.rows = (order + self.offset).to(self.device)
        if self.is_image and self.augment:
            self.draws = self._augmentation_draws(epoch)

    def _augmentation_draws(self, epoch: int) -> dict[str, torch.Tensor]:
        """Per member, step and image: the crop offsets and flips its loader draws, in its order
        (:func:`~avgk_lib.data.loader.random_crop_flip`: ``dy``, ``dx``, then the flip)."""
        first, b = self.loaders[0], self.batch_size
        crop = first.crop and first.padding > 0
        out: dict[str, list[torch.Tensor]] = {"dy": [], "dx": [], "flip": []}
        for lo in self.loaders:
            g = torch.Generator().manual_seed(derived_seed(lo.seed * 100_003 + epoch + 7_919))
            per: dict[str, list[torch.Tensor]] = {"dy": [], "dx": [], "flip": []}
            for _ in range(self.steps):
                if crop:
                    per["dy"].append(torch.randint(0, 2 * first.padding + 1, (b,), generator=g))
                    per["dx"].append(torch.randint(0, 2 * first.padding + 1, (b,), generator=g))
                if first.flip:
                    per["flip"].append(torch.rand(b, generator=g) < 0.5)
            for name, parts in per.items():
                if parts:
                    out[name].append(torch.stack(parts))  # (steps, B)
        return {name: torch.stack(parts, 1).to(self.device) for name, parts in out.items() if parts}  # (steps, M, B)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step ``step``'s ``(inputs (M, B, ...), targets (M, B), sample indices (M, B))``."""
        cut = slice(step * self.batch_size, (step + 1) * self.batch_size)
        rows = self.rows[:, cut]
        flat = rows.reshape(-1)  # index_select of the flat rows: the gather x[rows], a few times faster
        x = self.x.index_select(0, flat).view(*rows.shape, *self.x.shape[1:])
        if self.is_image:
            x = self._images(x, step)
        return x, self.y.index_select(0, flat).view(rows.shape), self.order[:, cut]

    def _images(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """Augment (the epoch's draws), scale to [0, 1] and normalise an ``(M, B, C, H, W)`` batch."""
        if self.draws:
            m, b = x.shape[:2]
            flat = x.flatten(0, 1)
            if "dy" in self.draws:
                flat = crop_at(
                    flat, self.loaders[0].padding, self.draws["dy"][step].flatten(), self.draws["dx"][step].flatten()
                )
            if "flip" in self.draws:
                flat = torch.where(self.draws["flip"][step].flatten()[:, None, None, None], flat.flip(3), flat)
            x = flat.view(m, b, *flat.shape[1:])
        x = x.float().div_(255.0)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x


# ------------------------------------------------------------------------------------------------
# one loss over the stack
# ------------------------------------------------------------------------------------------------

NOISED_LOSSES = ("noised_topk", "imbalanced_noised_topk")


def stacked_loss_module(runs: list[Run]) -> nn.Module:
    """The members' loss as one module over ``(M, B, C)`` outputs, returning ``(M,)`` losses:
    built as each member's (:meth:`ObjectiveSpec.build <avgk_lib.objectives.ObjectiveSpec>`),
    with the per-member knobs (:data:`MEMBER_LOSS_OPTIONS`) as ``(M,)`` float64 tensors and,
    when the members' training sets differ in their class counts, ``(M, C)`` class counts."""
    from .build import run_facts

    first = runs[0]
    spec = first.spec.objective
    device = first.device
    options = {**first.spec.loss_options, **run_facts(first.spec, first.bundle), "loss": spec.name}
    for name in MEMBER_LOSS_OPTIONS.get(spec.name, ()):
        values = [float(r.spec.loss_options[name]) for r in runs]
        if len(set(values)) > 1:
            options[name] = torch.tensor(values, dtype=torch.float64, device=device)
    counts = [run_facts(r.spec, r.bundle)["class_counts"] for r in runs]
    uses_counts = spec.function is not None and "class_counts" in inspect.signature(spec.function).parameters
    if uses_counts and any(c != counts[0] for c in counts[1:]):
        return PerMemberCounts(spec.function, torch.tensor(counts, dtype=torch.float64, device=device), options)
    return spec.build(options).to(device)


class PerMemberCounts(nn.Module):
    """A class-count loss (LDAM, imbalanced noised top-K) whose members trained on different
    draws: the functional form with the ``(M, C)`` table of the members' class counts (each
    member's margins from its own counts) and the stack's options."""

    def __init__(self, function: Any, class_counts: torch.Tensor, options: dict[str, Any]) -> None:
        super().__init__()
        self.function = function
        self.register_buffer("class_counts", class_counts)
        names = inspect.signature(function).parameters
        self.kwargs = {n: options[n] for n in names if n in options and n not in ("class_counts", "loss")}
        if "k" in self.kwargs:
            self.kwargs["k"] = int(self.kwargs["k"])

    def forward(self, scores: torch.Tensor, targets: torch.Tensor, **extra: Any) -> torch.Tensor:
        return self.function(scores, targets, class_counts=self.class_counts, **self.kwargs, **extra)


# ------------------------------------------------------------------------------------------------
# the stacked forward of plain models
# ------------------------------------------------------------------------------------------------

#: module types :func:`direct_forward` computes on stacked parameters
DIRECT_MODULES = (Classifier, MLP, nn.Sequential, nn.Linear, nn.ReLU, NormedLinear)


class _StackedLinear(torch.autograd.Function):
    r"""A linear layer of every member, :math:`y_m = x_m W_m^\top + b_m` (one ``baddbmm``), whose
    backward gives the weights' gradient in their own layout, :math:`g_m^\top x_m` ``(M, out,
    in)``: autograd's ``baddbmm`` backward gives the transpose of :math:`x_m^\top g_m`, which the
    gradient accumulation then copies into the parameter's layout, every step."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = torch.bmm(grad, weight) if need_x else None
        grad_w = torch.bmm(grad.transpose(1, 2), x) if need_w else None
        grad_b = grad.sum(1) if need_b else None
        return grad_x, grad_w, grad_b


def direct_forward(module: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, prefix: str = "") -> Any:
    r"""``module``'s forward for every member at once, on stacked parameters ``params`` (name ->
    ``(M, ...)``) and inputs ``x`` of shape ``(M, B, ...)``: a linear layer is
    :math:`h W_m^\top + b_m` as one ``baddbmm`` over the members, the cosine head normalises
    rows of :math:`h` and :math:`W_m`; the rest mirrors :mod:`avgk_lib.models` (only the types
    of :data:`DIRECT_MODULES`)."""
    if isinstance(module, Classifier):
        features = direct_forward(module.backbone, params, x, f"{prefix}backbone.")
        logits = direct_forward(module.head, params, features, f"{prefix}head.")
        if module.multilabel_head is None:
            return logits
        ml_features = features.detach() if module.detach_multilabel else features
        return logits, direct_forward(module.multilabel_head, params, ml_features, f"{prefix}multilabel_head.")
    if isinstance(module, MLP):
        return direct_forward(module.net, params, x.flatten(2), f"{prefix}net.")
    if isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            x = direct_forward(child, params, x, f"{prefix}{name}.")
        return x
    if isinstance(module, nn.Linear):
        weight, bias = params[f"{prefix}weight"], params.get(f"{prefix}bias")
        if bias is None:
            return torch.bmm(x, weight.transpose(1, 2))
        if torch.is_grad_enabled() and (weight.requires_grad or bias.requires_grad or x.requires_grad):
            return _StackedLinear.apply(x, weight, bias)
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
    if isinstance(module, nn.ReLU):
        return torch.relu(x)
    if isinstance(module, NormedLinear):
        weight = torch.nn.functional.normalize(params[f"{prefix}weight"], dim=2)
        return torch.bmm(torch.nn.functional.normalize(x, dim=2), weight.transpose(1, 2))
    raise TypeError(f"direct_forward does not handle {type(module).__name__}")


# ------------------------------------------------------------------------------------------------
# the stack
# ------------------------------------------------------------------------------------------------


class Stack:
    """M member runs as one stacked model (see the module docstring)."""

    #: steps between two divergence checks (each reads one flag on the host)
    CHECK_EVERY = 16

    def __init__(self, members: list[Member]) -> None:
        if not members:
            raise ValueError("`members` must not be empty")
        self.members = members
        models = [m.run.model for m in members]
        options = _forward_options(models[0])
        if any(_forward_options(model) != options for model in models[1:]):
            raise ValueError("the members' models differ in an option their forward reads (e.g. detach_multilabel)")
        self.base = copy.deepcopy(models[0]).to("meta")
        self.direct = all(type(m) in DIRECT_MODULES for m in self.base.modules())
        params, buffers = stack_module_state(models)
        self.params: dict[str, torch.Tensor] = params
        self.buffers: dict[str, torch.Tensor] = buffers
        first = members[0].run
        self.first = first
        self.decay = {name: not (p.ndim <= 1 or name.endswith(".bias")) for name, p in first.model.named_parameters()}
        group = first.optimizer.param_groups[0]
        self.nesterov = bool(group.get("nesterov", False))
        self.uses_momentum = first.cfg.momentum != 0
        like = next(iter(self.params.values()))
        self.weight_decay = torch.tensor(
            [m.run.cfg.weight_decay for m in members], dtype=like.dtype, device=like.device
        )
        self.any_decay = any(m.run.cfg.weight_decay for m in members)
        self.loss_weight = torch.tensor([m.run.cfg.loss_weight for m in members], dtype=like.dtype, device=like.device)
        self.buf: dict[str, torch.Tensor] = {}
        self._load_momentum()
        self.data = StackedBatches([m.run.train_loader for m in members], first.steps_per_epoch)
        self.loss_fn = stacked_loss_module([m.run for m in members])
        self.noise = torch.Generator(device=first.device)
        self.noise_seed = _stack_seed([m.run.cfg.seed for m in members])
        self._alive = torch.ones(len(members), dtype=like.dtype, device=like.device)

    # -- forward ----------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> Any:
        """Outputs of every member on its own batch: ``x`` is (M, B, ...). Models built only of
        linear layers and ReLUs (:func:`direct_forward`) run as batched matrix products; any
        other model as ``vmap`` of ``functional_call``."""
        if self.direct:
            return direct_forward(self.base, self.params, x)

        def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], xi: torch.Tensor) -> Any:
            return functional_call(self.base, (p, b), (xi,))

        return vmap(one)(self.params, self.buffers, x)

    # -- the optimizer ----------------------------------------------------------------------------

    @staticmethod
    def _over(values: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """An ``(M,)`` tensor viewed to broadcast over a stacked parameter ``(M, ...)``."""
        return values.view(-1, *([1] * (p.dim() - 1)))

    @torch.no_grad()
    def sgd_step(self, lr: torch.Tensor, momentum: float) -> None:
        r"""One ``torch.optim.SGD`` step of every member, as foreach operations over the stacked
        tensors: with per-member :math:`\eta_m` (``lr``, 0 for a stopped member) and
        :math:`\lambda_m` (weight decay, on weights only),

        .. math:: d = g + \lambda_m \theta,\quad b \leftarrow \mu b + d,\quad
                  d \leftarrow d + \mu b \text{ (Nesterov) or } b,\quad \theta \leftarrow \theta - \eta_m d

        (:math:`b = d` at the first step, as a zero buffer gives)."""
        names = [n for n, p in self.params.items() if p.grad is not None]
        params = [self.params[n] for n in names]
        grads = [p.grad for p in params]
        decayed = [i for i, n in enumerate(names) if self.decay[n]]
        if decayed and self.any_decay:
            torch._foreach_addcmul_(
                [grads[i] for i in decayed],
                [params[i] for i in decayed],
                [self._over(self.weight_decay, params[i]) for i in decayed],
            )
        step = grads
        if self.uses_momentum:
            bufs = [self.buf.setdefault(n, torch.zeros_like(p)) for n, p in zip(names, params, strict=True)]
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, grads)
            if self.nesterov:
                torch._foreach_add_(grads, bufs, alpha=momentum)
            else:
                step = bufs
        torch._foreach_addcmul_(params, step, [self._over(lr, p) for p in params], value=-1.0)
        for p in params:
            p.grad = None

    def _load_momentum(self) -> None:
        """Momentum buffers from the members' optimizers (a resumed run), when every member has them."""
        for name in self.params:
            parts = []
            for m in self.members:
                state = m.run.optimizer.state.get(dict(m.run.model.named_parameters())[name], {})
                parts.append(state.get("momentum_buffer"))
            if all(part is not None for part in parts):
                self.buf[name] = torch.stack(parts).to(self.params[name])

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the stacked weights, buffers and momentum into each member's model and optimizer."""
        for i, m in enumerate(self.members):
            for name, p in m.run.model.named_parameters():
                p.copy_(self.params[name][i])
                if name in self.buf:
                    m.run.optimizer.state[p]["momentum_buffer"] = self.buf[name][i].clone()
            for name, b in m.run.model.named_buffers():
                b.copy_(self.buffers[name][i])

    # -- schedules --------------------------------------------------------------------------------

    def _epoch_schedule(self) -> tuple[torch.Tensor, list[float]]:
        """This epoch's learning rates, ``(steps, M)`` on the device, and momenta (one per step,
        shared by the members): each member's own scheduler, stepped through the epoch now
        (per batch), or its current lr for the whole epoch (per epoch, or none)."""
        steps = self.first.steps_per_epoch
        lrs, momenta = [], []
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            for m in self.members:
                group = m.run.optimizer.param_groups[0]
                if m.run.schedule_unit != "batch":
                    lrs.append([group["lr"]] * steps)
                    momenta.append([group.get("momentum", 0.0)] * steps)
                    continue
                mine, mom = [], []
                for _ in range(steps):
                    mine.append(group["lr"])
                    mom.append(group.get("momentum", 0.0))
                    m.run.scheduler.step()
                lrs.append(mine)
                momenta.append(mom)
        return torch.tensor(lrs, dtype=self._alive.dtype).T.contiguous().to(self._alive.device), momenta[0]

    # -- one epoch --------------------------------------------------------------------------------

    def train_epoch(self, epoch: int, show_progress: bool) -> None:
        """One pass over every member's training data (``steps_per_epoch`` stacked steps): one
        batch gather, forward, loss call, backward and foreach SGD step per step, no host read
        but the divergence flag every :attr:`CHECK_EVERY` steps."""
        from .engine import progress_bar

        first = self.first
        self.data.set_epoch(epoch)
        if hasattr(self.loss_fn, "set_epoch"):
            self.loss_fn.set_epoch(epoch)
        for m in self.members:
            if hasattr(m.run.loss_fn, "set_epoch"):
                m.run.loss_fn.set_epoch(epoch)
        self.noise.manual_seed(derived_seed(self.noise_seed * 100_003 + epoch))
        lrs, momenta = self._epoch_schedule()
        self._start_guard()
        loss_sum = torch.zeros(len(self.members), dtype=torch.float64, device=self._alive.device)
        self.base.train()
        desc = f"epoch {epoch + 1}/{first.cfg.epochs} ({len(self.members)} models)"
        steps = first.steps_per_epoch
        for step in progress_bar(range(steps), steps, desc, show_progress):
            x, y, indices = self.data.batch(step)
            losses = self._losses(self.forward(x), y)
            self._window.append(losses.detach())
            loss_sum += losses.detach().double() * y.shape[1]
            torch.where(self._alive > 0, losses, 0.0).sum().backward()
            self.sgd_step(lrs[step] * self._alive, momenta[step])
            if len(self._window) >= self.CHECK_EVERY:
                self._check_window(epoch, step + 1)
        self._check_window(epoch, steps)
        for m, total in zip(self.members, loss_sum.tolist(), strict=True):
            m.loss_sum, m.seen = total, steps * self.data.batch_size
            if m.run.schedule_unit == "epoch":
                _step_schedule(m.run)

    def _losses(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        """Every member's training loss ``(M,)`` from one call of the stacked loss (its value
        checks off: a member whose outputs went non-finite is found by the divergence check,
        not by an error that would stop its partners); the noised losses' noise
        ``(n_samples, M, B, C)`` drawn in one call from the stack's generator."""
        spec = self.first.spec.objective
        with value_checks(False):
            if spec.two_head:
                losses = self.loss_fn(outputs[0], outputs[1], targets)
            elif spec.name in NOISED_LOSSES:
                n_samples = int(self.first.spec.loss_options["n_samples"])
                shape = (n_samples, *outputs.shape)
                noise = torch.randn(shape, generator=self.noise, dtype=torch.float32, device=outputs.device)
                losses = self.loss_fn(outputs, targets, noise=noise)
            else:
                losses = self.loss_fn(outputs, targets)
        return losses * self.loss_weight

    # -- divergence -------------------------------------------------------------------------------

    def _start_guard(self) -> None:
        """Each member's reference loss (its guard's: the first epoch's mean loss; NaN until the
        first step of a first epoch gives it) and an empty window of step losses."""
        refs = [math.nan if m.guard.reference is None else m.guard.reference for m in self.members]
        self._reference = torch.tensor(refs, dtype=torch.float32, device=self._alive.device)
        self._window: list[torch.Tensor] = []
        self._window_start = 0

    def _check_window(self, epoch: int, next_step: int) -> None:
        r""":class:`~avgk_lib.engine.DivergenceGuard`'s rule on the steps since the last check,
        for every member at once: a loss is bad when non-finite or larger than
        :math:`10^4 \max(|r_m|, 1)` (:math:`r_m`: the member's reference). One flag is read on the
        host; a member with a bad step stops (its lr becomes 0) with the guard's message."""
        if not self._window:
            return
        values = torch.stack(self._window).float()  # (W, M)
        first_steps = self._window_start
        self._window, self._window_start = [], next_step
        unknown = torch.isnan(self._reference)
        if bool(unknown.any()):
            start = torch.where(torch.isfinite(values[0]), values[0], torch.ones_like(values[0]))
            self._reference = torch.where(unknown, start, self._reference)
        limit = DivergenceGuard.FACTOR * self._reference.abs().clamp_min(1.0)
        bad = (~torch.isfinite(values) | (values.abs() > limit)) & (self._alive > 0)
        if not bool(bad.any()):
            return
        for i in bad.any(0).nonzero().flatten().tolist():
            row = int(bad[:, i].nonzero()[0])
            reference = float(self._reference[i])
            self.members[i].error = DivergenceGuard.diverged(float(values[row, i]), reference, epoch, first_steps + row)
            self._alive[i] = 0.0

    # -- evaluation -------------------------------------------------------------------------------

    def _head_scores(self, outputs: Any) -> dict[str, torch.Tensor]:
        """Every head's scores ``(M, B, C)`` of stacked outputs: one
        :meth:`~avgk_lib.objectives.Objective.head_scores` call over the ``M B`` rows when the
        members score alike (the same objective and scale: each row's scores are those of its
        member's own call), else one call per member."""
        objectives = [m.run.objective for m in self.members]
        parts = outputs if isinstance(outputs, tuple) else (outputs,)
        m, b = parts[0].shape[:2]
        if all(o.scale == objectives[0].scale and o.spec == objectives[0].spec for o in objectives[1:]):
            flat = tuple(p.flatten(0, 1) for p in parts)
            scores = objectives[0].head_scores(flat if isinstance(outputs, tuple) else flat[0])
            return {head: s.view(m, b, *s.shape[1:]) for head, s in scores.items()}
        per = [
            o.head_scores(tuple(p[i] for p in parts) if isinstance(outputs, tuple) else parts[0][i])
            for i, o in enumerate(objectives)
        ]
        return {head: torch.stack([d[head] for d in per]) for head in per[0]}

    @torch.no_grad()
    def validation_scores(self) -> torch.Tensor | None:
        """Every member's validation scores of its evaluated head, ``(M, n, C)``, from one stacked
        forward pass per batch (the batches of the members' validation loaders), or ``None`` when
        the members' validation splits differ in size or are not held in memory."""
        loaders = [m.run.val_loader for m in self.members]
        if not all(isinstance(loader, InMemoryLoader) for loader in loaders):
            return None
        if len({(len(loader.y), loader.batch_size) for loader in loaders}) != 1:
            return None
        heads = [m.run.spec.eval_head for m in self.members]
        parts: dict[str, list[torch.Tensor]] = {head: [] for head in dict.fromkeys(heads)}
        self.base.eval()
        try:
            for batches in zip(*loaders, strict=True):
                scores = self._head_scores(self.forward(torch.stack([b[0] for b in batches])))
                for head, kept in parts.items():
                    kept.append(scores[head])
        finally:
            self.base.train()
        joined = {head: torch.cat(kept, dim=1) for head, kept in parts.items()}
        if len(joined) == 1:
            return joined[heads[0]]
        return torch.stack([joined[head][i] for i, head in enumerate(heads)])

    @torch.no_grad()
    def validation_metrics(self) -> list[dict[str, float] | None] | None:
        """Every member's validation metrics (the values :func:`~avgk_lib.engine.validation_metrics`
        computes from these scores; ``None`` for a stopped member) from one stacked forward pass
        per batch and one :func:`~avgk_lib.metrics.stacked_metric_dicts` over the members (their
        thresholds, counts and comparisons at once), or ``None`` when the members' validation
        splits differ in size (then each member is validated on its own)."""
        scores = self.validation_scores()
        if scores is None:
            return None
        out: list[dict[str, float] | None] = [None] * len(self.members)
        targets = [m.run.val_loader.y for m in self.members]
        groups: dict[tuple[float, ...], list[int]] = {}
        for i, m in enumerate(self.members):
            if m.alive:
                groups.setdefault(tuple(m.run.cfg.eval_ks), []).append(i)
        for ks, indices in groups.items():
            for chunk in _chunks(indices, scores[0].numel()):
                if chunk == list(range(len(self.members))):
                    chosen = scores
                else:
                    chosen = scores.index_select(0, torch.tensor(chunk, device=scores.device))
                metrics, _ = stacked_metric_dicts(chosen, torch.stack([targets[i] for i in chunk]), list(ks))
                for i, d in zip(chunk, metrics, strict=True):
                    out[i] = d
        return out

    def member_rng(self, m: Member) -> None:
        """Make the member's generator states the global ones (before its checkpoint is taken)."""
        set_rng_state(m.rng)


def final_evaluations(members: list[Member], folders: list, books: list) -> list[tuple[dict, dict] | None]:
    """Every alive member's ``(best, last)``, as :func:`~avgk_lib.engine.final_evaluations`
    gives them (``None`` for a stopped member): each member's validation and test scores come
    from its own model, as in ``train`` (the last epoch's weights, then its best epoch's, which
    stay loaded), and the test metrics of every member, evaluation and head are computed at once
    (:func:`~avgk_lib.metrics.stacked_calibrated_test_metrics`)."""
    from .engine import _load_best, split_scores

    pairs: list[tuple[dict, dict] | None] = []
    for m, folder, book in zip(members, folders, books, strict=True):
        if not m.alive:
            pairs.append(None)
            continue
        last = split_scores(m.run)
        if book.best_epoch == len(book.history) == m.run.cfg.epochs:
            pairs.append((last, last))
            continue
        _load_best(m.run, folder, book)
        pairs.append((split_scores(m.run), last))
    # one stacked metric computation per group of evaluations alike in shapes and Ks
    jobs: dict[tuple, list[tuple[dict, str, list[float]]]] = {}
    done: set[int] = set()
    for m, pair in zip(members, pairs, strict=True):
        if pair is None:
            continue
        for evaluation in pair:
            if id(evaluation) in done:
                continue
            done.add(id(evaluation))
            for head in m.run.spec.heads:
                val, test = evaluation["val"][head], evaluation["test"][head]
                key = (tuple(m.run.cfg.eval_ks), tuple(val.shape), tuple(test.shape), val.dtype, str(val.device))
                jobs.setdefault(key, []).append((evaluation, head, list(m.run.cfg.eval_ks)))
    for entries in jobs.values():
        ks = entries[0][2]
        for chunk in _chunks(list(range(len(entries))), entries[0][0]["test"][entries[0][1]].numel()):
            part = [entries[j] for j in chunk]
            metrics = stacked_calibrated_test_metrics(
                torch.stack([e["val"][h] for e, h, _ in part]),
                torch.stack([e["val_targets"] for e, _, _ in part]),
                torch.stack([e["test"][h] for e, h, _ in part]),
                torch.stack([e["test_targets"] for e, _, _ in part]),
                ks,
            )
            for (evaluation, head, _), values in zip(part, metrics, strict=True):
                evaluation["heads"][head] = values

    return pairs


def _stack_seed(seeds: list[int]) -> int:
    """The seed of a stack's loss noise: a hash of its members' seeds, in order (so a resumed
    stack draws the noise of the uninterrupted one)."""
    digest = hashlib.sha256(json.dumps(seeds).encode()).hexdigest()
    return int(digest[:15], 16)


#: entries of one member's scores times members evaluated at once (bounds the stacked metrics' memory)
_STACKED_ENTRIES = 1 << 25


def _chunks(indices: list[int], per_member: int) -> list[list[int]]:
    """``indices`` in runs of at most :data:`_STACKED_ENTRIES` // ``per_member`` members."""
    size = max(1, _STACKED_ENTRIES // max(per_member, 1))
    return [indices[j : j + size] for j in range(0, len(indices), size)]
