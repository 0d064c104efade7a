"""Experiments (grids, caching, summaries) and model building blocks."""

import json

import pytest
import torch

from avgk_lib import experiments as E
from avgk_lib.models import MODELS, NormedLinear, build_model


def test_every_experiment_has_three_presets_with_valid_configs():
    for name in E.EXPERIMENTS:
        for preset in E.PRESETS:
            runs = E.runs_of(name, preset, [0, 1])
            assert runs, (name, preset)
            for run in runs:
                run.config.validate()
                assert run.labels["seed"] == run.config.seed
            fingerprints = {run.config.fingerprint() for run in runs}
            assert len(fingerprints) == len(runs), f"{name}/{preset}: two runs share a configuration"


def test_gpu_presets_use_the_paper_recipes():
    cifar = E.runs_of("label_noise", "gpu", [0])[0].config
    assert (cifar.dataset, cifar.model, cifar.epochs, cifar.batch_size, cifar.lr) == (
        "cifar100",
        "densenet_bc_40_40",
        300,
        64,
        0.1,
    )
    assert cifar.milestones == [151, 226] and cifar.k == 5
    plant = E.runs_of("long_tail", "gpu", [0])[0].config
    assert (plant.dataset, plant.model, plant.pretrained, plant.lr, plant.batch_size) == (
        "plantnet300k",
        "resnet50",
        True,
        0.002,
        32,
    )
    assert plant.select_metric == "top5_macro"


def test_run_experiment_caches_and_summarizes(tmp_path, monkeypatch):
    monkeypatch.setenv("AVGK_CACHE_DIR", str(tmp_path))
    logs: list[str] = []
    rows = E.run_experiment("two_head_ablation", "smoke", seeds=[0, 1], progress=False, log=logs.append)
    assert len(rows) == 2 * len(E.EXPERIMENTS["two_head_ablation"].grid("smoke"))
    assert all("training" in line for line in logs)
    again = E.run_experiment("two_head_ablation", "smoke", seeds=[0, 1], progress=False, log=logs.append)
    assert [r["test_avg2_micro"] for r in again] == [r["test_avg2_micro"] for r in rows]
    assert sum("cached" in line for line in logs) == len(rows)
    table = E.summarize(rows, by=["variant"], metrics=["test_avg2_micro"])
    assert len(table) == len(rows) // 2 and all(t["n_seeds"] == 2 for t in table)
    first = [r["test_avg2_micro"] for r in rows if r["variant"] == "default"]
    assert table[0]["test_avg2_micro"] == pytest.approx(sum(first) / 2)
    path = E.save_reference("two_head_ablation", "smoke", [0, 1], rows, directory=tmp_path)
    saved = json.loads(path.read_text())
    assert saved["seeds"] == [0, 1] and "git_commit" in saved["provenance"] and "run" not in saved["rows"][0]
    assert E.load_reference("two_head_ablation", "smoke", directory=tmp_path)["rows"] == saved["rows"]


def test_confidence_interval_uses_student_t():
    rows = [{"g": 1, "m": v} for v in (0.1, 0.2, 0.3)]
    (entry,) = E.summarize(rows, by=["g"], metrics=["m"])
    assert entry["m"] == pytest.approx(0.2)
    assert entry["m_ci95"] == pytest.approx(4.303 * 0.1 / 3**0.5)


def test_unknown_experiment_and_preset():
    with pytest.raises(ValueError, match="label_noise"):
        E.runs_of("nope", "cpu", [0])
    with pytest.raises(ValueError, match="preset"):
        E.runs_of("label_noise", "tpu", [0])


@pytest.mark.parametrize("name", [m for m in MODELS if m != "resnet50"])
def test_models_forward_one_and_two_heads(name):
    shape = {"mlp": (12,), "small_cnn": (1, 28, 28)}.get(name, (3, 32, 32))
    x = torch.randn(2, *shape)
    assert build_model(name, 7, shape)(x).shape == (2, 7)
    soft, multi = build_model(name, 7, shape, two_head=True)(x)
    assert soft.shape == multi.shape == (2, 7)


def test_resnet50_builds_offline_without_weights():
    model = build_model("resnet50", 5, (3, 64, 64))
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_normed_linear_is_a_cosine_and_detach_stops_the_multilabel_gradient():
    head = NormedLinear(4, 3)
    h = torch.randn(5, 4)
    expected = torch.nn.functional.cosine_similarity(h[:, None, :], head.weight[None, :, :], dim=2)
    torch.testing.assert_close(head(h), expected)
    model = build_model("mlp", 3, (4,), two_head=True, detach_multilabel=True)
    _, multi = model(torch.randn(2, 4))
    multi.sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.multilabel_head.weight.grad is not None


def test_claim_verdicts_follow_the_intervals():
    from avgk_lib.book.analysis import check_claim, verdict

    assert verdict(0.8, 0.01, 0.7, 0.01) == "supported"
    assert verdict(0.7, 0.01, 0.8, 0.01) == "contradicted"
    assert verdict(0.75, 0.05, 0.74, 0.05).startswith("inconclusive")
    assert verdict(0.75, 0.0, 0.74, 0.0) == "supported (1 seed)"
    rows = [
        {"loss": "a", "x": 1, "m": 0.9, "m_ci95": 0.01},
        {"loss": "b", "x": 1, "m": 0.5, "m_ci95": 0.01},
        {"loss": "c", "x": 1, "m": 0.95, "m_ci95": 0.01},
        {"loss": "a", "x": 2, "m": 0.1, "m_ci95": 0.01},
    ]
    claim = check_claim(rows, "m", "a", ["b", "c"], {"x": 1})
    assert claim["rival"] == "c" and claim["verdict"] == "contradicted"
    assert check_claim(rows, "m", "a", "b", {"x": 1})["verdict"] == "supported"
    assert check_claim(rows, "m", "a", "b", {"x": 3})["verdict"].startswith("not evaluated")
