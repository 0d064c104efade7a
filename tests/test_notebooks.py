"""Notebook hygiene: the conventions every chapter keeps (checked on the committed sources)."""

import ast
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CONFIG = yaml.safe_load((ROOT / "book" / "_config.yml").read_text())
REPO_URL = CONFIG["repository"]["url"].rstrip("/")


def _cells(nb: Path) -> list[dict]:
    return json.loads(nb.read_text())["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_there_are_nine_chapters_a_ledger_and_the_toc_lists_them_all():
    assert len(NOTEBOOKS) == 10
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    assert [f for f in files if f.startswith("notebooks/")] == [f"notebooks/{nb.stem}" for nb in NOTEBOOKS]
    for f in [toc["root"], *files]:
        assert (ROOT / f"{f}.md").exists() or (ROOT / f"{f}.ipynb").exists(), f


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_exactly_one_parameters_cell_with_typed_literals(nb):
    tagged = [c for c in _cells(nb) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    tree = ast.parse(_source(tagged[0]))
    values = {
        t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
    }
    assert values["PRESET"] == "cpu" and isinstance(values.get("SEED", 0), int)
    assert isinstance(values["SEEDS"], list) and values["DEVICE"] == "auto"
    assert isinstance(values.get("OVERRIDES", {}), dict)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(nb):
    for cell in _cells(nb):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_title_badge_and_colab_only_bootstrap(nb):
    cells = _cells(nb)
    title = _source(cells[0])
    assert title.startswith("# ")
    assert (
        f"colab.research.google.com/github/{REPO_URL.removeprefix('https://github.com/')}/blob/main/notebooks/{nb.name}"
        in title
    )
    boot = _source(cells[1])
    assert 'if "google.colab" in sys.modules:' in boot and REPO_URL in boot
    assert "parameters" in cells[2].get("metadata", {}).get("tags", [])


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_cells_are_short_calls_into_the_library(nb):
    cells = [c for c in _cells(nb) if c["cell_type"] == "code"][2:]  # after bootstrap and parameters
    code = [_source(c) for c in cells]
    assert code, "a chapter runs code"
    for cell, src in zip(cells, code, strict=True):
        tags = set(cell.get("metadata", {}).get("tags", []))
        if tags & {"from-scratch", "solution"}:
            # a method written in front of the reader (checked against the library in a later cell), or
            # the code solution of an exercise: these may define functions
            continue
        defined = [n for n in ast.walk(ast.parse(src)) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert not defined, "helpers belong in avgk_lib or the book's package avgk_book, with tests"
        assert len(src.splitlines()) <= 25, f"cell too long:\n{src}"
    assert any("avgk_lib" in src or "avgk_book" in src for src in code)
    pinned = [
        c
        for c in _cells(nb)[3:]
        if c["cell_type"] == "code"
        and ("nbval-check-output" in c["metadata"].get("tags", []) or "NBVAL_CHECK_OUTPUT" in _source(c))
    ]
    assert len(pinned) >= (1 if nb.stem[:2] in {"01", "02", "06"} else 0)


# --- textbook structure (issue 13); the chapters listed here are checked, the others join when rewritten ---
TEXTBOOK = [nb for nb in NOTEBOOKS if nb.stem[:2] in {"01", "02", "03", "04", "05", "06", "07", "08", "09"}]
PLOT_CALL = re.compile(
    r"\bP\.(lines|scatter_classes|gradient_bars|size_histograms|cost_curves|bar_table|"
    r"coverage_size_curves|two_panels|summary_plot|heatmap|frequency_scatter|forest_plot|val_curves|image_grid|"
    r"average_k_curves|per_class_bars)\(|"
    r"plt\.subplots\("
)


@pytest.mark.parametrize("nb", TEXTBOOK, ids=lambda p: p.stem)
def test_chapter_has_objectives_prerequisites_summary_and_exercises_with_hidden_solutions(nb):
    text = "\n".join(_source(c) for c in _cells(nb) if c["cell_type"] == "markdown")
    assert "Learning objectives" in text and "Prerequisites" in text
    assert "## Summary" in text and "## Exercises" in text
    exercises = re.findall(r"\*\*Exercise (\d+)\.\*\*", text)
    solutions = re.findall(r"```\{admonition\} Solution to exercise (\d+)\n:class: dropdown", text)
    assert len(exercises) >= 2 and exercises == solutions


@pytest.mark.parametrize("nb", TEXTBOOK, ids=lambda p: p.stem)
def test_every_figure_has_a_numbered_caption_and_the_banner_follows_the_parameters(nb):
    cells = _cells(nb)
    assert "D.preset_banner(PRESET)" in _source(cells[3])
    names = []
    for cell in cells:
        if cell["cell_type"] == "code" and PLOT_CALL.search(_source(cell)):
            figure = cell["metadata"].get("mystnb", {}).get("figure", {})
            assert len(figure.get("caption", "")) > 40, f"figure cell without a caption:\n{_source(cell)}"
            names.append(figure["name"])
    assert names and len(set(names)) == len(names)


@pytest.mark.parametrize("nb", TEXTBOOK, ids=lambda p: p.stem)
def test_chapter_shows_library_source_where_a_method_is_introduced(nb):
    if nb.stem.startswith("03"):
        pytest.skip("chapter 3 measures code shown in chapter 2")
    assert any("D.show_source(" in _source(c) for c in _cells(nb) if c["cell_type"] == "code")


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runner_folds_injected_parameters_into_the_parameters_cell():
    runner = _tool("run_notebooks")
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "metadata": {"tags": ["parameters"]},
                "source": 'PRESET = "cpu"  # which preset\nSEED = 0',
            },
            {
                "cell_type": "code",
                "metadata": {"tags": ["injected-parameters"]},
                "source": '# Parameters\nPRESET = "smoke"\nEXTRA = [1, 2]\n',
            },
            {"cell_type": "code", "metadata": {}, "source": "print(PRESET)"},
        ]
    }
    assert runner.fold_injected_parameters(nb) == {"PRESET": "smoke", "EXTRA": [1, 2]}
    assert [c["source"] for c in nb["cells"]][1:] == ["print(PRESET)"]
    params = nb["cells"][0]["source"].splitlines()
    assert params[0] == 'PRESET = "smoke"  # which preset' and params[1] == "SEED = 0"
    assert params[2].startswith("EXTRA = [1, 2]")
    assert runner.fold_injected_parameters(nb) == {}  # nothing injected any more
    with pytest.raises(ValueError, match="parameters"):
        runner.fold_injected_parameters(
            {"cells": [{"cell_type": "code", "source": "A = 1", "metadata": {"tags": ["injected-parameters"]}}]}
        )


