"""tools/reference_runs.py: a partial regeneration (--datasets) keeps another family's rows; jobs; ledger path."""

import importlib.util
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "reference_runs.py"


@pytest.fixture
def tool(monkeypatch):
    spec = importlib.util.spec_from_file_location("reference_runs_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "reference_runs_tool", module)
    spec.loader.exec_module(module)
    return module


def test_a_partial_run_carries_the_other_families_rows_over(tool, monkeypatch):
    rows = [{"dataset": "synthetic-100", "seed": 0}, {"dataset": "fashion_mnist", "seed": 0}]
    monkeypatch.setattr(tool, "DATASETS", ["fashion_mnist"])
    assert tool._carried_rows("average_k", "cpu", "paper", rows) == rows[:1]
    monkeypatch.setattr(tool, "DATASETS", ["synthetic"])
    assert tool._carried_rows("average_k", "cpu", "paper", rows) == rows[1:]
    monkeypatch.setattr(tool, "DATASETS", ["synthetic", "fashion_mnist"])
    assert tool._carried_rows("average_k", "cpu", "paper", rows) == []
    monkeypatch.setattr(tool, "DATASETS", None)
    assert tool._carried_rows("average_k", "cpu", "paper", rows) == []


def test_a_partial_run_carries_the_other_families_fingerprints_over(tool, monkeypatch):
    def fake(name, preset, seeds, chosen, arm):  # the asked family's runs at these seeds
        return [f"syn-{s}" for s in seeds]

    monkeypatch.setattr(tool, "fingerprints", fake)
    part = {"seeds": [0, 1], "fingerprints": ["syn-0", "fm-0", "syn-1", "fm-1"]}
    monkeypatch.setattr(tool, "DATASETS", ["synthetic"])
    assert tool._carried_fingerprints("average_k", "cpu", "paper", part, None) == ["fm-0", "fm-1"]
    assert tool._carried_fingerprints("average_k", "cpu", "paper", {"seeds": []}, None) == []
    monkeypatch.setattr(tool, "DATASETS", None)  # a full run records every family anew
    assert tool._carried_fingerprints("average_k", "cpu", "paper", part, None) == []


def test_runs_here_skips_experiments_without_the_asked_family(tool, monkeypatch):
    monkeypatch.setattr(tool, "DATASETS", ["fashion_mnist"])
    assert tool.runs_here("average_k", "cpu", "paper")
    assert not tool.runs_here("long_tail", "cpu", "tuned")
    assert not tool.runs_here("two_head_ablation", "cpu", "paper")  # no paper arm


def test_job_groups_balance_cost_and_keep_a_tuned_by_experiment_after_its_tuner(tool):
    cost = {
        "label_noise": 5.0,
        "long_tail": 1.0,
        "average_k": 4.0,
        "average_k_long_tail": 1.0,
        "two_head_ablation": 0.5,
    }
    groups = tool.job_groups(list(cost), cost, 2)
    assert sorted(n for g, _ in groups for n in g) == sorted(cost)  # every experiment once
    for group, total in groups:
        assert total == sum(cost[n] for n in group)
        if "two_head_ablation" in group:  # it reads average_k's tuning: same process, after it
            assert group.index("average_k") < group.index("two_head_ablation")
    assert max(t for _, t in groups) <= 6.0  # longest first to the cheapest group: 5+1 | 4.5+1+...
    assert len(tool.job_groups(["long_tail"], cost, 4)) == 1  # never more jobs than experiments


def test_dry_run_with_jobs_prints_the_split_and_its_wall_time(tool, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["reference_runs.py", "--dry-run", "--jobs", "2"])
    assert tool.main() == 0
    out = capsys.readouterr().out
    assert "job 1:" in out and "job 2:" in out and "wall time with --jobs 2" in out


@pytest.mark.parametrize("preset", ["colab", "gpu"])
def test_dry_run_of_a_gpu_preset_skips_experiments_without_it_and_gives_no_cpu_estimate(
    tool, monkeypatch, capsys, preset
):
    monkeypatch.setattr(sys, "argv", ["reference_runs.py", "--dry-run", "--preset", preset])
    assert tool.main() == 0
    out = capsys.readouterr().out
    assert "two_head_ablation" not in out  # defined at smoke and cpu only
    assert "GPU runs" in out and "no CPU estimate" in out


def test_bad_jobs_ends_in_one_clear_line(tool, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["reference_runs.py", "--jobs", "0"])
    with pytest.raises(SystemExit):
        tool.main()
    assert "--jobs must be >= 1" in capsys.readouterr().err


def test_jobs_start_one_single_thread_process_per_group_then_write_the_ledger(tool, monkeypatch):
    started, ledgers = [], []

    class FakeProcess:  # the job holding long_tail fails with status 3
        def __init__(self, command, env):
            started.append((command, env))
            self.experiments = command[command.index("--experiments") + 1 :]

        def wait(self):
            return 3 if "long_tail" in self.experiments else 0

    monkeypatch.setattr(tool.subprocess, "Popen", FakeProcess)
    monkeypatch.setattr(tool, "write_ledger", ledgers.append)
    argv = ["reference_runs.py", "--jobs", "2", "--arm", "paper", "--experiments", "long_tail", "average_k_long_tail"]
    monkeypatch.setattr(sys, "argv", argv)
    code = tool.main()
    assert len(started) == 2 and ledgers == ["cpu"]
    groups = [command[command.index("--experiments") + 1 :] for command, _ in started]
    assert sorted(n for g in groups for n in g) == ["average_k_long_tail", "long_tail"]
    assert all(env["OMP_NUM_THREADS"] == "1" and "--arm" in command for command, env in started)
    assert code == 3  # a failing job's status, after the ledger was written


def test_only_the_cpu_preset_writes_the_ledger_the_book_reads(tool):
    assert tool.ledger_path("cpu").name == "claims.json"
    assert tool.ledger_path("smoke").name == "claims_smoke.json"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--preset", "smok", "--ledger-only"], ["--preset", "invalid choice: 'smok'"]),
        (["--seeds", "-1", "--dry-run"], ["--seeds", "invalid seed -1"]),
        (["--seeds", "x", "--dry-run"], ["--seeds", "invalid seed 'x'"]),
        (["--datasets", "synthtic", "--dry-run"], ["--datasets", "invalid choice: 'synthtic'"]),
        (["--experiments", "label_nois", "--dry-run"], ["--experiments", "invalid choice: 'label_nois'"]),
    ],
)
def test_every_flag_is_checked_before_anything_runs(tool, monkeypatch, capsys, argv, words):
    monkeypatch.setattr(sys, "argv", ["reference_runs.py", *argv])
    monkeypatch.setattr(tool, "write_ledger", lambda *a: pytest.fail("wrote a ledger"))
    monkeypatch.setattr(tool, "dry_run", lambda *a: pytest.fail("ran"))
    with pytest.raises(SystemExit) as exit_:
        tool.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert all(word in err for word in words), err


