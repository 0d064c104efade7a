"""The packages as a reader gets them: built wheels, installed non-editable, used from outside the repository.

The notebooks' Colab cell runs ``pip install "avgk_lib[train] @ git+..." "avgk_book @ git+...#subdirectory=book"``,
which builds two wheels: the library, which ships no reference results, and the book's package, which
must hold anything the chapters read (the committed reference results). These tests build both wheels
from a copy of the sources, install them with ``pip install --target`` into a temporary folder and
run Python (and one experiment chapter through papermill) from an empty folder outside the
repository, with ``PYTHONPATH`` holding only that folder (torch and the rest come from this
interpreter's site-packages). Each checks that ``avgk_lib`` and ``avgk_book`` were imported from the wheels.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from avgk_lib.data.fashion_mnist import DEBIAN_DIR

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "notebooks" / "04_label_noise.ipynb"  # an experiment chapter that reads a committed reference
CHAPTER_REFERENCE = ("label_noise", "cpu")
PROBE = "AVGK_WHEEL_PROBE "


def _pip(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"pip {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"


def _copy_checkout(source: Path) -> None:
    """What ``pip install git+URL`` builds from: the files git knows (tracked, or new and not ignored)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.split("\0")
    except (OSError, subprocess.SubprocessError):  # not a git checkout (e.g. an sdist): the package itself
        packages = [ROOT / "avgk_lib", ROOT / "book" / "avgk_book"]
        listed = [str(p.relative_to(ROOT)) for d in packages for p in d.rglob("*") if "__pycache__" not in p.parts]
        listed += ["pyproject.toml", "README.md", "book/pyproject.toml"]
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    """Freshly built wheels of the library (the repository root) and the book's package (``book/``)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    _copy_checkout(source)
    # without setuptools in this interpreter pip fetches it into an isolated build environment
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    built = {}
    for name, folder in (("avgk_lib", source), ("avgk_book", source / "book")):
        _pip("wheel", "--no-deps", *isolation, "--wheel-dir", str(base / "dist"), str(folder), cwd=base)
        found = sorted((base / "dist").glob(f"{name}-*.whl"))
        assert len(found) == 1, found
        built[name] = found[0]
    return built


@pytest.fixture(scope="module")
def wheel_target(wheels, tmp_path_factory) -> Path:
    """A folder holding ``avgk_lib`` and ``avgk_book`` installed (not editable) from their wheels."""
    target = tmp_path_factory.mktemp("wheel-target") / "target"
    _pip("install", "--no-deps", "--no-compile", "--target", str(target), *map(str, wheels.values()), cwd=target.parent)
    return target


def test_the_library_wheel_ships_no_reference_results_and_no_book_module(wheels):
    """A user of the losses installs the library alone: no study, no chapter helper, no JSON."""
    library = zipfile.ZipFile(wheels["avgk_lib"]).namelist()
    assert "avgk_lib/functional.py" in library
    assert not [name for name in library if name.endswith(".json") or "reference_results" in name]
    assert not [name for name in library if name.startswith("avgk_book")]
    book = zipfile.ZipFile(wheels["avgk_book"]).namelist()
    assert "avgk_book/reference_results/claims.json" in book
    assert not [name for name in book if name.startswith("avgk_lib/")]


def _outside(tmp_path: Path, target: Path) -> tuple[Path, dict[str, str]]:
    """An empty working folder outside the repository and an environment that sees only the wheel."""
    cwd = tmp_path / "reader"
    cwd.mkdir()
    assert ROOT not in cwd.parents
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "AVGK_", "JUPYTER_PATH"))}
    env.update(
        PYTHONPATH=str(target),
        AVGK_CACHE_DIR=str(tmp_path / "cache"),
        AVGK_DATA_DIR=str(tmp_path / "data"),
        AVGK_OFFLINE="1",
    )
    return cwd, env


def test_wheel_ships_the_references_and_imports_from_outside(tmp_path, wheel_target):
    committed = sorted(p.stem for p in (ROOT / "book" / "avgk_book" / "reference_results").glob("*.json"))
    assert committed, "the repository commits reference results"
    code = (
        "import json, avgk_lib, avgk_book, avgk_book.references as R, avgk_book.experiments as E\n"
        "names = R.reference_names()\n"
        "runs = [n for n in names if not n.startswith(('bench', 'claims'))]\n"
        "experiments = {n: E.load_reference(*n.rsplit('_', 1)) is not None for n in runs}\n"
        "bench = R.load_json_reference('bench_losses_cpu') is not None\n"
        "print(json.dumps({'file': avgk_lib.__file__, 'book': avgk_book.__file__, 'names': names,\n"
        "                  'experiments': experiments, 'bench': bench}))\n"
    )
    cwd, env = _outside(tmp_path, wheel_target)
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(found["file"]).resolve().is_relative_to(wheel_target.resolve()), found["file"]
    assert Path(found["book"]).resolve().is_relative_to(wheel_target.resolve()), found["book"]
    assert found["names"] == committed
    assert found["experiments"] and all(found["experiments"].values()), found["experiments"]
    assert found["bench"]


def _probe_cell() -> dict:
    source = (
        "import json as _json, avgk_lib as _avgk, avgk_book as _book, avgk_book.experiments as _E\n"
        f"print({PROBE!r} + _json.dumps({{'file': _avgk.__file__, 'book': _book.__file__, "
        f"'reference': _E.load_reference(*{CHAPTER_REFERENCE!r}) is not None}}))\n"
    )
    return {"cell_type": "code", "metadata": {}, "source": source, "outputs": [], "execution_count": None}


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("papermill") is None, reason="papermill is in the [book] extra")
@pytest.mark.skipif(not DEBIAN_DIR.exists(), reason="offline chapter data: apt-get install dataset-fashion-mnist")
def test_an_experiment_chapter_runs_from_the_wheel_outside_the_repository(tmp_path, wheel_target):
    """Chapter 4 at the smoke preset, executed by papermill from an empty folder; a probe cell appended to
    the copy reports which ``avgk_lib`` and ``avgk_book`` the kernel imported and whether it found the
    chapter's reference."""
    cwd, env = _outside(tmp_path, wheel_target)
    notebook = json.loads(CHAPTER.read_text())
    notebook["cells"].append(_probe_cell())
    source, executed = cwd / CHAPTER.name, tmp_path / "executed.ipynb"
    source.write_text(json.dumps(notebook))
    command = [sys.executable, "-m", "papermill", str(source), str(executed), "-p", "PRESET", "smoke"]
    command += ["--cwd", str(cwd), "--kernel", "python3", "--no-progress-bar", "--execution-timeout", "600"]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    outputs = [
        "".join(out.get("text", ""))
        for cell in json.loads(executed.read_text())["cells"]
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream"
    ]
    probe = [line for text in outputs for line in text.splitlines() if line.startswith(PROBE)]
    assert len(probe) == 1, outputs[-3:]
    found = json.loads(probe[0][len(PROBE) :])
    assert Path(found["file"]).resolve().is_relative_to(wheel_target.resolve()), found["file"]
    assert Path(found["book"]).resolve().is_relative_to(wheel_target.resolve()), found["book"]
    assert found["reference"] is True
    assert not any("none committed" in text for text in outputs)


