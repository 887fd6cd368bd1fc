"""Base recommenders, one file each, registered by name."""

from __future__ import annotations

from typing import Any

from metarec.data.schema import FeatureSchema
from metarec.models.base import BaseRecommender, Features
from metarec.models.melu import MeLU, MeLUConfig
from metarec.models.transformer import TransformerConfig, TransformerRec
from metarec.registry import Registry

MODELS: Registry[BaseRecommender] = Registry("model")
MODELS.register("melu", MeLUConfig, help="MeLU: field embeddings + MLP decision layers")(MeLU)
MODELS.register("transformer", TransformerConfig, help="field tokens + self-attention + MLP head; LoRA scope")(TransformerRec)


def build_model(name: str, schema: FeatureSchema, cfg: Any) -> BaseRecommender:
    return MODELS.get(name).factory(schema, cfg)


__all__ = ["BaseRecommender", "Features", "MeLU", "MeLUConfig", "MODELS", "TransformerConfig", "TransformerRec",
           "build_model"]
