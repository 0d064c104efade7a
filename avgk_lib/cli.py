"""``python -m avgk_lib``: ``train`` one run, ``list`` the losses, ``demo``.

The ``train`` flags are generated from :class:`~avgk_lib.config.TrainConfig` (one flag per
field: type, default and help from the field) by :func:`add_config_arguments`; the loss flags
from the loss signatures and the dataset flags from the loader signatures. Every user mistake
ends with one line ``error: ...`` naming the flag and exit code 2, before anything trains
(``--debug`` shows the traceback); a diverged run ends with one line and exit code 1; so do
environment problems (an unusable data or cache folder: exit 2; a failed download: exit 1);
Ctrl-C ends with one line saying how to resume and exit code 130. :func:`run_command` does this
mapping for any subcommand (the book's ``python -m avgk_book run`` uses it too).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import functools
import re
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from .config import ConfigError, TrainConfig, dataset_option_types
from .data.base import CACHE_ENV, DataFolderError, DownloadError, check_folder
from .objectives import OBJECTIVES, loss_option_types
from .rundir import CheckpointError, RunDir, RunDirError, RunFileWriteError, run_dir

EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130
#: errno values of environment problems the user fixes (permissions, read-only disks, link loops)
_SETUP_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ELOOP)
#: errno values of a full disk, quota or file-size limit (exit code 1: the run failed)
_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_SKIPPED_FIELDS = ("dataset_options", "loss_options")


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line ``error: ...`` (exit 2), no usage block."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


def flag(name: str) -> str:
    """``batch_size -> --batch-size``."""
    return "--" + name.replace("_", "-")


def _number_list(kind: type) -> Any:
    def parse(text: str) -> list:
        try:
            return [kind(t) for t in text.replace(",", " ").split()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} list: {text!r}") from None

    parse.__name__ = f"{kind.__name__} list"
    return parse


def _argument(hint: Any, default: Any) -> dict[str, Any]:
    """``add_argument`` keywords for a field of type ``hint``."""
    origin, args = typing.get_origin(hint), [a for a in typing.get_args(hint) if a is not type(None)]
    if origin is Literal:
        return {"choices": list(typing.get_args(hint)), "default": default}
    if hint is bool or (args == [bool]):
        return {"action": argparse.BooleanOptionalAction, "default": default}
    if origin is list:
        return {"type": _number_list(args[0]), "nargs": "+", "default": default}
    base = args[0] if args and origin is not list else hint
    return {"type": base, "default": default}


def _folder(text: str) -> Path:
    """An ``--out`` value: a folder name (an empty string would silently mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a folder, got an empty string")
    return Path(text)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type = TrainConfig, skip=_SKIPPED_FIELDS) -> None:
    """One flag per field of the dataclass ``cls`` (type, default and ``metadata["help"]``)."""
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        if f.name not in skip:
            kwargs = _argument(hints[f.name], getattr(defaults, f.name))
            parser.add_argument(flag(f.name), dest=f.name, help=f.metadata.get("help", ""), **kwargs)


def _add_option_flags(parser: argparse.ArgumentParser, types: dict[str, type], prefix: str, describe) -> None:
    for name, kind in types.items():
        kwargs = _argument(kind, None)
        kwargs["default"] = None
        parser.add_argument(flag(name), dest=f"{prefix}{name}", help=describe(name), **kwargs)


def _loss_help(name: str) -> str:
    defaults = [f"{s.name}: {s.defaults[name]}" for s in OBJECTIVES.values() if name in s.options]
    return "default " + ", ".join(defaults)


def _dataset_help(name: str) -> str:
    from .data import LOADERS

    return "dataset " + ", ".join(d for d in LOADERS if name in dataset_option_types(d))


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Every ``train`` flag: the config's, ``--out``/``--resume``/``--no-progress``, loss and dataset options."""
    add_config_arguments(parser.add_argument_group("configuration (TrainConfig)"))
    g = parser.add_argument_group("run folder")
    g.add_argument("--out", type=_folder, help="run folder (default: $AVGK_CACHE_DIR/runs/<config fingerprint>)")
    g.add_argument("--resume", action="store_true", help="continue the checkpoint in --out (fresh start if none)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars (also: AVGK_PROGRESS=0)")
    _add_option_flags(parser.add_argument_group("loss hyperparameters"), loss_option_types(), "loss.", _loss_help)
    _add_option_flags(parser.add_argument_group("dataset options"), dataset_option_types(), "data.", _dataset_help)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The validated :class:`TrainConfig` of parsed ``train`` arguments (``ConfigError`` otherwise)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name not in _SKIPPED_FIELDS}
    for name in ("eval_ks", "milestones"):  # nargs="+" of lists: flatten
        if values[name] and isinstance(values[name][0], list):
            values[name] = [x for part in values[name] for x in part]
    options = {"loss": {}, "data": {}}
    for dest, value in vars(args).items():
        prefix, dot, name = dest.partition(".")
        if dot and prefix in options and value is not None:
            options[prefix][name] = str(value) if isinstance(value, Path) else value
    cfg = TrainConfig(**values, loss_options=options["loss"], dataset_options=options["data"])
    return cfg.validate()


