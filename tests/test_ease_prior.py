"""The EASE prior of ``fism cf_prior=ease`` (``metarec.learners.ease_prior``): plain fold-in equals the
``ease`` learner; a training user's scores are EASE fitted without that user's row (exactly); the
leave-one-out rows are the fold-in of the rest of the profile; and the fism learner adds it as documented."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_cf_baselines import _closed_form_b, scores_of, support, toy_ctx
from test_learners import ctx, tiny_batch, tiny_dataset
from torch import nn

from metarec.errors import ConfigError
from metarec.learners import build_learner
from metarec.learners.ease import EASEConfig
from metarec.learners.ease_prior import EasePrior
from metarec.learners.fism import FISMConfig
from metarec.models import TwoTower, TwoTowerConfig

N_ITEMS, L2 = 12, 3.0


def _pool(n_users: int = 30, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    pool = {}
    for u in range(n_users):
        items = rng.choice(N_ITEMS, 6, replace=False)
        pool[u] = (items, rng.choice([2.0, 4.0, 5.0], 6))  # ratings >= 4 are the relevant interactions
    return pool


def _rows(rng, n_tasks: int = 4) -> list[list[tuple[int, float]]]:
    return [[(int(i), float(r)) for i, r in zip(rng.choice(N_ITEMS, 5, replace=False), rng.choice([3.0, 4.0, 5.0], 5))]
            for _ in range(n_tasks)]


def _x(pool: dict) -> np.ndarray:
    x = np.zeros((len(pool), N_ITEMS))
    for u, (items, ratings) in sorted(pool.items()):
        x[u, items[ratings >= 4]] = 1
    return x


def test_plain_fold_in_equals_the_ease_learner() -> None:
    pool = _pool()
    c = toy_ctx(pool, N_ITEMS)
    ease = build_learner("ease", nn.Identity(), c, EASEConfig(l2=L2, popularity_tiebreak=False))
    prior = EasePrior(nn.Identity(), c, L2)
    sup = support(_rows(np.random.default_rng(1)))
    got, n = prior.fold_in(sup)
    np.testing.assert_allclose(got.double().numpy(), scores_of(ease, sup), rtol=1e-4, atol=1e-5)
    assert n.tolist() == (sup.mask & (sup.ratings >= 4)).sum(1).float().tolist()
    assert prior.l2 == L2


def test_a_training_user_gets_ease_fitted_without_their_row() -> None:
    pool = _pool()
    c = toy_ctx(pool, N_ITEMS)
    prior = EasePrior(nn.Identity(), c, L2)
    rows = _rows(np.random.default_rng(2))
    sup = support(rows)
    users = torch.tensor([3, 7, 99, 11])  # 99: not a training user -> plain EASE
    got, _ = prior.fold_in(sup, users)
    x, cov = _x(pool), prior.covered.numpy()
    for t, (u, row) in enumerate(zip(users.tolist(), rows)):
        keep = np.ones(len(pool), dtype=bool)
        if u < len(pool):
            keep[u] = False
        b = _closed_form_b(x[keep][:, cov], L2)
        s = np.zeros(N_ITEMS)
        s[[i for i, r in row if r >= 4]] = 1
        want = np.zeros(N_ITEMS)
        want[cov] = s[cov] @ b
        np.testing.assert_allclose(got[t].double().numpy(), want, rtol=1e-4, atol=1e-5)
    plain, _ = prior.fold_in(sup)
    assert not torch.allclose(got[0], plain[0])  # the downdate changes a training user's scores
    torch.testing.assert_close(got[2], plain[2])


def test_an_item_only_the_training_user_holds_is_uncovered_for_them() -> None:
    """Without the user's row, an item no other training user holds is what an uncovered item is to a new
    user: not folded in, not counted, scored exactly 0 — not the float32 residue of the downdate, which
    ties it to the user's own items (the leak it used to be)."""
    pool = _pool()
    for u, (items, ratings) in pool.items():  # item 11: relevant for user 0 only
        ratings[items == 11] = 5.0 if u == 0 else 2.0
    if 11 not in pool[0][0]:
        pool[0][0][0], pool[0][1][0] = 11, 5.0
    prior = EasePrior(nn.Identity(), toy_ctx(pool, N_ITEMS), L2)
    alone_item = int(prior.column[11])
    assert alone_item >= 0  # covered: user 0 holds it
    sup = support([[(11, 5.0)], [(11, 5.0), (int(pool[0][0][1]), 5.0)], [(11, 5.0)]])
    users = torch.tensor([0, 0, 99])
    e, n = prior.fold_in(sup, users)
    assert n.tolist() == [0.0, 1.0, 1.0]
    assert torch.count_nonzero(e[0]) == 0 and e[:2, 11].eq(0).all()
    plain, _ = prior.fold_in(sup)  # a new user holding item 11 folds it in
    torch.testing.assert_close(e[2], plain[2])
    x, cov = _x(pool), prior.covered.numpy()
    others = [c for c in cov if c != 11]
    b = _closed_form_b(x[1:][:, others], L2)  # EASE without user 0, item 11 uncovered
    want = np.zeros(N_ITEMS)
    s = np.zeros(N_ITEMS)
    s[int(pool[0][0][1])] = 1
    want[others] = s[others] @ b
    np.testing.assert_allclose(e[1].double().numpy(), want, rtol=1e-4, atol=1e-5)
    e2, n2, rest, rest_n = prior.fold_in_leave_one_out(sup, users)
    torch.testing.assert_close(e2, e)
    assert rest[:2, :, 11].eq(0).all() and rest_n[1].tolist() == [1.0, 0.0]


