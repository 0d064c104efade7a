"""One training run's configuration: :class:`TrainConfig`, the single schema of the trainer.

Every field carries its help text in ``metadata["help"]``; the CLI's ``train`` flags are
generated from the fields (:func:`avgk_lib.cli.add_config_arguments`), and the loss
hyperparameters' defaults come from the loss signatures (:mod:`avgk_lib.objectives`).
:meth:`TrainConfig.validate` checks every field and returns a new, normalised config (it never
mutates); :meth:`TrainConfig.fingerprint` is the run-cache key, salted with
:data:`CACHE_FORMAT_VERSION` so that runs cached by an older format are never reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from .data import DATASETS, LOADERS, dataset_info, dataset_input_shape
from .data.base import SEED_LIMIT
from .metrics import metric_key, parse_metric_key
from .models import MODELS, check_model_input
from .objectives import OBJECTIVES, ObjectiveSpec, get_objective, unknown_loss_option

# Bump when the content of results.json or of the checkpoints changes meaning: cached runs of an
# older format then get a new fingerprint and are trained again instead of being reused.
CACHE_FORMAT_VERSION = 2

#: fields added after runs were cached: left out of the fingerprint at their default value, so that
#: every run cached before they existed keeps its fingerprint (``loss_weight == 1.0`` is the old loss)
HASHED_UNLESS_DEFAULT: dict[str, Any] = {"loss_weight": 1.0}
#: the largest float32: learning rates, loss hyperparameters and data options are used in float32
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
#: the smallest normal float32: a positive real setting below it would be a subnormal (or zero)
FLOAT32_TINY = float(torch.finfo(torch.float32).tiny)


class ConfigError(ValueError):
    """An invalid configuration value; ``field`` names the :class:`TrainConfig` field (or the
    dataset/loss option) at fault, e.g. ``"batch_size"`` (the CLI flag ``--batch-size``)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"`{field_name}` {message}")
        self.field = field_name
        self.detail = message


