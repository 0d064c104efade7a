"""The book's display helpers: tables, banners, findings and library source as HTML/Markdown."""

import html.parser
import inspect
import re

import pytest

from avgk_lib import metrics, ops
from avgk_lib.book import display as D


class _Collector(html.parser.HTMLParser):
    """Well-formedness oracle: the standard library's parser, counting open/close tags."""

    def __init__(self):
        super().__init__()
        self.stack, self.cells, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)
        if self.stack and self.stack[-1] in ("td", "th"):
            self.cells.append(data)


def _parse(text):
    p = _Collector()
    p.feed(text)
    p.close()
    assert p.stack == [], f"unclosed tags {p.stack}"
    return p


def _cells(markdown):
    """Cells of the pipe tables in ``markdown`` as the reader sees them: rows split at unescaped
    pipes, the delimiter row dropped, backslash escapes (``\\|``, ``\\<``) undone."""
    out = []
    for line in markdown.splitlines():
        if not line.startswith("|") or set(line) <= set("|-"):
            continue
        parts = re.split(r"(?<!\\)\|", line.strip())[1:-1]
        out += [re.sub(r"\\([|<])", r"\1", part.strip()) for part in parts]
    return out


def test_table_formats_floats_orders_columns_and_escapes():
    rows = [{"method": "a<b", "acc": 0.123456, "n": 3}, {"method": "c|d `x|y`", "acc": float("nan")}]
    block = D.table(rows, {"method": "loss", "acc": "accuracy", "n": "seeds"}, floatfmt=".2f", caption="T")
    assert block.html is None and block._repr_html_() is None  # tables are Markdown only
    assert _cells(block.markdown) == ["loss", "accuracy", "seeds", "a<b", "0.12", "3", "c|d `x|y`", "nan", ""]
    assert "a\\<b" in block.markdown  # never read as an HTML tag
    lines = block.markdown.splitlines()
    assert lines[0] == "T" and lines[2] == "| loss | accuracy | seeds |"
    assert lines[-1] == "| c\\|d `x\\|y` | nan |  |"


def test_table_markdown_renders_as_the_cells_with_the_books_parser():
    markdown_it = pytest.importorskip("markdown_it")
    block = D.table([{"method": "a<b", "code": "`k|v`", "acc": 0.5}], floatfmt=".1f", caption="T")
    html_text = markdown_it.MarkdownIt("commonmark").enable("table").render(block.markdown)
    assert _parse(html_text).cells == ["method", "code", "acc", "a<b", "0.5"]  # (text directly in a cell)
    assert "a&lt;b" in html_text and "<code>k|v</code>" in html_text


def test_table_infers_columns_and_formats_float_lists():
    block = D.table([{"x": 1, "ci": [0.1, 0.25]}], floatfmt=".1f")
    assert _cells(block.markdown) == ["x", "ci", "1", "[0.1, 0.2]"]


def test_markdown_table_checks_its_rows():
    assert D.markdown_table(["a", "b"], [[1, "x"]]).splitlines() == ["| a | b |", "|---|---|", "| 1 | x |"]
    with pytest.raises(ValueError, match="rows"):
        D.markdown_table(["a", "b"], [[1]])
    with pytest.raises(TypeError, match="header"):
        D.markdown_table("ab", [])


@pytest.mark.parametrize(
    "rows, exc",
    [([], ValueError), ({"a": 1}, TypeError), ([1, 2], TypeError), ("abc", TypeError)],
)
def test_table_rejects_bad_rows(rows, exc):
    with pytest.raises(exc, match="rows"):
        D.table(rows)


def test_table_rejects_bad_format_and_columns():
    with pytest.raises(ValueError):
        D.table([{"a": 1.0}], floatfmt="!!")
    with pytest.raises(ValueError, match="columns"):
        D.table([{"a": 1.0}], [])


def test_page_banner_is_neutral_and_the_warning_sits_on_your_run():
    for preset in ("smoke", "cpu", "colab", "gpu"):
        banner = D.preset_banner(preset)
        _parse(banner.html)
        assert "not findings" not in banner.html and "admonition warning" not in banner.html
        assert f"Preset: {preset}" in banner.html and "Your run" in banner.html
    smoke = D.your_run("smoke", [0], what="A network trained now")
    _parse(smoke.html)
    assert (
        "not findings" in smoke.html
        and "admonition warning" in smoke.html
        and "A network trained now. " in smoke.markdown
    )
    cpu = D.your_run("cpu", [0, 1, 2])
    assert "not findings" not in cpu.html and "seeds 0, 1, 2" in cpu.html and "admonition warning" not in cpu.html
    assert "one seed: no interval" in D.your_run("gpu", [3]).markdown
    assert "seed" not in D.your_run("cpu").markdown  # a block that trains nothing names no seed
    assert D.is_smoke("smoke") and not D.is_smoke("gpu")


