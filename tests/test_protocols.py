"""The two protocols of book/protocol.md: the paper arm's fixed recipes, the tuned arm's equal budget,
bracketing of every knob, two tuning draws, references with both arms, and loss_weight."""

import dataclasses
import hashlib
import json
import math

import pytest

from avgk_book import experiments as E
from avgk_book.claims import reference_arms, usable_reference
from avgk_book.experiments import tuning as T
from avgk_book.experiments.catalog import KNOB_LIMITS, P2_METHODS, PAPER_HANDICAPS
from avgk_lib.config import CACHE_FORMAT_VERSION, ConfigError, TrainConfig

BASELINES = ("assume_negative", "an_ls", "wan", "epr", "role")
P1_OPTIMISER = {"optimizer": "sgd", "momentum": 0.9, "nesterov": True, "batch_size": 64, "scheduler": "step"}


def _runs(name, arm, preset="cpu"):
    return E.expand(name, preset, [0], arm=arm)


def _by_loss(runs):
    out = {}
    for run in runs:
        out.setdefault(run.labels["loss"], []).append(run.config)
    return out


# ------------------------------------------------------------------------------ paper arm


def test_p1_schedule_decays_after_half_and_three_quarters():
    assert E.step_milestones(40) == [21, 31]
    assert E.step_milestones(10) == [6, 8]
    assert E.step_milestones(300) == [151, 226]  # P1's CIFAR-100 command line
    assert E.step_milestones(1) == []
    with pytest.raises(ValueError, match="`epochs`"):
        E.step_milestones(0)


