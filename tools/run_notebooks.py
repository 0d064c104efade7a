"""Execute every notebook with papermill into a staging tree that Jupyter Book builds.

    python tools/run_notebooks.py --preset smoke --out _build/book [--only 04]
    python tools/run_notebooks.py --preset colab --cap --out _build/colab   # the Colab route on a CPU

``--cap`` sets ``AVGK_RUN_CAP=1`` for the kernels: every training run is cut to one epoch of two
small batches on a few hundred samples (:mod:`avgk_lib.runcap`), so a GPU preset's configurations,
loaders, models and figures run in minutes on a CPU; each page's banner says its numbers are not
results.

The staging tree has the shape of the repository (``book/``, ``notebooks/``) so the table of
contents and the bibliography resolve the same way. Prints the wall time of each notebook and
exits non-zero if one fails (the failing notebook is still written, with its traceback).

What the reader sees is kept clean:

* the kernels run with ``AVGK_PROGRESS=0`` (the training engine then prints no progress bars,
  one summary line per run at most);
* papermill's injected-parameters cell is removed from the executed copy and the notebook's own
  ``parameters`` cell is rewritten with the values actually run (``PRESET = "smoke"``), so the
  page never shows ``PRESET = "cpu"`` above a smoke run;
* MathJax is copied from the installed ``django-static-mathjax`` package (MathJax 3) into
  ``book/_static/mathjax`` of the staging tree, so the built site renders math offline;
* the intro page's main result is generated from the committed ledger: the line
  ``% MAIN-RESULT`` of ``book/intro.md`` (a MyST comment, invisible if left) is replaced in the
  staged copy by :func:`avgk_book.claims.intro_markdown` (a Markdown page runs no code).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _literal(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


def fold_injected_parameters(nb: dict) -> dict[str, Any]:
    """Move papermill's injected values into the ``parameters`` cell and drop the injected cell.

    Each ``NAME = value`` line of the parameters cell whose NAME was injected gets the injected
    value (its trailing comment is kept); a name that the parameters cell lacks is appended.
    Returns the injected values (empty when nothing was injected). Raises ``ValueError`` when the
    notebook has injected values but no ``parameters`` cell."""
    cells = nb["cells"]
    injected = [c for c in cells if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    if not injected:
        return {}
    values: dict[str, Any] = {}
    for cell in injected:
        for node in ast.parse(_source(cell)).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                values[node.targets[0].id] = ast.literal_eval(node.value)
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not params:
        raise ValueError("`nb` has injected parameters but no cell tagged 'parameters'")
    lines = _source(params[0]).splitlines()
    for name, value in values.items():
        pattern = re.compile(rf"^({re.escape(name)}\s*=\s*)(.*?)(\s+#.*)?$")
        for i, line in enumerate(lines):
            match = pattern.match(line)
            if match:
                lines[i] = match.group(1) + _literal(value) + (match.group(3) or "")
                break
        else:
            lines.append(f"{name} = {_literal(value)}  # set by the notebook runner")
    params[0]["source"] = "\n".join(lines)
    nb["cells"] = [c for c in cells if all(c is not i for i in injected)]
    return values


def copy_mathjax(static: Path) -> Path:
    """Copy MathJax 3 (the ``es5`` build shipped by ``django-static-mathjax``) to ``static/mathjax``."""
    try:
        import mathjax  # the django-static-mathjax distribution; plain files, Django is not imported
    except ImportError as err:
        raise SystemExit(
            "run_notebooks: MathJax is missing; install the book extra (pip install django-static-mathjax)"
        ) from err
    source = Path(mathjax.__file__).resolve().parent / "static" / "mathjax" / "es5"
    if not (source / "tex-chtml.js").is_file():
        raise SystemExit(f"run_notebooks: no MathJax 3 build in {source}")
    target = static / "mathjax"
    if target.exists():
        shutil.rmtree(target)
    # tex-chtml.js (TeX in, HTML out) and the folders it loads lazily (fonts, extensions, menu)
    shutil.copytree(source, target, ignore=_other_mathjax_builds(source))
    return target


def _other_mathjax_builds(source: Path):
    """copytree filter: leave out the top-level MathJax builds other than ``tex-chtml.js``."""

    def ignore(folder: str, names: list[str]) -> list[str]:
        if Path(folder) != source:
            return []
        return [n for n in names if n.endswith(".js") and n != "tex-chtml.js"]

    return ignore


MAIN_RESULT_MARKER = "% MAIN-RESULT"


PRESET_TABLE_MARKER = "% PRESET-TABLE"


def _replace_marker(page: Path, marker: str, text: str) -> str:
    """Replace the one line of ``page`` starting with ``marker`` by ``text``; ``ValueError`` when
    the page has no such line (or several), so a renamed marker fails the build."""
    lines = page.read_text().splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.startswith(marker)]
    if len(hits) != 1:
        raise ValueError(f"`page` {page} must hold one line starting with {marker!r}, found {len(hits)}")
    lines[hits[0]] = text + "\n"
    page.write_text("".join(lines))
    return text


def render_main_result(page: Path, ledger: dict | None = None) -> str:
    """Replace the ``% MAIN-RESULT`` line of ``page`` by the main result of ``ledger`` (default:
    the committed ``claims.json``); returns the generated text. Raises ``ValueError`` when the page
    has no such line, so a renamed marker fails the build instead of dropping the result."""
    from avgk_book.claims import intro_markdown
    from avgk_book.references import load_json_reference

    ledger = load_json_reference("claims") if ledger is None else ledger
    text = intro_markdown(ledger) if ledger else "_No claims ledger is committed yet: run `make references`._"
    return _replace_marker(page, MAIN_RESULT_MARKER, text)


def render_preset_table(page: Path) -> str:
    """Replace the ``% PRESET-TABLE`` line of ``page`` by the catalog's table of which chapter
    runs which experiment at which preset (:func:`avgk_book.experiments.preset_table`)."""
    from avgk_book.experiments.grid import preset_table

    return _replace_marker(page, PRESET_TABLE_MARKER, preset_table())


def stage_book(out: Path) -> None:
    """Copy ``book/`` (config, pages, bibliography, static files; not the book's package) and MathJax into ``out``, and
    write the intro page's main result from the committed ledger."""
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    if (out / "book").exists():
        shutil.rmtree(out / "book")
    # the book's package (book/avgk_book, book/pyproject.toml) is code, not a page of the book
    shutil.copytree(
        ROOT / "book",
        out / "book",
        ignore=shutil.ignore_patterns("mathjax", "avgk_book", "pyproject.toml", "*.egg-info", "build"),
    )
    copy_mathjax(out / "book" / "_static")
    render_main_result(out / "book" / "intro.md")
    render_preset_table(out / "book" / "how_to_run.md")


def execute(nb: Path, target: Path, preset: str, timeout: int) -> str:
    """Run one notebook with papermill into ``target``; returns "ok" or the failure's first line."""
    import papermill

    status = "ok"
    try:
        papermill.execute_notebook(
            str(nb),
            str(target),
            parameters={"PRESET": preset},
            cwd=str(ROOT / "notebooks"),
            kernel_name="python3",
            progress_bar=False,
            execution_timeout=timeout,
        )
    except Exception as err:  # papermill raises PapermillExecutionError with the cell's traceback
        status = f"FAILED: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
    if target.exists():
        executed = json.loads(target.read_text())
        fold_injected_parameters(executed)
        target.write_text(json.dumps(executed, indent=1, ensure_ascii=False) + "\n")
    return status


def main() -> int:
    from avgk_book.experiments.spec import PRESETS
    from avgk_lib.runcap import RUN_CAP_ENV, run_cap_active

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", choices=PRESETS)
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "book")
    parser.add_argument("--only", nargs="*", default=[], help="prefixes of the notebooks to run")
    parser.add_argument("--timeout", type=int, default=7200, help="seconds per cell")
    parser.add_argument(
        "--cap",
        action="store_true",
        help="cap every training run (AVGK_RUN_CAP=1: one epoch of two small batches on a few hundred samples): "
        "checks that a preset's code runs, e.g. --preset colab on a CPU; the pages say the numbers are not results",
    )
    args = parser.parse_args()
    os.environ["AVGK_PROGRESS"] = "0"  # inherited by the kernels: no progress bars in the pages
    if args.cap:
        os.environ[RUN_CAP_ENV] = "1"  # inherited by the kernels; each page's banner names the cap
    out: Path = args.out
    stage_book(out)
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if args.only:
        notebooks = [nb for nb in notebooks if any(nb.name.startswith(p) for p in args.only)]
    failures, total = [], time.time()
    for nb in notebooks:
        start = time.time()
        status = execute(nb, out / "notebooks" / nb.name, args.preset, args.timeout)
        if status != "ok":
            failures.append(nb.name)
        print(f"{nb.name:<40} {time.time() - start:7.1f} s  {status}", flush=True)
    capped = ", every run capped (AVGK_RUN_CAP=1)" if run_cap_active() else ""
    print(f"{len(notebooks)} notebooks, preset {args.preset}{capped}, {time.time() - total:.0f} s in all", flush=True)
    if failures:
        print("failed: " + ", ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
