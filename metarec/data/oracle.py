"""The best possible rating prediction on synthetic data, where the generating model is known.

``data=synthetic`` draws ``rating = T(offset + b_i + <p_u, q_i> + noise)`` with ``T`` = clip to 1-5 (and
round to whole stars with ``round_ratings``), item vectors ``q_i`` and biases ``b_i`` fixed, and each
user's preference ``p_u ~ N(prior_mean(features_u), user_spread^2 I)``. Knowing all of that, the
Bayes-optimal prediction for a user under absolute error is the median of the posterior predictive
distribution of the query rating given the user's support ratings:

- :func:`posterior_predict`: the posterior over ``p_u`` given the support, computed exactly for the
  censored (clipped) and interval (rounded) observations by self-normalised importance sampling from a
  Gaussian proposal (the conjugate posterior with the rounding variance added, widened); the predictive
  median of the latent ``offset + b_i + <p_u, q_i> + noise`` is found by bisection on the mixture CDF, and
  ``T`` is applied to it (a median commutes with a monotone map);
- :func:`prior_predict`: the same with no support (only the user's features): ``T(offset + b_i +
  <prior_mean_u, q_i>)``.

No learner can beat the posterior oracle in expectation; a learner above the prior-only oracle has not
even used the features as well as the truth allows. ``benchmarks/oracle_gap.py`` divides each learner's
MAE by these.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_ndtr, logsumexp, ndtr

from metarec.data.schema import RecDataset
from metarec.data.sources.synthetic import SyntheticTruth
from metarec.data.splits import Task

ROUNDING_VARIANCE = 1.0 / 12.0  # variance of a uniform rounding error on whole stars
MIN_NOISE = 1e-3  # a noiseless model still gets a proper (very narrow) likelihood
BISECTION_STEPS = 40


def _transform(truth: SyntheticTruth, latent: np.ndarray, whole_stars: bool = True) -> np.ndarray:
    lo, hi = truth.rating_range
    out = np.clip(latent, lo, hi)
    return np.round(out) if truth.rounded and whole_stars else out


def _log_interval(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``log(Phi(b) - Phi(a))`` for ``a < b``, stable in both tails."""
    upper = a > 0  # both in the upper tail: use survival functions, Phi(b)-Phi(a) = Phi(-a)-Phi(-b)
    hi = np.where(upper, log_ndtr(-a), log_ndtr(b))
    lo = np.where(upper, log_ndtr(-b), log_ndtr(a))
    return hi + np.log1p(-np.exp(np.minimum(lo - hi, -1e-300)))


def _log_likelihood(truth: SyntheticTruth, mean: np.ndarray, ratings: np.ndarray) -> np.ndarray:
    """``log p(rating | latent mean)`` summed over the support, for ``mean`` ``[N, S]``; returns ``[N]``."""
    sigma = max(truth.noise, MIN_NOISE)
    lo_r, hi_r = truth.rating_range
    r = ratings[None, :]
    if truth.rounded:
        lo = np.where(r <= lo_r, -np.inf, r - 0.5)
        hi = np.where(r >= hi_r, np.inf, r + 0.5)
        return _log_interval((lo - mean) / sigma, (hi - mean) / sigma).sum(axis=1)
    z = (r - mean) / sigma
    dens = -0.5 * z**2 - np.log(sigma * np.sqrt(2 * np.pi))
    out = np.where(r <= lo_r, log_ndtr(z), np.where(r >= hi_r, log_ndtr(-z), dens))
    return out.sum(axis=1)


