"""A memo of user-independent item-side outputs, for serving a large catalogue.

``Recommender.recommend`` scores every item of the catalogue for each new user. Where the item side of
the score does not depend on the user (the two-tower model's item vectors and biases), recomputing it
per user is most of the call at 100,000 items; ``ItemSideCache`` keeps the last result instead.

It answers from memory only when nothing can have changed: no gradient is being recorded, the owner
module is in eval mode, the items are one task's set of at least ``min_items`` items (a catalogue, not
a support or a top-k) with exactly the features seen last time (compared element by element), and
every parameter of the owner is the same tensor, storage and in-place version as then (an optimiser
step or ``load_state_dict`` bumps the version). Otherwise it computes, and remembers the result only
when the conditions hold. It holds one copy of the remembered items' features and of the result.
The result is shared between calls: callers must not modify it in place.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from metarec.data.features import Features


class ItemSideCache:
    def __init__(self, min_items: int = 1024) -> None:
        self.min_items = min_items
        self._params: tuple | None = None
        self._items: Features | None = None
        self._value: Any = None

    @staticmethod
    def _param_key(owner: nn.Module) -> tuple:
        return tuple((id(p), p.data_ptr(), p._version, p.dtype, p.device) for p in owner.parameters())

    def _eligible(self, owner: nn.Module, items: Features) -> bool:
        shape = items.categorical.shape
        return (not owner.training and not torch.is_grad_enabled() and len(shape) >= 2
                and shape[:-2].numel() == 1 and shape[-2] >= self.min_items)

    def _same_items(self, items: Features) -> bool:
        old = self._items
        return old is not None and all(
            a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
            for a, b in ((old.categorical, items.categorical), (old.multihot, items.multihot))
        )

    def __call__(self, owner: nn.Module, items: Features, fn: Callable[[Features], Any]) -> Any:
        """``fn(items)``, from memory when the items and ``owner``'s parameters are those of last time."""
        if not self._eligible(owner, items):
            return fn(items)
        key = self._param_key(owner)
        if key == self._params and self._same_items(items):
            return self._value
        value = fn(items)
        self._params, self._value = key, value
        self._items = Features(items.categorical.clone(), items.multihot.clone())
        return value

    def clear(self) -> None:
        self._params = self._items = self._value = None
