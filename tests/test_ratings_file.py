"""The ratings file of ``metarec recommend`` (``metarec.ratings_file.read_ratings_csv``): well-formed
files round-trip whatever their items hold, and any other bytes give one ``MetarecError`` line naming the
file (hypothesis)."""

from __future__ import annotations

import csv
import io
import math
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_fuzz import FUZZ

from metarec.errors import MetarecError
from metarec.ratings_file import read_ratings_csv


def _read(data: bytes) -> tuple[list, list]:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "new_user.csv"
        path.write_bytes(data)
        return read_ratings_csv(path)


def _error(data: bytes) -> str:
    with pytest.raises(MetarecError) as err:
        _read(data)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and "\n" not in msg and "\r" not in msg, repr(msg)
    assert "new_user.csv" in msg
    return msg


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b'item,rating\n"a\nb",5\n17,x\n', "row 4: rating 'x' is not a number"),  # row of a quoted line break
        (b"item,rating\n5,nan\n", "row 2: rating 'nan' is not a finite number"),
        (b"item,rating\n5,-inf\n", "row 2: rating '-inf' is not a finite number"),
        (b"item,rating,item\n5,5,6\n", "once each"),
        (b'item,rating\n"5,5\n', "not valid CSV"),
        (b"item,rating\n5," + b"9" * 200 + b"x\n", "is not a number"),
        (b"\xff\xfeitem,rating\n", "is not UTF-8 text"),
        (b"", "is empty"),
    ],
)
def test_bad_files_name_the_file_and_row(data: bytes, fragment: str) -> None:
    msg = _error(data)
    assert fragment in msg and len(msg) < 400


def test_only_newlines_end_rows() -> None:
    """A vertical tab, form feed or U+2028 is no line end (``str.splitlines`` would shift the rows)."""
    pairs, names = _read("item,rating\n5,5\x0b\n\u2028x,3\n17,4\n".encode())
    assert pairs == [("5", 5.0), ("x", 3.0), ("17", 4.0)]
    assert [n.rsplit(" ", 1)[1] for n in names] == ["2", "3", "4"]


items = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(lambda s: s.strip() == s and s)


@settings(max_examples=150, **FUZZ)
@given(rows=st.lists(st.tuples(items, st.floats(-1e6, 1e6, allow_nan=False)), min_size=1, max_size=6),
       crlf=st.booleans())
def test_well_formed_files_round_trip(rows: list[tuple[str, float]], crlf: bool) -> None:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\r\n" if crlf else "\n", quoting=csv.QUOTE_ALL)  # "\r" too
    writer.writerow(["item", "rating"])
    writer.writerows([(i, repr(r)) for i, r in rows])
    pairs, names = _read(buf.getvalue().encode())
    assert pairs == [(i, r) for i, r in rows]
    # each row is named by the line it starts on (quoted line breaks shift the later rows)
    breaks = [len(re.findall(r"\r\n|\r|\n", item)) for item, _ in rows]
    starts = [2 + k + sum(breaks[:k]) for k in range(len(rows))]
    assert [int(n.rsplit(" ", 1)[1]) for n in names] == starts, buf.getvalue()


@settings(max_examples=300, **FUZZ)
@given(st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from([b"item", b"rating", b",", b'"', b"\n", b"\r", b"\r\n", b"5", b"4.5", b"nan", b"-",
                              b"\x00", b"\xff", b"\x0b", b"\xe2\x80\xa8", b" ", b"1e999", b"9" * 5000]),
             max_size=30).map(b"".join),
))
@example(b"item,rating\n5,\x00\n")
@example(b"item\n\n\n5\n")
def test_any_bytes_give_pairs_or_one_error_line(data: bytes) -> None:
    try:
        pairs, names = _read(data)
    except MetarecError as e:
        msg = str(e)
        assert len(msg.splitlines()) == 1 and "\n" not in msg, repr(msg)
        assert "new_user.csv" in msg
        return
    assert pairs and len(pairs) == len(names)
    for item, rating in pairs:
        assert isinstance(item, str) and item and item == item.strip()
        assert rating is None or (isinstance(rating, float) and math.isfinite(rating))
