"""The ``vmap`` executor: the inner loop as one pure function of (parameters, support), with
``torch.func.functional_call`` + ``grad``, ``vmap``-ed over the padded meta-batch (masks handle ragged
support/query lengths; ``chunk_size`` bounds memory). One backward gives the full second-order
meta-gradient. The first linear layer of the head stays factored where it can (``factored.py``). Serving
one new user (``Recommender.adapt``, inside ``item_cache.serving()``) takes the same inner steps on the
support alone with plain autograd: ``vmap``'s batching and ``torch.func``'s wrapping are most of a
20-rating adaptation's time."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_map

from metarec.data.episodes import EpisodeBatch, Support
from metarec.learners.executors.base import Executor, ExecutorSettings, clip_by_global_norm
from metarec.learners.executors.factored import (
    ModelMethod, Parts, factor_rank, factorable_first_linear, factored_task,
)
from metarec.data.features import Features
from metarec.models.base import BaseRecommender
from metarec.models.item_cache import is_serving, sparse_embedding_grads


class VmapExecutor(Executor):
    """``torch.func`` inner loop, vmapped over the tasks of a meta-batch."""

    def __init__(self, model: BaseRecommender, settings: ExecutorSettings) -> None:
        super().__init__(model, settings)
        # Under ``head`` on a model that ``splits_body``, the non-adapted prefix (the body) comes as its user
        # and item parts (``Parts``) for the factored first layer: the user's part of that layer once per task
        # and no ``[T, L, Du + Di]`` concatenation (nor its gradient): 1.34x at support 90 and 1 step, the same speed at 10.
        self.factored = factorable_first_linear(self)  # None: every adapted weight is copied per task
        self.prefix_parts = self.prefix is not None and self.factored is not None and self.factored.parts
        # Scope ``all`` on a model whose first head layer can take the body's user and item parts apart
        # (``MeLU.forward_split``), where that layer is not kept factored (Meta-SGD's learned rates): with
        # supports longer than ``split_above`` (the layer's rank, out * in / (out + in)) the inner loop runs
        # that split forward on its per-task copies: about half the first layer's work, forward and backward.
        # Where the layer is factored, the factored path is as fast or faster at every support (it takes the
        # same parts, and its last step's terms stay factored: all/1/90 1.1-1.3x over the split path).
        self.split: nn.Module | None = None
        self.split_above = float("inf")
        if self.prefix is None and getattr(model, "splits_first_layer", False):
            self.split, self.split_above = ModelMethod(model, "forward_split"), factor_rank(model.head[0])

    def prefix_features(self, batch: EpisodeBatch, detach: bool) -> torch.Tensor | Parts | None:
        """As every executor's, but the body's two parts (``Parts``) under ``prefix_parts``."""
        if not self.prefix_parts:
            return super().prefix_features(batch, detach)
        x = Parts(*self.model.split_body(batch.user, batch.item))
        return x.detach() if detach else x

    def _inputs(self, batch: EpisodeBatch, x: torch.Tensor | Parts | None) -> tuple[tuple, tuple]:
        """``(args, ratings, mask)`` of the support block and of the query block, every tensor ``[T, ...]``.
        The prefix features are split (one copy in the backward pass), not sliced twice (two
        zero-filled full-size gradients)."""
        s = batch.n_support
        sizes = [s, batch.ratings.shape[1] - s]
        if isinstance(x, Parts):  # the user's part is the same for its support and its query
            xs, xq = torch.split(x.items, sizes, dim=1)
            args: tuple = ((Parts(x.user, xs),), (Parts(x.user, xq),))
        elif x is not None:
            xs, xq = torch.split(x, sizes, dim=1)
            args = ((xs,), (xq,))
        else:
            ic, iq = torch.split(batch.item.categorical, sizes, dim=1)
            mc, mq = torch.split(batch.item.multihot, sizes, dim=1)
            args = ((batch.user, Features(ic, mc)), (batch.user, Features(iq, mq)))
        ys, yq = torch.split(batch.ratings, sizes, dim=1)
        return (args[0], ys, batch.support_mask[:, :s]), (args[1], yq, batch.query_mask[:, s:])

    def _forward(self, params: dict, args: tuple, fixed: dict, split: bool = False) -> torch.Tensor:
        params = {**fixed, **params}
        if split:  # the same model, its first head layer on the user and item parts apart
            return functional_call(self.split, {f"model.{n}": v for n, v in params.items()}, args)
        if len(args) == 1:
            return functional_call(self.module, params, args).squeeze(-1)
        return functional_call(self.module, params, args)

    def _per_task(self, steps: int, first_order: bool, lrs: dict, fixed: dict, split: bool = False):
        """The inner loop of one task as a pure function: (parameters, support, query) ->
        (adapted parameters, query loss, query predictions). ``fixed``: the module's non-adapted
        parameters, used as they are (the outer loop still differentiates through them). ``split``: the
        model's ``forward_split`` (the same numbers)."""

        def support_loss(p, args, y, m):
            return self.support_loss_fn(self._forward(p, args, fixed, split), y, m)

        def task(params, s_args, s_y, s_m, q_args, q_y, q_m):
            p = params
            for _ in range(steps):
                g = grad(support_loss)(p, s_args, s_y, s_m)
                g = dict(zip(self.names, clip_by_global_norm([g[n] for n in self.names], self.inner_grad_clip)))
                p = {n: p[n] - lrs[n] * (g[n].detach() if first_order else g[n]) for n in self.names}
            out = self._forward(p, q_args, fixed, split)
            return p, self.loss_fn(out, q_y, q_m), out

        return task

    def _vmapped(self, batch: EpisodeBatch, steps: int, first_order: bool, detach: bool, params: dict, lrs: dict,
                 fixed: dict, materialise: bool = False):
        x = self.prefix_features(batch, detach)
        factored = self.factored is not None and steps > 0
        split = not factored and self.split is not None and batch.n_support > self.split_above
        if isinstance(x, Parts) and not factored:
            x = x.cat()
        (s_args, s_y, s_m), (q_args, q_y, q_m) = self._inputs(batch, x)
        if factored:
            task = factored_task(self, steps, first_order, lrs, fixed, materialise)
        else:
            task = self._per_task(steps, first_order, lrs, fixed, split)
        return vmap(task, in_dims=(None, 0, 0, 0, 0, 0, 0), chunk_size=self.chunk_size)(
            params, s_args, s_y, s_m, q_args, q_y, q_m
        )

    def run(self, batch: EpisodeBatch, steps: int, first_order: bool, detach: bool):
        params = dict(zip(self.names, self.adapted_params()))
        _, losses, preds = self._vmapped(batch, steps, first_order, detach, params, self.rates(), self.fixed_params())
        if detach:
            losses, preds = losses.detach(), preds.detach()
        return losses.mean(), preds

    def _detached(self) -> tuple[dict, dict, dict]:
        """The adapted parameters, their inner rates and the fixed parameters, detached (first-order
        adaptation with no graph: ``adapted_parameters`` and serving)."""
        params = {n: p.detach() for n, p in zip(self.names, self.adapted_params())}
        lrs = {n: (lr.detach() if torch.is_tensor(lr) else lr) for n, lr in self.rates().items()}
        return params, lrs, {n: p.detach() for n, p in self.fixed_params().items()}

    def adapted_parameters(self, batch: EpisodeBatch, steps: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        params, lrs, fixed = self._detached()
        adapted, losses, _ = self._vmapped(batch, steps, True, True, params, lrs, fixed, materialise=True)
        return [adapted[n].detach() for n in self.names], losses.detach().mean()

    def adapt(self, user: Features, support: Support, steps: int) -> dict[str, torch.Tensor]:
        """Serving one new user (one task, inside ``item_cache.serving()``): the inner loop's steps on the
        support alone with plain autograd — no ``vmap`` batching, no ``torch.func`` wrapping (a 20-rating
        step took 3.6 ms through ``grad``, 1.7 ms through ``torch.autograd.grad``), no empty query block,
        embedding tables' gradients sparse (the support's rows: ``item_cache.sparse_embedding_grads``);
        otherwise as every executor does."""
        if support.n_tasks != 1 or not is_serving():
            return super().adapt(user, support, steps)
        params, lrs, fixed = self._detached()
        first = lambda tree: tree_map(lambda t: t[0], tree)  # noqa: E731
        if self.prefix is not None:
            args: tuple = (self.prefix(user, support.items).detach()[0],)
        else:
            args = (first(user), first(support.items))
        y, m = support.ratings[0], support.mask[0]
        for _ in range(steps):  # plain autograd: without vmap, torch.func.grad's wrapping only costs time
            leaves = {n: params[n].requires_grad_() for n in self.names}
            with torch.enable_grad(), sparse_embedding_grads():  # an embedding's gradient: the support's rows
                loss = self.support_loss_fn(self._forward(leaves, args, fixed), y, m)
            g = torch.autograd.grad(loss, [leaves[n] for n in self.names], materialize_grads=True)
            g = clip_by_global_norm([x.coalesce() if x.is_sparse else x for x in g], self.inner_grad_clip)
            params = {n: (leaves[n] - gn * lrs[n]).detach() for n, gn in zip(self.names, g)}
        return {n: params[n].detach()[None] for n in self.names}
