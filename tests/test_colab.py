"""Colab helpers, tested off Colab with a fake ``google.colab`` module (no Drive, no network)."""

import importlib.util
import json
import re
import shutil
import sys
import types
from pathlib import Path

import pytest

from avgk_book import colab
from avgk_lib.data import cache_dir, data_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_env(monkeypatch):
    """use_drive sets these variables: register them so that monkeypatch restores them afterwards."""
    for name in ("AVGK_CACHE_DIR", "AVGK_DATA_DIR"):
        monkeypatch.setenv(name, f"/untouched/{name}")


@pytest.fixture
def fake_colab(monkeypatch, tmp_path):
    """A ``google.colab`` whose ``drive.mount`` records the call and creates ``<mount>/MyDrive``."""
    mounts: list[str] = []

    def mount(where: str) -> None:
        mounts.append(where)
        (Path(where) / "MyDrive").mkdir(parents=True)

    module = types.ModuleType("google.colab")
    module.drive = types.SimpleNamespace(mount=mount)
    monkeypatch.setitem(sys.modules, "google.colab", module)
    return tmp_path / "drive", mounts


def test_in_colab_follows_the_google_colab_module(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert colab.in_colab() is False
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert colab.in_colab() is True


def test_use_drive_on_colab_mounts_once_and_points_the_library_there(clean_env, fake_colab):
    mount_point, mounts = fake_colab
    folder = mount_point / "MyDrive" / "avgk"
    chosen = colab.use_drive(folder, mount_point=mount_point)
    assert mounts == [str(mount_point)]
    assert chosen == {"AVGK_CACHE_DIR": folder / "cache", "AVGK_DATA_DIR": folder / "data"}
    assert cache_dir() == folder / "cache" and data_dir() == folder / "data"
    assert (folder / "cache").is_dir() and (folder / "data").is_dir()
    colab.use_drive(folder, mount_point=mount_point)  # already mounted (a second run of the cell)
    assert mounts == [str(mount_point)]


def test_use_drive_can_leave_the_data_on_local_disk(clean_env, fake_colab):
    mount_point, _ = fake_colab
    chosen = colab.use_drive(mount_point / "MyDrive" / "runs", mount_point=mount_point, data=False)
    assert list(chosen) == ["AVGK_CACHE_DIR"]
    assert str(data_dir()) == "/untouched/AVGK_DATA_DIR"
    assert cache_dir() == mount_point / "MyDrive" / "runs" / "cache"


def test_use_drive_off_colab(clean_env, monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    with pytest.raises(RuntimeError, match="only be mounted on Colab"):
        colab.use_drive(tmp_path / "drive" / "MyDrive" / "avgk", mount_point=tmp_path / "drive")
    assert str(cache_dir()) == "/untouched/AVGK_CACHE_DIR"
    # a local folder is simply used: the same notebook runs off Colab
    colab.use_drive(tmp_path / "local", mount_point=tmp_path / "drive")
    assert cache_dir() == tmp_path / "local" / "cache" and data_dir() == tmp_path / "local" / "data"


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"path": 3}, TypeError, "path"),
        ({"path": ""}, TypeError, "path"),
        ({"mount_point": None}, TypeError, "mount_point"),
        ({"data": "yes"}, TypeError, "data"),
        ({"data": False, "cache": False}, ValueError, "cache"),
    ],
)
def test_use_drive_rejects_bad_arguments(clean_env, tmp_path, kwargs, error, name):
    kwargs = {"path": tmp_path / "x", **kwargs}
    with pytest.raises(error, match=name):
        colab.use_drive(**kwargs)
    assert str(cache_dir()) == "/untouched/AVGK_CACHE_DIR"


# ------------------------------------------------------------------ the repository URL in one place


