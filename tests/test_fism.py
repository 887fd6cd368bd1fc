"""``learner=fism``: the user vector read off the support's item vectors, and its in-batch ranking loss."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from test_learners import ctx, tiny_batch, tiny_dataset

from metarec.errors import ConfigError
from metarec.learners import build_learner
from metarec.learners.fism import FISMConfig
from metarec.models import MeLU, MeLUConfig, TwoTower, TwoTowerConfig


def _learner(ds, **cfg):
    torch.manual_seed(0)
    model = TwoTower(ds.schema, TwoTowerConfig(embed_dim=4, dim=4, user_hidden=[8], item_hidden=[8])).double()
    learner = build_learner("fism", model, ctx(ds), FISMConfig(**cfg)).double()
    with torch.no_grad():  # away from the zero start, so the support matters
        for p in (learner.pool.weight, learner.rated.weight, learner.rank_user.weight, learner.rank_item.weight):
            p.normal_(0, 0.5)
    return learner


def test_needs_a_two_tower_model_and_sane_options() -> None:
    ds = tiny_dataset()
    with pytest.raises(ConfigError, match="needs a two-tower model"):
        build_learner("fism", MeLU(ds.schema, MeLUConfig(embed_dim=2, hidden=[])), ctx(ds), FISMConfig())
    model = TwoTower(ds.schema, TwoTowerConfig(embed_dim=4, dim=4))
    for bad in ({"alpha": 1.5}, {"rank_weight": -1.0}, {"rank_weight": float("nan")}):
        with pytest.raises(ConfigError):
            build_learner("fism", model, ctx(ds), FISMConfig(**bad))


def test_user_vector_is_the_formula() -> None:
    ds = tiny_dataset()
    learner = _learner(ds)
    batch = tiny_batch(ds)
    support = batch.support()
    u = learner.adapt(batch.user, support)
    m = learner.model
    for t in range(batch.n_tasks):
        keep = support.mask[t]
        v = m.item_side(support.items.index(t))[keep, :4]
        r = (support.ratings[t][keep] - learner.centre) / learner.scale
        n = keep.sum().double() ** 0.5
        base = m.head[0].proj(m.user_tower(m.user_encoder(batch.user.index(t))))
        want = base + learner.pool(v.sum(0) / n) + learner.rated((r[:, None] * v).sum(0) / n)
        torch.testing.assert_close(u[t], want)
    # padding never counts: a longer padded support gives the same vectors
    padded = dataclasses.replace(support, mask=support.mask.clone())
    torch.testing.assert_close(learner.adapt(batch.user, padded), u)


def test_in_batch_softmax_is_the_hand_computation() -> None:
    """Each relevant query item of a task against the other task's query items (log-Q corrected);
    items the task holds itself never count as its negatives."""
    ds = tiny_dataset()
    learner = _learner(ds)
    batch = tiny_batch(ds)
    u = learner.adapt(batch.user, batch.support())
    got = learner.in_batch_softmax(u, batch)
    ids, items = batch.query()
    _, y, m = batch.part("query")
    s = batch.n_support
    losses = []
    for t in range(batch.n_tasks):
        own = set(batch.item_ids[t][batch.support_mask[t] | batch.query_mask[t]].tolist())
        cols = []  # (logit, is_positive)
        for o in range(batch.n_tasks):
            for j in range(ids.shape[1]):
                if not m[o, j]:
                    continue
                item = int(ids[o, j])
                if o != t and item in own:
                    continue
                one = items.index((slice(o, o + 1), slice(j, j + 1)))
                logit = learner.rank_score(u[t : t + 1], None, one)[0, 0] - learner.logq[item]
                cols.append((logit, o == t and bool(y[o, j] >= learner.ctx.relevance_threshold)))
        pos = [c for c, p in cols if p]
        if pos:
            lse = torch.logsumexp(torch.stack([c for c, _ in cols]), 0)
            losses.append(torch.stack([lse - c for c in pos]).mean())
    torch.testing.assert_close(got, torch.stack(losses).mean().to(got.dtype))
    assert batch.ratings[:, s:][batch.query_mask[:, s:]].ge(4).any()  # the check above had positives


def test_training_reaches_every_part_and_implicit_pools_only_positives() -> None:
    ds = tiny_dataset()
    learner = _learner(ds)
    batch = tiny_batch(ds)
    loss, _ = learner.meta_step(batch, train=True)
    loss.backward()
    for name in ("pool.weight", "rated.weight", "rank_user.weight", "rank_item.weight", "model.item_tower.0.weight"):
        assert dict(learner.named_parameters())[name].grad.abs().sum() > 0, name
    # implicit labels: sampled negatives (label 0) in the support do not move the user vector
    c = dataclasses.replace(ctx(ds), loss="bce", rating_range=(0.0, 1.0))
    torch.manual_seed(0)
    model = TwoTower(ds.schema, TwoTowerConfig(embed_dim=4, dim=4)).double()
    imp = build_learner("fism", copy.deepcopy(model), c, FISMConfig()).double()
    with torch.no_grad():
        imp.pool.weight.normal_()
    support = batch.support()
    labels = torch.zeros_like(support.ratings)
    labels[:, 0] = 1.0
    a = imp.adapt(batch.user, dataclasses.replace(support, ratings=labels))
    only = dataclasses.replace(support, ratings=labels, mask=support.mask & (labels > 0.5))
    torch.testing.assert_close(a, imp.adapt(batch.user, only))
    assert not hasattr(imp, "rank_user")  # the interaction logit ranks as it is