@pytest.mark.parametrize(
    "kwargs, exc, name",
    [
        ({"preset": "fast"}, ValueError, "preset"),
        ({"preset": "cpu", "seeds": "0"}, TypeError, "seeds"),
        ({"preset": "cpu", "seeds": [0.5]}, TypeError, "seeds"),
        ({"preset": "cpu", "what": 3}, TypeError, "what"),
    ],
)
def test_your_run_rejects_bad_arguments(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        D.your_run(**kwargs)


def test_glue_uses_myst_nb_format_so_the_book_can_paste_it():
    """Oracle: MyST-NB's own extractor finds the value under its name and hides it from the page."""
    import nbformat
    from myst_nb.ext.glue import extract_glue_data_cell

    data, metadata = D.glue_bundle("ch2_trend", "the bias is *negative* at M = 50")
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("display_data", data=data, metadata=metadata)]
    ((key, output),) = extract_glue_data_cell(cell)
    assert key == "ch2_trend" and output["data"]["text/markdown"] == "the bias is *negative* at M = 50"
    assert cell.outputs == []  # nothing shows in the page where it was computed
    with pytest.raises(ValueError, match="name"):
        D.glue_bundle("two words", "x")
    with pytest.raises(TypeError, match="text"):
        D.glue_bundle("key", "  ")


def test_results_markdown_prints_counts_as_integers():
    from avgk_lib.book import findings as F

    rows = [{"loss": "ce", "seed": s, "acc": 0.5 + 0.01 * s, "best_epoch": 5} for s in range(3)]
    rows += [{"loss": "topk", "seed": s, "acc": 0.6, "best_epoch": 3 + s} for s in range(3)]
    lines = F.results_markdown(rows, ["loss"], {"acc": "accuracy", "best_epoch": "best epoch"}).splitlines()
    ce, topk = lines[2].split(" | "), lines[3].split(" | ")
    assert ce[2] == "5" and topk[2].startswith("4.0 ± ") and ce[1].startswith("0.5100 ± ")


@pytest.mark.parametrize("bad, exc", [("fast", ValueError), (None, TypeError), (1, TypeError)])
def test_presets_are_validated(bad, exc):
    from avgk_lib.experiments import PRESETS

    assert D.PRESETS is PRESETS  # one list of presets, the experiments'
    with pytest.raises(exc, match="preset"):
        D.preset_banner(bad)


def test_findings_box_is_relabelled_under_smoke():
    block = D.findings(["gain `+0.01`", "x < y"], preset="smoke")
    p = _parse(block.html)
    assert "smoke run: not findings" in "".join(p.text)
    assert "<code>+0.01</code>" in block.html and "x &lt; y" in block.html
    assert "not findings" not in D.findings(["a"], preset="cpu").html
    with pytest.raises(TypeError, match="items"):
        D.findings("a single string")
    with pytest.raises(ValueError, match="items"):
        D.findings([])


def test_show_source_is_the_library_code_itself_without_docstrings():
    block = D.show_source(ops.noised_topk_unchecked)
    source, origin = D.source_of(ops.noised_topk_unchecked)
    real = inspect.getsource(ops.noised_topk_unchecked)
    # every code line shown is a line of the real source, and the body's statements are all there
    assert all(line in real for line in source.splitlines())
    assert "torch.add(x_work, perturbed, alpha=epsilon, out=perturbed)" in source
    assert '"""' not in source and '"""' in real
    assert origin.startswith("avgk_lib.ops.noised_topk_unchecked (avgk_lib/ops.py, lines ")
    assert "highlight" in block.html and "```python" in block.markdown
    _parse(block.html)


def test_show_source_of_a_class_and_several_objects():
    block = D.show_source(ops._NoisedKthLargest, metrics.average_k_threshold)
    assert "def backward" in block.markdown and "scatter_add_" in block.markdown
    assert block.html.count("avgk-source-origin") == 2
    with_doc, _ = D.source_of(metrics.average_k_threshold, docstring=True)
    without, _ = D.source_of(metrics.average_k_threshold)
    assert len(without) < len(with_doc)


def test_show_source_rejects_non_code():
    with pytest.raises(TypeError, match="obj"):
        D.show_source(42)
    with pytest.raises(ValueError, match="objs"):
        D.show_source()


def test_admonition_validates_kind():
    with pytest.raises(ValueError, match="kind"):
        D.admonition("x", title="t", kind="loud")