@pytest.mark.parametrize("name", ["label_noise", "long_tail", "average_k", "average_k_long_tail"])
def test_paper_arm_recipe_is_p1s_for_every_method(name):
    for run in _runs(name, "paper"):
        cfg = run.config
        epochs = {"synthetic": 40, "fashion_mnist": 10}[cfg.dataset]
        assert run.labels["arm"] == "paper"
        assert cfg.batch_size == 64 and cfg.epochs == epochs and cfg.lr_gamma == 0.1
        assert cfg.milestones == [epochs // 2 + 1, 3 * epochs // 4 + 1]
        assert cfg.loss_weight == 1.0
        # one recipe per comparison (protocol A4): the weak baselines too, their handicap named
        assert {k: getattr(cfg, k) for k in P1_OPTIMISER} == P1_OPTIMISER
        assert (cfg.weight_decay, cfg.lr) == (1e-4, 0.1)  # no lr / s rescaling either


def test_the_paper_arms_known_handicaps_are_named_for_p2_methods_only():
    assert set(PAPER_HANDICAPS) == {"average_k", "average_k_long_tail"}
    assert set(PAPER_HANDICAPS["average_k"]) == {"two_head", *BASELINES}
    assert all(isinstance(why, str) and why for named in PAPER_HANDICAPS.values() for why in named.values())


def test_paper_arm_loss_values_are_p1s_and_the_baselines_own():
    noise = _by_loss(_runs("label_noise", "paper"))
    assert all(c.loss_options == {"epsilon": 0.2, "n_samples": 10} for c in noise["noised_topk"])
    assert all(c.loss_options == {"alpha": 1.0, "tau": 1.0} for c in noise["smooth_topk_svm"])
    assert all(c.loss_options == {} for c in noise["cross_entropy"])
    lt = _by_loss(_runs("long_tail", "paper"))
    assert all(c.loss_options == {"epsilon": 1.0, "n_samples": 5} for c in lt["noised_topk"])
    imbalanced = {"epsilon": 0.01, "n_samples": 5, "scale": 60.0, "max_margin": 0.2}
    assert all(c.loss_options == imbalanced and c.lr == 0.1 for c in lt["imbalanced_noised_topk"])
    assert all(c.loss_options == {"gamma": 2.0} for c in lt["focal"])
    assert all(c.loss_options == {"scale": 40.0, "max_margin": 0.2} and c.lr == 0.1 for c in lt["ldam"])
    p2 = _by_loss(_runs("average_k", "paper"))
    assert all(c.loss_options == {"label_smoothing": 0.1} for c in p2["an_ls"])
    assert all(c.loss_lr_multiplier == 10.0 and c.loss_options == {} for c in p2["role"])
    assert all(c.loss_options == {"weight": 1.0} and c.eval_head == "multilabel" for c in p2["two_head"])
    assert all(c.loss_lr_multiplier == 1.0 for c in p2["assume_negative"])


def test_paper_arm_checkpoints_on_the_settings_metric_and_nothing_is_tuned():
    selects = {(r.labels["dataset"], r.config.select_metric) for r in _runs("long_tail", "paper")}
    assert selects == {("synthetic-100-lt", "top5_macro"), ("synthetic-100-lt-balanced-test", "top5_macro")}
    assert E.tune("label_noise", "smoke", arm="paper") == {}
    assert E.chosen_from_reference("label_noise", "cpu", "paper") == {}
    key = E.tuning_key(E.get_experiment("label_noise").preset("cpu").settings[0], "noised_topk")
    with pytest.raises(ValueError, match="`chosen`"):
        E.expand("label_noise", "cpu", [0], chosen={key: {"lr": 0.3}}, arm="paper")
    with pytest.raises(ValueError, match="`arm`"):
        E.expand("label_noise", "cpu", [0], arm="both")
    with pytest.raises(ValueError, match="`arm`"):
        E.expand("two_head_ablation", "cpu", [0], arm="paper")  # an ablation has no paper arm


# ------------------------------------------------------------------------------ tuned arm


def _grids(name, preset="cpu"):
    experiment = E.get_experiment(name)
    spec = experiment.preset(preset)
    for setting in spec.settings:
        for method_name in setting.methods or experiment.methods:
            method = experiment.methods[method_name]
            yield setting, method_name, method.knob_grid(E.grid.lr_grid_of(spec, setting, method))


@pytest.mark.parametrize("name", ["label_noise", "long_tail", "average_k", "average_k_long_tail"])
def test_tuned_arm_gives_every_method_nine_trials(name):
    for setting, method_name, grid in _grids(name):
        assert math.prod(len(v) for v in grid.values()) == 9, (setting.labels, method_name, grid)
        if method_name == "cross_entropy":
            assert list(grid) == ["lr"] and grid["lr"][0] == 0.01 and grid["lr"][-1] == 1.0
        else:
            assert grid["lr"] == [0.03, 0.1, 0.3] and len(grid) == 2
    settings = E.get_experiment(name).preset("cpu").settings
    assert all(s.lr_grid is None for s in settings)
    # 20 seeds on synthetic data, 5 on Fashion-MNIST (protocol A2)
    assert all(s.max_seeds == (5 if s.dataset == "fashion_mnist" else None) for s in settings)


def test_tuned_arm_knobs_are_the_protocols():
    noise, lt = E.get_experiment("label_noise").methods, E.get_experiment("long_tail").methods
    assert noise["noised_topk"].grid == {"epsilon": [0.1, 0.3, 1.0]}
    assert noise["smooth_topk_svm"].grid == {"tau": [0.1, 0.3, 1.0]}
    assert lt["focal"].grid == {"gamma": [0.5, 1.0, 2.0]}
    assert lt["ldam"].grid == {"max_margin": [0.1, 0.2, 0.5]} and lt["ldam"].options["scale"] == 40.0
    assert lt["imbalanced_noised_topk"].grid == {"max_margin": [0.05, 0.1, 0.2]}
    for name in ("ldam", "imbalanced_noised_topk"):  # lr divided by s for both scaled-logit losses
        scale = lt[name].options["scale"]
        assert lt[name].lr_per_scale and {round(p["lr"] * scale, 9) for p in lt[name].points([0.1])} == {0.1}
    assert P2_METHODS["two_head"].grid == {"weight": [1.0, 10.0, 100.0]}
    for name in BASELINES:
        assert P2_METHODS[name].grid == {"loss_weight": [1.0, 10.0, 100.0]} and P2_METHODS[name].paper == {}
    role = [r for r in E.expand("average_k", "cpu", [0]) if r.labels["loss"] == "role"]
    assert all(r.config.loss_lr_multiplier == 10.0 for r in role)
    (an_ls,) = [r for r in E.expand("average_k", "cpu", [0]) if r.labels["loss"] == "an_ls"]
    assert an_ls.config.loss_options == {"label_smoothing": 0.1}


def test_a_chosen_loss_weight_reaches_the_config_not_the_loss_options():
    setting = E.get_experiment("average_k").preset("cpu").settings[0]
    key = E.tuning_key(setting, "wan")
    runs = E.expand("average_k", "cpu", [0], chosen={key: {"lr": 0.3, "loss_weight": 100.0}})
    (wan,) = [r.config for r in runs if r.labels["loss"] == "wan" and r.labels["dataset"] == "synthetic-100"]
    assert wan.loss_weight == 100.0 and wan.lr == 0.3 and "loss_weight" not in wan.loss_options


def test_untuned_presets_use_documented_values_never_weight_one_or_an_unscaled_lr():
    for preset in ("colab", "gpu"):
        two_head = [r.config for r in E.expand("average_k", preset, [0]) if r.labels["loss"] == "two_head"]
        assert two_head and all(c.loss_options["weight"] >= 10 for c in two_head)
        baselines = [r.config for r in E.expand("average_k", preset, [0]) if r.labels["loss"] in BASELINES]
        assert baselines and all(c.loss_weight > 1 for c in baselines)
        for r in E.expand("long_tail", preset, [0]):
            if r.labels["loss"] in ("imbalanced_noised_topk", "ldam"):
                base = E.get_experiment("long_tail").preset(preset).settings[0].recipe["lr"]
                assert r.config.lr == pytest.approx(base / r.config.loss_options["scale"])


def test_long_tail_balanced_twin_draws_its_own_data():
    runs = E.expand("long_tail", "cpu", [0])
    seeds = {r.labels["dataset"]: r.config.dataset_options["sample_seed"] for r in runs}
    assert seeds["synthetic-100-lt"] == 0 and seeds["synthetic-100-lt-balanced-test"] != 0
    assert all(r.labels["seed"] == 0 for r in runs)


# ------------------------------------------------------------------------------ bracketing


def _bowl(best):
    """A fake validation score: highest at ``best`` (a dict of knob values), in log space."""

    def score(items):
        calls.append(items)
        return [-sum(math.log(knobs[k] / v) ** 2 for k, v in best.items() if k in knobs) for _, knobs in items]

    calls = []
    return score, calls


def test_an_interior_optimum_needs_no_extension():
    score, calls = _bowl({"lr": 0.1, "epsilon": 0.3})
    (entry,) = T._bracketing_search({"m": {"lr": [0.03, 0.1, 0.3], "epsilon": [0.1, 0.3, 1.0]}}, score).values()
    assert len(calls) == 1 and entry["trials"] == entry["base_trials"] == 9
    assert entry["chosen"] == {"lr": 0.1, "epsilon": 0.3} and entry["bracketed"]
    assert all(k["bracketed"] and k["extensions"] == 0 for k in entry["knobs"].values())


def test_a_knob_at_an_edge_is_extended_and_flagged_at_its_limit():
    score, calls = _bowl({"lr": 0.5, "epsilon": 50.0})  # epsilon's optimum lies beyond its hard limit
    (entry,) = T._bracketing_search({"m": {"lr": [0.03, 0.1, 0.3], "epsilon": [0.1, 0.3, 1.0]}}, score).values()
    eps, lr = entry["knobs"]["epsilon"], entry["knobs"]["lr"]
    assert eps["values"] == [0.1, 0.3, 1.0, 3.162, KNOB_LIMITS["epsilon"][1]]  # one sqrt(10) step, then the limit
    assert eps["extensions"] == 2 and not eps["bracketed"] and eps["limit"]
    assert lr["values"][-1] == pytest.approx(0.3 * 10**0.5, rel=1e-3) and lr["bracketed"] and not lr["limit"]
    assert entry["chosen"] == {"lr": 0.3, "epsilon": 10.0} and not entry["bracketed"]
    assert entry["trials"] == len(entry["grid"]) == 4 * 5  # the grid stays a product
    assert len(calls) == 3  # base grid, then one round per extension


def test_extensions_stop_after_two_below_any_limit():
    score, _ = _bowl({"weight": 1e5})
    (entry,) = T._bracketing_search({"m": {"weight": [1.0, 10.0, 100.0]}}, score, limits={}).values()
    assert entry["knobs"]["weight"]["values"] == [1.0, 10.0, 100.0, 1000.0, 10000.0]
    assert entry["knobs"]["weight"]["extensions"] == 2 and not entry["knobs"]["weight"]["limit"]
    assert not entry["bracketed"]


def test_a_choice_at_the_limit_is_not_extended():
    score, calls = _bowl({"lr": 100.0})
    (entry,) = T._bracketing_search({"m": {"lr": [1.0, 3.0, 10.0]}}, score).values()
    assert len(calls) == 1 and entry["knobs"]["lr"] == {
        "values": [1.0, 3.0, 10.0],
        "extensions": 0,
        "bracketed": False,
        "limit": True,
    }


def test_methods_are_searched_in_lockstep_one_score_call_per_round():
    score, calls = _bowl({"lr": 0.1, "gamma": 1.0})
    grids = {"a": {"lr": [0.03, 0.1, 0.3], "gamma": [0.5, 1.0, 2.0]}, "b": {"lr": [0.01, 0.1, 1.0]}}
    entries = T._bracketing_search(grids, score, point_of=lambda m, k: {**k, "lr": k["lr"] / 2})
    assert {m for m, _ in calls[0]} == {"a", "b"} and len(calls[0]) == 9 + 3
    assert entries["a"]["chosen"] == {"lr": 0.05, "gamma": 1.0}  # recorded as trained (point_of)
    assert entries["b"]["trials"] == 3 and entries["b"]["bracketed"]


def test_a_diverged_point_is_never_chosen():
    def score(items):
        return [{"val": -math.inf} if knobs["lr"] == 0.3 else {"val": knobs["lr"]} for _, knobs in items]

    (entry,) = T._bracketing_search({"m": {"lr": [0.03, 0.1, 0.3]}}, score).values()
    assert entry["chosen"] == {"lr": 0.1} and entry["bracketed"]


@pytest.mark.parametrize(
    "grids", [{}, {"m": {}}, {"m": {"lr": []}}, {"m": {"lr": [0.0, 1.0]}}, {"m": {"lr": [True]}}, "lr"]
)
def test_bracketing_rejects_bad_grids(grids):
    with pytest.raises((TypeError, ValueError), match="`grids`"):
        T._bracketing_search(grids, lambda items: [0.0] * len(items))


def test_two_tuning_draws_are_averaged_and_any_divergence_scores_minus_infinity():
    mean = T._mean_of_draws([{"val": 0.5, "best_epoch": 3}, {"val": 0.7, "best_epoch": 4}])
    assert mean["val"] == pytest.approx(0.6) and mean["val_draws"] == [0.5, 0.7] and mean["best_epochs"] == [3, 4]
    bad = T._mean_of_draws([{"val": 0.9, "best_epoch": 3}, {"val": -math.inf, "best_epoch": 0, "diverged": True}])
    assert bad["val"] == -math.inf and bad["diverged"]


def test_tune_scores_every_point_on_both_draws_in_one_call_per_round(monkeypatch):
    calls = []

    def fake(configs, **_):
        calls.append(configs)
        out = []
        for c in configs:  # a score that depends on the draw: the mean must be of both
            val = 0.5 + 0.1 * (c.dataset_options["sample_seed"] - 1000) - abs(math.log10(c.lr) + 1) / 10
            out.append(({"summary": {"best_val": val, "best_epoch": 1}, "history": [{"val": {}}]}, None, False))
        return out

    monkeypatch.setattr(T, "train_or_load_many", fake)
    tuning = E.tune("average_k_long_tail", "smoke", log=lambda *_: None)
    first = calls[0]
    assert sorted({c.dataset_options["sample_seed"] for c in first}) == list(E.TUNING_SEEDS)
    assert {c.loss for c in first} == {"cross_entropy", "two_head"} and len(first) == 2 * (1 + 3)
    entry = next(e for key, e in tuning.items() if key.endswith("/cross_entropy"))
    assert entry["draws"] == [1000, 1001] and entry["metric"] == "avg3_macro"
    point = entry["grid"][0]
    assert point["val"] == pytest.approx(sum(point["val_draws"]) / 2) and len(set(point["val_draws"])) == 2


# ------------------------------------------------------------------------------ references


def test_reference_with_both_arms_round_trips_through_the_ledger_reader(tmp_path):
    rows = {
        arm: [
            {
                "dataset": "synthetic-100",
                "arm": arm,
                "loss": "two_head",
                "seed": s,
                "test_avg3_micro": 0.5 + s / 10,
                "wall_seconds": 1.0,
                "run": "/tmp/x",
            }
            for s in (0, 1)
        ]  # fmt: skip
        for arm in E.ARMS
    }
    tuning = {"dataset=synthetic-100/two_head": {"chosen": {"lr": 0.1, "weight": 10.0}, "grid": [], "trials": 9}}
    arms = {
        "paper": {"rows": rows["paper"], "seeds": [0, 1]},
        "tuned": {"rows": rows["tuned"], "seeds": [0, 1], "tuning": tuning},
    }
    E.save_arms_reference("average_k", "smoke", arms, directory=tmp_path)
    loaded = E.load_reference("average_k", "smoke", directory=tmp_path)
    parts = reference_arms(loaded)
    assert sorted(parts) == ["paper", "tuned"] and usable_reference(loaded)
    for arm in E.ARMS:
        assert parts[arm]["preset"] == "smoke" and parts[arm]["seeds"] == [0, 1]
        assert parts[arm]["rows"] == [{k: v for k, v in r.items() if k != "run"} for r in rows[arm]]
        assert parts[arm]["total_wall_seconds"] == 2.0
    assert E.reference_tuning(loaded) == tuning
    with pytest.raises(ValueError, match="`arms`"):
        E.save_arms_reference("average_k", "smoke", {"best": {"rows": []}}, directory=tmp_path)


def test_preset_table_lists_every_experiment_and_preset():
    table = E.preset_table()
    lines = table.splitlines()
    assert lines[0] == "| chapter | experiment | smoke | cpu | colab | gpu |"
    assert len(lines) == 2 + len(E.EXPERIMENTS)
    row = next(line for line in lines if "`label_noise`" in line)
    n_cpu = len(E.expand("label_noise", "cpu", [0]))
    assert f"{n_cpu} tuned + {len(E.expand('label_noise', 'cpu', [0], arm='paper'))} paper runs a seed" in row
    assert "not defined" in next(line for line in lines if "`two_head_ablation`" in line)
    with pytest.raises(ValueError, match="`presets`"):
        E.preset_table(["laptop"])
    with pytest.raises(TypeError, match="`presets`"):
        E.preset_table("cpu")


# ------------------------------------------------------------------------------ loss_weight and smoke runs


def test_loss_weight_is_validated_and_left_out_of_the_fingerprint_at_one():
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ConfigError, match="`loss_weight`"):
            TrainConfig(loss_weight=bad).validate()
    cfg = TrainConfig()
    keep = {k: v for k, v in dataclasses.asdict(cfg.normalized()).items() if k not in ("device", "workers")}
    del keep["loss_weight"]  # the fingerprint a run had before the field existed
    keep["cache_format_version"] = CACHE_FORMAT_VERSION
    old = hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert cfg.fingerprint() == old != TrainConfig(loss_weight=10.0).fingerprint()


