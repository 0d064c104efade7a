"""train_many: a stacked member follows its single run; folders, resume and divergence as train's."""

from __future__ import annotations

import statistics

import pytest
import torch

from avgk_lib.engine import TrainingDiverged
from avgk_lib.models import build_model
from avgk_lib.rundir import RunDir, load_checkpoint
from avgk_lib.stacked import Stack, stacking_pays
from avgk_lib.train import TrainConfig, train, train_many

TINY = {"n_classes": 8, "dim": 6, "n_groups": 2, "n_train": 640, "n_val": 200, "n_test": 200}


def _quiet(*_):
    return None


def _cfg(seed: int, **kw) -> TrainConfig:
    base = dict(dataset="synthetic", dataset_options=TINY, loss="noised_topk", k=2, epochs=3, batch_size=32)
    base.update(lr=0.05, eval_ks=[1, 2], seed=seed, scheduler="cosine")
    base.update(kw)
    return TrainConfig(**base)


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_checkpoint(folder / "last.pt")["model"]


def _interrupt_in_epoch_2(monkeypatch):
    """Make a stack raise KeyboardInterrupt when epoch 2 starts; return the real method."""
    real = Stack.train_epoch

    def dies_in_epoch_2(self, epoch, show):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, epoch, show)

    monkeypatch.setattr(Stack, "train_epoch", dies_in_epoch_2)
    return real


NOISE_FREE = [
    ("cross_entropy", {}),
    ("two_head", {}),
    ("ldam", {}),  # cosine head, each member's margins from its own draw's class counts
    ("imbalanced_noised_topk", {"epsilon": 0.0}),  # the stacked noised path, its noise switched off
]


@pytest.mark.parametrize(("loss", "options"), NOISE_FREE, ids=[case[0] for case in NOISE_FREE])
def test_a_noise_free_member_follows_its_single_run_for_60_steps(tmp_path, loss, options):
    # 640 / 32 = 20 steps an epoch, 3 epochs: 60 steps; two seeds and data draws, lrs, weight decays, loss weights
    configs = [
        _cfg(s, loss=loss, loss_options=options, dataset_options={**TINY, "sample_seed": s}, **kw)
        for s, kw in ((3, {"lr": 0.05}), (4, {"lr": 0.1, "weight_decay": 1e-3, "loss_weight": 2.0}))
    ]
    singles = [train(c, tmp_path / f"single{i}", progress=False, log=_quiet) for i, c in enumerate(configs)]
    outs = [tmp_path / f"many{i}" for i in range(2)]
    lines: list[str] = []
    many = train_many(configs, outs, progress=False, log=lines.append)
    assert any("stacked" in line for line in lines)
    for i in range(2):
        a, b = _weights(tmp_path / f"single{i}"), _weights(outs[i])
        for name in a:
            assert torch.allclose(a[name], b[name], atol=1e-4, rtol=0), name
        assert many[i]["summary"]["fingerprint"] == singles[i]["summary"]["fingerprint"]
        assert many[i]["test"] == pytest.approx(singles[i]["test"], abs=1e-6)


def test_noised_members_lie_within_the_seed_spread_of_their_single_runs():
    """The stack draws its noise in one call, so a noised member is its single run only in
    distribution: over 5 seeds (each its own data draw, two epsilons), each member's test
    metrics lie within the seed spread of the single runs (their mean +- 3 standard deviations).
    On this tiny task the noise alone moves a run's top-1 by up to 0.1, as much as the seed."""
    configs = [
        _cfg(s, epochs=3, dataset_options={**TINY, "sample_seed": s}, loss_options={"epsilon": 0.5 if s % 2 else 1.0})
        for s in range(5)
    ]
    singles = [train(c, progress=False, log=_quiet)["test"] for c in configs]
    many = [r["test"] for r in train_many(configs, progress=False, log=_quiet)]
    for key in ("top1_micro", "top2_micro", "avg2_micro"):
        values = [r[key] for r in singles]
        mean, spread = statistics.mean(values), statistics.stdev(values)
        assert spread > 0
        assert all(abs(r[key] - mean) <= 3 * spread for r in many), (key, values, [r[key] for r in many])


