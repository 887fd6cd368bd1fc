"""The factored first layer of the ``vmap`` executor.

The first linear layer of the head (a plain ``nn.Linear``, adapted with a scalar rate: not Meta-SGD)
is kept in factored form, W - sum_j A_j^T X_j, instead of as a per-task copy: the same numbers, without
the per-task copies of the largest weight that otherwise dominate the time on a CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn
from torch.func import functional_call, grad

from metarec.learners.executors.base import clip_scale
from metarec.learners.executors.factored_fields import BodyFactors, factored_fields
from metarec.data.features import Features
from metarec.models.base import BaseRecommender, LinearField

if TYPE_CHECKING:
    from metarec.learners.executors.base import Executor


class Parts(NamedTuple):
    """The first layer's input kept as the body's two parts (``BaseRecommender.split_body``): one task's user
    part ``[Du]``, shared by its items, and the items' part ``[N, Di]``; the input it stands for is
    ``[user; item]`` per item. The factored layer's products below take either form."""

    user: torch.Tensor
    items: torch.Tensor

    def cat(self) -> torch.Tensor:
        """The concatenated input ``[..., N, Du + Di]`` (for the paths that take it whole)."""
        u = self.user.unsqueeze(-2).expand(*self.items.shape[:-1], self.user.shape[-1])
        return torch.cat([u, self.items], dim=-1)

    def detach(self) -> "Parts":
        return Parts(self.user.detach(), self.items.detach())


Input = torch.Tensor | Parts


class Blocks(NamedTuple):
    """A weight ``[out, Du + Di]`` kept as its user and item column blocks: the per-task copy of the factored
    layer's weight when its input comes as ``Parts``. Its updates are made and applied block by block, with
    no concatenation (whose backward zero-fills a whole weight-sized gradient per block and per step)."""

    user: torch.Tensor
    items: torch.Tensor

    def cat(self) -> torch.Tensor:
        return torch.cat([self.user, self.items], dim=-1)


Weight = torch.Tensor | Blocks


def as_blocks(w: Weight, du: int) -> Blocks:
    """``w`` as its column blocks, the first ``du`` columns the user's (views of a plain matrix)."""
    return w if isinstance(w, Blocks) else Blocks(w[:, :du], w[:, du:])


def as_matrix(w: Weight) -> torch.Tensor:
    return w.cat() if isinstance(w, Blocks) else w


def times_weight(x: Input, w: Weight) -> torch.Tensor:
    """``x @ w.T``: with parts, the user's ``[Du]`` once and broadcast over the items."""
    if isinstance(x, Parts):
        wb = as_blocks(w, x.user.shape[-1])
        return x.items @ wb.items.T + x.user @ wb.user.T
    return x @ as_matrix(w).T


def gram(x: Input, y: Input) -> torch.Tensor:
    """``x @ y.T`` (``[N, M]``): with parts, the items' product plus the users' dot product."""
    if isinstance(x, Parts):
        return x.items @ y.items.T + x.user @ y.user
    return x @ y.T


def weight_term(a: torch.Tensor, x: Input) -> Weight:
    """``a.T @ x`` (weight-shaped ``[out, in]``) for ``a`` ``[N, out]``: with parts, as ``Blocks``, the user
    block the outer product of ``a``'s column sums with the user's part."""
    if isinstance(x, Parts):
        return Blocks(torch.outer(a.sum(0), x.user), a.T @ x.items)
    return a.T @ x


def minus(w: Weight, terms: list[Weight]) -> Weight:
    """``w - sum(terms)``; block by block when the terms are ``Blocks`` (a plain ``w`` is split into its blocks)."""
    if not terms:
        return w
    if isinstance(terms[0], Blocks):
        wb = as_blocks(w, terms[0].user.shape[-1])
        return Blocks(wb.user - sum(t.user for t in terms), wb.items - sum(t.items for t in terms))
    return w - sum(terms)


class Factored(NamedTuple):
    """Where ``VmapExecutor`` keeps the first adapted linear layer factored: its parameter names, the
    layers after it (``None``: it is the last) with their parameters' names inside ``tail`` (``pre`` +
    name in the adapted module), under scope ``all`` the model's body (the layer's input, adapted too)
    with its parameters' names, the rank up to which the factors are smaller than the weight, and whether
    the layer's input comes as the body's user and item parts (``Parts``: the model ``splits_body``, under
    ``head`` and ``all``); under ``all``, the body's adapted linear fields kept factored too
    (``factored_fields.py``; ``None``: the body's parameters are copied per task)."""

    weight: str
    bias: str | None
    tail: nn.Module | None
    tail_names: list[str]
    pre: str
    body: nn.Module | None
    body_names: list[str]
    max_rank: float
    parts: bool
    fields: list[LinearField] | None


