"""``adapt``/``score`` for learners whose adaptation is gradient steps on the support, run by their
executor (MAML and its presets, Meta-SGD, Reptile, ``finetune``): the state is each task's adapted
parameters of the executor's scope, first order (evaluation and serving keep no graph)."""

from __future__ import annotations

import torch

from metarec.data.episodes import Support
from metarec.learners.executors import Executor
from metarec.data.features import Features


class GradientAdaptation:
    """Mixin for a ``MetaLearner`` with an ``executor`` and ``eval_steps`` (inner steps at evaluation)."""

    executor: Executor
    eval_steps: int

    def adapt(self, user: Features, support: Support) -> tuple[Features, dict[str, torch.Tensor]]:
        return user, self.executor.adapt(user, support, self.eval_steps)

    def score(self, state: tuple[Features, dict[str, torch.Tensor]], item_ids: torch.Tensor,
              items: Features) -> torch.Tensor:
        user, params = state
        return self.executor.score(params, user, items)