def test_runner_writes_the_intro_main_result_from_the_ledger(tmp_path):
    from avgk_book.claims import intro_markdown
    from avgk_book.references import load_json_reference

    runner = _tool("run_notebooks")
    source = (ROOT / "book" / "intro.md").read_text()
    assert source.count(runner.MAIN_RESULT_MARKER) == 1  # the committed page carries the marker
    page = tmp_path / "intro.md"
    page.write_text(source)
    text = runner.render_main_result(page)
    staged = page.read_text()
    assert text == intro_markdown(load_json_reference("claims")) and text in staged
    assert runner.MAIN_RESULT_MARKER not in staged and "**Main result**" in staged
    ledger = {"claims": []}
    page.write_text(source)
    assert runner.render_main_result(page, ledger).startswith("_The ledger is empty")
    with pytest.raises(ValueError, match="page"):
        runner.render_main_result(page)  # the marker is gone: a second rendering is refused


def test_runner_writes_the_how_to_preset_table_from_the_catalog(tmp_path):
    from avgk_book.experiments.grid import preset_table

    runner = _tool("run_notebooks")
    source = (ROOT / "book" / "how_to_run.md").read_text()
    assert source.count(runner.PRESET_TABLE_MARKER) == 1
    page = tmp_path / "how_to_run.md"
    page.write_text(source)
    assert runner.render_preset_table(page) == preset_table()
    staged = page.read_text()
    assert runner.PRESET_TABLE_MARKER not in staged and "| chapter | experiment | smoke | cpu |" in staged