# ------------------------------------------------------------- references and benchmarks: provenance


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_write_reference_adds_the_provenance_of_the_training_references(tmp_path):
    import torch

    from avgk_book.references import reference_dir, write_reference
    from avgk_lib.train import provenance

    path = write_reference("bench_x_cpu", {"benchmark": "x", "rows": [1, 2]}, device="cpu", directory=tmp_path)
    assert path == tmp_path / "bench_x_cpu.json" and [p.name for p in tmp_path.iterdir()] == [path.name]
    written = json.loads(path.read_text())
    assert written["benchmark"] == "x" and written["rows"] == [1, 2] and written["created"]
    assert written["provenance"] == provenance(torch.device("cpu"), 1)  # same block, same function
    assert reference_dir() == ROOT / "book" / "avgk_book" / "reference_results"  # the default: the book package's
    for stem in ("", "a/b", "x.json"):
        with pytest.raises(ValueError, match="stem"):
            write_reference(stem, {}, device="cpu", directory=tmp_path)
    with pytest.raises(TypeError, match="payload"):
        write_reference("x", [1], device="cpu", directory=tmp_path)
    with pytest.raises(ValueError, match="provenance"):
        write_reference("x", {"provenance": {}}, device="cpu", directory=tmp_path)


@pytest.mark.slow
def test_loss_benchmark_json_carries_provenance(tmp_path):
    bench = _load_script(ROOT / "benchmarks" / "bench_losses.py")
    out = tmp_path / "bench_losses_cpu.json"
    assert bench.main(["--min-run-time", "0.001", "--batch", "8", "--skip-calibration", "--json", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["benchmark"] == "bench_losses" and written["losses"]
    assert {"git_commit", "torch", "device_name"} <= set(written["provenance"])
    assert written["provenance"]["device"] == "cpu" and written["settings"]["batch"] == 8
