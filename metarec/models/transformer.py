"""A Transformer base recommender: every field becomes a token, self-attention mixes them.

Tokens: a learned [CLS] token, one per user field and one per item field (categorical: embedding;
multi-hot: mean of value embeddings; dense fields such as the text embedding: a linear projection), each
plus a learned field embedding. ``layers`` pre-norm blocks of multi-head self-attention and a GELU
feed-forward network; the [CLS] output goes through the MLP head (``head_hidden``) to one score.

Attention and layer normalisation are written with plain tensor ops (no fused kernels), so ``torch.func``
(``vmap``/``grad``) and learn2learn's clone/adapt work on them like on any module. (With torch 2.14,
``nn.LayerNorm`` under ``vmap`` of ``grad`` gives wrong second-order meta-gradients — they disagree with
plain autograd; ``tests/test_transformer.py`` pins the executors together, so this would show.)

LoRA: with ``lora_rank`` r > 0 every attention projection (q, k, v, o) and both feed-forward layers get a
low-rank adapter ``W x + (alpha / r) B A x`` with ``B = 0`` at initialisation, so the adapted model starts
equal to the meta-model. Scope ``lora`` adapts only the adapters and the head per user; the base weights
are meta-learned in the outer loop only.

Sizes: ``d_model`` 64, 2 layers, ffn 256 is about 0.1M parameters besides the embeddings; ``d_model`` 512,
``layers`` 12, ``heads`` 8, ``ffn`` 2048 is about 38M (see ``benchmarks/transformer_cost.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from metarec.data.schema import FeatureSchema
from metarec.errors import ConfigError
from metarec.data.features import Features
from metarec.models.base import BaseRecommender
from metarec.models.melu import FieldVectors


@dataclass
class TransformerConfig:
    d_model: int = 64
    layers: int = 2
    heads: int = 4
    ffn: int = 256
    head_hidden: list[int] = field(default_factory=lambda: [64])
    lora_rank: int = 0  # > 0: LoRA adapters (scope lora)
    lora_alpha: float = 8.0


class LoRALinear(nn.Module):
    """``nn.Linear`` plus an optional low-rank adapter ``(alpha / r) B A x`` (B starts at zero)."""

    def __init__(self, d_in: int, d_out: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = nn.Linear(d_in, d_out)
        self.rank = rank
        if rank > 0:
            self.lora_a = nn.Parameter(torch.randn(rank, d_in) / math.sqrt(d_in))
            self.lora_b = nn.Parameter(torch.zeros(d_out, rank))
            self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.rank > 0:
            out = out + self.scale * F.linear(F.linear(x, self.lora_a), self.lora_b)
        return out


class LayerNorm(nn.Module):
    """Layer normalisation over the last dimension, with a learned scale and shift (plain ops)."""

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(-1, keepdim=True)
        var = (x - mu).pow(2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + self.eps) * self.weight + self.bias


class Block(nn.Module):
    """Pre-norm self-attention and feed-forward, each with a residual connection."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        d, r, a = cfg.d_model, cfg.lora_rank, cfg.lora_alpha
        self.heads = cfg.heads
        self.norm1, self.norm2 = LayerNorm(d), LayerNorm(d)
        self.q, self.k, self.v, self.o = (LoRALinear(d, d, r, a) for _ in range(4))
        self.ff1, self.ff2 = LoRALinear(d, cfg.ffn, r, a), LoRALinear(cfg.ffn, d, r, a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *lead, n, d = x.shape
        h = self.norm1(x)

        def split(t: torch.Tensor) -> torch.Tensor:  # [..., n, d] -> [..., heads, n, d / heads]
            return t.reshape(*lead, n, self.heads, d // self.heads).transpose(-3, -2)

        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
        x = x + self.o((att @ v).transpose(-3, -2).reshape(*lead, n, d))
        return x + self.ff2(F.gelu(self.ff1(self.norm2(x))))


class Tokenizer(FieldVectors):
    """One token per field of one entity kind, plus a learned embedding of the field: ``[..., fields, d]``."""

    def __init__(self, categorical, multihot, d: int) -> None:
        super().__init__(categorical, multihot, d)
        self.field = nn.Parameter(torch.randn(self.n, d) * 0.02)

    def forward(self, x: Features) -> torch.Tensor:
        return torch.stack(self.vectors(x), dim=-2) + self.field


class Encoder(nn.Module):
    """Blocks over the token sequence; the final-normed [CLS] output ``[..., d]``."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = LayerNorm(cfg.d_model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens[..., 0, :])


class LoRAScope(nn.Module):
    """What scope ``lora`` runs per task: encoder then head, on the tokens (of which only the adapters
    and the head adapt)."""

    def __init__(self, encoder: Encoder, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(tokens))


class TransformerRec(BaseRecommender):
    def __init__(self, schema: FeatureSchema, cfg: TransformerConfig) -> None:
        super().__init__()
        if cfg.d_model % cfg.heads or min(cfg.d_model, cfg.heads, cfg.layers, cfg.ffn) < 1 or cfg.lora_rank < 0:
            raise ConfigError(
                f"model: d_model ({cfg.d_model}) must be a positive multiple of heads ({cfg.heads}); layers, ffn >= 1; "
                f"lora_rank >= 0"
            )
        d = cfg.d_model
        self.cfg = cfg
        self.user_tokens = Tokenizer(schema.user_categorical, schema.user_multihot, d)
        self.item_tokens = Tokenizer(schema.item_categorical, schema.item_multihot, d)
        self.cls = nn.Parameter(torch.randn(d) * 0.02)
        self.encoder = Encoder(cfg)
        layers: list[nn.Module] = []
        width = d
        for h in cfg.head_hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.head = nn.Sequential(*layers)
        # not a registered submodule: its parameters are the encoder's and the head's, and registering them
        # under a second path would give functional_call two names for one tensor
        object.__setattr__(self, "_lora", LoRAScope(self.encoder, self.head) if cfg.lora_rank > 0 else None)

    def tokens(self, user: Features, item: Features) -> torch.Tensor:
        """``[..., 1 + user fields + item fields, d]``: user tokens broadcast over the item positions."""
        u, i = self.user_tokens(user), self.item_tokens(item)
        while u.dim() < i.dim():
            u = u.unsqueeze(-3)
        u = u.expand(*i.shape[:-2], *u.shape[-2:])
        cls = self.cls.expand(*i.shape[:-2], 1, self.cls.shape[-1])
        return torch.cat([cls, u, i], dim=-2)

    def body(self, user: Features, item: Features) -> torch.Tensor:
        return self.encoder(self.tokens(user, item))

    @classmethod
    def has_scope(cls, scope: str, cfg: TransformerConfig) -> bool:
        return (scope == "lora" and cfg.lora_rank > 0) or super().has_scope(scope, cfg)

    def scope_split(self, scope: str):
        if scope == "lora":
            if self._lora is None:
                raise ConfigError("learner.scope=lora needs LoRA adapters: set model.lora_rank > 0")
            return self.tokens, self._lora
        return super().scope_split(scope)

    def adapts(self, scope: str):
        if scope == "lora":
            return lambda name: "lora_" in name or name.startswith("head.")
        return None
