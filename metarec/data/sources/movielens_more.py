"""MovieLens 1M, 20M and 25M (GroupLens), read from their original files.

Files are looked up in ``<data root>/ml-1m``, ``<data root>/ml-20m`` and ``<data root>/ml-25m``. When
missing and ``download`` is on, the official archive is fetched from GroupLens and the needed files are
extracted. **Checksums:** no sha256 of these archives is pinned. For ml-1m each downloaded file is
checked against its known git blob id (``ratings.dat``, ``users.dat``, ``movies.dat``); for ml-20m and
ml-25m nothing is pinned, the files are only validated line by line when loaded. Set ``archive_md5`` to
the MD5 that GroupLens publishes next to each archive (``<url>.md5``) to have the download checked too.
Existing files are never re-verified on load.

``movielens1m`` (``::``-separated, Latin-1): 6,040 users, 3,883 movies, 1,000,209 ratings 1-5.

* users, categorical: ``age`` (the seven ML-1M age codes 1, 18, 25, 35, 45, 50, 56 -> 1..7; cardinality
  8, the same buckets as ``movielens100k``), ``gender`` (M, F; 3), ``occupation`` (codes 0-20 -> 1..21;
  22), ``zip_prefix`` (first character: digits 0-9 -> 1..10, any other character 11, empty 0; 12).
* items, categorical: ``item_id`` (item code + 1), ``release_year`` (5-year buckets from the earliest
  year; 0 when the title has no year). Multi-hot: ``genre`` (the 18 ML-1M genres, :data:`ML1M_GENRES`).

``movielens20m`` / ``movielens25m`` (``ratings.csv``, ``movies.csv`` with headers, UTF-8): half-star
ratings 0.5-5. No user features are published, so users have one constant categorical field
``constant`` (cardinality 2). Items as for ml-1m with the 19 genres of :data:`ML20M_GENRES` (the 18 plus
IMAX; ``Children`` there is ``Children's`` in ml-1m and either spelling is accepted); ``(no genres
listed)`` gives an all-zero genre row. ``tags.csv``, ``links.csv`` and the genome
files are not read.

Release years come from the title's trailing ``(1995)`` (``(2007-)`` counts as 2007); NaN without one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metarec.data.download import DEFAULT_TIMEOUT_S, ensure_files
from metarec.data.paths import resolve_data_root
from metarec.data.schema import RecDataset
from metarec.data.sources._encode import constant_users, feature_table, item_id_field, title_years
from metarec.data.sources._ids import check_pairs, codes_of, unique_ids
from metarec.data.sources._read import fail_at, read_table
from metarec.data.sources.movielens import AGE_LABELS, ZIP_PREFIXES, year_buckets

GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
ML1M_URL = GROUPLENS + "ml-1m.zip"
ML20M_URL = GROUPLENS + "ml-20m.zip"
ML25M_URL = GROUPLENS + "ml-25m.zip"
ML1M_FILES = ("ratings.dat", "users.dat", "movies.dat")
ML_CSV_FILES = ("ratings.csv", "movies.csv")
# git blob ids of the canonical ml-1m files (agreeing across independent public repositories; see
# /work/shared/datasets/README.md). Checked on download only.
ML1M_BLOB_IDS = {
    "ratings.dat": "77a7c4b150f588c23bb9e1f068aa996c0b413695",
    "users.dat": "2f86be06c70946984c0d5d56f9fcaa658eef139e",
    "movies.dat": "9a735435722829dad68446ef1c30d001d5d00c1d",
}

ML1M_GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
# ml-20m/25m write "Children" where ml-1m writes "Children's" (both are accepted, in one column).
ML20M_GENRES = tuple("Children" if g == "Children's" else g for g in ML1M_GENRES) + ("IMAX",)
GENRE_ALIASES = {"Children's": "Children", "Children": "Children's"}
NO_GENRES = "(no genres listed)"
ML1M_AGE_CODES = (1, 18, 25, 35, 45, 50, 56)
ML1M_OCCUPATIONS = 21  # codes 0..20
GENDERS = ("M", "F")


@dataclass
class MovieLens1mConfig:
    """Options of ``movielens1m``. Downloaded files are checked against their known git blob ids; the
    archive's own checksum is not pinned (set ``archive_md5`` to check it)."""

    download: bool = True
    url: str = ML1M_URL
    timeout_s: float = DEFAULT_TIMEOUT_S
    archive_md5: str = ""  # hex MD5 of the zip; empty: not checked


@dataclass
class MovieLens20mConfig:
    """Options of ``movielens20m``. Checksums are not pinned: downloaded files are only validated when
    parsed, unless ``archive_md5`` is set."""

    download: bool = True
    url: str = ML20M_URL
    timeout_s: float = DEFAULT_TIMEOUT_S
    archive_md5: str = ""