def test_site_check_reports_overflow_raw_math_cdn_and_missing_captions():
    site = _tool("check_site")
    clean = {"overflow": [], "untypeset": 0, "raw_math": [], "uncaptioned": [], "images": 1, "mathjax": "3.2.2"}
    local = '<script defer src="_static/mathjax/tex-chtml.js"></script><span class="math">x</span>'
    assert site.check_report("p", local, clean) == []
    cdn = '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>'
    assert site.mathjax_sources(cdn) == ["https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"]
    bad = {
        **clean,
        "overflow": ["pre.x (900 > 600 px): long"],
        "raw_math": ["$$ near: x"],
        "uncaptioned": ["a.png"],
        "untypeset": 2,
        "mathjax": None,
    }
    problems = site.check_report("p", cdn + '<div class="math">', bad)
    assert len(problems) == 6 and any("network" in p for p in problems) and any("caption" in p for p in problems)
    assert site.check_report("p", local, None) == ["p: the in-page check did not run"]


@pytest.mark.skipif(not shutil.which("chromium"), reason="needs Debian's chromium")
def test_site_check_measures_a_bad_page_in_the_browser(tmp_path):
    site = _tool("check_site")
    (tmp_path / "_images").mkdir()
    page = tmp_path / "bad.html"
    page.write_text(
        '<html><body><main style="width: 600px">'
        f'<pre style="white-space: pre; overflow-x: auto">{"x = 1; " * 200}</pre>'
        '<p>Here is raw math: <span class="math">\\(a + b\\)</span></p>'
        '<img src="_images/plot.png" alt="plot">'
        '<figure><img src="_images/ok.png"><figcaption>A caption.</figcaption></figure>'
        "</main></body></html>"
    )
    _, report = site.probe(site._chromium(), page)
    assert report is not None and report["images"] == 2
    assert len(report["overflow"]) == 1 and report["overflow"][0].startswith("pre")
    assert report["untypeset"] == 1 and report["raw_math"] and report["uncaptioned"] == ["image 1"]
    assert not list(tmp_path.glob(".probe-*"))  # the instrumented copy is removed


# --- issue 19, chapters 1-5 (chapters 6-9 join when their owner converts them) ---
READER_PAGES = [nb for nb in NOTEBOOKS if nb.stem[:2] in {"01", "02", "03", "04", "05", "06", "07", "08", "09"}]


@pytest.mark.parametrize("nb", READER_PAGES, ids=lambda p: p.stem)
def test_no_test_markers_or_developer_notes_in_what_the_reader_sees(nb):
    cells = _cells(nb)
    for cell in cells:
        text = _source(cell)
        assert "NBVAL" not in text, "pin outputs with the cell tag 'nbval-check-output', not a comment"
        for phrase in ("this round", "previous round", "and commit it", "committed references use 0, 1, 2"):
            assert phrase not in text, phrase


@pytest.mark.parametrize("nb", READER_PAGES, ids=lambda p: p.stem)
def test_page_opens_neutral_switches_preset_on_colab_and_labels_your_run(nb):
    cells = _cells(nb)
    after = _source(cells[3])
    assert "PRESET = default_preset(PRESET, DEVICE)" in after and "D.preset_banner(PRESET)" in after
    assert after.index("default_preset(PRESET") < after.index("D.preset_banner(PRESET)")
    code = [_source(c) for c in cells if c["cell_type"] == "code"]
    trains = any("run_experiment(" in c or "train(config" in c or "bench_losses(" in c for c in code)
    if trains:
        assert any("D.your_run(PRESET" in c for c in code), "the reader's own run needs its labelled block"


@pytest.mark.parametrize("nb", READER_PAGES, ids=lambda p: p.stem)
def test_objectives_in_one_style(nb):
    text = "\n".join(_source(c) for c in _cells(nb) if c["cell_type"] == "markdown")
    assert "```{admonition} Learning objectives\n:class: tip\nAfter this chapter you can:" in text
    assert "```{admonition} Prerequisites\n:class: note" in text
    assert "**Learning objectives.**" not in text


@pytest.mark.parametrize("nb", READER_PAGES, ids=lambda p: p.stem)
def test_glued_caption_keys_are_glued_by_the_notebook(nb):
    cells = _cells(nb)
    captions = [c["metadata"].get("mystnb", {}).get("figure", {}).get("caption", "") for c in cells]
    used = {key for caption in captions for key in re.findall(r"\{glue:md\}`([^`]+)`", caption)}
    glued = {key for c in cells if c["cell_type"] == "code" for key in re.findall(r'D\.glue\("([^"]+)"', _source(c))}
    assert used <= glued, f"captions paste keys no cell glues: {used - glued}"


