"""Exercises ask for code and CI runs their solutions: every chapter 01-09 has at least one exercise whose
solution is a code cell tagged ``solution`` (executed by papermill with the rest of the notebook, folded by
the book through ``hide-input``)."""

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(nb for nb in (ROOT / "notebooks").glob("*.ipynb") if nb.stem[:2] in {f"0{i}" for i in range(1, 10)})
EXERCISE = re.compile(r"\*\*Exercise (\d+)\.\*\*")


def _cells(nb: Path) -> list[dict]:
    return json.loads(nb.read_text())["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def _solution_cells(nb: Path) -> list[tuple[str, dict]]:
    """(exercise number, cell) of every code cell tagged ``solution``: the number is that of the last
    exercise stated above it; a solution cell above the ``## Exercises`` heading gets ``""``."""
    out, exercises_started, current = [], False, ""
    for cell in _cells(nb):
        text = _source(cell)
        if cell["cell_type"] == "markdown":
            exercises_started = exercises_started or "## Exercises" in text
            numbers = EXERCISE.findall(text) if exercises_started else []
            current = numbers[-1] if numbers else current
        elif "solution" in _tags(cell):
            out.append((current if exercises_started else "", cell))
    return out


def test_the_chapters_are_found():
    assert [nb.stem[:2] for nb in CHAPTERS] == [f"0{i}" for i in range(1, 10)]


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.stem)
def test_an_exercise_asks_for_code_and_its_solution_is_a_code_cell(nb):
    solutions = _solution_cells(nb)
    assert solutions, "no code cell tagged 'solution' after the exercises heading"
    text = "\n".join(_source(c) for c in _cells(nb) if c["cell_type"] == "markdown")
    for number, cell in solutions:
        assert number, "a solution cell must follow the exercise it answers"
        statement = text[text.index(f"**Exercise {number}.**") :]
        assert "(Code)" in statement.split("**Exercise", 2)[1], f"exercise {number} does not say it asks for code"
        assert "hide-input" in _tags(cell), "the book folds solution code (tag 'hide-input')"
        source = _source(cell)
        ast.parse(source)  # plain Python: no magics, so papermill and the reader run the same code
        assert source.strip() and "NBVAL" not in source
