"""Tests for the file-based sources beyond MovieLens 100K: MovieLens 1M/20M/25M, Book-Crossing,
Last.fm 2K, RecBole atomic files and generic CSV/Parquet tables.

Small fixture files are written in each publisher's original format; Last.fm is also checked on the
real files found through ``METAREC_DATA_DIR`` (``lastfm_root``).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from archive_helpers import zip_bytes
import yaml

from metarec.data.schema import RecDataset, dataset_fingerprint
from metarec.data.sources import (
    SOURCES,
    lastfm,
    load_dataset,
    movielens_more,
    source_config,
    tabular,
)
from metarec.data.download import git_blob_sha1
from metarec.data.sources._encode import quantile_buckets, vocab_codes
from metarec.data.splits import SplitConfig, make_split
from metarec.errors import ConfigError, DataError

CONFIGS = Path(__file__).resolve().parent.parent / "metarec" / "configs"
LASTFM_REQUIRED = lastfm.REQUIRED_FILES






def _write(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def _all_files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _replace_line(data: bytes, lineno: int, new: str, encoding: str = "latin-1") -> bytes:
    eol = b"\r\n" if b"\r\n" in data else b"\n"
    lines = data.split(eol)
    lines[lineno - 1] = new.encode(encoding)
    return eol.join(lines)


def _error(name: str, params: dict, root: Path) -> str:
    with pytest.raises(DataError) as err:
        load_dataset(name, params, str(root))
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def _check_consistent(ds: RecDataset) -> None:
    ds.validate()
    assert ds.ratings.dtypes.to_dict() == {
        "user": np.int64, "item": np.int64, "rating": np.float64, "timestamp": np.int64
    }  # fmt: skip
    assert len(ds.user_ids) == ds.n_users and len(ds.item_ids) == ds.n_items
    assert len(ds.item_year) == ds.n_items
    assert not ds.ratings.duplicated(["user", "item"]).any()
    assert ds.items.multihot.dtype == np.float32 and ds.users.categorical.dtype == np.int64
    if ds.item_titles:
        assert len(ds.item_titles) == ds.n_items


# ---------------------------------------------------------------------------------------------
# MovieLens 1M

ML1M: dict[str, bytes] = {
    "users.dat": b"1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::T8H1N\n",
    "movies.dat": (
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "2::Misérables, Les (1995)::Drama|Musical\n"
        "3::Untitled::Drama\n"
        "4::Never Rated (1919)::Western\n"
    ).encode("latin-1"),
    "ratings.dat": b"1::1::5::978300760\n1::2::3::978302109\n2::1::4::978301968\n3::3::1::978300275\n",
}


def test_ml1m_fake_files(tmp_path: Path) -> None:
    _write(tmp_path / "ml-1m", ML1M)
    ds = load_dataset("movielens1m", {"download": False}, str(tmp_path))
    _check_consistent(ds)
    assert (ds.n_users, ds.n_items, len(ds.ratings)) == (3, 4, 4)
    assert ds.item_titles[1] == "Misérables, Les (1995)"
    assert ds.schema.to_dict()["user_categorical"] == [
        {"name": "age", "size": 8}, {"name": "gender", "size": 3},
        {"name": "occupation", "size": 22}, {"name": "zip_prefix", "size": 12},
    ]  # fmt: skip
    assert ds.users.categorical.tolist() == [[1, 2, 11, 5], [7, 1, 17, 8], [3, 1, 16, 11]]
    genres = movielens_more.ML1M_GENRES
    assert [genres[j] for j in np.flatnonzero(ds.items.multihot[0])] == ["Animation", "Children's", "Comedy"]
    assert ds.schema.to_dict()["item_multihot"] == [{"name": "genre", "size": 18}]
    assert ds.item_year[0] == 1995 and np.isnan(ds.item_year[2]) and ds.item_year[3] == 1919
    # 5-year buckets from 1915: 1919 -> 1, 1995 -> 17, no year -> 0
    assert ds.items.categorical.tolist() == [[1, 17], [2, 17], [3, 0], [4, 1]]
    assert ds.ratings["rating"].tolist() == [5.0, 3.0, 4.0, 1.0]
    assert ds.ratings["timestamp"].iloc[0] == 978300760
    assert ds.rating_range == (1.0, 5.0) and not ds.implicit


@pytest.mark.parametrize(
    ("file", "lineno", "new_line", "what"),
    [
        ("ratings.dat", 2, "1::2::3", "expected 4 fields separated by '::', found 3"),
        ("ratings.dat", 3, "2::1::four::978301968", "rating 'four' is not an integer"),
        ("ratings.dat", 1, "1::1::6::978300760", "rating 6 is outside 1..5"),
        ("ratings.dat", 4, "9::3::1::978300275", "user id 9 is not in users.dat"),
        ("ratings.dat", 4, "3::42::1::978300275", "movie id 42 is not in movies.dat"),
        ("ratings.dat", 3, "1::1::4::978301968", "duplicate rating of user 1 for item 1"),
        ("ratings.dat", 2, "", "expected 4 fields"),
        ("users.dat", 2, "2::X::56::16::70072", "gender 'X' is not M or F"),
        ("users.dat", 2, "2::M::57::16::70072", "age code 57 is not one of"),
        ("users.dat", 2, "2::M::56::21::70072", "occupation code 21 is outside 0..20"),
        ("users.dat", 3, "1::M::25::15::T8H1N", "duplicate user id 1"),
        ("movies.dat", 3, "3::Untitled::Dramedy", "unknown genre 'Dramedy'"),
        ("movies.dat", 2, "x::Y (1995)::Drama", "id 'x' is not an integer"),
    ],
)
def test_ml1m_malformed_names_file_and_line(tmp_path: Path, file: str, lineno: int, new_line: str, what: str) -> None:
    _write(tmp_path / "ml-1m", {**ML1M, file: _replace_line(ML1M[file], lineno, new_line)})
    msg = _error("movielens1m", {"download": False}, tmp_path)
    assert re.search(rf"{re.escape(file)}, line {lineno}: ", msg), msg
    assert what in msg, msg


def test_ml1m_missing_files_without_download(tmp_path: Path) -> None:
    msg = _error("movielens1m", {"download": False}, tmp_path)
    assert "ratings.dat, users.dat, movies.dat" in msg and str(tmp_path / "ml-1m") in msg
    assert "METAREC_DATA_DIR" in msg


def test_git_blob_sha1_matches_git(tmp_path: Path) -> None:
    p = tmp_path / "hello"
    p.write_bytes(b"hello\n")  # `git hash-object` of "hello\n"
    assert git_blob_sha1(p) == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_ml1m_download_checks_blob_ids(tmp_path: Path, http_server: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    www, base = http_server
    (www / "ml-1m.zip").write_bytes(zip_bytes({**ML1M, "README": b"x"}, "ml-1m/"))
    url = f"{base}/ml-1m.zip"
    # the real blob ids: the fake files do not match, nothing is kept
    msg = _error("movielens1m", {"url": url}, tmp_path / "a")
    assert "git blob id is" in msg and movielens_more.ML1M_BLOB_IDS["ratings.dat"] in msg
    assert _all_files(tmp_path / "a" / "ml-1m") == []
    fake_ids = {}
    for name, data in ML1M.items():
        (tmp_path / name).write_bytes(data)
        fake_ids[name] = git_blob_sha1(tmp_path / name)
    assert fake_ids["ratings.dat"] == hashlib.sha1(b"blob %d\0" % len(ML1M["ratings.dat"]) + ML1M["ratings.dat"]).hexdigest()
    monkeypatch.setattr(movielens_more, "ML1M_BLOB_IDS", fake_ids)
    ds = load_dataset("movielens1m", {"url": url}, str(tmp_path / "b"))
    assert len(ds.ratings) == 4
    assert _all_files(tmp_path / "b") == ["ml-1m", *(f"ml-1m/{n}" for n in sorted(ML1M))]


# ---------------------------------------------------------------------------------------------
# MovieLens 20M / 25M

ML20M: dict[str, bytes] = {
    "movies.csv": (
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '2,"American President, The (1995)",Comedy|Drama|Romance\n'
        "3,Babylon 5,(no genres listed)\n"
        '4,"Dark Knight, The (2008)",Action|Crime|Drama|IMAX\n'
        "5,Amélie (Fabuleux destin d'Amélie Poulain  Le) (2001),Comedy|Romance\n"
        "6,Unrated (2007-),Documentary\n"
    ).encode(),
    "ratings.csv": (
        b"userId,movieId,rating,timestamp\n"
        b"1,2,3.5,1112486027\n1,1,4.0,1112484676\n7,3,0.5,1094785740\n7,4,5,1094785741\n12,5,2.5,1094785742\n"
    ),
}


@pytest.mark.parametrize("name", ["movielens20m", "movielens25m"])
def test_ml20m_fake_files(tmp_path: Path, name: str) -> None:
    folder = "ml-20m" if name == "movielens20m" else "ml-25m"
    _write(tmp_path / folder, ML20M)
    ds = load_dataset(name, {"download": False}, str(tmp_path))
    _check_consistent(ds)
    assert (ds.n_users, ds.n_items, len(ds.ratings)) == (3, 6, 5)
    assert ds.user_ids.tolist() == [1, 7, 12]
    assert ds.schema.to_dict()["user_categorical"] == [{"name": "constant", "size": 2}]
    assert (ds.users.categorical == 1).all()
    assert ds.item_titles[1] == "American President, The (1995)"
    assert ds.item_titles[4].startswith("Amélie")
    genres = movielens_more.ML20M_GENRES
    assert ds.schema.to_dict()["item_multihot"] == [{"name": "genre", "size": 19}]
    assert [genres[j] for j in np.flatnonzero(ds.items.multihot[0])] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert ds.items.multihot[2].sum() == 0  # (no genres listed)
    assert ds.items.multihot[3, genres.index("IMAX")] == 1
    assert np.isnan(ds.item_year[2]) and ds.item_year[3] == 2008 and ds.item_year[5] == 2007
    assert ds.ratings["rating"].tolist() == [3.5, 4.0, 0.5, 5.0, 2.5]
    assert ds.rating_range == (0.5, 5.0)
    assert ds.name == name


@pytest.mark.parametrize(
    ("file", "lineno", "new_line", "what"),
    [
        ("ratings.csv", 1, "userId,movieId,stars,timestamp", "missing column 'rating'"),
        ("ratings.csv", 3, "1,1,5.5,1112484676", "rating 5.5 is not one of 0.5"),
        ("ratings.csv", 3, "1,1,0.25,1112484676", "rating 0.25 is not one of"),
        ("ratings.csv", 4, "7,3,,1094785740", "missing rating"),
        ("ratings.csv", 4, "7,3,good,1094785740", "rating 'good' is not a number"),
        ("ratings.csv", 4, "7,99,0.5,1094785740", "movie id 99 is not in movies.csv"),
        ("ratings.csv", 4, "7,3,0.5,1094785740,9", "expected 4 fields"),
        ("ratings.csv", 3, "1,2,4.0,1112484676", "duplicate rating of user 1 for item 2"),
        ("movies.csv", 3, '2,"American President, The (1995)",Comedy|Soap', "unknown genre 'Soap'"),
        ("movies.csv", 4, "1,Again (1995),Drama", "duplicate movie id 1"),
    ],
)
def test_ml20m_malformed_names_file_and_line(tmp_path: Path, file: str, lineno: int, new_line: str, what: str) -> None:
    _write(tmp_path / "ml-20m", {**ML20M, file: _replace_line(ML20M[file], lineno, new_line, "utf-8")})
    msg = _error("movielens20m", {"download": False}, tmp_path)
    assert re.search(rf"{re.escape(file)}, line {lineno}: ", msg), msg
    assert what in msg, msg


def test_ml20m_large_file_path_reports_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files above the field-check size are parsed by pandas directly; errors still name the line."""
    from metarec.data.sources import _read

    monkeypatch.setattr(_read, "CHECK_FIELDS_MAX_BYTES", 10)
    _write(tmp_path / "ml-20m", ML20M)
    assert len(load_dataset("movielens20m", {"download": False}, str(tmp_path)).ratings) == 5
    for lineno, line, what in [(5, "7,4,x,1094785741", "rating 'x' is not a number"),
                               (4, "7,3,0.5,1094785740,1", "expected 4 fields separated by ',', found 5"),
                               (3, "1,z,4.0,1112484676", "movieId 'z' is not an integer"),
                               (6, "12,5", "missing rating")]:
        _write(tmp_path / "ml-20m", {"ratings.csv": _replace_line(ML20M["ratings.csv"], lineno, line)})
        msg = _error("movielens20m", {"download": False}, tmp_path)
        assert f"ratings.csv, line {lineno}: {what}" in msg, msg


