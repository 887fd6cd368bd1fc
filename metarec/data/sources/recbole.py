"""RecBole atomic files: ``<name>.inter`` with optional ``<name>.user`` and ``<name>.item``.

Files are looked up in ``<data root>/<folder>`` (``folder`` defaults to ``name``, RecBole's own layout
``data_path/dataset/dataset.inter``; an absolute ``folder`` is used as is). Each file is tab-separated
UTF-8 text whose header names every column ``field:type`` with type ``token``, ``token_seq``, ``float``
or ``float_seq``; ``_seq`` values are separated by spaces.

* ``.inter``: ``user_field`` and ``item_field`` (type token) are required. ``rating_field`` (float)
  gives the rating; when the file has no such column the data are implicit (``implicit`` true), every
  rating is 1.0 and ``rating_range`` is (0, 1). ``timestamp_field`` (float, seconds) gives the time,
  0 when absent. ``rating_range`` defaults to the smallest and largest rating in the file.
* ``.user`` / ``.item``: one row per id (a repeated id is an error). Users and items are those of the
  feature file when it exists (including ids without interactions), otherwise those of ``.inter``.
  Interactions of ids missing from an existing feature file are an error, or left out with
  ``unknown_ids: drop``.

Feature fields (``user_features`` / ``item_features``; null means every field of the file except the
id, ``title_field`` and ``float_seq`` fields), code 0 = unknown/empty:

* ``token`` -> categorical: the ``max_tokens`` most frequent values get codes 1..k by descending count
  (ties by value), every other value shares code k + 1.
* ``token_seq`` -> multi-hot over the ``max_seq_width`` most frequent tokens.
* ``float`` -> categorical of ``n_buckets`` equal-frequency buckets: edges are the ``j / n_buckets``
  quantiles (j = 1..n_buckets-1) of the known values, duplicate edges merged, a value on an edge goes to
  the upper bucket; codes 1..(number of edges + 1).
* ``float_seq`` is not supported (naming one is a configuration error).

Items also get ``item_id`` (item code + 1) as their first categorical field; with no ``.user`` file (or
no user feature field) users get the constant field ``constant``. ``item_year`` comes from the item
field ``year_field`` when present (a number; anything else -> NaN), item titles from ``title_field``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from metarec.data.paths import resolve_data_root
from metarec.data.schema import RecDataset
from metarec.data.sources._encode import (
    constant_users,
    encode_features,
    feature_table,
    float_seconds,
    item_id_field,
)
from metarec.data.sources._ids import (
    UNKNOWN_IDS, check_pairs, check_rating_range, codes_of, id_array, nonempty, unique_ids,
)
from metarec.data.sources._read import check_option, read_header, read_table, resolve_path
from metarec.errors import ConfigError, DataError

ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")


@dataclass
class RecBoleConfig:
    """Options of the ``recbole`` source."""

    name: str = ""  # dataset name: the files are <name>.inter, <name>.user, <name>.item
    folder: str = ""  # folder of the files, under the data root or absolute; default: <name>
    user_field: str = "user_id"
    item_field: str = "item_id"
    rating_field: str = "rating"  # absent from .inter: implicit data, every rating 1.0
    timestamp_field: str = "timestamp"  # absent from .inter: timestamps 0
    user_features: Optional[list[str]] = None  # null: every usable field of .user
    item_features: Optional[list[str]] = None  # null: every usable field of .item
    year_field: str = "release_year"
    title_field: str = "movie_title"
    n_buckets: int = 10  # float fields: equal-frequency buckets
    max_tokens: int = 1000  # token fields: most frequent values with their own code
    max_seq_width: int = 100  # token_seq fields: width of the multi-hot
    unknown_ids: str = "error"  # error | drop: interactions of ids missing from .user/.item
    rating_range: Optional[list[float]] = None  # [low, high]; null: from the data


@dataclass
class _Spec:
    name: str
    column: str
    type: str
    sep: str = " "
    max_values: int = 0
    buckets: int = 10


def recbole(cfg: RecBoleConfig, root: str | None) -> RecDataset:
    """A dataset in RecBole's atomic-file format (.inter, optional .user and .item)."""
    if not cfg.name:
        raise ConfigError("data source 'recbole': option name (the atomic files' base name) is required")
    check_option("recbole", "unknown_ids", cfg.unknown_ids, UNKNOWN_IDS)
    if cfg.n_buckets < 1 or cfg.max_tokens < 1 or cfg.max_seq_width < 0:
        raise ConfigError("data source 'recbole': n_buckets and max_tokens must be >= 1, max_seq_width >= 0")
    if cfg.rating_range is not None and (len(cfg.rating_range) != 2 or cfg.rating_range[0] > cfg.rating_range[1]):
        raise ConfigError("data source 'recbole': rating_range must be [low, high] with low <= high")
    folder = resolve_path(resolve_data_root(root), cfg.folder or cfg.name)
    inter_path = folder / f"{cfg.name}.inter"
    if not inter_path.is_file():
        raise DataError(f"RecBole interaction file {inter_path} does not exist (set the data root, folder or name)")
    drop = cfg.unknown_ids == "drop"

    types = _field_types(inter_path)
    for f in (cfg.user_field, cfg.item_field):
        _require(inter_path, types, f, ("token",))
    has_rating = cfg.rating_field in types
    has_time = cfg.timestamp_field in types
    if has_rating:
        _require(inter_path, types, cfg.rating_field, ("float",))
    if has_time:
        _require(inter_path, types, cfg.timestamp_field, ("float",))
    wanted = [cfg.user_field, cfg.item_field] + [cfg.rating_field] * has_rating + [cfg.timestamp_field] * has_time
    inter = _read_atomic(inter_path, types, wanted, strict_float=True)
    lines = inter.index.to_numpy()

    users, user_ids, user_types = _entity(folder / f"{cfg.name}.user", cfg.user_field, "user")
    items, item_ids, item_types = _entity(folder / f"{cfg.name}.item", cfg.item_field, "item")
    u_raw = id_array(inter[cfg.user_field].str.strip())
    i_raw = id_array(inter[cfg.item_field].str.strip())
    if user_ids is None:
        user_ids = np.unique(u_raw)
    if item_ids is None:
        item_ids = np.unique(i_raw)
    user, ku = codes_of(inter_path, u_raw, lines, user_ids, "user", f"{cfg.name}.user", drop=drop)
    item, ki = codes_of(inter_path, i_raw, lines, item_ids, "item", f"{cfg.name}.item", drop=drop)
    keep = ku & ki
    tables = [f"{cfg.name}.{kind}" for kind, df in (("user", users), ("item", items)) if df is not None]
    missing_from = f" (not in {'/'.join(tables)})" if tables else ""
    nonempty(inter_path, int(keep.sum()), f"after dropping interactions of unknown users and items{missing_from}")
    lines, user, item = lines[keep], user[keep], item[keep]
    check_pairs(inter_path, lines, user, item, user_ids, item_ids)
    if has_rating:
        rating = inter[cfg.rating_field].to_numpy(dtype=np.float64)[keep]
    else:
        rating = np.ones(len(user))
    if has_time:
        ts = float_seconds(inter_path, lines, inter[cfg.timestamp_field].to_numpy(dtype=np.float64)[keep],
                           f"{cfg.timestamp_field}:float")
    else:
        ts = np.zeros(len(user), dtype=np.int64)
    rating_range = _rating_range(cfg, rating, has_rating)
    if has_rating and cfg.rating_range is not None:
        check_rating_range(inter_path, lines, rating, f"{cfg.rating_field}:float", *rating_range)
    ratings = pd.DataFrame({"user": user, "item": item, "rating": rating, "timestamp": ts})

    n_users, n_items = len(user_ids), len(item_ids)
    if users is not None:
        cat, multi = encode_features(folder / f"{cfg.name}.user", users, _specs(cfg, user_types, cfg.user_features, cfg.user_field, "user"))
        user_table = feature_table(cat, multi, n_users) if cat or multi else constant_users(n_users)
    else:
        if cfg.user_features:
            raise ConfigError(f"data source 'recbole': user_features given but {folder / (cfg.name + '.user')} does not exist")
        user_table = constant_users(n_users)
    item_cat: list = [item_id_field(n_items)]
    item_multi: list = []
    year = np.full(n_items, np.nan)
    titles: list[str] = []
    if items is not None:
        cat, item_multi = encode_features(folder / f"{cfg.name}.item", items, _specs(cfg, item_types, cfg.item_features, cfg.item_field, "item"))
        item_cat += cat
        if cfg.year_field in items.columns:
            year = pd.to_numeric(items[cfg.year_field].str.strip(), errors="coerce").to_numpy(dtype=np.float64)
        if cfg.title_field in items.columns:
            titles = items[cfg.title_field].astype(str).tolist()
    elif cfg.item_features:
        raise ConfigError(f"data source 'recbole': item_features given but {folder / (cfg.name + '.item')} does not exist")
    return RecDataset(
        name=cfg.name,
        ratings=ratings,
        users=user_table,
        items=feature_table(item_cat, item_multi, n_items),
        user_ids=user_ids,
        item_ids=item_ids,
        item_year=year,
        rating_range=rating_range,
        item_titles=titles,
        implicit=not has_rating,
    )


