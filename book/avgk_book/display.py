r"""Rich outputs for the book: tables, banners, findings and library source.

Every helper returns a :class:`Block`, an object that Jupyter (and the book, through MyST-NB)
renders when it is the value of a cell: tables as Markdown (:func:`markdown_table`, the book's one
table renderer, also used by the chapter texts of :mod:`avgk_book.findings`), boxes and source
listings as HTML with a Markdown fallback.
Nothing here computes a number: the tables and findings come from :mod:`avgk_book.analysis`
and the experiments; this module only lays them out so that they fit the page column (no long
``print`` lines that scroll sideways).

Example:
    >>> print(table([{"K": 1, "accuracy": 0.51234}], floatfmt=".2f"))
    | K | accuracy |
    |---|---|
    | 1 | 0.51 |
"""

from __future__ import annotations

import ast
import html
import inspect
import math
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from avgk_lib.runcap import BATCH_SIZE, EPOCHS, MAX_BATCHES, RUN_CAP_ENV, run_cap_active

from .experiments.spec import PRESETS

SMOKE_TEXT = (
    "This block was executed with the `smoke` preset (a few batches, seconds of compute) to check that "
    "its code runs. Its numbers, tables, timings and verdicts are not findings. "
    'Run the notebook with `PRESET = "cpu"` (or larger) to reproduce the results the text discusses.'
)
#: the note of a page built with every training run capped (``AVGK_RUN_CAP=1``, the CI check of a preset)
CAPPED_TEXT = (
    f"Capped CI run ({RUN_CAP_ENV}=1: every training run is capped at {EPOCHS} epoch of at most {MAX_BATCHES} "
    f"batches of {BATCH_SIZE} samples on a few hundred samples; its numbers are not results): this execution "
    "only checks that the preset's code runs; "
    "its numbers, tables, timings, figures and verdicts are not findings."
)
GLUE_MIME_PREFIX = "application/papermill.record/"


class Block:
    """A piece of rich output: ``markdown`` (parsed as MyST by the book) and, for boxes and source
    listings, ``html`` (``None`` for tables, which are Markdown only: :func:`markdown_table`).

    ``_repr_html_`` and ``_repr_markdown_`` make the object display itself when it is the last
    expression of a cell (IPython's display protocol; without ``html`` the Markdown is shown)."""

    def __init__(self, html_text: str | None, markdown_text: str) -> None:
        if not isinstance(html_text, (str, type(None))) or not isinstance(markdown_text, str):
            raise TypeError("`html_text` (or None) and `markdown_text` must be strings")
        self.html = html_text
        self.markdown = markdown_text

    def _repr_html_(self) -> str | None:
        return self.html

    def _repr_markdown_(self) -> str:
        return self.markdown

    def __repr__(self) -> str:
        return self.markdown


def _check_preset(preset: str) -> str:
    if not isinstance(preset, str):
        raise TypeError(f"`preset` must be a string, got {type(preset).__name__}")
    if preset not in PRESETS:
        raise ValueError(f"`preset` must be one of {PRESETS}, got {preset!r}")
    return preset


def is_smoke(preset: str) -> bool:
    """Whether ``preset`` is the CI smoke preset (whose numbers are not findings)."""
    return _check_preset(preset) == "smoke"


def quick(preset: str) -> bool:
    """Whether a chapter's own computations (Monte Carlo draws, benchmarks) take their small sizes:
    at the smoke preset, and at any preset while every training run is capped (``AVGK_RUN_CAP=1``,
    the CI check of a preset's code path, whose numbers are not findings either).

    Example:
        >>> quick("smoke")
        True
    """
    return is_smoke(preset) or run_cap_active()