def _opt(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """One training run. Every field is a CLI flag of ``python -m avgk_lib train``.

    ``milestones`` are the epochs (1-based) from which the step schedule multiplies the learning
    rate by ``lr_gamma`` (P1's CIFAR recipe: ``[151, 226]``). ``select_metric="auto"`` selects
    on validation top-K micro accuracy (top-K losses) or average-K micro accuracy (average-K
    losses) at the loss's K. ``max_batches`` caps the training batches per epoch (smoke runs).
    """

    dataset: str = _opt("synthetic", "dataset: " + ", ".join(LOADERS))
    dataset_options: dict[str, Any] = _opt({}, "keyword arguments of the dataset loader")
    model: str = _opt("auto", "auto (the dataset's default) or one of: " + ", ".join(MODELS))
    loss: str = _opt("cross_entropy", "training objective (python -m avgk_lib list)")
    k: float = _opt(5.0, "K of the loss (average-K losses accept fractions, e.g. 1.5)")
    loss_options: dict[str, Any] = _opt({}, "loss hyperparameters (default: the loss's own)")
    epochs: int = _opt(10, "training epochs")
    batch_size: int = _opt(128, "training batch size (per process under torchrun)")
    optimizer: Literal["sgd", "adamw"] = _opt("sgd", "optimizer")
    lr: float = _opt(0.1, "learning rate")
    momentum: float = _opt(0.9, "SGD momentum")
    nesterov: bool = _opt(True, "Nesterov momentum (SGD)")
    weight_decay: float = _opt(1e-4, "weight decay of the weights (not of biases and norms)")
    scheduler: Literal["step", "cosine", "onecycle", "none"] = _opt("cosine", "learning-rate schedule")
    milestones: list[int] = _opt([], "epochs where the step schedule decays the lr, e.g. '151 226'")
    lr_gamma: float = _opt(0.1, "factor of each step decay")
    loss_lr_multiplier: float = _opt(1.0, "lr factor of the loss's own parameters (ROLE's table)")
    loss_weight: float = _opt(
        1.0, "a factor on the training loss: the tuned arm's weight knob of the multi-label baselines"
    )
    seed: int = _opt(0, "random seed (initialisation, batches, noise)")
    device: str = _opt("auto", "auto, cpu, cuda, cuda:1 ...")
    amp: Literal["auto", "bf16", "fp16", "off"] = _opt("auto", "mixed precision on CUDA")
    channels_last: bool | None = _opt(None, "channels_last memory format (default: on CUDA for images)")
    compile: bool = _opt(False, "torch.compile the model")
    eval_ks: list[float] = _opt([1.0, 2.0, 3.0, 5.0], "K values of the metrics, e.g. '1 2 3 5'")
    select_metric: str = _opt("auto", "validation metric of the best epoch, e.g. top5_macro, avg2_micro")
    eval_head: Literal["multilabel", "softmax", "combined"] = _opt(
        "multilabel", "two_head: the head evaluated in `test` (combined: mean of both heads' probabilities)"
    )
    head: Literal["auto", "linear", "cosine"] = _opt("auto", "classification head (auto: the loss's)")
    detach_multilabel: bool = _opt(False, "two_head: the multi-label head does not train the backbone")
    pretrained: bool = _opt(False, "ImageNet weights (resnet50; needs them cached or internet)")
    workers: int = _opt(4, "DataLoader workers (image folders)")
    max_batches: int | None = _opt(None, "cap of training batches per epoch (smoke runs)")
    save_scores: bool = _opt(True, "write scores.pt (validation and test scores of the best model)")

    def resolved_model(self) -> str:
        """The model trained: ``model``, or the dataset's :attr:`~avgk_lib.data.DatasetInfo.default_model`
        for ``"auto"``."""
        return dataset_info(self.dataset).default_model if self.model == "auto" else self.model

    @property
    def eval_batch_size(self) -> int:
        """The batch size of evaluation (validation, test, the training-fit pass): at least 256,
        since it keeps no activations for a backward pass."""
        return max(self.batch_size, 256)

    def normalized(self) -> TrainConfig:
        """A copy with ``eval_ks`` as sorted floats including ``k`` (never raises on bad values)."""
        try:
            ks = sorted({*(float(k) for k in self.eval_ks), float(self.k)})
        except (TypeError, ValueError):
            return dataclasses.replace(self)
        return dataclasses.replace(self, eval_ks=ks)

    def fingerprint(self) -> str:
        """Hash of everything that changes the result (not the device, the workers or the
        display), salted with :data:`CACHE_FORMAT_VERSION`; equal for a config and its
        :meth:`validate` d copy."""
        keep = {k: v for k, v in dataclasses.asdict(self.normalized()).items() if k not in ("device", "workers")}
        for name, default in HASHED_UNLESS_DEFAULT.items():
            if keep.get(name) == default:
                del keep[name]  # a field added later leaves the fingerprints of its default unchanged
        keep["cache_format_version"] = CACHE_FORMAT_VERSION
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def validate(self) -> TrainConfig:
        """Check every field; return a new normalised config. Raises :class:`ConfigError`."""
        cfg, objective = validated(self)
        selection_metric(cfg, objective)
        return cfg


def validated(cfg: TrainConfig) -> tuple[TrainConfig, ObjectiveSpec]:
    """The normalised copy of ``cfg`` with every field but ``select_metric`` checked (that one
    is :func:`selection_metric`'s), and the loss's spec, looked up once."""
    objective = _check_names(cfg)
    _check_numbers(cfg)
    _check_choices(cfg)
    _check_lists(cfg)
    _check_applicable(cfg, objective)
    _check_float32(cfg, objective.option_types)
    _check_model_fits(cfg)
    return cfg.normalized(), objective


def _real(cfg: TrainConfig, name: str, low: float, *, strict: bool = False, high: float | None = None) -> float:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(name, f"must be a number, got {value!r}")
    if _beyond_float32(value):
        raise _too_large(name, value)
    if not math.isfinite(value) or value < low or (strict and value == low) or (high is not None and value >= high):
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise ConfigError(name, f"must be finite and {bound}{f' and < {high:g}' if high else ''}, got {value}")
    if value != 0 and abs(value) < FLOAT32_TINY:  # a subnormal in float32, as the loss options refuse too
        raise ConfigError(name, f"= {value:g} underflows float32 (smallest normal value {FLOAT32_TINY:g})")
    return float(value)


def _int(cfg: TrainConfig, name: str, low: int, *, optional: bool = False) -> None:
    value = getattr(cfg, name)
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer, got {value!r}")
    if value < low:
        raise ConfigError(name, f"must be >= {low}, got {value}")


#: models that can start from ImageNet weights (``pretrained``)
PRETRAINED_MODELS = ("resnet50",)


def not_applicable(cfg: TrainConfig, objective: ObjectiveSpec) -> tuple[str, str] | None:
    """``(field, why)`` for the first field set away from its default that the chosen optimizer,
    scheduler, model or loss ignores (it would change nothing but the run's fingerprint), else
    ``None``. Fields at their default values always pass, so that recipes may carry them."""
    defaults = TrainConfig()
    changed = {f.name for f in dataclasses.fields(TrainConfig) if getattr(cfg, f.name) != getattr(defaults, f.name)}
    rules = [
        (("momentum", "nesterov"), cfg.optimizer != "sgd", f"applies to the sgd optimizer, not {cfg.optimizer!r}"),
        (("milestones", "lr_gamma"), cfg.scheduler != "step", f"applies to the step scheduler, not {cfg.scheduler!r}"),
        (
            ("pretrained",),
            cfg.resolved_model() not in PRETRAINED_MODELS,
            f"applies to the model(s) {', '.join(PRETRAINED_MODELS)}, not {cfg.resolved_model()!r}",
        ),
        (
            ("eval_head", "detach_multilabel"),
            not objective.two_head,
            f"applies to two-head losses (two_head), not {cfg.loss!r}",
        ),
    ]
    for names, ignored, why in rules:
        for name in names:
            if ignored and name in changed:
                return name, f"{why}: it would change nothing (got {getattr(cfg, name)!r}); leave it out"
    return None


def _check_applicable(cfg: TrainConfig, objective: ObjectiveSpec) -> None:
    found = not_applicable(cfg, objective)
    if found is not None:
        raise ConfigError(*found)


def _check_names(cfg: TrainConfig) -> ObjectiveSpec:
    if cfg.dataset not in LOADERS:
        raise ConfigError("dataset", f"is unknown: {cfg.dataset!r}; valid names: {', '.join(sorted(LOADERS))}")
    if cfg.model != "auto" and cfg.model not in MODELS:
        raise ConfigError("model", f"is unknown: {cfg.model!r}; valid names: auto, {', '.join(MODELS)}")
    if cfg.loss not in OBJECTIVES:
        raise ConfigError("loss", f"is unknown: {cfg.loss!r}; valid names: {', '.join(sorted(OBJECTIVES))}")
    for name, options in (("loss_options", cfg.loss_options), ("dataset_options", cfg.dataset_options)):
        if not isinstance(options, dict):
            raise ConfigError(name, f"must be a dict, got {type(options).__name__}")
    _check_dataset_options(cfg.dataset, cfg.dataset_options)
    k = _real(cfg, "k", 0.0, strict=True)
    spec = get_objective(cfg.loss)  # the one lookup of the loss during validation
    unknown = unknown_loss_option(cfg.loss, cfg.loss_options, spec)
    if unknown is not None:
        raise ConfigError(*unknown)
    if spec.integer_k and not k.is_integer():
        raise ConfigError("k", f"must be an integer for the top-K loss {cfg.loss!r}, got {k:g}")
    if spec.two_head and k < 1:
        raise ConfigError("k", f"must be >= 1 for the two-head loss (the true label is a positive), got {k:g}")
    return spec


def dataset_option_types(dataset: str | None = None) -> dict[str, type]:
    """Keyword options of a dataset loader (of every loader when ``dataset`` is None) and their types
    (``Literal[...]`` for options with a fixed set of values, e.g. ``augment``)."""
    loaders = LOADERS.values() if dataset is None else [LOADERS[dataset]]
    out: dict[str, type] = {}
    for loader in loaders:
        for name, hint in typing.get_type_hints(loader).items():
            if name != "return":
                args = [a for a in typing.get_args(hint) if a is not type(None)]
                out[name] = args[0] if args and typing.get_origin(hint) is not Literal else hint
    return out


def _optional_dataset_options(dataset: str) -> set[str]:
    """The options of a loader that accept ``None`` (annotated ``X | None``)."""
    hints = typing.get_type_hints(LOADERS[dataset])
    return {n for n, h in hints.items() if n != "return" and type(None) in typing.get_args(h)}


def _check_dataset_options(dataset: str, options: dict[str, Any]) -> None:
    """Known option names, the annotated types, counts >= 1 and seeds >= 0 (each error names the option)."""
    types, optional = dataset_option_types(dataset), _optional_dataset_options(dataset)
    for key, value in options.items():
        if key not in types:
            raise ConfigError(key, f"does not apply to dataset {dataset!r} (its options: {', '.join(types)})")
        kind = types[key]
        if value is None and key not in optional:
            raise ConfigError(key, f"must not be None for dataset {dataset!r}")
        if typing.get_origin(kind) is Literal and value is not None and value not in typing.get_args(kind):
            raise ConfigError(key, f"must be one of {', '.join(map(str, typing.get_args(kind)))}, got {value!r}")
        if value is None or kind in (str, Path) or typing.get_origin(kind) is Literal:
            continue
        if kind is bool and not isinstance(value, bool):
            raise ConfigError(key, f"must be True or False, got {value!r}")
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(key, f"must be an integer, got {value!r}")
        if kind is float and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
        ):
            raise ConfigError(key, f"must be a finite number, got {value!r}")
        if kind is int and value < (minimum := int(key in DATASETS[dataset].counts)):
            raise ConfigError(key, f"must be >= {minimum}, got {value}")
        if kind is int and key.endswith("seed") and value >= SEED_LIMIT:
            raise ConfigError(key, f"must be < 2**63 (an int64 seed), got {value}")


