"""Executors: how the per-task inner loop runs. The algorithm is the same for both:

    for each task:  theta_t = theta;  repeat k times: theta_t -= lr * grad L_support(theta_t)
                    loss_t = L_query(theta_t)

where theta are the parameters of the adapted scope (see ``BaseRecommender.scope_split``; under
``lora`` only the adapters and the head of the adapted module, ``BaseRecommender.adapts``, the rest of
it being used as is) and ``lr`` is a float (MAML) or a tensor per parameter (Meta-SGD). The
non-adapted prefix of the model runs once per meta-batch in both executors.

- ``learn2learn``: the reference. ``l2l.algorithms.MAML`` / ``MetaSGD`` ``clone()`` + ``adapt()``,
  one task at a time.
- ``vmap``: the same loop as a pure function of (parameters, support) with
  ``torch.func.functional_call`` + ``grad``, ``vmap``-ed over the padded meta-batch (masks handle
  ragged support/query lengths; ``chunk_size`` bounds memory). One backward gives the full
  second-order meta-gradient. The first linear layer of the head (a plain ``nn.Linear``, adapted
  with a scalar rate: not Meta-SGD) is kept in factored form, W - sum_j A_j^T X_j, instead of as a
  per-task copy (``VmapExecutor._per_task_factored``): the same numbers, without the per-task copies
  of the largest weight that otherwise dominate the time on a CPU.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from metarec._l2l import l2l
from metarec.data.episodes import EpisodeBatch
from metarec.errors import ConfigError
from metarec.learners.base import task_loss
from metarec.models.base import BaseRecommender, Features

EXECUTORS = ("vmap", "learn2learn")


def clip_by_global_norm(grads: list, max_norm: float | None) -> list:
    """Scale a task's inner gradients so that their joint L2 norm is at most ``max_norm``
    (differentiably, so the meta-gradient sees the clipping). ``None`` entries are kept."""
    if max_norm is None:
        return grads
    scale = clip_scale(sum((g**2).sum() for g in grads if g is not None), max_norm)
    return [None if g is None else g * scale for g in grads]


def clip_scale(squared_norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """The factor that brings a gradient of this squared L2 norm down to at most ``max_norm``."""
    return torch.clamp(max_norm / (torch.sqrt(squared_norm) + 1e-6), max=1.0)


class Factored(NamedTuple):
    """Where ``VmapExecutor`` keeps the first adapted linear layer factored: its parameter names, the
    layers after it (``None``: it is the last) with their parameters' names inside ``tail`` (``pre`` +
    name in the adapted module), under scope ``all`` the model's body (the layer's input, adapted too)
    with its parameters' names, and the rank up to which the factors are smaller than the weight."""

    weight: str
    bias: str | None
    tail: nn.Module | None
    tail_names: list[str]
    pre: str
    body: nn.Module | None
    body_names: list[str]
    max_rank: float


class _BodyOf(nn.Module):
    """``model.body`` as a module's forward (for ``functional_call``); parameters named ``model.*``."""

    def __init__(self, model: BaseRecommender) -> None:
        super().__init__()
        self.model = model

    def forward(self, user: Features, item: Features) -> torch.Tensor:
        return self.model.body(user, item)


