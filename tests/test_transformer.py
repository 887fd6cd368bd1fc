"""The Transformer base recommender and the LoRA scope: shapes, LoRA starting equal to the meta-model,
what adapts under each scope, executor equivalence (float64), and whole runs."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from metarec.config import compose
from metarec.data.datamodule import ColdStartDataModule, DataConfig
from metarec.errors import ConfigError
from metarec.learners import LearnerContext, build_learner
from metarec.learners.maml import MAMLConfig
from metarec.learners.metasgd import MetaSGDConfig
from metarec.learners.reptile import ReptileConfig
from metarec.models import MeLU, MeLUConfig, TransformerConfig, TransformerRec
from metarec.runs import finished_runs
from metarec.train import fit


@pytest.fixture(scope="module")
def setup():
    dm = ColdStartDataModule(DataConfig(params={"n_users": 200}, meta_batch_size=5), seed=0)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    batch.ratings = batch.ratings.double()
    batch.item.multihot, batch.user.multihot = batch.item.multihot.double(), batch.user.multihot.double()
    ctx = LearnerContext((1.0, 5.0), 3.5, ["warm"], ["user_cold"])
    torch.manual_seed(0)
    model = TransformerRec(dm.dataset.schema, TransformerConfig(d_model=16, layers=2, heads=2, ffn=32, head_hidden=[16],
                                                                 lora_rank=2)).double()
    with torch.no_grad():  # non-zero adapters, so that they matter in the equivalence checks
        for n, p in model.named_parameters():
            if n.endswith("lora_b"):
                p.normal_(0, 0.05)
    return dm, batch, ctx, model


def test_shapes_and_broadcasting(setup) -> None:
    dm, batch, _, model = setup
    out = model(batch.user, batch.item)
    assert out.shape == batch.item_ids.shape
    # one user against a catalogue, as full ranking and serving call it
    items = dm.collate.tables.items(torch.arange(7))
    items.multihot = items.multihot.double()
    one = model(batch.user.index(0), items)
    assert one.shape == (7,)


def test_lora_starts_equal_to_the_meta_model(setup) -> None:
    dm, batch, _, _ = setup
    torch.manual_seed(1)
    fresh = TransformerRec(dm.dataset.schema, TransformerConfig(d_model=16, heads=2, ffn=32, lora_rank=4)).double()
    assert all(torch.count_nonzero(p) == 0 for n, p in fresh.named_parameters() if n.endswith("lora_b"))
    with_adapters = fresh(batch.user, batch.item)
    for m in fresh.modules():
        if hasattr(m, "rank"):
            m.rank = 0  # switch the adapters off
    torch.testing.assert_close(with_adapters, fresh(batch.user, batch.item))


def test_what_adapts_under_each_scope(setup) -> None:
    _, _, _, model = setup
    lora = model.adapted_parameter_names("lora")
    assert lora and all("lora_" in n or n.startswith("head.") for n in lora)
    assert any(n.startswith("head.") for n in lora) and any("lora_" in n for n in lora)
    assert set(model.adapted_parameter_names("head")) == {n for n, _ in model.named_parameters() if n.startswith("head.")}
    assert len(model.adapted_parameter_names("all")) == len(list(model.parameters()))
    with pytest.raises(ConfigError, match="lora_rank"):
        TransformerRec(setup[0].dataset.schema, TransformerConfig()).scope_split("lora")
    with pytest.raises(ConfigError, match="needs a model with LoRA adapters"):
        MeLU(setup[0].dataset.schema, MeLUConfig()).scope_split("lora")



@pytest.mark.parametrize("name, overrides", [("melu", {}), ("twotower", {}), ("transformer", {}),
                                             ("transformer", {"lora_rank": 2})])
def test_has_scope_agrees_with_scope_split_for_every_scope(setup, name, overrides):
    """``has_scope`` (asked before a model is built, by ``metarec compare``) says yes exactly where the built
    model's ``scope_split`` accepts the scope."""
    import dataclasses

    from metarec.models import MODELS
    from metarec.models.base import SCOPES

    entry = MODELS.get(name)
    cfg = dataclasses.replace(entry.config_cls(), **overrides)
    model = entry.factory(setup[0].dataset.schema, cfg)
    for scope in SCOPES:
        try:
            model.scope_split(scope)
            accepted = True
        except ConfigError:
            accepted = False
        assert type(model).has_scope(scope, cfg) is accepted, (name, overrides, scope)