def test_leave_one_out_scores_are_the_fold_in_of_the_rest() -> None:
    pool = _pool()
    prior = EasePrior(nn.Identity(), toy_ctx(pool, N_ITEMS), L2)
    rows = _rows(np.random.default_rng(3))
    sup = support(rows)
    users = torch.tensor([0, 5, 50, 2])
    e, n, rest, rest_n = prior.fold_in_leave_one_out(sup, users)
    torch.testing.assert_close(e, prior.fold_in(sup, users)[0])
    for t, row in enumerate(rows):
        for j in range(len(row)):
            without = dataclasses.replace(sup, mask=sup.mask.clone())
            without.mask[t, j] = False
            want, want_n = prior.fold_in(without, users)
            torch.testing.assert_close(rest[t, j], want[t], rtol=1e-4, atol=1e-5)
            assert rest_n[t, j] == want_n[t]


def _cf_learner(validation_batches=None, **cfg):
    ds = tiny_dataset()
    from metarec.data.episodes import FeatureTables

    r = ds.ratings
    pool = {int(u): (g.item.to_numpy(), g.rating.to_numpy()) for u, g in r.groupby("user")}
    c = dataclasses.replace(ctx(ds), all_items=FeatureTables(ds).items(torch.arange(8)),
                            new_item_mask=torch.tensor([False] * 7 + [True]), train_pool=pool,
                            validation_batches=validation_batches)
    c.all_items.multihot = c.all_items.multihot.double()
    torch.manual_seed(0)
    model = TwoTower(ds.schema, TwoTowerConfig(embed_dim=4, dim=4, user_hidden=[8], item_hidden=[8])).double()
    learner = build_learner("fism", model, c, FISMConfig(**{"cf_prior": "ease", "cf_l2": 2.0, **cfg})).double()
    return ds, learner


def test_fism_adds_the_gated_prior_and_popularity_to_its_ranking_logits() -> None:
    ds, learner = _cf_learner()
    batch = tiny_batch(ds)
    sup = batch.support()
    with torch.no_grad():
        learner.cf_gate.copy_(torch.tensor([1.5, -0.3]))
        learner.cf_pop.copy_(torch.tensor([-0.4, 0.2]))
        learner.cf_mix.fill_(0.4)
    state = learner.adapt(batch.user, sup)
    u = learner.user_vector(batch.user, sup)
    ids = torch.arange(8).expand(2, 8)
    items = learner.ctx.all_items.for_tasks(2)
    e, n = learner.cf.fold_in(sup)
    gate = torch.exp(1.5 - 0.3 * torch.log1p(n.double())).unsqueeze(-1)
    w_pop = torch.exp(-0.4 + 0.2 * torch.log1p(n.double())).unsqueeze(-1)
    want = 0.4 * learner.rank_score(u, ids, items) + gate * e.double() + w_pop * learner.logq.double()
    torch.testing.assert_close(learner.rank_score(state, ids, items), want)
    torch.testing.assert_close(learner.score(state, ids, items), learner.score(u, ids, items))  # ratings unchanged
    # training episodes: the leave-user-out prior for the query targets
    priors = learner.training_priors(batch)
    e_train, n_train = learner.cf.fold_in(sup, batch.user_ids)
    torch.testing.assert_close(priors[0][:, 0], learner.prior_logits(e_train, n_train))
    assert len(priors) == 2 and priors[1].shape == (2, batch.n_support, 8)