def _check_numbers(cfg: TrainConfig) -> None:
    _int(cfg, "epochs", 1)
    _int(cfg, "batch_size", 1)
    _int(cfg, "seed", 0)
    if cfg.seed >= SEED_LIMIT:
        raise ConfigError("seed", f"must be < 2**63 (an int64 seed), got {cfg.seed}")
    _int(cfg, "workers", 0)
    _int(cfg, "max_batches", 1, optional=True)
    _real(cfg, "lr", 0.0, strict=True)
    _real(cfg, "momentum", 0.0, high=1.0)
    _real(cfg, "weight_decay", 0.0)
    _real(cfg, "lr_gamma", 0.0, strict=True)
    _real(cfg, "loss_lr_multiplier", 0.0)
    _real(cfg, "loss_weight", 0.0, strict=True)


def _check_choices(cfg: TrainConfig) -> None:
    for name, hint in typing.get_type_hints(TrainConfig).items():
        choices = typing.get_args(hint) if typing.get_origin(hint) is Literal else ()
        if choices and getattr(cfg, name) not in choices:
            raise ConfigError(name, f"must be one of {', '.join(choices)}, got {getattr(cfg, name)!r}")
    for name in ("nesterov", "compile", "detach_multilabel", "pretrained", "save_scores"):
        if not isinstance(getattr(cfg, name), bool):
            raise ConfigError(name, f"must be True or False, got {getattr(cfg, name)!r}")
    if cfg.channels_last is not None and not isinstance(cfg.channels_last, bool):
        raise ConfigError("channels_last", f"must be True, False or None, got {cfg.channels_last!r}")
    if not isinstance(cfg.device, str):
        raise ConfigError("device", f"must be a string, got {cfg.device!r}")
    if cfg.device != "auto":
        parse_device(cfg.device)


