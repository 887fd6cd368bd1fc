"""The base-recommender contract every model implements.

A base recommender maps (user features, item features) to a score, on any leading shape. It is split
into a ``body`` (embeddings and pooling, shared, never adapted under the ``head`` scope) and a ``head``
(the decision layers): learners that adapt only the head compute the body once per meta-batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from metarec.errors import ConfigError

SCOPES = ("head", "all")


@dataclass
class Features:
    """Model inputs of one entity kind: categorical codes ``[..., F]`` and multi-hot values ``[..., M]``."""

    categorical: torch.Tensor
    multihot: torch.Tensor

    def index(self, idx) -> "Features":
        return Features(self.categorical[idx], self.multihot[idx])


class BaseRecommender(nn.Module):
    """``forward(user, item) = head(body(user, item)).squeeze(-1)``."""

    head: nn.Module

    def body(self, user: Features, item: Features) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, user: Features, item: Features) -> torch.Tensor:
        return self.head(self.body(user, item)).squeeze(-1)

    def adapted_parameter_names(self, scope: str) -> list[str]:
        """Names (as in ``named_parameters``) of the parameters adapted per task under ``scope``."""
        if scope == "head":
            return [f"head.{n}" for n, _ in self.head.named_parameters()]
        if scope == "all":
            return [n for n, _ in self.named_parameters()]
        raise ConfigError(f"unknown adaptation scope {scope!r} (known: {', '.join(SCOPES)})")

    def set_output_bias(self, value: float) -> None:
        """Start the output at ``value`` (e.g. the mean training rating) so training starts centred."""
        last = [m for m in self.head.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            last.bias.fill_(value)