def test_dataset_choices_are_the_catalogs_families(tool):
    assert {"synthetic", "fashion_mnist", "cifar100"} <= set(tool._dataset_families())


def test_a_partial_run_that_matches_nothing_ends_in_one_clear_line(tool, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["reference_runs.py", "--datasets", "cifar100", "--preset", "cpu"])
    with pytest.raises(SystemExit) as exit_:
        tool.main()
    assert exit_.value.code == 2 and "nothing to run" in capsys.readouterr().err


def test_a_truncated_reference_names_its_file(monkeypatch, tmp_path):
    from avgk_book import references as R

    (tmp_path / "avgk_book" / R.PACKAGE_DIR).mkdir(parents=True)
    (tmp_path / "avgk_book" / R.PACKAGE_DIR / "broken.json").write_text('{"rows": [')
    monkeypatch.setattr(R.resources, "files", lambda _: tmp_path / "avgk_book")
    with pytest.raises(R.ReferenceError, match=r"broken\.json is not valid JSON"):
        R.load_json_reference("broken")


def test_datasets_selects_one_setting_by_its_label_and_keeps_the_others_rows(tool, monkeypatch):
    """``--datasets fashion_mnist-pairs`` runs that setting alone: the other Fashion-MNIST setting's
    rows and tuning are carried, as a family's are."""
    from avgk_book.experiments import expand

    assert {"fashion_mnist", "fashion_mnist-pairs"} <= set(tool._dataset_families())
    runs = expand("label_noise", "cpu", [0], arm="paper", datasets=["fashion_mnist-pairs"])
    assert runs and {r.config.dataset_options["noise_groups"] for r in runs} == {"pairs"}
    monkeypatch.setattr(tool, "DATASETS", ["fashion_mnist-pairs"])
    rows = [{"dataset": d} for d in ("synthetic-100", "fashion_mnist", "fashion_mnist-pairs")]
    assert tool._carried_rows("label_noise", "cpu", "paper", rows) == rows[:2]
    tuning = {f"dataset={d}/label_noise=0.6/noised_topk": {} for d in ("fashion_mnist", "fashion_mnist-pairs")}
    assert list(tool._other_family_tuning("label_noise", "cpu", tuning)) == [next(iter(tuning))]


