"""MeLU's base recommender (Lee et al., KDD 2019).

Every categorical field gets an embedding of size ``embed_dim``; every multi-hot field goes through a
bias-free linear map divided by the number of active values (the mean of its value embeddings).
All field vectors are concatenated; the decision layers are FC(hidden[0]) - ReLU - ... - Linear(1).
Only the decision layers adapt per user in MeLU (scope ``head``).

Serving (``MeLU.serve``, only inside ``item_cache.serving()``) scores a catalogue without the
concatenation: the first decision layer is linear in ``[e_u; e_i]``, so ``W [e_u; e_i] + b =
(W_u e_u + b) + W_i e_i``; the user part is one vector per user, and the item part is computed field by
field (``FieldProduct``): a categorical field with fewer rows than the items scored goes through its
table's product with its block of ``W_i`` once per user (then one row lookup per item), the multi-hot
fields' value embeddings are folded into their blocks, and only a table with as many rows as items (an
item id) is multiplied per item. Training and evaluation never take it. ``MeLU.body_parts`` gives the
item field vectors and the user's to learners that read the body (``amortised``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

try:  # whether a tensor is a torch.func wrapper (a per-task copy under vmap): a private torch function
    from torch._C._functorch import is_functorch_wrapped_tensor
except ImportError:  # pragma: no cover - another torch: mask every table's padding (same numbers, a bit slower)
    def is_functorch_wrapped_tensor(t: torch.Tensor) -> bool:
        return True

from metarec.data.schema import FeatureSchema
from metarec.data.features import Features
from metarec.models.base import BaseRecommender, LinearField
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

    def forward(self, x: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
        """``offset``: added to the linear output before the mean (``MeLU.split_body``'s offsets)."""
        count = x.sum(-1, keepdim=True).clamp_min(1.0)
        out = self.linear(x)
        return (out if offset is None else out + offset) / count


def padded_lookup(e: nn.Embedding, idx: torch.Tensor) -> torch.Tensor:
    """``e(idx)``, its positions holding the padding index (unknown values: code 0) passing no gradient, also
    when the table is a per-task copy under ``vmap``: there torch's embedding (2.14) gives the padding row a
    gradient from every task but the first (its batching rule offsets the indices and loses ``padding_idx``),
    so meta-gradients through an unknown value differed from learn2learn's. Same values as ``e(idx)``; a
    plain table (not a ``torch.func`` wrapper) takes ``e(idx)`` itself (the masking costs 5-7% of a step)."""
    if type(e) is not nn.Embedding or e.padding_idx is None or not is_functorch_wrapped_tensor(e.weight):
        return e(idx)
    out = F.embedding(idx, e.weight, None, e.max_norm, e.norm_type, e.scale_grad_by_freq, e.sparse)
    if not torch.is_grad_enabled():
        return out
    return torch.where((idx == e.padding_idx).unsqueeze(-1), out.detach(), out)


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

    def vectors(self, x: Features, offsets: dict[int, torch.Tensor] | None = None) -> list[torch.Tensor]:
        """One vector per field; ``offsets`` (field position -> term): terms added to those fields' linear
        outputs, before a multi-hot field's mean (``MeLU.split_body``)."""
        sparse = sparse_grads()  # serving's inner loop (item_cache.sparse_embedding_grads): the same vectors
        parts = [self._sparse(e, x.categorical[..., j]) if sparse and e.num_embeddings >= SPARSE_MIN_ROWS
                 else padded_lookup(e, x.categorical[..., j]) for j, e in enumerate(self.categorical)]
        offsets = offsets or {}
        parts = [p + offsets[j] if j in offsets else p for j, p in enumerate(parts)]
        if self.multihot:
            chunks = torch.split(x.multihot, self.widths, dim=-1)
            for k, (emb, chunk) in enumerate(zip(self.multihot, chunks)):
                o = offsets.get(len(self.categorical) + k)
                if o is None:
                    parts.append(emb(chunk))
                else:
                    parts.append(emb(chunk, o) if type(emb) is MultiHotEmbedding else emb(chunk) + o)
        return parts

    def linear_fields(self, side: str, prefix: str) -> list[LinearField] | None:
        """This encoder's fields as ``LinearField`` (parameter names under ``prefix``), or ``None`` if one of
        its modules is not a plain padded embedding, a multi-hot mean or a linear map with bias."""
        fields: list[LinearField] = []
        for j, e in enumerate(self.categorical):
            if type(e) is not nn.Embedding or e.padding_idx != 0 or e.max_norm is not None or e.scale_grad_by_freq:
                return None
            fields.append(LinearField(side, j, f"{prefix}categorical.{j}.weight", None, j))
        start = 0
        for k, (m, width) in enumerate(zip(self.multihot, self.widths)):
            position = len(self.categorical) + k
            if type(m) is MultiHotEmbedding and m.linear.bias is None:
                fields.append(LinearField(side, position, f"{prefix}multihot.{k}.linear.weight", None, None, start, width))
            elif type(m) is nn.Linear and m.bias is not None:
                fields.append(LinearField(side, position, f"{prefix}multihot.{k}.weight", f"{prefix}multihot.{k}.bias",
                                          None, start, width))
            else:
                return None
            start += width
        return fields

    @staticmethod
    def _sparse(e: nn.Embedding, idx: torch.Tensor) -> torch.Tensor:
        """``e(idx)`` with a sparse gradient of ``e.weight`` (flat codes: the sparse backward needs at least
        one index dimension)."""
        out = F.embedding(idx.reshape(-1), e.weight, e.padding_idx, e.max_norm, e.norm_type, e.scale_grad_by_freq,
                          sparse=True)
        return out.view(*idx.shape, e.embedding_dim)


class FieldProduct:
    """``torch.cat(encoder.vectors(x), -1) @ w.T`` for items ``x``, computed field by field (serving a
    catalogue, ``MeLU.serve``) with the encoder's parameters ``params`` (names relative to the encoder, e.g.
    a user's adapted copy). A categorical field whose table has fewer rows than ``n_items`` (the items to
    score) is multiplied by its block of ``w`` once, ``[rows, H]``, then looked up per item; a larger one
    (an item-id table) is looked up and multiplied per item. A multi-hot field's map is folded into its block
    (``[width, H]``, applied to the field's normalised inputs: :meth:`inputs`). Equal to the concatenated
    product up to float rounding."""

    def __init__(self, encoder: "FieldVectors", params: dict[str, torch.Tensor], w: torch.Tensor, n_items: int) -> None:
        blocks = w.split(w.shape[1] // encoder.n, dim=1)  # [H, dim] per field, in ``vectors``' order
        self.lookup: list[tuple[int, torch.Tensor]] = []  # (column, [rows, H]) of small tables
        self.multiply: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (column, table, block.T) of large ones
        for j in range(len(encoder.categorical)):
            table = params[f"categorical.{j}.weight"]
            if table.shape[0] < n_items:
                self.lookup.append((j, table @ blocks[j].T))
            else:
                self.multiply.append((j, table, blocks[j].T))
        folds, self.offset = [], None
        for k, module in enumerate(encoder.multihot):
            block = blocks[len(encoder.categorical) + k]
            if type(module) is MultiHotEmbedding:
                folds.append((block @ params[f"multihot.{k}.linear.weight"]).T)
            else:  # a dense field's projection, with its bias
                folds.append((block @ params[f"multihot.{k}.weight"]).T)
                bias = block @ params[f"multihot.{k}.bias"]
                self.offset = bias if self.offset is None else self.offset + bias
        self.fold = torch.cat(folds) if folds else None  # [sum of widths, H]

    @staticmethod
    def supports(encoder: "FieldVectors") -> bool:
        """Whether the encoder is made of the modules this product knows (else: the concatenated path)."""
        return (type(encoder) in (FieldVectors, FieldEncoder) and encoder.n > 0
                and all(type(e) is nn.Embedding and e.max_norm is None for e in encoder.categorical)
                and all(type(m) is MultiHotEmbedding or (type(m) is nn.Linear and m.bias is not None)
                        for m in encoder.multihot))

    @staticmethod
    def inputs(encoder: "FieldVectors", multihot: torch.Tensor) -> torch.Tensor:
        """The multi-hot block as the folded maps take it: each 0/1 field divided by its number of active
        values (at least 1), dense fields as they are. Independent of the parameters (kept per catalogue)."""
        if not encoder.multihot:
            return multihot
        parts = torch.split(multihot, encoder.widths, dim=-1)
        return torch.cat([x / x.sum(-1, keepdim=True).clamp_min(1.0) if type(m) is MultiHotEmbedding else x
                          for m, x in zip(encoder.multihot, parts)], dim=-1)

    def __call__(self, start: torch.Tensor, categorical: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """``start + (the items' field vectors) @ w.T`` for items ``[N, ...]`` (``inputs``: :meth:`inputs` of
        their multi-hot block): ``[N, H]``, a new tensor."""
        if self.offset is not None:
            start = start + self.offset
        h = None
        for j, table, wt in self.multiply:
            rows = F.embedding(categorical[:, j], table)
            h = torch.addmm(start, rows, wt) if h is None else h.addmm_(rows, wt)
        for j, product in self.lookup:
            rows = F.embedding(categorical[:, j], product)
            h = rows.add_(start) if h is None else h.add_(rows)
        if self.fold is not None:
            h = torch.addmm(start, inputs, self.fold) if h is None else h.addmm_(inputs, self.fold)
        return h


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
        self._item_cache = ItemSideCache()  # serving: the catalogue's item field vectors (``body_parts``)
        self._inputs_cache = ItemSideCache()  # serving: the catalogue's normalised multi-hot inputs (``serve``)

    def body(self, user: Features, item: Features) -> torch.Tensor:
        return self.combine(*self.split_body(user, item))

    splits_body = True

    def split_body(self, user: Features, item: Features, offsets: tuple[dict, dict] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The user's field vectors ``[..., Du]`` and the items' ``[..., N, Di]`` (``body`` concatenates them);
        ``offsets``: see ``BaseRecommender.split_body``."""
        if offsets is None:
            return self.user_encoder(user), self.item_encoder(item)
        return (torch.cat(self.user_encoder.vectors(user, offsets[0]), dim=-1),
                torch.cat(self.item_encoder.vectors(item, offsets[1]), dim=-1))

    def linear_fields(self) -> list[LinearField] | None:
        """Every field of both encoders (``FieldVectors.linear_fields``), or ``None`` if one is not linear."""
        user = self.user_encoder.linear_fields("user", "user_encoder.")
        item = self.item_encoder.linear_fields("item", "item_encoder.")
        return None if user is None or item is None else user + item

    @property
    def splits_first_layer(self) -> bool:
        """Whether :meth:`forward_split` applies: the head starts with a plain linear layer."""
        return len(self.head) > 0 and type(self.head[0]) is nn.Linear

    def forward_split(self, user: Features, item: Features) -> torch.Tensor:
        """``forward`` with the head's first layer applied to the body's user and item parts apart: the user's
        part ``u W_u^T + b`` once per user, broadcast over its items, and ``i W_i^T`` per item, instead of the
        ``[..., items, Du + Di]`` concatenation multiplied whole -- about half the first layer's work, forward
        and backward (the weight's user block gets a rank-one gradient). Equal to ``forward`` up to float
        rounding; the vmap executor uses it for large supports (``VmapExecutor.split_above``)."""
        first = self.head[0]
        u, i = self.split_body(user, item)
        du = u.shape[-1]
        hu = u @ first.weight[:, :du].T
        if first.bias is not None:
            hu = hu + first.bias
        while hu.dim() < i.dim():  # a user [T, H] over its item positions [T, L, H]
            hu = hu.unsqueeze(-2)
        h = i @ first.weight[:, du:].T + hu
        for layer in list(self.head)[1:]:
            h = layer(h)
        return h.squeeze(-1)

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
        concatenation, the user part once per task); the item part is computed field by field with the
        task's item encoder (``FieldProduct``; an encoder of other modules: the item field vectors, from
        memory while no item-encoder parameter adapts); the items go through the head in chunks."""
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
        by_field = FieldProduct.supports(self.item_encoder)
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
            # with a single task, the caller's very tensors (the caches then know them without comparing them)
            whole = items if items.categorical.shape[0] == 1 else Features(cat[None], multi[None])
            if by_field:  # the item part field by field with the task's (maybe adapted) item encoder
                enc = {n[len("item_encoder."):]: v for n, v in p.items() if n.startswith("item_encoder.")}
                product = FieldProduct(self.item_encoder, enc, w[:, du:], cat.shape[0])
                inputs = self._inputs_cache(self.item_encoder, whole,
                                            lambda x: FieldProduct.inputs(self.item_encoder, x.multihot))[0]
            elif not item_adapts:  # [N, Di] from memory
                ei = self._item_cache(self.item_encoder, whole, self.item_encoder)[0]
            chunks = []
            for s in range(0, cat.shape[0], SERVE_CHUNK):
                if by_field:
                    h = product(hu, cat[s : s + SERVE_CHUNK], inputs[s : s + SERVE_CHUNK])
                else:
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