@pytest.mark.skipif(not shutil.which("chromium"), reason="needs Debian's chromium")
def test_site_check_finds_broken_words_plumbing_and_shrunk_figures(tmp_path):
    site = _tool("check_site")
    (tmp_path / "_images").mkdir()
    for name, width in (("wide.png", 1100), ("fits.png", 400)):
        (tmp_path / "_images" / name).write_bytes(_png(width, 60))
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<html><body><main style="width: 600px">'
        '<table><tr><td style="width: 40px; overflow-wrap: anywhere">contradicted</td>'
        '<td style="width: 60px">average-K two-head</td></tr></table>'
        '<div class="pst-scrollable-table-container" style="overflow-x: auto"><table><tr>'
        f'<td style="white-space: nowrap">{"cross_entropy " * 20}</td></tr></table></div>'
        "<pre># NBVAL_CHECK_OUTPUT\nx = 1</pre>"
        '<div class="cell_output"><pre>[1/2] dataset=x: val 0.1 (cached; 0s so far)</pre></div>'
        '<figure><img src="_images/wide.png" style="max-width: 100%"><figcaption>Wide.</figcaption></figure>'
        '<figure><img src="_images/fits.png"><figcaption>Fits.</figcaption></figure>'
        "</main></body></html>"
    )
    _, report = site.probe(site._chromium(), bad)
    assert report["broken_words"] == ["contra|dicted"]  # the break after a hyphen is allowed
    assert report["overflow"] == []  # the wide table scrolls inside its own box
    assert [m.split(" near")[0] for m in report["markers"]] == ["NBVAL", "run log"]
    assert len(report["shrunk_figures"]) == 1 and report["shrunk_figures"][0].startswith("wide.png")
    problems = site.check_report("bad", bad.read_text(), report)
    assert sum("broken" in p for p in problems) == 1 and sum("plumbing" in p for p in problems) == 2
    assert sum("below 9 pt" in p for p in problems) == 1
    good = tmp_path / "good.html"
    good.write_text(
        '<html><body><main style="width: 600px"><table><tr><td>contradicted</td></tr></table>'
        '<figure><img src="_images/fits.png"><figcaption>Fits.</figcaption></figure>'
        "<p>the run is cached and reloaded</p></main></body></html>"
    )
    _, report = site.probe(site._chromium(), good)
    assert site.check_report("good", good.read_text(), report) == []


def _png(width: int, height: int) -> bytes:
    """A white RGB PNG of the given size (for the browser checks)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + b"\xff" * (3 * width) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


#: the book package's calls that return a block to show (a table, a box, a listing): lost unless displayed
_SHOWN_BLOCKS = ("D.table", "D.findings", "D.admonition", "D.preset_banner", "D.your_run", "D.show_source")


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_block_a_cell_builds_is_shown(nb):
    """A block built by a statement that does not end its cell is silently dropped (chapter 4 lost
    its Fashion-MNIST table so): such a call must be wrapped in ``display(...)``."""
    lost = []
    for i, cell in enumerate(_cells(nb)):
        if cell["cell_type"] != "code":
            continue
        lines = _source(cell).splitlines()  # a magic (%pip, !ls) keeps its indent as a `pass`
        code = "\n".join(re.sub(r"^(\s*)[%!].*", r"\1pass", line) for line in lines)
        tree = ast.parse(code)
        last = tree.body[-1] if tree.body else None
        for node in ast.walk(tree):
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and node is not last:
                if ast.unparse(node.value.func) in _SHOWN_BLOCKS:
                    lost.append(f"cell {i}: {ast.unparse(node.value.func)}")
    assert not lost, f"blocks built and never shown: {lost}"


def test_the_prose_holds_no_control_character():
    r"""A Python string that writes "\tau" or "\frac" without a raw prefix leaves a tab or a form feed
    in the page (the protocol once read "$<tab>au = 1$"): no Markdown source carries one."""
    pages = sorted((ROOT / "book").glob("*.md"))
    texts = {p.name: p.read_text() for p in pages}
    for nb in NOTEBOOKS:
        for i, cell in enumerate(_cells(nb)):
            if cell["cell_type"] == "markdown":
                texts[f"{nb.stem} cell {i}"] = _source(cell)
    bad = [name for name, text in texts.items() if re.search(r"[\x00-\x08\x0b-\x1f]", text)]
    assert not bad, f"control characters in: {bad}"
