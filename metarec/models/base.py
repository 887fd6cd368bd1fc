"""The base-recommender contract every model implements.

A base recommender maps (user features, item features) to a score, on any leading shape. It is split
into a ``body`` (embeddings and pooling) and a ``head`` (the decision layers, an ``nn.Sequential`` ending
in the output layer). Adaptation scopes:

- ``all``: every parameter adapts per task;
- ``head``: the decision layers adapt (MeLU's local update); the body is computed once per meta-batch;
- ``output``: only the final output layer adapts (ANIL); body and lower decision layers run once;
- ``lora``: models with low-rank adapters (``model=transformer`` with ``lora_rank``): the adapters and
  the head adapt, the token embeddings run once.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from metarec.data.features import Features
from metarec.errors import ConfigError

BASE_SCOPES = ("all", "head", "output")  # what every base model adapts (``scope_split``, ``has_scope``)
SCOPES = (*BASE_SCOPES, "lora")  # ``lora``: a model with adapters


class LinearField(NamedTuple):
    """One field of a model's body that is linear in its raw input (``BaseRecommender.linear_fields``): an
    index field looks up row ``categorical[..., column]`` of ``weight`` ``[rows, dim]`` (row 0 is padding:
    never updated); a vector field maps its slice ``multihot[..., start:start + width]`` by ``weight``
    ``[dim, width]`` (plus ``bias``). ``side``: ``user`` or ``item``; ``position``: the field's place among its
    side's fields (the order of ``split_body``'s offsets)."""

    side: str
    position: int
    weight: str
    bias: str | None
    column: int | None
    start: int = 0
    width: int = 0


class BaseRecommender(nn.Module):
    """``forward(user, item) = head(body(user, item)).squeeze(-1)``."""

    head: nn.Module

    def body(self, user: Features, item: Features) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, user: Features, item: Features) -> torch.Tensor:
        return self.head(self.body(user, item)).squeeze(-1)

    def scope_split(self, scope: str) -> tuple[Callable[[Features, Features], torch.Tensor] | None, nn.Module]:
        """``(prefix, adapted)``: ``adapted(prefix(user, item))`` equals ``forward`` up to a final squeeze.

        ``prefix`` is the part that does not adapt under ``scope`` (``None`` for ``all``, where the
        adapted module is the whole model and takes ``(user, item)``).
        """
        if scope == "all":
            return None, self
        if scope == "head":
            return self.body, self.head
        if scope == "output":
            lower = self.head[:-1]
            return (lambda user, item: lower(self.body(user, item))), self.head[-1]
        if scope == "lora":
            raise ConfigError(f"learner.scope=lora needs a model with LoRA adapters (model=transformer, model.lora_rank > 0), "
                              f"not {type(self).__name__}")
        raise ConfigError(f"unknown adaptation scope {scope!r} (known: {', '.join(SCOPES)})")

    @classmethod
    def has_scope(cls, scope: str, cfg: Any) -> bool:
        """Whether a model of this class built from ``cfg`` (its config object) can adapt ``scope`` -- what
        ``scope_split`` accepts, known before the model is built (``metarec compare`` leaves a learner
        option whose scope the chosen model lacks out of its default list)."""
        return scope in BASE_SCOPES

    def adapts(self, scope: str) -> Callable[[str], bool] | None:
        """Which parameters of the adapted module (by name inside it) adapt per task; ``None``: all of them.
        The others are still meta-learned, in the outer loop only."""
        return None

    def adapted_parameter_names(self, scope: str) -> list[str]:
        """Names (as in ``named_parameters``) of the parameters adapted per task under ``scope``."""
        _, module = self.scope_split(scope)
        keep = self.adapts(scope)
        ids = {id(p) for n, p in module.named_parameters() if keep is None or keep(n)}
        return [n for n, p in self.named_parameters() if id(p) in ids]

    def serve(self, params: dict[str, torch.Tensor], user: Features, items: Features) -> torch.Tensor | None:
        """A serving-only shortcut for ``forward`` with per-task ``params`` (model parameter names ->
        ``[T, *shape]``) on users ``[T, ...]`` and items ``[T, N, ...]``, or ``None`` (the default): score
        the usual way. Executors consult it when scoring (see ``MeLU.serve``)."""
        return None

    splits_body = False  # whether ``split_body`` is implemented

    def split_body(self, user: Features, item: Features, offsets: tuple[dict, dict] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """``body`` as its user part ``[..., Du]`` and item part ``[..., N, Di]``, where ``body`` is
        ``[user part; item part]`` per item, computed as usual (training included; no cache) -- for models
        with ``splits_body``. The vmap executor keeps the head's first layer on the two parts apart
        (``executors/factored.py``: the user's part once per task, no ``[..., N, Du + Di]`` concatenation).
        ``offsets``: with ``linear_fields``, per side (user, item) a dict from a field's ``position`` to a term
        added to that field's linear output (before any mean over a field's active values)."""
        raise NotImplementedError(f"{type(self).__name__} does not split its body")

    def linear_fields(self) -> list[LinearField] | None:
        """The body's fields, every one linear in its raw input, when the whole body is made of them (and
        ``split_body`` takes ``offsets``): the vmap executor then keeps their per-task updates factored under
        scope ``all`` (``executors/factored_fields.py``). ``None`` (the default): not so."""
        return None

    def body_parts(self, user: Features, item: Features) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A serving-only split of ``body`` for users ``[T, ...]`` and items ``[T, N, ...]``: its user part
        ``[T, Du]`` and item part ``[T, N, Di]``, where ``body`` is ``[user part; item part]`` per item, or
        ``None``: no such split (the default), or not serving (outside ``item_cache.serving()``, in training
        mode or with gradients recorded: implementations must check, learners call it unconditionally).
        Learners that read the body (``amortised``) then apply linear maps to each part separately, the
        user's once per user (see ``MeLU.body_parts``)."""
        return None

    def set_output_bias(self, value: float) -> None:
        """Start the output at ``value`` (e.g. the mean training rating) so training starts centred."""
        last = [m for m in self.head.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            last.bias.fill_(value)