def _grads(learner) -> dict:
    return {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("scope", ["all", "head", "lora"])
@pytest.mark.parametrize("name, cls", [("maml", MAMLConfig), ("metasgd", MetaSGDConfig)])
def test_executors_agree(setup, name, cls, scope, steps) -> None:
    _, batch, ctx, model = setup
    out = []
    for executor in ("learn2learn", "vmap"):
        learner = build_learner(name, copy.deepcopy(model), ctx, cls(inner_lr=0.05, inner_steps=steps, scope=scope,
                                                                      executor=executor))
        loss, preds = learner.meta_step(batch, train=True)
        loss.backward()
        out.append((loss.detach(), preds.detach(), _grads(learner)))
    (l1, p1, g1), (l2, p2, g2) = out
    torch.testing.assert_close(l1, l2, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(p1, p2, rtol=1e-6, atol=1e-9)
    assert g1.keys() == g2.keys()
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], rtol=1e-6, atol=1e-9)
    if scope == "lora":  # the base weights are meta-learned through the adapted ones (second order)
        assert any(k.endswith("q.base.weight") for k in g1)
        assert any("lora_" in k for k in g1)


def test_reptile_under_lora_moves_only_the_adapted_parameters(setup) -> None:
    _, batch, ctx, model = setup
    dirs = []
    for executor in ("learn2learn", "vmap"):
        learner = build_learner("reptile", copy.deepcopy(model), ctx,
                                ReptileConfig(inner_lr=0.05, inner_steps=2, scope="lora", executor=executor))
        dirs.append(learner.reptile_direction(batch))
        names = learner.executor.names
    (d1, l1), (d2, l2) = dirs
    assert len(d1) == len(names) and all("lora_" in n or n.startswith("head.") for n in names)
    torch.testing.assert_close(l1, l2, rtol=1e-6, atol=1e-9)
    for a, b in zip(d1, d2):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("overrides", [
    ["model=transformer"],
    ["model=transformer", "learner.scope=head"],
    ["model=transformer", "model.lora_rank=4", "learner.scope=lora"],
    ["model=transformer", "model.lora_rank=4", "learner=reptile", "learner.scope=lora"],
], ids=["all", "head", "lora", "reptile-lora"])
def test_runs(overrides, tmp_path) -> None:
    cfg = compose([*overrides, "data.params.n_users=200", "trainer.fast_dev_run=true", "trainer.enable_progress_bar=false",
                   f"run.root={tmp_path}"])
    (record,) = finished_runs(fit(cfg))
    assert all(math.isfinite(v) for v in record["metrics"].values())


@pytest.mark.parametrize("overrides, fragment", [
    (["model=transformer", "model.d_model=30", "model.heads=4"], "multiple of heads"),
    (["model=transformer", "learner.scope=lora"], "model.lora_rank > 0"),
    (["learner.scope=lora"], "needs a model with LoRA adapters"),
])
def test_bad_settings_are_one_line_errors(overrides, fragment, tmp_path) -> None:
    cfg = compose([*overrides, "data.params.n_users=200", f"run.root={tmp_path}"])
    with pytest.raises(ConfigError, match=fragment) as e:
        fit(cfg)
    assert "\n" not in str(e.value)


def test_plain_layer_norm_matches_torch() -> None:
    from metarec.models.transformer import LayerNorm

    x = torch.randn(3, 5, 16, dtype=torch.float64)
    ours = LayerNorm(16).double()
    with torch.no_grad():
        ours.weight.normal_()
        ours.bias.normal_()
    ref = torch.nn.functional.layer_norm(x, (16,), ours.weight, ours.bias, 1e-5)
    torch.testing.assert_close(ours(x), ref)
