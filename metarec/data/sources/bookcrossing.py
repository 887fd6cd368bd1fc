"""Book-Crossing (Ziegler et al. 2005), read from its original ``BX-*.csv`` files.

Files are looked up in ``<data root>/<folder>`` (default ``book-crossing``): ``BX-Book-Ratings.csv``,
``BX-Users.csv`` and ``BX-Books.csv``, ``;``-separated, every field quoted with ``"`` (``\\"`` escapes a
quote), Latin-1, with HTML's ``&amp;`` left in some texts (turned back into ``&``). There is no
download: the original archive is no longer served by its publisher.

Ratings are explicit 1-10, or 0 for an implicit interaction. ``implicit: drop`` (default) removes the
0s, ``rating_range`` is then (1, 10); ``keep`` keeps them as rating 0 with ``rating_range`` (0, 10).
Ratings always validate strictly: a missing column, a non-integer user id or rating, a rating outside
0..10, a repeated (user, ISBN) pair or no rating left after filtering is a ``DataError`` naming file and
line. Many published ratings name ISBNs absent from ``BX-Books.csv``: ``unknown_ids: drop`` (default)
leaves out ratings of users or ISBNs missing from the user/book tables, ``error`` rejects them.
ISBNs are compared exactly as written (after trimming spaces), so ``034545104X`` and ``034545104x``
are different books, as in the published files.

The published ``BX-Books.csv`` has a few rows whose title ends in ``\\"``, which shifts their later
fields, and many implausible years (0, 2050) and ages (0, 244). With ``lenient_features: true``
(default) such feature values become unknown (code 0) and a book row with the wrong number of fields
keeps only its ISBN and title; with ``false`` they are a ``DataError``. Ages outside 5-100 and years
outside 1800-2006 are unknown in both modes.

Features (code 0 = unknown); unless ``keep_unrated`` is set, users and books without any kept rating
are left out of the tables:

* users, categorical: ``age`` (the MovieLens buckets <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+;
  cardinality 8), ``country`` (last comma-separated part of ``Location``, lower-cased; the
  ``max_countries`` most frequent, then one code for any other; empty or ``n/a`` -> 0).
* items, categorical: ``item_id`` (item code + 1), ``release_year`` (5-year buckets of
  ``Year-Of-Publication``), ``author`` and ``publisher`` (the ``max_authors`` / ``max_publishers`` most
  frequent values, then one code for any other).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metarec.data.paths import DATA_DIR_ENV, resolve_data_root
from metarec.data.schema import RecDataset
from metarec.data.sources._encode import feature_table, item_id_field, vocab_codes
from metarec.data.sources._ids import UNKNOWN_IDS, check_pairs, codes_of, nonempty, unique_ids
from metarec.data.sources._read import (
    check_option,
    fail_at,
    quoted,
    read_ragged,
    read_table,
    require_files,
    resolve_path,
    to_floats,
)
from metarec.data.sources.movielens import AGE_BUCKET_EDGES, year_buckets
from metarec.errors import ConfigError

RATINGS_FILE, USERS_FILE, BOOKS_FILE = "BX-Book-Ratings.csv", "BX-Users.csv", "BX-Books.csv"
IMPLICIT = ("drop", "keep")
AGE_RANGE = (5, 100)
YEAR_RANGE = (1800, 2006)
_RATING_COLS = ("User-ID", "ISBN", "Book-Rating")
_USER_COLS = ("User-ID", "Location", "Age")
_BOOK_COLS = ("ISBN", "Book-Title", "Book-Author", "Year-Of-Publication", "Publisher")
_NULLS = ("", "NULL", "null", "NaN", "nan", "n/a", "N/A")


@dataclass
class BookCrossingConfig:
    """Options of the ``bookcrossing`` source."""

    folder: str = "book-crossing"  # under the data root, or an absolute path
    implicit: str = "drop"  # drop | keep: what to do with the implicit rating 0
    unknown_ids: str = "drop"  # drop | error: ratings of users/ISBNs missing from BX-Users/BX-Books
    keep_unrated: bool = False  # keep users and books without any kept rating in the feature tables
    lenient_features: bool = True  # unparseable feature values -> unknown instead of a DataError
    max_countries: int = 50
    max_authors: int = 1000
    max_publishers: int = 500


def bookcrossing(cfg: BookCrossingConfig, root: str | None) -> RecDataset:
    """Book-Crossing: explicit 1-10 book ratings (and optional implicit 0s) with user and book features."""
    check_option("bookcrossing", "implicit", cfg.implicit, IMPLICIT)
    check_option("bookcrossing", "unknown_ids", cfg.unknown_ids, UNKNOWN_IDS)
    for name in ("max_countries", "max_authors", "max_publishers"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"data source 'bookcrossing': option {name} must be >= 1")
    folder = resolve_path(resolve_data_root(root), cfg.folder)
    require_files(folder, (RATINGS_FILE, USERS_FILE, BOOKS_FILE),
                  f"place the Book-Crossing CSV dump there or set {DATA_DIR_ENV} / the folder option")
    users = _read_users(folder / USERS_FILE, cfg.lenient_features)
    books = _read_books(folder / BOOKS_FILE, cfg.lenient_features)
    path = folder / RATINGS_FILE
    r = read_table(path, sep=";", header=True, encoding="latin-1", quoted=True, escapechar="\\",
                   required=_RATING_COLS, usecols=_RATING_COLS, kinds={"User-ID": "int", "Book-Rating": "int"})
    rating = r["Book-Rating"].to_numpy()
    fail_at(path, r.index, (rating < 0) | (rating > 10), lambda i: f"rating {rating[i]} is outside 0..10")
    isbn = r["ISBN"].str.strip().to_numpy(dtype=str)
    fail_at(path, r.index, np.char.str_len(isbn) == 0, lambda i: "missing ISBN")
    lines = r.index.to_numpy()
    user_raw = r["User-ID"].to_numpy()
    if cfg.implicit == "drop":
        keep = rating > 0
        lines, user_raw, isbn, rating = lines[keep], user_raw[keep], isbn[keep], rating[keep]
        nonempty(path, len(lines), "after dropping the implicit 0 ratings (implicit: drop)")
    drop = cfg.unknown_ids == "drop"
    user, ku = codes_of(path, user_raw, lines, users["id"].to_numpy(), "user", USERS_FILE, drop=drop)
    item, ki = codes_of(path, isbn, lines, books["id"].to_numpy(), "ISBN", BOOKS_FILE, drop=drop)
    keep = ku & ki
    lines, user, item, rating = lines[keep], user[keep], item[keep], rating[keep]
    nonempty(path, len(lines), f"after dropping ratings of users and ISBNs missing from {USERS_FILE}/{BOOKS_FILE}")
    check_pairs(path, lines, user, item, users["id"].to_numpy(), books["id"].to_numpy())
    if not cfg.keep_unrated:
        used_u, user = np.unique(user, return_inverse=True)
        used_i, item = np.unique(item, return_inverse=True)
        users, books = users.iloc[used_u], books.iloc[used_i]
    ratings = pd.DataFrame({
        "user": user.astype(np.int64),
        "item": item.astype(np.int64),
        "rating": rating.astype(np.float64),
        "timestamp": np.zeros(len(user), dtype=np.int64),
    })
    return RecDataset(
        name="bookcrossing",
        ratings=ratings,
        users=_user_features(users, cfg),
        items=_item_features(books, cfg),
        user_ids=users["id"].to_numpy(dtype=np.int64),
        item_ids=books["id"].to_numpy(dtype=str),
        item_year=books["year"].to_numpy(dtype=np.float64),
        rating_range=(0.0, 10.0) if cfg.implicit == "keep" else (1.0, 10.0),
        item_titles=books["title"].tolist(),
    )


def _unescape(s: pd.Series) -> pd.Series:
    return s.astype(str).str.replace("&amp;", "&", regex=False).str.strip()


def _read_users(path: Path, lenient: bool) -> pd.DataFrame:
    """Users sorted by id: id, location, age (float, NaN when unknown)."""
    df = read_table(path, sep=";", header=True, encoding="latin-1", quoted=True, escapechar="\\",
                    required=_USER_COLS, usecols=_USER_COLS, kinds={"User-ID": "int"})
    age_text = df["Age"].str.strip()
    age = to_floats(age_text)
    if not lenient:
        bad = np.isnan(age) & ~age_text.isin(_NULLS).to_numpy()
        fail_at(path, df.index, bad, lambda i: f"age {quoted(age_text.iat[i])} is not a number or NULL")
    age[(age < AGE_RANGE[0]) | (age > AGE_RANGE[1])] = np.nan
    out = pd.DataFrame({"id": df["User-ID"].to_numpy(), "location": _unescape(df["Location"]).to_numpy(), "age": age},
                       index=df.index)
    order = unique_ids(path, out["id"].to_numpy(), out.index, "user")
    return out.iloc[order]


def _read_books(path: Path, lenient: bool) -> pd.DataFrame:
    """Books sorted by ISBN: id, title, author, publisher, year (NaN when unknown)."""
    df, ragged = read_ragged(path, sep=";", encoding="latin-1", required=_BOOK_COLS, escapechar="\\")
    n_fields = len(df.columns)
    if not lenient:
        fail_at(path, df.index, ragged, lambda i: f"expected {n_fields} fields separated by ';'")
    year_text = df["Year-Of-Publication"].astype(str).str.strip()
    year = to_floats(year_text)
    if not lenient:
        bad = np.isnan(year) & ~year_text.isin(_NULLS).to_numpy()
        fail_at(path, df.index, bad, lambda i: f"year {quoted(year_text.iat[i])} is not a number")
    year[(year < YEAR_RANGE[0]) | (year > YEAR_RANGE[1]) | (np.floor(year) != year)] = np.nan
    year[ragged] = np.nan
    author = _unescape(df["Book-Author"]).mask(ragged, "")
    publisher = _unescape(df["Publisher"]).mask(ragged, "")
    out = pd.DataFrame({
        "id": df["ISBN"].astype(str).str.strip().to_numpy(dtype=str),
        "title": _unescape(df["Book-Title"]).to_numpy(),
        "author": author.to_numpy(),
        "publisher": publisher.to_numpy(),
        "year": year,
    }, index=df.index)
    order = unique_ids(path, out["id"].to_numpy(dtype=str), out.index, "ISBN")
    return out.iloc[order]


def _user_features(users: pd.DataFrame, cfg: BookCrossingConfig):
    age = users["age"].to_numpy(dtype=np.float64)
    age_code = np.where(np.isnan(age), 0, np.digitize(np.nan_to_num(age), AGE_BUCKET_EDGES) + 1)
    country = users["location"].astype(str).str.rsplit(",", n=1).str[-1].str.strip().str.lower()
    country = country.mask(country.isin(("n/a", "na", "none", "")), "")
    c_code, c_card, _ = vocab_codes(country, cfg.max_countries)
    return feature_table([("age", age_code, len(AGE_BUCKET_EDGES) + 2), ("country", c_code, c_card)], [], len(users))


def _item_features(books: pd.DataFrame, cfg: BookCrossingConfig):
    n = len(books)
    year_code, year_card = year_buckets(books["year"].to_numpy(dtype=np.float64))
    a_code, a_card, _ = vocab_codes(books["author"], cfg.max_authors)
    p_code, p_card, _ = vocab_codes(books["publisher"], cfg.max_publishers)
    cat = [item_id_field(n), ("release_year", year_code, year_card), ("author", a_code, a_card), ("publisher", p_code, p_card)]
    return feature_table(cat, [], n)
