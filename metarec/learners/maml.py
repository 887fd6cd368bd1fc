"""MAML with learn2learn's ``MAML`` clone/adapt. Presets (YAML only): FOMAML (``first_order``),
ANIL (``scope: output``), MeLU-1/-5 (``scope: head`` with MeLU's learning rates).

Under ``head``/``output`` the non-adapted part is computed once per meta-batch and only the adapted
layers are cloned per task; meta-gradients still reach the non-adapted part through the adapted
layers (second order unless ``first_order``). Validation/test adapt first-order: the adapted weights
are the same, and no second-order graph is kept.
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
from metarec.models.base import SCOPES, BaseRecommender


@dataclass
class MAMLConfig:
    inner_lr: float = 0.01
    inner_steps: int = 1
    eval_inner_steps: Optional[int] = None  # default: inner_steps
    first_order: bool = False
    scope: str = "all"
    lr: float = 1e-3
    weight_decay: float = 0.0
    executor: str = "vmap"  # vmap | learn2learn (the reference; same numbers, slower)
    chunk_size: Optional[int] = None  # vmap: tasks per vectorised chunk (bounds memory)
    inner_grad_clip: Optional[float] = None  # clip each task's inner gradient to this global L2 norm


def check_inner(cfg) -> None:
    if cfg.scope not in SCOPES:
        raise ConfigError(f"learner.scope must be one of {', '.join(SCOPES)}, got {cfg.scope!r}")
    if cfg.inner_steps < 0 or (cfg.eval_inner_steps is not None and cfg.eval_inner_steps < 0):
        raise ConfigError("learner.inner_steps and learner.eval_inner_steps must be >= 0")
    if cfg.inner_lr < 0:
        raise ConfigError(f"learner.inner_lr must be >= 0, got {cfg.inner_lr}")


class MAML(GradientAdaptation, MetaLearner):
    rule = ScalarRate  # the inner update rule (Meta-SGD: learned rates)

    def __init__(self, model: BaseRecommender, ctx: LearnerContext, cfg: MAMLConfig) -> None:
        super().__init__(model, ctx, lr=cfg.lr, weight_decay=cfg.weight_decay)
        check_inner(cfg)
        self.cfg = cfg
        self.executor = make_executor(cfg.executor, model, ExecutorSettings(
            cfg.scope, self.rule(cfg.inner_lr), cfg.first_order, cfg.inner_grad_clip, ctx.loss, cfg.chunk_size,
        ))
        self.maml = self.executor.wrapper  # registered so its own parameters (e.g. MetaSGD lrs) train
        self.eval_steps = self.steps(False)

    def steps(self, train: bool) -> int:
        if train or self.cfg.eval_inner_steps is None:
            return self.cfg.inner_steps
        return self.cfg.eval_inner_steps

    def training_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.executor.run(batch, self.steps(True), self.cfg.first_order, detach=False)
