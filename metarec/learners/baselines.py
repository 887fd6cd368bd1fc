"""Non-meta baselines behind the meta-learner interface, so every table compares like with like.

- ``global``: the base model trained on all ratings of the training users, no per-user adaptation.
- ``item_mean``: each item's mean training rating; the training mean for items never seen in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from metarec.data.episodes import EpisodeBatch
from metarec.learners.base import LearnerContext, MetaLearner, masked_mse_per_task
from metarec.models.base import BaseRecommender


@dataclass
class GlobalConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0


class GlobalModel(MetaLearner):
    def __init__(self, model: BaseRecommender, ctx: LearnerContext, cfg: GlobalConfig) -> None:
        super().__init__(model, ctx, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def meta_step(self, batch: EpisodeBatch, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        pred = self.model(batch.user, batch.item)  # [T, L]
        if train:  # every training rating is a training example (support and query alike)
            mask = (batch.support_mask | batch.query_mask).to(pred.dtype)
            loss = (((pred - batch.ratings) ** 2) * mask).sum() / mask.sum()
            return loss, pred[:, batch.n_support :]
        q = pred[:, batch.n_support :]
        _, y, m = batch.part("query")
        return masked_mse_per_task(q, y, m).mean(), q


@dataclass
class ItemMeanConfig:
    pass


class ItemMean(MetaLearner):
    needs_training = False

    def __init__(self, model: BaseRecommender, ctx: LearnerContext, cfg: ItemMeanConfig) -> None:
        super().__init__(model, ctx)
        items, ratings = ctx.train_items
        sums = np.bincount(items, weights=ratings, minlength=ctx.n_items)
        counts = np.bincount(items, minlength=ctx.n_items)
        means = np.where(counts > 0, sums / np.maximum(counts, 1), ctx.train_rating_mean)
        self.register_buffer("item_means", torch.as_tensor(means, dtype=torch.float32))

    def meta_step(self, batch: EpisodeBatch, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        _, y, m = batch.part("query")
        q = self.item_means[batch.item_ids[:, batch.n_support :]]
        return masked_mse_per_task(q, y, m).mean(), q

    def configure_optimizers(self):
        return None
