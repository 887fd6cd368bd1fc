"""Property-based fuzz tests (hypothesis) of every file-based loader beyond MovieLens 100K.

The contract is that of ``test_fuzz.py``: bad input either loads into a consistent dataset or raises
the project's own error type (:class:`DataError` / :class:`ConfigError`) with a one-line message that
names the corrupted file; no other exception type escapes.

Each loader starts from the small valid fake folder of ``test_sources_more.py`` (the publisher's
format); one file is corrupted by the strategies of ``test_fuzz.py``: 1-3 line mutations (with the
loader's own separator, quotes and odd bytes added to the nasty ones, and quote injection), truncation,
an empty or blank file, random bytes, the whole text re-encoded (UTF-16, UTF-8 for Latin-1 files, ...),
and LF / CRLF / mixed / lone-CR line ends. Each example also draws one of a few option sets.

1. MovieLens 1M (``::``, Latin-1), 20M and 25M (CSV, UTF-8).
2. Book-Crossing (``;``, every field quoted, ``\\"`` escapes, Latin-1).
3. Last.fm 2K (HetRec ``.dat``, tab-separated, UTF-8 and Latin-1).
4. RecBole atomic files (``name:type`` headers).
5. The generic ``csv`` source (interactions plus user and item tables). Parquet is not fuzzed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from test_fuzz import VALID as ML100K
from test_fuzz import (
    FILE_CORRUPTIONS,
    FUZZ,
    LINE_ENDINGS,
    LINE_MUTATIONS,
    _one_line,
    corrupted_file,
    field_value_of,
    nasty_bytes_of,
)
from test_sources_more import BX, CSV, CSV_PARAMS, LASTFM, ML1M, ML20M, RB, _check_consistent, _replace_line

from metarec.data.schema import RecDataset
from metarec.data.sources import load_dataset
from metarec.errors import ConfigError, DataError

# Bytes beyond test_fuzz's nasty ones: the separators and quotes of these formats, and encoding traps:
# C1 controls undefined in cp1252, no-break space, soft hyphen, a UTF-8 e-acute, a lone UTF-8 lead byte,
# a UTF-8 byte-order mark, an encoded surrogate, U+2028 (a line break to str.splitlines), the ASCII
# separators 0x1c-0x1f (0x1f stands in for multi-character separators while parsing).
_ODD = [b"\x81", b"\x8d", b"\xa0", b"\xad", b"\xc3\xa9", b"\xc3", b"\xef\xbb\xbf", b"\xed\xa0\x80",
        b"\xe2\x80\xa8", b"\x1c", b"\x1e", b"\x1f"]  # fmt: skip
_VALUES = [b"1e300", b"-inf", b"0x1A", b"1_000", b"\xd9\xa3", b"2020-13-45", b"9999-12-31T23:59:60", b"NULL",
           b"1" * 19, b"18446744073709551616", b"9" * 5000]  # fmt: skip
LINE_KINDS = (*LINE_MUTATIONS, "quote", "quote")
FILE_KINDS = (*FILE_CORRUPTIONS, "recode")
ENDINGS = (*LINE_ENDINGS, "cr")

# A RuntimeWarning from the loaders is an error (e.g. a float cast to int64 beyond its range: garbage
# values); pandas' own warning while it casts 'inf' to an int64 column is not (it then fails, and the
# loader reports the line).
pytestmark = [
    pytest.mark.filterwarnings("error::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning:pandas"),
]


Files = Mapping[str, bytes]
Case = tuple[dict[str, Any], Files, tuple[str, bytes]]  # options, valid files, (name, corrupted bytes)


def cases(
    options: list[tuple[dict[str, Any], Files]], sep: bytes, encoding: str | Mapping[str, str], extra: list[bytes]
) -> st.SearchStrategy[Case]:
    """One of the ``(options, valid files)`` pairs with one file corrupted. Every file has field separator
    ``sep`` and text ``encoding`` (one codec, or file name -> codec); ``extra``: nasty bytes of the format."""
    nasty = nasty_bytes_of([sep, *extra, *_ODD])
    values = field_value_of(_VALUES)

    def corrupt(valid: Files) -> st.SearchStrategy[tuple[str, bytes]]:
        codecs = dict.fromkeys(valid, encoding) if isinstance(encoding, str) else encoding
        return corrupted_file(valid, dict.fromkeys(valid, sep), nasty=nasty, values=values, line_kinds=LINE_KINDS,
                              file_kinds=FILE_KINDS, endings=ENDINGS, encodings=codecs)

    return st.one_of(*(st.tuples(st.just(params), st.just(valid), corrupt(valid)) for params, valid in options))


def _bad(valid: Files, name: str, old: bytes, new: bytes, count: int = -1) -> tuple[str, bytes]:
    """File ``name`` of ``valid`` with ``old`` replaced by ``new`` (for explicit examples)."""
    return name, valid[name].replace(old, new, count)


def _load(source: str, folder: str, files: Files, params: Mapping[str, Any]) -> RecDataset:
    with tempfile.TemporaryDirectory() as root:
        where = Path(root) / folder
        where.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (where / name).write_bytes(data)
        return load_dataset(source, dict(params), root)


def _check(source: str, folder: str, case: Case) -> None:
    """Load the case's files, the corrupted one replaced: a consistent dataset or an error naming that file."""
    params, valid, (name, data) = case
    try:
        ds = _load(source, folder, {**valid, name: data}, params)
    except (DataError, ConfigError) as e:
        msg = _one_line(e)
        # one line for str.splitlines too: no vertical tab, form feed, \x1c-\x1e, NEL, U+2028 (values are repr'd)
        assert len(msg.splitlines()) == 1, f"message is not one line: {msg!r}"
        assert name in msg, f"{type(e).__name__} does not name {name}: {msg!r}"
        event(type(e).__name__)
    else:
        event("loaded")
        _check_consistent(ds)


