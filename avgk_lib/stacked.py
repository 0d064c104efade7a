r"""Many small runs trained as one stacked model (the engine of :func:`avgk_lib.train.train_many`).

On small tasks one training step of one model leaves the hardware idle: Python and dispatch
overhead dominate. A :class:`Stack` trains M member runs that share a model shape, a loss and a
schedule shape as one model: their parameters are stacked along a new leading dimension
(``torch.func.stack_module_state``), the forward pass is ``vmap`` of ``functional_call`` over
the members, each member's loss is computed on its own slice and the losses are summed, so one
backward pass gives every member its own gradient (the members share no parameter, hence
:math:`\partial \sum_i L_i / \partial \theta_j = \partial L_j / \partial \theta_j`).

Per member, exactly as in its single run (:func:`avgk_lib.build.build_run` builds each member,
so initialisation and data come from the member's own seed):

* its own data draw, batch order and augmentation (its own loaders);
* its own loss noise: the global torch generator is switched to the member's state around its
  loss, so the member draws the same noise as its single run;
* its own lr, weight decay and loss knobs; the SGD update (momentum, Nesterov, decoupled groups
  for weights vs biases and norms) is the one of ``torch.optim.SGD``, written on the stacked
  tensors with per-member ``lr`` and ``weight_decay``; each member's lr schedule is its own
  ``torch.optim.lr_scheduler`` stepping the member's (never stepped) optimizer;
* its own divergence guard: a member whose loss explodes stops (no results, as in ``train``),
  the others go on.

After each epoch the stacked weights and momentum buffers are written back into each member's
model and optimizer, and the single-run code validates, selects, checkpoints and reports every
member, so a member's run folder cannot be told from a folder written by ``train``.

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
import json
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .build import Run
from .data.loader import InMemoryLoader
from .engine import DivergenceGuard, TrainingDiverged
from .metrics import metric_dict
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
    in-memory data, no loss parameters, and :func:`stacking_pays`."""
    cfg = run.cfg
    return (
        stacking_pays(run.model, run.device)
        and cfg.optimizer == "sgd"
        and run.world == 1
        and run.amp_mode == "off"
        and not cfg.compile
        and isinstance(run.train_loader, InMemoryLoader)
        and not any(p.requires_grad for p in run.loss_fn.parameters())
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


class Stack:
    """M member runs as one stacked model (see the module docstring)."""

    def __init__(self, members: list[Member]) -> None:
        if not members:
            raise ValueError("`members` must not be empty")
        self.members = members
        models = [m.run.model for m in members]
        options = _forward_options(models[0])
        if any(_forward_options(model) != options for model in models[1:]):
            raise ValueError("the members' models differ in an option their forward reads (e.g. detach_multilabel)")
        self.base = copy.deepcopy(models[0]).to("meta")
        params, buffers = stack_module_state(models)
        self.params: dict[str, torch.Tensor] = params
        self.buffers: dict[str, torch.Tensor] = buffers
        self.decay = {
            name: not (p.ndim <= 1 or name.endswith(".bias")) for name, p in members[0].run.model.named_parameters()
        }
        self.nesterov = bool(members[0].run.optimizer.param_groups[0].get("nesterov", False))
        self.uses_momentum = any(m.run.optimizer.param_groups[0].get("momentum", 0.0) != 0 for m in members)
        self.buf: dict[str, torch.Tensor | None] = {name: None for name in self.params}
        self._load_momentum()

    # -- forward ----------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> Any:
        """Outputs of every member on its own batch: ``x`` is (M, B, ...)."""

        def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], xi: torch.Tensor) -> Any:
            return functional_call(self.base, (p, b), (xi,))

        return vmap(one)(self.params, self.buffers, x)

    # -- the optimizer ----------------------------------------------------------------------------

    def _per_member(self, values: list[float]) -> torch.Tensor:
        """``values`` (one per member) as an ``(M,)`` tensor of the stacked parameters' dtype and
        device (:func:`stack_module_state` gives every parameter the same)."""
        like = next(iter(self.params.values()))
        return torch.tensor(values, dtype=like.dtype, device=like.device)

    @staticmethod
    def _over(values: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """An ``(M,)`` tensor viewed to broadcast over a stacked parameter ``(M, ...)``."""
        return values.view(-1, *([1] * (p.dim() - 1)))

    @torch.no_grad()
    def sgd_step(self) -> None:
        """One ``torch.optim.SGD`` step of every alive member (dead members keep their weights)."""
        groups = [m.run.optimizer.param_groups[0] for m in self.members]
        lrs = self._per_member([g["lr"] if m.alive else 0.0 for g, m in zip(groups, self.members, strict=True)])
        decays = [m.run.cfg.weight_decay for m in self.members]
        decay = self._per_member(decays)
        momenta = self._per_member([g.get("momentum", 0.0) for g in groups])  # OneCycleLR cycles it per step
        for name, p in self.params.items():
            if p.grad is None:
                continue
            d = p.grad
            if self.decay[name] and any(decays):
                d = d.add(p * self._over(decay, p))
            if self.uses_momentum:
                mu = self._over(momenta, p)
                buf = self.buf[name]
                if buf is None:
                    buf = self.buf[name] = d.clone()
                else:
                    buf.mul_(mu).add_(d)
                d = d.add(buf * mu) if self.nesterov else buf
            p.sub_(d * self._over(lrs, p))
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
                if self.buf[name] is not None:
                    m.run.optimizer.state[p]["momentum_buffer"] = self.buf[name][i].clone()
            for name, b in m.run.model.named_buffers():
                b.copy_(self.buffers[name][i])

    # -- one epoch --------------------------------------------------------------------------------

    def train_epoch(self, epoch: int, show_progress: bool) -> None:
        """One pass over every member's training data (``steps_per_epoch`` stacked steps)."""
        from .engine import progress_bar

        first = self.members[0].run
        for m in self.members:
            m.run.train_loader.set_epoch(epoch)
            if hasattr(m.run.loss_fn, "set_epoch"):
                m.run.loss_fn.set_epoch(epoch)
            m.loss_sum, m.seen = 0.0, 0
        self.base.train()
        iterators = [iter(m.run.train_loader) for m in self.members]
        desc = f"epoch {epoch + 1}/{first.cfg.epochs} ({len(self.members)} models)"
        for step in progress_bar(range(first.steps_per_epoch), first.steps_per_epoch, desc, show_progress):
            batches = [next(it) for it in iterators]
            outputs = self.forward(torch.stack([b[0] for b in batches]))
            total = self._losses(outputs, batches, epoch, step)
            if total is not None:
                total.backward()
            self.sgd_step()
            for m in self.members:
                if m.run.schedule_unit == "batch":
                    _step_schedule(m.run)
        for m in self.members:
            if m.alive:
                self._check(m, lambda m=m: m.guard.check(epoch))
            if m.run.schedule_unit == "epoch":
                _step_schedule(m.run)

    def _losses(self, outputs: Any, batches: list, epoch: int, step: int) -> torch.Tensor | None:
        """Sum of the alive members' losses, each drawn with the member's own generator."""
        total = None
        # unbind, not outputs[i]: its backward stacks the M gradients once, where M index
        # backwards would each add a full (M, B, C) tensor of zeros
        if isinstance(outputs, tuple):
            split = list(zip(*(o.unbind(0) for o in outputs), strict=True))
        else:
            split = outputs.unbind(0)
        for i, (m, batch) in enumerate(zip(self.members, batches, strict=True)):
            if not m.alive:
                continue
            out = split[i]
            loss = self._member_loss(m, out, batch, epoch, step)
            if loss is None:
                continue
            total = loss if total is None else total + loss
        return total

    def _member_loss(self, m: Member, out: Any, batch: Any, epoch: int, step: int) -> torch.Tensor | None:
        torch.set_rng_state(m.rng["torch"])
        try:
            loss = m.run.objective.loss(out, batch) * m.run.cfg.loss_weight
        except ValueError:
            parts = out if isinstance(out, tuple) else (out,)
            if all(bool(torch.isfinite(p).all()) for p in parts):
                raise
            m.error = TrainingDiverged(
                f"training diverged at epoch {epoch + 1}, step {step + 1}: loss nan (the model's outputs are"
                " non-finite); try a lower --lr"
            )
            return None
        finally:
            m.rng["torch"] = torch.get_rng_state()
        if not self._check(m, lambda: m.guard.observe(loss, epoch, step)):
            return None
        m.loss_sum += float(loss.detach().double()) * batch[1].shape[0]
        m.seen += batch[1].shape[0]
        return loss

    @staticmethod
    def _check(m: Member, check) -> bool:
        try:
            check()
        except TrainingDiverged as err:
            m.error = err
            return False
        return True

    @torch.no_grad()
    def validation_metrics(self) -> list[dict[str, float]] | None:
        """Every member's validation metrics (as :func:`~avgk_lib.engine.validation_metrics`
        computes them) from one stacked forward pass per batch, or ``None`` when the members'
        validation splits differ in size (then each member is validated on its own)."""
        loaders = [m.run.val_loader for m in self.members]
        if not all(isinstance(loader, InMemoryLoader) for loader in loaders):
            return None
        if len({(len(loader.y), loader.batch_size) for loader in loaders}) != 1:
            return None
        parts: list[list[torch.Tensor]] = [[] for _ in self.members]
        self.base.eval()
        try:
            for batches in zip(*loaders, strict=True):
                outputs = self.forward(torch.stack([b[0] for b in batches]))
                for i, m in enumerate(self.members):
                    out = tuple(o[i] for o in outputs) if isinstance(outputs, tuple) else outputs[i]
                    parts[i].append(m.run.objective.head_scores(out)[m.run.spec.eval_head])
        finally:
            self.base.train()
        return [
            metric_dict(torch.cat(p), m.run.val_loader.y, m.run.cfg.eval_ks)[0]
            for p, m in zip(parts, self.members, strict=True)
        ]

    def member_rng(self, m: Member) -> None:
        """Make the member's generator states the global ones (before its checkpoint is taken)."""
        set_rng_state(m.rng)
