"""The book's display helpers: tables, banners, findings and library source as HTML/Markdown."""

import html.parser
import inspect
import math
import re

import pytest
from scipy import stats

from avgk_book import display as D
from avgk_lib import metrics, ops


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
    from avgk_book import findings as F

    rows = [{"loss": "ce", "seed": s, "acc": 0.5 + 0.01 * s, "best_epoch": 5} for s in range(3)]
    rows += [{"loss": "topk", "seed": s, "acc": 0.6, "best_epoch": 3 + s} for s in range(3)]
    lines = F.results_markdown(rows, ["loss"], {"acc": "accuracy", "best_epoch": "best epoch"}).splitlines()
    ce, topk = lines[2].split(" | "), lines[3].split(" | ")
    assert ce[2] == "5 |" and topk[2].startswith("4.0 ± ") and ce[1].startswith("0.5100 ± ")
    # the same seeds everywhere: no constant column, the caption says how many and what ± is
    assert "seeds |" not in lines[0] and lines[-1] == "Each cell: mean ± half-width of the 95% interval over 3 seeds."
    uneven = F.results_markdown(rows[:5], ["loss"], {"acc": "accuracy"})
    assert uneven.splitlines()[0].endswith("| seeds |") and "half-width of its 95% interval" in uneven


@pytest.mark.parametrize("bad, exc", [("fast", ValueError), (None, TypeError), (1, TypeError)])
def test_presets_are_validated(bad, exc):
    from avgk_book.experiments import PRESETS

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


def _ledger_entry(**changes):
    entry = {
        "id": "P1-noise-topk-vs-ce", "claim": "the noised top-K loss outperforms cross-entropy", "arm": "tuned",
        "experiment": "label_noise", "preset": "cpu", "setting": {"dataset": "synthetic-100", "label_noise": 0.6},
        "K": 5.0, "metric": "test_top5_micro", "unit": "accuracy", "ours": "noised_topk", "rival": "cross_entropy",
        "test": "superiority", "per_seed": {"seeds": [0], "ours": [0.8], "rival": [0.81]}, "n_seeds": 5,
        "ours_mean": 0.80584, "rival_mean": 0.8152, "effect": -0.00936, "ci95": [-0.0134, -0.0053], "p": 0.003,
        "p_holm": 0.047, "verdict": "contradicted", "notes": ["unbracketed tuning of ours (noised_topk): epsilon=1"],
    }  # fmt: skip
    return {**entry, **changes}


def test_results_tables_use_readable_method_names_and_integer_ks():
    from avgk_book import findings as F

    rows = [{"loss": loss, "train_k": k, "seed": s, "acc": 0.5} for loss, k in [("cross_entropy", None),
            ("two_head", 3.0)] for s in range(2)]  # fmt: skip
    table = F.results_markdown(rows, ["loss", "train_k"], {"acc": "accuracy"})
    assert "| cross-entropy | - |" in table and "| two-head | 3 |" in table and "cross_entropy" not in table
    assert table.splitlines()[0].startswith("| method | train_k |")


def test_metric_text_and_readable_notes():
    from avgk_book import findings as F

    assert F.metric_text("test_top5_micro") == "top-5 accuracy (best-validation checkpoint)"
    assert F.metric_text("test_avg1.5_micro") == "average-1.5 accuracy (best-validation checkpoint)"
    assert F.metric_text("test_avg3_tail - test_avg3_head").startswith("average-3 macro accuracy over the rarest")
    assert F.readable_note("merged X (`last_top2_micro`), ours (smooth_topk_svm)") == (
        "merged X (top-2 accuracy (last epoch)), ours (smooth top-K SVM)"
    )
    with pytest.raises(TypeError, match="`metric`"):
        F.metric_text("")
    with pytest.raises(TypeError, match="`note`"):
        F.readable_note(None)


