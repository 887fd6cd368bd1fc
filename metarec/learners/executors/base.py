"""The executor contract and what both executors share: settings, set-up, adapt/score, gradient clipping."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.func import functional_call, vmap

from metarec.data.episodes import EpisodeBatch, Support
from metarec.errors import ConfigError
from metarec.learners.base import task_loss
from metarec.learners.executors.rules import InnerRule
from metarec.data.features import Features
from metarec.models.base import BaseRecommender
from metarec.models.item_cache import is_serving


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


@dataclass(frozen=True)
class ExecutorSettings:
    """How a learner's inner loop runs: the adapted ``scope``, the update ``rule`` (scalar rate, learned
    rates, ...), first or second order in meta-training, optional clipping of each task's inner gradient
    to a global L2 norm, the per-task ``loss`` of the query (``mse`` | ``mae`` | ``bce`` | ``softmax``; the
    support's is the same, except squared error under ``mae``: an inner step moves by how far each rating is)
    and, for ``vmap``, tasks per vectorised chunk."""

    scope: str
    rule: InnerRule
    first_order: bool = False
    inner_grad_clip: float | None = None
    loss: str = "mse"
    chunk_size: int | None = None

    def check(self) -> None:
        if self.inner_grad_clip is not None and not self.inner_grad_clip > 0:
            raise ConfigError(f"learner.inner_grad_clip must be > 0 or null, got {self.inner_grad_clip}")


class Executor:
    """Shared set-up: the adapted module wrapped in the rule's learn2learn algorithm (it also owns
    Meta-SGD's learned rates, so both executors train the very same parameters)."""

    def __init__(self, model: BaseRecommender, settings: ExecutorSettings):
        settings.check()
        self.settings = settings
        self.rule = settings.rule
        self.prefix, module = model.scope_split(settings.scope)
        self.loss_fn = task_loss(settings.loss)  # per-task masked loss of the query
        self.support_loss_fn = task_loss("mse" if settings.loss == "mae" else settings.loss)  # the inner loop's
        self.wrapper = self.rule.wrap(module, settings.first_order)
        self.inner_grad_clip = settings.inner_grad_clip
        self.chunk_size = settings.chunk_size
        keep = model.adapts(settings.scope)
        self.all_names = [n for n, _ in module.named_parameters()]
        self.names = [n for n in self.all_names if keep is None or keep(n)]  # adapted per task
        self._adapted = set(self.names)
        self.partial = len(self.names) < len(self.all_names)
        self.model = model

    def model_names(self) -> dict[str, str]:
        """The adapted module's parameter names -> the same parameters' names in the model."""
        full = {id(p): n for n, p in self.model.named_parameters()}
        return {n: full[id(p)] for n, p in self.module.named_parameters() if id(p) in full}

    def rates(self) -> dict[str, Any]:
        """The inner rate of each adapted parameter (the rule's)."""
        return self.rule.rates(self.wrapper, self.all_names, self.names)

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
        in ``names`` order; and the mean query loss after adaptation."""
        raise NotImplementedError

    def adapt(self, user: Features, support: Support, steps: int) -> dict[str, torch.Tensor]:
        """Each task's adapted parameters ``{name: [T, *shape]}`` after ``steps`` first-order steps on
        its support (no graph; the meta-parameters are never written)."""
        phis, _ = self.adapted_parameters(support.as_batch(user), steps)
        return dict(zip(self.names, phis))

    def score(self, params: dict[str, torch.Tensor], user: Features, items: Features) -> torch.Tensor:
        """Outputs ``[T, N]`` for items ``[T, N, ...]`` with each task's adapted ``params`` (from ``adapt``);
        when serving, through the model's own shortcut where it has one (``BaseRecommender.serve``)."""
        if is_serving():  # Recommender scoring a user (never during training or evaluation)
            names = self.model_names()
            if all(n in names for n in params):
                out = self.model.serve({names[n]: v for n, v in params.items()}, user, items)
                if out is not None:
                    return out
        fixed = {n: p.detach() for n, p in self.fixed_params().items()}

        def one(params: dict, user: Features, items: Features) -> torch.Tensor:
            params = {**fixed, **params}
            if self.prefix is None:
                return functional_call(self.module, params, (user, items))
            return functional_call(self.module, params, (self.prefix(user, items),)).squeeze(-1)

        with torch.no_grad():
            return vmap(one, chunk_size=self.chunk_size)(params, user, items)


