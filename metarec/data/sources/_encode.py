"""Feature tables of the file-based sources: codes and multi-hot matrices from table columns, and the
numeric and time columns they need (errors name the line, see :mod:`._read`)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from metarec.data.schema import CategoricalField, FeatureTable, MultiHotField
from metarec.data.sources._read import fail_at, quoted, to_floats

_TITLE_YEAR = re.compile(r"\((\d{4})(?:[-\u2013]\d{0,4})?\)\s*$")

FEATURE_TYPES = ("categorical", "multihot", "numeric")


def vocab_codes(values: pd.Series, max_values: int | None = None) -> tuple[np.ndarray, int, list[str]]:
    """Codes for string values: empty/NaN -> 0, the most frequent ``max_values`` values -> 1..k (by
    descending count, ties by value), any other value -> k + 1 (``other``). Returns codes, cardinality
    and the vocabulary."""
    s = pd.Series(values, dtype=object).fillna("").astype(str).str.strip()
    known = s[s != ""]
    counts = known.value_counts()
    order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    vocab = [v for v, _ in order]
    truncated = max_values is not None and len(vocab) > max_values
    if truncated:
        vocab = vocab[:max_values]
    mapping = {v: k + 1 for k, v in enumerate(vocab)}
    other = len(vocab) + 1
    codes = s.map(mapping).to_numpy(dtype=object)
    codes = np.where(pd.isna(codes), np.where(s.to_numpy() == "", 0, other), codes).astype(np.int64)
    return codes, len(vocab) + 1 + int(truncated), vocab


def quantile_buckets(values: np.ndarray, n_buckets: int) -> tuple[np.ndarray, int]:
    """Equal-frequency buckets of the known (finite) values -> codes 1..k (k <= n_buckets, fewer when
    values repeat); NaN -> 0. Bucket edges are the ``j / n_buckets`` quantiles, j = 1..n_buckets-1,
    and a value equal to an edge goes to the upper bucket."""
    v = np.asarray(values, dtype=np.float64)
    known = np.isfinite(v)
    codes = np.zeros(len(v), dtype=np.int64)
    if not known.any():
        return codes, 1
    edges = quantile_edges(v, n_buckets)
    codes[known] = np.searchsorted(edges, v[known], side="right") + 1
    return codes, len(edges) + 2


def quantile_edges(values: np.ndarray, n_buckets: int) -> np.ndarray:
    """The bucket edges :func:`quantile_buckets` uses (lower bounds of codes 2, 3, ...; the codebook's)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v) or n_buckets <= 1:
        return np.array([])
    return np.unique(np.quantile(v, np.arange(1, n_buckets) / n_buckets))


def multihot_from_lists(lists: pd.Series, max_values: int | None = None) -> tuple[np.ndarray, list[str]]:
    """A 0/1 float32 matrix over the ``max_values`` most frequent values (ties by value) of list cells."""
    lists = lists.reset_index(drop=True)
    exploded = lists.explode()
    exploded = exploded[exploded.notna() & (exploded.astype(str) != "")].astype(str)
    counts = exploded.value_counts()
    vocab = [v for v, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    if max_values is not None:
        vocab = vocab[:max_values]
    mat = np.zeros((len(lists), len(vocab)), dtype=np.float32)
    if vocab:
        col = exploded.map({v: k for k, v in enumerate(vocab)})
        keep = col.notna().to_numpy()
        rows = exploded.index.to_numpy(dtype=np.int64)
        mat[rows[keep], col[keep].to_numpy(dtype=np.int64)] = 1.0
    return mat, vocab


def title_years(titles: pd.Series) -> np.ndarray:
    """Release year from a MovieLens title ending in ``(1995)`` (or ``(2007-)``); NaN when absent."""
    years = titles.astype(str).str.extract(_TITLE_YEAR, expand=False)
    return pd.to_numeric(years, errors="coerce").to_numpy(dtype=np.float64)


def constant_users(n: int) -> FeatureTable:
    """One categorical field ``constant`` (cardinality 2, every user code 1): a user input that carries
    no information, for sources without user features."""
    return FeatureTable([CategoricalField("constant", 2)], np.ones((n, 1), dtype=np.int64))


def feature_table(cat: list[tuple], multi: list[tuple], n: int) -> FeatureTable:
    """A :class:`FeatureTable` from ``(name, codes, cardinality[, value names[, bucket edges]])`` and
    ``(name, 0/1 matrix[, value names])`` lists (names and edges: the field's codebook, see
    :class:`CategoricalField`)."""
    fields = [CategoricalField(c[0], int(c[2]), values=tuple(map(str, c[3])) if len(c) > 3 else (),
                               edges=tuple(float(e) for e in c[4]) if len(c) > 4 else ()) for c in cat]
    arr = np.stack([c[1] for c in cat], axis=1).astype(np.int64) if cat else np.zeros((n, 0), dtype=np.int64)
    mh_fields = [MultiHotField(m[0], int(m[1].shape[1]), values=tuple(m[2]) if len(m) > 2 else ()) for m in multi]
    mh = np.concatenate([m[1] for m in multi], axis=1).astype(np.float32) if multi else None
    return FeatureTable(fields, arr, mh_fields, mh)


def item_id_field(n: int) -> tuple[str, np.ndarray, int]:
    """The ``item_id`` categorical field (item code + 1; cardinality n + 1), as in the MovieLens sources."""
    return ("item_id", np.arange(1, n + 1, dtype=np.int64), n + 1)


def encode_features(path: Path, df: pd.DataFrame, specs) -> tuple[list, list]:
    """Categorical and multi-hot fields for ``feature_table`` from string columns of ``df``.

    Each spec has ``name`` (field name; empty: the column), ``column``, ``type`` (see
    :data:`FEATURE_TYPES`), ``sep`` (multihot separator), ``max_values`` and ``buckets``:
    ``categorical`` -> :func:`vocab_codes` (the ``max_values`` most frequent values, one code for the
    rest, 0 for empty); ``multihot`` -> :func:`multihot_from_lists` of the ``max_values`` most frequent
    values; ``numeric`` -> :func:`quantile_buckets` into ``buckets`` equal-frequency buckets (empty -> 0;
    anything else that is not a number is a ``DataError`` naming the line).
    """
    cat: list = []
    multi: list = []
    for spec in specs:
        name = spec.name or spec.column
        s = df[spec.column]
        text = s.astype(object).where(s.notna(), "").astype(str)
        if spec.type == "categorical":
            codes, card, vocab = vocab_codes(text, spec.max_values)
            cat.append((name, codes, card, vocab))  # code k is vocab[k - 1]; the `other` code has no name
        elif spec.type == "multihot":
            lists = text.str.split(spec.sep, regex=False).map(lambda xs: [x.strip() for x in xs if x.strip()])
            mat, vocab = multihot_from_lists(lists, spec.max_values)
            multi.append((name, mat, vocab))
        else:
            values = numeric_column(path, s, df.index, spec.column)
            codes, card = quantile_buckets(values, spec.buckets)
            edges = quantile_edges(values, spec.buckets)  # a raw number -> its bucket (codebook)
            names = ["" if np.isnan(lo) else f"{lo:g}-{hi:g}" for lo, hi in _bucket_ranges(values, edges)]
            cat.append((name, codes, card, names, edges))
    return cat, multi


def _bucket_ranges(values: np.ndarray, edges: np.ndarray) -> list[tuple[float, float]]:
    """(smallest, largest) known value of each bucket 1..len(edges) + 1: the buckets' names."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return []
    codes = np.searchsorted(edges, v, side="right")
    return [(float(v[codes == k].min()), float(v[codes == k].max())) if (codes == k).any() else (np.nan, np.nan)
            for k in range(len(edges) + 1)]


def numeric_column(path: Path, s: pd.Series, lines, column: str) -> np.ndarray:
    """Floats of a column; empty -> NaN; other non-numbers are a ``DataError`` naming the line."""
    if s.dtype.kind in "iufb":
        return s.to_numpy(dtype=np.float64)
    text = s.astype(str).str.strip()
    values = to_floats(text.mask(text == "", np.nan))
    bad = np.isnan(values) & (text != "").to_numpy() & ~text.str.lower().isin(("nan", "null", "na")).to_numpy()
    fail_at(path, lines, bad, lambda i: f"{column} {quoted(text.iat[i])} is not a number")
    huge = np.isinf(values) & ~text.str.lower().str.lstrip("+-").isin(("inf", "infinity")).to_numpy()
    fail_at(path, lines, huge, lambda i: f"{column} {quoted(text.iat[i])} is beyond the range of 64-bit floats")
    return values


def timestamps(path: Path, s: pd.Series, lines, column: str) -> np.ndarray:
    """Integer seconds from integer (or float) seconds, or from date/time text (UTC unless it says)."""
    if s.dtype.kind in "iu":
        return s.to_numpy(dtype=np.int64)
    if s.dtype.kind == "f":
        return float_seconds(path, lines, s.to_numpy(dtype=np.float64), column)
    if s.dtype.kind == "M" or isinstance(s.dtype, pd.DatetimeTZDtype):
        dt = pd.to_datetime(s, utc=True)
    else:
        text = s.astype(str).str.strip()
        fail_at(path, lines, (text == "").to_numpy(), lambda i: f"missing {column}")
        num = to_floats(text)
        if not np.isnan(num).any():
            return float_seconds(path, lines, num, column)
        dt = pd.to_datetime(text, errors="coerce", utc=True, format="mixed")
        bad = dt.isna().to_numpy()
        fail_at(path, lines, bad, lambda i: f"{column} {quoted(text.iat[i])} is neither seconds nor a date/time")
    fail_at(path, lines, dt.isna().to_numpy(), lambda i: f"missing {column}")
    # Whole seconds (floored) at the parsed resolution: dates before 1677 or after 2262 do not fit nanoseconds.
    return dt.dt.tz_localize(None).to_numpy().astype("datetime64[s]").astype(np.int64)


def float_seconds(path: Path, lines, v: np.ndarray, column: str) -> np.ndarray:
    """Integer seconds (floored) from float seconds; ``DataError`` for NaN, infinities and values beyond 64 bits."""
    fail_at(path, lines, ~np.isfinite(v),
            lambda i: f"missing {column}" if np.isnan(v[i]) else f"{column} {v[i]} is not a finite number")
    fail_at(path, lines, (v < -(2.0**63)) | (v >= 2.0**63),
            lambda i: f"{column} {v[i]} is outside the 64-bit integer range of seconds")
    return np.floor(v).astype(np.int64)
