"""The command line: every user mistake ends with one line ``error: ...`` naming the flag and exit
code 2 before anything trains; a diverged run ends with one line and exit code 1; ``--debug``
shows the traceback. Sized tiny (synthetic data, a few hundred samples, one epoch)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from avgk_book.cli import main as book_main
from avgk_lib.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--n-train", "300", "--n-val", "100", "--n-test", "100", "--n-classes", "8", "--dim", "4", "--n-groups", "2"]
QUICK = ["--dataset", "synthetic", *TINY, "--epochs", "1", "--batch-size", "64", "--no-progress"]


def _cli(argv, capsys, entry=main) -> tuple[int, str, str]:
    """Run the CLI (the library's, or ``entry``: the book's) in this process: (exit code, stdout, stderr)."""
    try:
        code = entry(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_one_line_error(code: int, err: str, *words: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--epochs", "0"], ["--epochs", ">= 1"]),
        (["--epochs", "x"], ["--epochs"]),
        (["--batch-size", "0"], ["--batch-size"]),
        (["--k", "-1"], ["--k"]),
        (["--lr", "nan"], ["--lr"]),
        (["--lr", "0"], ["--lr"]),
        (["--momentum", "1"], ["--momentum"]),
        (["--n-train", "0"], ["--n-train", ">= 1"]),
        (["--model", "nosuch"], ["--model", "valid names"]),
        (["--device", "foo"], ["--device"]),
        (["--device", "cuda:7"], ["--device"]),
        (["--loss", "nosuch"], ["--loss", "valid names", "two_head"]),
        (["--max-batches", "-1"], ["--max-batches", ">= 1"]),
        (["--max-batches", "0"], ["--max-batches"]),
        (["--select-metric", "top7_micro"], ["--select-metric"]),
        (["--select-metric", "accuracy"], ["--select-metric"]),
        (["--optimizer", "adam"], ["--optimizer"]),
        (["--tau", "1"], ["--tau", "cross_entropy"]),
        (["--eval-ks", "0"], ["--eval-ks"]),
        (["--eval-ks", "a,b"], ["--eval-ks"]),
        (["--eval-ks", "9"], ["--eval-ks", "number of classes"]),
        (["--milestones", "0"], ["--milestones"]),
        (["--loss", "noised_topk", "--k", "1.5"], ["--k", "integer"]),
        (["--loss", "noised_topk", "--k", "8"], ["--k", "number of classes"]),
        (["--loss", "noised_topk", "--k", "2", "--epsilon", "-1"], ["--epsilon"]),
        (["--loss", "two_head", "--k", "1.5", "--rule", "nosuch"], ["--rule"]),
        (["--batch-size", "5000"], ["--batch-size", "no full training batch"]),
        # flags that the chosen scheduler, model, loss or optimizer ignores (issue 31)
        (["--scheduler", "cosine", "--milestones", "3"], ["--milestones", "step scheduler", "cosine"]),
        (["--scheduler", "onecycle", "--lr-gamma", "0.5"], ["--lr-gamma", "step scheduler"]),
        (["--pretrained"], ["--pretrained", "resnet50", "mlp"]),
        (["--eval-head", "softmax"], ["--eval-head", "two-head", "cross_entropy"]),
        (["--detach-multilabel"], ["--detach-multilabel", "two-head"]),
        (["--optimizer", "adamw", "--momentum", "0.5"], ["--momentum", "sgd", "adamw"]),
        (["--optimizer", "adamw", "--no-nesterov"], ["--nesterov", "sgd", "adamw"]),
        # subnormal float32 values: refused alike for every real setting (issue 31)
        (["--lr", "1e-40"], ["--lr", "underflows"]),
        (["--k", "1e-40"], ["--k", "underflows"]),
        (["--loss-weight", "1e-40"], ["--loss-weight", "underflows"]),
        (["--loss", "smooth_topk_svm", "--k", "2", "--tau", "1e-40"], ["--tau", "underflows"]),
    ],
)
def test_train_mistakes_end_in_one_line_naming_the_flag(args, words, capsys, tmp_path):
    code, _, err = _cli(["train", *QUICK, "--out", str(tmp_path / "run"), *args], capsys)
    _assert_one_line_error(code, err, *words)
    assert not (tmp_path / "run" / "last.pt").exists()  # nothing trained


def test_dataset_option_of_another_dataset_and_unknown_experiment(capsys):
    _assert_one_line_error(*_cli(["train", "--dataset", "plantnet300k", "--n-train", "10"], capsys)[::2], "--n-train")
    _assert_one_line_error(*_cli(["run", "nosuch"], capsys, book_main)[::2], "nosuch", "valid names")
    _assert_one_line_error(*_cli(["run", "label_noise", "--preset", "huge"], capsys, book_main)[::2], "--preset")
    _assert_one_line_error(*_cli(["nosuch"], capsys)[::2], "nosuch")
    _assert_one_line_error(*_cli(["run", "label_noise"], capsys)[::2], "run")  # the book's command, not the library's


def test_out_must_be_a_writable_folder(capsys, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    _assert_one_line_error(*_cli(["train", *QUICK, "--out", str(a_file)], capsys)[::2], "--out", "not a folder")
    unwritable = "/proc/avgk-cannot-write-here"  # not creatable, even by root
    _assert_one_line_error(*_cli(["train", *QUICK, "--out", unwritable], capsys)[::2], "--out", "writable")


def test_existing_runs_resume_and_checkpoint_mistakes(capsys, tmp_path):
    out = str(tmp_path / "run")
    code, stdout, _ = _cli(["train", *QUICK, "--out", out, "--resume"], capsys)
    assert code == 0 and "no checkpoint" in stdout and "starting fresh" in stdout
    assert (tmp_path / "run" / "results.json").exists()
    # an existing run without --resume, and a different configuration with --resume
    _assert_one_line_error(*_cli(["train", *QUICK, "--out", out], capsys)[::2], "finished run", "--resume")
    other = ["train", *QUICK, "--lr", "0.01", "--out", out, "--resume"]
    _assert_one_line_error(*_cli(other, capsys)[::2], "different configuration")
    # a garbage, a truncated and a bit-flipped last.pt
    last = tmp_path / "run" / "last.pt"
    good = last.read_bytes()
    for broken, word in [(b"garbage", "unreadable"), (good[: len(good) // 3], "unreadable")]:
        last.write_bytes(broken)
        _assert_one_line_error(*_cli(["train", *QUICK, "--out", out, "--resume"], capsys)[::2], "last.pt", word)
    last.write_bytes(good)
    code, _, err = _cli(["train", *QUICK, "--out", out, "--resume"], capsys)
    assert code == 0, err


def _subprocess(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "avgk_lib", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "AVGK_PROGRESS": "0"},
    )


def test_subprocess_mistake_is_one_line_and_debug_shows_the_traceback(tmp_path):
    proc = _subprocess("train", *QUICK, "--epochs", "0", "--out", str(tmp_path / "a"))
    _assert_one_line_error(proc.returncode, proc.stderr, "--epochs")
    proc = _subprocess("train", *QUICK, "--epochs", "0", "--out", str(tmp_path / "a"), "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_subprocess_divergence_ends_in_one_line_and_no_results(tmp_path):
    out = tmp_path / "diverged"
    proc = _subprocess("train", *QUICK, "--epochs", "2", "--lr", "1e7", "--out", str(out))
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("error: training diverged at epoch ") and "step " in lines[0]
    assert "loss " in lines[0] and "try a lower --lr" in lines[0]
    assert not (out / "results.json").exists()
    if not (out / "last.pt").exists():  # diverged in epoch 1: only .lock and run.json, the advice works as said
        assert sorted(p.name for p in out.iterdir()) == [".lock", "run.json"]
        retry = _subprocess("train", *QUICK, "--epochs", "1", "--lr", "0.1", "--out", str(out))
        assert retry.returncode == 0, retry.stderr
    else:
        assert "another --out" in lines[0]


def test_help_lists_generated_flags_with_loss_defaults(capsys):
    code, out, _ = _cli(["train", "--help"], capsys)
    assert code == 0
    for text in ("--batch-size", "--no-nesterov", "--eval-head", "--epsilon", "noised_topk: 1.0", "--n-train"):
        assert text in out
    assert "--save-reference" not in _cli(["run", "--help"], capsys, book_main)[1]


def test_list_and_quick_train_write_results(capsys, tmp_path):
    code, out, _ = _cli(["list"], capsys)
    assert code == 0 and "two_head" in out and "label_noise" not in out  # the losses; the experiments are the book's
    code, out, _ = _cli(["list"], capsys, book_main)
    assert code == 0 and "label_noise" in out and "python -m avgk_lib list" in out
    code, out, err = _cli(["train", *QUICK, "--eval-ks", "1", "2", "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["config"]["eval_ks"] == [1.0, 2.0, 5.0]  # K of the loss (5) added
    assert results["config"]["dataset_options"]["n_train"] == 300


def test_full_disk_during_a_run_is_one_line_naming_the_file(capsys, tmp_path, monkeypatch):
    import errno

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    code, _, err = _cli(["train", *QUICK, "--out", str(tmp_path / "r")], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err
    assert "no space left on device" in lines[0] and str(tmp_path / "r") in lines[0]
    assert not list((tmp_path / "r").glob(".*.tmp*"))


def test_flags_that_apply_are_accepted():
    from avgk_lib.config import TrainConfig

    TrainConfig(scheduler="step", milestones=[3], lr_gamma=0.5).validate()
    TrainConfig(optimizer="adamw").validate()  # momentum and nesterov at their defaults
    TrainConfig(loss="two_head", k=2, eval_head="softmax", detach_multilabel=True).validate()
    TrainConfig(dataset="synthetic", model="mlp", momentum=0.0).validate()


@pytest.mark.parametrize(
    ("code", "words", "exit_code"),
    [
        ("ENOSPC", ["no space left"], 1),
        ("EDQUOT", ["quota"], 1),
        ("EFBIG", ["file too large"], 1),
        ("EROFS", ["read-only"], 2),
        ("EACCES", ["permission denied"], 2),
    ],
)
def test_every_error_writing_a_run_file_is_one_line_naming_it(code, words, exit_code, capsys, tmp_path, monkeypatch):
    import errno

    def fail(fd):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(os, "fsync", fail)
    code_, _, err = _cli(["train", *QUICK, "--out", str(tmp_path / "r")], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code_ == exit_code and len(lines) == 1 and "Traceback" not in err, err
    assert str(tmp_path / "r") in lines[0] and all(w in lines[0] for w in words), lines[0]
    assert not list((tmp_path / "r").glob(".*.tmp*"))


def test_a_file_system_without_locks_has_its_own_message_and_a_way_out(capsys, tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    code, _, err = _cli(["train", *QUICK, "--out", str(tmp_path / "r")], capsys)
    _assert_one_line_error(code, err, "cannot lock files", "AVGK_NO_LOCK=1")
    assert "another" not in err
    monkeypatch.setenv("AVGK_NO_LOCK", "1")
    code, _, err = _cli(["train", *QUICK, "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err


def test_an_empty_cache_variable_means_unset(tmp_path, monkeypatch):
    from avgk_lib.data import cache_dir, data_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for blank in ("", "  "):
        monkeypatch.setenv("AVGK_CACHE_DIR", blank)
        monkeypatch.setenv("AVGK_DATA_DIR", blank)
        assert cache_dir() == tmp_path / "home" / ".cache" / "avgk"
        assert data_dir() == tmp_path / "home" / ".cache" / "avgk" / "data"


def test_run_serves_a_read_only_cache_that_holds_every_run(capsys, tmp_path, monkeypatch):
    from avgk_book.experiments import runner

    monkeypatch.setenv("AVGK_CACHE_DIR", str(tmp_path))
    rows = runner.run_experiment("label_noise", "smoke", [0], datasets=["synthetic"], progress=False, log=print)
    capsys.readouterr()

    def read_only(path, env, *, argument=None, write=False):
        assert not write, "a cache that holds every run is never written"
        return path

    monkeypatch.setattr(runner, "check_folder", read_only)
    monkeypatch.setattr("avgk_book.cli.check_folder", read_only)
    for folder in (tmp_path / "runs").iterdir():
        (folder / ".lock").unlink()
    (tmp_path / "runs").chmod(0o555)  # read-only (root ignores it: the patched check stands in)
    try:
        again = runner.run_experiment("label_noise", "smoke", [0], datasets=["synthetic"], progress=False, log=print)
    finally:
        (tmp_path / "runs").chmod(0o755)
    assert again == rows
    assert not any((folder / ".lock").exists() for folder in (tmp_path / "runs").iterdir())


def test_overrides_of_reported_fields_are_reflected_in_the_rows(tmp_path, monkeypatch):
    from avgk_book.experiments import GridRun, run_experiment
    from avgk_book.experiments.runner import _reported
    from avgk_lib.config import TrainConfig

    monkeypatch.setenv("AVGK_CACHE_DIR", str(tmp_path))
    noisier = {"dataset_options": {"label_noise": 0.5}}
    rows = run_experiment(
        "label_noise", "smoke", [0], datasets=["synthetic"], overrides=noisier, progress=False, log=lambda *_: None
    )
    assert rows and all(row["label_noise"] == 0.5 for row in rows)
    run = GridRun({"dataset": "synthetic-100", "train_k": 3.0}, TrainConfig(k=7.0))
    assert _reported(run).labels == {"dataset": "synthetic-100", "train_k": 7.0}
    untouched = GridRun({"dataset": "synthetic-100", "train_k": None}, TrainConfig(k=7.0))
    assert _reported(untouched) is untouched


@pytest.mark.parametrize("stop", [0, 1])
def test_ctrl_c_names_the_epochs_that_the_exception_says_are_saved(tmp_path, capsys, monkeypatch, stop):
    """The Ctrl-C line reads the finished epochs from the trainer's RunInterrupted (no log parsing)."""
    from avgk_lib import engine

    real = engine.train_one_epoch

    def interrupted(run, epoch, *args, **kwargs):
        if epoch == stop:
            raise KeyboardInterrupt
        return real(run, epoch, *args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", interrupted)
    out = tmp_path / "run"
    code, _, err = _cli(["train", *QUICK, "--epochs", "3", "--out", str(out)], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 130 and len(lines) == 1 and str(out) in lines[0], err
    words = ["before the first checkpoint"] if stop == 0 else ["after epoch 1;", "--resume --out"]
    assert all(word in lines[0] for word in words), lines[0]
