"""Model inputs of one entity kind (users or items), the type every layer from episodes to serving passes."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Features:
    """Model inputs of one entity kind: categorical codes ``[..., F]`` and multi-hot values ``[..., M]``."""

    categorical: torch.Tensor
    multihot: torch.Tensor

    def index(self, idx) -> "Features":
        return Features(self.categorical[idx], self.multihot[idx])

    def for_tasks(self, t: int) -> "Features":
        """The same entities for each of ``t`` tasks: a leading task axis of size ``t`` (a view)."""
        cat, multi = self.categorical, self.multihot
        return Features(cat.expand(t, *cat.shape), multi.expand(t, *multi.shape))


# a pytree, so torch.func.vmap / grad take Features as they take tensors
torch.utils._pytree.register_dataclass(Features)
