"""The in-memory dataset every source produces, and the feature schema models are built from.

Ids are encoded as contiguous integer codes: users ``0..n_users-1`` and items ``0..n_items-1``.
Categorical feature values are codes ``1..cardinality-1``; code ``0`` means unknown/missing.
Multi-hot fields are dense 0/1 matrices (one column per value).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class CategoricalField:
    """A single-valued categorical field; ``cardinality`` counts code 0 (unknown).

    The field's codebook, when the source knows it (saved with every run, ``metarec.codebook``):
    ``values[k - 1]`` is the raw value that code ``k`` stands for (e.g. ``"F"``, ``"35-44"``; empty: no name),
    and ``edges`` the ascending lower bounds of codes 2, 3, ... of a field that buckets a number (code 1 is
    below ``edges[0]``), so that a raw number maps to its bucket."""

    name: str
    cardinality: int
    values: tuple[str, ...] = ()
    edges: tuple[float, ...] = ()


@dataclass(frozen=True)
class MultiHotField:
    """A set-valued field such as genres; ``width`` is the number of possible values, ``values`` their
    names when known (for text templates). ``dense``: real-valued features (e.g. a text embedding)
    rather than 0/1 flags — models project them instead of averaging value embeddings."""

    name: str
    width: int
    values: tuple[str, ...] = ()
    dense: bool = False


@dataclass(frozen=True)
class DenseField(MultiHotField):
    """A real-valued vector field (e.g. an item's text embedding), stored beside the multi-hot blocks;
    models project it (``nn.Linear``) instead of averaging value embeddings."""

    dense: bool = True


@dataclass
class FeatureTable:
    """Features of one entity kind (users or items), one row per id code.

    ``categorical``: int64 ``[n, len(categorical_fields)]``; ``multihot``: float32 ``[n, sum(widths)]``.
    """

    categorical_fields: list[CategoricalField]
    categorical: np.ndarray
    multihot_fields: list[MultiHotField] = field(default_factory=list)
    multihot: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.categorical.shape[0]
        if self.categorical.ndim != 2 or self.categorical.shape[1] != len(self.categorical_fields):
            raise ValueError("categorical array must be [n, number of categorical fields]")
        if self.multihot is None:
            self.multihot = np.zeros((n, 0), dtype=np.float32)
        width = sum(f.width for f in self.multihot_fields)
        if self.multihot.shape != (n, width):
            raise ValueError(f"multihot array must be [{n}, {width}], got {self.multihot.shape}")
        for j, f in enumerate(self.categorical_fields):
            col = self.categorical[:, j]
            if col.size and (col.min() < 0 or col.max() >= f.cardinality):
                raise ValueError(f"field {f.name!r} has codes outside 0..{f.cardinality - 1}")

    @property
    def n(self) -> int:
        return int(self.categorical.shape[0])


@dataclass(frozen=True)
class FeatureSchema:
    """What a base model needs to know about the inputs."""

    user_categorical: tuple[CategoricalField, ...]
    item_categorical: tuple[CategoricalField, ...]
    item_multihot: tuple[MultiHotField, ...] = ()
    user_multihot: tuple[MultiHotField, ...] = ()

    def to_dict(self) -> dict:
        def enc(fields):
            return [dict(name=f.name, size=getattr(f, "cardinality", getattr(f, "width", 0))) for f in fields]

        return {
            "user_categorical": enc(self.user_categorical),
            "user_multihot": enc(self.user_multihot),
            "item_categorical": enc(self.item_categorical),
            "item_multihot": enc(self.item_multihot),
        }


@dataclass
class RecDataset:
    """Explicit-feedback interactions plus user and item feature tables.

    ``ratings`` has columns ``user`` (int code), ``item`` (int code), ``rating`` (float) and
    ``timestamp`` (int, seconds; 0 when unknown). ``item_year`` is the release year per item code
    (NaN when unknown), used by the release-year cold-item split. ``user_ids``/``item_ids`` map codes
    back to the publisher's original ids; ``item_titles`` are display names (may be empty).
    """

    name: str
    ratings: pd.DataFrame
    users: FeatureTable
    items: FeatureTable
    user_ids: np.ndarray
    item_ids: np.ndarray
    item_year: np.ndarray
    rating_range: tuple[float, float] = (1.0, 5.0)
    item_titles: list[str] = field(default_factory=list)
    implicit: bool = False  # True: ratings are derived from implicit feedback (e.g. play counts), not given

    @property
    def n_users(self) -> int:
        return self.users.n

    @property
    def n_items(self) -> int:
        return self.items.n

    @property
    def schema(self) -> FeatureSchema:
        return FeatureSchema(
            user_categorical=tuple(self.users.categorical_fields),
            item_categorical=tuple(self.items.categorical_fields),
            item_multihot=tuple(self.items.multihot_fields),
            user_multihot=tuple(self.users.multihot_fields),
        )

    def validate(self) -> None:
        """Raise ``DataError`` if the ratings table is inconsistent with the feature tables."""
        from metarec.errors import DataError

        r = self.ratings
        for col in ("user", "item", "rating", "timestamp"):
            if col not in r.columns:
                raise DataError(f"dataset {self.name}: ratings table lacks column {col!r}")
        if len(r) == 0:
            raise DataError(f"dataset {self.name}: no ratings")
        if r["user"].min() < 0 or r["user"].max() >= self.n_users:
            raise DataError(f"dataset {self.name}: rating user codes outside the user table")
        if r["item"].min() < 0 or r["item"].max() >= self.n_items:
            raise DataError(f"dataset {self.name}: rating item codes outside the item table")
        lo, hi = self.rating_range
        bad = r[(r["rating"] < lo) | (r["rating"] > hi) | r["rating"].isna()]
        if len(bad):
            row = bad.iloc[0]
            raise DataError(
                f"dataset {self.name}: rating {row['rating']} of user code {int(row['user'])} "
                f"is outside the allowed range {lo}..{hi}"
            )
        if r.duplicated(["user", "item"]).any():
            raise DataError(f"dataset {self.name}: duplicate (user, item) ratings")
        if len(self.item_year) != self.n_items:
            raise DataError(f"dataset {self.name}: item_year must have one entry per item")


def dataset_fingerprint(ds: RecDataset) -> str:
    """A short content hash of the ratings (original ids, codes, values), so a saved split can check
    that it is used on the same data. Ids may be any text (hashed as UTF-8)."""
    import hashlib

    r = ds.ratings
    h = hashlib.sha256()
    for ids in (ds.user_ids, ds.item_ids):
        h.update("\x1f".join(map(str, ids.tolist())).encode("utf-8", "surrogatepass"))
        h.update(b"\x1e")
    h.update(np.ascontiguousarray(r["user"].to_numpy(np.int64)).tobytes())
    h.update(np.ascontiguousarray(r["item"].to_numpy(np.int64)).tobytes())
    h.update(np.ascontiguousarray(r["rating"].to_numpy(dtype=np.float64)).tobytes())
    return h.hexdigest()[:16]