def _load_set_repo_url():
    spec = importlib.util.spec_from_file_location("set_repo_url", ROOT / "tools" / "set_repo_url.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _copy_book_sources(root: Path) -> None:
    """The files that spell the URL, copied out of the checkout (no git there: the fallback file list)."""
    (root / "notebooks").mkdir(parents=True)
    shutil.copytree(ROOT / "book", root / "book")
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        shutil.copy2(nb, root / "notebooks" / nb.name)


def test_set_repo_url_rewrites_config_badges_install_cells_and_docs(tmp_path, capsys):
    tool = _load_set_repo_url()
    _copy_book_sources(tmp_path)
    old = tool.current_url(tmp_path)
    assert old == tool.current_url(ROOT) and tool.URL_PATTERN.fullmatch(old)
    old_slug = old.removeprefix("https://github.com/")
    new = "https://github.com/someone/avgk-fork"
    assert tool.main([new, "--root", str(tmp_path), "--dry-run"]) == 0
    assert tool.current_url(tmp_path) == old  # a dry run writes nothing
    assert tool.main([new + "/", "--root", str(tmp_path)]) == 0
    assert tool.current_url(tmp_path) == new
    for nb in sorted((tmp_path / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]  # still valid JSON
        title, boot = "".join(cells[0]["source"]), "".join(cells[1]["source"])
        assert f"colab.research.google.com/github/someone/avgk-fork/blob/main/notebooks/{nb.name}" in title
        assert f"git+{new}" in boot
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix in {".md", ".yml", ".ipynb"}:
            text = path.read_text()
            assert old not in text and f"github/{old_slug}/" not in text, path
    assert new in (tmp_path / "book" / "how_to_run.md").read_text()
    capsys.readouterr()
    assert tool.main([new, "--root", str(tmp_path)]) == 0  # idempotent
    assert "nothing to change" in capsys.readouterr().out


def test_set_repo_url_rejects_a_non_github_url(tmp_path, capsys):
    tool = _load_set_repo_url()
    _copy_book_sources(tmp_path)
    assert tool.main(["https://example.com/x", "--root", str(tmp_path)]) == 2
    assert "OWNER/NAME" in capsys.readouterr().err
    (tmp_path / "book" / "_config.yml").write_text("title: x\n")
    assert tool.main(["https://github.com/a/b", "--root", str(tmp_path)]) == 2
    assert "repository" in capsys.readouterr().err


# ------------------------------------------------------------------ what a notebook does on Colab


@pytest.mark.parametrize("cuda", [True, False])
def test_default_preset_reads_cpu_as_colab_only_on_a_colab_gpu(monkeypatch, capsys, cuda):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert colab.default_preset("cpu") == "cpu"  # off Colab: the literal, whatever the GPU
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert colab.default_preset("cpu") == ("colab" if cuda else "cpu")
    assert ('PRESET = "colab"' in capsys.readouterr().out) is cuda  # the page says so
    assert colab.default_preset("cpu", "cpu") == "cpu"  # DEVICE = "cpu" keeps the cpu preset
    for explicit in ("smoke", "colab", "gpu"):
        assert colab.default_preset(explicit, "cuda") == explicit


@pytest.mark.parametrize(
    "args, error, name",
    [(("fast",), ValueError, "preset"), ((None,), TypeError, "preset"), (("cpu", "tpu"), ValueError, "device")],
)
def test_default_preset_rejects_bad_arguments(args, error, name):
    with pytest.raises(error, match=name):
        colab.default_preset(*args)


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _install_cell(nb: Path) -> str:
    return "".join(json.loads(nb.read_text())["cells"][1]["source"])


def _run_install_cell(source: str) -> list[tuple[str, str]]:
    """Execute the cell as IPython would (its ``%pip`` line becomes a ``run_line_magic`` call) with the
    magic intercepted: returns the (magic, arguments) pairs it would have run."""
    from IPython.core.inputtransformer2 import TransformerManager

    calls: list[tuple[str, str]] = []
    shell = types.SimpleNamespace(run_line_magic=lambda name, line, *_: calls.append((name, line)))
    exec(TransformerManager().transform_cell(source), {"get_ipython": lambda: shell})
    return calls


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_install_cell_installs_the_library_and_the_book_package_on_colab_only(nb, monkeypatch):
    url = _load_set_repo_url().current_url(ROOT)
    source = _install_cell(nb)
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    both = f'install -q "avgk_lib[train] @ git+{url}" "avgk_book @ git+{url}#subdirectory=book"'
    assert _run_install_cell(source) == [("pip", both)]
    monkeypatch.delitem(sys.modules, "google.colab")
    assert _run_install_cell(source) == []  # locally the cell installs nothing


def test_book_package_holds_what_the_notebooks_need_and_no_book_tooling():
    """What the Colab cell installs besides the library: the book's package (book/pyproject.toml),
    whose dependencies are what a chapter needs; the library itself depends on none of it."""
    import tomllib

    book = tomllib.loads((ROOT / "book" / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=\[ ]", req, maxsplit=1)[0] for req in book["dependencies"]}
    assert book["name"] == "avgk_book"
    assert {"avgk_lib", "matplotlib", "seaborn", "scipy", "pytopk", "difftopk"} <= names
    assert "avgk_lib[train]" in book["dependencies"]
    assert not names & {"jupyter-book", "papermill", "nbval", "nbstripout", "ipykernel", "pytest"}
    library = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "avgk_book" not in " ".join(library["dependencies"])
