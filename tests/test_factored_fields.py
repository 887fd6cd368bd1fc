"""The vmap executor's factored body fields under scope ``all`` (``executors/factored_fields.py``): index
fields (with padding and repeated indices), multi-hot means and dense projections with biases, on both the
user and the item side, give learn2learn's numbers (float64) whichever fields are kept factored."""

from __future__ import annotations

import copy

import pytest
import torch

from metarec.data.episodes import EpisodeBatch
from metarec.data.features import Features
from metarec.data.schema import CategoricalField, FeatureSchema, MultiHotField
from metarec.learners import LearnerContext, build_learner
from metarec.learners.executors import factored
from metarec.learners.executors.factored_fields import factored_fields
from metarec.learners.maml import MAMLConfig
from metarec.models import MeLU, MeLUConfig

SCHEMA = FeatureSchema(
    user_categorical=(CategoricalField("gender", 3), CategoricalField("zip", 40)),
    user_multihot=(MultiHotField("hobby", 5),),
    item_categorical=(CategoricalField("item_id", 50), CategoricalField("year", 4)),
    item_multihot=(MultiHotField("genre", 6), MultiHotField("text", 3, dense=True)),
)
T, S, Q = 5, 7, 3


def _batch() -> EpisodeBatch:
    """Ragged tasks (support lengths 7..3, query lengths 3..1), item ids repeated within a support, padding
    index 0 in places, a user with no hobby."""
    g = torch.Generator().manual_seed(0)
    length = S + Q
    item_cat = torch.stack([torch.randint(0, 12, (T, length), generator=g),  # few ids: repeats, some 0
                            torch.randint(0, 4, (T, length), generator=g)], -1)
    genre = (torch.rand(T, length, 6, generator=g) < 0.4).double()
    text = torch.randn(T, length, 3, generator=g, dtype=torch.float64)
    user_cat = torch.stack([torch.randint(0, 3, (T,), generator=g), torch.randint(1, 40, (T,), generator=g)], -1)
    hobby = (torch.rand(T, 5, generator=g) < 0.5).double()
    hobby[0] = 0
    support, query = torch.zeros(T, length, dtype=torch.bool), torch.zeros(T, length, dtype=torch.bool)
    for t in range(T):
        support[t, : S - t] = True
        query[t, S : S + max(1, Q - t)] = True
    return EpisodeBatch(
        user_ids=torch.arange(T), user=Features(user_cat, hobby), item_ids=item_cat[..., 0],
        item=Features(item_cat, torch.cat([genre, text], -1)),
        ratings=torch.randint(1, 6, (T, length), generator=g).double(),
        support_mask=support, query_mask=query, n_support=S,
    )


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("which", ["rule", "every", "user"])
@pytest.mark.parametrize("first_order,clip", [(False, None), (True, None), (False, 0.05)])
@pytest.mark.parametrize("steps", [1, 3])
def test_factored_fields_agree_with_learn2learn(monkeypatch, steps, first_order, clip, which):
    """``which``: the fields kept factored -- the size rule's choice (the 50-row item table only), every
    field, or the user's only."""
    if which == "every":
        monkeypatch.setattr(factored, "factored_fields", lambda fields, params, n: list(fields))
    elif which == "user":
        monkeypatch.setattr(factored, "factored_fields", lambda fields, params, n: [f for f in fields if f.side == "user"])
    batch = _batch()
    torch.manual_seed(0)
    model = MeLU(SCHEMA, MeLUConfig(embed_dim=4, hidden=[8, 6])).double()
    ctx = LearnerContext((1.0, 5.0), 3.5, ["warm"], ["user_cold"])
    cfg = dict(inner_lr=0.3, inner_steps=steps, scope="all", first_order=first_order, inner_grad_clip=clip)
    ref, fast = (build_learner("maml", copy.deepcopy(model), ctx, MAMLConfig(**cfg, executor=e))
                 for e in ("learn2learn", "vmap"))
    fast.executor.split_above = float("inf")
    fields = fast.executor.factored.fields
    assert {f.weight for f in fields} == {n for n, _ in model.named_parameters() if "_encoder." in n and n.endswith("weight")}
    assert {f.bias for f in fields if f.bias} == {"item_encoder.multihot.1.bias"}
    grads = []
    for learner in (ref, fast):
        loss, preds = learner.meta_step(batch, train=True)
        loss.backward()
        grads.append((loss.detach(), preds.detach(), {n: p.grad for n, p in learner.named_parameters()
                                                      if p.grad is not None}))
    (l1, p1, g1), (l2, p2, g2) = grads
    _close(l1, l2)
    _close(p1, p2)
    assert g1.keys() == g2.keys()
    for n in g1:
        _close(g1[n], g2[n])
    assert g1["model.item_encoder.categorical.0.weight"].abs().sum() > 0
    # the adapted tables themselves (Reptile's direction, scoring): T - X^T A, padding row untouched
    phis, _ = fast.executor.adapted_parameters(batch, steps)
    ref_phis, _ = ref.executor.adapted_parameters(batch, steps)
    for a, b in zip(phis, ref_phis):
        _close(a, b)
    table = fast.executor.names.index("item_encoder.categorical.0.weight")
    assert torch.equal(phis[table][:, 0], model.item_encoder.categorical[0].weight[0].expand(T, -1))