def _inline(text: str) -> str:
    """HTML of a short text with Markdown-style `code` spans and *emphasis*."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else re.sub(r"\*([^*\s][^*]*)\*", r"<em>\1</em>", p)
                   for i, p in enumerate(parts))  # fmt: skip


def admonition(text: str, *, title: str, kind: str = "note") -> Block:
    """A boxed note in the theme's admonition style (``kind``: note, tip, warning, danger)."""
    if kind not in ("note", "tip", "warning", "danger"):
        raise ValueError(f"`kind` must be note, tip, warning or danger, got {kind!r}")
    if not isinstance(text, str) or not isinstance(title, str):
        raise TypeError("`text` and `title` must be strings")
    body = (
        f'<div class="admonition {kind} avgk-box" style="border-left: 4px solid #c0392b; padding: 0.2em 0.8em;">'
        f'<p class="admonition-title">{html.escape(title)}</p><p>{_inline(text)}</p></div>'
    )
    return Block(body, f"> **{title}.** {text}")


def preset_banner(preset: str) -> Block:
    """A neutral note at the top of a page: which preset executed it and how to read its numbers.

    Put it right after the parameters cell: ``preset_banner(PRESET)``. It never says "not
    findings": a page may show committed references (findings) whatever the preset. The warning
    belongs to the reader's own run, see :func:`your_run`."""
    if is_smoke(preset):
        text = (
            "This page was executed with the `smoke` preset (a few batches, seconds of compute). Committed "
            "references, where the page shows them, are findings whatever the preset; the blocks headed "
            "*Your run* come from this execution and carry their own warning."
        )
    else:
        text = (
            f"This page was executed with the `{preset}` preset. Committed references are labelled with "
            "their seeds; the blocks headed *Your run* come from this execution."
        )
    if run_cap_active():  # a CI build of this preset's code path: say so where nobody can miss it
        return admonition(f"{text} {CAPPED_TEXT}", title=f"Preset: {preset}, capped (CI)", kind="warning")
    return admonition(text, title=f"Preset: {preset}", kind="note")


def _check_seeds(seeds: object) -> list[int]:
    if seeds is None:
        return []
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
        raise TypeError(f"`seeds` must be a sequence of ints or None, got {type(seeds).__name__}")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise TypeError(f"`seeds` must hold ints, got {list(seeds)!r}")
    return list(seeds)


def your_run(preset: str, seeds: Sequence[int] | None = None, *, what: str = "") -> Block:
    """The label of a block computed by the reader's own execution (as opposed to a committed
    reference). Under the smoke preset it is the warning "Smoke run: numbers are not findings";
    otherwise a note naming the preset and the seeds.

    Args:
        preset: the preset of this execution. seeds: its training seeds (``None`` when it trains
            nothing). what: a short description of what the block computes (optional).
    """
    _check_preset(preset)
    seed_list = _check_seeds(seeds)
    if not isinstance(what, str):
        raise TypeError(f"`what` must be a string, got {type(what).__name__}")
    lead = f"{what.rstrip('.')}. " if what else ""
    if is_smoke(preset):
        return admonition(lead + SMOKE_TEXT, title="Your run (smoke run: numbers are not findings)", kind="warning")
    if run_cap_active():
        return admonition(
            lead + CAPPED_TEXT, title=f"Your run ({preset} preset, capped: numbers are not findings)", kind="warning"
        )
    seeds_text = ""
    if seed_list:
        word = "seed" if len(seed_list) == 1 else "seeds"
        seeds_text = f", {word} {', '.join(map(str, seed_list))}"
        if len(seed_list) == 1:
            seeds_text += " (one seed: no interval; add seeds to `SEEDS` for one)"
    return admonition(
        f"{lead}Computed now with the `{preset}` preset{seeds_text}, not read from a committed reference.",
        title=f"Your run ({preset} preset)",
        kind="note",
    )


def glue_bundle(name: str, text: str) -> tuple[dict[str, str], dict[str, Any]]:
    """The display data and metadata with which :func:`glue` stores ``text`` under ``name``: MyST-NB's
    glue format (mime types prefixed by ``application/papermill.record/``, a ``scrapbook`` entry), so
    the book pastes it with ``{glue:md}`name``` (in prose or in a figure caption) while Jupyter
    shows nothing."""
    if not isinstance(name, str) or not name.replace("-", "_").isidentifier():
        raise ValueError(f"`name` must be a non-empty identifier-like string, got {name!r}")
    if not isinstance(text, str) or not text.strip():
        raise TypeError(f"`text` must be a non-empty string, got {text!r}")
    data = {GLUE_MIME_PREFIX + "text/markdown": text, GLUE_MIME_PREFIX + "text/plain": text}
    return data, {"scrapbook": {"name": name, "mime_prefix": GLUE_MIME_PREFIX}}