def test_ledger_statements_carry_the_entry_numbers_negative_ones_included():
    from avgk_book import findings as F

    entry = _ledger_entry()
    text = F.entry_markdown(entry, ceiling=0.8594)
    for piece in ["**contradicted**", "tuned arm", "K = 5", "5 seeds", "noised top-K 0.8058", "cross-entropy 0.8152",
                  "-0.94 pp [-1.34, -0.53]", "Holm-adjusted p = 0.047", "Bayes ceiling on these test inputs: 0.8594",
                  "ours (noised top-K)"]:  # fmt: skip
        assert piece in text, piece
    page = F.ledger_findings_markdown([entry, _ledger_entry(verdict="supported", effect=0.02, ci95=[0.01, 0.03])],
                                      ceilings=False)  # fmt: skip
    assert page.startswith("- **P1-noise-topk-vs-ce**: the noised top-K loss outperforms cross-entropy.\n  - **")
    assert page.count("\n  - ") == 2 and page.count("outperforms cross-entropy") == 1
    assert "+2.00 pp [+1.00, +3.00]" in page
    assert "1 contradicted, 1 supported" in page and "The paper arm has no runs in the committed references yet" in page
    both = F.ledger_findings_markdown([entry, _ledger_entry(arm="paper")], ceilings=False)
    assert "(paper and tuned arms)" in both and "no runs" not in both
    gain = _ledger_entry(test="gain", metric="test_avg3_ambiguous - test_avg3_clear", gain_where=-0.0596,
                         gain_where_ci95=[-0.0748, -0.0444], effect=-0.0666, ci95=[-0.0794, -0.0538])  # fmt: skip
    assert "where the claim looks: -5.96 pp [-7.48, -4.44]" in F.entry_markdown(gain)
    one_seed = _ledger_entry(test="equivalence", margin=0.01, ci95=[math.nan, math.nan], ci90=[math.nan, math.nan])
    assert "Equivalence margin ±1 pp, no interval." in F.entry_markdown(one_seed) and "nan" not in F.entry_markdown(
        one_seed
    )
    with pytest.raises(TypeError, match="`entries`"):
        F.ledger_findings_markdown("entries")
    with pytest.raises(TypeError, match="`entry`"):
        F.entry_markdown(None)
    own = F.findings_markdown([entry], "your run")
    assert "your run" in own and "tuned arm" not in own and "-0.94 pp" in own
    assert "In all: 1 entry (tuned arm)" in F.ledger_findings_markdown([entry], ceilings=False)
    with pytest.raises(TypeError, match="`source`"):
        F.findings_markdown([], "")


def test_bayes_ceiling_is_the_oracle_accuracy_of_the_entry_setting():
    from avgk_book import experiments as E
    from avgk_book import findings as F
    from avgk_lib.data import load_dataset
    from avgk_lib.data.oracle import bayes_topk_sets, expected_set_accuracy

    entry = _ledger_entry()
    run = next(r for r in E.expand("label_noise", "cpu", [0]) if r.labels["dataset"] == "synthetic-100")
    posterior = load_dataset("synthetic", **run.config.dataset_options).extra["test_posterior"]
    expected = expected_set_accuracy(posterior, bayes_topk_sets(posterior, 5))
    assert F.bayes_ceiling(entry) == pytest.approx(expected) and 0.5 < expected < 1.0
    assert F.bayes_ceiling(_ledger_entry(setting={"dataset": "fashion_mnist", "label_noise": 0.6})) is None
    assert F.bayes_ceiling(_ledger_entry(metric="test_avg3_ambiguous - test_avg3_clear")) is None
    assert F.bayes_ceiling(_ledger_entry(per_seed=None)) is None
    with pytest.raises(TypeError, match="`entry`"):
        F.bayes_ceiling([])


