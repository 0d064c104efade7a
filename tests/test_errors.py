"""Every remaining mistake ends in one line (issue 18): values checked before any work, each message
naming the flag or argument the user wrote; environment problems (data and cache folders, downloads,
worker errors, symbolic-link loops, Ctrl-C) as one line. Sized tiny: synthetic data of a few hundred
samples, fake Fashion-MNIST files of 120 images, one epoch; nothing downloads."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from avgk_book import experiments as E
from avgk_book.cli import main as book_main
from avgk_book.experiments import grid
from avgk_lib import build as build_module
from avgk_lib import config as config_module
from avgk_lib.cli import main
from avgk_lib.config import ConfigError, TrainConfig
from avgk_lib.data import base
from avgk_lib.data import fashion_mnist as fm
from avgk_lib.runspec import RunSpec

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--n-train", "300", "--n-val", "100", "--n-test", "100", "--n-classes", "8", "--dim", "4", "--n-groups", "2"]
QUICK = ["--dataset", "synthetic", *TINY, "--epochs", "1", "--batch-size", "64", "--no-progress"]
GIB = 2**30


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    """Run the CLI in this process (``run``: the book's, ``python -m avgk_book``): (exit code, stderr)."""
    try:
        code = (book_main if argv[0] == "run" else main)(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def _one_line(code: int, err: str, *words: str, exit_code: int = 2) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == exit_code, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture
def eight_gib(monkeypatch):
    """A machine with 8 GiB available, whatever this one has (memory checks are then deterministic)."""
    monkeypatch.setattr(base, "available_memory", lambda: 8 * GIB)
    monkeypatch.setattr(build_module, "available_memory", lambda: 8 * GIB)


# ----------------------------------------------------------------------------- train flags, synthetic


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--select-metric", "top02_micro"], ["--select-metric", "top2_micro"]),
        (["--select-metric", "avg1.50_micro", "--eval-ks", "1.5"], ["--select-metric", "avg1.5_micro"]),
        (["--model", "small_cnn"], ["--model", "small_cnn", "shape (4,)", "mlp"]),
        (["--model", "resnet50"], ["--model", "resnet50"]),
        (["--lr", "1e39"], ["--lr", "float32"]),
        (["--weight-decay", "1e300"], ["--weight-decay", "float32"]),
        (["--loss", "noised_topk", "--k", "2", "--epsilon", "1e308"], ["--epsilon", "float32"]),
        (["--max-radius", "1e39"], ["--max-radius", "float32"]),
        (["--lr", "1e30", "--loss-lr-multiplier", "1e10"], ["--loss-lr-multiplier", "float32"]),
        (["--seed", str(2**63)], ["--seed", "2**63"]),
        (["--seed", "99999999999999999999"], ["--seed", "2**63"]),
        (["--task-seed", str(2**63)], ["--task-seed", "2**63"]),
        (["--sample-seed", str(2**64)], ["--sample-seed", "2**63"]),
        (["--n-train", str(10**11)], ["--n-train", "memory", "GiB"]),
        (["--loss", "noised_topk", "--k", "2", "--n-samples", str(10**8)], ["--n-samples", "memory"]),
        (["--label-noise", "-0.5"], ["--label-noise", "[0, 1]"]),
        (["--imbalance-ratio", "0.5"], ["--imbalance-ratio", ">= 1"]),
        (["--out", ""], ["--out", "empty"]),
        (["--augment", "crop_flp"], ["--augment", "crop_flip"]),
        (["--noise-groups", "semantik"], ["--noise-groups", "semantic"]),
        # issue 31: a flag the chosen loss/scheduler/optimizer/model ignores; subnormal values
        (["--scheduler", "none", "--milestones", "2"], ["--milestones", "step scheduler", "'none'"]),
        (["--model", "mlp", "--pretrained"], ["--pretrained", "resnet50"]),
        (["--loss", "focal", "--eval-head", "combined"], ["--eval-head", "two-head", "focal"]),
        (["--optimizer", "adamw", "--momentum", "0"], ["--momentum", "adamw"]),
        (["--lr-gamma", "1e-45", "--scheduler", "step"], ["--lr-gamma", "underflows"]),
        (["--label-noise", "1e-42"], ["--label-noise", "underflows"]),
    ],
)
def test_train_values_are_checked_naming_the_flag(args, words, capsys, tmp_path, eight_gib):
    out = tmp_path / "run"
    argv = ["train", *QUICK, "--out", str(out), *args] if "--out" not in args else ["train", *QUICK, *args]
    _one_line(*_cli(argv, capsys), *words)
    assert not (out / "last.pt").exists() and not Path("results.json").exists()


