"""The random number generators of a process: seed them, capture their state, restore it
(what ``last.pt`` stores so that a resumed run draws the numbers it would have drawn)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """The state of Python's, numpy's global, torch's and every CUDA generator."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 (user code may use the legacy global RNG)
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's global and torch's generators (CPU, and CUDA where present).

    The CPU and CUDA states equal :func:`torch.manual_seed`'s. Unlike it, nothing is queued for a
    CUDA that is not there: on a machine without a GPU, ``torch.manual_seed`` records a stack
    trace per call for a lazy CUDA seeding (about 1 ms, and a list that grows with every run of
    a long process)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