def _field_types(path: Path) -> dict[str, str]:
    """``field -> type`` from an atomic file's header; ``DataError`` for a malformed header."""
    out: dict[str, str] = {}
    for col in read_header(path, "\t", "utf-8"):
        field, sep, typ = col.rpartition(":")
        if not sep or not field:
            raise DataError(f"{path}, line 1: header column {col!r} is not field:type")
        if typ not in ATOMIC_TYPES:
            raise DataError(f"{path}, line 1: field {field!r} has unknown type {typ!r} (known: {', '.join(ATOMIC_TYPES)})")
        if field in out:
            raise DataError(f"{path}, line 1: field {field!r} appears more than once")
        out[field] = typ
    return out


def _require(path: Path, types: dict[str, str], field: str, allowed: tuple[str, ...]) -> None:
    if field not in types:
        have = ", ".join(map(repr, types))
        raise DataError(f"{path}, line 1: missing field {field!r} (the header has {have})")
    if types[field] not in allowed:
        raise DataError(f"{path}, line 1: field {field!r} has type {types[field]}, expected {' or '.join(allowed)}")


def _read_atomic(path: Path, types: dict[str, str], fields: list[str] | None, strict_float: bool) -> pd.DataFrame:
    """Columns ``fields`` (default all) renamed to their field names; float fields as float64 when
    ``strict_float`` (a missing value is then an error), else as text."""
    names = [f"{f}:{t}" for f, t in types.items()]
    use = [f"{f}:{types[f]}" for f in (fields if fields is not None else types)]
    kinds = {c: "float" for c in use if c.endswith(":float")} if strict_float else {}
    df = read_table(path, sep="\t", header=True, names=names, usecols=use, kinds=kinds)
    df.columns = [c.rpartition(":")[0] for c in df.columns]
    return df