def test_select_metric_in_its_written_form_is_accepted():
    assert RunSpec.resolve(TrainConfig(select_metric="top2_micro")).select == "top2_micro"
    with pytest.raises(ConfigError, match="write it avg1.5_macro"):
        TrainConfig(select_metric="avg01.5_macro", eval_ks=[1.5]).validate()


def test_model_is_checked_against_every_dataset_input_shape():
    TrainConfig(dataset="fashion_mnist", model="small_cnn").validate()
    TrainConfig(dataset="fashion_mnist", model="mlp").validate()
    TrainConfig(dataset="plantnet300k", model="resnet50").validate()
    with pytest.raises(ConfigError, match="3 channels") as info:
        TrainConfig(dataset="fashion_mnist", model="resnet50").validate()
    assert info.value.field == "model"
    with pytest.raises(ConfigError, match="at least 4x4"):
        TrainConfig(dataset="plantnet300k", model="small_cnn", dataset_options={"resize": 3, "crop": 3}).validate()


def test_dataset_options_of_fixed_values_are_literal_and_checked():
    types = config_module.dataset_option_types("fashion_mnist")
    assert set(types["augment"].__args__) == {"crop_flip", "crop", "flip", "none"}
    assert set(types["noise_groups"].__args__) == {"blocks", "semantic", "pairs"}
    for key, value in (("augment", "crop_flp"), ("noise_groups", "Blocks"), ("n_val", None)):
        with pytest.raises(ConfigError) as info:
            TrainConfig(dataset="fashion_mnist", dataset_options={key: value}).validate()
        assert info.value.field == key
    TrainConfig(dataset="fashion_mnist", dataset_options={"augment": None, "train_subset": None}).validate()
    with pytest.raises(ConfigError, match="2\\*\\*63") as info:
        TrainConfig(dataset_options={"sample_seed": 2**63}).validate()
    assert info.value.field == "sample_seed"


