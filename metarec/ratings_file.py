"""The ratings file of ``metarec recommend``: a CSV with header ``item,rating`` (or ``item`` alone).

Read with the ``csv`` module on the text as it is (``newline=""``), so a quoted field may hold a line
break or a separator and rows are named by the line they start on; only ``\\n``, ``\\r\\n`` and ``\\r``
end a row (not the other characters ``str.splitlines`` breaks at). Every problem is one
:class:`MetarecError` line naming the file and the row; values from the file are shown escaped and cut.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from metarec.errors import MetarecError

__all__ = ["read_ratings_csv"]

_MAX_SHOWN = 60


def _shown(value: str) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def read_ratings_csv(path: Path) -> tuple[list[tuple[str, float | None]], list[str]]:
    """``(item, rating)`` pairs of a CSV with header ``item,rating`` (or ``item`` alone: ratings ``None``,
    interactions of implicit feedback); each named by its row (``"<file> row N"``, N its first line)."""
    path = Path(path)
    if path.is_dir():
        raise MetarecError(f"ratings file {path} is a directory; give the CSV file of the user's ratings")
    if not path.is_file():
        raise MetarecError(f"ratings file {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # line ends as they are (the reader splits rows)
    except UnicodeDecodeError as e:
        raise MetarecError(f"ratings file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise MetarecError(f"cannot read ratings file {path}: {e.strerror or e}") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    numbered: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for row in reader:
            if any(c.strip() for c in row):
                numbered.append((start, row))
            start = reader.line_num + 1
    except csv.Error as e:
        raise MetarecError(f"ratings file {path} is not valid CSV: line {reader.line_num}: {e}") from None
    if not numbered:
        raise MetarecError(f"ratings file {path} is empty; expected the header item,rating")
    header = [c.strip().lower() for c in numbered[0][1]]
    if "item" not in header or ("rating" not in header and header != ["item"]) or len(set(header)) != len(header):
        got = _shown(",".join(header))
        raise MetarecError(
            f"ratings file {path}: the header must name the columns item and rating (or item alone, for a run "
            f"trained on implicit feedback), once each, got {got}"
        )
    i_item = header.index("item")
    i_rating = header.index("rating") if "rating" in header else None
    pairs: list[tuple[str, float | None]] = []
    names: list[str] = []
    for n, row in numbered[1:]:
        where = f"{path} row {n}"
        if len(row) != len(header):
            raise MetarecError(f"{where}: expected {len(header)} columns ({','.join(header)}), got {len(row)}")
        item = row[i_item].strip()
        if not item:
            raise MetarecError(f"{where}: missing item")
        if i_rating is None:
            pairs.append((item, None))
            names.append(where)
            continue
        rating = row[i_rating].strip()
        if not rating:
            raise MetarecError(f"{where}: missing rating")
        try:
            value = float(rating)
        except ValueError:
            raise MetarecError(f"{where}: rating {_shown(rating)} is not a number") from None
        if not math.isfinite(value):
            raise MetarecError(f"{where}: rating {_shown(rating)} is not a finite number")
        pairs.append((item, value))
        names.append(where)
    if not pairs:
        raise MetarecError(f"ratings file {path} has no ratings below its header")
    return pairs, names