def parse_device(name: str) -> torch.device:
    """``torch.device(name)``, or ``ConfigError("device")`` when ``name`` is not a device name."""
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError("device", f"is not a device name: {name!r} (auto, cpu, cuda, cuda:1 ...)") from None


def _check_lists(cfg: TrainConfig) -> None:
    if not isinstance(cfg.milestones, (list, tuple)) or not all(
        isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in cfg.milestones
    ):
        raise ConfigError("milestones", f"must be a list of epochs >= 1, got {cfg.milestones!r}")
    if not isinstance(cfg.eval_ks, (list, tuple)) or not cfg.eval_ks:
        raise ConfigError("eval_ks", f"must be a non-empty list of K values, got {cfg.eval_ks!r}")
    for k in cfg.eval_ks:
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k <= 0:
            raise ConfigError("eval_ks", f"must hold finite K values > 0, got {k!r}")


def selection_metric(cfg: TrainConfig, objective: ObjectiveSpec) -> str:
    """The metric that picks the best epoch of a :func:`validated` config: ``select_metric``
    (``ConfigError`` when it is not a computed micro or macro accuracy), or for ``auto`` the
    micro top-K accuracy of ``k`` for top-K losses, the micro average-K accuracy otherwise."""
    if cfg.select_metric != "auto":
        _check_select_metric(cfg)
        return cfg.select_metric
    return metric_key("top" if objective.integer_k else "avg", cfg.k, "micro")


