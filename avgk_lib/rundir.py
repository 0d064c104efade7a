"""One run folder and everything it holds, owned by one object: :class:`RunDir`.

A run folder holds ``last.pt`` (the training state after the last finished epoch), ``best.pt``
(the best epoch's weights), ``scores.pt`` (validation and test scores of the best model),
``results.json`` (the :class:`RunResult`), ``run.json`` (the owner: the fingerprint and the
configuration of the run the folder belongs to) and ``.lock``.

Rules the class enforces:

* **one live run per folder**: :meth:`RunDir.claim` takes an exclusive OS lock (``flock``) on
  ``.lock`` for the life of the run; the OS drops it when the process dies, so a killed run never
  leaves a stale lock. A second run into a locked folder is refused at once (:class:`RunDirBusy`);
* **one configuration per folder**: a folder whose ``run.json`` (or, for folders written before
  ``run.json`` existed, whose checkpoint or results) names another fingerprint is never written,
  with or without ``resume`` (:class:`RunDirForeign`);
* **a cache that cannot lie**: ``results.json`` carries the run's fingerprint and a SHA-256 of its
  content; :meth:`RunDir.read_result` returns a result only when both match, else ``None`` with the
  reason (the caller retrains and says so);
* **temporary files of dead writers only**: the atomic writer names its temporary files
  ``.<name>.tmp-<pid>``; :meth:`RunDir.claim` removes those whose process is gone.

How the files are written and read back (every file of a run, and the reference files):

* :func:`atomic_write_bytes` is the one writer: a temporary file ``.<name>.tmp-<pid>`` in the
  same folder, ``fsync``, then ``os.replace`` over the target, so a crash leaves the old file
  or the new one, never a truncated one. On failure the temporary file is removed; a full disk
  raises ``OSError(ENOSPC)`` naming the file and "no space left on device".
* :func:`save_checkpoint` / :func:`load_checkpoint`: ``torch`` files (``last.pt``, ``best.pt``,
  ``scores.pt``) that carry :data:`FORMAT_VERSION` and a SHA-256 of their content (every tensor's
  bytes, dtype and shape and every Python value, :func:`content_digest`), both stored as tensors
  next to the payload so that the file stays a plain ``torch.load``-able dict. Loading checks the
  format, the checksum and the configuration fingerprint and raises :class:`CheckpointError`
  naming the file: a bit flip is caught, never trained on.
* JSON files carry :func:`json_digest` of their content; ``results.json`` is parsed here and
  nowhere else (:meth:`RunResult.from_json`).
* :class:`TrainState`: what ``last.pt`` holds, so a killed run resumes bit-exactly.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:  # POSIX; elsewhere runs are not locked (said in RunDir.claim's docstring)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

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
# checksums
# ----------------------------------------------------------------------------------------------


def json_digest(data: dict[str, Any]) -> str:
    """SHA-256 of a JSON object's content (keys sorted), leaving out its own ``"sha256"`` key:
    the checksum that ``results.json`` and every reference file carry."""
    body = {k: v for k, v in data.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


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


LAST, BEST, SCORES, RESULTS, OWNER, LOCK = "last.pt", "best.pt", "scores.pt", "results.json", "run.json", ".lock"
RUN_FILES = (LAST, BEST, SCORES, RESULTS)
_TMP = re.compile(r"^\..+\.tmp(?:-(\d+))?$")


class RunDirError(RuntimeError):
    """A run folder that this run may not use."""


class RunDirBusy(RunDirError):
    """Another live process holds the folder's lock."""


class RunDirForeign(RunDirError, CheckpointError):
    """The folder holds the files of a run of another configuration (also a
    :class:`CheckpointError`, as a foreign checkpoint always was)."""


