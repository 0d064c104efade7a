"""One run folder and everything it holds, owned by one object: :class:`RunDir`.

A run folder holds ``last.pt`` (the training state after the last finished epoch), ``best.pt``
(the best epoch's weights), ``scores.pt`` (validation and test scores of the best model),
``results.json`` (the :class:`RunResult`), ``run.json`` (the owner: the fingerprint and the
configuration of the run the folder belongs to) and ``.lock``.

Rules the class enforces:

* **one live run per folder**: :meth:`RunDir.claim` takes an exclusive OS lock (``flock``) on
  ``.lock`` for the life of the run; the OS drops it when the process dies, so a killed run never
  leaves a stale lock. A second run into a locked folder is refused at once (:class:`RunDirBusy`);
* **one configuration per folder**: a folder holding run files whose ``run.json`` (or, for folders
  written before ``run.json`` existed, whose checkpoint or results) names another fingerprint is
  never written, with or without ``resume`` (:class:`RunDirForeign`); a folder with only
  ``.lock`` and ``run.json`` holds nothing to protect and accepts a new run;
* **a cache that cannot lie**: ``results.json`` carries the run's fingerprint and a SHA-256 of its
  content; :meth:`RunDir.read_result` returns a result only when both match, else ``None`` with the
  reason (the caller retrains and says so);
* **temporary files of dead writers only**: the atomic writer names its temporary files
  ``.<name>.tmp-<pid>``; :meth:`RunDir.claim` removes those whose process is gone.

How the files are written and read back (every file of a run, and the reference files):

* :func:`atomic_write_bytes` is the one writer: a temporary file ``.<name>.tmp-<pid>`` in the
  same folder, ``fsync``, then ``os.replace`` over the target, so a crash leaves the old file
  or the new one, never a truncated one. On failure the temporary file is removed and any
  ``OSError`` (full disk or quota, file too large, read-only folder...) becomes one
  :class:`RunFileWriteError` line naming the file and what to do.
* :func:`save_checkpoint` / :func:`load_checkpoint`: ``torch`` files (``last.pt``, ``best.pt``,
  ``scores.pt``) that carry :data:`FORMAT_VERSION` and a SHA-256 of their content (every tensor's
  bytes, dtype and shape and every Python value, :func:`content_digest`), both stored as tensors
  next to the payload so that the file stays a plain ``torch.load``-able dict. Every one carries
  the fingerprint of its run (``scores.pt`` too), checked where it is read. Loading uses
  ``torch.load(weights_only=True)`` (tensors, primitives and NumPy's generator state only: a
  crafted file cannot run code) and checks the format, the checksum and the fingerprint, raising
  :class:`CheckpointError` naming the file: a bit flip is caught, never trained on.
* JSON files carry :func:`json_digest` of their content; ``results.json`` is parsed here and
  nowhere else (:meth:`RunResult.from_json`).
* :class:`TrainState`: what ``last.pt`` holds, so a killed run resumes bit-exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import math
import os
import pickle
import platform
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.base import cache_dir

try:  # POSIX; elsewhere runs are not locked (said in RunDir.claim's docstring)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

FORMAT_VERSION = 2
_META = ("format_version", "sha256")


def run_dir(config: Any) -> Path:
    """The run cache's folder of a :class:`~avgk_lib.config.TrainConfig`:
    ``$AVGK_CACHE_DIR/runs/<fingerprint>`` (the default ``--out`` of ``python -m avgk_lib train``,
    and where the experiments cache their runs)."""
    return cache_dir() / "runs" / config.fingerprint()


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, corrupt, or written by an incompatible run."""


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


#: what to do about an ``OSError`` while writing a file, by errno (the rest: :data:`_WRITE_OTHER`)
_WRITE_ADVICE = {
    errno.ENOSPC: "no space left on device; free some space, then run the same command again",
    errno.EDQUOT: "disk quota exceeded; free some space in your quota, then run the same command again",
    errno.EFBIG: "file too large for this file system (e.g. FAT32's 4 GiB limit); use a folder on another disk",
    errno.EROFS: "read-only file system; use a writable folder",
    errno.EACCES: "permission denied; fix the folder's permissions or use another folder",
    errno.EPERM: "operation not permitted; fix the folder's permissions or use another folder",
}
_WRITE_OTHER = "use another folder, or run the same command again once the cause is fixed"