class ModelMethod(nn.Module):
    """One of ``model``'s ``(user, item)`` methods (``body``, ``forward_split``) as a module's forward, for
    ``functional_call``; parameters named ``model.*``. ``split_body``'s pair comes back as ``Parts``."""

    def __init__(self, model: BaseRecommender, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, user: Features, item: Features, *extra) -> Input:
        out = getattr(self.model, self.method)(user, item, *extra)
        return Parts(*out) if self.method == "split_body" else out


def factor_rank(layer: nn.Linear) -> float:
    """The rank up to which factors ``A^T X`` of ``layer``'s weight are smaller than the weight: out*in/(out+in)."""
    out_dim, in_dim = layer.weight.shape
    return out_dim * in_dim / (out_dim + in_dim)


def factorable_first_linear(ex: "Executor") -> Factored | None:
    """Where the first adapted ``nn.Linear`` can be kept factored: the adapted module is that layer
    (scope ``output``), an ``nn.Sequential`` starting with it (``head``), or the whole model whose
    head starts with it (``all``; the body before it adapts too), and its weight adapts with a
    scalar rate (not Meta-SGD). ``None`` otherwise."""
    m = ex.module
    if not ex.rule.scalar:
        return None
    body, pre, fields = None, "", None
    # under ``head`` the input is the body's parts when the non-adapted prefix is the body itself
    parts = ex.model.splits_body and ex.prefix is not None and ex.prefix == ex.model.body
    if ex.prefix is None:
        if not isinstance(m, BaseRecommender) or not isinstance(getattr(m, "head", None), nn.Sequential):
            return None
        parts = m.splits_body
        linear = m.linear_fields() if parts else None
        if linear is not None:
            fields = [f for f in linear if f.weight in ex._adapted] or None
        body, pre, m = ModelMethod(m, "split_body" if parts else "body"), "head.", m.head
    if type(m) is nn.Linear:
        first, tail, dot = m, None, ""
    elif isinstance(m, nn.Sequential) and len(m) > 0 and type(m[0]) is nn.Linear:
        key = next(iter(m._modules))
        first, tail, dot = m[0], m[1:], f"{key}."
    else:
        return None
    w = f"{pre}{dot}weight"
    b = f"{pre}{dot}bias" if first.bias is not None else None
    if w not in ex._adapted:
        return None
    tail_names = [] if tail is None else [n for n, _ in tail.named_parameters()]
    body_names = [] if body is None else [n for n in ex.all_names if not n.startswith(pre)]
    return Factored(w, b, tail, tail_names, pre, body, body_names, factor_rank(first), parts, fields)