# ---------------------------------------------------------------------------------------------
# 1. MovieLens 1M / 20M / 25M

ML_FOLDERS = {"movielens1m": "ml-1m", "movielens20m": "ml-20m", "movielens25m": "ml-25m"}
OFFLINE = {"download": False}
ML1M_CASES = cases([(OFFLINE, ML1M)], b"::", "latin-1", [b":", b":::"])
ML20M_CASES = cases([(OFFLINE, ML20M)], b",", "utf-8", [b'"', b'""', b'",'])


@pytest.mark.parametrize("source", sorted(ML_FOLDERS))
def test_ml_base_is_valid(source: str) -> None:
    ds = _load(source, ML_FOLDERS[source], ML1M if source == "movielens1m" else ML20M, OFFLINE)
    _check_consistent(ds)
    assert len(ds.ratings) == (4 if source == "movielens1m" else 5)


@settings(max_examples=250, **FUZZ)
@given(ML1M_CASES)
@example((OFFLINE, ML1M, _bad(ML1M, "users.dat", b"3::M", b"-" + b"9" * 30 + b"::M")))  # was OverflowError
@example((OFFLINE, ML1M, _bad(ML1M, "ratings.dat", b"97830", b"97830\r", 1)))  # lone \r: was a wrong line number
def test_ml1m_corrupted_file(case: Case) -> None:
    _check("movielens1m", "ml-1m", case)


@pytest.mark.parametrize("source", ["movielens20m", "movielens25m"])
@settings(max_examples=150, **FUZZ)
@given(case=ML20M_CASES)
@example(case=(OFFLINE, ML20M, _bad(ML20M, "ratings.csv", b"7,4,5", b"7," + b"9" * 20 + b",5")))  # was OverflowError
@example(case=(OFFLINE, ML20M, _bad(ML20M, "movies.csv", b"\n", b"\r")))  # was _csv.Error
def test_ml20m_25m_corrupted_file(source: str, case: Case) -> None:
    _check(source, ML_FOLDERS[source], case)


# ---------------------------------------------------------------------------------------------
# 2. Book-Crossing

# Valid under lenient_features: false too: no implausible age, no misaligned book row.
BX_STRICT = {
    **BX,
    "BX-Users.csv": BX["BX-Users.csv"].replace(b'"244"', b'"99"'),
    "BX-Books.csv": _replace_line(BX["BX-Books.csv"], 6, '"078946697X";"DK";"M T";"2000";"DK";"s";"m";"l"'),
}
# Valid under unknown_ids: error too: every rating names a known user and ISBN.
BX_KNOWN = {
    **BX,
    "BX-Book-Ratings.csv": BX["BX-Book-Ratings.csv"].replace(b'"1";"034545104X";"0"\r\n', b"")
    .replace(b'"5";"9999999999";"3"\r\n', b""),
}
BX_OPTIONS = [
    ({}, BX),
    ({"lenient_features": False}, BX_STRICT),
    ({"implicit": "keep", "keep_unrated": True, "unknown_ids": "error", "max_authors": 1}, BX_KNOWN),
]
BX_CASES = cases(BX_OPTIONS, b";", "latin-1", [b'"', b'\\"', b'";"', b"\\", b"&amp;"])


@pytest.mark.parametrize(("params", "valid"), BX_OPTIONS)
def test_bookcrossing_base_is_valid(params: dict[str, Any], valid: Files) -> None:
    ds = _load("bookcrossing", "book-crossing", valid, params)
    _check_consistent(ds)
    assert len(ds.ratings) == (8 if params.get("implicit") == "keep" else 6)


