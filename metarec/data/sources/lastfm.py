"""HetRec 2011 Last.fm 2K (``hetrec2011-lastfm-2k``), read from its original ``.dat`` files.

Files are looked up in ``<data root>/lastfm-2k``: ``user_artists.dat`` (play counts), ``artists.dat``
(names; LF, UTF-8), ``tags.dat`` (Latin-1), ``user_taggedartists.dat`` and ``user_friends.dat``; all are
tab-separated with a header row (CRLF except ``artists.dat``). When missing and ``download`` is on, the
official archive is fetched from GroupLens and every file's sha256 is checked (the values of
``/work/shared/datasets/README.md``). Existing files are not re-verified on load.

The dataset is implicit feedback (``RecDataset.implicit`` is true): a user's play count of an artist
becomes the rating by ``weighting``:

* ``log`` (default): ``1 + log10(count)`` clipped to [1, 5], so 1 play -> 1, 10 -> 2, 10,000 or
  more -> 5; ``rating_range`` (1, 5).
* ``binary``: 1.0 for every listened artist; ``rating_range`` (0, 1).
* ``raw``: the count itself; ``rating_range`` (1, largest count).

Every artist of ``artists.dat`` is an item (17,632), every user of ``user_artists.dat`` a user (1,892).
Play counts must be positive integers; a repeated (user, artist) pair or an artist missing from
``artists.dat`` is a ``DataError`` naming file and line. Tag assignments of artists missing from
``artists.dat`` are ignored (the published file has 390 such artist ids); a tag id missing from
``tags.dat`` or a user missing from ``user_artists.dat`` is an error.

Features (code 0 = unknown):

* users, categorical: ``friends`` (number of friends in ``user_friends.dat``, log2 buckets 0, 1, 2-3,
  4-7, 8-15, 16-31, 32+ -> 1..7; cardinality 8), or, with ``friend_feature: false``, the constant field
  ``constant`` (cardinality 2).
* items, categorical: ``item_id`` (item code + 1). Multi-hot: ``tag``, the ``top_tags`` tags with the
  most assignments (ties by tag id); an artist has a tag when at least ``min_tag_count`` users gave it.
  Items have no release year (``item_year`` is NaN) and ratings no time (``timestamp`` 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metarec.data.download import DEFAULT_TIMEOUT_S, ensure_files
from metarec.data.paths import resolve_data_root
from metarec.data.schema import RecDataset
from metarec.data.sources._encode import constant_users, feature_table, item_id_field
from metarec.data.sources._ids import check_pairs, codes_of, unique_ids
from metarec.data.sources._read import check_option, fail_at, read_table
from metarec.errors import ConfigError

LASTFM_FOLDER = "lastfm-2k"
LASTFM_URL = "https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip"
LASTFM_MEMBER_PREFIX = ""  # the archive holds the files at its top level
REQUIRED_FILES = ("user_artists.dat", "artists.dat", "tags.dat", "user_taggedartists.dat", "user_friends.dat")
LASTFM_SHA256 = {
    "user_artists.dat": "001400dc3c7d2667fca6e4ea6dc6acc31a9dd28ad5cd0f74cea988c019934d3b",
    "artists.dat": "c173881362c6b28551368fecb3c0be5a6a30a6cd859e1f5775413dfe46d48648",
    "tags.dat": "e95175f259be4c0c47644ae23d66131cd6d5767142a1405000e79f5584691d70",
    "user_taggedartists.dat": "d31fe938fcfeed6f0059f37a36b156f63674d073fc2553e5cc9dc1595e365bc7",
    "user_friends.dat": "9a3a8f7fa5f5ec832335e5b58ed69a4cf27c6f6f6afcde62134810eea46445a7",
}
LASTFM_SIZES = {  # bytes: extraction refuses another size and never writes more
    "user_artists.dat": 1296455,
    "artists.dat": 1925879,
    "tags.dat": 234468,
    "user_taggedartists.dat": 4366696,
    "user_friends.dat": 251565,
}
WEIGHTINGS = ("log", "binary", "raw")
LOG_RANGE = (1.0, 5.0)
FRIEND_BUCKETS = 7  # 0, 1, 2-3, 4-7, 8-15, 16-31, 32+


@dataclass
class LastFm2kConfig:
    """Options of the ``lastfm2k`` source."""

    weighting: str = "log"  # log | binary | raw: how a play count becomes the rating
    top_tags: int = 50  # width of the item multi-hot ``tag``
    min_tag_count: int = 1  # users who must give an artist a tag for the artist to have it
    friend_feature: bool = True
    download: bool = True
    url: str = LASTFM_URL
    timeout_s: float = DEFAULT_TIMEOUT_S


def lastfm2k(cfg: LastFm2kConfig, root: str | None) -> RecDataset:
    """HetRec 2011 Last.fm: 1,892 users, 17,632 artists, 92,834 play counts as implicit ratings, with tags."""
    check_option("lastfm2k", "weighting", cfg.weighting, WEIGHTINGS)
    if cfg.top_tags < 0 or cfg.min_tag_count < 1:
        raise ConfigError("data source 'lastfm2k': top_tags must be >= 0 and min_tag_count >= 1")
    folder = resolve_data_root(root) / LASTFM_FOLDER
    ensure_files(folder, REQUIRED_FILES, "Last.fm 2K", download=cfg.download, url=cfg.url,
                 member_prefix=LASTFM_MEMBER_PREFIX, timeout=cfg.timeout_s, sha256=LASTFM_SHA256,
                 sizes=LASTFM_SIZES)
    artists = _read_artists(folder / "artists.dat")
    artist_ids = artists["id"].to_numpy()
    path = folder / "user_artists.dat"
    cols = ("userID", "artistID", "weight")
    ua = read_table(path, sep="\t", header=True, required=cols, usecols=cols, kinds=dict.fromkeys(cols, "int"))
    count = ua["weight"].to_numpy()
    fail_at(path, ua.index, count < 1, lambda i: f"play count {count[i]} is not a positive integer")
    user_ids = np.unique(ua["userID"].to_numpy())
    user, _ = codes_of(path, ua["userID"].to_numpy(), ua.index, user_ids, "user", "user_artists.dat")
    item, _ = codes_of(path, ua["artistID"].to_numpy(), ua.index, artist_ids, "artist", "artists.dat")
    check_pairs(path, ua.index, user, item, user_ids, artist_ids)
    rating, rating_range = weigh(count, cfg.weighting)
    ratings = pd.DataFrame({"user": user, "item": item, "rating": rating,
                            "timestamp": np.zeros(len(user), dtype=np.int64)})
    n_items = len(artists)
    tags, tag_names = _tag_matrix(folder, artist_ids, user_ids, cfg)
    items = feature_table([item_id_field(n_items)], [("tag", tags, tag_names)], n_items)
    if cfg.friend_feature:
        friends = _friend_counts(folder / "user_friends.dat", user_ids)
        codes = np.minimum(np.floor(np.log2(np.maximum(friends, 1))).astype(np.int64) + 2, FRIEND_BUCKETS)
        codes[friends == 0] = 1
        users = feature_table([("friends", codes, FRIEND_BUCKETS + 1)], [], len(user_ids))
    else:
        users = constant_users(len(user_ids))
    return RecDataset(
        name="lastfm2k",
        ratings=ratings,
        users=users,
        items=items,
        user_ids=user_ids.astype(np.int64),
        item_ids=artist_ids.astype(np.int64),
        item_year=np.full(n_items, np.nan),
        rating_range=rating_range,
        item_titles=artists["name"].tolist(),
        implicit=True,
    )


def log10(x: np.ndarray) -> np.ndarray:
    """``log10`` of each entry, the same on every processor: the C library's, once per distinct value.
    numpy's own ``np.log10`` takes a SIMD kernel where the CPU has AVX-512 and differs from it in the last
    bit for some play counts — the ratings, and the dataset fingerprint a saved split checks, would then
    depend on the machine (a split saved on one could not be loaded on the other)."""
    values, at = np.unique(x, return_inverse=True)
    return np.array([math.log10(v) for v in values.tolist()], dtype=np.float64)[at].reshape(x.shape)


def weigh(count: np.ndarray, weighting: str) -> tuple[np.ndarray, tuple[float, float]]:
    """Ratings from positive play counts and their range, per :data:`WEIGHTINGS`."""
    count = count.astype(np.float64)
    if weighting == "log":
        return np.clip(1.0 + log10(count), *LOG_RANGE), LOG_RANGE
    if weighting == "binary":
        return np.ones_like(count), (0.0, 1.0)
    return count, (1.0, float(max(count.max(initial=1.0), 1.0)))


def _read_artists(path: Path) -> pd.DataFrame:
    df = read_table(path, sep="\t", header=True, required=("id", "name"), kinds={"id": "int"})
    order = unique_ids(path, df["id"].to_numpy(), df.index, "artist")
    out = df.iloc[order]
    return pd.DataFrame({"id": out["id"].to_numpy(dtype=np.int64), "name": out["name"].astype(str).to_numpy()})


def _tag_matrix(folder: Path, artist_ids: np.ndarray, user_ids: np.ndarray,
                cfg: LastFm2kConfig) -> tuple[np.ndarray, list[str]]:
    """0/1 [n_artists, top_tags]: the most assigned tags (ties by tag id), given by >= min_tag_count users;
    and the tags' names (columns without a tag, when fewer are used, are named "")."""
    tpath = folder / "tags.dat"
    tags = read_table(tpath, sep="\t", header=True, encoding="latin-1", required=("tagID", "tagValue"),
                      kinds={"tagID": "int"})
    tag_ids = tags["tagID"].to_numpy()
    unique_ids(tpath, tag_ids, tags.index, "tag")
    tag_ids = np.sort(tag_ids)
    path = folder / "user_taggedartists.dat"
    cols = ("userID", "artistID", "tagID")
    ta = read_table(path, sep="\t", header=True, required=cols, usecols=cols, kinds=dict.fromkeys(cols, "int"))
    codes_of(path, ta["userID"].to_numpy(), ta.index, user_ids, "user", "user_artists.dat")
    tag, _ = codes_of(path, ta["tagID"].to_numpy(), ta.index, tag_ids, "tag", "tags.dat")
    artist, known = codes_of(path, ta["artistID"].to_numpy(), ta.index, artist_ids, "artist", "artists.dat", drop=True)
    tag, artist = tag[known], artist[known]
    mat = np.zeros((len(artist_ids), cfg.top_tags), dtype=np.float32)
    names = [""] * cfg.top_tags
    if cfg.top_tags == 0 or len(tag) == 0:
        return mat, names
    per_tag = np.bincount(tag, minlength=len(tag_ids))
    top = np.lexsort((np.arange(len(tag_ids)), -per_tag))[: cfg.top_tags]
    top = top[per_tag[top] > 0]
    column = np.full(len(tag_ids), -1, dtype=np.int64)
    column[top] = np.arange(len(top))
    pairs = pd.DataFrame({"a": artist, "c": column[tag]})
    pairs = pairs[pairs["c"] >= 0]
    counts = pairs.groupby(["a", "c"]).size()
    counts = counts[counts >= cfg.min_tag_count]
    mat[counts.index.get_level_values(0).to_numpy(), counts.index.get_level_values(1).to_numpy()] = 1.0
    value = dict(zip(tags["tagID"].to_numpy().tolist(), tags["tagValue"].astype(str).tolist()))
    for j, t in enumerate(top):
        names[j] = value[int(tag_ids[t])]
    return mat, names


def _friend_counts(path: Path, user_ids: np.ndarray) -> np.ndarray:
    cols = ("userID", "friendID")
    df = read_table(path, sep="\t", header=True, required=cols, usecols=cols, kinds=dict.fromkeys(cols, "int"))
    user, _ = codes_of(path, df["userID"].to_numpy(), df.index, user_ids, "user", "user_artists.dat")
    codes_of(path, df["friendID"].to_numpy(), df.index, user_ids, "friend", "user_artists.dat")
    dup = df.duplicated(list(cols)).to_numpy()
    fail_at(path, df.index, dup, lambda i: f"duplicate friend pair {df['userID'].iat[i]}, {df['friendID'].iat[i]}")
    return np.bincount(user, minlength=len(user_ids))