def test_size_rule_keeps_user_fields_and_item_tables_wider_than_the_support():
    model = MeLU(SCHEMA, MeLUConfig(embed_dim=4, hidden=[8])).double()
    fields = model.linear_fields()
    params = dict(model.named_parameters())
    names = lambda n: sorted(f.weight for f in factored_fields(fields, params, n))  # noqa: E731
    user = sorted(f.weight for f in fields if f.side == "user")
    assert names(5) == sorted(user + ["item_encoder.categorical.0.weight", "item_encoder.multihot.0.linear.weight"])
    assert names(6) == sorted(user + ["item_encoder.categorical.0.weight"])
    assert names(60) == user


def test_split_body_offsets_add_to_each_fields_linear_output():
    """An offset enters a multi-hot field before its mean and an index field after its lookup."""
    batch = _batch()
    model = MeLU(SCHEMA, MeLUConfig(embed_dim=4, hidden=[8])).double()
    u0, i0 = model.split_body(batch.user, batch.item)
    off = torch.ones(4, dtype=torch.float64)
    u1, i1 = model.split_body(batch.user, batch.item, ({2: off}, {0: off}))
    count = batch.user.multihot.sum(-1, keepdim=True).clamp_min(1.0)
    _close(u1[..., 8:12], u0[..., 8:12] + 1 / count)
    _close(u1[..., :8], u0[..., :8])
    _close(i1[..., :4], i0[..., :4] + 1)
    _close(i1[..., 4:], i0[..., 4:])


@pytest.mark.parametrize("case", ["maml_split", "maml_copies", "metasgd"])
def test_unknown_codes_under_per_task_copies_agree_with_learn2learn(case):
    """Per-task copies of the tables (the split first layer, no factored layer, Meta-SGD) with unknown codes
    (padding index 0) in the batch: learn2learn's meta-gradients (``melu.padded_lookup``)."""
    from metarec.learners.metasgd import MetaSGDConfig

    batch = _batch()
    assert (batch.item.categorical[batch.support_mask] == 0).any() and (batch.user.categorical == 0).any()
    torch.manual_seed(0)
    model = MeLU(SCHEMA, MeLUConfig(embed_dim=4, hidden=[8, 6])).double()
    ctx = LearnerContext((1.0, 5.0), 3.5, ["warm"], ["user_cold"])
    name, cls = ("metasgd", MetaSGDConfig) if case == "metasgd" else ("maml", MAMLConfig)
    ref, fast = (build_learner(name, copy.deepcopy(model), ctx, cls(inner_lr=0.3, inner_steps=2, scope="all", executor=e))
                 for e in ("learn2learn", "vmap"))
    if case != "metasgd":  # MAML with per-task copies (the split path takes no factored layer)
        fast.executor.factored = None
    fast.executor.split_above = 0.0 if case == "maml_split" else float("inf")
    grads = []
    for learner in (ref, fast):
        learner.meta_step(batch, train=True)[0].backward()
        grads.append({n: p.grad for n, p in learner.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        _close(grads[0][n], grads[1][n])