def test_over_five_seeds_final_metrics_agree_within_the_seed_spread():
    configs = [_cfg(s, loss="cross_entropy", epochs=2) for s in range(5)]
    singles = [train(c, progress=False, log=_quiet)["test"]["top1_micro"] for c in configs]
    many = [r["test"]["top1_micro"] for r in train_many(configs, progress=False, log=_quiet)]
    spread = statistics.stdev(singles)
    assert spread > 0
    assert max(abs(a - b) for a, b in zip(singles, many, strict=True)) <= spread


def test_stacked_folders_are_the_folders_train_writes(tmp_path):
    configs = [_cfg(s, epochs=2) for s in (0, 1)]
    outs = [tmp_path / str(s) for s in (0, 1)]
    train_many(configs, outs, progress=False, log=_quiet)
    for cfg, out in zip(configs, outs, strict=True):
        result, why = RunDir(out).read_result(cfg.fingerprint())
        assert result is not None and why == ""
        assert result.provenance["stack_size"] == 2
        assert {"last.pt", "best.pt", "scores.pt", "results.json", "run.json"} <= {p.name for p in out.iterdir()}


def test_a_killed_stack_resumes_to_the_same_results(tmp_path, monkeypatch):
    configs = [_cfg(s, epochs=3) for s in (0, 1)]
    reference = train_many(configs, [tmp_path / f"ref{s}" for s in (0, 1)], progress=False, log=_quiet)
    outs = [tmp_path / f"killed{s}" for s in (0, 1)]
    real = _interrupt_in_epoch_2(monkeypatch)
    with pytest.raises(KeyboardInterrupt, match="interrupted during epoch 2") as stopped:
        train_many(configs, outs, progress=False, log=_quiet)
    assert all((o / "last.pt").exists() and not (o / "results.json").exists() for o in outs)
    # the line says what was saved and where: every member's folder, its finished epoch
    assert "each of the 2 stacked runs keeps its 1 finished epoch(s)" in str(stopped.value)
    assert all(str(o) in str(stopped.value) for o in outs) and "resume=True" in str(stopped.value)
    monkeypatch.setattr(Stack, "train_epoch", real)
    resumed = train_many(configs, outs, resume=True, progress=False, log=_quiet)
    for a, b in zip(reference, resumed, strict=True):
        assert a["test"] == b["test"] and a["summary"]["best_epoch"] == b["summary"]["best_epoch"]


