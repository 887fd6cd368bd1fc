r"""Reading the delimited text tables of the file-based sources, with line-numbered errors.

Every table read here comes back as a DataFrame whose index is the 1-based line number of each row
in its file (the header is line 1 when there is one), so that later checks can name the line of
the first offending row. Errors are :class:`DataError` with one line: ``<file>, line <n>: <what>``.

Line numbers are exact for files up to :data:`CHECK_FIELDS_MAX_BYTES`, whose every record is also
checked for its number of fields before parsing; larger files are parsed directly by pandas (too many
fields is still an error naming the line; a short row shows up as a missing id or value), and there a
quoted field spanning several lines shifts the line numbers of the rows after it.

Line ends are ``\n`` or ``\r\n``. In unquoted files a carriage return anywhere else is an error (the parser
would end a line there, unlike the line count); in quoted files a lone ``\r`` ends a line, as for the
``csv`` module. Values from the data that messages quote are escaped (``repr``) when not printable, so
that a message stays one line.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from metarec.errors import ConfigError, DataError

CHECK_FIELDS_MAX_BYTES = 64 << 20
_CHUNK_ROWS = 1 << 19
_INT = re.compile(r"\s*[+-]?\d+\s*")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_PANDAS_FIELDS = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_SEP_STAND_IN = "\x1f"  # multi-character separators are replaced by this before parsing
_LINE_END = re.compile(r"\r\n|\r|\n")
_STRAY_CR = re.compile(r"\r(?!\r*(?:\n|\Z))")  # a \r not (with more \r) ending a line or the text

PARQUET_SUFFIXES = (".parquet", ".pq")  # rows of these files are numbered from 1, without a header


# ---------------------------------------------------------------------------------------------
# Errors


def fail_at(path: Path | str, lines: Sequence[int] | np.ndarray | pd.Index, bad, what: Callable[[int], str]) -> None:
    """Raise ``DataError`` for the first row where ``bad`` is true; ``what(i)`` describes row position i."""
    bad = np.asarray(bad, dtype=bool)
    if bad.any():
        i = int(np.argmax(bad))
        unit = "row" if str(path).lower().endswith(PARQUET_SUFFIXES) else "line"
        raise DataError(f"{path}, {unit} {int(np.asarray(lines)[i])}: {what(i)}")


def shown(value: object, limit: int = 100) -> str:
    """``value`` as text for a one-line message: as is when printable, else its ``repr`` (which escapes
    line breaks and control characters); cut to ``limit`` characters."""
    s = str(value)
    s = s if s.isprintable() else repr(s)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def quoted(value: object, limit: int = 100) -> str:
    """``repr`` of ``value``'s text for a one-line message, cut to ``limit`` characters (a field may hold
    thousands of characters)."""
    return shown(repr(str(value)), limit)


_DECIMAL = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*")


def to_floats(text: pd.Series) -> np.ndarray:
    """float64 of each text (``NaN`` where it is not a number). Decimal numbers that pandas gives up on
    (e.g. thousands of digits) are read by ``float`` (which gives ``inf`` beyond the float range), so a
    caller's "not a number" check names the right line and a range check sees their size."""
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, copy=True)
    for j in np.flatnonzero(np.isnan(values)):
        t = text.iat[j]
        if isinstance(t, str) and _DECIMAL.fullmatch(t):
            values[j] = float(t)
    return values


