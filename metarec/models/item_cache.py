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
The result is shared between calls: callers must not modify it in place. When the items are the very
tensors of last time (same objects, not modified in place since), the element-by-element comparison is
skipped (``Recommender`` passes the same catalogue tensors on every call).

``serving()`` marks a block as serving (``Recommender`` scoring a user); models may then take exact
serving-only shortcuts (``MeLU.serve``) that training and evaluation never take, so their numbers stay
bit for bit what they were.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, ContextManager, Iterator

import torch
from torch import nn

from metarec.data.features import Features


_SERVING = threading.local()


@contextmanager
def _flag(name: str) -> Iterator[None]:
    """Set this thread's flag ``name`` for the block (restored after it: blocks nest)."""
    before = getattr(_SERVING, name, False)
    setattr(_SERVING, name, True)
    try:
        yield
    finally:
        setattr(_SERVING, name, before)


def serving() -> ContextManager[None]:
    """Mark the block (in this thread) as serving: see :func:`is_serving`."""
    return _flag("on")


def is_serving() -> bool:
    """Whether this thread is inside :func:`serving` (``Recommender`` scoring items for a user)."""
    return getattr(_SERVING, "on", False)


def sparse_embedding_grads() -> ContextManager[None]:
    """Inside the block (in this thread), the field encoders' embedding lookups give sparse gradients
    (``FieldVectors``): the inner loop that adapts one served user under scope ``all`` then touches the
    support's rows of an item-id table, not all of them (a dense gradient of a 100,001-row table is
    written, clipped and subtracted in full at every step). Never used in training: optimisers and the
    batched inner loop take dense gradients."""
    return _flag("sparse")


def sparse_grads() -> bool:
    """Whether this thread is inside :func:`sparse_embedding_grads`."""
    return getattr(_SERVING, "sparse", False)


class ItemSideCache:
    def __init__(self, min_items: int = 1024) -> None:
        self.min_items = min_items
        self._params: tuple | None = None
        self._items: Features | None = None
        self._value: Any = None
        self._source: tuple | None = None  # the very item tensors of last time and their versions

    @staticmethod
    def _param_key(owner: nn.Module) -> tuple:
        return tuple((id(p), p.data_ptr(), p._version, p.dtype, p.device) for p in owner.parameters())

    def _eligible(self, owner: nn.Module, items: Features) -> bool:
        shape = items.categorical.shape
        return (not owner.training and not torch.is_grad_enabled() and len(shape) >= 2
                and shape[:-2].numel() == 1 and shape[-2] >= self.min_items)

    @staticmethod
    def _source_key(items: Features) -> tuple:
        return (items.categorical, items.categorical._version, items.multihot, items.multihot._version)

    def _same_items(self, items: Features) -> bool:
        old, src = self._items, self._source
        if old is not None and src is not None and src[0] is items.categorical and src[2] is items.multihot \
                and src[1] == items.categorical._version and src[3] == items.multihot._version:
            return True  # the same tensors, not written since
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
        self._source = self._source_key(items)
        return value

    def clear(self) -> None:
        self._params = self._items = self._value = self._source = None
