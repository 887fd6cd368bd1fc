"""The ``bias`` baseline (mu + b_i + b_u, the user's bias folded in from the support) against a hand
computation, its option checks, and its refusal of implicit data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_learners import N_ITEMS, ctx, linear_head_model, tiny_batch, tiny_dataset

from metarec.config import compose
from metarec.errors import ConfigError
from metarec.learners import build_learner
from metarec.learners.bias import BiasConfig, fit_item_biases
from metarec.train import fit

# three training users; item 6 is rated by none of them, item 7 by one
POOL = {
    0: ([0, 1, 2, 7], [5.0, 4.0, 1.0, 2.0]),
    1: ([0, 1, 3], [4.0, 2.0, 3.0]),
    2: ([1, 2, 3, 4, 5], [3.0, 1.0, 5.0, 4.0, 2.0]),
}


def hand_biases(beta: float, gamma: float, sweeps: int) -> tuple[float, np.ndarray]:
    """The alternating shrunk means written out one rating at a time."""
    ratings = [(u, i, r) for u, (its, rs) in POOL.items() for i, r in zip(its, rs)]
    mu = sum(r for *_, r in ratings) / len(ratings)
    b_u = {u: 0.0 for u in POOL}
    for sweep in range(sweeps + 1):
        b_i = np.zeros(N_ITEMS)
        for i in range(N_ITEMS):
            rows = [(u, r) for u, j, r in ratings if j == i]
            b_i[i] = sum(r - mu - b_u[u] for u, r in rows) / (beta + len(rows)) if rows else 0.0
        if sweep < sweeps:
            for u, (its, rs) in POOL.items():
                b_u[u] = sum(r - mu - b_i[i] for i, r in zip(its, rs)) / (gamma + len(its))
    return mu, b_i


def pool_context(ds):
    c = ctx(ds)
    c.train_pool = {u: (np.asarray(i, np.int64), np.asarray(r, np.float32)) for u, (i, r) in POOL.items()}
    return c


@pytest.mark.parametrize("beta, gamma, sweeps", [(5.0, 3.0, 0), (2.0, 1.0, 1), (0.5, 10.0, 4), (0.0, 0.0, 2)])
def test_item_biases_are_the_alternating_shrunk_means(beta, gamma, sweeps) -> None:
    users = np.concatenate([np.full(len(i), u) for u, (i, _) in POOL.items()])
    items = np.concatenate([i for i, _ in POOL.values()])
    ratings = np.concatenate([r for _, r in POOL.values()])
    mu, b = fit_item_biases(users, np.asarray(items), ratings, N_ITEMS, BiasConfig(beta, gamma, sweeps))
    want_mu, want_b = hand_biases(beta, gamma, sweeps)
    assert mu == pytest.approx(want_mu)
    np.testing.assert_allclose(b, want_b, rtol=0, atol=1e-12)
    assert b[6] == 0.0  # no training rating: no bias


def test_a_user_is_folded_in_as_the_shrunk_mean_of_their_support_residuals() -> None:
    ds = tiny_dataset()
    batch = tiny_batch(ds)
    cfg = BiasConfig(item_shrinkage=2.0, user_shrinkage=1.5, sweeps=2)
    learner = build_learner("bias", linear_head_model(ds), pool_context(ds), cfg)
    mu, b_i = hand_biases(2.0, 1.5, 2)
    _, preds = learner.meta_step(batch, train=False)
    s = batch.n_support
    for t in range(2):
        keep = batch.support_mask[t, :s]
        items = batch.item_ids[t, :s][keep].numpy()
        ratings = batch.ratings[t, :s][keep].numpy()
        b_u = (ratings - mu - b_i[items]).sum() / (1.5 + len(items))
        n = int(batch.query_mask[t].sum())
        query = batch.item_ids[t, s : s + n].numpy()
        np.testing.assert_allclose(preds[t, :n].numpy(), mu + b_i[query] + b_u, rtol=0, atol=1e-5)  # raw outputs
    # padding never counts, whatever it holds
    padded = batch.support()
    padded.ratings = torch.where(padded.mask, padded.ratings, torch.full_like(padded.ratings, float("nan")))
    torch.testing.assert_close(learner.adapt(batch.user, padded), learner.adapt(batch.user, batch.support()))
    # an empty support: no user bias, the item's baseline
    empty = batch.support()
    empty.mask = torch.zeros_like(empty.mask)
    state = learner.adapt(batch.user, empty)
    assert torch.equal(state, torch.zeros(2, 1))
    ids = torch.tensor([[6, 7], [0, 1]])
    got = learner.score(state, ids, None)
    np.testing.assert_allclose(got.numpy(), mu + b_i[ids.numpy()], rtol=0, atol=1e-6)


@pytest.mark.parametrize("option, value", [("item_shrinkage", -1.0), ("user_shrinkage", float("nan")),
                                           ("sweeps", 1.5), ("sweeps", True)])
def test_bad_options_are_refused_in_one_line(option, value) -> None:
    with pytest.raises(ConfigError, match=f"learner.{option}") as e:
        BiasConfig(**{option: value})
    assert "\n" not in str(e.value)


def test_bias_refuses_implicit_data(tmp_path) -> None:
    cfg = compose(["learner=bias", "data.params.n_users=200", "data.negatives.per_positive=1", f"run.root={tmp_path}"])
    with pytest.raises(ConfigError, match="implicit.*learner=popularity"):
        fit(cfg)
