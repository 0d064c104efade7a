"""The trainer: every loss trains, the CLI works, a SIGKILLed run resumes bit-exactly, DDP on gloo,
results carry the last epoch's and every head's metrics and degeneracy warnings, divergence stops a run."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from avgk_lib.build import build_run
from avgk_lib.config import ConfigError
from avgk_lib.data import TensorSplit, load_dataset
from avgk_lib.engine import (
    DivergenceGuard,
    TrainingDiverged,
    complete,
    evaluate_final,
    progress_bar,
    train_one_epoch,
)
from avgk_lib.metrics import degeneracy_warnings, top1_mode_share
from avgk_lib.objectives import OBJECTIVES, assemble_objective
from avgk_lib.rundir import CheckpointError, RunDir, load_checkpoint
from avgk_lib.runspec import RunSpec
from avgk_lib.train import RunResult, TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
TINY = {"n_classes": 8, "dim": 6, "n_groups": 2, "n_train": 600, "n_val": 200, "n_test": 200}


def _run_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "avgk_lib", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("loss", sorted(OBJECTIVES))
def test_every_loss_trains_and_reports_finite_metrics(loss, tmp_path):
    k = 1.5 if loss in ("two_head", "epr", "role") else 2
    cfg = TrainConfig(
        dataset="synthetic", dataset_options=TINY, loss=loss, k=k, epochs=2, batch_size=64, lr=0.05, eval_ks=[1, 2]
    )
    results = train(cfg, tmp_path / loss, progress=False, log=lambda *_: None)
    assert len(results["history"]) == 2
    assert all(v == v and abs(v) < 1e9 for v in results["test"].values())
    assert 0.0 <= results["test"]["top2_micro"] <= 1.0
    saved = json.loads((tmp_path / loss / "results.json").read_text())
    assert set(saved) >= {"config", "history", "test", "provenance"}
    assert saved["test"] == results["test"]


def test_cli_quick_run_and_results_file(tmp_path):
    out = tmp_path / "run"
    proc = _run_cli(
        "train",
        "--dataset",
        "synthetic",
        "--loss",
        "noised_topk",
        "--k",
        "2",
        "--epochs",
        "2",
        "--seed",
        "3",
        "--out",
        str(out),
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["loss"] == "noised_topk" and results["config"]["seed"] == 3
    assert [h["epoch"] for h in results["history"]] == [1, 2]
    assert {"train_loss", "val", "seconds"} <= set(results["history"][0])
    assert {"git_commit", "torch", "device", "start_time", "end_time", "seed"} <= set(results["provenance"])
    assert all(isinstance(v, float) for v in results["test"].values())
    assert (out / "best.pt").exists() and (out / "scores.pt").exists()


def test_cli_rejects_unknown_loss_with_the_valid_names():
    proc = _run_cli("train", "--loss", "hinge_of_doom")
    assert proc.returncode != 0
    assert "valid names" in proc.stderr and "two_head" in proc.stderr and "noised_topk" in proc.stderr


def test_existing_checkpoint_needs_resume_and_must_match(tmp_path):
    cfg = TrainConfig(dataset="synthetic", dataset_options=TINY, epochs=1, batch_size=64)
    train(cfg, tmp_path, progress=False, log=lambda *_: None)
    with pytest.raises(CheckpointError, match="resume"):
        train(cfg, tmp_path, progress=False, log=lambda *_: None)
    other = TrainConfig(dataset="synthetic", dataset_options=TINY, epochs=1, batch_size=32)
    with pytest.raises(CheckpointError, match="different configuration"):
        train(other, tmp_path, resume=True, progress=False, log=lambda *_: None)
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        train(cfg, tmp_path, resume=True, progress=False, log=lambda *_: None)


# The child kills itself with SIGKILL when it logs epoch 2 (after epoch 1's checkpoint, before
# epoch 2's): a kill mid-run at a fixed point, whatever the speed of the machine.
_SELF_KILL = """
import builtins, os, signal, sys
from avgk_lib.cli import main
_print = builtins.print
def print_then_die(*args, **kwargs):
    _print(*args, **kwargs)
    if args and str(args[0]).startswith("epoch   2/"):
        os.kill(os.getpid(), signal.SIGKILL)
