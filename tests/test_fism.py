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
    learner = build_learner("fism", model, ctx(ds), FISMConfig(**{"rank_loss": "inbatch", **cfg})).double()
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
    imp = build_learner("fism", copy.deepcopy(model), c, FISMConfig(rank_loss="inbatch")).double()
    with torch.no_grad():
        imp.pool.weight.normal_()
    support = batch.support()
    labels = torch.zeros_like(support.ratings)
    labels[:, 0] = 1.0
    a = imp.adapt(batch.user, dataclasses.replace(support, ratings=labels))
    only = dataclasses.replace(support, ratings=labels, mask=support.mask & (labels > 0.5))
    torch.testing.assert_close(a, imp.adapt(batch.user, only))
    assert not hasattr(imp, "rank_user")  # the interaction logit ranks as it is


def _full_learner(ds, **cfg):
    """A fism learner with the catalogue known (item 7 is a new item) and the full softmax."""
    from metarec.data.episodes import FeatureTables

    c = dataclasses.replace(ctx(ds), all_items=FeatureTables(ds).items(torch.arange(8)),
                            new_item_mask=torch.tensor([False] * 7 + [True]))
    c.all_items.multihot = c.all_items.multihot.double()
    torch.manual_seed(0)
    model = TwoTower(ds.schema, TwoTowerConfig(embed_dim=4, dim=4, user_hidden=[8], item_hidden=[8])).double()
    learner = build_learner("fism", model, c, FISMConfig(rank_loss="full", **cfg)).double()
    with torch.no_grad():
        for p in (learner.pool.weight, learner.rated.weight, learner.rank_user.weight, learner.rank_item.weight):
            p.normal_(0, 0.5)
    return learner


def test_catalogue_logits_are_the_rank_scores() -> None:
    ds = tiny_dataset()
    learner = _full_learner(ds)
    batch = tiny_batch(ds)
    u = learner.adapt(batch.user, batch.support())
    items = learner.ctx.all_items.for_tasks(batch.n_tasks)
    want = learner.rank_score(u, torch.arange(8).expand(2, 8), items)
    torch.testing.assert_close(learner.catalogue_logits(u), want)


@pytest.mark.parametrize("leave_one_out", [True, False])
def test_full_softmax_is_the_hand_computation(leave_one_out: bool) -> None:
    """Relevant query items against every existing item the support does not hold; with leave-one-out,
    each relevant support item too, from a user vector pooled over the rest of the support."""
    ds = tiny_dataset()
    learner = _full_learner(ds, leave_one_out=leave_one_out)
    batch = tiny_batch(ds)
    got = learner.full_softmax(batch)
    support = batch.support()
    s, thr = batch.n_support, learner.ctx.relevance_threshold
    existing = [i for i in range(8) if i != 7]
    per_task = []
    for t in range(batch.n_tasks):
        held = [int(i) for i, k in zip(batch.item_ids[t, :s], support.mask[t]) if k]
        ratings = {int(i): float(r) for i, r, k in zip(batch.item_ids[t, :s], batch.ratings[t, :s], support.mask[t]) if k}

        def user_vector(pool: list[int]) -> torch.Tensor:
            one = dataclasses.replace(support, mask=support.mask.clone())
            one.mask[t] = torch.tensor([bool(k) and int(i) in pool for i, k in zip(batch.item_ids[t, :s], support.mask[t])])
            return learner.adapt(batch.user, one)[t]

        terms = []
        targets = [(int(i), held) for i, r, q in zip(batch.item_ids[t, s:], batch.ratings[t, s:], batch.query_mask[t, s:])
                   if q and r >= thr]
        if leave_one_out and len(held) > 1:
            targets += [(i, [j for j in held if j != i]) for i in held if ratings[i] >= thr]
        for item, pool in targets:
            logits = learner.catalogue_logits(user_vector(pool))
            allowed = [j for j in existing if j not in held or j == item]
            terms.append(torch.logsumexp(logits[allowed], 0) - logits[item])
        if terms:
            per_task.append(torch.stack(terms).mean())
    torch.testing.assert_close(got, torch.stack(per_task).mean())


def test_full_softmax_trains_every_part_and_options_are_checked() -> None:
    ds = tiny_dataset()
    learner = _full_learner(ds, rating_weight=0.0)
    loss, _ = learner.meta_step(tiny_batch(ds), train=True)
    loss.backward()
    for name in ("pool.weight", "rated.weight", "rank_user.weight", "rank_item.weight", "model.item_tower.0.weight"):
        assert dict(learner.named_parameters())[name].grad.abs().sum() > 0, name
    model = TwoTower(ds.schema, TwoTowerConfig(embed_dim=4, dim=4))
    for bad, match in (({"rank_loss": "catalog"}, "rank_loss must be one of"),
                       ({"rating_weight": -1.0}, "rating_weight must be"),
                       ({"rating_weight": 0.0, "rank_weight": 0.0}, "nothing to train"),
                       ({}, "needs the catalogue's item features")):
        with pytest.raises(ConfigError, match=match):
            build_learner("fism", model, ctx(ds), FISMConfig(**bad))
