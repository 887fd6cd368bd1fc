"""MeLU's base recommender (Lee et al., KDD 2019).

Every categorical field gets an embedding of size ``embed_dim``; every multi-hot field goes through a
bias-free linear map divided by the number of active values (the mean of its value embeddings).
All field vectors are concatenated; the decision layers are FC(hidden[0]) - ReLU - ... - Linear(1).
Only the decision layers adapt per user in MeLU (scope ``head``).

Serving (``MeLU.serve``, only inside ``item_cache.serving()``) scores a catalogue without the
concatenation: the first decision layer is linear in ``[e_u; e_i]``, so ``W [e_u; e_i] + b =
(W_u e_u + b) + W_i e_i``; the user part is one vector per user, and the item field vectors ``e_i`` are
remembered per catalogue while the item encoder does not adapt. Training and evaluation never take it.
``MeLU.body_parts`` gives the same two parts to learners that read the body (``amortised``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metarec.data.schema import FeatureSchema
from metarec.data.features import Features
from metarec.models.base import BaseRecommender
from metarec.models.item_cache import ItemSideCache, is_serving, sparse_grads

SERVE_CHUNK = 8192  # items per pass through the head when serving: temporaries stay small and in cache


# Inside item_cache.sparse_embedding_grads, tables of at least this many rows give sparse gradients:
# finetune's serving inner loop (5 steps, scope all) took 24 ms instead of 98 ms with a 100,001-row
# item-id table, but 17 ms instead of 11 ms with ml-100k's tables of at most 1,683 rows (the sparse
# gradient's coalescing and sparse-dense arithmetic cost more than a small dense table's update).
SPARSE_MIN_ROWS = 10_000


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
        sparse = sparse_grads()  # serving's inner loop (item_cache.sparse_embedding_grads): the same vectors
        parts = [self._sparse(e, x.categorical[..., j]) if sparse and e.num_embeddings >= SPARSE_MIN_ROWS
                 else e(x.categorical[..., j]) for j, e in enumerate(self.categorical)]
        if self.multihot:
            parts += [emb(chunk) for emb, chunk in zip(self.multihot, torch.split(x.multihot, self.widths, dim=-1))]
        return parts

    @staticmethod
    def _sparse(e: nn.Embedding, idx: torch.Tensor) -> torch.Tensor:
        """``e(idx)`` with a sparse gradient of ``e.weight`` (flat codes: the sparse backward needs at least
        one index dimension)."""
        out = F.embedding(idx.reshape(-1), e.weight, e.padding_idx, e.max_norm, e.norm_type, e.scale_grad_by_freq,
                          sparse=True)
        return out.view(*idx.shape, e.embedding_dim)


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
        self._item_cache = ItemSideCache()  # serving: the catalogue's item field vectors

    def body(self, user: Features, item: Features) -> torch.Tensor:
        return self.combine(self.user_encoder(user), self.item_encoder(item))

    @staticmethod
    def combine(u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """The body from encoded users and items (item encodings can be cached when serving)."""
        while u.dim() < i.dim():  # user features [T, F] broadcast over item positions [T, L, F]
            u = u.unsqueeze(-2)
        return torch.cat([u.expand(*i.shape[:-1], u.shape[-1]), i], dim=-1)

    def _serving(self) -> bool:
        """Whether the serving shortcuts apply: inside ``item_cache.serving()``, eval mode, no gradient."""
        return is_serving() and not self.training and not torch.is_grad_enabled()

    def body_parts(self, user: Features, item: Features) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Serving only (inside ``item_cache.serving()``, eval mode, no grad; else ``None``): the user's field
        vectors ``[T, Du]`` and the items' ``[T, N, Di]`` (from memory for a catalogue); ``body`` is their
        concatenation per item."""
        if not self._serving():
            return None
        return self.user_encoder(user), self._item_cache(self.item_encoder, item, self.item_encoder)

    def serve(self, params: dict[str, torch.Tensor], user: Features, items: Features) -> torch.Tensor | None:
        """Serving only (inside ``item_cache.serving()``, eval mode, no grad; else ``None``): outputs ``[T, N]``
        for users ``[T, ...]`` and items ``[T, N, ...]``, equal to ``forward`` with each task's adapted
        ``params`` (model parameter names -> ``[T, *shape]``; the rest are the model's own) up to float
        rounding. The first layer is split into its user and item parts (no ``[N, fields * dim]``
        concatenation, the user part once per task); the item field vectors come from memory while no
        item-encoder parameter adapts (every scope but ``all``); the items go through the head in chunks."""
        head = self.head
        if not self._serving() or items.categorical.dim() != 3:
            return None
        if not (len(head) and type(head[0]) is nn.Linear):
            return None
        own = dict(self.named_parameters())
        if not set(params) <= set(own):
            return None
        du = self.user_encoder.out_dim
        rest = list(head.named_children())[1:]
        item_adapts = any(n.startswith("item_encoder.") for n in params)
        outs: list[torch.Tensor] = []
        for t in range(items.categorical.shape[0]):
            p = {**own, **{n: v[t] for n, v in params.items()}}
            u = Features(user.categorical[t], user.multihot[t])
            eu = self._encode(self.user_encoder, "user_encoder.", p, params, u)  # [Du]
            w, b = p["head.0.weight"], p.get("head.0.bias")
            hu = eu @ w[:, :du].T
            if b is not None:
                hu = hu + b
            wi = w[:, du:].T
            cat, multi = items.categorical[t], items.multihot[t]
            if not item_adapts:  # [N, Di] from memory; with a single task, the caller's very tensors (the
                # cache then knows them without comparing them)
                whole = items if items.categorical.shape[0] == 1 else Features(cat[None], multi[None])
                ei = self._item_cache(self.item_encoder, whole, self.item_encoder)[0]
            chunks = []
            for s in range(0, cat.shape[0], SERVE_CHUNK):
                if item_adapts:  # this chunk's item field vectors with the task's item encoder
                    x = self._encode(self.item_encoder, "item_encoder.", p, params,
                                     Features(cat[s : s + SERVE_CHUNK], multi[s : s + SERVE_CHUNK]))
                else:
                    x = ei[s : s + SERVE_CHUNK]
                h = torch.addmm(hu, x, wi)
                for name, layer in rest:
                    if type(layer) is nn.Linear:
                        h = F.linear(h, p[f"head.{name}.weight"], p.get(f"head.{name}.bias"))
                    elif type(layer) is nn.ReLU:
                        h = h.relu_()  # a temporary of ours
                    else:
                        inner = {n: p[f"head.{name}.{n}"] for n, _ in layer.named_parameters()}
                        h = functional_call(layer, inner, (h,)) if inner else layer(h)
                chunks.append(h.squeeze(-1))
            outs.append(torch.cat(chunks) if len(chunks) > 1 else chunks[0])
        return torch.stack(outs)

    @staticmethod
    def _encode(encoder: FieldEncoder, prefix: str, p: dict, adapted: dict, x: Features) -> torch.Tensor:
        """``encoder(x)`` with the task's parameters ``p`` (its own when none of them adapts)."""
        if any(n.startswith(prefix) for n in adapted):
            return functional_call(encoder, {n[len(prefix):]: v for n, v in p.items() if n.startswith(prefix)}, (x,))
        return encoder(x)