def test_figures_are_numbered_per_chapter():
    """book/_ext/avgk_fignumbers.py: each chapter's figures restart at 1, prefixed by its number."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "book" / "_ext" / "avgk_fignumbers.py"
    spec = importlib.util.spec_from_file_location("avgk_fignumbers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    numbers = {
        "notebooks/02_noised_topk_operator": {"figure": {"a": (7,), "b": (5,)}},
        "notebooks/10_claims_ledger": {"figure": {"c": (32,)}},
        "book/protocol": {"figure": {"d": (40,)}},
    }
    module.renumber(numbers)
    assert numbers["notebooks/02_noised_topk_operator"]["figure"] == {"b": (2, 1), "a": (2, 2)}
    assert numbers["notebooks/10_claims_ledger"]["figure"] == {"c": (10, 1)}
    assert numbers["book/protocol"]["figure"] == {"d": (1,)}


def test_timing_noise_warning_fires_only_when_the_control_varies_with_k():
    steady = [{"C": 100, "K": k, "cross_entropy": 0.10 + 0.01 * k} for k in (1, 5, 10)]
    assert D.timing_noise_warning(steady) is None
    noisy = steady + [{"C": 1081, "K": 1, "cross_entropy": 0.1}, {"C": 1081, "K": 5, "cross_entropy": 3.0}]
    box = D.timing_noise_warning(noisy, factor=2.0)
    assert "30.0-fold at C = 1081" in box._repr_markdown_() and "1.8-fold at C = 100" in box._repr_markdown_()
    with pytest.raises(ValueError, match="factor"):
        D.timing_noise_warning(steady, factor=1.0)
    with pytest.raises(ValueError, match="control"):
        D.timing_noise_warning(steady, control="focal")


def test_ablation_differences_are_paired_by_seed_and_k():
    from avgk_book import findings as F

    rows = []
    for s in range(3):
        for k in (3.0, 5.0):
            base = 0.6 + 0.01 * s + (0.1 if k == 5.0 else 0.0)
            rows.append({"variant": "default", "seed": s, "train_k": k, f"test_avg{k:g}_micro": base})
            rows.append({"variant": "soft", "seed": s, "train_k": k, f"test_avg{k:g}_micro": base + 0.02 + 0.001 * s})
    (soft,) = F.ablation_differences(rows)
    assert soft["variant"] == "soft" and soft["n3"] == 3 and soft["n5"] == 3
    assert soft["d3"] == pytest.approx(0.021) and soft["d5"] == pytest.approx(0.021)
    half = stats.t.ppf(0.975, 2) * stats.tstd([0.02, 0.021, 0.022]) / 3**0.5
    assert soft["d3_ci95"] == pytest.approx(half)
    with pytest.raises(TypeError, match="`rows`"):
        F.ablation_differences("rows")


def test_ablation_findings_name_the_variants_off_zero_and_the_collapsed_seeds():
    from avgk_book import findings as F

    rows = []
    for s in range(6):
        base = 0.80 + 0.002 * s
        rows.append({"variant": "default", "seed": s, "train_k": 3.0, "test_avg3_micro": base})
        rows.append({"variant": "better", "seed": s, "train_k": 3.0, "test_avg3_micro": base + 0.01 + 0.001 * s})
        lost = 0.35 if s == 4 else base - 0.001
        rows.append({"variant": "fragile", "seed": s, "train_k": 3.0, "test_avg3_micro": lost})
    assert F.collapsed_seeds(rows) == {("fragile", 3.0): [4]}
    text = F.ablation_findings({"rows": rows})
    assert (
        "above the default: better +1.25" in text[0]
        and "Below it: none." in text[0]
        and "Not told apart from it (the interval holds 0): fragile" in text[0]
    )
    assert "fragile at K = 3: seed 4" in text[1]
    healthy = [r for r in rows if r["variant"] != "fragile"]
    assert F.ablation_findings({"rows": healthy})[-1].startswith("No run collapsed")
    assert F.ablation_findings(None) == []
    with pytest.raises(TypeError, match="`rows`"):
        F.collapsed_seeds("rows")