builtins.print = print_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_then_resume_gives_bit_identical_results(tmp_path):
    args = [
        "train",
        "--dataset",
        "synthetic",
        "--n-train",
        "2000",
        "--n-classes",
        "8",
        "--loss",
        "noised_topk",
        "--k",
        "2",
        "--epochs",
        "4",
        "--batch-size",
        "64",
        "--lr",
        "0.05",
        "--seed",
        "5",
        "--no-progress",
    ]
    reference = tmp_path / "reference"
    proc = _run_cli(*args, "--out", str(reference), timeout=600)
    assert proc.returncode == 0, proc.stderr

    killed = tmp_path / "killed"
    child = subprocess.run(
        [sys.executable, "-c", _SELF_KILL, *args, "--out", str(killed)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert load_checkpoint(killed / "last.pt")["epoch"] == 1
    assert not (killed / "results.json").exists()

    proc = _run_cli(*args, "--out", str(killed), "--resume", timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert f"resumed from {killed / 'last.pt'} after epoch 1" in proc.stdout
    ref = json.loads((reference / "results.json").read_text())
    res = json.loads((killed / "results.json").read_text())
    assert res["test"] == ref["test"] and res["test_last"] == ref["test_last"]
    assert [h["train_loss"] for h in res["history"]] == [h["train_loss"] for h in ref["history"]]
    assert [h["val"] for h in res["history"]] == [h["val"] for h in ref["history"]]


def test_ddp_with_two_gloo_processes_matches_single_process(tmp_path):
    common = [
        "--dataset",
        "synthetic",
        "--loss",
        "cross_entropy",
        "--epochs",
        "3",
        "--batch-size",
        "64",
        "--lr",
        "0.05",
        "--seed",
        "1",
        "--no-progress",
        "--device",
        "cpu",
    ]
    single = _run_cli("train", *common, "--out", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "avgk_lib",
        "train",
        *common,
        "--batch-size",
        "32",
        "--out",
        str(tmp_path / "ddp"),
    ]
    proc = subprocess.run(
        torchrun,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "AVGK_DIST_BACKEND": "gloo", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads((tmp_path / "single" / "results.json").read_text())["test"]
    b = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert b["provenance"]["world_size"] == 2
    # the full test set was gathered: average set sizes are calibrated on all validation rows
    assert abs(b["test"]["avg2_size"] - 2.0) < 0.2
    for key in ("top1_micro", "top2_micro", "avg2_micro"):
        assert abs(a[key] - b["test"][key]) < 0.03, (key, a[key], b["test"][key])


def test_two_head_eval_head_and_detach_flags(tmp_path):
    bundle = load_dataset("synthetic", **TINY)
    base = dict(
        dataset="synthetic", dataset_options=TINY, loss="two_head", k=1.5, epochs=1, batch_size=64, eval_ks=[1.5]
    )
    soft = train(TrainConfig(**base, eval_head="softmax"), None, progress=False, bundle=bundle, log=lambda *_: None)
    multi = train(
        TrainConfig(**base, eval_head="multilabel", detach_multilabel=True),
        None,
        progress=False,
        bundle=bundle,
        log=lambda *_: None,
    )
    assert soft["test"]["avg1.5_size"] == pytest.approx(1.5, abs=0.2)
    assert multi["test"]["avg1.5_size"] == pytest.approx(1.5, abs=0.2)
    assert soft["test"] != multi["test"]


def _quiet(*_):
    return None


def test_results_hold_last_epoch_both_heads_and_scores_of_both_heads(tmp_path):
    cfg = TrainConfig(
        dataset="synthetic", dataset_options=TINY, loss="two_head", k=1.5, epochs=3, batch_size=64, eval_ks=[1, 1.5]
    )
    results = train(cfg, tmp_path, progress=False, log=_quiet)
    assert set(results["test_heads"]) == {"softmax", "multilabel", "combined"}
    assert results["test_heads"]["multilabel"] == results["test"]  # eval_head="multilabel"
    assert results["test_heads"]["softmax"] != results["test"]
    assert set(results["test_last"]) == set(results["test"])
    if results["summary"]["best_epoch"] == 3:
        assert results["test_last"] == results["test"]
    assert isinstance(results["warnings"], list)
    scores = load_checkpoint(tmp_path / "scores.pt")
    for split in ("val", "test"):
        assert torch.equal(scores[f"{split}_scores"], scores[f"{split}_scores_multilabel"])
        assert scores[f"{split}_scores_softmax"].shape == scores[f"{split}_scores"].shape
        # the softmax head's rows sum to 1, the multi-label head's do not
        assert torch.allclose(scores[f"{split}_scores_softmax"].float().sum(1), torch.ones(200), atol=1e-2)
    # the saved softmax-head scores reproduce test_heads["softmax"] (thresholds calibrated on validation)
    from avgk_lib import metrics as M

    threshold = M.average_k_threshold(scores["val_scores_softmax"].float(), 1.5)
    acc = M.average_k_accuracy(scores["test_scores_softmax"].float(), scores["test_targets"], threshold)
    assert acc == pytest.approx(results["test_heads"]["softmax"]["avg1.5_micro"], abs=0.02)


def test_test_and_test_last_are_the_best_and_last_checkpoints_metrics(tmp_path):
    bundle = load_dataset("synthetic", **TINY)
    cfg = TrainConfig(dataset="synthetic", dataset_options=TINY, epochs=3, batch_size=64, lr=0.3, eval_ks=[1, 2])
    results = train(cfg, tmp_path, progress=False, bundle=bundle, log=_quiet)
    run = build_run(RunSpec.resolve(cfg), bundle)
    for name, key in (("last.pt", "test_last"), ("best.pt", "test")):
        run.model.load_state_dict(load_checkpoint(tmp_path / name)["model"])
        assert evaluate_final(run)["heads"]["main"] == results[key], name
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == results["summary"]["best_epoch"]


def test_collapsed_model_is_flagged_in_results_and_log(tmp_path):
    bundle = load_dataset("synthetic", **TINY)
    collapsed = dataclasses.replace(bundle, train=TensorSplit(bundle.train.x, torch.zeros_like(bundle.train.y)))
    cfg = TrainConfig(dataset="synthetic", dataset_options=TINY, epochs=1, batch_size=64, lr=0.1, eval_ks=[1, 2])
    lines: list[str] = []
    results = train(cfg, tmp_path, progress=False, bundle=collapsed, log=lines.append)
    assert results["test"]["top1_mode_share"] > 0.9
    assert any("top-1 prediction" in w for w in results["warnings"])
    assert any(line.startswith("warning:") for line in lines)
    assert json.loads((tmp_path / "results.json").read_text())["warnings"] == results["warnings"]


def test_top1_mode_share_and_degeneracy_rules_against_brute_force():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(300, 7, generator=g)
    top1 = [max(range(7), key=lambda j, row=row: row[j]) for row in scores.tolist()]
    expected = max(top1.count(c) for c in range(7)) / 300
    assert top1_mode_share(scores) == pytest.approx(expected)
    assert degeneracy_warnings({"top1_mode_share": 0.5, "avg2_size": 2.0}, 7, [2.0], "x") == []
    assert len(degeneracy_warnings({"top1_mode_share": 0.51, "avg2_size": 7.0}, 7, [2.0], "x")) == 2


def test_divergence_stops_the_run_without_results(tmp_path):
    cfg = TrainConfig(dataset="synthetic", dataset_options=TINY, epochs=3, batch_size=64, lr=1e7, momentum=0.9)
    with pytest.raises(TrainingDiverged, match=r"epoch \d+, step \d+: loss .*try a lower --lr"):
        train(cfg, tmp_path, progress=False, log=_quiet)
    assert not (tmp_path / "results.json").exists()


def test_divergence_guard_rule_and_exact_step():
    guard = DivergenceGuard(check_every=3)
    for step, value in enumerate([2.0, 3.0, 100.0]):
        guard.observe(torch.tensor(value), 0, step)  # reference = first loss 2.0, limit 2e4
    with pytest.raises(TrainingDiverged, match="epoch 1, step 5: loss 2.5e\\+04"):
        guard.observe(torch.tensor(1.0), 0, 3)
        guard.observe(torch.tensor(2.5e4), 0, 4)
        guard.observe(torch.tensor(float("nan")), 0, 5)
    guard = DivergenceGuard(reference=0.001)  # floored at 1: the limit is 1e4, not 10
    guard.observe(torch.tensor(9e3), 0, 0)
    with pytest.raises(TrainingDiverged, match="non-finite"):
        guard.observe(torch.tensor(float("inf")), 2, 7)


def test_progress_bars_follow_avgk_progress(monkeypatch):
    items = [1, 2, 3]
    monkeypatch.setenv("AVGK_PROGRESS", "0")
    assert progress_bar(items, 3, "x", True) is items
    monkeypatch.setenv("AVGK_PROGRESS", "1")
    bar = progress_bar(items, 3, "x", True)
    assert bar is not items and list(bar) == items
    assert progress_bar(items, 3, "x", False) is items


def test_config_validate_returns_a_new_config_and_fingerprint_is_salted(monkeypatch):
    cfg = TrainConfig(k=1.5, eval_ks=[3, 1], loss="two_head")
    before = dataclasses.asdict(cfg)
    valid = cfg.validate()
    assert dataclasses.asdict(cfg) == before and valid is not cfg
    assert valid.eval_ks == [1.0, 1.5, 3.0]
    assert valid.fingerprint() == cfg.fingerprint()
    assert dataclasses.replace(cfg, device="cuda", workers=0).fingerprint() == cfg.fingerprint()
    salted = cfg.fingerprint()
    import avgk_lib.config as config_module

    monkeypatch.setattr(config_module, "CACHE_FORMAT_VERSION", config_module.CACHE_FORMAT_VERSION + 1)
    assert cfg.fingerprint() != salted  # runs cached by another format are never reused


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"k": -1}, "k"),
        ({"lr": float("nan")}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"model": "nosuch"}, "model"),
        ({"loss": "nosuch"}, "loss"),
        ({"dataset": "nosuch"}, "dataset"),
        ({"device": "foo"}, "device"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"max_batches": 0}, "max_batches"),
        ({"eval_ks": []}, "eval_ks"),
        ({"milestones": [0]}, "milestones"),
        ({"select_metric": "top7_micro"}, "select_metric"),
        ({"loss": "noised_topk", "k": 1.5}, "k"),
        ({"loss_options": {"tau": 1.0}}, "tau"),
        ({"dataset_options": {"n_train": 0}}, "n_train"),
        ({"dataset_options": {"nosuch": 1}}, "nosuch"),
        ({"nesterov": "yes"}, "nesterov"),
    ],
)
def test_config_errors_name_the_field(changes, field):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**changes).validate()
    assert info.value.field == field and f"`{field}`" in str(info.value)