def factored_task(ex: "Executor", steps: int, first_order: bool, lrs: dict, fixed: dict, materialise: bool):
    """The inner loop of ``_per_task`` with the first linear layer's adapted weight kept factored.

    The layer's weight gradient on the support is delta^T X (X: its input, delta: the loss's
    gradient with respect to its output), so after k steps W_k = W - sum_j A_j^T X_j with
    A_j = lr * delta_j, ``[S, out]``, and its output on any input x is x W^T - sum_j (x X_j^T) A_j:
    no per-task copy of W is ever made. Under ``head``/``output`` X is the same at every step (the
    non-adapted prefix's features), so the A_j add up into one term and the Gram matrices are
    computed once; under ``all`` X_j is the adapted body's output at step j, so the terms pile up,
    and a step sums them into a per-task copy of W (which later steps update) where that costs less
    than keeping them: kept, each unit of their rank costs in + out multiply-adds per row the layer
    still goes through (the later steps' supports and the query), folded in * out once, so they fold
    iff those rows outnumber out*in/(out+in) (``max_rank``). The last step's terms, seen only by the
    query, then stay factored (one step at any support: no copy at all). First order: A_j
    and X_j are constants, as learn2learn's detached gradient is. ``materialise``: also return W_k
    itself (for Reptile and scoring); otherwise the weight is left out of the adapted parameters."""
    f = ex.factored
    w, b, tail, body = f.weight, f.bias, f.tail, f.body
    lr = lrs[w]
    adapts_bias = b is not None and b in ex._adapted
    clip = ex.inner_grad_clip

    def rest_of_module(rest, pre):  # the layers after the first, from its pre-activation output
        if tail is None:
            return pre.squeeze(-1)
        params = {**fixed, **rest}
        return functional_call(tail, {n: params[f.pre + n] for n in f.tail_names}, (pre,)).squeeze(-1)


    def features(rest, args, shared=None, offsets=None):  # the first layer's input
        if body is None:
            return args[0]
        params = {**fixed, **(shared or {}), **rest}
        body_params = {f"model.{n}": params[n] for n in f.body_names}
        return functional_call(body, body_params, args if offsets is None else (*args, offsets))

    def task(params, s_args, s_y, s_m, q_args, q_y, q_m):
        weight = params[w]
        bias = (params[b] if adapts_bias else fixed[b]) if b is not None else None
        chosen = factored_fields(f.fields, params, s_y.shape[-1])
        field_names = {n for fl in chosen for n in (fl.weight, fl.bias) if n in ex._adapted}
        rest = {n: v for n, v in params.items() if n not in (w, b) and n not in field_names}
        shared = {n: params[n] for n in field_names}  # the body's factored fields: the tables as they are
        fields = BodyFactors(chosen, params, s_args, q_args, first_order, ex._adapted) if chosen else None
        terms: list = []  # (A_j, X_j as used in the correction)
        dense = None  # the per-task copy of W once the terms are folded into one (under ``all``; Blocks with parts)
        fixed_x = body is None
        if fixed_x:
            xs = features(rest, s_args)
            xc = xs.detach() if first_order else xs
            zs = times_weight(xs, weight)
            gs = gram(xs, xc) if steps > 1 or clip is not None else None  # X X^T, needed after the first step

        def first_layer(x, z=None, grams=None):  # z: x W^T when already known
            h = times_weight(x, weight if dense is None else dense) if z is None else z
            if bias is not None:
                h = h + bias
            if grams is None:
                grams = [gram(x, xt) for _, xt in terms]
            for (a, _), xx in zip(terms, grams):
                h = h - xx @ a
            return h

        def support_loss(rest, u, uf):
            offsets = None if fields is None else fields.offsets(False, uf)
            x = features(rest, s_args, shared, offsets)
            pre = first_layer(x, zs, [gs] * len(terms)) if fixed_x else first_layer(x)
            return ex.support_loss_fn(rest_of_module(rest, pre + u), s_y, s_m), x

        rank_step = s_y.shape[-1]  # each step adds a term of rank <= the (padded) support size
        u = torch.zeros(rank_step, weight.shape[0], dtype=weight.dtype, device=weight.device)  # d/du: delta
        uf = [] if fields is None else fields.zeros(weight)  # d/duf: each factored field's D
        q_rows = q_y.shape[-1]
        for i in range(steps):
            (g, delta, d), x = grad(support_loss, argnums=(0, 1, 2), has_aux=True)(rest, u, uf)
            gb = delta.sum(0) if adapts_bias else None
            if clip is not None:
                xx = gs if fixed_x else gram(x, x)
                norm2 = ((delta @ delta.T) * xx).sum() + sum((v**2).sum() for v in g.values())
                if gb is not None:
                    norm2 = norm2 + (gb**2).sum()
                if fields is not None:
                    norm2 = norm2 + fields.norm2(d)
                scale = clip_scale(norm2, clip)
                delta, g, d = delta * scale, {n: v * scale for n, v in g.items()}, [v * scale for v in d]
                gb = None if gb is None else gb * scale
            if first_order:
                delta, g, d = delta.detach(), {n: v.detach() for n, v in g.items()}, [v.detach() for v in d]
                gb = None if gb is None else gb.detach()
            if fields is not None:
                fields.step(d, lrs)
            if fixed_x:
                terms = [(lr * delta if not terms else terms[0][0] + lr * delta, xc)]
            else:
                x_used = x.detach() if first_order else x
                # Fold the terms into the copy where that is cheaper: kept, each unit of their rank costs
                # (in + out) per row the layer still goes through (the later steps' supports, then the query);
                # folded, in * out once. So fold iff those rows outnumber max_rank (or the copy is wanted).
                rows_left = (steps - 1 - i) * rank_step + q_rows
                if materialise or rows_left > f.max_rank:
                    start = weight if dense is None else dense
                    dense = minus(start, [weight_term(a, xt) for a, xt in [*terms, (lr * delta, x_used)]])
                    terms = []
                else:
                    terms.append((lr * delta, x_used))
            if gb is not None:
                bias = bias - lrs[b] * gb
            rest = {n: rest[n] - lrs[n] * g[n] for n in rest}
        xq = features(rest, q_args, shared, None if fields is None else fields.offsets(True))
        out = rest_of_module(rest, first_layer(xq))
        if materialise:
            if fields is not None:
                rest.update(fields.materialise(params))
            rest[w] = as_matrix(minus(weight if dense is None else dense, [weight_term(a, xt) for a, xt in terms]))
            if adapts_bias:
                rest[b] = bias
        return rest, ex.loss_fn(out, q_y, q_m), out

    return task
