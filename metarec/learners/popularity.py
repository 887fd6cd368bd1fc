"""``popularity``: ranks every item by its number of training interactions, the same list for every
user (the standard non-personalised ranking baseline). Not trained, no adaptation.

Predictions for the rating metrics: with explicit ratings, the item's mean training rating (as
``item_mean``); with implicit feedback (``data.negatives``), the logit of ``count / max count``. Items
never seen in training (every new item) score lowest, ties broken by item order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from metarec.learners.base import LearnerContext
from metarec.learners.baselines import ItemMean
from metarec.data.features import Features
from metarec.models.base import BaseRecommender


@dataclass
class PopularityConfig:
    pass


class Popularity(ItemMean):
    serves_implicit = True

    def __init__(self, model: BaseRecommender, ctx: LearnerContext, cfg: PopularityConfig) -> None:
        super().__init__(model, ctx, cfg)
        counts = np.bincount(ctx.train_items[0], minlength=ctx.n_items).astype(np.float64)
        self.register_buffer("item_counts", torch.as_tensor(counts, dtype=torch.float32))
        share = torch.as_tensor(counts / max(counts.max(), 1.0), dtype=torch.float32)
        self.register_buffer("item_logits", torch.logit(share.clamp(1e-4, 1 - 1e-4)))

    def item_outputs(self) -> torch.Tensor:
        return self.item_logits if self.ctx.binary_labels else self.item_means

    def rank_score(self, state: None, item_ids: torch.Tensor, items: Features) -> torch.Tensor:
        """Items are ranked by their training interactions (the rating outputs are item means)."""
        return self.item_counts[item_ids]
