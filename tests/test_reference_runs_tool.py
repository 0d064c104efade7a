"""tools/reference_runs.py: a partial regeneration (--datasets) never drops another family's rows."""

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


def test_other_families_names_the_rows_a_partial_run_would_drop(tool, monkeypatch):
    recorded = {"paper": {"rows": [{"dataset": "synthetic-100"}, {"dataset": "fashion_mnist"}]}}
    monkeypatch.setattr(tool, "DATASETS", ["fashion_mnist"])
    assert tool._other_families("average_k", "cpu", recorded) == ["synthetic-100"]
    monkeypatch.setattr(tool, "DATASETS", ["synthetic"])
    assert tool._other_families("average_k", "cpu", recorded) == ["fashion_mnist"]
    monkeypatch.setattr(tool, "DATASETS", ["synthetic", "fashion_mnist"])
    assert tool._other_families("average_k", "cpu", recorded) == []


def test_runs_here_skips_experiments_without_the_asked_family(tool, monkeypatch):
    monkeypatch.setattr(tool, "DATASETS", ["fashion_mnist"])
    assert tool.runs_here("average_k", "cpu", "paper")
    assert not tool.runs_here("long_tail", "cpu", "tuned")
    assert not tool.runs_here("two_head_ablation", "cpu", "paper")  # no paper arm


def test_a_partial_run_over_a_fuller_reference_ends_in_one_clear_line(tool, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["reference_runs.py", "--datasets", "fashion_mnist", "--experiments", "average_k"])
    with pytest.raises(SystemExit) as exit_:
        tool.main()
    assert exit_.value.code == 2
    assert "would drop" in capsys.readouterr().err