def test_checks_against_the_data_run_before_training():
    bundle = load_dataset("synthetic", **TINY)  # 8 classes, 600 training samples
    for changes, field in [
        ({"loss": "noised_topk", "k": 8}, "k"),
        ({"eval_ks": [9]}, "eval_ks"),
        ({"batch_size": 601}, "batch_size"),
    ]:
        with pytest.raises(ConfigError) as info:
            build_run(RunSpec.resolve(TrainConfig(dataset="synthetic", dataset_options=TINY, **changes)), bundle)
        assert info.value.field == field


def test_build_run_takes_a_resolved_run():
    cfg = TrainConfig(dataset="synthetic", dataset_options=TINY)
    with pytest.raises(TypeError, match=r"RunSpec\.resolve\(cfg\)"):
        build_run(cfg)


def test_objective_scores_and_defaults_come_from_the_loss():
    import inspect

    from avgk_lib import functional as AF

    run = {"k": 2, "n_classes": 5, "class_counts": [10, 5, 3, 2, 1], "n_train": 21}

    def build(name, options):
        return assemble_objective(OBJECTIVES[name], {**OBJECTIVES[name].defaults, **options}, run=run)

    ldam = build("ldam", {})
    default_scale = inspect.signature(AF.ldam_loss).parameters["scale"].default
    assert ldam.loss_fn.scale == default_scale == ldam.scale
    logits = torch.randn(4, 5).clamp(-1, 1)
    assert torch.allclose(ldam.head_scores(logits)["main"], torch.softmax(logits * default_scale, 1))
    noised = build("noised_topk", {"n_samples": 3})
    assert noised.loss_fn.n_samples == 3
    assert noised.loss_fn.epsilon == inspect.signature(AF.noised_topk_loss).parameters["epsilon"].default
    two = build("two_head", {})
    outputs = (torch.randn(4, 5), torch.randn(4, 5))
    assert torch.allclose(two.head_scores(outputs)["softmax"], torch.softmax(outputs[0], 1))
    assert torch.allclose(two.head_scores(outputs)["multilabel"], torch.sigmoid(outputs[1]))
    batch = (None, torch.tensor([0, 1, 2, 3]), torch.arange(4))
    assert torch.isfinite(two.loss(outputs, batch))
    with pytest.raises(ConfigError, match="tau"):
        TrainConfig(loss="noised_topk", k=2.0, loss_options={"tau": 1.0}).validate()