def test_loss_weight_scales_the_training_loss(tmp_path, monkeypatch):
    """SGD without weight decay: loss x 10 at lr / 10 is the same trajectory, with a 10 times larger loss."""
    monkeypatch.setenv("AVGK_CACHE_DIR", str(tmp_path))
    (run,) = [r for r in E.expand("average_k_long_tail", "smoke", [0]) if r.labels["loss"] == "cross_entropy"]
    plain = dataclasses.replace(run.config, weight_decay=0.0, lr=0.1, device="cpu", save_scores=False)
    weighted = dataclasses.replace(plain, loss_weight=10.0, lr=0.01)
    (a, _, _), (b, _, _) = E.runner.train_or_load_many([plain, weighted], progress=False, log=lambda *_: None)
    assert b["history"][0]["train_loss"] == pytest.approx(10 * a["history"][0]["train_loss"], rel=1e-3)
    assert b["summary"]["best_val"] == pytest.approx(a["summary"]["best_val"], abs=0.01)


def test_smoke_preset_trains_the_paper_arm(tmp_path, monkeypatch):
    monkeypatch.setenv("AVGK_CACHE_DIR", str(tmp_path))
    assert E.expand("average_k", "smoke", [0], arm="tuned") and E.expand("average_k", "smoke", [0], arm="paper")
    rows = E.run_experiment("average_k_long_tail", "smoke", [0], arm="paper", progress=False, log=lambda *_: None)
    assert {r["arm"] for r in rows} == {"paper"} and {r["loss"] for r in rows} == {"cross_entropy", "two_head"}
    assert all(math.isfinite(r["test_avg3_macro"]) for r in rows)