@dataclass
class MovieLens25mConfig:
    """Options of ``movielens25m``. Checksums are not pinned: downloaded files are only validated when
    parsed, unless ``archive_md5`` is set."""

    download: bool = True
    url: str = ML25M_URL
    timeout_s: float = DEFAULT_TIMEOUT_S
    archive_md5: str = ""


# ---------------------------------------------------------------------------------------------
# MovieLens 1M


def movielens1m(cfg: MovieLens1mConfig, root: str | None) -> RecDataset:
    """MovieLens 1M: 6,040 users, 3,883 movies, 1,000,209 ratings 1-5 with user and movie features."""
    folder = resolve_data_root(root) / "ml-1m"
    ensure_files(folder, ML1M_FILES, "MovieLens 1M", download=cfg.download, url=cfg.url,
                 member_prefix=f"{folder.name}/", timeout=cfg.timeout_s, blob_ids=ML1M_BLOB_IDS,
                 archive_md5=cfg.archive_md5)
    users = _read_ml1m_users(folder / "users.dat")
    items = _read_movies(folder / "movies.dat", sep="::", encoding="latin-1", genres=ML1M_GENRES, header=False)
    path = folder / "ratings.dat"
    r = read_table(path, sep="::", header=False, names=("user", "item", "rating", "timestamp"), encoding="latin-1",
                   kinds=dict.fromkeys(("user", "item", "rating", "timestamp"), "int"))
    rating = r["rating"].to_numpy()
    fail_at(path, r.index, (rating < 1) | (rating > 5), lambda i: f"rating {rating[i]} is outside 1..5")
    ratings = _ratings(path, r, users["id"], items["id"], "users.dat", "movies.dat")
    return _dataset("movielens1m", ratings, _ml1m_user_features(users), users, items, ML1M_GENRES, (1.0, 5.0))


def _read_ml1m_users(path: Path) -> pd.DataFrame:
    df = read_table(path, sep="::", header=False, names=("id", "gender", "age", "occupation", "zip"),
                    encoding="latin-1", kinds={"id": "int", "age": "int", "occupation": "int"})
    gender = df["gender"].str.strip()
    fail_at(path, df.index, ~gender.isin(GENDERS).to_numpy(), lambda i: f"gender {gender.iat[i]!r} is not M or F")
    age = df["age"].to_numpy()
    fail_at(path, df.index, ~np.isin(age, ML1M_AGE_CODES),
            lambda i: f"age code {age[i]} is not one of {', '.join(map(str, ML1M_AGE_CODES))}")
    occ = df["occupation"].to_numpy()
    fail_at(path, df.index, (occ < 0) | (occ >= ML1M_OCCUPATIONS), lambda i: f"occupation code {occ[i]} is outside 0..20")
    order = unique_ids(path, df["id"].to_numpy(), df.index, "user")
    return df.iloc[order]


def _ml1m_user_features(users: pd.DataFrame):
    age = np.searchsorted(ML1M_AGE_CODES, users["age"].to_numpy()) + 1
    gender = users["gender"].str.strip().map({g: k + 1 for k, g in enumerate(GENDERS)}).to_numpy(dtype=np.int64)
    occupation = users["occupation"].to_numpy(dtype=np.int64) + 1
    cat = [  # with each field's codebook: raw values (the file's), and the age codes as bucket edges
        ("age", age, len(ML1M_AGE_CODES) + 1, AGE_LABELS, ML1M_AGE_CODES[1:]),
        ("gender", gender, len(GENDERS) + 1, GENDERS),
        ("occupation", occupation, ML1M_OCCUPATIONS + 1, [str(c) for c in range(ML1M_OCCUPATIONS)]),
        ("zip_prefix", zip_prefix_codes(users["zip"]), 12, ZIP_PREFIXES),
    ]
    return feature_table(cat, [], len(users))


def zip_prefix_codes(zips: pd.Series) -> np.ndarray:
    """First character of a zip code: digit d -> d + 1, any other character -> 11, empty -> 0."""
    first = zips.astype(str).str.strip().str[:1]
    codes = np.where((first == "").to_numpy(dtype=bool), 0, 11).astype(np.int64)
    digit = first.str.fullmatch("[0-9]").to_numpy(dtype=bool)
    codes[digit] = first[digit].astype(np.int64).to_numpy() + 1
    return codes


# ---------------------------------------------------------------------------------------------
# MovieLens 20M / 25M


def movielens20m(cfg: MovieLens20mConfig, root: str | None) -> RecDataset:
    """MovieLens 20M: 138,493 users, 27,278 movies, 20,000,263 half-star ratings; no user features."""
    return _movielens_csv(cfg, root, "movielens20m", "ml-20m", "MovieLens 20M")


def movielens25m(cfg: MovieLens25mConfig, root: str | None) -> RecDataset:
    """MovieLens 25M: 162,541 users, 62,423 movies, 25,000,095 half-star ratings; no user features."""
    return _movielens_csv(cfg, root, "movielens25m", "ml-25m", "MovieLens 25M")