def test_run_result_json_round_trip(tmp_path):
    cfg = TrainConfig(dataset="synthetic", dataset_options=TINY, epochs=1, batch_size=64, eval_ks=[1, 2])
    results = train(cfg, tmp_path, progress=False, log=_quiet)
    text = (tmp_path / "results.json").read_text()
    parsed = RunResult.from_json(text)
    stored = json.loads(text)
    assert len(stored.pop("sha256")) == 64  # results.json carries a checksum of its content
    assert parsed.to_dict() == stored == json.loads(json.dumps(results))
    edited = json.loads(text)
    edited["test"]["top1_micro"] = 1.0
    with pytest.raises(ValueError, match="checksum"):
        RunResult.from_json(json.dumps(edited))
    assert "test_heads" not in results  # single-head model
    with pytest.raises(ValueError, match="missing"):
        RunResult.from_json("{}")
    with pytest.raises(ValueError, match="format None"):
        RunResult.from_json(json.dumps({k: v for k, v in results.items() if k != "format_version"}))
    with pytest.raises(ValueError, match="invalid JSON"):
        RunResult.from_json('{"config": ')


def test_stale_tmp_files_are_removed_and_a_corrupt_best_checkpoint_is_refused(tmp_path):
    (tmp_path / ".last.pt.tmp-12345").write_bytes(b"half a checkpoint")
    (tmp_path / ".results.json.tmp").write_text("{")
    cfg = TrainConfig(dataset="synthetic", dataset_options=TINY, epochs=2, batch_size=64, eval_ks=[1, 2])
    lines: list[str] = []
    train(cfg, tmp_path, resume=True, progress=False, log=lines.append)
    assert any("no checkpoint" in line and "starting fresh" in line for line in lines)
    assert not list(tmp_path.glob(".*.tmp*"))
    best = (tmp_path / "best.pt").read_bytes()
    (tmp_path / "best.pt").write_bytes(best[: len(best) // 2])
    (tmp_path / "results.json").unlink()
    with pytest.raises(CheckpointError, match="best.pt"):
        train(cfg, tmp_path, resume=True, progress=False, log=_quiet)


def test_atomic_writer_on_a_full_disk_names_the_file_and_leaves_no_tmp(tmp_path, monkeypatch):
    import errno
    import os

    from avgk_lib import rundir as ckpt

    target = tmp_path / "last.pt"
    ckpt.atomic_write_bytes(target, b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="no space left on device") as info:
        ckpt.save_checkpoint({"w": torch.zeros(3)}, target)
    assert info.value.errno == errno.ENOSPC and str(target) in str(info.value)
    assert target.read_bytes() == b"old"  # the previous file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no tmp file left


def test_checksum_catches_a_bit_flip_that_torch_load_accepts(tmp_path):
    import io

    from avgk_lib import rundir as ckpt

    weights = torch.arange(4096, dtype=torch.float32)
    path = tmp_path / "best.pt"
    ckpt.save_checkpoint({"model": {"w": weights}, "epoch": 3}, path)
    assert torch.equal(ckpt.load_checkpoint(path)["model"]["w"], weights)
    data = bytearray(path.read_bytes())
    at = bytes(data).find(weights[1000:1002].numpy().tobytes())
    assert at > 0
    data[at] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))
    flipped = torch.load(io.BytesIO(bytes(data)), weights_only=False)  # torch itself does not notice
    assert not torch.equal(flipped["model"]["w"], weights)
    with pytest.raises(CheckpointError, match="corrupt .checksum mismatch."):
        ckpt.load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_of_an_older_format_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"format_version": 1, "epoch": 2}, path)  # what earlier versions wrote
    with pytest.raises(CheckpointError, match="format version 1"):
        load_checkpoint(path)