class Executor:
    """Shared set-up: the adapted module wrapped in a learn2learn algorithm (it also owns Meta-SGD's
    learned rates, so both executors train the very same parameters)."""

    def __init__(self, model: BaseRecommender, scope: str, wrapper_cls: Any, inner_lr: float, first_order: bool,
                 inner_grad_clip: float | None = None, loss: str = "mse"):
        self.prefix, module = model.scope_split(scope)
        self.loss_fn = task_loss(loss)  # per-task masked loss of support and query (mse | bce)
        self.wrapper = wrapper_cls(module, lr=inner_lr, first_order=first_order)
        self.inner_lr = inner_lr
        self.inner_grad_clip = inner_grad_clip
        keep = model.adapts(scope)
        self.all_names = [n for n, _ in module.named_parameters()]
        self.names = [n for n in self.all_names if keep is None or keep(n)]  # adapted per task
        self._adapted = set(self.names)
        self.partial = len(self.names) < len(self.all_names)

    @property
    def module(self) -> torch.nn.Module:
        return self.wrapper.module

    def adapted_params(self) -> list[torch.nn.Parameter]:
        """The module's parameters that adapt per task, in ``names`` order."""
        return [p for n, p in self.module.named_parameters() if n in self._adapted]

    def fixed_params(self) -> dict[str, torch.Tensor]:
        """The module's parameters that do not adapt per task (under ``lora``: the base weights)."""
        return {n: p for n, p in self.module.named_parameters() if n not in self._adapted}

    def prefix_features(self, batch: EpisodeBatch, detach: bool) -> torch.Tensor | None:
        """The non-adapted computation for the whole meta-batch (``None`` when everything adapts)."""
        if self.prefix is None:
            return None
        x = self.prefix(batch.user, batch.item)
        return x.detach() if detach else x

    def run(self, batch: EpisodeBatch, steps: int, first_order: bool, detach: bool):
        """Adapt every task; mean query loss over tasks and query predictions ``[T, Q]``."""
        raise NotImplementedError

    def adapted_parameters(self, batch: EpisodeBatch, steps: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """First-order adapted parameters per task, stacked ``[T, *p.shape]`` per parameter (no graph),
        in ``module.parameters()`` order; and the mean query loss after adaptation."""
        raise NotImplementedError


def score_with(executor: "Executor", batch: EpisodeBatch, steps: int, items: Features,
               chunk_size: int | None = None) -> torch.Tensor:
    """Scores ``[T, I]`` of every item in ``items`` for each task's user, with the task's adapted
    parameters (first-order adaptation, as at evaluation). No graph is kept."""
    phis, _ = executor.adapted_parameters(batch, steps)
    fixed = {n: p.detach() for n, p in executor.fixed_params().items()}

    def one(params: dict, uc: torch.Tensor, um: torch.Tensor) -> torch.Tensor:
        user = Features(uc, um)
        params = {**fixed, **params}
        if executor.prefix is None:
            return functional_call(executor.module, params, (user, items))
        return functional_call(executor.module, params, (executor.prefix(user, items),)).squeeze(-1)

    with torch.no_grad():
        return vmap(one, chunk_size=chunk_size)(dict(zip(executor.names, phis)), batch.user.categorical, batch.user.multihot)


class L2LExecutor(Executor):
    """learn2learn clone/adapt, one task at a time."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._is_maml = not hasattr(self.wrapper, "lrs")

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
            loss = self.loss_fn(self.predict(learner, args), y, m)
            if self.inner_grad_clip is not None or self.partial:
                self._clipped_update(learner, loss, first_order)
            elif self._is_maml:
                learner.adapt(loss, first_order=first_order, allow_unused=True)
            else:
                learner.adapt(loss, first_order=first_order)
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
        if self._is_maml:
            learner.module = l2l.algorithms.maml_update(learner.module, learner.lr, grads)
        else:
            learner.module = l2l.algorithms.meta_sgd_update(learner.module, learner.lrs, grads)

    def query_loss(self, learner, batch: EpisodeBatch, x: torch.Tensor | None, t: int):
        args, y, m = self.block(batch, x, t, "query")
        out = self.predict(learner, args)
        return self.loss_fn(out, y, m), out

    def run(self, batch: EpisodeBatch, steps: int, first_order: bool, detach: bool):
        x = self.prefix_features(batch, detach)
        losses, preds = [], []
        for t in range(batch.n_tasks):
            learner = self.adapt(batch, x, t, steps, first_order)
            loss, out = self.query_loss(learner, batch, x, t)
            losses.append(loss)
            preds.append(out.detach() if detach else out)
        return torch.stack(losses).mean(), torch.stack(preds)

    def adapted_parameters(self, batch: EpisodeBatch, steps: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = self.prefix_features(batch, detach=True)
        per_task, losses = [], []
        for t in range(batch.n_tasks):
            learner = self.adapt(batch, x, t, steps, first_order=True)
            with torch.no_grad():
                losses.append(self.query_loss(learner, batch, x, t)[0])
            per_task.append([p.detach() for n, p in learner.module.named_parameters() if n in self._adapted])
        return [torch.stack(ps) for ps in zip(*per_task)], torch.stack(losses).mean()


class VmapExecutor(Executor):
    """``torch.func`` inner loop, vmapped over the tasks of a meta-batch."""

    def __init__(self, *args, chunk_size: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.chunk_size = chunk_size
        self.factored = self._factorable_first_linear()  # None: every adapted weight is copied per task

    def _factorable_first_linear(self) -> Factored | None:
        """Where the first adapted ``nn.Linear`` can be kept factored: the adapted module is that layer
        (scope ``output``), an ``nn.Sequential`` starting with it (``head``), or the whole model whose
        head starts with it (``all``; the body before it adapts too), and its weight adapts with a
        scalar rate (not Meta-SGD). ``None`` otherwise."""
        m = self.module
        if hasattr(self.wrapper, "lrs"):
            return None
        body, pre = None, ""
        if self.prefix is None:
            if not isinstance(m, BaseRecommender) or not isinstance(getattr(m, "head", None), nn.Sequential):
                return None
            body, pre, m = _BodyOf(m), "head.", m.head
        if type(m) is nn.Linear:
            first, tail, dot = m, None, ""
        elif isinstance(m, nn.Sequential) and len(m) > 0 and type(m[0]) is nn.Linear:
            key = next(iter(m._modules))
            first, tail, dot = m[0], m[1:], f"{key}."
        else:
            return None
        w = f"{pre}{dot}weight"
        b = f"{pre}{dot}bias" if first.bias is not None else None
        if w not in self._adapted:
            return None
        tail_names = [] if tail is None else [n for n, _ in tail.named_parameters()]
        body_names = [] if body is None else [n for n in self.all_names if not n.startswith(pre)]
        out_dim, in_dim = first.weight.shape
        return Factored(w, b, tail, tail_names, pre, body, body_names, out_dim * in_dim / (out_dim + in_dim))

    def _lrs(self) -> dict[str, Any]:
        lrs = getattr(self.wrapper, "lrs", None)
        if lrs is None:
            return {n: self.inner_lr for n in self.names}
        by_name = dict(zip(self.all_names, lrs))  # Meta-SGD: one rate tensor per module parameter
        return {n: by_name[n] for n in self.names}

    def _inputs(self, batch: EpisodeBatch, x: torch.Tensor | None) -> tuple[tuple, tuple]:
        """``(args, ratings, mask)`` of the support block and of the query block, every tensor ``[T, ...]``.
        The prefix features are split (one copy in the backward pass), not sliced twice (two
        zero-filled full-size gradients)."""
        s = batch.n_support
        sizes = [s, batch.ratings.shape[1] - s]
        if x is not None:
            xs, xq = torch.split(x, sizes, dim=1)
            args: tuple = ((xs,), (xq,))
        else:
            ic, iq = torch.split(batch.item.categorical, sizes, dim=1)
            mc, mq = torch.split(batch.item.multihot, sizes, dim=1)
            u = (batch.user.categorical, batch.user.multihot)
            args = ((*u, ic, mc), (*u, iq, mq))
        ys, yq = torch.split(batch.ratings, sizes, dim=1)
        return (args[0], ys, batch.support_mask[:, :s]), (args[1], yq, batch.query_mask[:, s:])

    def _forward(self, params: dict, args: tuple, fixed: dict) -> torch.Tensor:
        params = {**fixed, **params}
        if len(args) == 1:
            return functional_call(self.module, params, args).squeeze(-1)
        uc, um, ic, im = args
        return functional_call(self.module, params, (Features(uc, um), Features(ic, im)))

    def _per_task(self, steps: int, first_order: bool, lrs: dict, fixed: dict):
        """The inner loop of one task as a pure function: (parameters, support, query) ->
        (adapted parameters, query loss, query predictions). ``fixed``: the module's non-adapted
        parameters, used as they are (the outer loop still differentiates through them)."""

        def support_loss(p, args, y, m):
            return self.loss_fn(self._forward(p, args, fixed), y, m)

        def task(params, s_args, s_y, s_m, q_args, q_y, q_m):
            p = params
            for _ in range(steps):
                g = grad(support_loss)(p, s_args, s_y, s_m)
                g = dict(zip(self.names, clip_by_global_norm([g[n] for n in self.names], self.inner_grad_clip)))
                p = {n: p[n] - lrs[n] * (g[n].detach() if first_order else g[n]) for n in self.names}
            out = self._forward(p, q_args, fixed)
            return p, self.loss_fn(out, q_y, q_m), out

        return task

    def _per_task_factored(self, steps: int, first_order: bool, lrs: dict, fixed: dict, materialise: bool):
        """The inner loop of ``_per_task`` with the first linear layer's adapted weight kept factored.

        The layer's weight gradient on the support is delta^T X (X: its input, delta: the loss's
        gradient with respect to its output), so after k steps W_k = W - sum_j A_j^T X_j with
        A_j = lr * delta_j, ``[S, out]``, and its output on any input x is x W^T - sum_j (x X_j^T) A_j:
        no per-task copy of W is ever made. Under ``head``/``output`` X is the same at every step (the
        non-adapted prefix's features), so the A_j add up into one term and the Gram matrices are
        computed once; under ``all`` X_j is the adapted body's output at step j, so the terms pile up
        and, once their rank would pass out*in/(out+in) (where the factors stop being smaller than W),
        they are summed into a per-task copy of W that later steps update directly. First order: A_j
        and X_j are constants, as learn2learn's detached gradient is. ``materialise``: also return W_k
        itself (for Reptile and scoring); otherwise the weight is left out of the adapted parameters."""
        f = self.factored
        w, b, tail, body = f.weight, f.bias, f.tail, f.body
        lr = lrs[w]
        adapts_bias = b is not None and b in self._adapted
        clip = self.inner_grad_clip

        def rest_of_module(rest, pre):  # the layers after the first, from its pre-activation output
            if tail is None:
                return pre.squeeze(-1)
            params = {**fixed, **rest}
            return functional_call(tail, {n: params[f.pre + n] for n in f.tail_names}, (pre,)).squeeze(-1)

        def features(rest, args):  # the first layer's input
            if body is None:
                return args[0]
            params = {**fixed, **rest}
            uc, um, ic, im = args
            body_params = {f"model.{n}": params[n] for n in f.body_names}
            return functional_call(body, body_params, (Features(uc, um), Features(ic, im)))

        def task(params, s_args, s_y, s_m, q_args, q_y, q_m):
            weight = params[w]
            bias = (params[b] if adapts_bias else fixed[b]) if b is not None else None
            rest = {n: v for n, v in params.items() if n not in (w, b)}
            terms: list = []  # (A_j, X_j as used in the correction)
            dense = None  # the per-task copy of W, once the terms are folded into one (under ``all``)
            fixed_x = body is None
            if fixed_x:
                xs = features(rest, s_args)
                xc = xs.detach() if first_order else xs
                zs = xs @ weight.T
                gs = xs @ xc.T if steps > 1 or clip is not None else None  # X X^T, needed after the first step

            def first_layer(x, z=None, grams=None):  # z: x W^T when already known
                h = x @ (weight if dense is None else dense).T if z is None else z
                if bias is not None:
                    h = h + bias
                if grams is None:
                    grams = [x @ xt.T for _, xt in terms]
                for (a, _), gram in zip(terms, grams):
                    h = h - gram @ a
                return h

            def support_loss(rest, u):
                x = features(rest, s_args)
                pre = first_layer(x, zs, [gs] * len(terms)) if fixed_x else first_layer(x)
                return self.loss_fn(rest_of_module(rest, pre + u), s_y, s_m), x

            rank_step = s_y.shape[-1]  # each step adds a term of rank <= the (padded) support size
            u = torch.zeros(rank_step, weight.shape[0], dtype=weight.dtype, device=weight.device)  # d/du: delta
            for _ in range(steps):
                (g, delta), x = grad(support_loss, argnums=(0, 1), has_aux=True)(rest, u)
                gb = delta.sum(0) if adapts_bias else None
                if clip is not None:
                    gram = gs if fixed_x else x @ x.T
                    norm2 = ((delta @ delta.T) * gram).sum() + sum((v**2).sum() for v in g.values())
                    if gb is not None:
                        norm2 = norm2 + (gb**2).sum()
                    scale = clip_scale(norm2, clip)
                    delta, g = delta * scale, {n: v * scale for n, v in g.items()}
                    gb = None if gb is None else gb * scale
                if first_order:
                    delta, g = delta.detach(), {n: v.detach() for n, v in g.items()}
                    gb = None if gb is None else gb.detach()
                if fixed_x:
                    terms = [(lr * delta if not terms else terms[0][0] + lr * delta, xc)]
                else:
                    x_used = x.detach() if first_order else x
                    if dense is None and (len(terms) + 1) * rank_step <= f.max_rank:
                        terms.append((lr * delta, x_used))
                    else:
                        start = weight if dense is None else dense
                        dense = start - sum(a.T @ xt for a, xt in [*terms, (lr * delta, x_used)])
                        terms = []
                if gb is not None:
                    bias = bias - lrs[b] * gb
                rest = {n: rest[n] - lrs[n] * g[n] for n in rest}
            xq = features(rest, q_args)
            out = rest_of_module(rest, first_layer(xq))
            if materialise:
                rest[w] = (weight if dense is None else dense) - sum(a.T @ xt for a, xt in terms)
                if adapts_bias:
                    rest[b] = bias
            return rest, self.loss_fn(out, q_y, q_m), out

        return task

    def _vmapped(self, batch: EpisodeBatch, steps: int, first_order: bool, detach: bool, params: dict, lrs: dict,
                 fixed: dict, materialise: bool = False):
        x = self.prefix_features(batch, detach)
        (s_args, s_y, s_m), (q_args, q_y, q_m) = self._inputs(batch, x)
        if self.factored is not None and steps > 0:
            task = self._per_task_factored(steps, first_order, lrs, fixed, materialise)
        else:
            task = self._per_task(steps, first_order, lrs, fixed)
        return vmap(task, in_dims=(None, 0, 0, 0, 0, 0, 0), chunk_size=self.chunk_size)(
            params, s_args, s_y, s_m, q_args, q_y, q_m
        )

    def run(self, batch: EpisodeBatch, steps: int, first_order: bool, detach: bool):
        params = dict(zip(self.names, self.adapted_params()))
        _, losses, preds = self._vmapped(batch, steps, first_order, detach, params, self._lrs(), self.fixed_params())
        if detach:
            losses, preds = losses.detach(), preds.detach()
        return losses.mean(), preds

    def adapted_parameters(self, batch: EpisodeBatch, steps: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        params = {n: p.detach() for n, p in zip(self.names, self.adapted_params())}
        lrs = {n: (lr.detach() if torch.is_tensor(lr) else lr) for n, lr in self._lrs().items()}
        fixed = {n: p.detach() for n, p in self.fixed_params().items()}
        adapted, losses, _ = self._vmapped(batch, steps, True, True, params, lrs, fixed, materialise=True)
        return [adapted[n].detach() for n in self.names], losses.detach().mean()


def make_executor(name: str, model: BaseRecommender, scope: str, wrapper_cls: Any, inner_lr: float,
                  first_order: bool, chunk_size: int | None = None, inner_grad_clip: float | None = None,
                  loss: str = "mse") -> Executor:
    if inner_grad_clip is not None and inner_grad_clip <= 0:
        raise ConfigError(f"learner.inner_grad_clip must be > 0 or null, got {inner_grad_clip}")
    if name == "learn2learn":
        return L2LExecutor(model, scope, wrapper_cls, inner_lr, first_order, inner_grad_clip, loss)
    if name == "vmap":
        return VmapExecutor(model, scope, wrapper_cls, inner_lr, first_order, inner_grad_clip, loss, chunk_size=chunk_size)
    raise ConfigError(f"learner.executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