def test_ml20m_download_unpinned_and_archive_md5(tmp_path: Path, http_server: tuple[Path, str]) -> None:
    www, base = http_server
    data = zip_bytes({**ML20M, "tags.csv": b"userId,movieId,tag,timestamp\n"}, "ml-20m/")
    (www / "ml-20m.zip").write_bytes(data)
    url = f"{base}/ml-20m.zip"
    msg = _error("movielens20m", {"url": url, "archive_md5": "0" * 32}, tmp_path / "a")
    assert "md5 is " + hashlib.md5(data).hexdigest() in msg
    assert _all_files(tmp_path / "a" / "ml-20m") == []
    ds = load_dataset("movielens20m", {"url": url, "archive_md5": hashlib.md5(data).hexdigest()}, str(tmp_path / "b"))
    assert len(ds.ratings) == 5
    ds = load_dataset("movielens20m", {"url": url}, str(tmp_path / "c"))  # nothing pinned
    assert len(ds.ratings) == 5
    assert _all_files(tmp_path / "c") == ["ml-20m", "ml-20m/movies.csv", "ml-20m/ratings.csv"]
    msg = _error("movielens25m", {"url": url}, tmp_path / "d")  # wrong archive: no ml-25m/ members
    assert "no file 'ml-25m/ratings.csv'" in msg
    assert _all_files(tmp_path / "d" / "ml-25m") == []