@settings(max_examples=250, **FUZZ)
@given(BX_CASES)
@example(({}, BX, _bad(BX, "BX-Users.csv", b'"4";', b"1180591620717411303424;")))  # was OverflowError
@example(({}, BX, _bad(BX, "BX-Users.csv", b"\r\n", b"\r")))  # was _csv.Error
def test_bookcrossing_corrupted_file(case: Case) -> None:
    _check("bookcrossing", "book-crossing", case)


# ---------------------------------------------------------------------------------------------
# 3. Last.fm 2K

LASTFM_OPTIONS = [
    (OFFLINE, LASTFM),
    ({**OFFLINE, "weighting": "raw", "top_tags": 1, "min_tag_count": 2}, LASTFM),
    ({**OFFLINE, "weighting": "binary", "friend_feature": False, "top_tags": 0}, LASTFM),
]
LASTFM_CODECS = {name: "latin-1" if name == "tags.dat" else "utf-8" for name in LASTFM}
LASTFM_CASES = cases(LASTFM_OPTIONS, b"\t", LASTFM_CODECS, [b'"', b"\t\t"])


@pytest.mark.parametrize(("params", "valid"), LASTFM_OPTIONS)
def test_lastfm_base_is_valid(params: dict[str, Any], valid: Files) -> None:
    ds = _load("lastfm2k", "lastfm-2k", valid, params)
    _check_consistent(ds)
    assert len(ds.ratings) == 4


@settings(max_examples=250, **FUZZ)
@given(LASTFM_CASES)
@example((OFFLINE, LASTFM, _bad(LASTFM, "user_artists.dat", b"13883", b"9" * 20)))  # was OverflowError
@example((OFFLINE, LASTFM, _bad(LASTFM, "user_artists.dat", b"13883", b"13\r883")))  # lone \r: was a wrong line number
def test_lastfm_corrupted_file(case: Case) -> None:
    _check("lastfm2k", "lastfm-2k", case)


# ---------------------------------------------------------------------------------------------
# 4. RecBole atomic files

RB_DROP = {"name": "toy", "unknown_ids": "drop", "n_buckets": 2, "max_tokens": 1, "max_seq_width": 1}
RB_OPTIONS = [({"name": "toy"}, RB), (RB_DROP, RB)]
RB_USER_3 = RB["toy.user"].split(b"\n")[0] + b"\n3\t\tM\tstudent\t\n"  # only user 3, who rated nothing
RB_CASES = cases(RB_OPTIONS, b"\t", "utf-8", [b":", b":token", b":float", b":token_seq", b":float_seq"])


@pytest.mark.parametrize(("params", "valid"), RB_OPTIONS)
def test_recbole_base_is_valid(params: dict[str, Any], valid: Files) -> None:
    ds = _load("recbole", "toy", valid, params)
    _check_consistent(ds)
    assert len(ds.ratings) == 4


@settings(max_examples=250, **FUZZ)
@given(RB_CASES)
@example(({"name": "toy"}, RB, _bad(RB, "toy.inter", b"881250950", b"1e300")))  # was RuntimeWarning (garbage timestamp)
@example(({"name": "toy"}, RB, _bad(RB, "toy.inter", b"user_id", b"us\x0ber_id", 1)))  # was a message broken by \x0b
@example((RB_DROP, RB, ("toy.user", RB_USER_3)))  # message did not name toy.user
def test_recbole_corrupted_file(case: Case) -> None:
    _check("recbole", "toy", case)


# ---------------------------------------------------------------------------------------------
# 5. Generic CSV

CSV_IMPLICIT = {
    "interactions": "inter.csv",
    "columns": {"user": "user", "item": "item", "rating": None, "timestamp": "when"},
}
CSV_UNQUOTED = {name: data.replace(b'"Heat, the"', b"Heat the").replace(b'"', b"") for name, data in CSV.items()}
CSV_OPTIONS = [
    (CSV_PARAMS, CSV),
    ({**CSV_PARAMS, "unknown_ids": "drop", "quoted": False}, CSV_UNQUOTED),
    (CSV_IMPLICIT, {"inter.csv": CSV["inter.csv"]}),
]
CSV_SECONDS = b"user,item,stars,when\nalice,i1,4,1\nbob,i1,2,1e300\n"  # times in seconds, one beyond 64 bits
CSV_CASES = cases(CSV_OPTIONS, b",", "utf-8", [b'"', b'""', b'",', b"|", b"||"])


@pytest.mark.parametrize(("params", "valid"), CSV_OPTIONS)
def test_csv_base_is_valid(params: dict[str, Any], valid: Files) -> None:
    ds = _load("csv", ".", valid, params)
    _check_consistent(ds)
    assert len(ds.ratings) == 4