def test_load_arm_reads_one_arm_of_either_reference_format(tmp_path):
    from avgk_book.experiments.results import load_arm
    from avgk_book.references import seal

    old = {"experiment": "x", "preset": "cpu", "provenance": {}, "seeds": [0], "rows": [{"seed": 0}], "tuning": {}}
    (tmp_path / "x_cpu.json").write_text(json.dumps(seal(old)))
    assert load_arm("x", "cpu", directory=tmp_path)["arm"] == "tuned"
    assert load_arm("x", "cpu", "paper", directory=tmp_path) is None
    new = {
        "experiment": "y",
        "preset": "cpu",
        "provenance": {"git_commit": "abc"},
        "arms": {"paper": {"rows": [], "seeds": [0]}},
    }
    (tmp_path / "y_cpu.json").write_text(json.dumps(seal(new)))
    view = load_arm("y", "cpu", directory=tmp_path)
    assert view["arm"] == "paper" and view["provenance"] == {"git_commit": "abc"} and "arms" not in view
    with pytest.raises(ValueError, match="arm"):
        load_arm("y", "cpu", "both", directory=tmp_path)


def test_tuning_and_runs_can_be_restricted_to_dataset_families(monkeypatch):
    from avgk_book.experiments import expand, tuning

    runs = expand("label_noise", "smoke", [0], datasets=["synthetic"])
    assert runs and {r.config.dataset for r in runs} == {"synthetic"}
    with pytest.raises(ValueError, match="datasets"):
        expand("label_noise", "smoke", [0], datasets=["cifar100"])
    seen = []
    monkeypatch.setattr(tuning, "_tune_setting", lambda name, spec, setting, **kw: seen.append(setting.dataset) or {})
    tuning.tune("label_noise", "smoke", datasets=["synthetic"])
    assert seen and set(seen) == {"synthetic"}
