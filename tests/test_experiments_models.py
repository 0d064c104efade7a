"""Experiments (grids, caching, summaries) and model building blocks."""

import json

import pytest
import torch

from avgk_book import experiments as E
from avgk_lib.data import dataset_info
from avgk_lib.models import MODELS, NormedLinear, build_model


def test_every_experiment_defines_its_presets_with_valid_configs():
    for name, experiment in E.EXPERIMENTS.items():
        assert {"smoke", "cpu"} <= set(experiment.presets) <= set(E.PRESETS)
        for preset, spec in experiment.presets.items():
            for arm in ("tuned", "paper") if spec.paper is not None else ("tuned",):
                runs = E.expand(name, preset, [0, 1], arm=arm)
                assert runs, (name, preset, arm)
                for run in runs:
                    run.config.validate()
                    assert run.labels["seed"] == run.config.seed and run.labels["arm"] == arm
                fingerprints = {run.config.fingerprint() for run in runs}
                assert len(fingerprints) == len(runs), f"{name}/{preset}/{arm}: two runs share a configuration"


def test_undefined_preset_raises_with_the_valid_names():
    with pytest.raises(ValueError, match="valid presets: smoke, cpu"):
        E.expand("two_head_ablation", "gpu", [0])


def test_data_randomness_is_drawn_from_the_seed():
    for name in ("label_noise", "average_k"):
        by_seed = {}
        for run in E.expand(name, "cpu", [0, 3]):
            options = run.config.dataset_options
            seeds = [options[k] for k in dataset_info(run.config.dataset).seeded_options]
            assert seeds and all(s == run.config.seed for s in seeds)
            by_seed.setdefault(run.config.seed, run)
        assert by_seed[0].config.dataset_options != by_seed[3].config.dataset_options


def test_tuning_grid_is_the_lr_grid_times_the_method_knobs():
    method = E.Method("noised_topk", {"n_samples": 5}, {"epsilon": [0.05, 0.2, 1.0]})
    points = method.points([0.03, 0.1, 0.3])
    assert len(points) == 9 and {p["epsilon"] for p in points} == {0.05, 0.2, 1.0}
    assert sorted({p["lr"] for p in points}) == [0.03, 0.1, 0.3]
    scaled = E.Method("imbalanced_noised_topk", {"scale": 60.0}, {"max_margin": [0.0, 0.2]}, lr_per_scale=True)
    assert sorted({round(p["lr"] * 60.0, 12) for p in scaled.points([0.03, 0.1])}) == [0.03, 0.1]
    assert E.Method("cross_entropy").points([0.1, 0.3]) == [{"lr": 0.1}, {"lr": 0.3}]


def test_chosen_values_reach_the_configs():
    setting = E.get_experiment("label_noise").preset("cpu").settings[1]
    key = E.tuning_key(setting, "noised_topk")
    runs = E.expand("label_noise", "cpu", [0], chosen={key: {"lr": 0.3, "epsilon": 0.05}})
    wanted = {**setting.labels, "arm": "tuned", "loss": "noised_topk", "seed": 0, "train_k": None}
    (run,) = [r for r in runs if r.labels == wanted]
    assert run.config.lr == 0.3 and run.config.loss_options["epsilon"] == 0.05


def test_overrides_change_every_run():
    runs = E.expand("average_k_long_tail", "smoke", [0], overrides={"epochs": 2, "dataset_options": {"n_val": 500}})
    assert all(r.config.epochs == 2 and r.config.dataset_options["n_val"] == 500 for r in runs)
    assert all(r.config.dataset_options["n_classes"] == 100 for r in runs)


def test_gpu_presets_use_the_paper_recipes():
    cifar = E.expand("label_noise", "gpu", [0])[0].config
    assert (cifar.dataset, cifar.model, cifar.epochs, cifar.batch_size, cifar.lr) == (
        "cifar100",
        "densenet_bc_40_40",
        300,
        64,
        0.1,
    )
    assert cifar.milestones == [151, 226] and cifar.k == 5
    plant = E.expand("long_tail", "gpu", [0])[0].config
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
    rows = E.run_experiment("two_head_ablation", "smoke", seeds=[0, 1], progress=False, log=logs.append, chosen={})
    assert len(rows) == 2 * 2 * len(E.EXPERIMENTS["two_head_ablation"].variants)  # 2 seeds x K = 3, 5
    assert not any("cached" in line for line in logs)
    again = E.run_experiment("two_head_ablation", "smoke", seeds=[0, 1], progress=False, log=logs.append, chosen={})
    assert [r["test_avg3_micro"] for r in again] == [r["test_avg3_micro"] for r in rows]
    assert sum("cached" in line for line in logs) == len(rows)
    heads = {"softmax_avg3_micro", "multilabel_avg3_micro", "combined_avg3_micro"}
    assert {"last_avg3_micro", *heads, "test_top1_mode_share"} <= set(rows[0])
    assert {r["train_k"] for r in rows} == {3.0, 5.0}
    combined = [r for r in rows if r["variant"] == "combined heads"]
    assert all(r["test_avg3_micro"] == r["combined_avg3_micro"] for r in combined)
    table = E.summarize(rows, by=["variant", "train_k"], metrics=["test_avg3_micro"])
    assert len(table) == len(rows) // 2 and all(t["n_seeds"] == 2 for t in table)
    first = [r["test_avg3_micro"] for r in rows if r["variant"] == "default" and r["train_k"] == 3.0]
    assert table[0]["test_avg3_micro"] == pytest.approx(sum(first) / 2)
    arms = {"tuned": {"rows": rows, "seeds": [0, 1], "tuning": {"x": 1}}}
    path = E.save_arms_reference("two_head_ablation", "smoke", arms, directory=tmp_path)
    saved = json.loads(path.read_text())["arms"]["tuned"]
    assert saved["seeds"] == [0, 1] and "run" not in saved["rows"][0] and saved["tuning"] == {"x": 1}
    assert "git_commit" in json.loads(path.read_text())["provenance"]
    assert E.load_arm("two_head_ablation", "smoke", directory=tmp_path)["rows"] == saved["rows"]


def test_an_unreadable_cached_run_is_trained_again(tmp_path, monkeypatch):
    monkeypatch.setenv("AVGK_CACHE_DIR", str(tmp_path))
    (run,) = E.expand("two_head_ablation", "smoke", [0])[:1]
    results, folder, cached = E.train_or_load_many([run.config], progress=False)[0]
    assert not cached
    (folder / "results.json").write_text("{")
    with pytest.warns(UserWarning, match=str(folder)):
        again, _, cached = E.train_or_load_many([run.config], progress=False)[0]
    assert not cached and again["test"] == results["test"]


def test_confidence_interval_uses_student_t():
    rows = [{"g": 1, "m": v} for v in (0.1, 0.2, 0.3)]
    (entry,) = E.summarize(rows, by=["g"], metrics=["m"])
    assert entry["m"] == pytest.approx(0.2)
    assert entry["m_ci95"] == pytest.approx(4.303 * 0.1 / 3**0.5)


def test_unknown_experiment_and_preset():
    with pytest.raises(ValueError, match="label_noise"):
        E.expand("nope", "cpu", [0])
    with pytest.raises(ValueError, match="preset"):
        E.expand("label_noise", "tpu", [0])


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
