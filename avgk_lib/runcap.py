"""The CI cap: every training run cut to one epoch of a couple of small batches on a few samples.

Set ``AVGK_RUN_CAP=1`` and every run that goes through :meth:`avgk_lib.runspec.RunSpec.resolve`
(:func:`~avgk_lib.train.train`, :func:`~avgk_lib.train.train_many`, the book's experiments and
tuning, the CLI) trains :data:`EPOCHS` epoch of at most :data:`MAX_BATCHES` batches of at most
:data:`BATCH_SIZE` samples, on the data sizes of :data:`DATA_CAPS` (each a ceiling: a smaller
value is kept). Everything else (dataset, model, loss, optimiser, schedule) is the configuration's
own, so a preset's code path is exercised in seconds, e.g. the ``colab`` preset's ResNet-18 on
CIFAR-100 on a CPU. The numbers of a capped run mean nothing.

A capped run is a different run: the cap changes the configuration before its fingerprint is
taken, so a capped run never reuses, nor is reused as, an uncapped run of the run cache; its
``results.json`` holds the capped configuration. Unset (or ``0``), nothing changes.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import TrainConfig

RUN_CAP_ENV = "AVGK_RUN_CAP"
EPOCHS = 1
MAX_BATCHES = 2
BATCH_SIZE = 16
#: per dataset, the ceiling of each size option (a loader default above it is capped too; an
#: option the loader leaves unlimited, ``None``, takes the ceiling)
DATA_CAPS: dict[str, dict[str, int]] = {
    "synthetic": {"n_train": 512, "n_val": 256, "n_test": 256},
    "cifar100": {"train_subset": 128, "n_val": 64},
    "fashion_mnist": {"train_subset": 256, "n_val": 128, "test_subset": 128},
    "plantnet300k": {"max_per_class": 4},
}


def run_cap_active() -> bool:
    """True when ``AVGK_RUN_CAP`` is set to ``1`` (or ``true``, ``yes``, ``on``); ``ValueError``
    on any other non-empty value but ``0`` (``false``, ``no``, ``off``), so a typo is not silently
    an uncapped CI build."""
    value = os.environ.get(RUN_CAP_ENV, "").strip().lower()
    if value in {"", "0", "false", "no", "off"}:
        return False
    if value in {"1", "true", "yes", "on"}:
        return True
    raise ValueError(f"the environment variable {RUN_CAP_ENV} must be 1 or 0, got {value!r}")


def capped(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` under the cap when :func:`run_cap_active`, else ``cfg`` itself. Idempotent; only
    lowers sizes (never raises a value the configuration set lower)."""
    if not run_cap_active():
        return cfg
    from .data import LOADERS, dataset_info

    fields = {
        "epochs": min(cfg.epochs, EPOCHS) if isinstance(cfg.epochs, int) else cfg.epochs,
        "batch_size": min(cfg.batch_size, BATCH_SIZE) if isinstance(cfg.batch_size, int) else cfg.batch_size,
        "max_batches": MAX_BATCHES if cfg.max_batches is None else min(cfg.max_batches, MAX_BATCHES),
    }
    caps = DATA_CAPS.get(cfg.dataset, {})
    if caps and cfg.dataset in LOADERS and isinstance(cfg.dataset_options, dict):
        values = dataset_info(cfg.dataset).options(cfg.dataset_options)
        options = dict(cfg.dataset_options)
        for name, ceiling in caps.items():
            value = values.get(name)
            if value is None or (isinstance(value, int) and not isinstance(value, bool) and value > ceiling):
                options[name] = ceiling
        fields["dataset_options"] = options
    return dataclasses.replace(cfg, **fields)