def test_a_part_with_the_same_runs_but_older_diagnostics_is_diagnosed_again(tool, monkeypatch):
    new = tool.NEWEST_DIAGNOSTIC
    rows = [{"dataset": "synthetic-100", "seed": 0, new: 0.0}, {"dataset": "fashion_mnist", "seed": 0}]
    monkeypatch.setattr(tool, "DATASETS", ["synthetic"])  # the carried Fashion-MNIST row is not asked
    assert tool._diagnosed("average_k", "cpu", rows)
    monkeypatch.setattr(tool, "DATASETS", None)
    assert not tool._diagnosed("average_k", "cpu", rows)
    assert tool._diagnosed("average_k", "cpu", [])


def test_a_new_tuning_of_one_family_keeps_the_other_families_seeds_and_fingerprints(tool, monkeypatch):
    """A partial run that tunes anew (the catalog's base grid changed) carries the left-out
    families' rows with their seeds and run fingerprints (it once wrote seeds [] and dropped them)."""
    monkeypatch.setattr(tool, "DATASETS", ["fashion_mnist-pairs"])
    monkeypatch.setattr(tool, "tuning_base", lambda *a, **k: [("m", "config")])
    monkeypatch.setattr(tool, "digest", lambda configs: "new")
    monkeypatch.setattr(tool, "tune", lambda *a, **k: {"dataset=fashion_mnist-pairs/m": {"chosen": {"lr": 1}}})
    monkeypatch.setattr(tool, "save_arms_reference", lambda *a: None)
    monkeypatch.setattr(tool, "_other_family_tuning", lambda name, preset, recorded: recorded)
    monkeypatch.setattr(tool, "fingerprints", lambda name, preset, seeds, chosen, arm: [f"pairs-{s}" for s in seeds])
    rows = [{"dataset": "synthetic-100", "seed": s} for s in range(20)]
    part = {"rows": rows, "seeds": list(range(20)), "fingerprints": [f"syn-{s}" for s in range(20)] + ["pairs-0"],
            "tuning": {"dataset=synthetic-100/m": {"chosen": {"lr": 0.1}}}, "tuning_base": "old"}  # fmt: skip
    new = tool._tuning_part("label_noise", "cpu", part, {})
    assert new["rows"] == rows and new["seeds"] == list(range(20))
    assert new["fingerprints"] == [f"syn-{s}" for s in range(20)]
    assert set(new["tuning"]) == {"dataset=synthetic-100/m", "dataset=fashion_mnist-pairs/m"}


def test_a_recorded_tuning_that_lacks_a_family_is_not_taken_as_complete(tool):
    """A partial run that tuned anew records the base digest of every family but tunes only its
    own: the next run of another family must not skip its tuning (it would train at defaults)."""
    from avgk_book.experiments.grid import reference_tuning
    from avgk_book.references import load_json_reference

    recorded = reference_tuning(load_json_reference("label_noise_cpu"))
    assert tool._untuned("label_noise", "cpu", recorded) == []
    without_pairs = {k: v for k, v in recorded.items() if "fashion_mnist-pairs" not in k}
    assert tool._untuned("label_noise", "cpu", without_pairs) == [k for k in recorded if "fashion_mnist-pairs" in k]
    assert tool._untuned("two_head_ablation", "cpu", {}) == []  # nothing of its own to tune
