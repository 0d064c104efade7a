"""Chapter 9's conformal reference: rows computed from run folders agree with a direct computation
from the same tensors, the writer seals them, and bad inputs are refused by name."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from avgk_book import conformal_reference as CR
from avgk_book import references
from avgk_book.experiments import summarize
from avgk_lib import conformal as C
from avgk_lib.rundir import RunDir


def _load_tool():
    """``tools/conformal_reference.py``, which computes and writes the reference (``CR`` reads it)."""
    spec = importlib.util.spec_from_file_location("conformal_reference_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOL = Path(__file__).resolve().parents[1] / "tools" / "conformal_reference.py"
T = _load_tool()
N_CLASSES = 8
KS = [1.5, 3.0]


def _scores(seed: int, n_val: int = 400, n_test: int = 500) -> dict[str, torch.Tensor]:
    """What ``engine.saved_scores`` writes: half-precision probabilities and int64 targets."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for split, n in (("val", n_val), ("test", n_test)):
        y = torch.randint(0, N_CLASSES, (n,), generator=g)
        logits = 1.5 * torch.randn(n, N_CLASSES, generator=g)
        logits[torch.arange(n), y] += 1.5  # an informative model
        out[f"{split}_scores"] = logits.softmax(1).half()
        out[f"{split}_targets"] = y
    return out


def _run(tmp_path, seed: int) -> str:
    """A finished run's folder: scores.pt and the results.json that it names (the scores carry the
    run's fingerprint, checked against results.json when they are loaded)."""
    from avgk_lib.rundir import RunResult

    folder = tmp_path / f"run{seed}"
    folder.mkdir()
    fingerprint = f"{seed:016x}"
    summary = {"best_epoch": 1, "best_val": 0.0, "fingerprint": fingerprint}
    result = RunResult(config={}, history=[], test={}, test_last={}, summary=summary, provenance={})
    RunDir(folder).write_result(result)
    RunDir(folder).save_scores(_scores(seed), fingerprint)
    return str(folder)


def _lac_direct(pv, yv, pt, yt, alpha):
    """LAC from its definition, in numpy: q-hat the ceil((n+1)(1-alpha))-th smallest 1 - p_y."""
    e = np.sort(1 - pv[np.arange(len(yv)), yv])
    rank = math.ceil((len(e) + 1) * (1 - alpha))
    sets = (1 - pt) <= e[rank - 1]
    hits = sets[np.arange(len(yt)), yt]
    macro = np.mean([hits[yt == c].mean() for c in np.unique(yt)])
    return hits.mean(), macro, sets.sum(1).mean()


def _average_k_direct(pv, pt, yt, k):
    """Average-K: the threshold between the round(nK)-th and next largest pooled validation
    probabilities (the library's midpoint rule), applied to the test probabilities."""
    flat = np.sort(pv.ravel())[::-1]
    m = int(math.floor(len(pv) * k + 0.5))
    threshold = 0.5 * (flat[m - 1] + flat[m])
    sets = pt >= threshold
    hits = sets[np.arange(len(yt)), yt]
    return hits.mean(), sets.sum(1).mean()


def test_rows_agree_with_direct_computation(tmp_path):
    runs = [
        {"run": _run(tmp_path, s), "labels": {"dataset": "toy", "loss": "cross_entropy", "seed": s, "arm": "paper"}}
        for s in (0, 1)
    ]
    rows = T.conformal_rows([{**r, "ks": KS} for r in runs], alphas=[0.1, 0.2], seed=3)
    assert [(r["dataset"], r["loss"], r["seed"], r["arm"]) for r in rows] == [
        ("toy", "cross_entropy", 0, "paper"),
        ("toy", "cross_entropy", 1, "paper"),
    ]
    for row, s in zip(rows, (0, 1), strict=True):
        d = _scores(s)
        pv, yv, pt, yt = (d[k].float().numpy() for k in CR.SCORE_KEYS)
        yv, yt = yv.astype(int), yt.astype(int)
        for alpha in (0.1, 0.2):
            micro, macro, size = _lac_direct(pv, yv, pt, yt, alpha)
            assert row[CR.conformal_key("lac", alpha, "micro")] == pytest.approx(micro, abs=1e-9)
            assert row[CR.conformal_key("lac", alpha, "macro")] == pytest.approx(macro, abs=1e-9)
            assert row[CR.conformal_key("lac", alpha, "size")] == pytest.approx(size, abs=1e-9)
            for method in ("aps", "raps"):  # the library's scores, the seeds of the module docstring
                f = {k: d[k].float() if d[k].is_floating_point() else d[k] for k in CR.SCORE_KEYS}
                qhat = C.calibrate(
                    f["val_scores"], f["val_targets"], alpha, method, generator=torch.Generator().manual_seed(3)
                )
                sets = C.conformal_sets(f["test_scores"], qhat, method, generator=torch.Generator().manual_seed(4))
                hits = sets[torch.arange(len(yt)), f["test_targets"]].double()
                assert row[CR.conformal_key(method, alpha, "micro")] == pytest.approx(float(hits.mean()))
                assert row[CR.conformal_key(method, alpha, "size")] == pytest.approx(float(sets.sum(1).double().mean()))
        for k in KS:
            micro, size = _average_k_direct(pv, pt, yt, k)
            assert row[CR.average_k_key(k, "micro")] == pytest.approx(micro, abs=1e-9)
            assert row[CR.average_k_key(k, "size")] == pytest.approx(size, abs=1e-9)
            for method in C.METHODS:  # matched size: the level puts the validation sets at size K
                alpha = row[CR.matched_size_key(k, method, "alpha")]
                val_size = _lac_direct(pv, yv, pv, yv, alpha)[2] if method == "lac" else None
                if val_size is not None:
                    assert val_size == pytest.approx(k, abs=0.05)
                assert row[CR.matched_size_key(k, method, "size")] == pytest.approx(k, rel=0.25)
        lac_val_cov = _lac_direct(pv, yv, pv, yv, 0.1)[0]
        avg_val_cov, _ = _average_k_direct(pv, pv, yv, row["coverage_k"])
        assert avg_val_cov >= lac_val_cov - 1e-9  # matched coverage: average-K reaches LAC's coverage