def _entity(path: Path, id_field: str, kind: str):
    """(table of fields as text, sorted ids, field types) of a ``.user``/``.item`` file, or Nones when absent."""
    if not path.is_file():
        return None, None, None
    types = _field_types(path)
    _require(path, types, id_field, ("token",))
    df = _read_atomic(path, types, None, strict_float=False)
    ids = id_array(df[id_field].str.strip())
    order = unique_ids(path, ids, df.index, kind)
    df = df.iloc[order]
    return df, ids[order], types


def _specs(cfg: RecBoleConfig, types: dict[str, str], chosen: list[str] | None, id_field: str, kind: str) -> list[_Spec]:
    if chosen is None:
        chosen = [f for f, t in types.items() if f not in (id_field, cfg.title_field) and t != "float_seq"]
    specs = []
    for f in chosen:
        if f not in types:
            raise ConfigError(f"data source 'recbole': {kind}_features names {f!r}, which is not a field of the {kind} file "
                              f"(fields: {', '.join(map(repr, types))})")
        t = types[f]
        if t == "float_seq":
            raise ConfigError(f"data source 'recbole': {kind} field {f!r} is float_seq, which is not supported")
        if t == "token":
            specs.append(_Spec(f, f, "categorical", max_values=cfg.max_tokens))
        elif t == "token_seq":
            specs.append(_Spec(f, f, "multihot", sep=" ", max_values=cfg.max_seq_width))
        else:
            specs.append(_Spec(f, f, "numeric", buckets=cfg.n_buckets))
    return specs


def _rating_range(cfg: RecBoleConfig, rating: np.ndarray, has_rating: bool) -> tuple[float, float]:
    if cfg.rating_range is not None:
        return float(cfg.rating_range[0]), float(cfg.rating_range[1])
    if not has_rating:
        return 0.0, 1.0
    lo, hi = float(rating.min()), float(rating.max())
    return (min(lo, 0.0), hi) if lo == hi else (lo, hi)
