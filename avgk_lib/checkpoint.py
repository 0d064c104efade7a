"""Every file a run writes, written atomically and read back with its checksum verified.

* :func:`atomic_write_bytes` is the one writer: a temporary file ``.<name>.tmp-<pid>`` in the
  same folder, ``fsync``, then ``os.replace`` over the target, so a crash leaves the old file
  or the new one, never a truncated one. On failure the temporary file is removed; a full disk
  raises ``OSError(ENOSPC)`` naming the file and "no space left on device".
* :func:`save_checkpoint` / :func:`load_checkpoint`: ``torch`` files (``last.pt``, ``best.pt``,
  ``scores.pt``) that carry :data:`FORMAT_VERSION` and a SHA-256 of their content (every tensor's
  bytes, dtype and shape and every Python value, see :func:`content_digest`), both stored as
  tensors next to the payload so that the file stays a plain ``torch.load``-able dict.
  Loading checks the format, the checksum and the configuration fingerprint and raises
  :class:`CheckpointError` naming the file: a bit flip is caught, never trained on.
* :class:`TrainState`: what ``last.pt`` holds, so a killed run resumes bit-exactly.
* temporary files left by killed writers are removed by :meth:`avgk_lib.rundir.RunDir.claim`.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 2
_META = ("format_version", "sha256")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, corrupt, or written by an incompatible run."""


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (tmp file + fsync + replace); see the module docstring."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"`data` must be bytes, got {type(data).__name__}")
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, "no space left on device while writing", str(path)) from err
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a str, got {type(text).__name__}")
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """:func:`atomic_write_bytes` of ``json.dumps(obj, indent=1)``."""
    atomic_write_text(path, json.dumps(obj, indent=1))


# ----------------------------------------------------------------------------------------------
# content checksum
# ----------------------------------------------------------------------------------------------


def content_digest(obj: Any) -> bytes:
    """SHA-256 of a nested structure of dicts, lists, tuples, tensors, numpy arrays and scalars.

    Computed on the values (dtype, shape and bytes of every tensor; type and ``repr`` of every
    scalar), so it is the same before ``torch.save`` and after ``torch.load``."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.digest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        h.update(f"A{obj.dtype.str}{obj.shape}|".encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}|".encode())
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__}{len(obj)}|".encode())
        for value in obj:
            _feed(h, value)
    elif isinstance(obj, (bytes, bytearray)):
        h.update(f"B{len(obj)}|".encode())
        h.update(bytes(obj))
    elif obj is None or isinstance(obj, (bool, int, float, str, np.generic)):
        h.update(f"{type(obj).__name__}:{obj!r}|".encode())
    elif callable(obj):
        h.update(f"F{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', type(obj).__name__)}|".encode())
    else:
        h.update(f"O{type(obj).__qualname__}:{obj!r}|".encode())


# ----------------------------------------------------------------------------------------------
# torch files
# ----------------------------------------------------------------------------------------------


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` ``obj`` plus ``format_version`` and ``sha256`` (as tensors) through the
    atomic writer. Serialised in memory first, so a full disk is an ``OSError`` naming ``path``."""
    if not isinstance(obj, dict) or any(k in obj for k in _META):
        raise TypeError(f"`obj` must be a dict without the keys {_META}")
    digest = content_digest(obj)
    payload = {
        **obj,
        "format_version": torch.tensor(FORMAT_VERSION),
        "sha256": torch.tensor(list(digest), dtype=torch.uint8),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _version(state: dict[str, Any]) -> int | None:
    value = state.get("format_version")
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return int(value)
    return value if isinstance(value, int) else None


def load_checkpoint(path: str | Path, expected_fingerprint: str | None = None) -> dict[str, Any]:
    """Load a file written by :func:`save_checkpoint`; verify its format version, checksum and
    (if given) configuration fingerprint. Raises :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"checkpoint {path} is not readable (permission denied): fix its permissions")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(err).__name__}: {str(err)[:200]}); delete it to restart"
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} has an unknown format (not a dict); delete it to restart")
    version = _version(state)
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, this avgk_lib reads {FORMAT_VERSION}; "
            "delete it to restart"
        )
    stored = state.pop("sha256", None)
    state.pop("format_version")
    if not isinstance(stored, torch.Tensor) or bytes(stored.tolist()) != content_digest(state):
        raise CheckpointError(f"checkpoint {path} is corrupt (checksum mismatch); delete it to restart")
    if expected_fingerprint is not None and state.get("fingerprint") != expected_fingerprint:
        raise CheckpointError(
            f"checkpoint {path} was written by a different configuration (fingerprint {state.get('fingerprint')} "
            f"!= {expected_fingerprint}); use another --out folder or delete it"
        )
    return state


# ----------------------------------------------------------------------------------------------
# the training state of last.pt
# ----------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """Everything a run needs to continue after ``epoch`` epochs, bit-exactly on CPU."""

    epoch: int
    model: dict[str, Any]
    loss: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    scaler: dict[str, Any] | None
    rng: dict[str, Any]
    history: list[dict[str, Any]]
    best_value: float
    best_epoch: int


def save_train_state(path: str | Path, state: TrainState, fingerprint: str, config: dict[str, Any]) -> None:
    """Write ``last.pt``: the state, the run's fingerprint and its configuration."""
    save_checkpoint({**dataclasses.asdict(state), "fingerprint": fingerprint, "config": config}, path)


def load_train_state(path: str | Path, fingerprint: str) -> TrainState:
    """Read ``last.pt`` (checked by :func:`load_checkpoint`) back into a :class:`TrainState`."""
    data = load_checkpoint(path, fingerprint)
    names = [f.name for f in dataclasses.fields(TrainState)]
    missing = [n for n in names if n not in data]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; delete it to restart")
    return TrainState(**{n: data[n] for n in names})


# ----------------------------------------------------------------------------------------------
# random number generators
# ----------------------------------------------------------------------------------------------


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
    """Seed Python's, numpy's global and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)