def test_ml20m_offline_message(tmp_path: Path) -> None:
    msg = _error("movielens25m", {"url": "http://127.0.0.1:9/ml-25m.zip", "timeout_s": 5.0}, tmp_path)
    assert "could not download" in msg and "ratings.csv, movies.csv" in msg and str(tmp_path / "ml-25m") in msg


def test_crlf_and_trailing_blank_lines_are_accepted(tmp_path: Path) -> None:
    _write(tmp_path / "ml-1m", {n: d.replace(b"\n", b"\r\n") + b"\r\n\r\n" for n, d in ML1M.items()})
    assert len(load_dataset("movielens1m", {"download": False}, str(tmp_path)).ratings) == 4
    _write(tmp_path / "ml-20m", {n: d.replace(b"\n", b"\r\n") + b"\n\n" for n, d in ML20M.items()})
    assert len(load_dataset("movielens20m", {"download": False}, str(tmp_path)).ratings) == 5


def test_blank_line_inside_a_file_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path / "ml-1m", {**ML1M, "ratings.dat": ML1M["ratings.dat"].replace(b"\n", b"\n\n", 1)})
    assert "ratings.dat, line 2: expected 4 fields" in _error("movielens1m", {"download": False}, tmp_path)
    _write(tmp_path / "ml-20m", {**ML20M, "movies.csv": ML20M["movies.csv"].replace(b"\n", b"\n\n", 1)})
    assert "movies.csv, line 2: blank line" in _error("movielens20m", {"download": False}, tmp_path)


# ---------------------------------------------------------------------------------------------
# Book-Crossing

_BOOK_HEAD = '"ISBN";"Book-Title";"Book-Author";"Year-Of-Publication";"Publisher";"Image-URL-S";"Image-URL-M";"Image-URL-L"'
BX: dict[str, bytes] = {
    "BX-Users.csv": (
        '"User-ID";"Location";"Age"\r\n'
        '"1";"nyc, new york, usa";NULL\r\n'
        '"2";"stockton, california, usa";"18"\r\n'
        '"3";"moscow, yukon territory, russia";NULL\r\n'
        '"4";"porto, v.n.gaia, portugal";"17"\r\n'
        '"5";"farnborough, hants, n/a";"244"\r\n'
    ).encode("latin-1"),
    "BX-Books.csv": (
        _BOOK_HEAD + "\r\n"
        '"0195153448";"Classical Mythology";"Mark P. O. Morford";"2002";"Oxford University Press";"s";"m";"l"\r\n'
        '"0002005018";"Clara Callan";"Richard Bruce Wright";"2001";"Simon &amp; Schuster";"s";"m";"l"\r\n'
        '"0060973129";"Decision in Normandy";"Carlo D\'Este";"1991";"Simon &amp; Schuster";"s";"m";"l"\r\n'
        '"0374157065";"Flu";"Gina Bari Kolata";"0";"Farrar Straus Giroux";"s";"m";"l"\r\n'
        '"078946697X";"DK Readers: Creating the \\"X-Men\\", How It All Began (Level 4: Proficient Readers)\\";'
        '"Michael Teitelbaum";"2000";"DK Publishing Inc";"s";"m";"l"\r\n'
        '"0399135782";"The Kitchen God\'s Wife";"Amy Tan";"1991";"Putnam Pub Group";"s";"m";"l"\r\n'
        '"3404921038";"Wie Barney es sieht: \\"Pünktchen\\" &amp; Co.";"Amy Tan";"2050";"Lübbe";"s";"m";"l"\r\n'
    ).encode("latin-1"),
    "BX-Book-Ratings.csv": (
        '"User-ID";"ISBN";"Book-Rating"\r\n'
        '"1";"034545104X";"0"\r\n'
        '"2";"0195153448";"0"\r\n'
        '"2";"0002005018";"5"\r\n'
        '"3";"0060973129";"8"\r\n'
        '"3";"0195153448";"6"\r\n'
        '"4";"0374157065";"0"\r\n'
        '"4";"078946697X";"7"\r\n'
        '"5";"0399135782";"10"\r\n'
        '"5";"9999999999";"3"\r\n'
        '"5";"3404921038";"9"\r\n'
    ).encode("latin-1"),
}