def test_fism_cf_trains_the_gate_and_options_are_checked() -> None:
    ds, learner = _cf_learner(rating_weight=0.0)
    loss, _ = learner.meta_step(tiny_batch(ds), train=True)
    loss.backward()
    for name in ("cf_gate", "cf_pop", "cf_mix", "pool.weight", "model.item_tower.0.weight"):
        assert dict(learner.named_parameters())[name].grad.abs().sum() > 0, name
    groups = learner.configure_optimizers().param_groups
    assert groups[1]["lr"] == pytest.approx(learner.lr * 30.0) and len(groups[1]["params"]) == 3
    for bad, match in (({"cf_prior": "knn"}, "cf_prior must be one of"),
                       ({"rank_loss": "inbatch"}, "needs learner.rank_loss=full"),
                       ({"cf_scale": 0.0}, "cf_scale must be"), ({"cf_lr_scale": float("nan")}, "cf_lr_scale must be")):
        with pytest.raises(ConfigError, match=match):
            _cf_learner(**bad)


def test_rated_fold_weighs_each_rating_level_and_starts_at_the_relevant_rule() -> None:
    pool = _pool()
    c = toy_ctx(pool, N_ITEMS)
    relevant = EasePrior(nn.Identity(), c, L2)
    rated = EasePrior(nn.Identity(), c, L2, fold="rated")
    rows = [[(0, 1.0), (3, 2.2), (5, 4.0), (7, 5.0)], [(2, 3.0), (4, 4.6)], [(9, 1.4)]]
    sup = support(rows)
    users = torch.tensor([4, 60, 8])
    torch.testing.assert_close(rated.fold_in(sup, users)[0], relevant.fold_in(sup, users)[0])  # weights start 0/1
    assert rated.levels.tolist() == [1, 2, 3, 4, 5] and rated.level_weight.tolist() == [0, 0, 0, 1, 1]
    with torch.no_grad():
        rated.level_weight.copy_(torch.tensor([-0.5, 0.25, 0.5, 1.0, 2.0]))
    got, n = (v.detach() for v in rated.fold_in(sup, users))
    assert n.tolist() == [4.0, 2.0, 1.0]  # every rated (covered) item
    x, cov = _x(pool), rated.covered.numpy()
    level = {1: -0.5, 2: 0.25, 3: 0.5, 4: 1.0, 5: 2.0}
    for t, (u, row) in enumerate(zip(users.tolist(), rows)):
        keep = np.ones(len(pool), dtype=bool)
        if u < len(pool):
            keep[u] = False
        s = np.zeros(N_ITEMS)
        for i, r in row:
            s[i] = level[int(np.floor(r + 0.5))]  # the nearest level
        want = np.zeros(N_ITEMS)
        want[cov] = s[cov] @ _closed_form_b(x[keep][:, cov], L2)
        np.testing.assert_allclose(got[t].double().numpy(), want, rtol=1e-4, atol=1e-5)
    # leave one out: each support item's scores are the weighted fold-in of the rest
    with torch.no_grad():
        e, _, rest, rest_n = rated.fold_in_leave_one_out(sup, users)
    for t, row in enumerate(rows):
        for j in range(len(row)):
            without = dataclasses.replace(sup, mask=sup.mask.clone())
            without.mask[t, j] = False
            with torch.no_grad():
                want, want_n = rated.fold_in(without, users)
            torch.testing.assert_close(rest[t, j], want[t], rtol=1e-4, atol=1e-5)
            assert rest_n[t, j] == want_n[t]
    # implicit feedback has no rating levels: the positives fold in, as with fold=relevant
    implicit = EasePrior(nn.Identity(), toy_ctx(pool, N_ITEMS, loss="bce"), L2, fold="rated")
    assert implicit.fold == "relevant" and not list(implicit.parameters())
    with pytest.raises(ConfigError, match="learner.cf_fold must be one of relevant, rated"):
        EasePrior(nn.Identity(), c, L2, fold="all")


def test_fism_rated_fold_learns_the_level_weights_with_the_gate() -> None:
    ds, learner = _cf_learner(rating_weight=0.0, cf_fold="rated")
    loss, _ = learner.meta_step(tiny_batch(ds), train=True)
    loss.backward()
    assert learner.cf.level_weight.grad is not None and learner.cf.level_weight.grad.abs().sum() > 0
    groups = learner.configure_optimizers().param_groups
    assert any(p is learner.cf.level_weight for p in groups[1]["params"])
    assert not any(p is learner.cf.level_weight for p in groups[0]["params"])


def test_a_catalogue_too_large_for_the_dense_matrix_is_one_line(monkeypatch) -> None:
    import metarec.learners.ease_prior as ep

    monkeypatch.setattr(ep, "MAX_BYTES", 4 * 10 * 10)  # 12 covered items > 10
    with pytest.raises(ConfigError, match="keeps EASE's item x item matrix dense: 12 covered items"):
        EasePrior(nn.Identity(), toy_ctx(_pool(), N_ITEMS), L2)