def test_content_digest_is_stable_through_save_and_load(tmp_path):
    import random

    import numpy as np

    from avgk_lib.rundir import content_digest
    from avgk_lib.seeding import rng_state

    random.seed(1)
    obj = {"rng": rng_state(), "h": [{"a": 1.5, "b": None}], 3: (torch.ones(2, dtype=torch.bfloat16), np.arange(3))}
    path = tmp_path / "x.pt"
    torch.save(obj, path)
    assert content_digest(torch.load(path, weights_only=False)) == content_digest(obj)
    changed = {**obj, "h": [{"a": 1.5000001, "b": None}]}
    assert content_digest(changed) != content_digest(obj)


def test_nan_outputs_are_divergence_not_bad_input():
    bundle = load_dataset("synthetic", **TINY)
    cfg = TrainConfig(dataset="synthetic", dataset_options=TINY, loss="noised_topk", k=2, epochs=1, batch_size=64)
    run = build_run(RunSpec.resolve(cfg), bundle)
    with torch.no_grad():
        for p in run.model.parameters():
            p.fill_(float("nan"))
    # noised_topk validates its scores (ValueError on NaN): the trainer reports divergence instead
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step 1: loss nan .*non-finite.*try a lower --lr"):
        train_one_epoch(run, 0, DivergenceGuard(), progress=False)


def test_build_run_and_complete_compose_to_train_and_restore_a_state(tmp_path):
    """The loop's parts called directly give train's results; a built run restored from last.pt
    (no epochs left) finishes with the same test metrics."""
    quiet = lambda *_: None  # noqa: E731
    cfg = TrainConfig(dataset="synthetic", dataset_options=TINY, loss="noised_topk", k=2, epochs=2, batch_size=64)
    reference = train(cfg, tmp_path / "run", progress=False, log=quiet)
    spec = RunSpec.resolve(cfg)
    direct = complete(build_run(spec), None, None, progress=False, log=quiet, started=0.0)
    assert direct.test == reference["test"] and direct.test_last == reference["test_last"]
    state = RunDir(tmp_path / "run").resume_state(spec.fingerprint, True, quiet)
    assert state is not None and state.epoch == 2
    folder = RunDir(tmp_path / "run")
    restored = complete(build_run(spec, state=state), folder, state, progress=False, log=quiet, started=0.0)
    assert restored.test == reference["test"] and restored.test_last == reference["test_last"]
    assert restored.history == reference["history"]