@settings(max_examples=250, **FUZZ)
@given(CSV_CASES)
@example((CSV_PARAMS, CSV, _bad(CSV, "inter.csv", b"alice,i1", b'alice,"i1')))  # was a multi-line message
@example((CSV_PARAMS, CSV, _bad(CSV, "inter.csv", b"2020-01-02", b"0001-01-01")))  # was OutOfBoundsDatetime
@example((CSV_PARAMS, CSV, _bad(CSV, "inter.csv", b"\n", b"\r")))  # was _csv.Error
@example((CSV_IMPLICIT, CSV, ("inter.csv", CSV_SECONDS)))  # was RuntimeWarning (garbage timestamp)
def test_csv_corrupted_file(case: Case) -> None:
    _check("csv", ".", case)


# ---------------------------------------------------------------------------------------------
# Line numbers after a stray carriage return (the parser would end the line there)


@pytest.mark.parametrize(
    ("source", "folder", "params", "valid", "name", "where", "line"),
    [
        ("movielens1m", "ml-1m", OFFLINE, ML1M, "ratings.dat", b"97830", 1),
        ("movielens20m", "ml-20m", OFFLINE, ML20M, "ratings.csv", b"1094785741", 5),
        ("lastfm2k", "lastfm-2k", OFFLINE, LASTFM, "user_artists.dat", b"13883", 2),
        ("recbole", "toy", {"name": "toy"}, RB, "toy.item", b"GoldenEye", 3),
        ("csv", ".", {**CSV_PARAMS, "quoted": False}, CSV_UNQUOTED, "users.csv", b"carol", 4),
    ],
)
def test_stray_carriage_return_names_its_line(
    source: str, folder: str, params: dict[str, Any], valid: Files, name: str, where: bytes, line: int
) -> None:
    data = valid[name].replace(where, where[:2] + b"\r" + where[2:], 1)
    with pytest.raises(DataError, match=rf"{name}, line {line}: carriage return \(\\r\) inside the line") as err:
        _load(source, folder, {**valid, name: data}, params)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# Numbers of thousands of digits (beyond Python's 4,300-digit int() limit): file, line and column


HUGE = b"9" * 5000
HUGE_CASES = [
    ("movielens100k", "ml-100k", OFFLINE, ML100K, "u.data", b"881250950", HUGE, 2, "timestamp"),
    ("movielens100k", "ml-100k", OFFLINE, ML100K, "u.user", b"2|53", b"2|" + HUGE, 2, "age"),
    ("movielens100k", "ml-100k", OFFLINE, ML100K, "u.item", b"2|Mis", HUGE + b"|Mis", 2, "item"),
    ("movielens1m", "ml-1m", OFFLINE, ML1M, "ratings.dat", b"978302109", HUGE, 2, "timestamp"),
    ("movielens20m", "ml-20m", OFFLINE, ML20M, "ratings.csv", b"1094785741", HUGE, 5, "timestamp"),
    ("lastfm2k", "lastfm-2k", OFFLINE, LASTFM, "user_artists.dat", b"352698", HUGE, 5, "weight"),
    ("recbole", "toy", {"name": "toy"}, RB, "toy.user", b"\t53\t", b"\t" + HUGE + b"\t", 3, "age"),
    ("csv", ".", CSV_PARAMS, CSV, "users.csv", b"61", HUGE, 4, "age"),
    ("csv", ".", CSV_PARAMS, CSV, "items.csv", b"2009", HUGE, 3, "year"),
    ("csv", ".", CSV_PARAMS, CSV, "inter.csv", b"2020-01-03 12:00:00", HUGE, 4, "when"),
]


@pytest.mark.parametrize(("source", "folder", "params", "valid", "name", "old", "new", "line", "column"), HUGE_CASES)
def test_a_number_of_thousands_of_digits_names_file_line_and_column(
    source: str, folder: str, params: dict[str, Any], valid: Files, name: str, old: bytes, new: bytes, line: int,
    column: str,
) -> None:
    assert old in valid[name]
    with pytest.raises(DataError) as err:
        _load(source, folder, {**valid, name: valid[name].replace(old, new, 1)}, params)
    msg = _one_line(err.value)
    assert f"{name}, line {line}: {column} " in msg, msg
    assert len(msg) < 400, f"the value is not cut: {len(msg)} characters"


@pytest.mark.parametrize(
    ("source", "folder", "params", "valid", "message"),
    [
        ("csv", ".", {**CSV_PARAMS, "rating_range": [1, 4]}, CSV, "inter.csv, line 4: stars 5 is outside rating_range [1, 4]"),
        ("recbole", "toy", {"name": "toy", "rating_range": [1, 4]}, RB,
         "toy.inter, line 4: rating:float 5 is outside rating_range [1, 4]"),
    ],
)
def test_a_rating_outside_the_configured_rating_range_names_file_line_and_column(
    source: str, folder: str, params: dict[str, Any], valid: Files, message: str
) -> None:
    with pytest.raises(DataError) as err:
        _load(source, folder, valid, params)
    assert message in _one_line(err.value)