class RunFileWriteError(OSError):
    """An ``OSError`` while writing a run file (or a reference file): one line naming the file, what
    happened and what to do; ``errno`` and ``filename`` are the original's. The old file, if any,
    is untouched (the atomic writer never truncates it)."""

    def __init__(self, err: OSError, path: Path) -> None:
        super().__init__(err.errno, err.strerror or str(err), str(path))
        why = _WRITE_ADVICE.get(err.errno) or f"{err.strerror or err}; {_WRITE_OTHER}"
        self.message = f"cannot write {path}: {why}"

    def __str__(self) -> str:
        return self.message


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (tmp file + fsync + replace); see the module docstring.
    Any ``OSError`` (a full disk or quota, a file too large, a read-only folder...) removes the
    temporary file and raises :class:`RunFileWriteError` naming ``path``."""
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
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # e.g. the folder itself is not writable: there is no temporary file either
        if isinstance(err, OSError) and not isinstance(err, RunFileWriteError):
            raise RunFileWriteError(err, path) from err
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


def _numpy_globals() -> list[Any]:
    """The NumPy types a checkpoint may hold besides tensors and Python primitives: the state of
    NumPy's global generator (``np.random.get_state()``: a ``uint32`` array) in ``last.pt``."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - NumPy 1
        from numpy.core.multiarray import _reconstruct
    kinds = [np.ndarray, np.dtype, _reconstruct, type(np.dtype(np.uint32))]
    return list(dict.fromkeys(kinds))


#: every type beyond tensors and primitives that ``torch.load(weights_only=True)`` accepts in a run file
SAFE_GLOBALS = _numpy_globals()
_UNSAFE = re.compile(r"Unsupported global: GLOBAL ([\w.]+)|Unsupported class ([\w.]+)")


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


def load_checkpoint(
    path: str | Path, expected_fingerprint: str | None = None, *, advice: str = "delete it to restart"
) -> dict[str, Any]:
    """Load a file written by :func:`save_checkpoint`; verify its format version, checksum and
    (if given) configuration fingerprint. Raises :class:`CheckpointError` naming the file and
    ending with ``advice`` (what to do about it).

    Loaded with ``torch.load(weights_only=True)``: tensors, Python primitives and the few NumPy
    types of :data:`SAFE_GLOBALS` only, so a crafted file cannot run code while it is read (it is
    refused, naming the object it tried to build)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"checkpoint {path} is not readable (permission denied): fix its permissions")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        match = _UNSAFE.search(str(err))
        if match is None:
            detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(err))
            why = _one_line(detail.group(1) if detail else str(err), 120)
            raise CheckpointError(
                f"checkpoint {path} is unreadable (damaged or not a torch file: {why}); {advice}"
            ) from None
        what = next(g for g in match.groups() if g)
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds {what}, which this library never writes and which "
            f"could run code when loaded (nothing in it was run); it is not a run file of avgk_lib: {advice}"
        ) from None
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(err).__name__}: {_one_line(str(err))}); {advice}"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} has an unknown format (not a dict); {advice}")
    version = _version(state)
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, this avgk_lib reads {FORMAT_VERSION}; {advice}"
        )
    stored = state.pop("sha256", None)
    state.pop("format_version")
    if not isinstance(stored, torch.Tensor) or bytes(stored.tolist()) != content_digest(state):
        raise CheckpointError(f"checkpoint {path} is corrupt (checksum mismatch); {advice}")
    if expected_fingerprint is not None and state.get("fingerprint") != expected_fingerprint:
        found = state.get("fingerprint")
        written = "a different configuration" if found is not None else "an unknown configuration"
        raise CheckpointError(
            f"checkpoint {path} was written by {written} (fingerprint {found}, this run {expected_fingerprint}); "
            f"{advice}"
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


#: set to ``1`` to run without file locks where the file system has none (``ENOLCK``), at your risk
NO_LOCK_ENV = "AVGK_NO_LOCK"
#: errno values of a file system that cannot lock files (NFS without lockd, some FUSE mounts)
_NO_LOCKS = tuple(getattr(errno, n) for n in ("ENOLCK", "EOPNOTSUPP", "ENOTSUP", "ENOSYS") if hasattr(errno, n))


class RunDirNoLocks(RunDirError):
    """The folder's file system cannot lock files (``ENOLCK``)."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _restart_advice(path: Path) -> str:
    """How to start a run in ``path`` over: ``--force`` for a folder of the run cache
    (``$AVGK_CACHE_DIR/runs/<fingerprint>``), else deleting its files or another ``--out``."""
    try:
        in_cache = path.resolve().parent == (cache_dir() / "runs").resolve()
    except OSError:
        in_cache = False
    if in_cache:
        return "run the same command with --force (force=True) to train it again from scratch"
    return f"delete the run files in {path} to start over, or use another folder (--out)"