def _posterior_samples(
    truth: SyntheticTruth, user: int, items: np.ndarray, ratings: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Samples of ``p_u`` and their normalised weights under the exact posterior given the support."""
    mu0 = truth.prior_mean[user]
    d = mu0.shape[0]
    s2 = max(truth.user_spread, MIN_NOISE) ** 2
    e2 = max(truth.noise, MIN_NOISE) ** 2 + (ROUNDING_VARIANCE if truth.rounded else 0.0)
    q = truth.item_vectors[items]
    base = truth.offset + truth.item_bias[items]
    precision = np.eye(d) / s2 + q.T @ q / e2
    cov = np.linalg.inv(precision)
    mean = cov @ (mu0 / s2 + q.T @ (ratings - base) / e2)
    prop_cov = 2.0 * cov  # wider than the posterior: the weights stay well spread
    chol = np.linalg.cholesky(prop_cov)
    eps = rng.standard_normal((n, d))
    p = mean + eps @ chol.T
    log_prop = -0.5 * (eps**2).sum(axis=1)  # up to a constant (the same for every sample)
    log_prior = -0.5 * ((p - mu0) ** 2).sum(axis=1) / s2
    log_lik = _log_likelihood(truth, base + p @ q.T, ratings) if len(items) else 0.0
    log_w = log_prior + log_lik - log_prop
    return p, np.exp(log_w - logsumexp(log_w))


def _mixture_median(means: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """Median of ``sum_s w_s N(means[s, j], sigma^2)`` per column ``j`` (bisection on the CDF)."""
    lo = means.min(axis=0) - 8 * sigma
    hi = means.max(axis=0) + 8 * sigma
    for _ in range(BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        below = (weights[:, None] * ndtr((mid[None, :] - means) / sigma)).sum(axis=0) < 0.5
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def posterior_predict(
    truth: SyntheticTruth, user: int, support_items: np.ndarray, support_ratings: np.ndarray,
    query_items: np.ndarray, samples: int = 2000, seed: int = 0, whole_stars: bool = True,
) -> np.ndarray:
    """Bayes-optimal (absolute error) predictions of ``user``'s ratings of ``query_items`` given the support.

    ``user`` and items index ``truth`` (generation order). Monte-Carlo error shrinks with ``samples``.
    ``whole_stars=False`` (rounded data): the predictive median of the clipped rating *before* rounding, the
    best a predictor of real-valued ratings can do (a reference for learners that do not predict whole stars)."""
    rng = np.random.default_rng(seed)
    support_items = np.asarray(support_items, dtype=np.int64)
    p, w = _posterior_samples(truth, user, support_items, np.asarray(support_ratings, np.float64), samples, rng)
    q = truth.item_vectors[np.asarray(query_items, dtype=np.int64)]
    means = truth.offset + truth.item_bias[query_items][None, :] + p @ q.T
    return _transform(truth, _mixture_median(means, w, max(truth.noise, MIN_NOISE)), whole_stars)


def prior_predict(truth: SyntheticTruth, user: int, query_items: np.ndarray) -> np.ndarray:
    """The best prediction from the user's features alone (no support): the prior predictive median."""
    q = truth.item_vectors[np.asarray(query_items, dtype=np.int64)]
    return _transform(truth, truth.offset + truth.item_bias[query_items] + q @ truth.prior_mean[user])


def oracle_mae(truth: SyntheticTruth, ds: RecDataset, tasks: list[Task], posterior: bool = True,
               whole_stars: bool = True) -> float:
    """The oracle's query MAE over ``tasks`` (codes of ``ds``), averaged per user like the learners' MAE
    (``whole_stars``: see :func:`posterior_predict`)."""
    per_user = []
    for t in tasks:
        user = int(ds.user_ids[t.user]) - 1  # synthetic ids are 1..n in generation order
        support = ds.item_ids[t.support_items] - 1
        query = ds.item_ids[t.query_items] - 1
        if posterior:
            pred = posterior_predict(truth, user, support, t.support_ratings, query, seed=int(t.user),
                                     whole_stars=whole_stars)
        else:
            pred = prior_predict(truth, user, query)
        per_user.append(np.abs(pred - t.query_ratings).mean())
    return float(np.mean(per_user)) if per_user else float("nan")
