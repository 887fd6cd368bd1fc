"""A generic source: an interactions table plus optional user and item feature tables.

Paths are relative to the data root (or absolute). Tables are delimited text (``sep``, ``encoding``,
``"``-quoting when ``quoted``; one header line naming the columns) or Parquet. **Parquet needs pyarrow
(or fastparquet)**; without one, only text tables can be read and a Parquet file is a ``DataError``
saying so. ``format: auto`` picks Parquet for ``.parquet``/``.pq`` files and text otherwise.

``columns`` maps the interactions table: ``user`` and ``item`` (ids, any text; ids that are all plain
integers are kept as integers), ``rating`` (a number; null: implicit data, every rating 1.0,
``rating_range`` (0, 1) and ``implicit`` true) and ``timestamp`` (integer seconds or date/time text;
null: 0). ``rating_range`` defaults to the smallest and largest rating.

``users`` / ``items`` tables need an id column (``user_id_column`` / ``item_id_column``, default the
interactions' column names); a repeated id is an error. Users and items are every row of their table
(ids without interactions included), or the ids seen in the interactions when there is no table.
Interactions of ids missing from a given table are an error, or left out with ``unknown_ids: drop``.

Feature columns (``user_features`` / ``item_features``, each ``{column, type, ...}``; code 0 =
unknown/empty):

* ``categorical``: the ``max_values`` most frequent values get codes 1..k by descending count (ties by
  value), any other value shares code k + 1.
* ``multihot``: values separated by ``sep`` (default ``|``); a multi-hot over the ``max_values`` most
  frequent values.
* ``numeric``: ``buckets`` equal-frequency buckets of the known values (edges at the ``j / buckets``
  quantiles, duplicates merged, a value on an edge goes up; codes 1..); empty -> 0, other non-numbers
  are an error.

The field is named ``name`` (default: the column). Items always get ``item_id`` (item code + 1) first;
users without a feature column get the constant field ``constant``. ``item_year`` (a number) and
``item_title`` name optional columns of the items table.

Every problem is a one-line ``DataError`` naming the file and line (``row`` for Parquet, counted from
1): a missing column, a value of the wrong type, an empty id, a repeated (user, item) pair, an unknown
id, or nothing left after filtering.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from metarec.data.paths import resolve_data_root
from metarec.data.schema import RecDataset
from metarec.data.sources._encode import (
    FEATURE_TYPES,
    constant_users,
    encode_features,
    feature_table,
    item_id_field,
    numeric_column,
    timestamps,
)
from metarec.data.sources._ids import (
    UNKNOWN_IDS, check_pairs, check_rating_range, codes_of, id_array, nonempty, unique_ids,
)
from metarec.data.sources._read import PARQUET_SUFFIXES, check_option, fail_at, read_table, resolve_path
from metarec.errors import ConfigError, DataError

FORMATS = ("auto", "csv", "parquet")


@dataclass
class FeatureColumn:
    """One feature column of a users or items table."""

    column: str = ""
    type: str = "categorical"  # categorical | multihot | numeric
    name: str = ""  # field name; default: the column
    sep: str = "|"  # multihot: separator between values
    max_values: int = 1000  # categorical: values with their own code; multihot: width
    buckets: int = 10  # numeric: equal-frequency buckets


@dataclass
class CsvColumns:
    """Columns of the interactions table."""

    user: str = "user"
    item: str = "item"
    rating: Optional[str] = "rating"  # null: implicit data, every rating 1.0
    timestamp: Optional[str] = None  # integer seconds or date/time text; null: 0


@dataclass
class CsvConfig:
    """Options of the ``csv`` source."""

    interactions: str = ""  # the interactions file, under the data root or absolute
    users: Optional[str] = None  # optional users table
    items: Optional[str] = None  # optional items table
    format: str = "auto"  # auto | csv | parquet (parquet needs pyarrow or fastparquet)
    sep: str = ","
    encoding: str = "utf-8"
    quoted: bool = True  # fields may be quoted with "
    columns: CsvColumns = field(default_factory=CsvColumns)
    user_id_column: Optional[str] = None  # id column of the users table; default columns.user
    item_id_column: Optional[str] = None  # id column of the items table; default columns.item
    user_features: list[FeatureColumn] = field(default_factory=list)
    item_features: list[FeatureColumn] = field(default_factory=list)
    item_title: Optional[str] = None
    item_year: Optional[str] = None
    rating_range: Optional[list[float]] = None  # [low, high]; null: from the data
    unknown_ids: str = "error"  # error | drop
    name: str = "csv"


def csv_source(cfg: CsvConfig, root: str | None) -> RecDataset:
    """Interactions (CSV, or Parquet with pyarrow) with optional user/item feature tables, mapped by config."""
    _check_config(cfg)
    base = resolve_data_root(root)
    c = cfg.columns
    inter_path = resolve_path(base, cfg.interactions)
    wanted = [c.user, c.item] + [x for x in (c.rating, c.timestamp) if x]
    inter = _read(cfg, inter_path, wanted, kinds={c.rating: "float"} if c.rating else {})
    lines = inter.index.to_numpy()
    u_raw = _ids(inter_path, inter[c.user], lines, "user")
    i_raw = _ids(inter_path, inter[c.item], lines, "item")
    rating = inter[c.rating].to_numpy(dtype=np.float64) if c.rating else np.ones(len(inter))
    ts = timestamps(inter_path, inter[c.timestamp], lines, c.timestamp) if c.timestamp else np.zeros(len(inter), np.int64)

    users, user_ids, users_path = _entity(cfg, base, cfg.users, cfg.user_id_column or c.user, cfg.user_features, [], "user")
    extra = [x for x in (cfg.item_title, cfg.item_year) if x]
    items, item_ids, items_path = _entity(cfg, base, cfg.items, cfg.item_id_column or c.item, cfg.item_features, extra, "item")
    user_ids = np.unique(u_raw) if user_ids is None else user_ids
    item_ids = np.unique(i_raw) if item_ids is None else item_ids
    drop = cfg.unknown_ids == "drop"
    user, ku = codes_of(inter_path, u_raw, lines, user_ids, "user", Path(cfg.users).name if cfg.users else "", drop=drop)
    item, ki = codes_of(inter_path, i_raw, lines, item_ids, "item", Path(cfg.items).name if cfg.items else "", drop=drop)
    keep = ku & ki
    tables = [Path(f).name for f in (cfg.users, cfg.items) if f]
    missing_from = f" (not in {'/'.join(tables)})" if tables else ""
    nonempty(inter_path, int(keep.sum()), f"after dropping interactions of unknown users and items{missing_from}")
    lines, user, item, rating, ts = lines[keep], user[keep], item[keep], rating[keep], ts[keep]
    check_pairs(inter_path, lines, user, item, user_ids, item_ids)
    if cfg.rating_range is not None:
        lo, hi = map(float, cfg.rating_range)
        if c.rating:
            check_rating_range(inter_path, lines, rating, c.rating, lo, hi)
    elif not c.rating:
        lo, hi = 0.0, 1.0
    else:
        lo, hi = float(rating.min()), float(rating.max())
        lo = min(lo, 0.0) if lo == hi else lo

    n_users, n_items = len(user_ids), len(item_ids)
    if users is not None and cfg.user_features:
        cat, multi = encode_features(users_path, users, cfg.user_features)
        user_table = feature_table(cat, multi, n_users)
    else:
        user_table = constant_users(n_users)
    item_cat: list = [item_id_field(n_items)]
    item_multi: list = []
    year = np.full(n_items, np.nan)
    titles: list[str] = []
    if items is not None:
        cat, item_multi = encode_features(items_path, items, cfg.item_features)
        item_cat += cat
        if cfg.item_year:
            year = numeric_column(items_path, items[cfg.item_year], items.index, cfg.item_year)
        if cfg.item_title:
            titles = items[cfg.item_title].astype(str).tolist()
    return RecDataset(
        name=cfg.name,
        ratings=pd.DataFrame({"user": user, "item": item, "rating": rating, "timestamp": ts.astype(np.int64)}),
        users=user_table,
        items=feature_table(item_cat, item_multi, n_items),
        user_ids=user_ids,
        item_ids=item_ids,
        item_year=year,
        rating_range=(lo, hi),
        item_titles=titles,
        implicit=not c.rating,
    )


def _check_config(cfg: CsvConfig) -> None:
    def bad(msg: str) -> ConfigError:
        return ConfigError(f"data source 'csv': {msg}")

    if not cfg.interactions:
        raise bad("option interactions (the interactions file) is required")
    check_option("csv", "format", cfg.format, FORMATS)
    check_option("csv", "unknown_ids", cfg.unknown_ids, UNKNOWN_IDS)
    if not cfg.columns.user or not cfg.columns.item:
        raise bad("columns.user and columns.item are required")
    if cfg.user_features and not cfg.users:
        raise bad("user_features need a users table (option users)")
    if (cfg.item_features or cfg.item_title or cfg.item_year) and not cfg.items:
        raise bad("item_features, item_title and item_year need an items table (option items)")
    for kind, specs in (("user_features", cfg.user_features), ("item_features", cfg.item_features)):
        for s in specs:
            if not s.column:
                raise bad(f"every entry of {kind} needs a column")
            check_option("csv", f"{kind}[{s.column}].type", s.type, FEATURE_TYPES)
            if s.max_values < 1 or s.buckets < 1 or (s.type == "multihot" and not s.sep):
                raise bad(f"{kind}[{s.column}]: max_values and buckets must be >= 1 and sep non-empty")
        names = [s.name or s.column for s in specs]
        dup = [n for n in names if names.count(n) > 1]
        if dup:
            raise bad(f"{kind} has the field name {dup[0]!r} twice")
    if cfg.rating_range is not None and (len(cfg.rating_range) != 2 or cfg.rating_range[0] > cfg.rating_range[1]):
        raise bad("rating_range must be [low, high] with low <= high")


def _is_parquet(cfg: CsvConfig, path: Path) -> bool:
    if cfg.format == "auto":
        return str(path).lower().endswith(PARQUET_SUFFIXES)
    return cfg.format == "parquet"


def parquet_available() -> bool:
    return any(importlib.util.find_spec(m) is not None for m in ("pyarrow", "fastparquet"))


def _read(cfg: CsvConfig, path: Path, columns: list[str], kinds: dict[str, str]) -> pd.DataFrame:
    """The wanted columns (index: line numbers, or row numbers from 1 for Parquet)."""
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    columns = list(dict.fromkeys(columns))
    if not _is_parquet(cfg, path):
        df = read_table(path, sep=cfg.sep, header=True, encoding=cfg.encoding, required=columns, usecols=columns,
                        kinds=kinds, quoted=cfg.quoted)
    else:
        df = _read_parquet(path, columns, kinds)
    return df


def _read_parquet(path: Path, columns: list[str], kinds: dict[str, str]) -> pd.DataFrame:
    if not parquet_available():
        raise DataError(f"cannot read {path}: Parquet needs pyarrow (pip install pyarrow); CSV files work without it")
    try:
        import pyarrow.parquet as pq

        have = list(pq.ParquetFile(path).schema_arrow.names)
    except ImportError:
        have = None
    except Exception as e:  # pyarrow raises its own error types for corrupt files
        raise DataError(f"cannot read {path} as Parquet ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if have is not None:
        missing = [c for c in columns if c not in have]
        if missing:
            raise DataError(f"{path}: missing column{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(map(repr, missing))} (the file has {', '.join(map(repr, have))})")
    try:
        df = pd.read_parquet(path, columns=columns)
    except Exception as e:
        raise DataError(f"cannot read {path} as Parquet ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    df.index = pd.RangeIndex(1, len(df) + 1)
    if len(df) == 0:
        raise DataError(f"{path} has no rows")
    for col in kinds:
        s = df[col]
        if s.dtype.kind not in "iuf":
            values = numeric_column(path, s.astype(str), df.index, col)
        else:
            values = s.to_numpy(dtype=np.float64)
        fail_at(path, df.index, ~np.isfinite(values), lambda i, col=col: f"{col} is missing or not a finite number")
        df[col] = values
    return df


def _ids(path: Path, s: pd.Series, lines, kind: str) -> np.ndarray:
    if s.dtype.kind in "iu":
        return s.to_numpy(dtype=np.int64)
    if s.dtype.kind == "f":
        v = s.to_numpy(dtype=np.float64)
        fail_at(path, lines, ~np.isfinite(v) | (np.floor(v) != v), lambda i: f"{kind} id {v[i]} is not an integer")
        return v.astype(np.int64)
    text = s.astype(str).str.strip()
    fail_at(path, lines, (text == "").to_numpy() | s.isna().to_numpy(), lambda i: f"missing {kind} id")
    return id_array(text)


def _entity(cfg: CsvConfig, base: Path, file: Optional[str], id_col: str, specs, extra: list[str], kind: str):
    """(table sorted by id, sorted ids, path) of a users/items table, or Nones when not given."""
    if not file:
        return None, None, None
    path = resolve_path(base, file)
    cols = [id_col, *(s.column for s in specs), *extra]
    df = _read(cfg, path, cols, {})
    ids = _ids(path, df[id_col], df.index, kind)
    order = unique_ids(path, ids, df.index, kind)
    return df.iloc[order], ids[order], path