class RunDir:
    """The folder of one run (see the module docstring). Use :meth:`claim` before writing and
    :meth:`release` (or the context manager) after; reading a finished result needs no claim.
    ``restart`` is what the messages advise when the run must start over (:func:`_restart_advice`)."""

    def __init__(self, path: str | Path) -> None:
        if isinstance(path, str) and not path.strip():
            raise ValueError("`out` must name a folder, got an empty string")
        if not isinstance(path, (str, Path)):
            raise TypeError(f"`out` must be a path, got {type(path).__name__}")
        self.path = Path(path)
        self.restart = _restart_advice(self.path)
        self._lock_fh: Any = None
        #: seconds of the earlier parts of a resumed run (from ``last.pt``), added to this part's
        self.prior_seconds = 0.0
        self._resumed_epochs = 0

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
        :class:`RunDirNoLocks`, :class:`RunDirForeign` or :class:`CheckpointError` (a checkpoint
        exists and ``resume`` is false). Without ``fcntl`` (Windows) or with ``AVGK_NO_LOCK=1``
        the folder is not locked."""
        self._open_and_lock()
        try:
            self._check_entries()
            self._check_owner(fingerprint)
            if self.last.exists() and not resume:
                finished, _ = self.read_result(fingerprint)
                if finished is not None:
                    raise CheckpointError(
                        f"{self.path} already holds this configuration's finished run (results in {self.results}); "
                        f"pass resume=True (--resume) to evaluate it again, or {self.restart}"
                    )
                raise CheckpointError(
                    f"{self.last} exists: pass resume=True (--resume) to continue it, or use another folder"
                )
            self.remove_dead_tmp()
            atomic_write_json(self.path / OWNER, {"fingerprint": fingerprint, "pid": os.getpid(), "config": config})
        except BaseException:
            self.release()
            raise

    def _open_and_lock(self) -> None:
        from .config import ConfigError

        if self.path.exists() and not self.path.is_dir():
            raise ConfigError("out", f"{self.path} exists and is not a folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock_fh = open(self.path / LOCK, "a+")  # noqa: SIM115 (held for the run's life)
        except OSError as err:
            raise ConfigError("out", f"{self.path} is not a writable folder ({err.strerror or err})") from None
        self._lock()

    @contextlib.contextmanager
    def locked(self) -> Iterator[RunDir]:
        """Hold the folder's lock (no owner check) while the caller changes its files: a folder
        that another live process holds raises :class:`RunDirBusy` and is left as it is."""
        self._open_and_lock()
        try:
            yield self
        finally:
            self.release()

    def _holder_pid(self) -> int | None:
        try:
            text = (self.path / LOCK).read_text().strip()
        except OSError:
            text = ""
        if text.isdigit():
            return int(text)
        pid = (self.owner() or {}).get("pid")
        return pid if isinstance(pid, int) else None

    def _lock(self) -> None:
        if fcntl is None or _env_flag(NO_LOCK_ENV):  # pragma: no cover - Windows
            return
        try:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            self._lock_fh.close()
            self._lock_fh = None
            if err.errno in _NO_LOCKS:
                raise RunDirNoLocks(
                    f"{self.path} is on a file system that cannot lock files ({err.strerror or err}; e.g. a network or "
                    f"Google Drive folder): use a local folder, or set {NO_LOCK_ENV}=1 to run without locking at your "
                    "own risk (two runs into one folder would then overwrite each other)"
                ) from None
            if not isinstance(err, BlockingIOError):
                raise RunDirError(f"{self.path}: cannot lock {self.path / LOCK} ({err.strerror or err})") from None
            pid = self._holder_pid()
            if pid == os.getpid():
                raise RunDirError(
                    f"{self.path} is already in use by this process: the same run folder was given twice "
                    "(give each run its own folder)"
                ) from None
            where = f" (pid {pid})" if pid is not None else ""
            raise RunDirBusy(
                f"{self.path} is in use by another running training process{where}; wait for it to finish"
                " (nothing in the folder was changed)"
            ) from None
        self._lock_fh.seek(0)
        self._lock_fh.truncate()
        self._lock_fh.write(str(os.getpid()))
        self._lock_fh.flush()

    def release(self) -> None:
        """Drop the lock (also dropped by the OS when the process ends)."""
        if self._lock_fh is not None:
            if fcntl is not None:
                with contextlib.suppress(OSError):
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

    def has_run_files(self) -> bool:
        """Whether the folder holds any run file (``last.pt``, ``best.pt``, ``scores.pt``,
        ``results.json``); a folder with only ``.lock`` or ``run.json`` holds nothing to protect."""
        return any(self.file(name).exists() for name in RUN_FILES)

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
        if not self.has_run_files():
            return  # only .lock / run.json (e.g. a run that diverged in its first epoch): nothing to protect
        found = self.owner_fingerprint()
        if found is not None and found != fingerprint:
            raise RunDirForeign(
                f"{self.path} holds a run of a different configuration (fingerprint {found}, this run {fingerprint}); "
                f"{self.restart}"
            )
        if found is None:
            raise RunDirForeign(f"{self.path} holds run files of an unknown configuration; {self.restart}")

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
        """Write ``last.pt``: the state, the run's fingerprint, its configuration and
        ``wall_seconds``, the training time so far (earlier parts of a resumed run included)."""
        seconds = self.prior_seconds + _epoch_seconds(state.history[self._resumed_epochs :])
        payload = {**dataclasses.asdict(state), "fingerprint": fingerprint, "config": config}
        save_checkpoint({**payload, "wall_seconds": float(seconds)}, self.last)

    def resume_state(self, fingerprint: str, resume: bool, log) -> TrainState | None:
        """The verified ``last.pt`` (:func:`load_checkpoint`) to resume from, or ``None`` for a
        fresh start (``resume`` false, or no ``last.pt`` yet: said in the log). A missing or
        damaged ``best.pt`` is rebuilt from ``last.pt`` when the best epoch is the last one saved;
        otherwise the error says how to start over."""
        self.prior_seconds, self._resumed_epochs = 0.0, 0
        if not resume:
            return None
        if not self.last.exists():
            log(f"--resume: no checkpoint in {self.path}, starting fresh")
            return None
        if not self.last.is_file():
            raise CheckpointError(f"{self.last} is not a file (a folder of that name?); move it away")
        advice = "delete it to start this run over from its first epoch"
        data = load_checkpoint(self.last, fingerprint, advice=advice)
        names = [f.name for f in dataclasses.fields(TrainState)]
        missing = [n for n in names if n not in data]
        if missing:
            raise CheckpointError(f"checkpoint {self.last} lacks {', '.join(missing)}; {advice}")
        state = TrainState(**{n: data[n] for n in names})
        seconds = data.get("wall_seconds")
        ok = isinstance(seconds, float) and math.isfinite(seconds) and seconds >= 0
        self.prior_seconds = seconds if ok else _epoch_seconds(state.history)  # older files: the epochs' time
        finished, _ = self.read_result(fingerprint)
        recorded = finished.provenance.get("wall_seconds") if finished is not None else None
        if isinstance(recorded, float) and len(finished.history) == state.epoch and recorded > self.prior_seconds:
            self.prior_seconds = recorded  # a finished run evaluated again keeps its recorded time
        self._resumed_epochs = len(state.history)
        self._check_best(state, fingerprint, log)
        return state

    def _check_best(self, state: TrainState, fingerprint: str, log) -> None:
        if state.best_epoch < 1:
            return
        try:
            self.load_best(fingerprint)
            return
        except CheckpointError as err:
            why = str(err).split(";")[0]
        if state.best_epoch == state.epoch:  # last.pt holds the best epoch's weights: rebuild best.pt
            self.save_best({"model": state.model, "loss": state.loss, "epoch": state.epoch}, fingerprint)
            log(f"{why}: rebuilt {self.best} from {self.last} (the best epoch, {state.epoch}, is the last one saved)")
            return
        raise CheckpointError(
            f"{why}, and it cannot be rebuilt (its best epoch, {state.best_epoch}, is not the last one saved, "
            f"{state.epoch}); {self.restart}"
        )

    def save_best(self, weights: dict[str, Any], fingerprint: str) -> None:
        save_checkpoint({**weights, "fingerprint": fingerprint}, self.best)

    def load_best(self, fingerprint: str) -> dict[str, Any]:
        return load_checkpoint(self.best, fingerprint, advice=self.restart)

    def save_scores(self, scores: dict[str, Any], fingerprint: str) -> None:
        """Write ``scores.pt``: the scores and the fingerprint of the run they belong to."""
        save_checkpoint({**scores, "fingerprint": fingerprint}, self.scores)

    def load_scores(self, fingerprint: str | None = None) -> dict[str, Any]:
        """The verified scores of the folder's run (without the ``fingerprint`` entry). The file
        must name the run: ``fingerprint``, else that of the folder's intact ``results.json``
        (:class:`CheckpointError` naming the file otherwise: scores copied from another run, or
        written before scores carried their run's fingerprint)."""
        if fingerprint is None:
            result, why = self.read_result()
            if result is None or result.fingerprint is None:
                raise CheckpointError(
                    f"{self.scores} cannot be checked against its run: {why or f'{self.results} does not exist'}; "
                    f"{self.restart}"
                )
            fingerprint = result.fingerprint
        advice = f"these are not this run's scores; {self.restart}"
        data = load_checkpoint(self.scores, fingerprint, advice=advice)
        data.pop("fingerprint", None)
        return data

    def clear(self) -> None:
        """Delete the run's files (a forced re-run); the folder itself stays. Call it holding the
        lock (:meth:`locked`), so that a live run's files are never deleted."""
        self._check_entries()
        for name in (*RUN_FILES, OWNER):
            self.file(name).unlink(missing_ok=True)

    # -- results --------------------------------------------------------------------------------

    def write_result(self, result: RunResult) -> None:
        atomic_write_text(self.results, result.to_json())

    def read_result(self, fingerprint: str | None = None) -> tuple[RunResult | None, str]:
        """``(result, "")`` for an intact ``results.json`` of this configuration, else
        ``(None, why)`` (``why`` empty when there is simply no result yet). The file carries its
        fingerprint and checksum: an intact one of this configuration is trusted whatever
        ``run.json`` says."""
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
        return result, ""


def _epoch_seconds(history: list[dict[str, Any]]) -> float:
    """The training time recorded in the epochs of ``history`` (their ``seconds``)."""
    total = 0.0
    for entry in history:
        value = entry.get("seconds") if isinstance(entry, dict) else None
        if isinstance(value, (int, float)) and math.isfinite(value):
            total += float(value)
    return total
