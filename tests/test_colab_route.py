"""The Colab route on the CPU: every chapter executes at ``PRESET = "colab"`` with every training run
capped (``AVGK_RUN_CAP=1``, :mod:`avgk_lib.runcap`), on small fakes of its datasets in their real
on-disk formats (CIFAR-100's pickles, Pl@ntNet-300K's folders; :mod:`tests.fakes`). The
configurations, loaders, models and figures a Colab reader meets run on every change; only CUDA
is missing. The fakes and the run cache are shared by the chapters, so a chapter that reruns
another's runs (8 and 9 rerun 7's) reloads them as a reader's would."""

import importlib.util
import json
from pathlib import Path

import pytest

from avgk_lib import runcap
from tests.fakes import write_fake_cifar100, write_fake_plantnet

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
#: the fake CIFAR-100 holds enough images for the capped subsets (validation + training subset)
CIFAR_TRAIN, CIFAR_TEST = 300, 64
assert CIFAR_TRAIN >= runcap.DATA_CAPS["cifar100"]["n_val"] + runcap.DATA_CAPS["cifar100"]["train_subset"]


def _runner():
    spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "tools" / "run_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def colab_folders(tmp_path_factory):
    """A data folder with the fakes where the loaders look for the real data
    (``$AVGK_DATA_DIR/cifar-100-python``, ``$AVGK_DATA_DIR/plantnet_300K``) and a run cache."""
    data = tmp_path_factory.mktemp("colab-data")
    write_fake_cifar100(data, n_train=CIFAR_TRAIN, n_test=CIFAR_TEST)
    write_fake_plantnet(data / "plantnet_300K")
    return {"AVGK_DATA_DIR": str(data), "AVGK_CACHE_DIR": str(tmp_path_factory.mktemp("colab-cache"))}


def test_the_cap_cuts_every_run_short_only_when_set(monkeypatch):
    from avgk_lib.config import TrainConfig
    from avgk_lib.runspec import RunSpec

    cfg = TrainConfig(dataset="cifar100", dataset_options={"train_subset": 20_000}, model="resnet18_cifar", epochs=15)
    monkeypatch.delenv(runcap.RUN_CAP_ENV, raising=False)
    assert runcap.capped(cfg) is cfg and RunSpec.resolve(cfg).config.epochs == 15
    uncapped = RunSpec.resolve(cfg).fingerprint
    monkeypatch.setenv(runcap.RUN_CAP_ENV, "1")
    spec = RunSpec.resolve(cfg)
    c = spec.config
    assert (c.epochs, c.max_batches, c.batch_size) == (1, 2, runcap.BATCH_SIZE)
    assert c.dataset_options == {"train_subset": 128, "n_val": 64}  # n_val: the loader's default 5,000, capped
    assert (c.model, c.lr, c.scheduler) == (cfg.model, cfg.lr, cfg.scheduler)  # the preset's code path is kept
    assert spec.fingerprint != uncapped  # a capped run never passes for the real one in the run cache
    assert runcap.capped(c) == c and RunSpec.resolve(c).fingerprint == spec.fingerprint  # idempotent
    small = TrainConfig(dataset_options={"n_train": 100}, epochs=3, max_batches=1, batch_size=8)
    assert runcap.capped(small).dataset_options == {"n_train": 100, "n_val": 256, "n_test": 256}
    assert (runcap.capped(small).max_batches, runcap.capped(small).batch_size) == (1, 8)  # never raised
    monkeypatch.setenv(runcap.RUN_CAP_ENV, "yes please")
    with pytest.raises(ValueError, match="AVGK_RUN_CAP"):
        runcap.run_cap_active()


def _outputs_text(cell: dict) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            parts.append("\n".join(out.get("traceback", [])))
        text = out.get("text", "")
        parts.append("".join(text) if isinstance(text, list) else text)
        for value in out.get("data", {}).values():
            parts.append("".join(value) if isinstance(value, list) else str(value))
    return "\n".join(parts)


@pytest.mark.slow
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_runs_at_the_colab_preset_capped_on_fake_data(nb, colab_folders, monkeypatch, tmp_path):
    for name, value in {**colab_folders, "AVGK_RUN_CAP": "1", "AVGK_OFFLINE": "1", "AVGK_PROGRESS": "0"}.items():
        monkeypatch.setenv(name, value)  # inherited by the kernel
    target = tmp_path / nb.name
    status = _runner().execute(nb, target, "colab", timeout=600)
    cells = json.loads(target.read_text())["cells"]
    failing = [
        c
        for c in cells
        if "Traceback" in _outputs_text(c) or any(o.get("output_type") == "error" for o in c.get("outputs", []))
    ]
    where = "".join(c["source"] if isinstance(c["source"], str) else "".join(c["source"]) for c in failing[:1])
    assert status == "ok", f"{status}\nin the cell:\n{where}\n{_outputs_text(failing[0]) if failing else ''}"
    assert not failing, f"a cell output shows a traceback:\n{where}\n{_outputs_text(failing[0])}"
    params = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    assert 'PRESET = "colab"' in "".join(params["source"])
    # the page says it was capped: its numbers can never be mistaken for results
    assert any("capped (CI)" in _outputs_text(c) for c in cells[:6])
