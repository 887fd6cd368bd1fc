"""The ItemKNN prior of ``fism cf_knn=true`` (``metarec.learners.knn_prior``): plain fold-in equals the
``itemknn`` learner; a training user's similarities leave their own row out (equal to ItemKNN refitted
without the user when every co-occurring pair is a neighbour); the leave-one-out rows are the fold-in of the
rest of the profile; and fism adds it with its own learned gate."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_cf_baselines import scores_of, support, toy_ctx
from test_ease_prior import L2, N_ITEMS, _cf_learner, _pool, _rows
from test_learners import tiny_batch
from torch import nn

from metarec.errors import ConfigError
from metarec.learners import build_learner
from metarec.learners.ease_prior import EasePrior
from metarec.learners.itemknn import ItemKNNConfig
from metarec.learners.knn_prior import KnnPrior


def _priors(pool: dict, neighbours: int, fold: str = "relevant"):
    ease = EasePrior(nn.Identity(), toy_ctx(pool, N_ITEMS), L2, fold=fold)
    return ease, KnnPrior(ease, "test", neighbours, 2.0)


@pytest.mark.parametrize("fold", ["relevant", "rated"])
def test_plain_fold_in_equals_the_itemknn_learner(fold: str) -> None:
    pool = _pool()
    ease, knn = _priors(pool, 3, fold)
    if fold == "rated":  # every level weighs 1: every rated item folds in, as itemknn's fold=rated
        with torch.no_grad():
            ease.level_weight.fill_(1.0)
    learner = build_learner("itemknn", nn.Identity(), toy_ctx(pool, N_ITEMS),
                            ItemKNNConfig(neighbours=3, shrink=2.0, fold=fold, popularity_tiebreak=False))
    sup = support(_rows(np.random.default_rng(4)))
    with torch.no_grad():
        got, rest = knn.fold_in(sup)
    assert rest is None
    np.testing.assert_allclose(got.double().numpy(), scores_of(learner, sup), rtol=1e-5, atol=1e-6)


def test_a_training_user_gets_similarities_without_their_row() -> None:
    pool = _pool()
    _, knn = _priors(pool, N_ITEMS)  # every co-occurring pair is a neighbour: the leave-user-out is exact
    rows = _rows(np.random.default_rng(5))
    sup = support(rows)
    users = torch.tensor([2, 40, 9, 17])  # 40: not a training user
    got, _ = knn.fold_in(sup, users)
    for t, u in enumerate(users.tolist()):
        rest_pool = {k: v for k, v in pool.items() if k != u}
        alone = build_learner("itemknn", nn.Identity(), toy_ctx(rest_pool, N_ITEMS),
                              ItemKNNConfig(neighbours=N_ITEMS, shrink=2.0, popularity_tiebreak=False))
        want = scores_of(alone, support([rows[t]]))[0]
        np.testing.assert_allclose(got[t].double().numpy(), want, rtol=1e-5, atol=1e-6)
    plain, _ = knn.fold_in(sup)
    assert not torch.allclose(got[0], plain[0])
    torch.testing.assert_close(got[1], plain[1])


def test_leave_one_out_rows_are_the_fold_in_of_the_rest() -> None:
    ease, knn = _priors(_pool(), 4, "rated")
    with torch.no_grad():
        ease.level_weight.copy_(torch.tensor([-0.5, 0.25, 0.5, 1.0, 2.0]))
    rows = _rows(np.random.default_rng(6))
    sup = support(rows)
    users = torch.tensor([1, 3, 77, 5])
    with torch.no_grad():
        e, rest = knn.fold_in(sup, users, rest_of=torch.arange(sup.item_ids.shape[1]).expand(sup.n_tasks, -1))
        torch.testing.assert_close(e, knn.fold_in(sup, users)[0])
        for t, row in enumerate(rows):
            for j in range(len(row)):
                without = dataclasses.replace(sup, mask=sup.mask.clone())
                without.mask[t, j] = False
                torch.testing.assert_close(rest[t, j], knn.fold_in(without, users)[0][t], rtol=1e-5, atol=1e-6)


def test_fism_adds_the_gated_knn_term_and_trains_its_gate() -> None:
    ds, learner = _cf_learner(rating_weight=0.0, cf_knn=True, cf_knn_scale=2.0)
    batch = tiny_batch(ds)
    sup = batch.support()
    with torch.no_grad():
        learner.cf_knn_gate.copy_(torch.tensor([0.3, -0.2]))
    e, n = learner.cf.fold_in(sup)
    k, _ = learner.knn.fold_in(sup)
    without = learner.prior_logits(e, n)
    gate = torch.exp(0.3 - 0.2 * torch.log1p(n.double())).unsqueeze(-1)
    torch.testing.assert_close(learner.adapt(batch.user, sup)[1], without + gate * k.double())
    loss, _ = learner.meta_step(batch, train=True)
    loss.backward()
    assert learner.cf_knn_gate.grad.abs().sum() > 0
    assert any(p is learner.cf_knn_gate for p in learner.configure_optimizers().param_groups[1]["params"])
    for bad, match in (({"cf_knn": "yes"}, "cf_knn must be true or false"),
                       ({"cf_knn": True, "cf_knn_scale": 0.0}, "cf_knn_scale must be"),
                       ({"cf_knn": True, "cf_prior": "none"}, "needs learner.cf_prior=ease")):
        with pytest.raises(ConfigError, match=match):
            _cf_learner(**bad)


def test_a_catalogue_too_large_for_the_dense_co_occurrences_is_one_line(monkeypatch) -> None:
    import metarec.learners.knn_prior as kp

    ease = EasePrior(nn.Identity(), toy_ctx(_pool(), N_ITEMS), L2)
    monkeypatch.setattr(kp, "MAX_BYTES", 5 * 10 * 10)  # 12 covered items > 10
    with pytest.raises(ConfigError, match="cf_knn=true keeps the item x item co-occurrences dense: 12 covered") as e:
        KnnPrior(ease, "fism_ease")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("knn", [False, True])
def test_leave_one_out_terms_for_the_targets_only_leave_the_loss_unchanged(monkeypatch, knn: bool) -> None:
    """The catalogue loss forms leave-one-out terms for the support targets only; forming them for every
    support entry (non-targets weigh 0) gives the same loss."""
    import metarec.learners.fism as fism_module

    ds, learner = _cf_learner(cf_knn=knn, cf_fold="rated", rank_loss="recall")
    batch = tiny_batch(ds)
    with torch.no_grad():
        learner.cf.level_weight.copy_(torch.tensor([-0.5, 0.25, 0.5, 1.0, 2.0], dtype=learner.cf.level_weight.dtype))
    compact = learner.full_softmax(batch)
    every = lambda mask: torch.arange(mask.shape[1]).expand(mask.shape[0], -1)  # noqa: E731
    monkeypatch.setattr(fism_module, "entries_of", every)
    torch.testing.assert_close(learner.full_softmax(batch), compact)


def test_smooth_recall_loss_matches_a_hand_computation() -> None:
    ds, learner = _cf_learner(rank_loss="recall", rank_k=2, rank_temperature=0.5)
    allowed = torch.tensor([[[3.0, 1.0, float("-inf"), 0.0, 2.0]]], dtype=torch.float64)
    picked = torch.tensor([[1.0]], dtype=torch.float64)  # the target is the item with logit 1.0
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    above = sig((3 - 1) / 0.5) + sig(0.0) + 0.0 + sig((0 - 1) / 0.5) + sig((2 - 1) / 0.5) - 0.5
    want = 1.0 - sig(2 - 0.5 - above)
    assert learner.smooth_miss(allowed, picked).item() == pytest.approx(want, rel=1e-12)
    for bad, match in (({"rank_k": 0}, "rank_k must be an integer >= 1"),
                       ({"rank_temperature": 0.0}, "rank_temperature must be"),
                       ({"cf_fold": "all"}, "cf_fold must be one of relevant, rated"),
                       ({"rank_loss": "inbatch"}, "needs learner.rank_loss=full or recall")):
        with pytest.raises(ConfigError, match=match):
            _cf_learner(**bad)
