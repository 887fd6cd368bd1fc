"""``fism``: amortised fold-in for the two-tower model — a new user's vector is read off their support
items' vectors, meta-trained episode by episode (support -> query), with no inner gradient steps.

In the spirit of FISM (Kabbur et al., KDD 2013) and of item-based fold-in (ItemKNN, EASE), but learned
end to end on cold-start episodes like a neural process: for each task

    u = W h_u + c  +  P · sum_i v_i / n^alpha  +  R · sum_i r~_i v_i / n^alpha

where ``W h_u + c`` is the two-tower model's own user vector from the user's features, ``v_i`` the item
tower's vectors of the support items (the positives under implicit feedback; every rated item, plus a
rating-weighted pool with ``r~`` the centred, scaled rating, on explicit ratings), ``n`` their number
and ``alpha`` FISM's normalisation exponent. The score of any item is the model's own output layer on
``[u * v_j, b_j]``. ``P`` and ``R`` start at zero, so before training the learner is the two-tower
model. Adapting a new user is one pass of the item tower over the support; scoring the catalogue is one
matrix product with the item vectors. Needs ``model=twotower``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from metarec.data.episodes import EpisodeBatch, Support
from metarec.data.features import Features
from metarec.errors import ConfigError
from metarec.learners.base import LearnerContext, MetaLearner
from metarec.models.base import BaseRecommender


@dataclass
class FISMConfig:
    alpha: float = 0.5  # pooled support vectors are divided by n ** alpha (FISM's normalisation)
    rank_weight: float = 1.0  # weight of the in-batch sampled softmax (log-Q corrected) added to the query loss
    lr: float = 1e-3
    weight_decay: float = 0.0


class FISM(MetaLearner):
    needs_model = "twotower"  # the base model this learner is written for (tests and tables read it)

    def __init__(self, model: BaseRecommender, ctx: LearnerContext, cfg: FISMConfig) -> None:
        super().__init__(model, ctx, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if not (hasattr(model, "item_side") and hasattr(model, "user_tower")):
            raise ConfigError(f"learner fism needs a two-tower model (model=twotower), not {type(model).__name__}")
        if not 0.0 <= cfg.alpha <= 1.0:
            raise ConfigError(f"learner.alpha must be in [0, 1], got {cfg.alpha}")
        if not (math.isfinite(cfg.rank_weight) and cfg.rank_weight >= 0):
            raise ConfigError(f"learner.rank_weight must be a finite number >= 0, got {cfg.rank_weight}")
        self.cfg = cfg
        self.dim = model.head[0].dim
        self.pool = nn.Linear(self.dim, self.dim, bias=False)  # P
        self.rated = nn.Linear(self.dim, self.dim, bias=False)  # R (explicit ratings)
        for layer in (self.pool, self.rated):
            nn.init.zeros_(layer.weight)
        lo, hi = ctx.rating_range
        self.centre, self.scale = float(ctx.train_rating_mean), max((hi - lo) / 2.0, 1e-6)
        self.separate_rank = not ctx.binary_labels
        if self.separate_rank:  # explicit ratings: the ranking score's own user and item terms
            self.rank_user = nn.Linear(self.dim, self.dim, bias=False)
            self.rank_item = nn.Linear(model.item_encoder.out_dim, 1, bias=False)
            nn.init.zeros_(self.rank_user.weight)
            nn.init.zeros_(self.rank_item.weight)
        counts = np.bincount(ctx.train_items[0], minlength=ctx.n_items) if ctx.train_items is not None else np.zeros(ctx.n_items)
        logq = np.log((counts + 1.0) / (counts + 1.0).sum()) if ctx.n_items else np.zeros(0)
        self.register_buffer("logq", torch.as_tensor(logq, dtype=torch.float32), persistent=False)

    def adapt(self, user: Features, support: Support) -> torch.Tensor:
        """Each task's user vector ``[T, dim]`` from its features and support."""
        m = self.model
        u = m.head[0].proj(m.user_tower(m.user_encoder(user)))
        v = m.item_side(support.items)[..., : self.dim]  # [T, S, dim]
        if self.ctx.binary_labels:  # the positives; sampled negatives say little about a user
            keep, weight = support.mask & (support.ratings > 0.5), None
        else:
            keep = support.mask
            weight = ((support.ratings - self.centre) / self.scale).to(v.dtype)
        k = keep.to(v.dtype)
        norm = k.sum(-1, keepdim=True).clamp_min(1.0) ** self.cfg.alpha
        u = u + self.pool((v * k.unsqueeze(-1)).sum(-2) / norm)
        if weight is not None:
            u = u + self.rated((v * (k * weight).unsqueeze(-1)).sum(-2) / norm)
        return u

    def _outputs(self, u: torch.Tensor, items: Features, rank: bool) -> torch.Tensor:
        m = self.model
        f = m.item_encoder(items)
        v, b = m.item_tower(f), m.item_bias(f)  # [T, N, dim], [T, N, 1]
        u = u.unsqueeze(-2)
        out = m.head[-1](torch.cat([u * v, b], dim=-1)).squeeze(-1)
        if rank and self.separate_rank:
            out = out + (self.rank_user(u) * v).sum(-1) + self.rank_item(f).squeeze(-1)
        return out

    def score(self, state: torch.Tensor, item_ids: torch.Tensor, items: Features) -> torch.Tensor:
        return self._outputs(state, items, rank=False)

    def rank_score(self, state: torch.Tensor, item_ids: torch.Tensor, items: Features) -> torch.Tensor:
        return self._outputs(state, items, rank=True)

    def in_batch_softmax(self, u: torch.Tensor, batch: EpisodeBatch) -> torch.Tensor:
        """Each task's relevant query items against every other task's query items (log-Q corrected):
        mean over tasks with a relevant item of the mean over those items of ``lse(allowed) - s_pos``."""
        ids, items = batch.query()
        _, y, m = batch.part("query")
        t, q = ids.shape
        flat_ids, valid = ids.reshape(-1), m.reshape(-1)
        flat = Features(items.categorical.reshape(t * q, -1), items.multihot.reshape(t * q, -1))
        logits = self.rank_score(u, None, flat.for_tasks(t)) - self.logq[flat_ids]  # [T, T*Q]
        own = torch.zeros(t, t * q, dtype=torch.bool, device=ids.device)
        own.view(t, t, q)[torch.arange(t), torch.arange(t)] = m
        every = torch.cat([batch.item_ids[:, : batch.n_support], ids], dim=1)  # the task's own items
        seen = (flat_ids[None, :, None] == every[:, None, :]).any(-1) & ~own  # accidental hits
        allowed = valid[None, :] & ~seen
        relevant = (y > 0.5) if self.ctx.binary_labels else (y >= self.ctx.relevance_threshold)
        pos = torch.zeros_like(own)
        pos.view(t, t, q)[torch.arange(t), torch.arange(t)] = m & relevant
        lse = torch.logsumexp(logits.masked_fill(~allowed, -1e9), dim=-1, keepdim=True)
        per_task = ((lse - logits) * pos).sum(-1) / pos.sum(-1).clamp_min(1)
        has = pos.any(-1)
        return per_task[has].mean() if has.any() else logits.sum() * 0.0

    def training_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.adapt(batch.user, batch.support())
        out = self.score(u, *batch.query())
        _, y, m = batch.part("query")
        loss = self.loss_fn(out, y.to(out.dtype), m).mean()
        if self.cfg.rank_weight > 0:
            loss = loss + self.cfg.rank_weight * self.in_batch_softmax(u, batch)
        return loss, out


__all__ = ["FISM", "FISMConfig"]
