"""MAML (and first-order MAML) with learn2learn's clone/adapt, inside the shared Lightning step.

Under the ``head`` scope the non-adapted body (embeddings) is computed once for the whole meta-batch and
only the decision layers are cloned and adapted per task; meta-gradients still reach the body through
the adapted head (second order unless ``first_order``). Under ``all`` the whole model is cloned.
At validation/test time adaptation runs first-order (same adapted weights, no second-order graph kept).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from metarec._l2l import l2l
from metarec.data.episodes import EpisodeBatch
from metarec.errors import ConfigError
from metarec.learners.base import LearnerContext, MetaLearner, masked_mse_per_task
from metarec.models.base import SCOPES, BaseRecommender, Features


@dataclass
class MAMLConfig:
    inner_lr: float = 0.01
    inner_steps: int = 1
    eval_inner_steps: Optional[int] = None  # default: inner_steps
    first_order: bool = False
    scope: str = "head"
    lr: float = 1e-3
    weight_decay: float = 0.0


class MAML(MetaLearner):
    def __init__(self, model: BaseRecommender, ctx: LearnerContext, cfg: MAMLConfig) -> None:
        super().__init__(model, ctx, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.scope not in SCOPES:
            raise ConfigError(f"learner.scope must be one of {', '.join(SCOPES)}, got {cfg.scope!r}")
        if cfg.inner_steps < 0 or (cfg.eval_inner_steps is not None and cfg.eval_inner_steps < 0):
            raise ConfigError("learner.inner_steps and learner.eval_inner_steps must be >= 0")
        self.cfg = cfg
        adapted = model.head if cfg.scope == "head" else model
        self.maml = l2l.algorithms.MAML(adapted, lr=cfg.inner_lr, first_order=cfg.first_order)

    def _task_forward(self, learner, batch: EpisodeBatch, t: int, which: str, h: torch.Tensor | None):
        """Predictions of a cloned learner for task ``t``'s support or query block."""
        s = batch.n_support
        sl = slice(0, s) if which == "support" else slice(s, None)
        mask = (batch.support_mask if which == "support" else batch.query_mask)[t, sl]
        if h is not None:  # head scope: body features already computed
            x = h[t, sl]
            out = learner(x).squeeze(-1)
        else:
            user = Features(batch.user.categorical[t], batch.user.multihot[t])
            item = Features(batch.item.categorical[t, sl], batch.item.multihot[t, sl])
            out = learner(user, item)
        return out, batch.ratings[t, sl], mask

    def meta_step(self, batch: EpisodeBatch, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        steps = self.cfg.inner_steps if train or self.cfg.eval_inner_steps is None else self.cfg.eval_inner_steps
        first_order = self.cfg.first_order or not train
        h = None
        if self.cfg.scope == "head":
            h = self.model.body(batch.user, batch.item)
            if not train:
                h = h.detach()
        losses, preds = [], []
        for t in range(batch.n_tasks):
            learner = self.maml.clone()
            for _ in range(steps):
                out, y, m = self._task_forward(learner, batch, t, "support", h)
                support_loss = masked_mse_per_task(out, y, m)
                learner.adapt(support_loss, first_order=first_order, allow_unused=True)
            out, y, m = self._task_forward(learner, batch, t, "query", h)
            losses.append(masked_mse_per_task(out, y, m))
            preds.append(out if train else out.detach())
        return torch.stack(losses).mean(), torch.stack(preds)
