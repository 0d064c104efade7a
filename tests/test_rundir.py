"""RunDir: one live run per folder (real processes), one configuration per folder, a cache that
cannot lie, temporary files of dead writers only."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from avgk_lib.experiments import runner
from avgk_lib.rundir import CheckpointError, RunDir, RunDirBusy, RunDirError, RunDirForeign
from avgk_lib.train import TrainConfig, train

TINY = {"n_classes": 6, "dim": 4, "n_groups": 2, "n_train": 256, "n_val": 128, "n_test": 128}


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(dataset="synthetic", dataset_options=TINY, epochs=1, batch_size=64, eval_ks=[1, 2], **kw)


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
    results_a, folder_a, _ = runner.train_or_load(a, progress=False, log=_quiet)
    folder_b = runner.run_dir(b)
    folder_b.mkdir(parents=True)
    shutil.copy(folder_a / "results.json", folder_b / "results.json")  # another run's results
    with pytest.warns(UserWarning, match=str(folder_b)):
        results_b, _, cached = runner.train_or_load(b, progress=False, log=_quiet)
    assert not cached and results_b["summary"]["fingerprint"] == b.fingerprint()
    text = (folder_a / "results.json").read_text()
    (folder_a / "results.json").write_text(text.replace('"lr": 0.1', '"lr": 0.3', 1))  # an edited number
    with pytest.warns(UserWarning, match="checksum"):
        again, _, cached = runner.train_or_load(a, progress=False, log=_quiet)
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

    from avgk_lib.references import ReferenceError, seal, unseal

    sealed = seal({"rows": [{"seed": 0, "test_top5_micro": 0.8}]})
    assert unseal(json.loads(json.dumps(sealed)), "x.json") == {"rows": [{"seed": 0, "test_top5_micro": 0.8}]}
    sealed["rows"][0]["test_top5_micro"] = 0.9
    with pytest.raises(ReferenceError, match="x.json fails its checksum"):
        unseal(sealed, "x.json")
    with pytest.raises(ReferenceError, match="has no checksum"):
        unseal({"rows": []}, "x.json")