def test_rare_third_against_direct_computation(tmp_path):
    counts = [500, 400, 300, 200, 100, 50, 20, 10]
    entry = {"run": _run(tmp_path, 5), "labels": {"seed": 5}, "ks": [2.0], "class_counts": counts}
    (row,) = T.conformal_rows([entry])
    d = _scores(5)
    pv, yv, pt, yt = (d[k].float().numpy() for k in CR.SCORE_KEYS)
    yv, yt = yv.astype(int), yt.astype(int)
    rare = np.array(counts) <= np.quantile(counts, 1 / 3)
    e = np.sort(1 - pv[np.arange(len(yv)), yv])
    qhat = e[math.ceil((len(e) + 1) * 0.9) - 1]
    sets = (1 - pt) <= qhat
    per_class = np.array([sets[yt == c, c].mean() for c in range(N_CLASSES)])
    assert row["rare_lac"] == pytest.approx(per_class[rare].mean())
    assert row["rest_lac"] == pytest.approx(per_class[~rare].mean())
    assert row["lowest_lac"] == pytest.approx(per_class.min())
    assert row["rare_k"] == pytest.approx(((1 - pv) <= qhat).sum(1).mean())
    assert {"rare_avgk", "rest_avgk", "lowest_avgk"} <= set(row)


def test_writer_seals_and_summaries_give_intervals(tmp_path):
    entries = [{"run": _run(tmp_path, s), "labels": {"dataset": "toy", "seed": s}, "ks": [2.0]} for s in range(3)]
    rows = T.conformal_rows(entries, alphas=[0.1])
    path = T.write_conformal_reference(
        rows,
        preset="cpu",
        arm="paper",
        seeds=[0, 1, 2],
        sources={"average_k": {"sha256": "x"}},
        alphas=[0.1],
        directory=tmp_path,
    )
    data = json.loads(path.read_text())
    body = references.unseal(data, path.name)
    assert body["arm"] == "paper" and body["seeds"] == [0, 1, 2] and "provenance" in body
    assert body["rows"] == json.loads(json.dumps(rows))
    key = CR.conformal_key("lac", 0.1, "micro")
    (summary,) = summarize(body["rows"], ["dataset"], [key])
    values = [r[key] for r in rows]
    assert summary[key] == pytest.approx(np.mean(values))
    assert CR.interval(summary, key).startswith(f"{np.mean(values):.3f} ± ")


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: T.conformal_metrics({"val_scores": torch.rand(3, 2)}, [1.0]), "scores"),
        (lambda: T.conformal_metrics(_scores(0), []), "ks"),
        (lambda: T.conformal_metrics(_scores(0), [N_CLASSES + 1]), "ks"),
        (lambda: T.conformal_metrics(_scores(0), [2.0], alphas=[1.5]), "alpha"),
        (lambda: T.conformal_metrics(_scores(0), [2.0], seed=-1), "seed"),
        (lambda: T.conformal_metrics(_scores(0), [2.0], class_counts=[1, 2]), "class_counts"),
        (lambda: T.conformal_metrics({**_scores(0), "val_scores": torch.randn(400, N_CLASSES)}, [2.0]), "scores"),
        (lambda: T.conformal_rows([]), "runs"),
        (lambda: T.conformal_rows([{"run": "/nonexistent", "labels": {}, "ks": [2.0]}]), "runs"),
        (lambda: CR.conformal_key("thr", 0.1, "micro"), "method"),
        (lambda: CR.average_k_key(2.0, "median"), "stat"),
        (lambda: CR.matched_size_key(2.0, "lac", "macro"), "stat"),
        (lambda: CR.stem("a/b"), "preset"),
        (lambda: CR.interval({}, "x"), "summary"),
        (lambda: T.write_conformal_reference([], preset="cpu", arm="paper", seeds=[0], sources={"a": 1}), "rows"),
        (lambda: T.write_conformal_reference([{}], preset="cpu", arm="best", seeds=[0], sources={"a": 1}), "arm"),
        (lambda: T.write_conformal_reference([{}], preset="cpu", arm="paper", seeds=[0], sources={}), "sources"),
    ],
)
def test_bad_inputs_name_the_argument(call, name):
    with pytest.raises((ValueError, TypeError), match=f"`{name}"):
        call()


