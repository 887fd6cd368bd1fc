"""The body's linear fields kept factored by the ``vmap`` executor under scope ``all``.

Each field of a model's body that is linear in its raw input (``BaseRecommender.linear_fields``: an
embedding table looked up by index, a multi-hot mean's map, a dense field's projection) has, on one task's
support, the weight gradient X^T D: X the support's raw inputs (one-hot rows for an index field), D the
loss's gradient with respect to the field's linear output. X never changes (it is the data), so after k
inner steps the table is T - X^T A with A = sum_j lr * D_j, one ``[S, dim]`` term per field, and its output
on any input x is x T - (x X^T) A: the shared table's lookup minus a small correction. No per-task copy of a
table or of a multi-hot map is made and no dense table gradient is computed per task; for an index field
x X^T is the match matrix of the indices (padding index 0 matches nothing: its row never moves). The user's
fields have one raw input per task (the user), so their terms are ``[dim]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metarec.data.features import Features
from metarec.models.base import LinearField


def raw_input(field: LinearField, user: Features, item: Features) -> torch.Tensor:
    """The field's raw input on one task: an index field's codes, a vector field's slice of the multi-hot block."""
    x = user if field.side == "user" else item
    if field.column is not None:
        return x.categorical[..., field.column]
    return x.multihot[..., field.start : field.start + field.width]


def field_gram(field: LinearField, a: torch.Tensor, s: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``a @ s.T`` of raw inputs: an item field's ``[N, S]``; a user field's scalar (the task's user with itself)."""
    if field.column is not None:
        if field.side == "user":
            return (s != 0).to(dtype)
        return ((a[:, None] == s[None, :]) & (s != 0)[None, :]).to(dtype)
    if field.side == "user":
        return a @ s
    return a @ s.T


def factored_fields(fields: list[LinearField] | None, params: dict, n_support: int) -> list[LinearField]:
    """The fields worth keeping factored with supports ``n_support`` wide: every user field (a ``[dim]`` term),
    and an item field whose table has more rows (a map: more inputs) than the support has ratings -- its
    ``[S, dim]`` term is then smaller than a per-task copy (measured side by side in one process on the
    ``peers.py`` workload, one thread: with every field factored, scope ``all`` at support 90 was slower than
    with its 25-wide genre map and 90-row table copied)."""
    if not fields:
        return []
    return [f for f in fields if f.side == "user"
            or n_support < (params[f.weight].shape[0] if f.column is not None else f.width)]


class BodyFactors:
    """One task's factored updates of the body's linear fields: per field its term A (``None`` until the first
    step) and, for a field with an adapted bias, the bias's accumulated change."""

    def __init__(self, fields: list[LinearField], params: dict, s_args: tuple, q_args: tuple, first_order: bool,
                 adapted: set) -> None:
        self.fields = fields
        some = params[fields[0].weight]
        s_in = [raw_input(f, *s_args) for f in fields]
        q_in = [raw_input(f, *q_args) for f in fields]
        if first_order:
            s_in = [x.detach() for x in s_in]
        self.s_in = s_in
        self.gram_s = [field_gram(f, x, x, some.dtype) for f, x in zip(fields, s_in)]
        self.gram_q = [field_gram(f, q, x, some.dtype) for f, q, x in zip(fields, q_in, s_in)]
        self.dims = [params[f.weight].shape[1 if f.column is not None else 0] for f in fields]
        self.biased = [f.bias is not None and f.bias in adapted for f in fields]
        self.a: list = [None] * len(fields)
        self.b: list = [None] * len(fields)
        self.n_support = s_args[1].categorical.shape[-2]

    def zeros(self, like: torch.Tensor) -> list[torch.Tensor]:
        """The offsets whose gradients are the fields' D on the support: ``[S, dim]`` per item field, ``[dim]`` per user field."""
        return [like.new_zeros((self.n_support, d) if f.side == "item" else (d,)) for f, d in zip(self.fields, self.dims)]

    def offsets(self, query: bool, u: list | None = None) -> tuple[dict, dict]:
        """Per side (user, item), field position -> the term added to the field's linear output:
        ``-(x X^T) A`` (minus the bias's change), plus ``u`` on the support."""
        grams = self.gram_q if query else self.gram_s
        sides: dict[str, dict] = {"user": {}, "item": {}}
        for k, f in enumerate(self.fields):
            o = None
            if self.a[k] is not None:
                o = -(grams[k] * self.a[k]) if f.side == "user" else -(grams[k] @ self.a[k])
            if self.b[k] is not None:
                o = o - self.b[k] if o is not None else -self.b[k]
            if u is not None:
                o = u[k] if o is None else o + u[k]
            if o is not None:
                sides[f.side][f.position] = o
        return sides["user"], sides["item"]

    def norm2(self, d: list) -> torch.Tensor:
        """The squared norm of the fields' weight (and adapted bias) gradients X^T D (and D's column sums)."""
        total = 0.0
        for k, f in enumerate(self.fields):
            if f.side == "user":
                total = total + self.gram_s[k] * (d[k] ** 2).sum()
            else:
                total = total + ((d[k] @ d[k].T) * self.gram_s[k]).sum()
            if self.biased[k]:
                total = total + (self._bias_grad(f, d[k]) ** 2).sum()
        return total

    @staticmethod
    def _bias_grad(f: LinearField, d: torch.Tensor) -> torch.Tensor:
        return d if f.side == "user" else d.sum(0)

    def step(self, d: list, lrs: dict) -> None:
        """One inner step with the fields' D (already clipped, detached under first order)."""
        for k, f in enumerate(self.fields):
            term = lrs[f.weight] * d[k]
            self.a[k] = term if self.a[k] is None else self.a[k] + term
            if self.biased[k]:
                change = lrs[f.bias] * self._bias_grad(f, d[k])
                self.b[k] = change if self.b[k] is None else self.b[k] + change

    def materialise(self, params: dict) -> dict:
        """The adapted tables (and biases) themselves, ``T - X^T A`` (Reptile's direction, scoring)."""
        out = {}
        for k, f in enumerate(self.fields):
            w, a, x = params[f.weight], self.a[k], self.s_in[k]
            if a is None:
                out[f.weight] = w
            elif f.column is not None:  # rows of the table: one-hot of the indices, padding left alone
                hot = F.one_hot(x.reshape(-1), w.shape[0]).to(w.dtype) * (x.reshape(-1, 1) != 0)
                out[f.weight] = w - hot.T @ a.reshape(-1, w.shape[1])
            elif f.side == "user":
                out[f.weight] = w - torch.outer(a, x)
            else:
                out[f.weight] = w - a.T @ x
            if f.bias is not None and f.bias in params:
                out[f.bias] = params[f.bias] if self.b[k] is None else params[f.bias] - self.b[k]
        return out
