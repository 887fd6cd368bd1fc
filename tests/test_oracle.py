"""The Bayes-optimal oracle of synthetic data: the truth it reads, and its predictions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from metarec.data.oracle import oracle_mae, posterior_predict, prior_predict
from metarec.data.sources.synthetic import SyntheticConfig, synthetic, synthetic_truth
from metarec.data.splits import Task


def _cfg(**kw) -> SyntheticConfig:
    return SyntheticConfig(n_users=120, n_items=80, min_ratings=15, max_ratings=30, **kw)


@pytest.mark.parametrize("rounded", [False, True])
def test_truth_regenerates_the_ratings(rounded: bool) -> None:
    """Without noise every rating is T(offset + b_i + <p_u, q_i>) with the truth's parameters."""
    cfg = _cfg(noise=0.0, round_ratings=rounded)
    ds, truth = synthetic(cfg), synthetic_truth(cfg)
    r = ds.ratings
    u, i = r.user.to_numpy(), r.item.to_numpy()
    latent = truth.offset + truth.item_bias[i] + (truth.preferences[u] * truth.item_vectors[i]).sum(1)
    want = np.clip(latent, 1, 5)
    np.testing.assert_allclose(r.rating.to_numpy(), np.round(want) if rounded else want, atol=1e-9)
    if rounded:
        assert set(np.unique(r.rating)) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_posterior_matches_the_conjugate_formula_without_clipping() -> None:
    """With a rating range too wide to clip, the exact posterior is the Gaussian conjugate one and the
    predictive median is its mean: importance sampling must agree with the closed form."""
    truth = dataclasses.replace(synthetic_truth(_cfg(noise=0.5)), rating_range=(-1e6, 1e6))
    rng = np.random.default_rng(1)
    support, query = rng.choice(80, 6, replace=False), np.arange(10)
    p = truth.preferences[3]
    y = truth.offset + truth.item_bias[support] + truth.item_vectors[support] @ p + rng.normal(0, 0.5, 6)
    got = posterior_predict(truth, 3, support, y, query, samples=20000)
    q, s2, e2 = truth.item_vectors[support], truth.user_spread**2, truth.noise**2
    a = np.eye(q.shape[1]) / s2 + q.T @ q / e2
    mean = np.linalg.solve(a, truth.prior_mean[3] / s2 + q.T @ (y - truth.offset - truth.item_bias[support]) / e2)
    want = truth.offset + truth.item_bias[query] + truth.item_vectors[query] @ mean
    np.testing.assert_allclose(got, want, atol=0.03)
    # no support: the posterior is the prior
    np.testing.assert_allclose(prior_predict(truth, 3, query),
                               truth.offset + truth.item_bias[query] + truth.item_vectors[query] @ truth.prior_mean[3])


def _rounded_tasks():
    """Whole-star synthetic data, its truth, and one task per user: the first 8 ratings support, the rest query."""
    cfg = _cfg(round_ratings=True)
    ds, truth = synthetic(cfg), synthetic_truth(cfg)
    tasks = []
    for u, g in ds.ratings.groupby("user"):
        items, ratings = g.item.to_numpy(), g.rating.to_numpy()
        tasks.append(Task(int(u), items[:8], ratings[:8], items[8:], ratings[8:]))
    return ds, truth, tasks


def test_posterior_oracle_beats_the_prior_oracle_and_a_constant() -> None:
    ds, truth, tasks = _rounded_tasks()
    r = ds.ratings
    post, prior = oracle_mae(truth, ds, tasks), oracle_mae(truth, ds, tasks, posterior=False)
    const = np.mean([np.abs(t.query_ratings - np.median(r.rating)).mean() for t in tasks])
    assert post < prior < const
    # more support, better oracle
    short = [dataclasses.replace(t, support_items=t.support_items[:2], support_ratings=t.support_ratings[:2]) for t in tasks]
    assert post < oracle_mae(truth, ds, short) < prior


def test_real_valued_oracle_is_the_unrounded_median_and_loses_on_whole_stars() -> None:
    """``whole_stars=False`` on rounded data: the same posterior median before rounding (rounding it gives the
    whole-star oracle), real-valued, and a worse absolute error than the whole-star prediction."""
    ds, truth, tasks = _rounded_tasks()
    t = tasks[0]
    stars = posterior_predict(truth, t.user, t.support_items, t.support_ratings, t.query_items)
    real = posterior_predict(truth, t.user, t.support_items, t.support_ratings, t.query_items, whole_stars=False)
    np.testing.assert_array_equal(np.round(real), stars)
    assert not np.allclose(real, np.round(real)) and ((real >= 1) & (real <= 5)).all()
    assert oracle_mae(truth, ds, tasks) < oracle_mae(truth, ds, tasks, whole_stars=False)
