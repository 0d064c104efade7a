"""RunDir: one live run per folder (real processes), one configuration per folder, a cache that
cannot lie, temporary files of dead writers only."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from avgk_book.experiments import runner
from avgk_lib.rundir import CheckpointError, RunDir, RunDirBusy, RunDirError, RunDirForeign, load_checkpoint
from avgk_lib.train import TrainConfig, train

TINY = {"n_classes": 6, "dim": 4, "n_groups": 2, "n_train": 256, "n_val": 128, "n_test": 128}


def _cfg(**kw) -> TrainConfig:
    base = {"dataset": "synthetic", "dataset_options": TINY, "epochs": 1, "batch_size": 64, "eval_ks": [1, 2]}
    return TrainConfig(**{**base, **kw})


def _quiet(*_):
    return None


HOLDER = textwrap.dedent(
    """
    import sys
    from avgk_lib.rundir import RunDir
    folder = RunDir(sys.argv[1])
    folder.claim("f" * 16, {}, resume=False)
    print("claimed", flush=True)
    sys.stdin.readline()
    """
)


def _holder(folder) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout.readline().strip() == "claimed"  # waits as long as the child needs: no timing
    return child


def test_a_second_process_is_refused_while_the_first_lives_and_let_in_once_it_is_killed(tmp_path):
    child = _holder(tmp_path)
    try:
        with pytest.raises(RunDirBusy, match=f"in use by another running training process \\(pid {child.pid}\\)"):
            RunDir(tmp_path).claim("f" * 16, {}, resume=True)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=120)
    folder = RunDir(tmp_path)
    folder.claim("f" * 16, {}, resume=True)  # the OS dropped the killed process's lock
    folder.release()


def test_two_train_commands_into_one_folder_the_second_fails_at_once(tmp_path):
    child = _holder(tmp_path / "run")
    try:
        with pytest.raises(RunDirError):
            train(_cfg(), tmp_path / "run", progress=False, log=_quiet)
    finally:
        child.communicate("\n", timeout=120)


def test_a_folder_of_another_configuration_is_never_written(tmp_path):
    train(_cfg(lr=0.1), tmp_path, progress=False, log=_quiet)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name != ".lock"}
    (tmp_path / "last.pt").unlink()  # the only guard used to be "last.pt exists"
    for resume in (False, True):
        with pytest.raises(RunDirForeign, match="different configuration"):
            train(_cfg(lr=0.2), tmp_path, resume=resume, progress=False, log=_quiet)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == {k: v for k, v in before.items() if k != "last.pt"}
    assert issubclass(RunDirForeign, CheckpointError)


def test_the_cache_never_returns_another_runs_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("AVGK_CACHE_DIR", str(tmp_path))
    a, b = _cfg(lr=0.1), _cfg(lr=0.2)
    results_a, folder_a, _ = runner.train_or_load_many([a], progress=False, log=_quiet)[0]
    folder_b = runner.run_dir(b)
    folder_b.mkdir(parents=True)
    shutil.copy(folder_a / "results.json", folder_b / "results.json")  # another run's results
    with pytest.warns(UserWarning, match=str(folder_b)):
        results_b, _, cached = runner.train_or_load_many([b], progress=False, log=_quiet)[0]
    assert not cached and results_b["summary"]["fingerprint"] == b.fingerprint()
    text = (folder_a / "results.json").read_text()
    (folder_a / "results.json").write_text(text.replace('"lr": 0.1', '"lr": 0.3', 1))  # an edited number
    with pytest.warns(UserWarning, match="checksum"):
        again, _, cached = runner.train_or_load_many([a], progress=False, log=_quiet)[0]
    assert not cached and again["test"] == results_a["test"]


def test_only_temporary_files_of_dead_writers_are_removed(tmp_path):
    live = tmp_path / f".best.pt.tmp-{os.getpid()}"
    live.write_bytes(b"being written")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".last.pt.tmp-{int(dead.stdout)}"
    stale.write_bytes(b"left by a killed writer")
    assert RunDir(tmp_path).remove_dead_tmp() == [stale]
    assert live.exists() and not stale.exists()


def test_run_file_names_taken_by_folders_are_one_clear_error_before_training(tmp_path):
    (tmp_path / "results.json").mkdir()
    with pytest.raises(RunDirError, match="results.json is not a file"):
        train(_cfg(), tmp_path, progress=False, log=_quiet)


def test_an_empty_out_is_refused():
    with pytest.raises(ValueError, match="out"):
        RunDir("  ")


def test_an_unreadable_checkpoint_is_not_called_damaged(tmp_path):
    if os.geteuid() == 0:  # root reads every file: make the check see a denied read
        import avgk_lib.rundir as ckpt

        real = os.access
        ckpt.os.access = lambda path, mode: False if str(path).endswith("last.pt") else real(path, mode)
    else:
        real = None
    try:
        train(_cfg(), tmp_path, progress=False, log=_quiet)
        (tmp_path / "last.pt").chmod(0)
        with pytest.raises(CheckpointError, match="not readable") as info:
            train(_cfg(), tmp_path, resume=True, progress=False, log=_quiet)
        assert "delete" not in str(info.value)
    finally:
        if real is not None:
            import avgk_lib.rundir as ckpt

            ckpt.os.access = real


def test_a_reference_edited_by_hand_is_refused(tmp_path):
    import json

    from avgk_book.references import ReferenceError, seal, unseal

    sealed = seal({"rows": [{"seed": 0, "test_top5_micro": 0.8}]})
    assert unseal(json.loads(json.dumps(sealed)), "x.json") == {"rows": [{"seed": 0, "test_top5_micro": 0.8}]}
    sealed["rows"][0]["test_top5_micro"] = 0.9
    with pytest.raises(ReferenceError, match="x.json fails its checksum"):
        unseal(sealed, "x.json")
    with pytest.raises(ReferenceError, match="has no checksum"):
        unseal({"rows": []}, "x.json")


# ------------------------------------------------------------------ issue 31: force, foreign files, crafted files

CACHE_HOLDER = textwrap.dedent(
    """
    import sys
    from avgk_book.experiments import runner
    from avgk_lib.rundir import RunDir
    from avgk_lib.train import TrainConfig
    TINY = {"n_classes": 6, "dim": 4, "n_groups": 2, "n_train": 256, "n_val": 128, "n_test": 128}
    cfg = TrainConfig(dataset="synthetic", dataset_options=TINY, epochs=1, batch_size=64, eval_ks=[1, 2])
    folder = RunDir(runner.run_dir(cfg))
    folder.claim(cfg.fingerprint(), {}, resume=True)  # a live run of this configuration holds its folder
    print("claimed", flush=True)
    sys.stdin.readline()
    """
)


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


def test_force_never_touches_a_folder_that_another_process_is_training(tmp_path, monkeypatch):
    monkeypatch.setenv("AVGK_CACHE_DIR", str(tmp_path))
    cfg = _cfg()
    runner.train_or_load_many([cfg], progress=False, log=_quiet)  # a finished run: last.pt, best.pt, scores, results
    folder = runner.run_dir(cfg)
    before = _files(folder)
    assert {"best.pt", "last.pt", "results.json", "run.json", "scores.pt"} <= set(before)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", CACHE_HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout.readline().strip() == "claimed"  # the second process holds the lock: no timing
        during = _files(folder)
        with pytest.raises(RunDirBusy, match=f"pid {child.pid}.*nothing in the folder was changed"):
            runner.train_or_load_many([cfg], force=True, progress=False, log=_quiet)[0]
        assert _files(folder) == during  # the refusal deleted nothing
        assert {"best.pt", "last.pt", "results.json", "scores.pt"} <= set(during)
    finally:
        child.communicate("\n", timeout=120)
    # the lock is free: it retrains
    again, _, cached = runner.train_or_load_many([cfg], force=True, progress=False, log=_quiet)[0]
    assert not cached and again["test"] == json.loads(before["results.json"])["test"]


def test_a_folder_with_only_lock_and_run_json_accepts_a_new_run(tmp_path):
    folder = RunDir(tmp_path)
    folder.claim(_cfg(lr=9.0).fingerprint(), {}, resume=False)  # e.g. a run that diverged in epoch 1
    folder.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "run.json"]
    results = train(_cfg(lr=0.1), tmp_path, progress=False, log=_quiet)
    assert results["summary"]["fingerprint"] == _cfg(lr=0.1).fingerprint()


def test_one_folder_given_twice_is_not_blamed_on_another_process(tmp_path):
    from avgk_lib.train import train_many

    with pytest.raises(RunDirError, match="given twice") as info:
        train_many([_cfg(), _cfg(lr=0.2)], [tmp_path, tmp_path], progress=False, log=_quiet)
    assert "another" not in str(info.value)


def test_scores_name_their_run_and_foreign_scores_are_refused_or_rewritten(tmp_path, monkeypatch):
    monkeypatch.setenv("AVGK_CACHE_DIR", str(tmp_path))
    a, b = _cfg(lr=0.1), _cfg(lr=0.2)
    _, folder_a, _ = runner.train_or_load_many([a], progress=False, log=_quiet)[0]
    _, folder_b, _ = runner.train_or_load_many([b], progress=False, log=_quiet)[0]
    own_b = RunDir(folder_b).load_scores()
    assert "fingerprint" not in own_b and set(own_b) >= {"val_scores", "test_scores"}
    shutil.copy(folder_a / "scores.pt", folder_b / "scores.pt")  # chapter 9 would load these as b's
    with pytest.raises(CheckpointError, match=r"scores\.pt was written by a different configuration") as info:
        RunDir(folder_b).load_scores()
    assert "\n" not in str(info.value) and "--force" in str(info.value)
    with pytest.warns(UserWarning, match="scores.pt is not this run's"):
        _, _, cached = runner.train_or_load_many([b], progress=False, log=_quiet)[0]  # evaluated again from last.pt
    assert not cached
    assert torch.equal(RunDir(folder_b).load_scores()["test_scores"], own_b["test_scores"])


def _craft(path, marker) -> None:
    """A torch file whose unpickling would create ``marker`` (pathlib.Path.touch)."""

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (pathlib.Path(marker),))

    torch.save({"model": Payload(), "format_version": torch.tensor(2)}, path)


@pytest.mark.parametrize("name", ["last.pt", "best.pt", "scores.pt"])
def test_a_crafted_run_file_is_refused_and_nothing_in_it_runs(tmp_path, monkeypatch, name):
    monkeypatch.setenv("AVGK_CACHE_DIR", str(tmp_path / "cache"))
    cfg = _cfg(epochs=2)
    _, folder, _ = runner.train_or_load_many([cfg], progress=False, log=_quiet)[0]
    marker = tmp_path / "ran.txt"
    _craft(folder / name, marker)
    with pytest.raises(CheckpointError, match=f"{name} was refused: it holds .*nothing in it was run") as info:
        if name == "scores.pt":
            RunDir(folder).load_scores()  # chapter 9's path
        elif name == "best.pt":
            RunDir(folder).load_best(cfg.fingerprint())  # the final evaluation's path
        else:
            (folder / "results.json").unlink()  # the run cache resumes an unfinished run
            runner.train_or_load_many([cfg], progress=False, log=_quiet)[0]
    assert str(folder / name) in str(info.value) and "\n" not in str(info.value)
    if name != "last.pt":  # the cache does not reuse a run whose files are not its own: evaluated again
        (folder / "results.json").unlink()
        try:
            runner.train_or_load_many([cfg], progress=False, log=_quiet)[0]
            assert set(RunDir(folder).load_scores()) >= {"val_scores", "test_scores"}  # rewritten
        except CheckpointError as err:  # best.pt of an earlier epoch than the last: not rebuildable
            assert "best.pt was refused" in str(err) and "--force" in str(err)
    assert not marker.exists()


def test_a_crafted_checkpoint_under_train_resume_is_one_line_and_runs_nothing(tmp_path):
    out = tmp_path / "run"
    train(_cfg(), out, progress=False, log=_quiet)
    marker = tmp_path / "ran.txt"
    _craft(out / "last.pt", marker)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "AVGK_PROGRESS": "0"}
    args = ["train", "--dataset", "synthetic", "--epochs", "1", "--batch-size", "64", "--eval-ks", "1", "2"]
    args += [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    proc = subprocess.run(
        [sys.executable, "-m", "avgk_lib", *args, "--resume", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "last.pt was refused" in lines[0] and str(out / "last.pt") in lines[0]
    assert not marker.exists()


def test_a_damaged_best_checkpoint_is_rebuilt_or_names_how_to_start_over(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(epochs=3), out, progress=False, log=_stop_after(2))
    state = load_checkpoint(out / "last.pt")
    (out / "best.pt").write_bytes(b"damaged")
    if state["best_epoch"] == state["epoch"]:
        lines = []
        results = train(_cfg(epochs=3), out, resume=True, progress=False, log=lines.append)
        assert any("rebuilt" in line for line in lines) and results["summary"]["best_epoch"] >= 1
    else:
        with pytest.raises(CheckpointError, match="cannot be rebuilt.*delete the run files"):
            train(_cfg(epochs=3), out, resume=True, progress=False, log=_quiet)


def _stop_after(epochs: int):
    def log(line, *_):
        if str(line).startswith("epoch") and f"{epochs:>3}/" in str(line):
            raise KeyboardInterrupt

    return log


def test_wall_seconds_add_up_over_resumed_parts(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(epochs=3), out, progress=False, log=_stop_after(2))
    first = load_checkpoint(out / "last.pt")
    assert first["wall_seconds"] >= sum(e["seconds"] for e in first["history"]) > 0
    results = train(_cfg(epochs=3), out, resume=True, progress=False, log=_quiet)
    assert results["provenance"]["wall_seconds"] >= first["wall_seconds"] + results["history"][-1]["seconds"]
    again = train(_cfg(epochs=3), out, resume=True, progress=False, log=_quiet)  # a re-evaluation
    assert again["provenance"]["wall_seconds"] >= results["provenance"]["wall_seconds"] * 0.999


def test_a_finished_run_is_not_called_unfinished(tmp_path):
    train(_cfg(), tmp_path, progress=False, log=_quiet)
    with pytest.raises(CheckpointError, match="finished run") as info:
        train(_cfg(), tmp_path, progress=False, log=_quiet)
    assert "to continue it" not in str(info.value)


def test_a_tampered_run_json_does_not_delete_valid_results(tmp_path, monkeypatch):
    monkeypatch.setenv("AVGK_CACHE_DIR", str(tmp_path))
    results, folder, _ = runner.train_or_load_many([_cfg()], progress=False, log=_quiet)[0]
    owner = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**owner, "fingerprint": "0" * 16}))
    again, _, cached = runner.train_or_load_many([_cfg()], progress=False, log=_quiet)[0]
    assert cached and again == results and (folder / "results.json").exists()


def test_a_results_json_that_is_a_folder_is_one_line_under_run(tmp_path, monkeypatch):
    monkeypatch.setenv("AVGK_CACHE_DIR", str(tmp_path))
    folder = runner.run_dir(_cfg())
    (folder / "results.json").mkdir(parents=True)
    with pytest.warns(UserWarning), pytest.raises(RunDirError, match="results.json is a folder"):
        runner.train_or_load_many([_cfg()], progress=False, log=_quiet)[0]
