"""Partner independence of train_many, field by field: a member never trains with its partner's options.

For every :class:`TrainConfig` field, one member holds a non-default valid value and its partner
the default. Either the two land in different stacks (:func:`avgk_lib.stacked.shared_config`
differs), or the field is declared per member (:data:`avgk_lib.stacked.MEMBER_FIELDS`) and each
member, in either order, ends with the weights and test metrics ``train`` gives it alone.
A field added later without a row here fails :func:`test_every_field_has_a_variant`.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from avgk_lib.rundir import load_checkpoint
from avgk_lib.runspec import RunSpec
from avgk_lib.stacked import MEMBER_FIELDS, shared_config
from avgk_lib.train import TrainConfig, train, train_many

TINY = {"n_classes": 8, "dim": 6, "n_groups": 2, "n_train": 256, "n_val": 96, "n_test": 96}
BASE = dict(dataset="synthetic", dataset_options=TINY, loss="cross_entropy", k=2, epochs=1, batch_size=32)
BASE.update(lr=0.05, eval_ks=[1.0, 2.0], seed=0, max_batches=4, device="cpu")
TWO_HEAD = {"loss": "two_head"}
NOISED = {"loss": "noised_topk"}

#: field -> [(base overrides, the one member's overrides, exact)]: ``exact`` False for the noised
#: loss, whose stacked noise is drawn in one call (statistically, not exactly, its single run's)
VARIANTS: dict[str, list[tuple[dict, dict, bool]]] = {
    "dataset": [({}, {"dataset": "fashion_mnist", "dataset_options": {}}, True)],
    "dataset_options": [
        ({}, {"dataset_options": {**TINY, "sample_seed": 3}}, True),
        ({}, {"dataset_options": {**TINY, "label_noise": 0.2}}, True),
        ({}, {"dataset_options": {**TINY, "task_seed": 1}}, True),
    ],
    "model": [({}, {"model": "mlp"}, True)],
    "loss": [({}, {"loss": "smooth_topk_svm"}, True)],
    "k": [({}, {"k": 3.0}, True)],
    "loss_options": [
        ({"loss": "smooth_topk_svm"}, {"loss_options": {"tau": 0.5}}, True),
        (TWO_HEAD, {"loss_options": {"weight": 10.0}}, True),
        (TWO_HEAD, {"loss_options": {"warmup_epochs": 1}}, True),
        (NOISED, {"loss_options": {"n_samples": 3}}, True),
        (NOISED, {"loss_options": {"epsilon": 0.5}}, False),
    ],
    "epochs": [({}, {"epochs": 2}, True)],
    "batch_size": [({}, {"batch_size": 16}, True)],
    "optimizer": [({}, {"optimizer": "adamw"}, True)],
    "lr": [({}, {"lr": 0.2}, True)],
    "momentum": [({}, {"momentum": 0.5}, True)],
    "nesterov": [({}, {"nesterov": False}, True)],
    "weight_decay": [({}, {"weight_decay": 1e-2}, True)],
    "scheduler": [({}, {"scheduler": "step"}, True)],
    "milestones": [({"scheduler": "step"}, {"milestones": [1]}, True)],
    "lr_gamma": [({"scheduler": "step"}, {"lr_gamma": 0.5}, True)],
    "loss_lr_multiplier": [({}, {"loss_lr_multiplier": 2.0}, True)],
    "loss_weight": [({}, {"loss_weight": 3.0}, True)],
    "seed": [({}, {"seed": 5}, True)],
    "device": [({}, {"device": "auto"}, True)],
    "amp": [({}, {"amp": "off"}, True)],
    "channels_last": [({}, {"channels_last": False}, True)],
    "compile": [({}, {"compile": True}, True)],
    "eval_ks": [({}, {"eval_ks": [1.0, 2.0, 3.0]}, True)],
    "select_metric": [({}, {"select_metric": "top1_macro"}, True)],
    "eval_head": [(TWO_HEAD, {"eval_head": "softmax"}, True)],
    "head": [({}, {"head": "cosine"}, True)],
    "detach_multilabel": [(TWO_HEAD, {"detach_multilabel": True}, True)],
    "pretrained": [({"dataset": "cifar100", "dataset_options": {}, "model": "resnet50"}, {"pretrained": True}, True)],
    "workers": [({}, {"workers": 0}, True)],
    "max_batches": [({}, {"max_batches": 3}, True)],
    "save_scores": [({}, {"save_scores": False}, True)],
}
CASES = [(name, *case) for name, cases in VARIANTS.items() for case in cases]


def _quiet(*_):
    return None


def _pair(base: dict, variant: dict) -> tuple[TrainConfig, TrainConfig]:
    default = TrainConfig(**{**BASE, **base})
    return default, dataclasses.replace(default, **variant)


def test_every_field_has_a_variant():
    assert set(VARIANTS) == {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize(("name", "base", "variant", "exact"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_a_member_never_depends_on_its_partner(name, base, variant, exact, tmp_path):
    configs = _pair(base, variant)
    assert configs[0] != configs[1]
    apart = shared_config(RunSpec.resolve(configs[0])) != shared_config(RunSpec.resolve(configs[1]))
    if apart:
        return
    assert name in MEMBER_FIELDS, f"{name} shares a stack but is not declared a member field"
    if exact:
        assert _same_as_alone(configs, tmp_path), "the two members were expected to share a stack"
    else:  # noised: the stacked noise is drawn in one call; the member trains and its options are its own
        results = train_many(list(configs), progress=False, log=_quiet)
        assert all(isinstance(r, dict) for r in results)
        assert [r["config"]["loss_options"] for r in results] == [c.loss_options for c in configs]


def _same_as_alone(configs: tuple[TrainConfig, TrainConfig], tmp_path) -> bool:
    """Each member, trained by ``train_many`` in either order, ends with its single run's weights
    and test metrics; returns whether ``train_many`` stacked them."""
    alone = []
    for i, cfg in enumerate(configs):
        result = train(cfg, tmp_path / f"alone{i}", progress=False, log=_quiet)
        alone.append((result, load_checkpoint(tmp_path / f"alone{i}" / "last.pt")["model"]))
    for order in ((0, 1), (1, 0)):
        outs = [tmp_path / f"many{order}{i}" for i in order]
        lines: list[str] = []
        results = train_many([configs[i] for i in order], outs, progress=False, log=lines.append)
        for i, out, result in zip(order, outs, results, strict=True):
            weights = load_checkpoint(out / "last.pt")["model"]
            for key, value in alone[i][1].items():
                assert torch.allclose(weights[key], value, atol=1e-5, rtol=0), (order, i, key)
            assert result["test"] == pytest.approx(alone[i][0]["test"], abs=1e-6), (order, i)
            assert result["config"] == alone[i][0]["config"]
    return any("stacked" in line for line in lines)


def test_the_detached_head_is_not_its_partners_in_either_order(tmp_path):
    """The reported bug: stacked with a default two-head run, a detached one trained attached."""
    assert not _same_as_alone(_pair(TWO_HEAD, {"detach_multilabel": True}), tmp_path)