def test_bookcrossing_explicit_default(tmp_path: Path) -> None:
    _write(tmp_path / "book-crossing", BX)
    ds = load_dataset("bookcrossing", {}, str(tmp_path))
    _check_consistent(ds)
    assert ds.rating_range == (1.0, 10.0) and not ds.implicit
    # explicit ratings of known users and ISBNs; unrated users (1) and books are left out
    assert ds.user_ids.tolist() == [2, 3, 4, 5]
    assert ds.item_ids.tolist() == ["0002005018", "0060973129", "0195153448", "0399135782", "078946697X", "3404921038"]
    assert len(ds.ratings) == 6 and sorted(ds.ratings["rating"].tolist()) == [5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert ds.item_titles[5] == 'Wie Barney es sieht: "Pünktchen" & Co.'
    schema = ds.schema.to_dict()
    assert [f["name"] for f in schema["user_categorical"]] == ["age", "country"]
    assert [f["name"] for f in schema["item_categorical"]] == ["item_id", "release_year", "author", "publisher"]
    # ages: 18 -> bucket 2, NULL -> 0, 17 -> 1, 244 -> unknown; countries usa, russia, portugal, n/a
    assert ds.users.categorical[:, 0].tolist() == [2, 0, 1, 0]
    assert ds.users.categorical[:, 1].tolist() == [3, 2, 1, 0]
    # the misaligned DK row keeps ISBN and title only; years 0 and 2050 are unknown
    dk = ds.item_ids.tolist().index("078946697X")
    assert ds.item_titles[dk].startswith('DK Readers: Creating the "X-Men"')
    assert ds.items.categorical[dk, 1:].tolist() == [0, 0, 0]
    assert np.isnan(ds.item_year[dk]) and np.isnan(ds.item_year[5])
    assert ds.item_year[:4].tolist() == [2001.0, 1991.0, 2002.0, 1991.0]
    publishers = ds.items.categorical[:, 3]
    assert publishers[0] == publishers[1] == 1  # "Simon & Schuster", the most frequent
    authors = ds.items.categorical[:, 2]
    assert authors[3] == authors[5] == 1  # Amy Tan twice


def test_bookcrossing_options(tmp_path: Path) -> None:
    _write(tmp_path / "book-crossing", BX)
    keep = load_dataset("bookcrossing", {"implicit": "keep", "keep_unrated": True}, str(tmp_path))
    _check_consistent(keep)
    assert keep.rating_range == (0.0, 10.0)
    assert (keep.n_users, keep.n_items) == (5, 7)
    assert len(keep.ratings) == 8 and (keep.ratings["rating"] == 0).sum() == 2
    msg = _error("bookcrossing", {"unknown_ids": "error"}, tmp_path)
    assert "BX-Book-Ratings.csv, line 10: ISBN id 9999999999 is not in BX-Books.csv" in msg
    msg = _error("bookcrossing", {"unknown_ids": "error", "implicit": "keep"}, tmp_path)
    assert "line 2: ISBN id 034545104X is not in BX-Books.csv" in msg
    msg = _error("bookcrossing", {"lenient_features": False}, tmp_path)
    assert "BX-Users.csv" in msg or "BX-Books.csv" in msg
    with pytest.raises(ConfigError, match="implicit must be one of drop, keep"):
        load_dataset("bookcrossing", {"implicit": "maybe"}, str(tmp_path))
    small = load_dataset("bookcrossing", {"max_authors": 1}, str(tmp_path))
    assert small.schema.to_dict()["item_categorical"][2] == {"name": "author", "size": 3}  # Amy Tan, other, unknown


def test_bookcrossing_strict_features(tmp_path: Path) -> None:
    users = BX["BX-Users.csv"].replace(b'"244"', b'"99"')
    books = _replace_line(BX["BX-Books.csv"], 6, '"078946697X";"DK";"M T";"2000";"DK";"s";"m";"l"')
    _write(tmp_path / "book-crossing", {**BX, "BX-Users.csv": users, "BX-Books.csv": books})
    ds = load_dataset("bookcrossing", {"lenient_features": False}, str(tmp_path))
    assert len(ds.ratings) == 6
    bad_year = _replace_line(books, 7, '"0399135782";"The Kitchen";"Amy Tan";"19x1";"P";"s";"m";"l"')
    _write(tmp_path / "book-crossing", {"BX-Books.csv": bad_year})
    assert "BX-Books.csv, line 7: year '19x1' is not a number" in _error("bookcrossing", {"lenient_features": False}, tmp_path)
    _write(tmp_path / "book-crossing", {"BX-Books.csv": BX["BX-Books.csv"]})
    msg = _error("bookcrossing", {"lenient_features": False}, tmp_path)
    assert "BX-Books.csv, line 6: expected 8 fields" in msg


@pytest.mark.parametrize(
    ("file", "lineno", "new_line", "what"),
    [
        ("BX-Book-Ratings.csv", 1, '"User-ID";"ISBN";"Rating"', "missing column 'Book-Rating'"),
        ("BX-Book-Ratings.csv", 4, '"2";"0002005018";"five"', "Book-Rating 'five' is not an integer"),
        ("BX-Book-Ratings.csv", 4, '"2";"0002005018";"11"', "rating 11 is outside 0..10"),
        ("BX-Book-Ratings.csv", 4, '"x2";"0002005018";"5"', "User-ID 'x2' is not an integer"),
        ("BX-Book-Ratings.csv", 4, '"2";"";"5"', "missing ISBN"),
        ("BX-Book-Ratings.csv", 5, '"2";"0002005018";"8"', "duplicate rating of user 2 for item 0002005018"),
        ("BX-Book-Ratings.csv", 5, '"3";"0060973129"', "expected 3 fields separated by ';', found 2"),
        ("BX-Users.csv", 3, '"1";"nyc";NULL', "duplicate user id 1"),
        ("BX-Users.csv", 1, '"User-ID";"Age"', "missing column 'Location'"),
        ("BX-Books.csv", 3, '"0195153448";"Again";"A";"2001";"P";"s";"m";"l"', "duplicate ISBN id 0195153448"),
    ],
)
def test_bookcrossing_malformed(tmp_path: Path, file: str, lineno: int, new_line: str, what: str) -> None:
    _write(tmp_path / "book-crossing", {**BX, file: _replace_line(BX[file], lineno, new_line)})
    msg = _error("bookcrossing", {}, tmp_path)
    assert re.search(rf"{re.escape(file)}, line {lineno}: ", msg), msg
    assert what in msg, msg


def test_bookcrossing_empty_after_filtering(tmp_path: Path) -> None:
    ratings = b'"User-ID";"ISBN";"Book-Rating"\r\n"1";"034545104X";"0"\r\n"2";"0195153448";"0"\r\n'
    _write(tmp_path / "book-crossing", {**BX, "BX-Book-Ratings.csv": ratings})
    assert "no interactions left after dropping the implicit 0 ratings" in _error("bookcrossing", {}, tmp_path)
    ratings = b'"User-ID";"ISBN";"Book-Rating"\r\n"1";"034545104X";"4"\r\n'
    _write(tmp_path / "book-crossing", {"BX-Book-Ratings.csv": ratings})
    assert "no interactions left after dropping ratings of users and ISBNs missing" in _error("bookcrossing", {}, tmp_path)
    (tmp_path / "book-crossing" / "BX-Users.csv").unlink()
    msg = _error("bookcrossing", {}, tmp_path)
    assert "BX-Users.csv" in msg and "missing" in msg


# ---------------------------------------------------------------------------------------------
# Last.fm 2K (fake files)


def _crlf(text: str, encoding: str = "utf-8") -> bytes:
    return text.replace("\n", "\r\n").encode(encoding)


LASTFM: dict[str, bytes] = {
    "user_artists.dat": _crlf("userID\tartistID\tweight\n2\t51\t13883\n2\t52\t1\n3\t51\t10\n4\t53\t352698\n"),
    "artists.dat": (
        "id\tname\turl\tpictureURL\n"
        "51\tDuran Duran\thttp://www.last.fm/music/Duran+Duran\thttp://x/1.jpg\n"
        '52\t"Weird Al" Yankovic\thttp://www.last.fm/music/Weird\t\n'
        "53\tSigur Rós\thttp://www.last.fm/music/Sigur+R%C3%B3s\thttp://x/3.jpg\n"
        "54\tNever Played\thttp://x\t\n"
    ).encode(),
    "tags.dat": _crlf("tagID\ttagValue\n1\tmetal\n2\tchill\n3\tmúsica\n", "latin-1"),
    "user_taggedartists.dat": _crlf(
        "userID\tartistID\ttagID\tday\tmonth\tyear\n"
        "2\t52\t2\t1\t4\t2009\n3\t52\t2\t1\t4\t2009\n2\t51\t1\t1\t4\t2009\n4\t53\t3\t1\t5\t1956\n2\t999\t3\t1\t1\t2010\n"
    ),
    "user_friends.dat": _crlf("userID\tfriendID\n2\t3\n3\t2\n2\t4\n4\t2\n"),
}


def test_lastfm_fake_files(tmp_path: Path) -> None:
    _write(tmp_path / "lastfm-2k", LASTFM)
    ds = load_dataset("lastfm2k", {"download": False, "top_tags": 2}, str(tmp_path))
    _check_consistent(ds)
    assert ds.implicit and ds.rating_range == (1.0, 5.0)
    assert (ds.n_users, ds.n_items, len(ds.ratings)) == (3, 4, 4)
    assert ds.item_titles == ["Duran Duran", '"Weird Al" Yankovic', "Sigur Rós", "Never Played"]
    np.testing.assert_allclose(ds.ratings["rating"].to_numpy(), [5.0, 1.0, 2.0, 5.0])
    # tags by assignments: chill (2), then metal and música (1 each, ties by id); the artist 999 is ignored
    assert ds.schema.to_dict()["item_multihot"] == [{"name": "tag", "size": 2}]
    assert ds.items.multihot.tolist() == [[0, 1], [1, 0], [0, 0], [0, 0]]
    # friends: user 2 has 2 -> bucket 3, users 3 and 4 have 1 -> bucket 2
    assert ds.users.categorical[:, 0].tolist() == [3, 2, 2]
    assert np.isnan(ds.item_year).all() and (ds.ratings["timestamp"] == 0).all()
    two = load_dataset("lastfm2k", {"download": False, "top_tags": 3, "min_tag_count": 2}, str(tmp_path))
    assert two.items.multihot.sum() == 1 and two.items.multihot[1, 0] == 1
    assert two.schema.to_dict()["item_multihot"] == [{"name": "tag", "size": 3}]


def test_lastfm_weighting(tmp_path: Path) -> None:
    _write(tmp_path / "lastfm-2k", LASTFM)
    b = load_dataset("lastfm2k", {"download": False, "weighting": "binary", "friend_feature": False}, str(tmp_path))
    assert (b.ratings["rating"] == 1.0).all() and b.rating_range == (0.0, 1.0) and b.implicit
    assert b.schema.to_dict()["user_categorical"] == [{"name": "constant", "size": 2}]
    r = load_dataset("lastfm2k", {"download": False, "weighting": "raw"}, str(tmp_path))
    assert r.ratings["rating"].tolist() == [13883.0, 1.0, 10.0, 352698.0] and r.rating_range == (1.0, 352698.0)
    with pytest.raises(ConfigError, match="weighting must be one of log, binary, raw"):
        load_dataset("lastfm2k", {"weighting": "sqrt"}, str(tmp_path))


def test_lastfm_log_weights_do_not_depend_on_the_processor() -> None:
    """``weighting=log`` takes the C library's log10 once per play count, bit for bit, instead of numpy's
    SIMD kernel (on AVX-512 machines it differs in the last bit for some counts, which changed the
    dataset fingerprint: a split saved on one machine could not be loaded on another)."""
    import math
    import os
    import subprocess
    import sys

    from metarec.data.sources.lastfm import weigh

    counts = np.array([[1, 7, 13883], [352698, 7, 2]])
    got, _ = weigh(counts, "log")
    want = np.clip([[1.0 + math.log10(c) for c in row] for row in counts.tolist()], 1.0, 5.0)
    assert got.shape == counts.shape and got.tobytes() == np.asarray(want, dtype=np.float64).tobytes()
    many = np.arange(1, 20001)
    code = ("import hashlib, numpy as np; from metarec.data.sources.lastfm import weigh; "
            "print(hashlib.sha256(weigh(np.arange(1, 20001), 'log')[0].tobytes()).hexdigest())")
    without = "AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL X86_V4"  # numpy's AVX-512 kernels off
    runs = [subprocess.run([sys.executable, "-c", code], env={**os.environ, "NPY_DISABLE_CPU_FEATURES": features},
                           capture_output=True, text=True, check=True).stdout for features in ("", without)]
    plain, without_avx512 = runs
    assert plain == without_avx512 and weigh(many, "log")[0].min() == 1.0


@pytest.mark.parametrize(
    ("file", "lineno", "new_line", "what"),
    [
        ("user_artists.dat", 1, "userID\tartistID\tcount", "missing column 'weight'"),
        ("user_artists.dat", 3, "2\t52\t0", "play count 0 is not a positive integer"),
        ("user_artists.dat", 3, "2\t52\t1.5", "weight '1.5' is not an integer"),
        ("user_artists.dat", 3, "2\t77\t1", "artist id 77 is not in artists.dat"),
        ("user_artists.dat", 4, "2\t51\t10", "duplicate rating of user 2 for item 51"),
        ("user_artists.dat", 4, "3\t51", "expected 3 fields separated by '\\t', found 2"),
        ("artists.dat", 3, "51\tDouble\thttp://x\t", "duplicate artist id 51"),
        ("user_taggedartists.dat", 3, "3\t52\t9\t1\t4\t2009", "tag id 9 is not in tags.dat"),
        ("user_taggedartists.dat", 3, "8\t52\t2\t1\t4\t2009", "user id 8 is not in user_artists.dat"),
        ("user_friends.dat", 2, "2\t5", "friend id 5 is not in user_artists.dat"),
        ("tags.dat", 3, "x\tchill", "tagID 'x' is not an integer"),
    ],
)
def test_lastfm_malformed(tmp_path: Path, file: str, lineno: int, new_line: str, what: str) -> None:
    enc = "latin-1" if file == "tags.dat" else "utf-8"
    _write(tmp_path / "lastfm-2k", {**LASTFM, file: _replace_line(LASTFM[file], lineno, new_line, enc)})
    msg = _error("lastfm2k", {"download": False}, tmp_path)
    assert re.search(rf"{re.escape(file)}, line {lineno}: ", msg), msg
    assert what in msg, msg


def test_lastfm_download_from_local_server(tmp_path: Path, http_server: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    www, base = http_server
    (www / "lastfm.zip").write_bytes(zip_bytes({**LASTFM, "readme.txt": b"x"}, ""))
    url = f"{base}/lastfm.zip"
    assert "checksum mismatch" in _error("lastfm2k", {"url": url}, tmp_path / "a")
    assert _all_files(tmp_path / "a" / "lastfm-2k") == []
    monkeypatch.setattr(lastfm, "LASTFM_SHA256", {n: hashlib.sha256(d).hexdigest() for n, d in LASTFM.items()})
    monkeypatch.setattr(lastfm, "LASTFM_SIZES", {n: len(d) for n, d in LASTFM.items()})
    ds = load_dataset("lastfm2k", {"url": url}, str(tmp_path / "b"))
    assert len(ds.ratings) == 4
    assert _all_files(tmp_path / "b" / "lastfm-2k") == sorted(LASTFM)


# ---------------------------------------------------------------------------------------------
# Last.fm 2K (real files)


@pytest.fixture(scope="module")
def lastfm_real(lastfm_root: Path) -> RecDataset:
    return load_dataset("lastfm2k", {"download": False}, str(lastfm_root))


@pytest.mark.realdata
def test_lastfm_real_sizes(lastfm_real: RecDataset) -> None:
    ds = lastfm_real
    _check_consistent(ds)
    assert (ds.n_users, ds.n_items, len(ds.ratings)) == (1892, 17632, 92834)
    assert ds.implicit and ds.rating_range == (1.0, 5.0)
    assert ds.item_titles[0] == "MALICE MIZER" and ds.item_ids[0] == 1
    assert ds.schema.to_dict() == {
        "user_categorical": [{"name": "friends", "size": 8}],
        "user_multihot": [],
        "item_categorical": [{"name": "item_id", "size": 17633}],
        "item_multihot": [{"name": "tag", "size": 50}],
    }
    per_user = ds.ratings.groupby("user").size()
    assert per_user.max() == 50 and abs(len(ds.ratings) / ds.n_users - 49.067) < 1e-3
    assert (ds.users.categorical[:, 0] >= 2).all()  # every user has at least one friend
    assert ds.ratings["rating"].min() == 1.0 and ds.ratings["rating"].max() == 5.0
    first = ds.ratings.iloc[0]  # user 2, artist 51, 13883 plays
    assert (ds.user_ids[int(first["user"])], ds.item_ids[int(first["item"])]) == (2, 51)
    assert first["rating"] == 5.0
    assert ds.items.multihot.sum(axis=0).min() > 0
    assert isinstance(dataset_fingerprint(ds), str)


@pytest.mark.realdata
def test_lastfm_real_raw_counts_and_split(lastfm_root: Path, lastfm_real: RecDataset) -> None:
    raw = load_dataset("lastfm2k", {"download": False, "weighting": "raw", "top_tags": 0}, str(lastfm_root))
    assert raw.rating_range == (1.0, 352698.0)
    assert raw.ratings["rating"].iloc[0] == 13883.0
    np.testing.assert_allclose(lastfm_real.ratings["rating"], np.clip(1 + np.log10(raw.ratings["rating"]), 1, 5))
    cfg = yaml.safe_load((CONFIGS / "data" / "lastfm2k.yaml").read_text())
    split = make_split(lastfm_real, SplitConfig(**cfg["split"]))
    assert split.manifest["stats"]["train_users"] > 1000


@pytest.mark.realdata
def test_lastfm_download_with_official_checksums(lastfm_root: Path, tmp_path: Path, http_server: tuple[Path, str]) -> None:
    www, base = http_server
    src = lastfm_root / "lastfm-2k"
    (www / "l.zip").write_bytes(zip_bytes({n: (src / n).read_bytes() for n in LASTFM_REQUIRED}, ""))
    ds = load_dataset("lastfm2k", {"url": f"{base}/l.zip"}, str(tmp_path))
    assert len(ds.ratings) == 92834


# ---------------------------------------------------------------------------------------------
# RecBole atomic files

RB: dict[str, bytes] = {
    "toy.inter": (
        b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        b"1\t10\t4\t881250949\n1\t11\t2.5\t881250950\n2\t10\t5\t881250951\n2\t12\t1\t881250952.7\n"
    ),
    "toy.user": (
        b"user_id:token\tage:float\tgender:token\toccupation:token\tzip_code:token\n"
        b"1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\t94043\n3\t\tM\tstudent\t\n"
    ),
    "toy.item": (
        b"item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\tscore:float_seq\n"
        b"10\tToy Story\t1995\tAnimation Children's Comedy\t1.0 2.0\n"
        b"11\tGoldenEye\t1995\tAction Adventure Thriller\t\n"
        b"12\tFour Rooms\t\tThriller\t3\n"
    ),
}


def test_recbole_atomic_files(tmp_path: Path) -> None:
    _write(tmp_path / "toy", RB)
    ds = load_dataset("recbole", {"name": "toy", "n_buckets": 2}, str(tmp_path))
    _check_consistent(ds)
    assert ds.name == "toy" and not ds.implicit
    assert (ds.n_users, ds.n_items, len(ds.ratings)) == (3, 3, 4)
    assert ds.user_ids.tolist() == [1, 2, 3] and ds.item_ids.tolist() == [10, 11, 12]
    assert ds.rating_range == (1.0, 5.0)
    assert ds.ratings["timestamp"].tolist() == [881250949, 881250950, 881250951, 881250952]
    schema = ds.schema.to_dict()
    assert schema["user_categorical"] == [
        {"name": "age", "size": 3}, {"name": "gender", "size": 3},
        {"name": "occupation", "size": 4}, {"name": "zip_code", "size": 3},
    ]  # fmt: skip
    assert ds.users.categorical.tolist() == [[1, 1, 3, 1], [2, 2, 1, 2], [0, 1, 2, 0]]
    assert schema["item_categorical"] == [{"name": "item_id", "size": 4}, {"name": "release_year", "size": 2}]
    assert schema["item_multihot"] == [{"name": "class", "size": 6}]  # title and float_seq are not features
    assert ds.items.multihot.sum(axis=1).tolist() == [3, 3, 1]
    assert ds.item_titles == ["Toy Story", "GoldenEye", "Four Rooms"]
    assert ds.item_year[:2].tolist() == [1995, 1995] and np.isnan(ds.item_year[2])


def test_recbole_implicit_and_options(tmp_path: Path) -> None:
    inter = "u:token\ti:token\n" "a\tx\n" "b\tx\n" "a\ty\n"
    _write(tmp_path / "data" / "imp", {"imp.inter": inter.encode()})
    ds = load_dataset("recbole", {"name": "imp", "folder": str(tmp_path / "data" / "imp"), "user_field": "u", "item_field": "i"}, None)
    _check_consistent(ds)
    assert ds.implicit and ds.rating_range == (0.0, 1.0) and (ds.ratings["rating"] == 1.0).all()
    assert ds.user_ids.tolist() == ["a", "b"] and ds.item_ids.tolist() == ["x", "y"]
    assert ds.schema.to_dict()["user_categorical"] == [{"name": "constant", "size": 2}]
    assert (ds.ratings["timestamp"] == 0).all()
    _write(tmp_path / "toy", RB)
    ds = load_dataset("recbole", {"name": "toy", "user_features": ["gender"], "item_features": [], "rating_range": [0, 5]}, str(tmp_path))
    assert [f.name for f in ds.users.categorical_fields] == ["gender"] and ds.rating_range == (0.0, 5.0)
    assert [f.name for f in ds.items.categorical_fields] == ["item_id"] and ds.items.multihot.shape == (3, 0)
    with pytest.raises(ConfigError, match="float_seq"):
        load_dataset("recbole", {"name": "toy", "item_features": ["score"]}, str(tmp_path))
    with pytest.raises(ConfigError, match="not a field of the user file"):
        load_dataset("recbole", {"name": "toy", "user_features": ["salary"]}, str(tmp_path))
    with pytest.raises(ConfigError, match="name"):
        load_dataset("recbole", {}, str(tmp_path))
    assert "toy2.inter does not exist" in _error("recbole", {"name": "toy2", "folder": "toy"}, tmp_path)


@pytest.mark.parametrize(
    ("file", "lineno", "new_line", "what"),
    [
        ("toy.inter", 1, "user_id:token\titem_id:token\trating:float\ttimestamp:datetime", "unknown type 'datetime'"),
        ("toy.inter", 1, "user_id\titem_id:token\trating:float\ttimestamp:float", "'user_id' is not field:type"),
        ("toy.inter", 1, "uid:token\titem_id:token\trating:float\ttimestamp:float", "missing field 'user_id'"),
        ("toy.inter", 1, "user_id:float\titem_id:token\trating:float\ttimestamp:float", "type float, expected token"),
        ("toy.inter", 3, "1\t11\tgood\t881250950", "rating:float 'good' is not a number"),
        ("toy.inter", 3, "1\t11\t\t881250950", "missing rating:float"),
        ("toy.inter", 3, "1\t10\t3\t881250950", "duplicate rating of user 1 for item 10"),
        ("toy.inter", 3, "9\t11\t3\t881250950", "user id 9 is not in toy.user"),
        ("toy.inter", 3, "1\t19\t3\t881250950", "item id 19 is not in toy.item"),
        ("toy.inter", 3, "1\t11\t3", "expected 4 fields"),
        ("toy.user", 3, "2\tfifty\tF\tother\t94043", "age 'fifty' is not a number"),
        ("toy.user", 4, "1\t\tM\tstudent\t", "duplicate user id 1"),
        ("toy.item", 3, "\tGoldenEye\t1995\tAction\t", "missing item id"),
    ],
)
def test_recbole_malformed(tmp_path: Path, file: str, lineno: int, new_line: str, what: str) -> None:
    _write(tmp_path / "toy", {**RB, file: _replace_line(RB[file], lineno, new_line, "utf-8")})
    msg = _error("recbole", {"name": "toy"}, tmp_path)
    assert re.search(rf"{re.escape(file)}, line {lineno}: ", msg), msg
    assert what in msg, msg


def test_recbole_unknown_ids_drop(tmp_path: Path) -> None:
    inter = RB["toy.inter"] + b"7\t10\t3\t881250953\n"
    _write(tmp_path / "toy", {**RB, "toy.inter": inter})
    assert "toy.inter, line 6: user id 7 is not in toy.user" in _error("recbole", {"name": "toy"}, tmp_path)
    ds = load_dataset("recbole", {"name": "toy", "unknown_ids": "drop"}, str(tmp_path))
    assert len(ds.ratings) == 4


# ---------------------------------------------------------------------------------------------
# Generic CSV / Parquet

CSV: dict[str, bytes] = {
    "inter.csv": (
        b"user,item,stars,when\n"
        b"alice,i1,4,2020-01-01T00:00:00Z\n"
        b"alice,i2,3.5,2020-01-02\n"
        b"bob,i1,5,2020-01-03 12:00:00\n"
        b'carol,"i3",2,2021-06-01\n'
    ),
    "users.csv": b"user,age,country\nalice,30,fr\nbob,,de\ncarol,61,fr\ndave,45,\n",
    "items.csv": (
        b"item_id,title,year,genres,price\n"
        b'i1,"Heat, the",1995,Crime|Drama,9.5\n'
        b"i2,Up,2009,Animation,\n"
        b"i3,Nameless,,Drama|Crime|Noir,3\n"
    ),
}
CSV_PARAMS = {
    "interactions": "inter.csv",
    "users": "users.csv",
    "items": "items.csv",
    "columns": {"user": "user", "item": "item", "rating": "stars", "timestamp": "when"},
    "item_id_column": "item_id",
    "user_features": [{"column": "age", "type": "numeric", "buckets": 2}, {"column": "country", "name": "land"}],
    "item_features": [{"column": "genres", "type": "multihot"}, {"column": "price", "type": "numeric", "buckets": 2}],
    "item_title": "title",
    "item_year": "year",
    "name": "mine",
}


def test_csv_source(tmp_path: Path) -> None:
    _write(tmp_path, CSV)
    ds = load_dataset("csv", CSV_PARAMS, str(tmp_path))
    _check_consistent(ds)
    assert ds.name == "mine" and not ds.implicit
    assert ds.user_ids.tolist() == ["alice", "bob", "carol", "dave"]
    assert ds.item_ids.tolist() == ["i1", "i2", "i3"]
    assert ds.ratings["timestamp"].tolist() == [1577836800, 1577923200, 1578052800, 1622505600]
    assert ds.rating_range == (2.0, 5.0)
    schema = ds.schema.to_dict()
    assert schema["user_categorical"] == [{"name": "age", "size": 3}, {"name": "land", "size": 3}]
    assert ds.users.categorical.tolist() == [[1, 1], [0, 2], [2, 1], [2, 0]]
    assert schema["item_categorical"] == [{"name": "item_id", "size": 4}, {"name": "price", "size": 3}]
    assert schema["item_multihot"] == [{"name": "genres", "size": 4}]
    assert ds.items.multihot.tolist() == [[1, 1, 0, 0], [0, 0, 1, 0], [1, 1, 0, 1]]  # Crime, Drama, Animation, Noir
    assert ds.items.categorical[:, 1].tolist() == [2, 0, 1]
    assert ds.item_titles == ["Heat, the", "Up", "Nameless"]
    assert ds.item_year[:2].tolist() == [1995.0, 2009.0] and np.isnan(ds.item_year[2])


def test_csv_minimal_and_implicit(tmp_path: Path) -> None:
    (tmp_path / "i.tsv").write_text("u\ti\n3\t7\n1\t7\n1\t8\n")
    ds = load_dataset("csv", {"interactions": "i.tsv", "sep": "\t", "columns": {"user": "u", "item": "i", "rating": None}}, str(tmp_path))
    _check_consistent(ds)
    assert ds.implicit and ds.rating_range == (0.0, 1.0)
    assert ds.user_ids.tolist() == [1, 3] and ds.user_ids.dtype == np.int64  # plain integer ids stay integers
    assert ds.schema.to_dict()["item_categorical"] == [{"name": "item_id", "size": 3}]
    assert ds.schema.to_dict()["user_categorical"] == [{"name": "constant", "size": 2}]


@pytest.mark.parametrize(
    ("file", "lineno", "new_line", "what"),
    [
        ("inter.csv", 1, "user,item,rating,when", "missing column 'stars'"),
        ("inter.csv", 3, "alice,i2,lots,2020-01-02", "stars 'lots' is not a number"),
        ("inter.csv", 3, "alice,i1,3,2020-01-02", "duplicate rating of user alice for item i1"),
        ("inter.csv", 3, "alice,i9,3,2020-01-02", "item id i9 is not in items.csv"),
        ("inter.csv", 3, "zed,i2,3,2020-01-02", "user id zed is not in users.csv"),
        ("inter.csv", 3, ",i2,3,2020-01-02", "missing user id"),
        ("inter.csv", 3, "alice,i2,3,yesterday", "when 'yesterday' is neither seconds nor a date/time"),
        ("inter.csv", 3, "alice,i2,3,2020-01-02,x", "expected 4 fields"),
        ("users.csv", 3, "alice,20,de", "duplicate user id alice"),
        ("users.csv", 3, "bob,old,de", "age 'old' is not a number"),
        ("items.csv", 3, "i2,Up,later,Animation,", "year 'later' is not a number"),
        ("items.csv", 1, "item,title,year,genres,price", "missing column 'item_id'"),
    ],
)
def test_csv_malformed(tmp_path: Path, file: str, lineno: int, new_line: str, what: str) -> None:
    _write(tmp_path, {**CSV, file: _replace_line(CSV[file], lineno, new_line, "utf-8")})
    msg = _error("csv", CSV_PARAMS, tmp_path)
    assert re.search(rf"{re.escape(file)}, line {lineno}: ", msg), msg
    assert what in msg, msg


def test_csv_unknown_ids_drop_and_empty(tmp_path: Path) -> None:
    _write(tmp_path, {**CSV, "inter.csv": CSV["inter.csv"] + b"zed,i1,1,2020-01-01\n"})
    assert len(load_dataset("csv", {**CSV_PARAMS, "unknown_ids": "drop"}, str(tmp_path)).ratings) == 4
    (tmp_path / "inter.csv").write_bytes(b"user,item,stars,when\nzed,i1,1,2020-01-01\n")
    msg = _error("csv", {**CSV_PARAMS, "unknown_ids": "drop"}, tmp_path)
    assert "inter.csv: no interactions left after dropping interactions of unknown users and items" in msg
    (tmp_path / "inter.csv").write_bytes(b"user,item,stars,when\n")
    assert "inter.csv has no data rows" in _error("csv", CSV_PARAMS, tmp_path)


@pytest.mark.parametrize(
    ("params", "pattern"),
    [
        ({}, "option interactions"),
        ({"interactions": "x.csv", "format": "xlsx"}, "format must be one of auto, csv, parquet"),
        ({"interactions": "x.csv", "user_features": [{"column": "a"}]}, "user_features need a users table"),
        ({"interactions": "x.csv", "items": "i.csv", "item_features": [{"column": "a", "type": "text"}]}, r"type must be one of"),
        ({"interactions": "x.csv", "colums": {}}, "unknown option 'colums'"),
        ({"interactions": "x.csv", "user_features": [{"colum": "a"}]}, "colum"),
    ],
)
def test_csv_bad_config(params: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as err:
        load_dataset("csv", params, None)
    assert "\n" not in str(err.value)


def test_csv_parquet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    df = pd.DataFrame({"user": [1, 1, 2], "item": ["a", "b", "a"], "rating": [4.0, 3.0, 5.0]})
    if not tabular.parquet_available():
        (tmp_path / "i.parquet").write_bytes(b"PAR1")
        msg = _error("csv", {"interactions": "i.parquet"}, tmp_path)
        assert "Parquet needs pyarrow" in msg and "CSV files work without it" in msg
        return
    df.to_parquet(tmp_path / "i.parquet")
    ds = load_dataset("csv", {"interactions": "i.parquet"}, str(tmp_path))
    _check_consistent(ds)
    assert len(ds.ratings) == 3 and ds.item_ids.tolist() == ["a", "b"]
    df.loc[2, "user"] = 1
    df.loc[2, "item"] = "b"
    df.to_parquet(tmp_path / "i.parquet")
    assert "i.parquet, row 3: duplicate rating of user 1 for item b" in _error("csv", {"interactions": "i.parquet"}, tmp_path)
    df2 = pd.DataFrame({"user": ["x", "y"], "item": ["a", "a"], "rating": ["4", "five"]})
    df2.to_parquet(tmp_path / "j.pq")
    assert "j.pq, row 2: rating 'five' is not a number" in _error("csv", {"interactions": "j.pq"}, tmp_path)
    assert "j.pq: missing column 'stars'" in _error("csv", {"interactions": "j.pq", "columns": {"rating": "stars"}}, tmp_path)
    monkeypatch.setattr(tabular, "parquet_available", lambda: False)
    assert "Parquet needs pyarrow" in _error("csv", {"interactions": "i.parquet"}, tmp_path)


# ---------------------------------------------------------------------------------------------
# Shared helpers, registry and configs


def test_quantile_buckets_and_vocab() -> None:
    codes, card = quantile_buckets(np.array([1.0, 2.0, 3.0, 4.0, np.nan]), 2)
    assert codes.tolist() == [1, 1, 2, 2, 0] and card == 3
    codes, card = quantile_buckets(np.array([5.0, 5.0, 5.0]), 4)  # repeated edges merge
    assert card == 3 and codes.tolist() == [2, 2, 2]
    codes, card, vocab = vocab_codes(pd.Series(["b", "a", "b", "", "c"]), 2)
    assert vocab == ["b", "a"] and codes.tolist() == [1, 2, 1, 0, 3] and card == 4


NEW_SOURCES = ("movielens1m", "movielens20m", "movielens25m", "bookcrossing", "lastfm2k", "recbole", "csv")


def test_new_sources_registered_with_configs() -> None:
    assert set(NEW_SOURCES) <= set(SOURCES.names())
    for name in NEW_SOURCES:
        cfg = yaml.safe_load((CONFIGS / "data" / f"{name}.yaml").read_text())
        assert cfg["source"] == name
        source_config(name, cfg["params"])  # the options validate
        SplitConfig(**cfg["split"]).check()


def test_new_data_options_compose(monkeypatch: pytest.MonkeyPatch) -> None:
    from metarec.config import compose

    monkeypatch.setenv("METAREC_CONFIG_DIR", str(CONFIGS))
    for name in NEW_SOURCES:
        cfg = compose([f"data={name}"])
        assert cfg.data.source == name
