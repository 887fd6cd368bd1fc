"""Reptile (Nichol et al., 2018): theta <- theta + epsilon * mean_tasks(phi_task - theta).

phi_task comes from ``inner_steps`` SGD steps on the task's support, taken with the same clone/adapt
machinery as MAML (first order: no graph through the steps). The outer update is applied by the
configured optimiser to the pseudo-gradient ``theta - mean(phi)``: with ``outer_optimizer: sgd`` and
``lr = epsilon`` this is exactly Reptile's update. Parameters outside the adapted scope get no update.
Evaluation adapts exactly like MAML.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from metarec.data.episodes import EpisodeBatch
from metarec.errors import ConfigError
from metarec.learners.executors import ExecutorSettings, ScalarRate, make_executor
from metarec.learners.base import LearnerContext, MetaLearner
from metarec.learners.gradient import GradientAdaptation
from metarec.learners.maml import check_inner
from metarec.models.base import BaseRecommender


@dataclass
class ReptileConfig:
    inner_lr: float = 0.01
    inner_steps: int = 5
    eval_inner_steps: Optional[int] = None
    scope: str = "all"
    lr: float = 0.1  # epsilon, the outer step size
    outer_optimizer: str = "sgd"  # sgd | adam
    weight_decay: float = 0.0
    executor: str = "vmap"
    chunk_size: Optional[int] = None
    inner_grad_clip: Optional[float] = None  # clip each task's inner gradient to this global L2 norm


class Reptile(GradientAdaptation, MetaLearner):
    def __init__(self, model: BaseRecommender, ctx: LearnerContext, cfg: ReptileConfig) -> None:
        super().__init__(model, ctx, lr=cfg.lr, weight_decay=cfg.weight_decay)
        check_inner(cfg)
        if cfg.outer_optimizer not in ("sgd", "adam"):
            raise ConfigError(f"learner.outer_optimizer must be sgd or adam, got {cfg.outer_optimizer!r}")
        if ctx.loss == "mae":
            raise ConfigError("learner reptile has no query objective (its update is its inner loop's, on the "
                              "squared error of the support), so data.rating_loss=mae would change nothing: "
                              "set data.rating_loss=mse")
        self.cfg = cfg
        self.executor = make_executor(cfg.executor, model, ExecutorSettings(
            cfg.scope, ScalarRate(cfg.inner_lr), True, cfg.inner_grad_clip, ctx.loss, cfg.chunk_size,
        ))
        self.automatic_optimization = False
        self.eval_steps = cfg.inner_steps if cfg.eval_inner_steps is None else cfg.eval_inner_steps

    def training_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The query loss after first-order adaptation (Reptile trains in ``training_step``)."""
        return self.executor.run(batch, self.cfg.inner_steps, first_order=True, detach=True)

    def reptile_direction(self, batch: EpisodeBatch) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``theta - mean_tasks(phi_task)`` for every adapted parameter; and the mean query loss
        after adaptation (for monitoring)."""
        phis, loss = self.executor.adapted_parameters(batch, self.cfg.inner_steps)
        return [p.detach() - phi.mean(0) for p, phi in zip(self.executor.adapted_params(), phis)], loss

    def training_step(self, batch: EpisodeBatch, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        opt.zero_grad()
        direction, loss = self.reptile_direction(batch)
        if self.world_size > 1:  # no backward, so no DDP gradient hook: average the direction here
            direction = [self.trainer.strategy.reduce(d, reduce_op="mean") for d in direction]
        if not self.all_finite(loss, *direction):
            self.nonfinite_step("adapted parameters or query loss")
            return None
        for p, d in zip(self.executor.adapted_params(), direction):
            p.grad = d
        opt.step()
        self.log("train/loss", loss, batch_size=batch.n_tasks, prog_bar=True, on_step=True, on_epoch=True,
                 sync_dist=self.world_size > 1)
        return loss

    def configure_optimizers(self):
        params = list(self.executor.module.parameters())
        if self.cfg.outer_optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