def test_a_stacked_member_folder_resumes_with_train(tmp_path, monkeypatch):
    configs = [_cfg(s, loss="cross_entropy", epochs=2) for s in (0, 1)]
    reference = train(configs[1], tmp_path / "ref", progress=False, log=_quiet)
    outs = [tmp_path / f"m{s}" for s in (0, 1)]
    _interrupt_in_epoch_2(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train_many(configs, outs, progress=False, log=_quiet)
    resumed = train(configs[1], outs[1], resume=True, progress=False, log=_quiet)
    assert resumed["test"] == pytest.approx(reference["test"], abs=1e-6)


def test_a_diverging_member_stops_alone(tmp_path):
    configs = [_cfg(0, loss="cross_entropy", epochs=2), _cfg(1, loss="cross_entropy", epochs=2, lr=1e6)]
    outs = [tmp_path / "ok", tmp_path / "bad"]
    results = train_many(configs, outs, progress=False, log=_quiet)
    assert isinstance(results[0], dict) and isinstance(results[1], TrainingDiverged)
    assert (outs[0] / "results.json").exists() and not (outs[1] / "results.json").exists()


def test_runs_that_cannot_share_a_stack_train_one_by_one(tmp_path):
    configs = [_cfg(0, loss="cross_entropy", epochs=1), _cfg(1, loss="cross_entropy", epochs=1, optimizer="adamw")]
    lines: list[str] = []
    results = train_many(configs, progress=False, log=lines.append)
    assert not any("stacked" in line for line in lines)
    single = train(configs[1], progress=False, log=_quiet)
    assert results[1]["test"] == single["test"]


def test_convolutional_models_are_not_stacked_on_a_cpu():
    cnn, mlp = build_model("small_cnn", 10, (1, 28, 28)), build_model("mlp", 10, (16,))
    assert not stacking_pays(cnn, torch.device("cpu"))
    assert stacking_pays(mlp, torch.device("cpu"))
    assert stacking_pays(cnn, torch.device("cuda"))  # a rule, not a measurement: no GPU is needed


def test_bad_arguments_are_refused_before_training(tmp_path):
    with pytest.raises(TypeError, match="configs"):
        train_many([{"dataset": "synthetic"}])
    with pytest.raises(ValueError, match="outs"):
        train_many([_cfg(0)], [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ValueError, match="max_stack"):
        train_many([_cfg(0)], max_stack=0)
    with pytest.raises(ValueError, match="epochs"):
        train_many([_cfg(0, epochs=0)])


@pytest.mark.parametrize("augment", ["crop_flip", "flip", None])
def test_stacked_batches_are_each_members_loader_batches(augment):
    """Images with augmentation: step t of the stacked gather gives member m exactly the batch
    its own loader yields at step t (its permutation, crop offsets and flips, normalisation)."""
    from avgk_lib.data.base import DatasetBundle, TensorSplit
    from avgk_lib.data.loader import InMemoryLoader
    from avgk_lib.stacked import StackedBatches

    def bundle(seed: int) -> DatasetBundle:
        g = torch.Generator().manual_seed(seed)
        split = TensorSplit(torch.randint(0, 256, (40, 2, 6, 6), generator=g, dtype=torch.uint8), torch.arange(40) % 4)
        mean, std = (0.5, 0.4), (0.2, 0.3)
        return DatasetBundle("fake", 4, split, split, split, (2, 6, 6), list("abcd"), [10] * 4, mean, std, augment, 2)

    shared = bundle(0)
    bundles = [shared, shared, bundle(1)]  # two members on one draw, one on another
    loaders = [
        InMemoryLoader(b.train, b, 8, torch.device("cpu"), shuffle=True, augment=True, seed=s, drop_last=True)
        for s, b in zip((3, 4, 5), bundles, strict=True)
    ]
    stacked = StackedBatches(loaders, steps=4)
    for epoch in (0, 1):
        stacked.set_epoch(epoch)
        singles = [list(loader)[:4] for loader in loaders]  # set_epoch was called by the stack
        for step in range(4):
            x, y, idx = stacked.batch(step)
            for m, batches in enumerate(singles):
                assert torch.equal(x[m], batches[step][0]), (epoch, step, m)
                assert torch.equal(y[m], batches[step][1]) and torch.equal(idx[m], batches[step][2])


# ------------------------------------------------------------------------------------------------
# the batched validation and final evaluation against the per-member computation
# ------------------------------------------------------------------------------------------------

WIDE = {"n_classes": 100, "dim": 6, "n_groups": 20, "n_train": 640, "n_val": 700, "n_test": 300}  # 70k val scores


def _stack(configs):
    from avgk_lib.build import build_run
    from avgk_lib.engine import DivergenceGuard
    from avgk_lib.runspec import RunSpec
    from avgk_lib.seeding import rng_state
    from avgk_lib.stacked import Member, stack_key

    runs = [build_run(RunSpec.resolve(c)) for c in configs]
    assert len({stack_key(r) for r in runs}) == 1
    return Stack([Member(r, rng_state(), DivergenceGuard(None, 1, 1)) for r in runs])


def _per_member_validation(stack):
    """The former Stack.validation_metrics: per member, its head's scores of each stacked batch,
    then metric_dict on its own."""
    from avgk_lib.metrics import metric_dict

    parts = [[] for _ in stack.members]
    stack.base.eval()
    with torch.no_grad():
        for batches in zip(*[m.run.val_loader for m in stack.members], strict=True):
            outputs = stack.forward(torch.stack([b[0] for b in batches]))
            for i, m in enumerate(stack.members):
                out = tuple(o[i] for o in outputs) if isinstance(outputs, tuple) else outputs[i]
                parts[i].append(m.run.objective.head_scores(out)[m.run.spec.eval_head])
    stack.base.train()
    return [
        metric_dict(torch.cat(p), m.run.val_loader.y, m.run.cfg.eval_ks)[0] if m.alive else None
        for p, m in zip(parts, stack.members, strict=True)
    ]


STACKS = {
    "cross_entropy": [dict(loss="cross_entropy", eval_ks=[1, 2, 2.5])] * 3,
    "two_head_mixed_heads": [
        dict(loss="two_head", eval_head="multilabel"),
        dict(loss="two_head", eval_head="softmax"),
        dict(loss="two_head", eval_head="combined", eval_ks=[1, 3]),
    ],
}


@pytest.mark.parametrize("case", list(STACKS))
def test_batched_validation_is_the_per_member_validation(case):
    """One stacked metric computation over the members gives every member the metrics its own
    metric_dict gives on the same scores, value for value (thresholds included): 70k pooled
    scores per member, past the direct top-K selection; before training (near-uniform scores)
    and after an epoch; a stopped member gets None."""
    configs = [_cfg(s, dataset_options={**WIDE, "sample_seed": s}, epochs=2, **kw) for s, kw in enumerate(STACKS[case])]
    stack = _stack(configs)
    assert stack.validation_metrics() == _per_member_validation(stack)
    stack.train_epoch(0, False)
    got = stack.validation_metrics()
    assert got == _per_member_validation(stack)
    assert [list(d) for d in got] == [list(d) for d in _per_member_validation(stack)]  # key order too
    stack.members[1].error = TrainingDiverged("stopped")
    assert stack.validation_metrics() == _per_member_validation(stack)
    assert stack.validation_metrics()[1] is None


def test_stacked_metrics_are_metric_dict_with_ties_and_absent_classes():
    from avgk_lib.metrics import (
        _kth_and_next_largest_rows,
        calibrated_test_metrics,
        metric_dict,
        stacked_calibrated_test_metrics,
        stacked_metric_dicts,
    )

    g = torch.Generator().manual_seed(0)
    for r, n, c in ((3, 800, 100), (2, 40, 5)):
        raw = torch.softmax(3 * torch.randn(r, n, c, generator=g), dim=-1)
        targets = torch.randint(0, c - 1, (r, n), generator=g)  # the last class absent: macro over present ones
        for scores in (raw, (raw * 20).round() / 20, (raw * 1000).round() / 1000):  # ties at the threshold
            ks = [1, 2, 2.5] if c > 5 else [1, 5]
            got, thresholds = stacked_metric_dicts(scores, targets, ks)
            test = scores.flip(1)
            final = stacked_calibrated_test_metrics(scores, targets, test, targets.flip(1), ks)
            for i in range(r):
                want, want_thresholds = metric_dict(scores[i], targets[i], ks)
                assert got[i] == want and list(got[i]) == list(want)
                assert all(torch.equal(thresholds[k][i], want_thresholds[k]) for k in ks)
                want_final = calibrated_test_metrics(scores[i], targets[i], test[i], targets.flip(1)[i], ks)
                assert final[i] == want_final and list(final[i]) == list(want_final)
    # the pruned selection is topk's, with ties and a NaN
    for values in (torch.rand(100_000, generator=g), (torch.rand(100_000, generator=g) * 30).round()):
        for m in (1, 999, 50_000, 99_998):
            top = torch.topk(values, m + 1).values
            ((kth, nxt),) = _kth_and_next_largest_rows(values[None], [m])
            assert (kth[0], nxt[0]) == (top[m - 1], top[m])
    values[7] = float("nan")
    ((_, nxt),) = _kth_and_next_largest_rows(values[None], [5])
    assert torch.equal(nxt[0], torch.topk(values, 6).values[5])
