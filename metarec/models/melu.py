"""MeLU's base recommender (Lee et al., KDD 2019).

Every categorical field gets an embedding of size ``embed_dim``; every multi-hot field goes through a
bias-free linear map divided by the number of active values (the mean of its value embeddings).
All field vectors are concatenated; the decision layers are FC(hidden[0]) - ReLU - ... - Linear(1).
Only the decision layers adapt per user in MeLU (scope ``head``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from metarec.data.schema import FeatureSchema
from metarec.data.features import Features
from metarec.models.base import BaseRecommender


@dataclass
class MeLUConfig:
    embed_dim: int = 32
    hidden: list[int] = field(default_factory=lambda: [64, 64])


class MultiHotEmbedding(nn.Module):
    """Mean of the embeddings of the active values of one multi-hot field (0 if none is active)."""

    def __init__(self, width: int, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        count = x.sum(-1, keepdim=True).clamp_min(1.0)
        return self.linear(x) / count


class FieldVectors(nn.Module):
    """One ``dim``-vector per field of one entity kind: categorical fields by embedding, multi-hot fields
    by the mean of their value embeddings, dense fields (e.g. a text embedding) by a linear projection."""

    def __init__(self, categorical, multihot, dim: int) -> None:
        super().__init__()
        self.categorical = nn.ModuleList(nn.Embedding(f.cardinality, dim, padding_idx=0) for f in categorical)
        self.multihot = nn.ModuleList(
            nn.Linear(f.width, dim) if getattr(f, "dense", False) else MultiHotEmbedding(f.width, dim) for f in multihot
        )
        self.widths = [f.width for f in multihot]
        self.n = len(categorical) + len(multihot)

    def vectors(self, x: Features) -> list[torch.Tensor]:
        parts = [emb(x.categorical[..., j]) for j, emb in enumerate(self.categorical)]
        if self.multihot:
            parts += [emb(chunk) for emb, chunk in zip(self.multihot, torch.split(x.multihot, self.widths, dim=-1))]
        return parts


class FieldEncoder(FieldVectors):
    """The field vectors of one entity kind, concatenated: ``[..., fields * dim]``."""

    def __init__(self, categorical, multihot, dim: int) -> None:
        super().__init__(categorical, multihot, dim)
        self.out_dim = dim * self.n

    def forward(self, x: Features) -> torch.Tensor:
        return torch.cat(self.vectors(x), dim=-1)


class MeLU(BaseRecommender):
    def __init__(self, schema: FeatureSchema, cfg: MeLUConfig) -> None:
        super().__init__()
        self.user_encoder = FieldEncoder(schema.user_categorical, schema.user_multihot, cfg.embed_dim)
        self.item_encoder = FieldEncoder(schema.item_categorical, schema.item_multihot, cfg.embed_dim)
        layers: list[nn.Module] = []
        width = self.user_encoder.out_dim + self.item_encoder.out_dim
        for h in cfg.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.head = nn.Sequential(*layers)

    def body(self, user: Features, item: Features) -> torch.Tensor:
        return self.combine(self.user_encoder(user), self.item_encoder(item))

    @staticmethod
    def combine(u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """The body from encoded users and items (item encodings can be cached when serving)."""
        while u.dim() < i.dim():  # user features [T, F] broadcast over item positions [T, L, F]
            u = u.unsqueeze(-2)
        return torch.cat([u.expand(*i.shape[:-1], u.shape[-1]), i], dim=-1)
