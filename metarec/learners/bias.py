"""``bias``: the baseline predictor of rating prediction (Koren, "Factor in the neighbors", TKDD 2010,
section 2.1) with a new user folded in from the support set. Not trained by Lightning, no gradient step.

    r_hat(u, i) = mu + b_i + b_u

``mu`` is the training users' mean rating. The item biases come from the training users' ratings by
``sweeps`` rounds of alternating shrunk means (the regularised least-squares fit, one coordinate block at
a time), starting from ``b_u = 0``:

    b_i = sum over training users u who rated i of (r_ui - mu - b_u) / (item_shrinkage + n_i)
    b_u = sum over the items i that training user u rated of (r_ui - mu - b_i) / (user_shrinkage + n_u)

(``sweeps=0``: item biases are shrunk item means). A user scored by the learner (new or not) gets the
same shrunk mean of their **support**: ``b_u = sum_s (r_s - mu - b_s) / (user_shrinkage + |support|)``,
0 for an empty support. Items without training ratings (new items) have ``b_i = 0``.

The two shrinkages are ``metarec tune``'s search space (``search/bias.yaml``), chosen on the validation
users like every other learner's settings. This is the strongest *simple* rating predictor a new user can
get from a few ratings, and the one a meta-learner's MAE must beat to mean anything. Explicit ratings only
(on implicit data every training item is a positive: use ``popularity``). Items rank by ``b_i``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from metarec.data.episodes import Support
from metarec.data.features import Features
from metarec.errors import ConfigError
from metarec.learners.base import LearnerContext, MetaLearner
from metarec.models.base import BaseRecommender


def _check(name: str, value, integer: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer) if integer else (int, float))
    if not (ok and np.isfinite(value) and value >= 0):
        kind = "an integer" if integer else "a finite number"
        raise ConfigError(f"learner.{name} must be {kind} >= 0, got {value!r}")


@dataclass
class BiasConfig:
    item_shrinkage: float = 5.0  # pseudo-ratings at the mean added to each item's bias estimate
    user_shrinkage: float = 3.0  # the same for each user's bias (training users and the support)
    sweeps: int = 3  # alternating rounds fitting item and training-user biases (0: shrunk item means)

    def __post_init__(self) -> None:
        _check("item_shrinkage", self.item_shrinkage)
        _check("user_shrinkage", self.user_shrinkage)
        _check("sweeps", self.sweeps, integer=True)


def fit_item_biases(users: np.ndarray, items: np.ndarray, ratings: np.ndarray, n_items: int,
                    cfg: BiasConfig) -> tuple[float, np.ndarray]:
    """``(mu, b)``: the training mean and every item's bias ``[n_items]`` (0 without training ratings)
    after ``cfg.sweeps`` alternating rounds (float64)."""
    ratings = np.asarray(ratings, dtype=np.float64)
    if not len(ratings):
        return 0.0, np.zeros(n_items)
    mu = float(ratings.mean())
    n_i = np.bincount(items, minlength=n_items)
    n_u = np.bincount(users)
    b_u = np.zeros(len(n_u))
    for sweep in range(cfg.sweeps + 1):
        residual = np.bincount(items, weights=ratings - mu - b_u[users], minlength=n_items)
        b_i = residual / np.maximum(cfg.item_shrinkage + n_i, 1e-12)  # 0 for items without training ratings
        if sweep < cfg.sweeps:
            residual = np.bincount(users, weights=ratings - mu - b_i[items], minlength=len(n_u))
            b_u = residual / np.maximum(cfg.user_shrinkage + n_u, 1e-12)
    return mu, b_i


class Bias(MetaLearner):
    needs_training = False

    def __init__(self, model: BaseRecommender, ctx: LearnerContext, cfg: BiasConfig) -> None:
        super().__init__(model, ctx)
        if ctx.binary_labels or ctx.interactions_only:
            raise ConfigError(
                f"learner {ctx.label} predicts ratings, but the data are implicit (every training item is a "
                "positive); use learner=popularity, itemknn or ease"
            )
        if ctx.train_pool is None:
            raise ConfigError(f"learner {ctx.label} needs the training users' ratings (LearnerContext.train_pool)")
        self.cfg = cfg
        pool = sorted(ctx.train_pool.items())
        users = np.concatenate([np.full(len(its), row) for row, (_, (its, _)) in enumerate(pool)] or [np.zeros(0)])
        items = np.concatenate([np.asarray(its) for _, (its, _) in pool] or [np.zeros(0)])
        ratings = np.concatenate([np.asarray(rs) for _, (_, rs) in pool] or [np.zeros(0)])
        mu, b_i = fit_item_biases(users.astype(np.int64), items.astype(np.int64), ratings, int(ctx.n_items), cfg)
        self.mu = mu
        self.register_buffer("item_bias", torch.as_tensor(b_i, dtype=torch.float32))

    def adapt(self, user: Features, support: Support) -> torch.Tensor:
        """Each task's user bias ``[T, 1]``: the shrunk mean of its support residuals."""
        residual = support.ratings.to(torch.float32) - self.mu - self.item_bias[support.item_ids]
        total = torch.where(support.mask, residual, 0.0).sum(-1, keepdim=True)  # padding never counts
        count = support.mask.sum(-1, keepdim=True).to(torch.float32)
        return total / (count + self.cfg.user_shrinkage).clamp_min(1e-12)

    def score(self, state: torch.Tensor, item_ids: torch.Tensor, items: Features) -> torch.Tensor:
        return self.mu + self.item_bias[item_ids] + state

    def configure_optimizers(self):
        return None


__all__ = ["Bias", "BiasConfig", "fit_item_biases"]