# ----------------------------------------------------------------------------------------------
# the result of a run
# ----------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """What a finished run reports (``results.json``): test metrics of the best-validation epoch
    (``test``, every head's in ``test_heads`` for two-head models) and of the last epoch
    (``test_last``), the configuration, the per-epoch history, a summary (best epoch, selection
    metric, fingerprint...), provenance and degeneracy warnings."""

    config: dict[str, Any]
    history: list[dict[str, Any]]
    test: dict[str, float]
    test_last: dict[str, float]
    summary: dict[str, Any]
    provenance: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    test_heads: dict[str, dict[str, float]] | None = None
    format_version: int = FORMAT_VERSION

    @property
    def fingerprint(self) -> str | None:
        return self.summary.get("fingerprint")

    @property
    def best_epoch(self) -> int:
        return int(self.summary["best_epoch"])

    @property
    def best_val(self) -> float:
        return float(self.summary["best_val"])

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.test_heads is None:
            del out["test_heads"]
        return out

    def to_json(self) -> str:
        """JSON with a ``sha256`` of the content (checked by :meth:`from_json`)."""
        data = self.to_dict()
        data["sha256"] = json_digest(data)
        return json.dumps(data, indent=1)

    @classmethod
    def from_dict(cls, data: Any) -> RunResult:
        """A result from a dict of :meth:`to_dict`'s shape; ``ValueError`` naming what is wrong."""
        required = {"config": dict, "history": list, "test": dict, "test_last": dict, "summary": dict}
        required["provenance"] = dict
        if not isinstance(data, dict):
            raise ValueError(f"not a run result: a JSON {type(data).__name__}, not an object")
        missing = sorted(set(required) - set(data))
        if missing:
            raise ValueError(f"not a run result: missing {missing}")
        wrong = [k for k, kind in required.items() if not isinstance(data[k], kind)]
        if wrong:
            raise ValueError(f"not a run result: wrong type of {wrong}")
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"run result of format {data.get('format_version')}, this avgk_lib reads {FORMAT_VERSION}")
        for key in ("best_epoch", "best_val"):
            if key not in data["summary"]:
                raise ValueError(f"not a run result: summary lacks {key!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_json(cls, text: str, *, verify: bool = True) -> RunResult:
        """Parse :meth:`to_json`'s output; ``ValueError`` when it is not a complete, intact result
        (with ``verify``, a missing or wrong ``sha256`` is an error)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"not a run result: invalid JSON ({err})") from None
        result = cls.from_dict(data)
        if verify and data.get("sha256") != json_digest(data):
            raise ValueError("run result checksum mismatch (edited or damaged)")
        return result


def git_commit() -> str:
    """The checkout's commit, or ``"unknown"`` (an installed wheel)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return commit or "unknown"


def provenance(device: Any, world: int) -> dict[str, Any]:
    """Where and with what a run was made: commit, versions, device, world size, host."""
    import numpy
    import torch
    import torchvision

    from . import __version__

    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "git_commit": git_commit(),
        "avgk_lib": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
        "device": str(device),
        "device_name": name,
        "cpu_threads": torch.get_num_threads(),
        "world_size": world,
        "hostname": platform.node(),
    }


# ----------------------------------------------------------------------------------------------
# the folder
# ----------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


