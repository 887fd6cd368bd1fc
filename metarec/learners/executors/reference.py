"""The reference executor: learn2learn's ``clone()`` + ``adapt()``, one task at a time."""

from __future__ import annotations

import torch

from metarec.data.episodes import EpisodeBatch
from metarec.learners.executors.base import Executor, clip_by_global_norm
from metarec.data.features import Features


class L2LExecutor(Executor):
    """learn2learn clone/adapt, one task at a time."""

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

    def adapt_task(self, batch: EpisodeBatch, x: torch.Tensor | None, t: int, steps: int, first_order: bool):
        """A clone of the wrapped module after ``steps`` SGD steps on task ``t``'s support loss."""
        learner = self.wrapper.clone()
        args, y, m = self.block(batch, x, t, "support")
        for _ in range(steps):
            loss = self.support_loss_fn(self.predict(learner, args), y, m)
            if self.inner_grad_clip is not None or self.partial:
                self._clipped_update(learner, loss, first_order)
            else:
                self.rule.l2l_adapt(learner, loss, first_order)
        return learner

    def _clipped_update(self, learner, loss: torch.Tensor, first_order: bool) -> None:
        """``learner.adapt`` with the task's inner gradient clipped and/or restricted to the adapted
        parameters (learn2learn's own update rules; a ``None`` gradient leaves a parameter as it is)."""
        named = list(learner.module.named_parameters())
        adapted = [p for n, p in named if n in self._adapted]
        found = iter(torch.autograd.grad(
            loss, adapted, create_graph=not first_order, retain_graph=not first_order, allow_unused=True,
        ))
        grads = [next(found) if n in self._adapted else None for n, _ in named]
        grads = clip_by_global_norm(grads, self.inner_grad_clip)
        learner.module = self.rule.l2l_update(learner, grads)

    def query_loss(self, learner, batch: EpisodeBatch, x: torch.Tensor | None, t: int):
        args, y, m = self.block(batch, x, t, "query")
        out = self.predict(learner, args)
        return self.loss_fn(out, y, m), out

    def run(self, batch: EpisodeBatch, steps: int, first_order: bool, detach: bool):
        x = self.prefix_features(batch, detach)
        losses, preds = [], []
        for t in range(batch.n_tasks):
            learner = self.adapt_task(batch, x, t, steps, first_order)
            loss, out = self.query_loss(learner, batch, x, t)
            losses.append(loss)
            preds.append(out.detach() if detach else out)
        return torch.stack(losses).mean(), torch.stack(preds)

    def adapted_parameters(self, batch: EpisodeBatch, steps: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = self.prefix_features(batch, detach=True)
        per_task, losses = [], []
        for t in range(batch.n_tasks):
            learner = self.adapt_task(batch, x, t, steps, first_order=True)
            with torch.no_grad():
                losses.append(self.query_loss(learner, batch, x, t)[0])
            per_task.append([p.detach() for n, p in learner.module.named_parameters() if n in self._adapted])
        return [torch.stack(ps) for ps in zip(*per_task)], torch.stack(losses).mean()
