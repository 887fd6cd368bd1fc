"""A data-limited reference for ``oracle_gap.py``: the posterior oracle's fold-in with item vectors and biases
*estimated* from the training users' ratings instead of known.

The generating model family is fitted exactly as specified (``latent_dim`` factors with the first item
coordinate fixed at 1, item biases, one offset; the true feature prior ``N(prior_mean_u, user_spread^2 I)``
on each training user and the true noise plus the rounding variance) by EM (users' Gaussian
posteriors, item MAP). Each evaluation user's vector is then the conjugate posterior mean given the support with those
estimates, and the prediction is rounded to whole stars (the clipped posterior-mean rating, rounded). It
knows everything the oracle knows except the item parameters, which it has to learn from the same
training users a learner sees. It is a reference, not a bound: a point (MAP) estimate of the items, not a
full posterior over them, no use of the item features, and a Gaussian fold-in (rounding as noise,
clipping ignored: ``fitted_mae`` with the true items measures what that alone costs).

``interval_mae``: the fold-in with the exact likelihood of a whole star instead (the rating's cell of the
latent rating, open at 1 and 5: censored probit), the user vector its MAP, the prediction the clipped
rating at it, rounded -- what ``ridge``'s ``likelihood: interval`` fold-in computes, here with given items.
"""

from __future__ import annotations

import numpy as np

from metarec.data.oracle import ROUNDING_VARIANCE
from metarec.data.sources.synthetic import SyntheticTruth
from metarec.data.splits import Task

ITEM_PRIOR_VAR = 0.25  # prior variance of the free item coordinates (regulariser)
BIAS_PRIOR_VAR = 0.09  # prior variance of the item biases
ITERATIONS = 40


def fit_items(truth: SyntheticTruth, users: np.ndarray, items: np.ndarray, ratings: np.ndarray,
              n_items: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """``(item vectors [n_items, d], item biases [n_items], offset)`` fitted to training ratings (``users``
    and ``items`` index ``truth``) by ALS under the true user prior and noise."""
    d = truth.item_vectors.shape[1]
    s2, e2 = truth.user_spread ** 2, truth.noise ** 2 + (ROUNDING_VARIANCE if truth.rounded else 0.0)
    rng = np.random.default_rng(seed)
    q = np.c_[np.ones(n_items), 0.3 * rng.standard_normal((n_items, d - 1))]
    bias, offset = np.zeros(n_items), float(ratings.mean())
    uniq, inv = np.unique(users, return_inverse=True)
    mu = truth.prior_mean[uniq]
    reg = e2 * np.diag([1 / ITEM_PRIOR_VAR] * (d - 1) + [1 / BIAS_PRIOR_VAR])
    for _ in range(ITERATIONS):
        # users: conjugate posterior mean given their ratings
        qi, res = q[items], ratings - offset - bias[items]
        a = np.zeros((len(uniq), d, d))
        np.add.at(a, inv, qi[:, :, None] * qi[:, None, :])
        b = np.zeros((len(uniq), d))
        np.add.at(b, inv, qi * res[:, None])
        cov = np.linalg.inv(np.eye(d) / s2 + a / e2)
        p = (cov @ (mu / s2 + b / e2)[..., None])[..., 0]
        # items: (free coordinates, bias) given the users' posteriors (expected sufficient statistics: EM, so
        # the users' uncertainty does not shrink the item vectors); the first coordinate stays 1
        pu, cu = p[inv], cov[inv]
        f = np.c_[pu[:, 1:], np.ones(len(ratings))]
        ff = f[:, :, None] * f[:, None, :]
        ff[:, :-1, :-1] += cu[:, 1:, 1:]
        a = np.zeros((n_items, d, d))
        np.add.at(a, items, ff)
        fy = f * (ratings - offset - pu[:, 0])[:, None]
        fy[:, :-1] -= cu[:, 1:, 0]
        b = np.zeros((n_items, d))
        np.add.at(b, items, fy)
        sol = np.linalg.solve(a + reg, b[..., None])[..., 0]
        q[:, 1:], bias = sol[:, :-1], sol[:, -1]
        offset = float((ratings - bias[items] - (q[items] * pu).sum(1)).mean())
    return q, bias, offset


def fitted_mae(truth: SyntheticTruth, fit: tuple[np.ndarray, np.ndarray, float], ds, tasks: list[Task]) -> float:
    """Query MAE (per-user average, whole stars) of the conjugate fold-in with the fitted items."""
    q, bias, offset = fit
    d = q.shape[1]
    s2, e2 = truth.user_spread ** 2, truth.noise ** 2 + (ROUNDING_VARIANCE if truth.rounded else 0.0)

    def user_vector(mu, x, r, base):
        return np.linalg.solve(np.eye(d) / s2 + x.T @ x / e2, mu / s2 + x.T @ (r - base) / e2)

    return _fold_in_mae(truth, fit, ds, tasks, user_vector)


def _fold_in_mae(truth: SyntheticTruth, fit: tuple[np.ndarray, np.ndarray, float], ds, tasks: list[Task],
                 user_vector) -> float:
    """Query MAE (per-user average) of the clipped (and, on whole stars, rounded) prediction at
    ``user_vector(prior mean, support item vectors, support ratings, support offsets + biases)``."""
    q, bias, offset = fit
    lo, hi = truth.rating_range
    per_user = []
    for t in tasks:
        user = int(ds.user_ids[t.user]) - 1
        si, qi = ds.item_ids[t.support_items] - 1, ds.item_ids[t.query_items] - 1
        p = user_vector(truth.prior_mean[user], q[si], t.support_ratings, offset + bias[si])
        pred = np.clip(offset + bias[qi] + q[qi] @ p, lo, hi)
        pred = np.round(pred) if truth.rounded else pred
        per_user.append(np.abs(pred - t.query_ratings).mean())
    return float(np.mean(per_user)) if per_user else float("nan")


def training_ratings(ds, split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(users, items, ratings)`` of the training users, indexing ``truth`` (synthetic ids are 1..n)."""
    users, items, ratings = [], [], []
    for u, (it, r) in split.train_pool.items():
        users.append(np.full(len(it), int(ds.user_ids[u]) - 1))
        items.append(ds.item_ids[np.asarray(it)] - 1)
        ratings.append(np.asarray(r, np.float64))
    return np.concatenate(users), np.concatenate(items), np.concatenate(ratings)


def interval_mae(truth: SyntheticTruth, fit: tuple[np.ndarray, np.ndarray, float], ds, tasks: list[Task]) -> float:
    """Query MAE (per-user average, whole stars) of the MAP fold-in under the interval (censored probit)
    likelihood of whole-star ratings, with items ``fit`` (e.g. the true ones) and the true prior and noise."""
    from scipy.optimize import minimize

    from metarec.data.oracle import _log_interval

    s2, sigma = truth.user_spread ** 2, max(truth.noise, 1e-3)
    lo_r, hi_r = truth.rating_range

    def user_vector(mu, x, r, base):
        low = np.where(r <= lo_r, -np.inf, r - 0.5)
        high = np.where(r >= hi_r, np.inf, r + 0.5)

        def objective(p: np.ndarray) -> float:
            m = base + x @ p
            return 0.5 * ((p - mu) ** 2).sum() / s2 - _log_interval((low - m) / sigma, (high - m) / sigma).sum()

        return minimize(objective, mu, method="L-BFGS-B").x

    return _fold_in_mae(truth, fit, ds, tasks, user_vector)