def _movielens_csv(cfg, root: str | None, name: str, folder_name: str, label: str) -> RecDataset:
    folder = resolve_data_root(root) / folder_name
    ensure_files(folder, ML_CSV_FILES, label, download=cfg.download, url=cfg.url,
                 member_prefix=f"{folder.name}/", timeout=cfg.timeout_s, archive_md5=cfg.archive_md5)
    items = _read_movies(folder / "movies.csv", sep=",", encoding="utf-8", genres=ML20M_GENRES, header=True)
    path = folder / "ratings.csv"
    cols = ("userId", "movieId", "rating", "timestamp")
    r = read_table(path, sep=",", header=True, usecols=cols, required=cols,
                   kinds={"userId": "int", "movieId": "int", "rating": "float", "timestamp": "int"})
    r.columns = ["user", "item", "rating", "timestamp"]
    rating = r["rating"].to_numpy()
    bad = (rating < 0.5) | (rating > 5) | (np.round(rating * 2) != rating * 2)
    fail_at(path, r.index, bad, lambda i: f"rating {rating[i]} is not one of 0.5, 1.0, ..., 5.0")
    user_ids = np.unique(r["user"].to_numpy())
    users = pd.DataFrame({"id": user_ids})
    ratings = _ratings(path, r, users["id"], items["id"], "ratings.csv", "movies.csv")
    return _dataset(name, ratings, constant_users(len(users)), users, items, ML20M_GENRES, (0.5, 5.0))


# ---------------------------------------------------------------------------------------------
# Shared


def _read_movies(path: Path, *, sep: str, encoding: str, genres: tuple[str, ...], header: bool) -> pd.DataFrame:
    """Movies sorted by id: id, title, year (NaN if unknown), genre_list (validated against ``genres``)."""
    if header:
        df = read_table(path, sep=sep, header=True, encoding=encoding, usecols=("movieId", "title", "genres"),
                        kinds={"movieId": "int"}, quoted=True)
        df.columns = ["id", "title", "genres"]
    else:
        df = read_table(path, sep=sep, header=False, names=("id", "title", "genres"), encoding=encoding, kinds={"id": "int"})
    aliases = {a: b for a, b in GENRE_ALIASES.items() if b in genres and a not in genres}
    lists = df["genres"].str.strip().str.split("|", regex=False).map(lambda gs: [aliases.get(g, g) for g in gs])
    known = set(genres) | {NO_GENRES, ""}  # an empty genres field means no genre, like NO_GENRES
    bad = lists.map(lambda gs: next((g for g in gs if g not in known), None))
    fail_at(path, df.index, bad.notna().to_numpy(),
            lambda i: f"unknown genre {bad.iat[i]!r} (known: {', '.join(genres)})")
    df["genre_list"] = lists.map(lambda gs: [g for g in gs if g not in (NO_GENRES, "")])
    df["year"] = title_years(df["title"])
    order = unique_ids(path, df["id"].to_numpy(), df.index, "movie")
    return df.iloc[order]


def _ratings(path: Path, r: pd.DataFrame, user_ids: pd.Series, item_ids: pd.Series, user_table: str,
             item_table: str) -> pd.DataFrame:
    uids, iids = user_ids.to_numpy(), item_ids.to_numpy()
    user, _ = codes_of(path, r["user"].to_numpy(), r.index, uids, "user", user_table)
    item, _ = codes_of(path, r["item"].to_numpy(), r.index, iids, "movie", item_table)
    check_pairs(path, r.index, user, item, uids, iids)
    return pd.DataFrame({
        "user": user,
        "item": item,
        "rating": r["rating"].to_numpy(dtype=np.float64),
        "timestamp": r["timestamp"].to_numpy(dtype=np.int64),
    })


def _dataset(name, ratings, user_table, users, items, genres, rating_range) -> RecDataset:
    n_items = len(items)
    year = items["year"].to_numpy(dtype=np.float64)
    year_code, year_card = year_buckets(year)
    genre, _ = _genre_matrix(items["genre_list"], genres)
    item_table = feature_table([item_id_field(n_items), ("release_year", year_code, year_card)], [("genre", genre)], n_items)
    return RecDataset(
        name=name,
        ratings=ratings,
        users=user_table,
        items=item_table,
        user_ids=users["id"].to_numpy(dtype=np.int64),
        item_ids=items["id"].to_numpy(dtype=np.int64),
        item_year=year,
        rating_range=rating_range,
        item_titles=items["title"].tolist(),
    )


def _genre_matrix(lists: pd.Series, genres: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
    """0/1 matrix with one column per genre of ``genres`` in that fixed order."""
    col = {g: k for k, g in enumerate(genres)}
    mat = np.zeros((len(lists), len(genres)), dtype=np.float32)
    exploded = lists.reset_index(drop=True).explode()
    exploded = exploded[exploded.notna()]
    mat[exploded.index.to_numpy(dtype=np.int64), exploded.map(col).to_numpy(dtype=np.int64)] = 1.0
    return mat, list(genres)

