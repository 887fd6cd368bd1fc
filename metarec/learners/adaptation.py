"""Per-task adaptation with learn2learn's clone/adapt vocabulary, over one adaptation scope.

``TaskAdapter`` wraps the adapted part of the base model (see ``BaseRecommender.scope_split``) in a
learn2learn algorithm (``MAML`` or ``MetaSGD``). The non-adapted prefix (body, lower layers) runs once
per meta-batch; each task then clones the wrapper and takes SGD steps on its support loss.
"""

from __future__ import annotations

from typing import Any

import torch

from metarec.data.episodes import EpisodeBatch
from metarec.learners.base import masked_mse_per_task
from metarec.models.base import BaseRecommender, Features


class TaskAdapter:
    def __init__(self, model: BaseRecommender, scope: str, wrapper_cls: Any, inner_lr: float, first_order: bool):
        self.prefix, module = model.scope_split(scope)
        self.wrapper = wrapper_cls(module, lr=inner_lr, first_order=first_order)
        self._is_maml = not hasattr(self.wrapper, "lrs")

    def prefix_features(self, batch: EpisodeBatch, detach: bool) -> torch.Tensor | None:
        """The non-adapted computation for the whole meta-batch (``None`` when everything adapts)."""
        if self.prefix is None:
            return None
        x = self.prefix(batch.user, batch.item)
        return x.detach() if detach else x

    def block(self, batch: EpisodeBatch, x: torch.Tensor | None, t: int, which: str):
        """Inputs of the adapted module, targets and mask for task ``t``'s support or query block."""
        s = batch.n_support
        sl = slice(0, s) if which == "support" else slice(s, None)
        mask = (batch.support_mask if which == "support" else batch.query_mask)[t, sl]
        if x is not None:
            args: tuple = (x[t, sl],)
        else:
            user = Features(batch.user.categorical[t], batch.user.multihot[t])
            item = Features(batch.item.categorical[t, sl], batch.item.multihot[t, sl])
            args = (user, item)
        return args, batch.ratings[t, sl], mask

    def predict(self, learner, args: tuple) -> torch.Tensor:
        out = learner(*args)
        return out.squeeze(-1) if self.prefix is not None else out

    def adapt(self, batch: EpisodeBatch, x: torch.Tensor | None, t: int, steps: int, first_order: bool):
        """A clone of the wrapped module after ``steps`` SGD steps on task ``t``'s support loss."""
        learner = self.wrapper.clone()
        args, y, m = self.block(batch, x, t, "support")
        for _ in range(steps):
            loss = masked_mse_per_task(self.predict(learner, args), y, m)
            if self._is_maml:
                learner.adapt(loss, first_order=first_order, allow_unused=True)
            else:
                learner.adapt(loss, first_order=first_order)
        return learner

    def query_loss(self, learner, batch: EpisodeBatch, x: torch.Tensor | None, t: int):
        """(loss, predictions) of an adapted learner on task ``t``'s query block."""
        args, y, m = self.block(batch, x, t, "query")
        out = self.predict(learner, args)
        return masked_mse_per_task(out, y, m), out

    def run(self, batch: EpisodeBatch, steps: int, first_order: bool, detach: bool):
        """Adapt every task of the batch; mean query loss over tasks and query predictions ``[T, Q]``."""
        x = self.prefix_features(batch, detach)
        losses, preds = [], []
        for t in range(batch.n_tasks):
            learner = self.adapt(batch, x, t, steps, first_order)
            loss, out = self.query_loss(learner, batch, x, t)
            losses.append(loss)
            preds.append(out.detach() if detach else out)
        return torch.stack(losses).mean(), torch.stack(preds)
