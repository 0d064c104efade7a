"""Dataset loaders on real (Debian Fashion-MNIST) and fake-but-real-format data, and the oracle."""

import dataclasses
import gzip
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from avgk_lib.data import DATASETS, LOADERS, dataset_info, dataset_input_shape, load_dataset, make_loader
from avgk_lib.data import cifar100 as cifar_module
from avgk_lib.data import fashion_mnist as fm
from avgk_lib.data.corruption import block_label_noise, long_tail_counts, long_tail_subsample
from avgk_lib.data.fashion_mnist import DEBIAN_DIR
from avgk_lib.data.loader import random_crop_flip
from avgk_lib.data.oracle import bayes_average_k_sets, bayes_topk_sets, expected_set_accuracy
from avgk_lib.data.synthetic import SyntheticSpec, SyntheticTask
from tests.fakes import dump_py2 as _dump_py2
from tests.fakes import write_fake_cifar100, write_fake_plantnet

# ---------------------------------------------------------------------------- synthetic + oracle


def test_synthetic_posterior_equals_bayes_rule_with_scipy_densities():
    from scipy.stats import multivariate_normal

    task = SyntheticTask(SyntheticSpec(n_classes=5, dim=3, n_groups=2, imbalance_ratio=4.0, seed=2))
    x, _, posterior = task.sample(7, seed=0)
    joint = np.stack(
        [
            task.priors[c].item() * multivariate_normal(task.means[c].numpy(), np.eye(3)).pdf(x.double().numpy())
            for c in range(5)
        ],
        axis=1,
    )
    expected = joint / joint.sum(1, keepdims=True)
    np.testing.assert_allclose(posterior.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(task.posterior(x).numpy(), expected, rtol=1e-6)


def test_synthetic_labels_follow_long_tailed_priors():
    task = SyntheticTask(SyntheticSpec(n_classes=4, dim=2, n_groups=2, imbalance_ratio=8.0))
    _, y, _ = task.sample(40_000, seed=1)
    freq = torch.bincount(y, minlength=4).double() / 40_000
    torch.testing.assert_close(freq, task.priors, atol=0.01, rtol=0)
    assert task.priors[0] / task.priors[-1] == pytest.approx(8.0)


def test_ambiguity_knob_increases_bayes_error():
    errors = []
    for ambiguity in (0.0, 0.5, 0.95):
        task = SyntheticTask(SyntheticSpec(n_classes=12, dim=8, n_groups=3, ambiguity=ambiguity))
        _, _, posterior = task.sample(4000, seed=0)
        errors.append(1 - expected_set_accuracy(posterior, bayes_topk_sets(posterior, 1)))
    assert errors[0] < errors[1] < errors[2]


def test_bayes_average_k_beats_top_k_at_equal_average_size():
    task = SyntheticTask(SyntheticSpec(n_classes=20, dim=16, n_groups=5, ambiguity=0.9))
    _, _, posterior = task.sample(5000, seed=3)
    for k in (1, 2, 3):
        avg_sets = bayes_average_k_sets(posterior, k)
        assert int(avg_sets.sum()) == 5000 * k
        assert expected_set_accuracy(posterior, avg_sets) >= expected_set_accuracy(
            posterior, bayes_topk_sets(posterior, k)
        )


def test_long_tail_profile():
    assert long_tail_counts(1000, 3, 100.0) == [1000, 100, 10]
    y = torch.arange(10).repeat_interleave(50)
    keep = long_tail_subsample(y, 10, 10.0, seed=0)
    counts = torch.bincount(y[keep], minlength=10).tolist()
    assert counts == long_tail_counts(50, 10, 10.0) and counts[0] == 50 and counts[-1] == 5


# ----------------------------------------------------------------------------- label noise


def test_block_label_noise_stays_in_blocks_and_has_rate_0_8_p():
    y = torch.arange(100).repeat(400)
    noisy = block_label_noise(y, 0.5, 5, 100, seed=0)
    assert torch.equal(noisy // 5, y // 5)
    assert (noisy != y).double().mean().item() == pytest.approx(0.8 * 0.5, abs=0.01)
    assert torch.equal(block_label_noise(y, 0.0, 5, 100, seed=0), y)


# ---------------------------------------------------------------------------- Fashion-MNIST

needs_fmnist = pytest.mark.skipif(not DEBIAN_DIR.exists(), reason="apt-get install dataset-fashion-mnist")


@needs_fmnist
def test_fashion_mnist_from_debian_matches_torchvision_reading_the_same_files(tmp_path):
    import torchvision

    bundle = load_dataset("fashion_mnist", root=tmp_path)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (50_000, 10_000, 10_000)
    assert bundle.train.x.dtype == torch.uint8 and bundle.input_shape == (1, 28, 28)
    reference = torchvision.datasets.FashionMNIST(str(tmp_path), train=False, download=False)
    assert torch.equal(bundle.test.x.squeeze(1), reference.data)
    assert torch.equal(bundle.test.y, reference.targets)
    assert bundle.class_names[6] == "Shirt"


@needs_fmnist
def test_fashion_mnist_variants_keep_val_and_test_clean_and_balanced(tmp_path):
    clean = load_dataset("fashion_mnist", root=tmp_path)
    noisy = load_dataset("fashion_mnist", root=tmp_path, label_noise=0.4, noise_block_size=2)
    assert torch.equal(noisy.val.y, clean.val.y) and torch.equal(noisy.test.y, clean.test.y)
    assert torch.equal(noisy.train.clean_y, clean.train.y)
    assert (noisy.train.y != clean.train.y).double().mean().item() == pytest.approx(0.2, abs=0.01)
    pairs = load_dataset("fashion_mnist", root=tmp_path, label_noise=0.6, noise_groups="pairs")
    pair_of = torch.tensor(fm.PAIR_GROUPS)
    assert torch.equal(pair_of[pairs.train.y], pair_of[clean.train.y])  # a flip stays in its pair
    assert sorted(torch.bincount(pair_of).tolist()) == [2] * 5  # K = 2 = the size of every group
    assert (pairs.train.y != clean.train.y).double().mean().item() == pytest.approx(0.3, abs=0.01)
    tail = load_dataset("fashion_mnist", root=tmp_path, imbalance_ratio=100.0)
    assert tail.train_counts[0] / tail.train_counts[-1] == pytest.approx(100, rel=0.05)
    assert torch.equal(tail.val.y, clean.val.y)


# ------------------------------------------------- Fashion-MNIST files in the idx format, download

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx encoding (written independently of the reader): 0, 0, 0x08 (ubyte), ndim, big-endian dims."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def fake_fmnist_arrays(n_train: int = 120, n_test: int = 30, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": np.arange(n_train, dtype=np.uint8) % 10,
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_fmnist(folder: Path, arrays: dict[str, np.ndarray], gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (folder / f"{IDX_NAMES[key]}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / IDX_NAMES[key]).write_bytes(data)


@pytest.fixture
def no_debian(tmp_path, monkeypatch):
    """Pretend Debian's dataset-fashion-mnist is not installed."""
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian-package")


@pytest.fixture
def fake_fmnist_download(monkeypatch):
    """Replace the network step of torchvision's FashionMNIST.download: the archive "downloaded" from a
    mirror is a gzipped idx file in the real format, extracted as torchvision's extractor does."""
    import torchvision.datasets.mnist as tv_mnist

    arrays = fake_fmnist_arrays()
    by_name = {f"{name}.gz": key for key, name in IDX_NAMES.items()}
    calls: list[str] = []

    def download_and_extract_archive(url, download_root, filename=None, md5=None, **kwargs):
        calls.append(url)
        archive = Path(download_root) / filename
        archive.write_bytes(gzip.compress(idx_bytes(arrays[by_name[filename]])))
        archive.with_suffix("").write_bytes(gzip.decompress(archive.read_bytes()))

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", download_and_extract_archive)
    return arrays, calls


def test_read_idx_agrees_with_torchvision_reader(tmp_path):
    from torchvision.datasets.mnist import read_image_file, read_label_file

    arrays = fake_fmnist_arrays(n_train=7, n_test=3)
    write_fmnist(tmp_path, arrays, gz=False)
    images, labels = tmp_path / IDX_NAMES["train_images"], tmp_path / IDX_NAMES["train_labels"]
    assert torch.equal(fm.read_idx(images), read_image_file(str(images)))
    assert torch.equal(fm.read_idx(labels), read_label_file(str(labels)).to(torch.uint8))
    gz = tmp_path / "gz"
    write_fmnist(gz, arrays, gz=True)
    assert torch.equal(fm.read_idx(gz / f"{IDX_NAMES['train_images']}.gz"), fm.read_idx(images))


def test_fashion_mnist_downloads_to_torchvision_layout(tmp_path, monkeypatch, no_debian, fake_fmnist_download):
    import torchvision

    arrays, calls = fake_fmnist_download
    monkeypatch.delenv("AVGK_OFFLINE", raising=False)
    paths = fm.locate_raw_files(tmp_path)  # download=None: online -> downloads
    assert len(calls) == 4 and all(p.parent == tmp_path / "FashionMNIST" / "raw" for p in paths.values())
    for key, array in arrays.items():
        assert np.array_equal(fm.read_idx(paths[key]).numpy(), array)
    # torchvision reads the same folder without downloading again, and so do we
    reference = torchvision.datasets.FashionMNIST(str(tmp_path), train=False, download=False)
    bundle = load_dataset("fashion_mnist", root=tmp_path, n_val=20, download=True)
    assert len(calls) == 4
    assert torch.equal(bundle.test.x.squeeze(1), reference.data) and torch.equal(bundle.test.y, reference.targets)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (100, 20, 30)


def test_fashion_mnist_offline_names_folder_env_var_and_remedies(tmp_path, no_debian, fake_fmnist_download):
    _, calls = fake_fmnist_download
    with pytest.raises(FileNotFoundError) as info:
        fm.locate_raw_files(tmp_path)  # AVGK_OFFLINE=1 in the test session
    message = str(info.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message and "AVGK_OFFLINE" in message
    assert "apt-get install dataset-fashion-mnist" in message and "download=True" in message
    assert calls == []


def test_fashion_mnist_download_false_wins_over_online(tmp_path, monkeypatch, no_debian, fake_fmnist_download):
    monkeypatch.delenv("AVGK_OFFLINE", raising=False)
    with pytest.raises(FileNotFoundError, match="download=False"):
        fm.locate_raw_files(tmp_path, download=False)
    assert fake_fmnist_download[1] == []
    with pytest.raises(TypeError, match="download"):
        fm.locate_raw_files(tmp_path, download="yes")


def test_fashion_mnist_failed_download_names_the_folder(tmp_path, monkeypatch, no_debian):
    from urllib.error import URLError

    import torchvision.datasets.mnist as tv_mnist

    def unreachable(url, download_root, filename=None, md5=None, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", unreachable)
    with pytest.raises(RuntimeError, match=re.escape(str(tmp_path / "FashionMNIST" / "raw"))):
        fm.locate_raw_files(tmp_path, download=True)


def test_debian_files_are_used_before_any_download(tmp_path, monkeypatch, fake_fmnist_download):
    arrays = fake_fmnist_arrays(seed=5)
    debian = tmp_path / "debian"
    write_fmnist(debian, arrays, gz=True)
    monkeypatch.setattr(fm, "DEBIAN_DIR", debian)
    monkeypatch.delenv("AVGK_OFFLINE", raising=False)
    paths = fm.locate_raw_files(tmp_path / "data")
    assert fake_fmnist_download[1] == []  # torchvision would re-download (checksums of recompressed .gz differ)
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    for key, name in IDX_NAMES.items():  # decompressed copies where torchvision expects them
        assert paths[key] == raw / name and np.array_equal(fm.read_idx(raw / name).numpy(), arrays[key])


def _corrupt(kind: str, raw: Path) -> Path:
    """Damage one file of a valid raw folder; return the damaged file."""
    labels, images = raw / IDX_NAMES["train_labels"], raw / IDX_NAMES["train_images"]
    if kind == "empty":
        labels.write_bytes(b"")
        return labels
    if kind == "short header":
        labels.write_bytes(bytes([0, 0, 8, 1, 0, 0]))
        return labels
    if kind == "bad magic":
        labels.write_bytes(bytes([0, 0, 0x0D, 1]) + labels.read_bytes()[4:])
        return labels
    if kind == "truncated":
        images.write_bytes(images.read_bytes()[:-100])
        return images
    if kind == "label 200":
        data = bytearray(labels.read_bytes())
        data[8 + 3] = 200
        labels.write_bytes(bytes(data))
        return labels
    if kind == "count mismatch":
        labels.write_bytes(idx_bytes(np.zeros(119, dtype=np.uint8)))
        return labels
    if kind == "not 28x28":
        images.write_bytes(idx_bytes(np.zeros((120, 27, 28), dtype=np.uint8)))
        return images
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["empty", "short header", "bad magic", "truncated", "label 200", "count mismatch", "not 28x28"]
)
def test_bad_idx_files_raise_naming_the_file(tmp_path, no_debian, kind):
    raw = tmp_path / "FashionMNIST" / "raw"
    write_fmnist(raw, fake_fmnist_arrays(), gz=False)
    bad = _corrupt(kind, raw)
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        fm.locate_raw_files(tmp_path)


def test_corrupt_gz_names_the_file(tmp_path, no_debian):
    raw = tmp_path / "FashionMNIST" / "raw"
    write_fmnist(raw, fake_fmnist_arrays(), gz=True)
    bad = raw / f"{IDX_NAMES['test_labels']}.gz"
    bad.write_bytes(bad.read_bytes()[:-12])  # cut the gzip trailer and some data: EOFError inside gzip
    with pytest.raises(ValueError, match=re.escape(str(bad)) + ".*corrupt gzip"):
        fm.locate_raw_files(tmp_path)
    bad.write_bytes(b"not a gzip archive at all")
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        fm.locate_raw_files(tmp_path)


def test_read_idx_rejects_missing_file_and_bad_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-idx1-ubyte"):
        fm.read_idx(tmp_path / "nothing-idx1-ubyte")
    with pytest.raises(TypeError, match="path"):
        fm.read_idx(3)


# ---------------------------------------------------------------------------- CIFAR-100 fake


def test_cifar100_loader_reads_the_official_format_like_torchvision(tmp_path, monkeypatch):
    import torchvision

    write_fake_cifar100(tmp_path)
    bundle = load_dataset("cifar100", root=tmp_path, n_val=40)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (160, 40, 50)
    assert bundle.class_names[3] == "fine_3" and bundle.input_shape == (3, 32, 32)
    # torchvision as the oracle of the format (its md5 check is bypassed for the fake files)
    monkeypatch.setattr(torchvision.datasets.CIFAR100, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)
    reference = torchvision.datasets.CIFAR100(str(tmp_path), train=False, download=False)
    assert torch.equal(bundle.test.x.permute(0, 2, 3, 1), torch.from_numpy(reference.data))
    assert bundle.test.y.tolist() == reference.targets
    assert reference.classes == bundle.class_names


def test_cifar100_protocol_noise_only_on_train_within_blocks_of_5(tmp_path):
    write_fake_cifar100(tmp_path, n_train=3000, n_test=100)
    clean = load_dataset("cifar100", root=tmp_path, n_val=500)
    noisy = load_dataset("cifar100", root=tmp_path, n_val=500, label_noise=0.5)
    assert torch.equal(clean.val.y, noisy.val.y) and torch.equal(clean.test.y, noisy.test.y)
    assert torch.equal(noisy.train.clean_y, clean.train.y)
    assert torch.equal(noisy.train.y // 5, clean.train.y // 5)
    assert (noisy.train.y != clean.train.y).double().mean().item() == pytest.approx(0.4, abs=0.04)
    # the split is fixed: same validation images whatever the noise
    assert torch.equal(clean.val.x, noisy.val.x)


def test_cifar100_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_dataset("cifar100", root=tmp_path)


def test_cifar100_downloads_through_torchvision_when_absent(tmp_path, monkeypatch):
    """torchvision's CIFAR100.download runs for real; only its network step (download + extract) is
    replaced by writing the official layout, and its md5 check by an existence check."""
    import torchvision.datasets.cifar as tv_cifar

    calls = []

    def download_and_extract_archive(url, download_root, filename=None, md5=None, **kwargs):
        calls.append((url, filename))
        write_fake_cifar100(Path(download_root))

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", download_and_extract_archive)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    monkeypatch.delenv("AVGK_OFFLINE", raising=False)
    bundle = load_dataset("cifar100", root=tmp_path, n_val=40)  # download=None: online -> downloads
    assert calls == [(tv_cifar.CIFAR100.url, "cifar-100-python.tar.gz")]
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (160, 40, 50)
    load_dataset("cifar100", root=tmp_path, n_val=40)
    assert len(calls) == 1  # present now: no second download


def test_cifar100_offline_names_folder_and_env_var(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("cifar100", root=tmp_path)
    assert str(tmp_path / "cifar-100-python") in str(info.value) and "AVGK_OFFLINE" in str(info.value)


def _damage_cifar(kind: str, folder: Path) -> Path:
    train = folder / "train"
    if kind == "not a pickle":
        train.write_bytes(b"this is not a pickle")
        return train
    if kind == "truncated":
        train.write_bytes(train.read_bytes()[:1000])
        return train
    d = pickle.loads((folder / "train").read_bytes(), encoding="bytes")
    if kind == "label 100":
        d[b"fine_labels"][3] = 100
    elif kind == "no labels":
        del d[b"fine_labels"]
    elif kind == "short rows":
        d[b"data"] = d[b"data"][:, :3000]
    elif kind == "meta":
        meta = pickle.loads((folder / "meta").read_bytes(), encoding="bytes")
        meta[b"fine_label_names"] = meta[b"fine_label_names"][:99]
        _dump_py2(meta, folder / "meta")
        return folder / "meta"
    _dump_py2(d, train)
    return train


@pytest.mark.parametrize("kind", ["not a pickle", "truncated", "label 100", "no labels", "short rows", "meta"])
def test_damaged_cifar100_files_raise_naming_the_file(tmp_path, kind):
    write_fake_cifar100(tmp_path)
    bad = _damage_cifar(kind, tmp_path / "cifar-100-python")
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        load_dataset("cifar100", root=tmp_path, n_val=40)


def test_cifar100_missing_file_and_bad_options(tmp_path):
    write_fake_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(FileNotFoundError, match="missing meta"):
        load_dataset("cifar100", root=tmp_path)
    write_fake_cifar100(tmp_path / "b")
    with pytest.raises(ValueError, match="n_val"):
        load_dataset("cifar100", root=tmp_path / "b", n_val=200)
    with pytest.raises(ValueError, match="label_noise"):
        load_dataset("cifar100", root=tmp_path / "b", n_val=40, label_noise=1.5)
    with pytest.raises(TypeError, match="download"):
        cifar_module.locate_cifar100(tmp_path / "b", download=1)


# ---------------------------------------------------------------------------- Pl@ntNet-300K fake


def test_plantnet_loader_on_a_fake_v1_1_tree(tmp_path):
    names = write_fake_plantnet(tmp_path)
    bundle = load_dataset("plantnet300k", root=tmp_path, resize=32, crop=24)
    ids = sorted(names)
    assert bundle.n_classes == 3 and bundle.extra["species_ids"] == ids
    assert bundle.class_names == [names[i] for i in ids]
    # class index = rank of the sorted species id, identical in every split
    assert bundle.train_counts == [5, 3, 1]  # 1355868, 1355932, 1363227
    assert sorted(bundle.val.targets.tolist()) == [0, 0, 1]
    assert sorted(bundle.test.targets.tolist()) == [0, 2, 2]
    image, label = bundle.train[0]
    assert image.shape == (3, 24, 24) and label == 0
    loader = make_loader(bundle, "val", 2, torch.device("cpu"), train=False, workers=0)
    batches = list(loader)
    assert sum(len(b[1]) for b in batches) == 3 and batches[0][0].shape[1:] == (3, 24, 24)


def test_plantnet_missing_folder_says_where_to_get_v1_1(tmp_path):
    with pytest.raises(FileNotFoundError, match="5645731"):
        load_dataset("plantnet300k", root=tmp_path)


def test_plantnet_subset_keeps_the_head_to_tail_profile(tmp_path):
    names = write_fake_plantnet(tmp_path)
    # training counts: 1355868 -> 5, 1355932 -> 3, 1363227 -> 1; two classes at evenly spaced ranks: 1st and 3rd
    bundle = load_dataset("plantnet300k", root=tmp_path, resize=32, crop=24, max_classes=2)
    assert bundle.extra["species_ids"] == ["1355868", "1363227"] and bundle.n_classes == 2
    assert bundle.class_names == [names["1355868"], names["1363227"]]
    assert bundle.train_counts == [5, 1]
    assert sorted(bundle.val.targets.tolist()) == [0, 0] and sorted(bundle.test.targets.tolist()) == [0, 1, 1]
    capped = load_dataset("plantnet300k", root=tmp_path, resize=32, crop=24, max_per_class=2)
    assert capped.train_counts == [2, 2, 1] and len(capped.val) == 3 and len(capped.test) == 3
    first = sorted((tmp_path / "images" / "train" / "1355868").iterdir())[:2]
    assert [p for p, label in capped.train.samples if label == 0] == first
    assert load_dataset("plantnet300k", root=tmp_path, max_classes=1).extra["species_ids"] == ["1355868"]
    assert load_dataset("plantnet300k", root=tmp_path, max_classes=50).n_classes == 3


def test_plantnet_missing_data_message_gives_size_record_layout_and_colab_route(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("plantnet300k", root=tmp_path)
    message = str(info.value)
    for needle in (str(tmp_path), "32 GB", "5645731", "version 1.1", "images/train", "Colab", "max_classes"):
        assert needle in message, needle


@pytest.mark.parametrize("kind", ["no val folder", "bad json", "json list", "unknown species", "bad image"])
def test_plantnet_folder_errors_name_the_folder_or_file(tmp_path, kind):
    write_fake_plantnet(tmp_path)
    names = tmp_path / "plantnet300K_species_id_2_name.json"
    if kind == "no val folder":
        bad, error = tmp_path / "images" / "val", FileNotFoundError
        for f in bad.rglob("*.jpg"):
            f.unlink()
        for d in sorted(bad.rglob("*"), reverse=True):
            d.rmdir()
        bad.rmdir()
    elif kind == "bad json":
        bad, error = names, ValueError
        names.write_text("{not json")
    elif kind == "json list":
        bad, error = names, ValueError
        names.write_text("[1, 2]")
    elif kind == "unknown species":
        bad, error = tmp_path / "images" / "test" / "999", ValueError
        bad.mkdir()
    else:
        bad, error = tmp_path / "images" / "train" / "1355868" / "0000.jpg", ValueError
        bad.write_bytes(b"not a jpeg")
        bundle = load_dataset("plantnet300k", root=tmp_path, resize=32, crop=24)
        with pytest.raises(error, match=re.escape(str(bad))):
            bundle.train[0]
        return
    with pytest.raises(error, match=re.escape(str(bad))):
        load_dataset("plantnet300k", root=tmp_path)


@pytest.mark.parametrize(
    "options, name",
    [({"max_classes": 0}, "max_classes"), ({"max_per_class": 1.5}, "max_per_class"), ({"crop": 300}, "crop")],
)
def test_plantnet_bad_options_name_the_argument(tmp_path, options, name):
    write_fake_plantnet(tmp_path)
    with pytest.raises(ValueError, match=name):
        load_dataset("plantnet300k", root=tmp_path, **options)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="fashion_mnist"):
        load_dataset("mnist")


# ---------------------------------------------------------------------------- in-memory loader


def test_random_crop_is_a_window_of_the_padded_image_and_flip_is_exact():
    images = torch.arange(2 * 1 * 5 * 5, dtype=torch.uint8).reshape(2, 1, 5, 5)
    g = torch.Generator().manual_seed(0)
    cropped = random_crop_flip(images, 2, crop=True, flip=False, generator=g)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for b in range(2):
        windows = [padded[b, :, i : i + 5, j : j + 5] for i in range(5) for j in range(5)]
        assert any(torch.equal(cropped[b], w) for w in windows)
    flipped = random_crop_flip(images, 0, crop=False, flip=True, generator=torch.Generator().manual_seed(1))
    for b in range(2):
        assert torch.equal(flipped[b], images[b]) or torch.equal(flipped[b], images[b].flip(2))


def test_in_memory_loader_epochs_are_permutations_and_reproducible():
    bundle = load_dataset("synthetic", n_train=1000, n_val=100, n_test=100)
    loader = make_loader(bundle, "train", 100, torch.device("cpu"), train=True, seed=3)
    loader.set_epoch(0)
    first = torch.cat([idx for _, _, idx in loader])
    assert sorted(first.tolist()) == list(range(1000))
    loader.set_epoch(1)
    second = torch.cat([idx for _, _, idx in loader])
    loader.set_epoch(0)
    assert torch.equal(torch.cat([idx for _, _, idx in loader]), first) and not torch.equal(first, second)
    shards = [
        torch.cat([i for _, _, i in make_loader(bundle, "val", 16, torch.device("cpu"), train=False, shard=(r, 3))])
        for r in range(3)
    ]
    assert sorted(torch.cat(shards).tolist()) == list(range(100))


# ------------------------------------------------------- issue 18: options, folders, downloads, workers


@pytest.mark.parametrize(
    ("dataset", "options", "name"),
    [
        ("synthetic", {"imbalance_ratio": 0.01}, "imbalance_ratio"),
        ("fashion_mnist", {"imbalance_ratio": 0.01}, "imbalance_ratio"),
        ("fashion_mnist", {"imbalance_ratio": -5.0}, "imbalance_ratio"),
        ("synthetic", {"label_noise": -0.1}, "label_noise"),
        ("fashion_mnist", {"label_noise": -0.1}, "label_noise"),
        ("cifar100", {"label_noise": -0.1}, "label_noise"),
        ("fashion_mnist", {"label_noise": 1.5}, "label_noise"),
        ("fashion_mnist", {"n_val": 120}, "n_val"),
        ("cifar100", {"n_val": 200}, "n_val"),
        ("fashion_mnist", {"noise_block_size": 1}, "noise_block_size"),
        ("fashion_mnist", {"augment": "crop_flp"}, "augment"),
        ("fashion_mnist", {"noise_groups": "semantik"}, "noise_groups"),
        ("fashion_mnist", {"split_seed": 2**63}, "split_seed"),
        ("cifar100", {"noise_seed": 2**63}, "noise_seed"),
        ("synthetic", {"sample_seed": 2**63}, "sample_seed"),
        ("synthetic", {"task_seed": 2**63}, "task_seed"),
    ],
)
def test_the_same_rules_hold_on_every_dataset(tmp_path, no_debian, dataset, options, name):
    write_fmnist(tmp_path / "FashionMNIST" / "raw", fake_fmnist_arrays())  # 120 training images
    write_fake_cifar100(tmp_path)  # 200 training images
    root = {} if dataset == "synthetic" else {"root": tmp_path}
    n_val = {"synthetic": {}, "fashion_mnist": {"n_val": 20}, "cifar100": {"n_val": 40}}[dataset]
    with pytest.raises((ValueError, TypeError), match=f"`{name}`"):
        load_dataset(dataset, **root, **{**n_val, **options})


def test_seeds_up_to_int64_work_and_derived_seeds_keep_small_seeds(tmp_path):
    from avgk_lib.data.base import derived_seed

    assert derived_seed(5 * 1000 + 1) == 5001 and derived_seed(2**64 + 3) == 3
    big = 2**63 - 1
    bundle = load_dataset("synthetic", n_train=50, n_val=20, n_test=20, task_seed=big, sample_seed=big, label_noise=0.3)
    loader = make_loader(bundle, "train", 10, torch.device("cpu"), train=True, seed=big)
    assert sorted(torch.cat([idx for _, _, idx in loader]).tolist()) == list(range(50))


def test_dataset_input_shape_is_known_before_loading(tmp_path, no_debian):
    write_fmnist(tmp_path / "FashionMNIST" / "raw", fake_fmnist_arrays())
    write_fake_cifar100(tmp_path)
    write_fake_plantnet(tmp_path / "plantnet")
    cases = [
        ("synthetic", {"dim": 7, "n_train": 30, "n_val": 10, "n_test": 10}),
        ("fashion_mnist", {"root": tmp_path, "n_val": 20}),
        ("cifar100", {"root": tmp_path, "n_val": 40}),
        ("plantnet300k", {"root": tmp_path / "plantnet", "resize": 32, "crop": 24}),
    ]
    for name, options in cases:
        bundle = load_dataset(name, **options)
        assert dataset_input_shape(name, options) == bundle.input_shape, name
        if name != "plantnet300k":  # the fake Pl@ntNet holds a few species, not the 1081 of the data
            assert dataset_info(name).classes(options) == bundle.n_classes, name
    with pytest.raises(ValueError, match="valid names"):
        dataset_input_shape("mnist")


def test_each_loader_declares_its_dataset_facts():
    """Default model, classes and which integer options are counts are declared per loader."""
    import typing

    from avgk_lib.models import MODELS, check_model_input

    assert set(DATASETS) == set(LOADERS) and all(DATASETS[n].loader is LOADERS[n] for n in DATASETS)
    for name, info in DATASETS.items():
        hints = typing.get_type_hints(info.loader)
        ints = {k for k, h in hints.items() if h is int or typing.get_args(h) == (int, type(None))}
        assert set(info.counts) <= ints, name
        assert info.default_model in MODELS
        check_model_input(info.default_model, dataset_input_shape(name))
        assert info.classes_option is None or info.classes_option in hints
        assert set(info.seeded_options) <= {k for k in hints if k.endswith("_seed")}, name
    assert [DATASETS[n].classes() for n in DATASETS] == [20, 10, 100, 1081]
    synthetic = dataset_info("synthetic")
    assert synthetic.seeded_options == ("sample_seed",)
    with pytest.raises(ValueError, match="seeded_options"):  # a seeded option the loader lacks
        dataclasses.replace(synthetic, seeded_options=("split_seed",))
    assert dataset_info("plantnet300k").classes({"max_classes": 12}) == 12
    assert dataset_info("synthetic").classes({"n_classes": 7}) == 7
    with pytest.raises(TypeError, match="options"):
        dataset_info("cifar100").classes([("n_val", 3)])
    with pytest.raises(ValueError, match="valid names"):
        dataset_info("mnist")


def test_synthetic_sizes_beyond_memory_are_refused_before_allocating(monkeypatch):
    from avgk_lib.data import base

    monkeypatch.setattr(base, "available_memory", lambda: 2**30)
    with pytest.raises(ValueError, match="`n_train` is too large.*GiB"):
        load_dataset("synthetic", n_train=10**11)
    with pytest.raises(ValueError, match="`n_test` is too large"):
        load_dataset("synthetic", n_train=10, n_val=10, n_test=10**9)
    with pytest.raises(ValueError, match="`n_classes` is too large"):
        load_dataset("synthetic", n_train=100, n_val=10, n_test=10, n_classes=10**9)
    with pytest.raises(ValueError, match="`dim` is too large"):
        load_dataset("synthetic", n_train=100, n_val=10, n_test=10, dim=10**9)
    assert len(load_dataset("synthetic", n_train=100, n_val=10, n_test=10).train) == 100


def test_read_only_data_folder_reads_the_files_where_they_are(tmp_path, monkeypatch):
    """A data folder that cannot be written (here: under /proc, not creatable even by root): the Debian
    files are read in place instead of being copied into torchvision's layout."""
    debian = tmp_path / "debian"
    write_fmnist(debian, fake_fmnist_arrays(seed=3), gz=True)
    monkeypatch.setattr(fm, "DEBIAN_DIR", debian)
    monkeypatch.setenv("AVGK_DATA_DIR", "/proc/avgk-read-only-data")
    bundle = load_dataset("fashion_mnist", n_val=20)
    assert len(bundle.train) == 100 and len(bundle.test) == 30


def test_download_into_an_unusable_folder_is_refused_before_downloading(tmp_path, monkeypatch, no_debian):
    import torchvision.datasets.mnist as tv_mnist

    from avgk_lib.data import DataFolderError

    calls = []
    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", lambda *a, **k: calls.append(a))
    monkeypatch.delenv("AVGK_OFFLINE", raising=False)
    monkeypatch.setenv("AVGK_DATA_DIR", "/proc/avgk-read-only-data")
    with pytest.raises(DataFolderError, match="/proc/avgk-read-only-data.*AVGK_DATA_DIR"):
        load_dataset("fashion_mnist")
    with pytest.raises(DataFolderError, match="`root` /proc/avgk-read-only-data"):
        load_dataset("cifar100", root="/proc/avgk-read-only-data")
    assert calls == []


@pytest.mark.parametrize("dataset", ["fashion_mnist", "cifar100"])
def test_failed_download_gives_the_right_hint(tmp_path, monkeypatch, no_debian, dataset):
    from urllib.error import URLError

    import torchvision.datasets.cifar as tv_cifar
    import torchvision.datasets.mnist as tv_mnist

    from avgk_lib.data import DownloadError

    def unreachable(url, download_root, filename=None, md5=None, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", unreachable)
    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", unreachable)
    with pytest.raises(DownloadError) as info:
        load_dataset(dataset, root=tmp_path, download=True)
    message = str(info.value)
    assert str(tmp_path) in message and "no route to host" in message and "internet connection" in message
    assert "unset" not in message and "download=True" not in message  # it was downloading: that is no fix
    assert "\n" not in message


def test_unusable_data_folders_are_one_line_naming_the_variable(tmp_path, monkeypatch):
    from avgk_lib.data import DataFolderError
    from avgk_lib.data import base as base_module

    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for folder, words in ((loop, "symbolic-link loop"), (a_file, "not a folder")):
        monkeypatch.setenv("AVGK_DATA_DIR", str(folder))
        for dataset in ("fashion_mnist", "cifar100", "plantnet300k"):
            with pytest.raises(DataFolderError, match=f"{re.escape(str(folder))}.*AVGK_DATA_DIR.*{words}"):
                load_dataset(dataset)
    readable = tmp_path / "data"
    readable.mkdir()
    monkeypatch.setenv("AVGK_DATA_DIR", str(readable))
    real_access = os.access
    monkeypatch.setattr(base_module.os, "access", lambda p, mode: Path(p) != readable and real_access(p, mode))
    with pytest.raises(DataFolderError, match="not readable"):
        load_dataset("cifar100")


def test_plantnet_symlink_loop_and_broken_link_are_named(tmp_path):
    from avgk_lib.data import DataFolderError

    write_fake_plantnet(tmp_path)
    species = tmp_path / "images" / "train" / "1355868"
    loop = species / "9999.jpg"
    loop.symlink_to(loop)
    with pytest.raises(DataFolderError, match=f"{re.escape(str(loop))} is a symbolic-link loop"):
        load_dataset("plantnet300k", root=tmp_path)
    loop.unlink()
    (species / "9998.jpg").symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(DataFolderError, match="9998.jpg is a broken symbolic link"):
        load_dataset("plantnet300k", root=tmp_path)


def test_plantnet_empty_validation_split_is_refused_at_load_time(tmp_path):
    write_fake_plantnet(tmp_path)
    for image in (tmp_path / "images" / "val").rglob("*.jpg"):
        image.unlink()
    with pytest.raises(ValueError, match=f"no val image.*{re.escape(str(tmp_path / 'images' / 'val'))}"):
        load_dataset("plantnet300k", root=tmp_path)
    # a subset whose species have no validation image
    write_fake_plantnet(tmp_path / "b")
    for image in (tmp_path / "b" / "images" / "val" / "1355868").glob("*.jpg"):
        image.unlink()
    with pytest.raises(ValueError, match="no val image.*max_classes=1"):
        load_dataset("plantnet300k", root=tmp_path / "b", max_classes=1)


def test_corrupt_image_in_a_worker_is_one_line_naming_the_file(tmp_path):
    write_fake_plantnet(tmp_path)
    bad = sorted((tmp_path / "images" / "val" / "1355868").glob("*.jpg"))[0]
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    bundle = load_dataset("plantnet300k", root=tmp_path, resize=32, crop=24)
    loader = make_loader(bundle, "val", 2, torch.device("cpu"), train=False, workers=1)
    with pytest.raises(ValueError) as info:
        list(loader)
    message = str(info.value)
    assert message.startswith(f"cannot read image {bad}") and "worker" in message
    assert "\n" not in message and "Traceback" not in message


def test_worker_root_cause_keeps_the_last_line_of_the_worker_traceback():
    from avgk_lib.data.loader import worker_root_cause

    wrapped = ValueError(
        "Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n    raise ValueError(...)\nValueError: cannot read image /a/b.jpg (bad)\n'
    )
    cause = worker_root_cause(wrapped)
    assert type(cause) is ValueError and str(cause) == "cannot read image /a/b.jpg (bad) (in a DataLoader worker)"
    plain = KeyError("x")
    assert worker_root_cause(plain) is plain


def test_a_crafted_cifar100_pickle_is_refused_and_nothing_in_it_runs(tmp_path):
    write_fake_cifar100(tmp_path)
    marker = tmp_path / "ran.txt"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (Path(marker),))

    train = tmp_path / "cifar-100-python" / "train"
    d = pickle.loads(train.read_bytes(), encoding="bytes")
    d[b"batch_label"] = Payload()
    train.write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(ValueError, match=re.escape(str(train)) + ".*refused: nothing in it was run"):
        load_dataset("cifar100", root=tmp_path, n_val=40)
    assert not marker.exists()
