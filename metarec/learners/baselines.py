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

from metarec.data.episodes import EpisodeBatch, Support
from metarec.errors import ConfigError
from metarec.learners.executors import ExecutorSettings, ScalarRate, make_executor
from metarec.learners.base import ELEMENTWISE, LearnerContext, MetaLearner
from metarec.learners.gradient import GradientAdaptation
from metarec.data.features import Features
from metarec.models.base import SCOPES, BaseRecommender


@dataclass
class GlobalConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0


class GlobalModel(MetaLearner):
    def __init__(self, model: BaseRecommender, ctx: LearnerContext, cfg: GlobalConfig) -> None:
        super().__init__(model, ctx, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def training_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        pred = self.model(batch.user, batch.item)  # [T, L]
        # every training rating is a training example (support and query alike)
        every = batch.support_mask | batch.query_mask
        if self.ctx.loss not in ELEMENTWISE:  # a listwise loss: over each task's whole episode
            return self.loss_fn(pred, batch.ratings, every).mean(), pred[:, batch.n_support :]
        mask = every.to(pred.dtype)
        loss = (ELEMENTWISE[self.ctx.loss](pred, batch.ratings) * mask).sum() / mask.sum()
        return loss, pred[:, batch.n_support :]


@dataclass
class ItemMeanConfig:
    pass


class ItemMean(MetaLearner):
    needs_training = False
    serves_implicit = False  # its means say nothing when every training item is a positive

    def __init__(self, model: BaseRecommender, ctx: LearnerContext, cfg: ItemMeanConfig) -> None:
        super().__init__(model, ctx)
        if ctx.binary_labels and not self.serves_implicit:
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

    def adapt(self, user: Features, support: Support) -> None:
        return None  # the same outputs whoever the user

    def score(self, state: None, item_ids: torch.Tensor, items: Features) -> torch.Tensor:
        return self.item_outputs()[item_ids]

    def configure_optimizers(self):
        return None


@dataclass
class FineTuneConfig(GlobalConfig):
    finetune_lr: float = 0.01
    finetune_steps: int = 5
    scope: str = "all"
    executor: str = "vmap"


class FineTune(GradientAdaptation, GlobalModel):
    def __init__(self, model: BaseRecommender, ctx: LearnerContext, cfg: FineTuneConfig) -> None:
        super().__init__(model, ctx, cfg)
        if cfg.scope not in SCOPES or cfg.finetune_steps < 0 or cfg.finetune_lr < 0:
            raise ConfigError(
                f"learner: scope must be one of {', '.join(SCOPES)} and finetune_steps/finetune_lr >= 0"
            )
        self.cfg = cfg
        self.executor = make_executor(
            cfg.executor, model, ExecutorSettings(cfg.scope, ScalarRate(cfg.finetune_lr), True, loss=ctx.loss)
        )
        self.eval_steps = cfg.finetune_steps


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
        return torch.logit(mean.clamp(1e-4, 1 - 1e-4)) if self.ctx.binary_labels else mean

    def adapt(self, user: Features, support: Support) -> torch.Tensor:
        """Each task's support mean ``[T, 1]`` (the training mean for an empty support)."""
        ys, ms = support.ratings, support.mask
        n = ms.sum(-1, keepdim=True)
        return torch.where(n > 0, (ys * ms).sum(-1, keepdim=True) / n.clamp_min(1), self.ctx.train_rating_mean)

    def score(self, state: torch.Tensor, item_ids: torch.Tensor, items: Features) -> torch.Tensor:
        return self.output(state).expand(item_ids.shape).to(torch.float32)

    def configure_optimizers(self):
        return None