def glue(name: str, text: str) -> None:
    """Store a sentence computed by the notebook for the book's prose and captions. It returns
    nothing, so a call that ends a cell prints no copy of the sentence under it.

    Captions that state a trend are written as ``... {glue:md}`name` ...`` in the cell's
    ``mystnb.figure.caption`` and the cell computes the text from the plotted data::

        D.glue("bias_trend", f"the bias is {'positive' if b > 0 else 'negative'} at M = 1")
    """
    from IPython.display import display

    data, metadata = glue_bundle(name, text)
    display(data, raw=True, metadata=metadata)


def _format(value: Any, floatfmt: str) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else format(value, floatfmt)
    if isinstance(value, (list, tuple)) and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(format(v, floatfmt) for v in value) + "]"
    return str(value)


def _md_cell(text: str) -> str:
    """One Markdown table cell: pipes escaped (also inside `code` spans, as GFM tables need), ``<``
    escaped outside code spans (never read as an HTML tag), line breaks as spaces."""
    parts = text.replace("|", "\\|").replace("\n", " ").split("`")
    return "`".join(p if i % 2 else p.replace("<", "\\<") for i, p in enumerate(parts))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The book's one table renderer: a Markdown pipe table (the book parses cell outputs and
    chapter text as MyST, so it becomes an HTML table on the page).

    Cells are ``str()``-ed and escaped (:func:`_md_cell`); every row must have one cell per header."""
    if isinstance(header, str) or not header or not all(isinstance(h, str) for h in header):
        raise TypeError(f"`header` must be a non-empty sequence of strings, got {header!r}")
    if isinstance(rows, (str, Mapping)) or any(isinstance(r, (str, Mapping)) or len(r) != len(header) for r in rows):
        raise ValueError(f"`rows` must be sequences of {len(header)} cells (one per header)")
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(str(c)) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | Mapping[str, str] | None = None,
    *,
    floatfmt: str = ".3f",
    caption: str = "",
) -> Block:
    """Rows of dicts as a table (:func:`markdown_table`); ``columns`` picks and orders keys (a
    mapping renames them), ``caption`` is a line above the table.

    Floats are formatted with ``floatfmt``; missing keys show as empty cells."""
    if isinstance(rows, Mapping) or not isinstance(rows, Sequence):
        raise TypeError(f"`rows` must be a sequence of dicts, got {type(rows).__name__}")
    if not all(isinstance(r, Mapping) for r in rows):
        raise TypeError("`rows` must hold dicts")
    if not rows:
        raise ValueError("`rows` is empty: nothing to tabulate")
    format(1.0, floatfmt)  # raises ValueError on a bad format spec
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    names = dict(columns) if isinstance(columns, Mapping) else {c: c for c in columns}
    if not names:
        raise ValueError("`columns` is empty")
    cells = [[_format(r.get(c), floatfmt) for c in names] for r in rows]
    body = markdown_table([str(n) for n in names.values()], cells)
    return Block(None, (f"{caption}\n\n" if caption else "") + body)


def findings(items: Sequence[str], *, title: str = "What this run shows", preset: str | None = None) -> Block:
    """A bulleted box of statements computed by the notebook; under the smoke preset the box
    says that they are not findings."""
    if isinstance(items, str) or not all(isinstance(i, str) for i in items):
        raise TypeError("`items` must be a sequence of strings")
    if not items:
        raise ValueError("`items` is empty")
    smoke = preset is not None and is_smoke(preset)
    heading = f"{title} (smoke run: not findings)" if smoke else title
    lis = "".join(f"<li>{_inline(i)}</li>" for i in items)
    kind = "warning" if smoke else "note"
    title_html = f'<p class="admonition-title">{html.escape(heading)}</p>'
    html_text = f'<div class="admonition {kind} avgk-box">{title_html}<ul>{lis}</ul></div>'
    return Block(html_text, f"**{heading}**\n\n" + "\n".join(f"* {i}" for i in items))


def _strip_docstring(source: str) -> str:
    """``source`` (one def or class) without the docstrings of its functions and classes."""
    tree = ast.parse(source)
    drop: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant):
                if isinstance(first.value.value, str) and len(node.body) > 1:
                    drop.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return "\n".join(line for i, line in enumerate(source.splitlines(), start=1) if i not in drop)


def source_of(obj: Callable[..., Any] | type, *, docstring: bool = False) -> tuple[str, str]:
    """The source code of a library function, method or class and a one-line origin
    (``module.name, file lines a-b``), read with :mod:`inspect` from the installed package."""
    target = inspect.unwrap(obj) if callable(obj) else obj
    if not (inspect.isfunction(target) or inspect.ismethod(target) or inspect.isclass(target)):
        raise TypeError(f"`obj` must be a function, method or class, got {type(obj).__name__}")
    lines, start = inspect.getsourcelines(target)
    source = textwrap.dedent("".join(lines))
    if not docstring:
        source = _strip_docstring(source)
    name = f"{target.__module__}.{target.__qualname__}"
    path = Path(inspect.getsourcefile(target) or "?")
    package = target.__module__.partition(".")[0]  # avgk_lib, or avgk_book for a helper of the book
    parts = (
        path.parts[len(path.parts) - 1 - path.parts[::-1].index(package) :]
        if package in path.parts
        else path.parts[-1:]
    )
    origin = f"{name} ({'/'.join(parts)}, lines {start}-{start + len(lines) - 1})"
    return source.rstrip() + "\n", origin


def show_source(*objs: Callable[..., Any] | type, docstring: bool = False) -> Block:
    """The library's own code of one or more functions/classes, highlighted (docstrings dropped
    unless ``docstring=True``), each headed by where it lives. The book shows this instead of a
    copy, so the text cannot drift from the code that runs."""
    if not objs:
        raise ValueError("`objs`: give at least one function or class")
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    html_parts, md_parts = [], []
    for obj in objs:
        source, origin = source_of(obj, docstring=docstring)
        code = highlight(source, PythonLexer(), HtmlFormatter(cssclass="highlight", nowrap=False))
        html_parts.append(
            f'<div class="avgk-source"><p class="avgk-source-origin">Source: <code>{html.escape(origin)}</code></p>'
            f'<div class="highlight-python notranslate">{code}</div></div>'
        )
        md_parts.append(f"Source: `{origin}`\n\n```python\n{source}```")
    return Block("".join(html_parts), "\n\n".join(md_parts))


def timing_noise_warning(
    rows: Sequence[Mapping[str, Any]], *, control: str = "cross_entropy", factor: float = 2.0
) -> Block | None:
    """A warning box when a benchmark's control loss says the machine was too busy to time.

    ``rows`` are benchmark rows (``C``, ``K`` and milliseconds per loss); ``control`` is a loss whose
    work does not depend on K (cross-entropy). When, at some C, its largest time over the K's exceeds
    ``factor`` times its smallest, the differences between the rows are machine load, not the losses:
    the box says so, with the measured spread. Returns None (nothing shown) otherwise."""
    if isinstance(rows, Mapping) or not rows or not all(isinstance(r, Mapping) for r in rows):
        raise TypeError("`rows` must be a non-empty sequence of benchmark rows (dicts)")
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not factor > 1:
        raise ValueError(f"`factor` must be a number > 1, got {factor!r}")
    if any(control not in r for r in rows):
        raise ValueError(f"`control` {control!r} is not timed in every row")
    spread = {}
    for c in sorted({r["C"] for r in rows}):
        times = [float(r[control]) for r in rows if r["C"] == c]
        spread[c] = max(times) / min(times)
    if max(spread.values()) <= factor:
        return None
    measured = ", ".join(f"{s:.1f}-fold at C = {c}" for c, s in spread.items())
    return admonition(
        f"The time of {control.replace('_', '-')}, whose work does not depend on K, varies with K here: "
        f"{measured} (more than {factor:g}-fold). Other work on this machine disturbed the timings, and "
        "these milliseconds and their ratios are unreadable. Rerun the cell on an idle machine, or read "
        "the committed reference above.",
        title="Timings disturbed by machine load",
        kind="warning",
    )
