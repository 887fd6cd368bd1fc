"""Base recommenders, one file each, registered by name."""

from __future__ import annotations

from metarec.data.features import Features
from metarec.models.base import BaseRecommender
from metarec.models.melu import MeLU, MeLUConfig
from metarec.models.transformer import TransformerConfig, TransformerRec
from metarec.models.twotower import TwoTower, TwoTowerConfig
from metarec.registry import Registry

MODELS: Registry[BaseRecommender] = Registry("model")
MODELS.register("melu", MeLUConfig, help="MeLU: field embeddings + MLP decision layers")(MeLU)
MODELS.register("transformer", TransformerConfig, help="field tokens + self-attention + MLP head; LoRA scope")(TransformerRec)
MODELS.register("twotower", TwoTowerConfig, help="user and item towers, score = biases + <u, v>")(TwoTower)


__all__ = ["BaseRecommender", "Features", "MeLU", "MeLUConfig", "MODELS", "TransformerConfig", "TransformerRec", "TwoTower",
           "TwoTowerConfig"]
