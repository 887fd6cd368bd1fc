"""Original ids of the file-based sources: their kind (int64 or str), uniqueness, and codes.

Errors are :class:`DataError` naming the line of the first offending row (see :mod:`._read`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from metarec.data.sources._read import fail_at, shown
from metarec.errors import DataError

_PLAIN_INT_ID = re.compile(r"0|-?[1-9]\d{0,17}")  # ids that round-trip through int64 unchanged

UNKNOWN_IDS = ("error", "drop")


def id_array(values: pd.Series | np.ndarray) -> np.ndarray:
    """Original ids as int64 if every one is a plain integer (no sign, no leading zero), else str."""
    s = pd.Series(values)
    if s.dtype.kind in "iu":
        return s.to_numpy(dtype=np.int64)
    s = s.astype(str)
    if len(s) and s.str.fullmatch(_PLAIN_INT_ID.pattern).all():
        return s.astype(np.int64).to_numpy()
    return s.to_numpy(dtype=str)


def unique_ids(path: Path, ids: np.ndarray, lines, kind: str) -> np.ndarray:
    """Sort order of ``ids`` after checking they are unique and non-empty."""
    if ids.dtype.kind == "U":
        fail_at(path, lines, np.char.str_len(ids) == 0, lambda i: f"missing {kind} id")
    dup = pd.Series(ids).duplicated().to_numpy()
    fail_at(path, lines, dup, lambda i: f"duplicate {kind} id {shown(ids[i])}")
    return np.argsort(ids, kind="stable")


def codes_of(
    path: Path, ids: np.ndarray, lines, known: np.ndarray, kind: str, table: str, drop: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``ids`` in the sorted array ``known`` and a keep mask.

    Unknown ids are a ``DataError`` naming the line, or (``drop``) are left out by the mask.
    """
    known = _normalized(known)
    ids = _same_kind(_normalized(ids), known)
    if len(known) == 0:
        pos = np.zeros(len(ids), dtype=np.int64)
        unknown = np.ones(len(ids), dtype=bool)
    else:
        pos = np.searchsorted(known, ids)
        unknown = known[np.minimum(pos, len(known) - 1)] != ids
    if not drop:
        fail_at(path, lines, unknown, lambda i: f"{kind} id {shown(ids[i])} is not in {table}")
    return pos.astype(np.int64), ~unknown


def _normalized(a: np.ndarray) -> np.ndarray:
    """Integer ids as int64, any other ids as a numpy str array."""
    a = np.asarray(a)
    if a.dtype.kind in "iu":
        return a.astype(np.int64, copy=False)
    return a if a.dtype.kind == "U" else a.astype(str)


def _same_kind(ids: np.ndarray, known: np.ndarray) -> np.ndarray:
    """``ids`` converted to the dtype kind of ``known`` (ints compare to ints, strings to strings)."""
    if known.dtype.kind == ids.dtype.kind or (known.dtype.kind in "iu" and ids.dtype.kind in "iu"):
        return ids
    if known.dtype.kind == "U":
        return ids.astype(str)
    s = pd.Series(ids).astype(str)
    ok = s.str.fullmatch(_PLAIN_INT_ID.pattern).to_numpy(dtype=bool)
    out = np.full(len(ids), np.iinfo(np.int64).min, dtype=np.int64)  # never a real id
    out[ok] = s[ok].astype(np.int64).to_numpy()
    return out


def check_pairs(path: Path, lines, user: np.ndarray, item: np.ndarray, user_ids: np.ndarray, item_ids: np.ndarray) -> None:
    """``DataError`` naming the line of the first repeated (user, item) pair."""
    key = user.astype(np.int64) * (int(item.max(initial=0)) + 1) + item.astype(np.int64)
    dup = pd.Series(key).duplicated().to_numpy()
    fail_at(path, lines, dup,
            lambda i: f"duplicate rating of user {shown(user_ids[user[i]])} for item {shown(item_ids[item[i]])}")


def nonempty(path: Path, n: int, why: str) -> None:
    if n == 0:
        raise DataError(f"{path}: no interactions left {why}")


def check_rating_range(path: Path, lines, rating: np.ndarray, column: str, lo: float, hi: float) -> None:
    """``DataError`` naming the file, line and column of the first rating outside the configured
    ``rating_range`` [lo, hi]."""
    fail_at(path, lines, (rating < lo) | (rating > hi),
            lambda i: f"{column} {rating[i]:g} is outside rating_range [{lo:g}, {hi:g}] (option data.params.rating_range)")
