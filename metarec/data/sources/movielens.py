"""MovieLens 100K (GroupLens), read from its original files ``u.data``, ``u.user`` and ``u.item``.

Files are looked up in ``<data root>/ml-100k``; when missing and ``download`` is on, the official
archive is fetched and every file's sha256 is checked. Existing files are not re-verified on load.

Features (code 0 = unknown):

* users, categorical: ``age`` (MovieLens-1M buckets <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+;
  cardinality 8), ``gender`` (M, F; 3), ``occupation`` (the 21 of ``u.occupation``; 22),
  ``zip_prefix`` (first character: digits 0-9, any other character; 12).
* items, categorical: ``item_id`` (item code + 1; n_items + 1), ``release_year`` (5-year buckets
  from the earliest release year; unknown year -> 0). Multi-hot: ``genre`` (the 19 of ``u.genre``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metarec.data.download import DEFAULT_TIMEOUT_S, ensure_files
from metarec.data.paths import resolve_data_root
from metarec.data.schema import CategoricalField, FeatureTable, MultiHotField, RecDataset
from metarec.data.sources._ids import check_pairs, unique_ids
from metarec.data.sources._read import fail_at, read_table

ML100K_FOLDER = "ml-100k"
ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
ML100K_MEMBER_PREFIX = "ml-100k/"
REQUIRED_FILES = ("u.data", "u.user", "u.item")
# sha256 of the files taken from the official archive (checked only when downloading).
ML100K_SHA256 = {
    "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
    "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
    "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
    "u.genre": "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb",
    "u.occupation": "cd5fbec9afe345d993a62fc7817df1a4a9079c4feb267b3118763b8fd942137d",
}
ML100K_SIZES = {  # bytes: extraction refuses another size and never writes more
    "u.data": 1979173,
    "u.item": 236344,
    "u.user": 22628,
    "u.genre": 202,
    "u.occupation": 193,
}

GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip
OCCUPATIONS = (
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
    "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
    "retired", "salesman", "scientist", "student", "technician", "writer",
)  # fmt: skip
AGE_BUCKET_EDGES = (18, 25, 35, 45, 50, 56)  # lower bounds of buckets 2..7; bucket 1 is < 18
AGE_LABELS = ("under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")  # names of buckets 1..7
ZIP_PREFIXES = (*"0123456789", "other")  # names of zip_prefix codes 1..11
GENDERS = ("M", "F")
YEAR_BUCKET_SIZE = 5

_DATA_COLS = ("user", "item", "rating", "timestamp")
_USER_COLS = ("user", "age", "gender", "occupation", "zip")
_ITEM_COLS = ("item", "title", "release_date", "video_release_date", "url", *(f"g{i}" for i in range(19)))
_RELEASE_DATE = re.compile(r"^\d{1,2}-[A-Za-z]{3}-(\d{4})$")


@dataclass
class MovieLens100kConfig:
    """Options of the ``movielens100k`` source."""

    download: bool = True
    url: str = ML100K_URL
    timeout_s: float = DEFAULT_TIMEOUT_S


def movielens100k(cfg: MovieLens100kConfig, root: str | None) -> RecDataset:
    """MovieLens 100K: 943 users, 1682 movies, 100,000 ratings 1-5 with user and movie features."""
    folder = resolve_data_root(root) / ML100K_FOLDER
    ensure_files(folder, REQUIRED_FILES, "MovieLens 100K", download=cfg.download, url=cfg.url,
                 member_prefix=ML100K_MEMBER_PREFIX, timeout=cfg.timeout_s, sha256=ML100K_SHA256,
                 sizes=ML100K_SIZES)
    users = read_users(folder / "u.user")
    items = read_items(folder / "u.item")
    ratings = read_ratings(folder / "u.data", users["user"].to_numpy(), items["item"].to_numpy())
    return RecDataset(
        name="movielens100k",
        ratings=ratings,
        users=user_features(users),
        items=item_features(items),
        user_ids=users["user"].to_numpy(dtype=np.int64),
        item_ids=items["item"].to_numpy(dtype=np.int64),
        item_year=items["year"].to_numpy(dtype=np.float64),
        rating_range=(1.0, 5.0),
        item_titles=items["title"].tolist(),
    )


# ---------------------------------------------------------------------------------------------
# Parsing


def read_ratings(path: Path, user_ids: np.ndarray, item_ids: np.ndarray) -> pd.DataFrame:
    """``u.data`` as codes: columns user, item (codes of the sorted id arrays), rating, timestamp."""
    df = _read(path, "\t", _DATA_COLS, int_cols=_DATA_COLS)
    rating = df["rating"].to_numpy()
    fail_at(path, df.index, (rating < 1) | (rating > 5), lambda i: f"rating {rating[i]} is outside 1..5")
    user = _codes(path, df, "user", user_ids, "u.user")
    item = _codes(path, df, "item", item_ids, "u.item")
    check_pairs(path, df.index, user, item, user_ids, item_ids)
    return pd.DataFrame(
        {
            "user": user,
            "item": item,
            "rating": rating.astype(np.float64),
            "timestamp": df["timestamp"].to_numpy(dtype=np.int64),
        }
    )


def read_users(path: Path) -> pd.DataFrame:
    """``u.user`` sorted by id: columns user, age, gender, occupation, zip."""
    df = _read(path, "|", _USER_COLS, int_cols=("user", "age"))
    order = unique_ids(path, df["user"].to_numpy(), df.index, "user")
    return df.iloc[order].reset_index(drop=True)


def read_items(path: Path) -> pd.DataFrame:
    """``u.item`` (Latin-1) sorted by id: item, title, year (float, NaN if unknown), g0..g18 flags."""
    int_cols = ("item", *_ITEM_COLS[5:])
    df = _read(path, "|", _ITEM_COLS, int_cols=int_cols)
    order = unique_ids(path, df["item"].to_numpy(), df.index, "item")
    flags = df[list(_ITEM_COLS[5:])].to_numpy()
    bad = ((flags != 0) & (flags != 1)).any(axis=1)
    fail_at(path, df.index, bad, lambda i: f"genre flags must be 0 or 1, got {flags[i].tolist()}")
    dates = df["release_date"].str.strip()
    years = dates.str.extract(_RELEASE_DATE, expand=False)
    bad = (dates != "").to_numpy() & years.isna().to_numpy()
    fail_at(path, df.index, bad, lambda i: f"release date {dates.iat[i]!r} is not like 01-Jan-1995")
    df["year"] = pd.to_numeric(years, errors="coerce").astype(np.float64)
    return df.iloc[order].reset_index(drop=True)


def _read(path: Path, sep: str, columns: Sequence[str], int_cols: Sequence[str]) -> pd.DataFrame:
    """A headerless Latin-1 file (index: line numbers); ``DataError`` naming the first malformed line."""
    return read_table(path, sep=sep, names=columns, header=False, encoding="latin-1",
                      kinds=dict.fromkeys(int_cols, "int"))


def _codes(path: Path, df: pd.DataFrame, kind: str, known: np.ndarray, table: str) -> np.ndarray:
    """Positions of the ``kind`` ids of ``df`` in the sorted array ``known``; unknown ids are a ``DataError``."""
    ids = df[kind].to_numpy()
    pos = np.searchsorted(known, ids)
    unknown = known[np.minimum(pos, len(known) - 1)] != ids
    fail_at(path, df.index, unknown, lambda i: f"rating of {kind} id {ids[i]} that is not in {table}")
    return pos.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Features


def user_features(users: pd.DataFrame) -> FeatureTable:
    """Categorical user features: age bucket, gender, occupation, zip prefix."""
    age = users["age"].to_numpy()
    age_code = np.where(age > 0, np.digitize(age, AGE_BUCKET_EDGES) + 1, 0)
    gender = _lookup(users["gender"].str.strip().str.upper(), GENDERS)
    occupation = _lookup(users["occupation"].str.strip().str.lower(), OCCUPATIONS)
    first = users["zip"].str.strip().str[:1].fillna("")
    zip_code = np.where(first == "", 0, 11)
    digits = first.str.fullmatch("[0-9]").to_numpy(dtype=bool)
    zip_code[digits] = first[digits].astype(int).to_numpy() + 1
    fields = [
        CategoricalField("age", len(AGE_BUCKET_EDGES) + 2, values=AGE_LABELS, edges=AGE_BUCKET_EDGES),
        CategoricalField("gender", len(GENDERS) + 1, values=GENDERS),
        CategoricalField("occupation", len(OCCUPATIONS) + 1, values=OCCUPATIONS),
        CategoricalField("zip_prefix", 12, values=ZIP_PREFIXES),
    ]
    cat = np.stack([age_code, gender, occupation, zip_code], axis=1).astype(np.int64)
    return FeatureTable(categorical_fields=fields, categorical=cat)


def item_features(items: pd.DataFrame) -> FeatureTable:
    """Categorical item features (item id, release-year bucket) and the genre multi-hot."""
    n = len(items)
    year_code, year_card = year_buckets(items["year"].to_numpy(dtype=np.float64))
    fields = [CategoricalField("item_id", n + 1), CategoricalField("release_year", year_card)]
    cat = np.stack([np.arange(1, n + 1), year_code], axis=1).astype(np.int64)
    genre = items[list(_ITEM_COLS[5:])].to_numpy(dtype=np.float32)
    return FeatureTable(
        categorical_fields=fields,
        categorical=cat,
        multihot_fields=[MultiHotField("genre", len(GENRES), values=tuple(GENRES))],
        multihot=genre,
    )


def year_buckets(year: np.ndarray, size: int = YEAR_BUCKET_SIZE) -> tuple[np.ndarray, int]:
    """Codes of ``size``-year buckets starting at the earliest known year; NaN -> 0. Also the cardinality."""
    known = ~np.isnan(year)
    if not known.any():
        return np.zeros(len(year), dtype=np.int64), 1
    base = int(np.nanmin(year)) // size * size
    codes = np.zeros(len(year), dtype=np.int64)
    codes[known] = (year[known].astype(np.int64) - base) // size + 1
    return codes, int(codes.max()) + 1


def _lookup(values: pd.Series, vocab: Sequence[str]) -> np.ndarray:
    """Code ``1 + index in vocab``; values not in ``vocab`` get 0."""
    mapping = {v: k + 1 for k, v in enumerate(vocab)}
    return values.map(mapping).fillna(0).to_numpy(dtype=np.int64)
