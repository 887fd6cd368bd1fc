"""Value codebooks: which code each raw feature value got, saved with every run (``codebook.json``), so
that a new user can be described by raw values (``gender=F``, ``age=37``, ``occupation=writer``) as well
as by the integer codes the model reads.

For each user and item field of the data set: categorical fields with their cardinality, the raw value of
each code (when the source knows it) and, for a field that buckets a number, the buckets' lower edges;
multi-hot fields with their width and value names. :func:`resolve_code` turns what a user gave into a code,
and says in one line what is known when it cannot.
"""

from __future__ import annotations

import bisect
import json
import math
from pathlib import Path
from typing import Any

from metarec.errors import MetarecError

CODEBOOK_FILE = "codebook.json"
FORMAT = 1
_SHOWN = 8  # known values named in an error message


def table_codebook(table) -> dict[str, dict[str, Any]]:
    """The codebook of one :class:`~metarec.data.schema.FeatureTable` (dense fields have none)."""
    out: dict[str, dict[str, Any]] = {}
    for f in table.categorical_fields:
        entry: dict[str, Any] = {"kind": "categorical", "cardinality": int(f.cardinality)}
        if f.values:
            entry["values"] = {str(v): k for k, v in enumerate(f.values, start=1) if str(v)}
        if f.edges:
            entry["edges"] = [float(e) for e in f.edges]
        out[f.name] = entry
    for f in table.multihot_fields:
        if not f.dense:
            out[f.name] = {"kind": "multihot", "width": int(f.width),
                           "values": {str(v): j for j, v in enumerate(f.values) if str(v)}}
    return out


def dataset_codebook(ds) -> dict[str, Any]:
    return {"format": FORMAT, "dataset": ds.name, "user": table_codebook(ds.users), "item": table_codebook(ds.items)}


def write_codebook(run_dir: Path, ds) -> Path:
    """Write ``run_dir/codebook.json`` atomically (temp file, rename)."""
    from metarec.runs import atomic_write_text

    path = Path(run_dir) / CODEBOOK_FILE
    atomic_write_text(path, json.dumps(dataset_codebook(ds), indent=1, ensure_ascii=False) + "\n")
    return path


def read_codebook(run_dir: Path) -> dict[str, Any] | None:
    """The run's codebook, or ``None`` for a run made before codebooks were saved."""
    path = Path(run_dir) / CODEBOOK_FILE
    if not path.is_file():
        return None
    try:
        book = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MetarecError(f"{path} is not readable JSON ({e}); delete it to use integer codes only") from None
    if not isinstance(book, dict) or not isinstance(book.get("user"), dict):
        raise MetarecError(f"{path} is not a metarec codebook; delete it to use integer codes only")
    return book


def _known(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _SHOWN else "")


def _match(values: dict[str, int], raw: str) -> int | None:
    if raw in values:
        return values[raw]
    folded = {k.casefold(): v for k, v in values.items()}
    return folded.get(raw.casefold())


def _number(raw: str) -> float | None:
    try:
        x = float(raw)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def resolve_code(field: str, value: Any, size: int, entry: dict[str, Any] | None, has_codebook: bool,
                 kind: str = "categorical") -> int:
    """The code (categorical: ``0..size-1``; multi-hot: a column ``0..size-1``) of ``value`` for user field
    ``field``. An ``int`` is a code. A string is a raw value: one of the codebook's names (exact, else
    ignoring case), else a number falling into one of the field's buckets, else an integer written as text
    (a code). Anything else is a one-line ``MetarecError`` naming the known values."""
    code_range = f"0..{size - 1}" + (" (0 = unknown)" if kind == "categorical" else "")
    if isinstance(value, bool) or not isinstance(value, (int, str)) and not hasattr(value, "__index__"):
        raise MetarecError(f"user feature {field}: {value!r} is neither a raw value (text) nor an integer code")
    if not isinstance(value, str):
        code = int(value)
        if not 0 <= code < size:
            raise MetarecError(f"user feature {field}: code {code} is outside {code_range}")
        return code
    raw = value.strip()
    names = (entry or {}).get("values") or {}
    code = _match(names, raw)
    if code is None and (entry or {}).get("edges") and _number(raw) is not None:
        code = bisect.bisect_right(entry["edges"], _number(raw)) + 1
    if code is None:
        try:
            code = int(raw)
        except ValueError:
            if not has_codebook:
                raise MetarecError(
                    f"user feature {field}: {raw!r} is not an integer code ({code_range}); raw values need a run "
                    f"made by this metarec version (this run has no {CODEBOOK_FILE})") from None
            if not names:
                raise MetarecError(f"user feature {field}: {raw!r} is not an integer code ({code_range}); the data "
                                   "source names no values of this field") from None
            raise MetarecError(f"user feature {field}: unknown value {raw!r} (known: {_known(list(names))}; "
                               f"or an integer code {code_range})") from None
    if not 0 <= code < size:
        raise MetarecError(f"user feature {field}: code {code} is outside {code_range}")
    return code
