"""The library stands alone: importing it loads no module of the book's package, and it ships no
reference results (those are package data of ``avgk_book``, beside the chapters)."""

import json
import subprocess
import sys
from pathlib import Path

import avgk_lib

ROOT = Path(__file__).resolve().parents[1]
LIBRARY_MODULES = ["avgk_lib", "avgk_lib.functional", "avgk_lib.losses", "avgk_lib.metrics", "avgk_lib.sets"]
LIBRARY_MODULES += ["avgk_lib.train", "avgk_lib.cli", "avgk_lib.stacked", "avgk_lib.data"]


def test_importing_the_library_loads_nothing_of_the_book():
    code = (
        "import importlib, json, sys\n"
        f"for name in {LIBRARY_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(LIBRARY_MODULES) <= set(loaded)
    assert not [name for name in loaded if name.split(".")[0] == "avgk_book"]
    # nor the book's plotting and statistics stack
    assert not [name for name in loaded if name.split(".")[0] in {"matplotlib", "seaborn", "scipy"}]


def test_the_library_ships_no_reference_results():
    package = Path(avgk_lib.__file__).resolve().parent
    assert not list(package.rglob("*.json")), "reference results belong to the book's package"
    assert not (package / "reference_results").exists()
    assert not (package / "experiments").exists() and not (package / "book").exists()


def test_the_library_source_names_no_module_of_the_book():
    """No import of ``avgk_book`` anywhere in the library (a lazy one inside a function included)."""
    offending = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "avgk_lib").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if line.lstrip().startswith(("import avgk_book", "from avgk_book"))
    ]
    assert not offending


def test_the_book_package_imports_the_library_by_its_name():
    """``avgk_book`` sits beside ``avgk_lib``, not inside it: a relative import that climbs out of
    ``avgk_book`` (``from .. import metrics`` in one of its top-level modules, ``from ...`` below)
    would fail at run time, inside a function only when that function runs."""
    package = ROOT / "book" / "avgk_book"
    offending = []
    for path in sorted(package.rglob("*.py")):
        depth = len(path.relative_to(package).parts)  # 1: avgk_book/x.py, 2: avgk_book/experiments/x.py
        climbs_out = "from " + "." * (depth + 1)
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith(climbs_out):
                offending.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offending, "import these from avgk_lib by name:\n" + "\n".join(offending)