def _cmd_train(args: argparse.Namespace) -> int:
    from .data import cache_dir
    from .train import train

    cfg = config_from_args(args)
    if args.out is None:
        check_folder(cache_dir(), CACHE_ENV, write=True)
    out = args.out or run_dir(cfg)
    args.run_folder = Path(out)
    train(cfg, out, resume=args.resume, progress=not args.no_progress, log=functools.partial(print, flush=True))
    print(f"results: {RunDir(out).results}")
    return 0


def _interrupted(args: argparse.Namespace, err: KeyboardInterrupt) -> str:
    """The one line of a Ctrl-C: where the run stopped (the epoch of the trainer's
    :class:`~avgk_lib.engine.RunInterrupted`) and how to continue it."""
    from .engine import RunInterrupted

    folder = getattr(args, "run_folder", None)
    if args.command == "train" and folder is not None:
        if not RunDir(folder).last.exists():
            return f"interrupted before the first checkpoint in {folder}; run the command again to start over"
        done = f" after epoch {err.epoch}" if isinstance(err, RunInterrupted) else ""
        return f"interrupted{done}; resume with --resume --out {folder} (from its last checkpoint)"
    return "interrupted"


def _diverged_hint(args: argparse.Namespace) -> str:
    """What a retry of a diverged ``train`` needs: its folder keeps this configuration's finished
    epochs, so a run with another lr needs another ``--out`` (or the files deleted)."""
    folder = getattr(args, "run_folder", None)
    if args.command != "train" or folder is None or not RunDir(folder).has_run_files():
        return ""
    return f" (with another --out: {folder} keeps this configuration's epochs; or delete its run files first)"


def _cmd_list(args: argparse.Namespace) -> int:
    print("losses:")
    for name, objective in sorted(OBJECTIVES.items()):
        print(f"  {name:<24} {objective.description}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import demo

    return demo()


def command_parser(prog: str, description: str) -> tuple[argparse.ArgumentParser, Any, argparse.ArgumentParser]:
    """A parser whose errors are one line, its subparsers and the parent parser that gives each
    subcommand ``--debug``."""
    parser = _Parser(prog=prog, description=description)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors")
    return parser, parser.add_subparsers(dest="command", required=True, parser_class=_Parser), common


def build_parser() -> argparse.ArgumentParser:
    parser, sub, common = command_parser("python -m avgk_lib", "top-K and average-K classification")
    p_train = sub.add_parser(
        "train", help="train one model", parents=[common], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_train_arguments(p_train)
    sub.add_parser("list", help="list the losses (the book's experiments: python -m avgk_book list)", parents=[common])
    sub.add_parser("demo", help="one-minute tour of the library", parents=[common])
    return parser


def _flag_message(err: Exception, args: argparse.Namespace) -> str:
    """The error's message with `field` names written as the CLI flags (a command without ``--out``,
    such as the book's ``run``, has the cache's run folders)."""
    if isinstance(err, ConfigError):
        if err.field == "out" and not hasattr(args, "out"):
            return f"run folder {err.detail} (the run cache: {CACHE_ENV})"
        return f"{flag(err.field)} {err.detail}"
    return re.sub(r"`([a-z_]+)`", lambda m: flag(m.group(1)), str(err))


def _setup_message(err: OSError) -> str:
    """One line for an OS error of the environment (permission, read-only disk, link loop, full
    disk or quota, file too large)."""
    where = f": {err.filename}" if err.filename else ""
    if err.errno in _SPACE_ERRNOS:
        return f"{err.strerror or err}{where} (free some space or use a folder on another disk, then run it again)"
    return f"{err.strerror or err}{where} (check the folder's permissions, or choose another folder)"


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 failed run or download, 2 user mistake or
    unusable folder, 130 interrupted by Ctrl-C)."""
    args = build_parser().parse_args(argv)
    return run_command(args, {"train": _cmd_train, "list": _cmd_list, "demo": _cmd_demo}[args.command])


def run_command(
    args: argparse.Namespace,
    command: Callable[[argparse.Namespace], int],
    interrupted: Callable[[argparse.Namespace, KeyboardInterrupt], str] = _interrupted,
) -> int:
    """``command(args)`` with every error mapped to one line ``error: ...`` on stderr and its exit
    code (see :func:`main`); ``interrupted`` words the line of a Ctrl-C."""
    from .train import TrainingDiverged

    clean = (ConfigError, CheckpointError, DataFolderError, RunDirError)
    try:
        return command(args)
    except RunFileWriteError as err:  # a run file could not be written: one line naming it
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE if err.errno in _SETUP_ERRNOS else EXIT_FAILED
    except (*clean, FileNotFoundError, NotADirectoryError, ValueError, TypeError) as err:
        if args.debug:
            raise
        hint = "" if isinstance(err, clean) else " (--debug shows the traceback)"
        print(f"error: {_flag_message(err, args)}{hint}", file=sys.stderr)
        return EXIT_USAGE
    except (TrainingDiverged, DownloadError) as err:
        if args.debug:
            raise
        print(f"error: {err}{_diverged_hint(args) if isinstance(err, TrainingDiverged) else ''}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as err:
        if args.debug:
            raise
        print(f"error: {interrupted(args, err)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as err:
        if args.debug or err.errno not in (*_SPACE_ERRNOS, *_SETUP_ERRNOS):
            raise
        print(f"error: {_setup_message(err)}", file=sys.stderr)
        return EXIT_FAILED if err.errno in _SPACE_ERRNOS else EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