def check_option(source: str, option: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"data source {source!r}: option {option} must be one of {', '.join(allowed)}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# Reading


def require_files(folder: Path, names: Sequence[str], hint: str) -> None:
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(f"files missing in {folder}: {', '.join(missing)}; {hint}")


def read_text(path: Path, encoding: str) -> str:
    """The whole file decoded; ``DataError`` naming the line of an undecodable byte."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}, line {line}: not valid {encoding} text ({e.reason} at byte {e.start})") from None
    except LookupError:
        raise ConfigError(f"unknown text encoding {encoding!r} for {path}") from None


def read_table(
    path: Path,
    *,
    sep: str,
    names: Sequence[str] | None = None,
    header: bool = True,
    encoding: str = "utf-8",
    kinds: Mapping[str, str] | None = None,
    required: Sequence[str] = (),
    usecols: Sequence[str] | None = None,
    quoted: bool = False,
    escapechar: str | None = None,
) -> pd.DataFrame:
    """A delimited text table; the index holds each row's line number.

    ``names`` are the column names of a headerless file (with ``header`` the file's first line gives
    them and ``names`` is ignored). ``kinds`` maps columns to ``"int"`` (int64) or ``"float"``
    (float64, must not be empty or NaN); other columns are strings (``""`` when empty). ``required``
    columns must exist in the header; ``usecols`` limits the columns returned (default: all).
    ``quoted``: fields may be quoted with ``"`` (``""`` or ``escapechar`` escape a quote inside).
    """
    kinds = dict(kinds or {})
    size = _file_size(path)
    small = size <= CHECK_FIELDS_MAX_BYTES or len(sep) > 1
    text = read_text(path, encoding) if small else None
    if text is not None and len(sep) > 1:
        if _SEP_STAND_IN in text:
            line = text.count("\n", 0, text.index(_SEP_STAND_IN)) + 1
            raise DataError(f"{path}, line {line}: contains the control character \\x1f")
        text = text.replace(sep, _SEP_STAND_IN)
    psep = _SEP_STAND_IN if len(sep) > 1 else sep
    if text is not None and not text.strip():
        raise DataError(f"{path} is empty")
    if text is not None and not quoted:
        _reject_stray_cr(path, text)
    if header:
        names = _header(path, text, psep, encoding, quoted, escapechar)
        missing = list(dict.fromkeys(c for c in (*required, *(usecols or ())) if c not in names))
        if missing:
            raise DataError(
                f"{path}, line 1: missing column{'s' if len(missing) > 1 else ''} "
                f"{', '.join(map(repr, missing))} (the header has {', '.join(map(repr, names))})"
            )
        dup = [c for c in names if names.count(c) > 1]
        if dup:
            raise DataError(f"{path}, line 1: column {dup[0]!r} appears more than once in the header")
    assert names is not None
    names = list(names)
    first = 2 if header else 1
    lines = None
    if text is not None:
        lines = _record_lines(path, text, psep, len(names), quoted, escapechar, sep)
        lines = lines[1:] if header else lines
        if not len(lines):
            raise DataError(f"{path} has no data rows")
    cols = list(usecols) if usecols is not None else names
    # Without the field-count check, read every column: pandas ignores surplus fields when given usecols.
    parsed = cols if lines is not None else names
    dtype = {c: ("int64" if kinds.get(c) == "int" else "float64" if kinds.get(c) == "float" else str) for c in parsed}
    kw = dict(
        sep=psep,
        header=0 if header else None,
        names=names,
        usecols=parsed if lines is not None else None,  # any usecols turns off pandas' surplus-field error
        dtype=dtype,
        keep_default_na=False,
        na_values={c: [""] for c in cols if c in kinds},
        quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE,
        quotechar='"',
        doublequote=True,
        escapechar=escapechar,
        index_col=False,
        engine="c",
    )
    source = (lambda: io.StringIO(text)) if text is not None else (lambda: path)
    if text is None:
        kw["encoding"] = encoding
    try:
        df = pd.read_csv(source(), **kw)
    except pd.errors.ParserError as e:
        m = _PANDAS_FIELDS.search(str(e))
        if m:
            raise DataError(
                f"{path}, line {m.group(2)}: expected {m.group(1)} fields separated by {sep!r}, found {m.group(3)}"
            ) from None
        raise DataError(f"{path}: cannot parse ({str(e).strip().splitlines()[-1]})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid {encoding} text ({e.reason})") from None
    except (ValueError, OverflowError) as e:  # OverflowError: an integer beyond 64 bits
        _locate_bad_value(path, source, kw, kinds, first, lines)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: cannot parse ({msg})") from None
    df = df[cols]
    if lines is not None and len(lines) == len(df):
        df.index = pd.Index(lines, dtype=np.int64)
    else:
        df.index = pd.RangeIndex(first, first + len(df))
    if len(df) == 0:
        raise DataError(f"{path} has no data rows")
    for c in cols:
        if kinds.get(c) == "float":
            v = df[c].to_numpy()
            fail_at(path, df.index, ~np.isfinite(v),
                    lambda i, c=c, v=v: f"missing {c}" if np.isnan(v[i]) else f"{c} {v[i]} is not a finite number")
    return df


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def _header(path: Path, text: str | None, sep: str, encoding: str, quoted: bool, escapechar: str | None) -> list[str]:
    if text is None:
        with open(path, encoding=encoding, errors="replace", newline="") as f:
            first = f.readline()
    else:
        # up to the first line end as the parsers see it: \n, \r\n or, quoted, a lone \r
        first = _LINE_END.split(text, maxsplit=1)[0] if quoted else text.split("\n", 1)[0]
    first = first.rstrip("\r\n").lstrip("\ufeff")
    if not first.strip():
        raise DataError(f"{path}, line 1: the header line is empty")
    if quoted:
        try:
            row = next(csv.reader([first], delimiter=sep, quotechar='"', escapechar=escapechar), [])
        except csv.Error as e:
            raise DataError(f"{path}, line 1: {e}") from None
    else:
        row = first.split(sep)
    return [c.strip() for c in row]


def _reject_stray_cr(path: Path, text: str) -> None:
    """``DataError`` for a carriage return that does not end a line: the CSV parser would end a line
    there, shifting the line numbers of every message (CRLF line ends are fine)."""
    m = _STRAY_CR.search(text)
    if m:
        line = text.count("\n", 0, m.start()) + 1
        raise DataError(f"{path}, line {line}: carriage return (\\r) inside the line; lines must end in \\n or \\r\\n")


def _record_lines(
    path: Path, text: str, sep: str, n_fields: int, quoted: bool, escapechar: str | None, shown_sep: str
) -> np.ndarray:
    """The starting line of every record (header included); ``DataError`` for a wrong field count.

    Blank lines at the end are ignored; a blank line elsewhere is an error.
    """
    if not quoted:
        lines = text.split("\n")
        while lines and not lines[-1].strip():
            lines.pop()
        counts = pd.Series(lines, dtype=object).str.count(re.escape(sep)).to_numpy() + 1
        numbers = np.arange(1, len(lines) + 1)
        fail_at(path, numbers, counts != n_fields,
                lambda i: f"expected {n_fields} fields separated by {shown_sep!r}, found {counts[i]}")
        return numbers
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, quotechar='"', escapechar=escapechar,
                        doublequote=True, strict=False)
    starts: list[int] = []
    blank: int | None = None
    prev = 0
    try:
        for row in reader:
            start = prev + 1
            prev = reader.line_num
            if not row or row == [""] and n_fields > 1:
                blank = start if blank is None else blank
                continue
            if blank is not None:
                raise DataError(f"{path}, line {blank}: blank line")
            if len(row) != n_fields:
                raise DataError(f"{path}, line {start}: expected {n_fields} fields separated by {shown_sep!r}, found {len(row)}")
            starts.append(start)
    except csv.Error as e:
        raise DataError(f"{path}, line {reader.line_num}: {e}") from None
    return np.asarray(starts, dtype=np.int64)


def _locate_bad_value(path, source, kw, kinds, first: int, lines) -> None:
    """Find the first value that is not of its column's kind (called once parsing failed)."""
    kw = {**kw, "dtype": str, "na_values": None, "keep_default_na": False, "na_filter": False}
    offset = 0
    try:
        chunks = pd.read_csv(source(), chunksize=_CHUNK_ROWS, **kw)
        for chunk in chunks:
            n = len(chunk)
            if lines is not None and len(lines) >= offset + n:
                numbers = np.asarray(lines[offset: offset + n])
            else:
                numbers = np.arange(first + offset, first + offset + n)
            for c in chunk.columns:
                kind = kinds.get(c)
                if kind not in ("int", "float"):
                    continue
                s = chunk[c].astype(str)
                if kind == "int":
                    bad = ~s.str.fullmatch(_INT.pattern).to_numpy(dtype=bool)
                else:
                    bad = pd.to_numeric(s, errors="coerce").isna().to_numpy()
                what = "an integer" if kind == "int" else "a number"
                fail_at(path, numbers, bad,
                        lambda i, c=c, s=s, what=what: f"missing {c}" if not s.iat[i].strip() else f"{c} {quoted(s.iat[i])} is not {what}")
                if kind == "int":  # well-formed, but maybe beyond 64 bits (pandas raises OverflowError)
                    digits = s.str.strip().str.lstrip("+-").str.lstrip("0").str.len().to_numpy()
                    big = digits > 19  # 2**63 has 19 digits; int() of a longer text may exceed Python's limit
                    for j in np.flatnonzero(digits == 19):
                        big[j] = not _INT64_MIN <= int(s.iat[j]) <= _INT64_MAX
                    fail_at(path, numbers, big,
                            lambda i, c=c, s=s: f"{c} {shown(s.iat[i].strip())} is outside the 64-bit integer range")
            offset += n
    except (ValueError, pd.errors.ParserError):
        return


# ---------------------------------------------------------------------------------------------
# Paths and other tables


def resolve_path(root: Path, name: str) -> Path:
    """``name`` if absolute (after ``~`` expansion), else ``root / name``."""
    p = Path(name).expanduser()
    return p if p.is_absolute() else root / p


def read_ragged(
    path: Path, *, sep: str, encoding: str, required: Sequence[str], escapechar: str | None = None
) -> tuple[pd.DataFrame, np.ndarray]:
    """A quoted, headed text table whose rows may have the wrong number of fields, as strings.

    Short rows are padded with ``""`` and long rows cut. Returns the table (index: line numbers) and a
    mask of the rows whose field count was wrong, for the caller to reject or to treat with care.
    """
    text = read_text(path, encoding)
    if not text.strip():
        raise DataError(f"{path} is empty")
    names = _header(path, text, sep, encoding, True, escapechar)
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(
            f"{path}, line 1: missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
            f"(the header has {', '.join(map(repr, names))})"
        )
    n = len(names)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, quotechar='"', escapechar=escapechar,
                        doublequote=True, strict=False)
    rows: list[list[str]] = []
    starts: list[int] = []
    ragged: list[bool] = []
    prev = 0
    try:
        for k, row in enumerate(reader):
            start, prev = prev + 1, reader.line_num
            if k == 0 or not row:
                continue
            ragged.append(len(row) != n)
            rows.append((row + [""] * n)[:n])
            starts.append(start)
    except csv.Error as e:
        raise DataError(f"{path}, line {reader.line_num}: {e}") from None
    if not rows:
        raise DataError(f"{path} has no data rows")
    df = pd.DataFrame(rows, columns=names, index=pd.Index(starts, dtype=np.int64), dtype=object)
    return df, np.asarray(ragged, dtype=bool)


def read_header(path: Path, sep: str, encoding: str, quoted: bool = False) -> list[str]:
    """The column names in the first line of a headed text file."""
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    return _header(path, None, sep, encoding, quoted, None)
