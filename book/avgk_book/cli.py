"""``python -m avgk_book``: ``run`` a named experiment of the book, ``list`` the experiments.

The library's own command line (``python -m avgk_lib train ...``) trains one run; this one runs
the book's experiments from the catalog (:mod:`avgk_book.experiments`), every run cached by its
configuration. Errors end as the library's do (:func:`avgk_lib.cli.run_command`): one line
``error: ...`` and exit code 2 for a user mistake, 1 for a failed run, 130 for Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from avgk_lib.cli import command_parser, run_command
from avgk_lib.data import cache_dir
from avgk_lib.data.base import CACHE_ENV, check_folder

from .experiments import EXPERIMENTS, PRESETS, get_experiment, run_experiment


def _cmd_run(args: argparse.Namespace) -> int:
    get_experiment(args.experiment)
    check_folder(cache_dir(), CACHE_ENV)  # written only when a run must train (a read-only cache serves)
    table = run_experiment(
        args.experiment, args.preset, seeds=args.seeds, progress=not args.no_progress, force=args.force
    )
    print(json.dumps(table, indent=1) if args.json else table_to_text(table))
    return 0


def table_to_text(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of ``rows`` (floats with 4 decimals)."""
    if not rows:
        return "(no runs)"
    hidden = ("last_", "softmax_", "multilabel_", "combined_", "opt_")
    keys = [k for k, v in rows[0].items() if not isinstance(v, list | dict) and not k.startswith(hidden)]
    widths = {k: max(len(k), *(len(_fmt(r.get(k))) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys)]
    lines += ["  ".join(_fmt(r.get(k)).ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _cmd_list(args: argparse.Namespace) -> int:
    print("experiments (python -m avgk_book run NAME --preset PRESET; the losses: python -m avgk_lib list):")
    for name, experiment in EXPERIMENTS.items():
        print(f"  {name:<24} {experiment.description}")
        for preset, spec in experiment.presets.items():
            print(f"  {'':<24}   {preset:<6} {len(spec.settings)} setting(s){': ' + spec.note if spec.note else ''}")
    return 0


def _interrupted(args: argparse.Namespace, err: KeyboardInterrupt) -> str:
    """The one line of a Ctrl-C during ``run``: how to continue."""
    return (
        f"interrupted; every run keeps its finished epochs in its last.pt under {cache_dir() / 'runs'}: run the "
        "same command again to resume (finished runs are cached, the stopped ones resume)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser, sub, common = command_parser("python -m avgk_book", "the experiments of the avgk book")
    p_run = sub.add_parser("run", help="run a named experiment (cached by configuration)", parents=[common])
    p_run.add_argument("experiment")
    p_run.add_argument("--preset", default="cpu", choices=list(PRESETS))
    p_run.add_argument("--seeds", type=int, nargs="+", default=[0])
    p_run.add_argument("--force", action="store_true", help="retrain even when a cached run exists")
    p_run.add_argument("--json", action="store_true", help="print the table as JSON")
    p_run.add_argument("--no-progress", action="store_true")
    sub.add_parser("list", help="list the experiments and their presets", parents=[common])
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (as :func:`avgk_lib.cli.main`'s)."""
    args = build_parser().parse_args(argv)
    return run_command(args, {"run": _cmd_run, "list": _cmd_list}[args.command], _interrupted)


if __name__ == "__main__":
    sys.exit(main())