def _check_select_metric(cfg: TrainConfig) -> None:
    try:
        kind, k, average = parse_metric_key(cfg.select_metric)
    except (TypeError, ValueError) as err:
        raise ConfigError("select_metric", str(err).removeprefix("`name` ")) from None
    if average not in ("micro", "macro") or k not in cfg.eval_ks:
        raise ConfigError(
            "select_metric",
            f"{cfg.select_metric!r} is not computed: it must be a micro or macro accuracy whose K is in eval_ks "
            f"({', '.join(f'{x:g}' for x in cfg.eval_ks)})",
        )


def _float_values(cfg: TrainConfig, loss_types: dict[str, type]) -> list[tuple[str, Any]]:
    """(name, value) of every real-valued setting of ``cfg``: float fields, eval_ks, and the loss and
    dataset options annotated ``float``."""
    out = [(f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.type in ("float", float)]
    out += [("eval_ks", k) for k in cfg.eval_ks]
    data_types = dataset_option_types(cfg.dataset)
    out += [(key, v) for key, v in cfg.loss_options.items() if loss_types.get(key) is float]
    out += [(key, v) for key, v in cfg.dataset_options.items() if data_types.get(key) is float]
    return [(n, v) for n, v in out if isinstance(v, (int, float)) and not isinstance(v, bool)]


def _beyond_float32(value: float) -> bool:
    """A finite number of magnitude beyond float32's largest (NaN and infinities are left to the checks
    of finiteness)."""
    try:
        return math.isfinite(float(value)) and abs(float(value)) > FLOAT32_MAX
    except OverflowError:  # an int too large for even a float64
        return True


def _too_large(name: str, value: float) -> ConfigError:
    shown = f"{value:g}" if isinstance(value, float) else (str(value) if len(str(value)) < 40 else "a huge integer")
    return ConfigError(name, f"must be at most {FLOAT32_MAX:.4g} in magnitude (float32), got {shown}")


def _check_float32(cfg: TrainConfig, loss_types: dict[str, type]) -> None:
    """Real numbers beyond float32 (the dtype they are used in) are rejected naming the option; so is
    a learning rate whose product with ``loss_lr_multiplier`` overflows."""
    for name, value in _float_values(cfg, loss_types):
        if _beyond_float32(value):
            raise _too_large(name, value)
        if value != 0 and abs(value) < FLOAT32_TINY:
            raise ConfigError(name, f"= {value:g} underflows float32 (smallest normal value {FLOAT32_TINY:g})")
    if abs(cfg.lr * cfg.loss_lr_multiplier) > FLOAT32_MAX:
        raise ConfigError("loss_lr_multiplier", f"times lr ({cfg.lr:g}) overflows float32 ({FLOAT32_MAX:.4g})")


def _check_model_fits(cfg: TrainConfig) -> None:
    """The model against the dataset's input shape, before any data is loaded (``ConfigError("model")``)."""
    try:
        shape = dataset_input_shape(cfg.dataset, cfg.dataset_options)
        check_model_input(cfg.resolved_model(), shape)
    except ValueError as err:
        detail = str(err).removeprefix("`model` ")
        raise ConfigError("model", f"{detail} (dataset {cfg.dataset!r})") from None
