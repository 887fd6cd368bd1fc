"""Data sources: named factories that build a :class:`RecDataset` from typed options.

A source is a function ``factory(cfg, root) -> RecDataset`` registered in :data:`SOURCES` with the
dataclass that types its options; :func:`load_dataset` validates user options against that dataclass.

The registry lives in :mod:`._registry`, which imports no source; each built-in source module
registers itself there when imported, and this package imports them all below, so that importing
``metarec.data.sources`` (or anything from it) makes every built-in source known. Sources of other
packages come in through the ``metarec.sources`` entry points (see :mod:`metarec.registry`).
"""

from __future__ import annotations

from metarec.data.sources._registry import SOURCES, load_dataset, source_config

# The built-in sources: importing each registers it in SOURCES.
from metarec.data.sources import (  # noqa: F401
    bookcrossing,
    lastfm,
    movielens,
    movielens_more,
    recbole,
    synthetic,
    tabular,
)

__all__ = ["SOURCES", "load_dataset", "source_config"]