def test_memory_estimates_are_skipped_when_the_memory_is_unknown(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(base, "available_memory", lambda: None)
    monkeypatch.setattr(build_module, "available_memory", lambda: None)
    base.check_memory(10**30, "n_train", "everything")  # unknown: no check
    with pytest.raises(ValueError, match="`n_train` is too large"):
        base.check_memory(2 * GIB, "n_train", "the data", available=GIB)
    code, err = _cli(["train", *QUICK, "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="no /proc/meminfo on this system")
def test_available_memory_is_read_from_the_system():
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
    free = base.available_memory()
    assert free is not None and 0 < free <= int(fields["MemTotal"].split()[0]) * 1024


# --------------------------------------------------------------------- Fashion-MNIST flags (fake files)


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_fake_fmnist(folder: Path, n_train: int = 120, n_test: int = 30) -> None:
    """The four idx files (gzipped) of a tiny Fashion-MNIST in ``folder``."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": np.arange(n_train, dtype=np.uint8) % 10,
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": np.arange(n_test, dtype=np.uint8) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        (folder / f"{fm.FILES[key]}.gz").write_bytes(gzip.compress(_idx(array)))


@pytest.fixture
def fake_fmnist(tmp_path, monkeypatch) -> Path:
    """A data root holding a tiny Fashion-MNIST; Debian's copy hidden."""
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian")
    root = tmp_path / "data"
    write_fake_fmnist(root / "FashionMNIST" / "raw")
    return root


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--imbalance-ratio", "0.01"], ["--imbalance-ratio", ">= 1"]),
        (["--imbalance-ratio", "-5"], ["--imbalance-ratio", ">= 1"]),
        (["--label-noise", "1.5"], ["--label-noise", "[0, 1]"]),
        (["--n-val", "120"], ["--n-val", "< 120"]),
        (["--label-noise", "0.2", "--noise-block-size", "1"], ["--noise-block-size", ">= 2"]),
        (["--augment", "crop_flp"], ["--augment"]),
        (["--model", "resnet50"], ["--model", "3 channels"]),
        (["--split-seed", str(2**63)], ["--split-seed", "2**63"]),
    ],
)
def test_fashion_mnist_values_are_checked_naming_the_flag(args, words, capsys, tmp_path, fake_fmnist):
    argv = ["train", "--dataset", "fashion_mnist", "--root", str(fake_fmnist), "--n-val", "20", "--epochs", "1"]
    argv += ["--batch-size", "16", "--no-progress", "--out", str(tmp_path / "run"), *args]
    line = _one_line(*_cli(argv, capsys), *words)
    assert "--batch-size" not in line
    assert not (tmp_path / "run" / "last.pt").exists()


def test_no_loader_has_a_free_text_option():
    """Every str option of every loader has a fixed set of values, declared as a ``Literal`` (so the CLI
    offers them as choices and the configuration rejects a misspelling); paths are ``Path``."""
    from avgk_lib.data import LOADERS

    for dataset in LOADERS:
        for name, kind in config_module.dataset_option_types(dataset).items():
            assert kind is not str, f"{dataset}: option {name!r} is a free str; declare its values as a Literal"


def test_fashion_mnist_augment_none_turns_augmentation_off(fake_fmnist):
    from avgk_lib.data import load_dataset

    assert load_dataset("fashion_mnist", root=fake_fmnist, n_val=20, augment="none").augment is None
    assert load_dataset("fashion_mnist", root=fake_fmnist, n_val=20, augment="flip").augment == "flip"


# ---------------------------------------------------------------------------- run_experiment arguments


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"seeds": 3}, TypeError, ["`seeds`"]),
        ({"seeds": "01"}, TypeError, ["`seeds`"]),
        ({"seeds": [2**63]}, ValueError, ["`seeds`", "2**63"]),
        ({"seeds": [-1]}, ValueError, ["`seeds`"]),
        ({"overrides": 3}, TypeError, ["`overrides`"]),
        ({"overrides": {"seed": 5}}, ValueError, ["'seed'", "seeds="]),
        ({"overrides": {"nosuch": 1}}, ValueError, ["'nosuch'", "epochs"]),
        ({"overrides": {"dataset_options": 3}}, TypeError, ["'dataset_options'"]),
        ({"overrides": {"dataset_options": {"sample_seed": 4}}}, ValueError, ["'sample_seed'", "seeds="]),
        ({"overrides": {"dataset_options": {"nosuch": 4}}}, ValueError, ["`nosuch`", "run dataset="]),
        ({"chosen": 3}, TypeError, ["`chosen`"]),
        ({"chosen": {"dataset=nosuch/cross_entropy": {"lr": 0.1}}}, ValueError, ["dataset=nosuch/cross_entropy"]),
    ],
)
def test_expand_checks_every_argument_naming_it(kwargs, error, words):
    arguments = {"seeds": [0], "overrides": None, "chosen": None, **kwargs}
    with pytest.raises(error) as info:
        E.expand("average_k", "cpu", arguments["seeds"], arguments["chosen"], arguments["overrides"])
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_a_chosen_value_must_be_a_grid_point():
    key = grid.tuning_keys("average_k", "cpu")[0]
    with pytest.raises(TypeError, match="`chosen` entry"):
        E.expand("average_k", "cpu", [0], chosen={key: 0.1})
    (run, *_) = [r for r in E.expand("average_k", "cpu", [0], chosen={key: {"lr": 0.37}}) if r.config.lr == 0.37]
    assert run.config.lr == 0.37


