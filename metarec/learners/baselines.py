"""Non-meta baselines behind the meta-learner interface, so every table compares like with like.

- ``global``: the base model trained on all ratings of the training users, no per-user adaptation.
- ``finetune``: the ``global`` model, then plain SGD on each user's support at evaluation time — no
  meta-training: the fair "is meta-learning worth it?" baseline.
- ``item_mean``: each item's mean training rating; the training mean for items never seen in training.
- ``user_mean``: the mean of the user's support ratings (the training mean if the support is empty).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from metarec._l2l import l2l
from metarec.data.episodes import EpisodeBatch
from metarec.errors import ConfigError
from metarec.learners.executors import make_executor, score_with
from metarec.learners.base import ELEMENTWISE, LearnerContext, MetaLearner
from metarec.models.base import SCOPES, BaseRecommender


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
            loss = (ELEMENTWISE[self.ctx.loss](pred, batch.ratings) * mask).sum() / mask.sum()
            return loss, pred[:, batch.n_support :]
        q = pred[:, batch.n_support :]
        _, y, m = batch.part("query")
        return self.loss_fn(q, y, m).mean(), q


@dataclass
class ItemMeanConfig:
    pass


class ItemMean(MetaLearner):
    needs_training = False
    serves_implicit = False  # its means say nothing when every training item is a positive

    def __init__(self, model: BaseRecommender, ctx: LearnerContext, cfg: ItemMeanConfig) -> None:
        super().__init__(model, ctx)
        if ctx.loss == "bce" and not self.serves_implicit:
            raise ConfigError(
                "learner item_mean predicts ratings, but data.negatives makes the data implicit (every training "
                "item is a positive); use learner=popularity, or set data.negatives.per_positive=0"
            )
        items, ratings = ctx.train_items
        sums = np.bincount(items, weights=ratings, minlength=ctx.n_items)
        counts = np.bincount(items, minlength=ctx.n_items)
        means = np.where(counts > 0, sums / np.maximum(counts, 1), ctx.train_rating_mean)
        self.register_buffer("item_means", torch.as_tensor(means, dtype=torch.float32))

    def item_outputs(self) -> torch.Tensor:
        """What the learner outputs for each item ``[I]``, whoever the user (also what serving shows)."""
        return self.item_means

    def meta_step(self, batch: EpisodeBatch, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        _, y, m = batch.part("query")
        q = self.item_outputs()[batch.item_ids[:, batch.n_support :]]
        return self.loss_fn(q, y, m).mean(), q

    def score_candidates(self, batch: EpisodeBatch, items) -> torch.Tensor:
        return self.item_means.unsqueeze(0).expand(batch.n_tasks, -1)

    def configure_optimizers(self):
        return None


@dataclass
class FineTuneConfig(GlobalConfig):
    finetune_lr: float = 0.01
    finetune_steps: int = 5
    scope: str = "all"
    executor: str = "vmap"


class FineTune(GlobalModel):
    def __init__(self, model: BaseRecommender, ctx: LearnerContext, cfg: FineTuneConfig) -> None:
        super().__init__(model, ctx, cfg)
        if cfg.scope not in SCOPES or cfg.finetune_steps < 0 or cfg.finetune_lr < 0:
            raise ConfigError(
                f"learner: scope must be one of {', '.join(SCOPES)} and finetune_steps/finetune_lr >= 0"
            )
        self.cfg = cfg
        self.executor = make_executor(
            cfg.executor, model, cfg.scope, l2l.algorithms.MAML, cfg.finetune_lr, True, loss=ctx.loss
        )

    def meta_step(self, batch: EpisodeBatch, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if train:
            return super().meta_step(batch, train=True)
        return self.executor.run(batch, self.cfg.finetune_steps, first_order=True, detach=True)

    def score_candidates(self, batch: EpisodeBatch, items) -> torch.Tensor:
        return score_with(self.executor, batch, self.cfg.finetune_steps, items)


@dataclass
class UserMeanConfig:
    pass


class UserMean(MetaLearner):
    needs_training = False
    ranks_items = False  # one score for every item: no full-ranking metrics (ties would rank by item id)

    def __init__(self, model: BaseRecommender, ctx: LearnerContext, cfg: UserMeanConfig) -> None:
        super().__init__(model, ctx)

    def output(self, mean: torch.Tensor) -> torch.Tensor:
        """The support mean as the learner's output: as is, or under ``bce`` (the share of positives)
        as a logit."""
        return torch.logit(mean.clamp(1e-4, 1 - 1e-4)) if self.ctx.loss == "bce" else mean

    def meta_step(self, batch: EpisodeBatch, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        _, ys, ms = batch.part("support")
        _, y, m = batch.part("query")
        n = ms.sum(-1, keepdim=True)
        mean = torch.where(n > 0, (ys * ms).sum(-1, keepdim=True) / n.clamp_min(1), self.ctx.train_rating_mean)
        q = self.output(mean).expand_as(y).to(y.dtype)
        return self.loss_fn(q, y, m).mean(), q

    def configure_optimizers(self):
        return None