def test_script_refuses_a_partial_reference(tmp_path, monkeypatch, capsys):
    """With an empty run cache every run is missing: the script names them and writes nothing."""
    tool = T
    monkeypatch.setenv("AVGK_CACHE_DIR", str(tmp_path / "cache"))
    assert tool.main(["--arm", "paper", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "missing from the run cache" in err and "average_k_long_tail: dataset=" in err and "--allow-partial" in err
    assert not (tmp_path / "out").exists()


def test_long_rows_unfold_every_number(tmp_path):
    counts = [500, 400, 300, 200, 100, 50, 20, 10]
    entry = {
        "run": _run(tmp_path, 7),
        "labels": {"dataset": "toy", "seed": 7},
        "ks": [2.0, 3.0],
        "class_counts": counts,
    }
    (row,) = T.conformal_rows([entry], alphas=[0.05, 0.1])
    conformal = CR.long_rows([row], "conformal")
    assert len(conformal) == 3 * 2
    lac = next(r for r in conformal if r["sets"] == "lac" and r["alpha"] == 0.05)
    assert lac["coverage"] == row["lac_a0.05_micro"] and lac["mean size"] == row["lac_a0.05_size"]
    assert [r["K"] for r in CR.long_rows([row], "average_k")] == [2.0, 3.0]
    matched = CR.long_rows([row], "matched_size")
    assert len(matched) == 2 * 4 and {r["sets"] for r in matched} == {"average-K", *C.METHODS}
    rare = CR.long_rows([row], "rare")
    assert [r["rarest third"] for r in rare] == [row["rare_lac"], row["rare_avgk"]]
    assert all(r["dataset"] == "toy" and r["seed"] == 7 for r in conformal + matched + rare)
    with pytest.raises(ValueError, match="`part`"):
        CR.long_rows([row], "curves")


def test_findings_state_the_computed_numbers(tmp_path):
    counts = [500, 400, 300, 200, 100, 50, 20, 10]
    entries = [
        {
            "run": _run(tmp_path, s),
            "labels": {"dataset": "toy-lt", "loss": "cross_entropy", "seed": s},
            "ks": [2.0],
            "class_counts": counts,
        }
        for s in (0, 1)
    ]
    rows = T.conformal_rows(entries)
    statements = CR.reference_findings(rows)
    (lac,) = summarize(rows, ["dataset"], ["lac_a0.1_micro", "aps_a0.1_micro", "coverage_k", "rare_lac", "avg2_micro"])
    assert len(statements) == 3
    assert CR.interval(lac, "lac_a0.1_micro") in statements[0] and "2 seeds" in statements[0]
    assert CR.interval(lac, "aps_a0.1_micro") in statements[0] and CR.interval(lac, "coverage_k", 2) in statements[0]
    assert "{" not in "".join(statements)  # every placeholder filled
    assert CR.interval(lac, "avg2_micro") in statements[1] and "matched mean size 2" in statements[1]
    assert CR.interval(lac, "rare_lac") in statements[2]
    assert ("does not reach" in statements[2]) == (lac["rare_lac"] < 0.9)
    reference = {
        "rows": rows,
        "sources": {"average_k": {"created": "then", "runs": 2, "missing": 1}},
        "arm": "paper",
        "preset": "cpu",
        "seeds": [0, 1],
    }
    line = CR.source_line(reference)
    assert "paper arm" in line and "seeds 0, 1" in line and "2 runs" in line and "1 missing" in line
    with pytest.raises(ValueError, match="`rows`"):
        CR.reference_findings([])
    with pytest.raises(ValueError, match="`reference`"):
        CR.source_line({"rows": rows})


def test_models_trained_at_a_k_are_told_apart():
    rows = [
        {"dataset": "d", "loss": "cross_entropy", "train_k": None},
        {"dataset": "d", "loss": "two_head", "train_k": 3.0},
    ]
    assert CR.group_columns(rows) == ["dataset", "loss", "train_k"]
    assert CR.group_columns(rows[:1]) == ["dataset", "loss"]
    with pytest.raises(TypeError, match="`rows`"):
        CR.group_columns("rows")