def test_device_and_seed_overrides_belong_to_their_own_arguments():
    """``run_experiment`` passes its ``device=`` to expand as an override: expand accepts it from there, and
    :func:`check_overrides` (which run_experiment applies to the user's dict) rejects it from a user."""
    assert all(r.config.device == "cpu" for r in E.expand("average_k", "cpu", [0], overrides={"device": "cpu"}))
    with pytest.raises(ValueError, match="device="):
        grid.check_overrides({"device": "cuda"})
    with pytest.raises(ValueError, match="seeds="):
        grid.check_overrides({"seed": 5})
    assert grid.check_overrides({"epochs": 2}) == {"epochs": 2} and grid.check_overrides(None) == {}


def test_run_experiment_rejects_seed_overrides_and_unknown_chosen_keys_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("AVGK_CACHE_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="seeds="):
        E.run_experiment("two_head_ablation", "smoke", [0, 1], overrides={"seed": 5}, progress=False)
    with pytest.raises(ValueError, match="nosuch"):
        E.run_experiment("two_head_ablation", "smoke", [0], chosen={"nosuch": {"lr": 1.0}}, progress=False)
    with pytest.raises(ValueError, match="2\\*\\*63"):
        E.run_experiment("two_head_ablation", "smoke", [2**63], progress=False)
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_run_seeds_beyond_int64_are_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("AVGK_CACHE_DIR", str(tmp_path))
    argv = ["run", "two_head_ablation", "--preset", "smoke", "--seeds", "0", str(2**63), "--no-progress"]
    _one_line(*_cli(argv, capsys), "--seeds", "2**63")
    assert not (tmp_path / "runs").exists()


def test_reference_choices_of_another_experiment_are_limited_to_this_one(monkeypatch):
    keys = set(grid.tuning_keys("two_head_ablation", "cpu"))
    # a tuned arm of average_k whose tuning holds entries of settings the ablation does not have
    tuning = {key: {"chosen": {"lr": 0.1, "weight": 10.0}} for key in grid.tuning_keys("average_k", "cpu")}
    reference = {"arms": {"tuned": {"rows": [], "tuning": tuning}}}
    monkeypatch.setattr(grid, "load_reference", lambda name, preset: reference if name == "average_k" else None)
    chosen = E.chosen_from_reference("two_head_ablation", "cpu")
    assert chosen and set(chosen) <= keys < set(tuning)
    assert E.expand("two_head_ablation", "cpu", [0], chosen)


# ------------------------------------------------------------------------ cache folder, Ctrl-C


@pytest.mark.parametrize("command", [["train", *QUICK], ["run", "two_head_ablation", "--preset", "smoke"]])
def test_unusable_cache_folder_is_one_line_naming_it_and_the_variable(command, capsys, tmp_path, monkeypatch):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    for folder, words in (("/proc/avgk-no-cache", ["cannot be created"]), (str(loop), ["symbolic-link loop"])):
        monkeypatch.setenv("AVGK_CACHE_DIR", folder)
        _one_line(*_cli(command, capsys), folder, "AVGK_CACHE_DIR", *words)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    monkeypatch.setenv("AVGK_CACHE_DIR", str(a_file))
    _one_line(*_cli(command, capsys), str(a_file), "AVGK_CACHE_DIR", "not a folder")


def test_permission_errors_of_the_environment_are_one_line(capsys, tmp_path, monkeypatch):
    import functools

    from avgk_lib import data

    @functools.wraps(data.load_synthetic)
    def denied(**options):
        raise PermissionError(13, "Permission denied", str(tmp_path / "data" / "file"))

    monkeypatch.setitem(data.LOADERS, "synthetic", denied)
    line = _one_line(*_cli(["train", *QUICK, "--out", str(tmp_path / "run")], capsys), "Permission denied")
    assert str(tmp_path / "data" / "file") in line


def test_ctrl_c_is_one_line_naming_the_run_folder_and_exit_130(tmp_path):
    """SIGINT once the child has logged its first epoch (no timing assumption: the run has far more
    epochs than it can finish before the signal lands, and the test waits for the log line)."""
    out = tmp_path / "run"
    args = ["train", *QUICK, "--epochs", "100000", "--out", str(out)]
    env = {**os.environ, "AVGK_PROGRESS": "0", "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(
        [sys.executable, "-m", "avgk_lib", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen = []
        for line in child.stdout:
            seen.append(line)
            if line.startswith("epoch"):
                break
        assert seen and seen[-1].startswith("epoch"), "".join(seen)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=600)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    line = _one_line(child.returncode, err, "interrupted", str(out), exit_code=130)
    if (out / "last.pt").exists():
        assert "after epoch" in line and "--resume --out" in line
    assert "KeyboardInterrupt" not in err


# ------------------------------------------------------------------- data folders and workers, via the CLI


def test_data_folder_symlink_loop_is_one_line(capsys, tmp_path, monkeypatch):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    monkeypatch.setenv("AVGK_DATA_DIR", str(loop))
    argv = ["train", "--dataset", "fashion_mnist", "--out", str(tmp_path / "run"), "--no-progress"]
    _one_line(*_cli(argv, capsys), str(loop), "AVGK_DATA_DIR", "symbolic-link loop")


def test_failed_download_is_one_line_with_the_right_hint(capsys, tmp_path, monkeypatch):
    from urllib.error import URLError

    import torchvision.datasets.mnist as tv_mnist

    def unreachable(url, download_root, filename=None, md5=None, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", unreachable)
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian")
    argv = ["train", "--dataset", "fashion_mnist", "--root", str(tmp_path / "data"), "--download"]
    line = _one_line(*_cli([*argv, "--out", str(tmp_path / "run")], capsys), "internet connection", exit_code=1)
    assert str(tmp_path / "data" / "FashionMNIST" / "raw") in line and "unset" not in line


def test_corrupt_image_read_by_a_worker_is_one_line_naming_the_file(capsys, tmp_path):
    from tests.fakes import write_fake_plantnet

    write_fake_plantnet(tmp_path / "plantnet")
    bad = sorted((tmp_path / "plantnet" / "images" / "val" / "1355868").glob("*.jpg"))[-1]
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    argv = ["train", "--dataset", "plantnet300k", "--root", str(tmp_path / "plantnet"), "--resize", "32"]
    argv += ["--crop", "24", "--model", "small_cnn", "--k", "2", "--eval-ks", "1", "2", "--batch-size", "2"]
    argv += ["--epochs", "1", "--workers", "1", "--no-progress", "--out", str(tmp_path / "run")]
    _one_line(*_cli(argv, capsys), f"cannot read image {bad}", "worker")


def test_models_declare_the_inputs_they_take():
    from avgk_lib.models import MODEL_INPUTS, MODELS, build_model, check_model_input

    assert set(MODEL_INPUTS) == set(MODELS)
    fits = {
        (16,): {"mlp"},
        (1, 28, 28): {"mlp", "small_cnn", "resnet18_cifar", "densenet_bc_40_40"},
        (3, 32, 32): set(MODELS),
        (3, 2, 2): {"mlp", "resnet18_cifar", "resnet50"},
    }
    for shape, models in fits.items():
        for name in MODELS:
            if name in models:
                check_model_input(name, shape)
            else:
                with pytest.raises(ValueError, match="`model`"):
                    check_model_input(name, shape)
    with pytest.raises(ValueError, match="`model` 'small_cnn' needs images"):
        build_model("small_cnn", 5, (16,))
    with pytest.raises(ValueError, match="`input_shape`"):
        check_model_input("mlp", ())


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [({"seeds": 3}, "seeds"), ({"overrides": 3}, "overrides"), ({"overrides": {"device": "cuda"}}, "device")],
)
def test_run_experiment_names_the_argument_before_any_training(kwargs, named):
    from avgk_book.experiments import run_experiment

    with pytest.raises((TypeError, ValueError), match=named):
        run_experiment("label_noise", "smoke", **kwargs)
