"""Execute every notebook with papermill into a staging tree that Jupyter Book builds.

    python tools/run_notebooks.py --preset smoke --out _build/book [--only 04]

The staging tree has the shape of the repository (``book/``, ``notebooks/``) so the table of
contents and the bibliography resolve the same way. Prints the wall time of each notebook and
exits non-zero if one fails (the failing notebook is still written, with its traceback).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", choices=["smoke", "cpu", "gpu"])
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "book")
    parser.add_argument("--only", nargs="*", default=[], help="prefixes of the notebooks to run")
    parser.add_argument("--timeout", type=int, default=7200, help="seconds per cell")
    args = parser.parse_args()
    import papermill

    out: Path = args.out
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    if (out / "book").exists():
        shutil.rmtree(out / "book")
    shutil.copytree(ROOT / "book", out / "book")
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if args.only:
        notebooks = [nb for nb in notebooks if any(nb.name.startswith(p) for p in args.only)]
    failures, total = [], time.time()
    for nb in notebooks:
        start = time.time()
        target = out / "notebooks" / nb.name
        try:
            papermill.execute_notebook(
                str(nb),
                str(target),
                parameters={"PRESET": args.preset},
                cwd=str(ROOT / "notebooks"),
                kernel_name="python3",
                progress_bar=False,
                execution_timeout=args.timeout,
            )
            status = "ok"
        except Exception as err:  # papermill raises PapermillExecutionError with the cell's traceback
            failures.append(nb.name)
            status = f"FAILED: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        print(f"{nb.name:<40} {time.time() - start:7.1f} s  {status}", flush=True)
    print(f"{len(notebooks)} notebooks, preset {args.preset}, {time.time() - total:.0f} s in all", flush=True)
    if failures:
        print("failed: " + ", ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
