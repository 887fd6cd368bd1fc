"""A two-tower (dot-product) base recommender: score = bias + item bias + <user vector, item vector>.

MLPs over concatenated embeddings (``melu``) learn inner products poorly (Rendle et al., RecSys 2020,
"Neural collaborative filtering vs. matrix factorization revisited"); cold-start retrieval models are
usually two towers. Here:

- the **item tower** reads every item field — the id embedding (hidden for new items, and under
  ``data.item_id_dropout`` for a share of training positions), categorical and multi-hot fields, the
  dense text field — through an MLP (``item_hidden``) to the item vector ``v`` (``dim``), and a linear
  map of the same field vectors to the item bias ``b_i``;
- the **user tower** reads the user fields through an MLP (``user_hidden``) to ``h_u``;
- the **head** is the user vector ``u = W h_u + c`` and the output layer: ``Linear([u * v, b_i])``,
  initialised to weights 1 (so the score starts as ``<u, v> + b_i + bias``).

Scopes: ``head`` adapts the user vector's projection and the output layer — a new user's vector moves
while item vectors (computed once per meta-batch) stay fixed, the cheap per-user adaptation of a
dot-product model; ``output`` adapts the output layer only; ``all`` adapts both towers. With the item
side independent of the user, every learner and executor works on it as on ``melu``; the amortised
learner modulates its output layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from metarec.data.features import Features
from metarec.data.schema import FeatureSchema
from metarec.errors import ConfigError
from metarec.models.base import BaseRecommender
from metarec.models.melu import FieldEncoder


@dataclass
class TwoTowerConfig:
    embed_dim: int = 32  # per-field embedding size
    dim: int = 32  # size of the user and item vectors
    user_hidden: list[int] = field(default_factory=lambda: [64])
    item_hidden: list[int] = field(default_factory=lambda: [64])


def mlp(width: int, hidden: list[int], out: int | None = None) -> tuple[nn.Sequential, int]:
    """Linear-ReLU layers of widths ``hidden`` (then a final linear layer to ``out``, if given)."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    if out is not None:
        layers.append(nn.Linear(width, out))
        width = out
    return nn.Sequential(*layers), width


class UserVector(nn.Module):
    """``[h_u, v, b_i] -> [u * v, b_i]`` with the user vector ``u = W h_u + c``."""

    def __init__(self, user_width: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(user_width, dim)
        self.user_width, self.dim = user_width, dim
        self.in_features = user_width + dim + 1  # the body's width, as a first linear layer would declare it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, v, b = torch.split(x, [self.user_width, self.dim, 1], dim=-1)
        return torch.cat([self.proj(h) * v, b], dim=-1)


class TwoTower(BaseRecommender):
    def __init__(self, schema: FeatureSchema, cfg: TwoTowerConfig) -> None:
        super().__init__()
        if cfg.embed_dim < 1 or cfg.dim < 1 or any(h < 1 for h in [*cfg.user_hidden, *cfg.item_hidden]):
            raise ConfigError("model.embed_dim, model.dim, model.user_hidden and model.item_hidden must be >= 1")
        self.user_encoder = FieldEncoder(schema.user_categorical, schema.user_multihot, cfg.embed_dim)
        self.item_encoder = FieldEncoder(schema.item_categorical, schema.item_multihot, cfg.embed_dim)
        self.user_tower, user_width = mlp(self.user_encoder.out_dim, cfg.user_hidden)
        self.item_tower, _ = mlp(self.item_encoder.out_dim, cfg.item_hidden, cfg.dim)
        self.item_bias = nn.Linear(self.item_encoder.out_dim, 1, bias=False)
        nn.init.zeros_(self.item_bias.weight)
        out = nn.Linear(cfg.dim + 1, 1)
        with torch.no_grad():
            out.weight.fill_(1.0)
            out.bias.zero_()
        self.head = nn.Sequential(UserVector(user_width, cfg.dim), out)

    def item_side(self, item: Features) -> torch.Tensor:
        """``[..., dim + 1]``: each item's vector and bias (independent of the user)."""
        f = self.item_encoder(item)
        return torch.cat([self.item_tower(f), self.item_bias(f)], dim=-1)

    def body(self, user: Features, item: Features) -> torch.Tensor:
        h = self.user_tower(self.user_encoder(user))
        i = self.item_side(item)
        while h.dim() < i.dim():  # user features [T, F] broadcast over item positions [T, L, F]
            h = h.unsqueeze(-2)
        return torch.cat([h.expand(*i.shape[:-1], h.shape[-1]), i], dim=-1)