class RunDir:
    """The folder of one run (see the module docstring). Use :meth:`claim` before writing and
    :meth:`release` (or the context manager) after; reading a finished result needs no claim."""

    def __init__(self, path: str | Path) -> None:
        if isinstance(path, str) and not path.strip():
            raise ValueError("`out` must name a folder, got an empty string")
        if not isinstance(path, (str, Path)):
            raise TypeError(f"`out` must be a path, got {type(path).__name__}")
        self.path = Path(path)
        self._lock_fh: Any = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def last(self) -> Path:
        return self.path / LAST

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def results(self) -> Path:
        return self.path / RESULTS

    @property
    def scores(self) -> Path:
        return self.path / SCORES

    # -- ownership ------------------------------------------------------------------------------

    def claim(self, fingerprint: str, config: dict[str, Any], *, resume: bool) -> None:
        """Make the folder this run's: a writable folder, the exclusive lock, the owner check,
        no checkpoint unless resuming, temporary files of dead writers removed.

        Raises ``ConfigError("out")`` (not a writable folder), :class:`RunDirBusy`,
        :class:`RunDirForeign` or :class:`CheckpointError` (a checkpoint exists and ``resume``
        is false). Without ``fcntl`` (Windows) the folder is not locked."""
        from .config import ConfigError

        if self.path.exists() and not self.path.is_dir():
            raise ConfigError("out", f"{self.path} exists and is not a folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock_fh = open(self.path / LOCK, "a+")  # noqa: SIM115 (held for the run's life)
        except OSError as err:
            raise ConfigError("out", f"{self.path} is not a writable folder ({err.strerror or err})") from None
        self._lock()
        try:
            self._check_entries()
            self._check_owner(fingerprint)
            if self.last.exists() and not resume:
                raise CheckpointError(
                    f"{self.last} exists: pass resume=True (--resume) to continue it, or use another folder"
                )
            self.remove_dead_tmp()
            atomic_write_json(self.path / OWNER, {"fingerprint": fingerprint, "pid": os.getpid(), "config": config})
        except BaseException:
            self.release()
            raise

    def _lock(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        try:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = self.owner() or {}
            self._lock_fh.close()
            self._lock_fh = None
            pid = f" (pid {owner['pid']})" if "pid" in owner else ""
            raise RunDirBusy(
                f"{self.path} is in use by another running training process{pid}; wait for it or use another folder"
            ) from None
        self._lock_fh.seek(0)
        self._lock_fh.truncate()
        self._lock_fh.write(str(os.getpid()))
        self._lock_fh.flush()

    def release(self) -> None:
        """Drop the lock (also dropped by the OS when the process ends)."""
        if self._lock_fh is not None:
            if fcntl is not None:
                fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def owner(self) -> dict[str, Any] | None:
        """The folder's ``run.json`` (fingerprint, pid, config), or ``None``."""
        try:
            data = json.loads((self.path / OWNER).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def owner_fingerprint(self) -> str | None:
        """The fingerprint of the run the folder belongs to: ``run.json``'s, else the one stored in
        its checkpoint or results (folders written before ``run.json`` existed), else ``None``."""
        owner = self.owner()
        if owner is not None and isinstance(owner.get("fingerprint"), str):
            return owner["fingerprint"]
        for path in (self.last, self.best):
            if path.is_file():
                try:
                    return load_checkpoint(path).get("fingerprint")
                except CheckpointError:
                    continue
        if self.results.is_file():
            try:
                return RunResult.from_json(self.results.read_text(), verify=False).fingerprint
            except (OSError, ValueError):
                return None
        return None

    def _check_owner(self, fingerprint: str) -> None:
        has_files = any(self.file(name).exists() for name in RUN_FILES)
        found = self.owner_fingerprint()
        if found is not None and found != fingerprint:
            raise RunDirForeign(
                f"{self.path} holds a run of a different configuration (fingerprint {found}, this run {fingerprint}); "
                "use another --out folder"
            )
        if found is None and has_files:
            raise RunDirForeign(
                f"{self.path} holds run files of an unknown configuration; use another folder or move them away"
            )

    def _check_entries(self) -> None:
        for name in (*RUN_FILES, OWNER):
            path = self.file(name)
            if path.exists() and not path.is_file():
                raise RunDirError(f"{path} is not a file (a folder of that name?); move it away or use another folder")

    def remove_dead_tmp(self) -> list[Path]:
        """Remove temporary files ``.<name>.tmp-<pid>`` whose writer process is gone (and
        ``.<name>.tmp`` files, which no live writer of this library makes); return them. Called
        with the folder's lock held, so no other run of this library is writing here."""
        removed = []
        for p in self.path.glob(".*.tmp*"):
            match = _TMP.match(p.name)
            if match and p.is_file() and not (match.group(1) and _pid_alive(int(match.group(1)))):
                p.unlink(missing_ok=True)
                removed.append(p)
        return removed

    # -- checkpoints ----------------------------------------------------------------------------

    def save_state(self, state: TrainState, fingerprint: str, config: dict[str, Any]) -> None:
        """Write ``last.pt``: the state, the run's fingerprint and its configuration."""
        save_checkpoint({**dataclasses.asdict(state), "fingerprint": fingerprint, "config": config}, self.last)

    def resume_state(self, fingerprint: str, resume: bool, log) -> TrainState | None:
        """The verified ``last.pt`` (:func:`load_checkpoint`) to resume from, or ``None`` for a
        fresh start (``resume`` false, or no ``last.pt`` yet: said in the log)."""
        if not resume:
            return None
        if not self.last.exists():
            log(f"--resume: no checkpoint in {self.path}, starting fresh")
            return None
        if not self.last.is_file():
            raise CheckpointError(f"{self.last} is not a file (a folder of that name?); move it away")
        data = load_checkpoint(self.last, fingerprint)
        names = [f.name for f in dataclasses.fields(TrainState)]
        missing = [n for n in names if n not in data]
        if missing:
            raise CheckpointError(f"checkpoint {self.last} lacks {', '.join(missing)}; delete it to restart")
        return TrainState(**{n: data[n] for n in names})

    def save_best(self, weights: dict[str, Any], fingerprint: str) -> None:
        save_checkpoint({**weights, "fingerprint": fingerprint}, self.best)

    def load_best(self, fingerprint: str) -> dict[str, Any]:
        return load_checkpoint(self.best, fingerprint)

    def save_scores(self, scores: dict[str, Any]) -> None:
        save_checkpoint(scores, self.scores)

    def load_scores(self) -> dict[str, Any]:
        return load_checkpoint(self.scores)

    def clear(self) -> None:
        """Delete the run's files (a forced re-run); the folder itself stays."""
        for name in (*RUN_FILES, OWNER):
            self.file(name).unlink(missing_ok=True)

    # -- results --------------------------------------------------------------------------------

    def write_result(self, result: RunResult) -> None:
        atomic_write_text(self.results, result.to_json())

    def read_result(self, fingerprint: str | None = None) -> tuple[RunResult | None, str]:
        """``(result, "")`` for an intact ``results.json`` of this configuration, else
        ``(None, why)`` (``why`` empty when there is simply no result yet)."""
        if not self.results.exists():
            return None, ""
        if not self.results.is_file():
            return None, f"{self.results} is not a file"
        try:
            result = RunResult.from_json(self.results.read_text())
        except (OSError, ValueError, TypeError) as err:
            return None, f"{self.results} is unusable ({err})"
        if fingerprint is not None and result.fingerprint != fingerprint:
            return None, f"{self.results} belongs to another configuration ({result.fingerprint} != {fingerprint})"
        owner = self.owner_fingerprint()
        if fingerprint is not None and owner not in (None, fingerprint):
            return None, f"{self.path} belongs to another configuration ({owner})"
        return result, ""
