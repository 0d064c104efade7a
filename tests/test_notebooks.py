"""Notebook hygiene: the conventions every chapter keeps (checked on the committed sources)."""

import ast
import json
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


def test_there_are_nine_chapters_and_the_toc_lists_them_all():
    assert len(NOTEBOOKS) == 9
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
    assert values["PRESET"] == "cpu" and isinstance(values["SEED"], int)
    assert isinstance(values["SEEDS"], list) and values["DEVICE"] == "auto"


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
    code = [_source(c) for c in _cells(nb) if c["cell_type"] == "code"][2:]  # after bootstrap and parameters
    assert code, "a chapter runs code"
    for src in code:
        defined = [n for n in ast.walk(ast.parse(src)) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert not defined, "helpers belong in avgk_lib, with tests"
        assert len(src.splitlines()) <= 25, f"cell too long:\n{src}"
    assert any("avgk_lib" in src for src in code)
    assert sum("NBVAL_CHECK_OUTPUT" in src for src in code) >= (1 if nb.stem[:2] in {"01", "02", "06"} else 0)
