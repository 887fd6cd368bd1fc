"""Property-based fuzz tests (hypothesis) of the data layer's error handling.

The contract under test: bad input either works or raises the project's own error type
(:class:`DataError` / :class:`ConfigError`, both :class:`MetarecError`) with a one-line message;
no other exception type escapes.

1. The MovieLens 100K loader on a small valid fake ``ml-100k`` folder with one file corrupted (the
   strategies here are shared with ``test_fuzz_sources.py``, which fuzzes every other loader).
2. ``make_split`` on random small synthetic datasets and random ``SplitConfig`` values, and
   ``EpisodeCollator`` on random task lists.
3. ``load_split`` on a saved manifest whose JSON text is mutated.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from metarec.data.episodes import EpisodeCollator, FeatureTables
from metarec.data.schema import RecDataset
from metarec.data.sources import load_dataset
from metarec.data.splits import (
    NEW_ITEM_METHODS,
    SCENARIOS,
    ColdStartSplit,
    SplitConfig,
    Task,
    content_hash,
    load_split,
    make_split,
    save_manifest,
)
from metarec.errors import ConfigError, DataError

# No example database (nothing written into the working tree); no per-example deadline, since a
# benchmark may be loading the machine.
FUZZ = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg.strip(), f"{type(e).__name__} with an empty message"
    assert "\n" not in msg and "\r" not in msg, f"message is not one line: {msg!r}"
    return msg


# ---------------------------------------------------------------------------------------------
# 1. MovieLens 100K loader on corrupted files


def _flags(*genres: int) -> str:
    return "|".join("1" if g in genres else "0" for g in range(19))


VALID: dict[str, bytes] = {
    "u.data": (
        b"1\t1\t5\t881250949\n1\t2\t3\t881250950\n2\t1\t4\t881250951\n3\t3\t1\t881250952\n"
        b"4\t4\t2\t881250953\n2\t4\t5\t881250954\n4\t2\t3\t881250955\n"
    ),
    "u.user": b"1|24|M|technician|85711\n2|53|F|other|94043\n3|16|M|student|T8H1N\n4|0|X|nobody|\n",
    "u.item": (
        f"1|Toy Story (1995)|01-Jan-1995||http://x/1|{_flags(3, 4, 5)}\n"
        f"2|Misérables, Les (1995)|01-Jan-1995||http://x/2|{_flags(8)}\n"
        f"3|unknown||||{_flags(0)}\n"
        f"4|Old One (1931)|15-Mar-1931||http://x/4|{_flags(1, 2)}\n"
    ).encode("latin-1"),
}
SEPARATOR = {"u.data": b"\t", "u.user": b"|", "u.item": b"|"}

# Bytes that tend to break parsers: separators, line ends, NUL, invalid UTF-8, Latin-1 specials
# (0x85 is NEL), quotes, signs, digits.
_NASTY = [b"|", b"\t", b"\n", b"\r", b"\r\n", b"\x00", b"\xff", b"\xfe", b"\xe9", b"\x85", b"\x0b",
          b"\x0c", b'"', b"'", b"#", b"\\", b" ", b"-", b"+", b".", b"e", b"0", b"1", b"9", b"x"]  # fmt: skip


def nasty_bytes_of(extra: Sequence[bytes] = ()) -> st.SearchStrategy[bytes]:
    """Short runs of :data:`_NASTY` bytes (plus ``extra``, e.g. a loader's own separator and quotes)."""
    tokens = st.sampled_from(_NASTY + [b for b in extra if b not in _NASTY])
    return st.lists(st.one_of(tokens, st.binary(min_size=1, max_size=3)), max_size=8).map(b"".join)


nasty_bytes = nasty_bytes_of()
FIELD_VALUES = [
    b"", b" ", b"0", b"-1", b"-0", b"+5", b" 3 ", b"3.0", b"1e3", b"nan", b"NaN", b"inf", b"abc",
    b"9223372036854775807", b"9223372036854775808", b"-9223372036854775809", b"1" * 40, b"-" + b"9" * 30,
    b"01-Jan-99999", b"31-Feb-2000", b"\x00", b"\xff\xfe", b"\r",
    b"9" * 5000,  # beyond Python's 4,300-digit int() limit
]  # fmt: skip


def field_value_of(extra: Sequence[bytes] = ()) -> st.SearchStrategy[bytes]:
    """A field's replacement: one of :data:`FIELD_VALUES` (plus ``extra``) or an integer of up to 70 bits."""
    values = st.sampled_from(FIELD_VALUES + [v for v in extra if v not in FIELD_VALUES])
    return st.one_of(values, st.integers(-(2**70), 2**70).map(lambda v: str(v).encode()))


field_value = field_value_of()


LINE_MUTATIONS = ("replace", "truncate", "insert", "flip", "extra_sep", "field", "delete", "duplicate", "blank", "swap")
# "quote": an unbalanced or misplaced quote, or a field wrapped in quotes (for quoted CSV dialects).
QUOTE_MUTATIONS = ('"', '""', '\\"', 'wrap')


@st.composite
def line_mutation(
    draw,
    lines: list[bytes],
    sep: bytes,
    nasty: st.SearchStrategy[bytes] = nasty_bytes,
    kinds: Sequence[str] = LINE_MUTATIONS,
    values: st.SearchStrategy[bytes] = field_value,
) -> list[bytes]:
    """``lines`` with one mutation of ``kinds`` applied (a line replaced, cut, spliced, re-fielded, ...)."""
    lines = list(lines)
    kind = draw(st.sampled_from(list(kinds)))
    if not lines:
        return [draw(nasty)]
    i = draw(st.integers(0, len(lines) - 1))
    line = lines[i]
    if kind == "replace":
        lines[i] = draw(nasty)
    elif kind == "truncate":
        lines[i] = line[: draw(st.integers(0, max(len(line) - 1, 0)))]
    elif kind == "insert":
        k = draw(st.integers(0, len(line)))
        lines[i] = line[:k] + draw(nasty) + line[k:]
    elif kind == "flip" and line:
        b = bytearray(line)
        for _ in range(draw(st.integers(1, 3))):
            b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
        lines[i] = bytes(b)
    elif kind == "extra_sep":
        k = draw(st.integers(0, len(line)))
        lines[i] = line[:k] + sep * draw(st.integers(1, 2)) + line[k:]
    elif kind == "field":
        fields = line.split(sep)
        fields[draw(st.integers(0, len(fields) - 1))] = draw(values)
        lines[i] = sep.join(fields)
    elif kind == "delete":
        del lines[i]
    elif kind == "duplicate":
        lines.insert(i, line)
    elif kind == "blank":
        lines.insert(i, draw(st.sampled_from([b"", b" ", b"\t", b"\r"])))
    elif kind == "swap":
        j = draw(st.integers(0, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == "quote":
        fields = line.split(sep)
        f = draw(st.integers(0, len(fields) - 1))
        how = draw(st.sampled_from(QUOTE_MUTATIONS))
        if how == "wrap":
            fields[f] = b'"' + fields[f] + b'"'
        else:
            k = draw(st.integers(0, len(fields[f])))
            fields[f] = fields[f][:k] + how.encode() + fields[f][k:]
        lines[i] = sep.join(fields)
    return lines


FILE_CORRUPTIONS = ("lines", "lines", "lines", "empty", "blank", "cut", "random")  # "lines": 1-3 line mutations
LINE_ENDINGS = ("lf", "crlf", "mixed", "none")
# "recode": the whole text re-encoded (to one of RECODINGS); "cr": lone \r line ends (classic Mac OS).
RECODINGS = ("utf-8", "latin-1", "cp1252", "utf-16", "utf-8-sig")


@st.composite
def corrupted_file(
    draw,
    valid: Mapping[str, bytes],
    separators: Mapping[str, bytes],
    *,
    nasty: st.SearchStrategy[bytes] = nasty_bytes,
    values: st.SearchStrategy[bytes] = field_value,
    line_kinds: Sequence[str] = LINE_MUTATIONS,
    file_kinds: Sequence[str] = FILE_CORRUPTIONS,
    endings: Sequence[str] = LINE_ENDINGS,
    encodings: Mapping[str, str] | None = None,
) -> tuple[str, bytes]:
    """``(name, bytes)``: one file of ``valid`` (name -> valid content) corrupted as a whole (one of
    ``file_kinds``) or line by line (``line_kinds`` with the file's field separator from ``separators``,
    ``nasty`` bytes and field ``values``, then re-joined with one of ``endings``). ``"recode"`` needs
    ``encodings`` (name -> codec). The defaults are the MovieLens 100K fuzzing; the other loaders add
    quotes, recoding and lone-CR line ends (``test_fuzz_sources.py``)."""
    name = draw(st.sampled_from(sorted(valid)))
    data = valid[name]
    whole = draw(st.sampled_from(list(file_kinds)))
    if whole == "empty":
        return name, b""
    if whole == "blank":
        return name, draw(st.sampled_from([b"\n", b"\n\n", b"  \n", b"\r\n", b"\t", b"\x00"]))
    if whole == "cut":
        return name, data[: draw(st.integers(0, len(data) - 1))]
    if whole == "random":
        return name, draw(st.binary(max_size=200))
    if whole == "recode":
        assert encodings is not None, "recode needs the files' encodings"
        target = draw(st.sampled_from([c for c in RECODINGS if c != encodings[name]]))
        return name, data.decode(encodings[name]).encode(target, errors="replace")
    eol = b"\r\n" if data.endswith(b"\r\n") else b"\n"
    lines = data.split(eol)[:-1]
    for _ in range(draw(st.integers(1, 3))):
        lines = draw(line_mutation(lines, separators[name], nasty, line_kinds, values))
    ending = draw(st.sampled_from(list(endings)))
    if ending == "crlf":
        out = b"".join(line + b"\r\n" for line in lines)
    elif ending == "mixed":
        crs = draw(st.lists(st.booleans(), min_size=len(lines), max_size=len(lines)))
        out = b"".join(line + (b"\r\n" if cr else b"\n") for line, cr in zip(lines, crs))
    elif ending == "cr":
        out = b"".join(line + b"\r" for line in lines)
    else:
        out = b"".join(line + b"\n" for line in lines)
        if ending == "none":
            out = out.rstrip(b"\n")
    return name, out


def _load_ml(files: dict[str, bytes]) -> RecDataset:
    with tempfile.TemporaryDirectory() as root:
        folder = Path(root) / "ml-100k"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        return load_dataset("movielens100k", {"download": False}, root)


def test_fake_ml100k_base_is_valid() -> None:
    ds = _load_ml(VALID)
    assert (ds.n_users, ds.n_items, len(ds.ratings)) == (4, 4, 7)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")  # pandas on 'inf' ids
@settings(max_examples=400, **FUZZ)
@given(corrupted_file(VALID, SEPARATOR))
@example(("u.data", b"-9223372036854775809\t1\t5\t881250949\n"))  # was OverflowError
@example(("u.item", VALID["u.item"].replace(b"|0|", b"|99999999999999999999|", 1)))  # was OverflowError
@example(("u.user", VALID["u.user"].replace(b"technician", b"tech\rnician")))  # lone \r: wrong line numbers
@example(("u.data", VALID["u.data"].replace(b"881250950", b"9" * 5000)))  # was "cannot parse", naming no line
def test_ml100k_loader_corrupted_file(corruption: tuple[str, bytes]) -> None:
    name, data = corruption
    try:
        ds = _load_ml({**VALID, name: data})
    except DataError as e:
        msg = _one_line(e)
        assert name in msg, f"message does not name {name}: {msg!r}"
        event("DataError")
    else:
        event("loaded")
        ds.validate()
        assert ds.n_users == len(ds.user_ids) and ds.n_items == len(ds.item_ids)
        assert len(ds.item_year) == ds.n_items


# ---------------------------------------------------------------------------------------------
# 2. Splits and collation on random shapes


INVALID = st.sampled_from([None] * 6 + ["one"])  # about one example in seven gets one invalid option


@st.composite
def split_configs(draw) -> SplitConfig:
    """Mostly valid configs (so that splits get made) with now and then one invalid option."""
    query = draw(st.integers(1, 5))
    support = draw(st.one_of(st.none(), st.integers(1, 5)))
    min_support = draw(st.integers(1, 3))
    lo = query + max(min_support, support or 0) + draw(st.integers(0, 4))
    fraction = st.one_of(st.floats(0.15, 0.6), st.floats(0.0, 0.6))  # 0 often leaves a scenario empty
    values = dict(
        seed=draw(st.integers(0, 2**32)),
        min_ratings=lo,
        max_ratings=lo + draw(st.one_of(st.integers(4, 15), st.integers(0, 15))),
        new_user_fraction=draw(fraction),
        val_user_fraction=draw(fraction),
        new_item_method=draw(st.sampled_from(NEW_ITEM_METHODS)),
        new_item_fraction=draw(fraction),
        new_item_year=draw(st.integers(1945, 2005)),
        query_size=query,
        support_size=support,
        min_support=min_support,
        scenarios=draw(st.lists(st.sampled_from(SCENARIOS), min_size=1, max_size=4, unique=True)),
    )
    if draw(INVALID):
        key, bad = draw(
            st.sampled_from([
                ("seed", -1), ("query_size", 0), ("query_size", -3), ("support_size", 0),
                ("min_support", 0), ("min_ratings", lo - 1), ("max_ratings", lo - 1),
                ("new_user_fraction", 1.0), ("val_user_fraction", -0.1), ("new_item_fraction", 1.5),
                ("new_item_fraction", float("nan")), ("new_item_method", "bogus"),
                ("scenarios", []), ("scenarios", ["warm", "nope"]),
            ])
        )  # fmt: skip
        values[key] = bad
    return SplitConfig(**values)


@st.composite
def synthetic_params(draw, cfg: SplitConfig) -> dict:
    """A small synthetic dataset whose users' rating counts mostly overlap the split's range."""
    if draw(st.sampled_from(["aimed"] * 3 + ["free"])) == "aimed":  # counts inside the split's range
        top = max(cfg.max_ratings, cfg.min_ratings, 1)
        lo = draw(st.integers(max((cfg.min_ratings + top) // 2, 1), top))  # upper half: room for new items
        hi = draw(st.integers(lo, max(lo, cfg.max_ratings)))
        n_items = draw(st.integers(hi, hi + 20))
    else:
        n_items = draw(st.integers(1, 30))
        lo = draw(st.integers(1, n_items))
        hi = draw(st.integers(lo, n_items))
    params = dict(
        n_users=draw(st.one_of(st.integers(8, 40), st.integers(1, 40))),
        n_items=n_items,
        min_ratings=lo,
        max_ratings=hi,
        latent_dim=draw(st.integers(1, 4)),
        n_genres=draw(st.integers(1, 5)),
        seed=draw(st.integers(0, 2**32)),
    )
    if draw(INVALID):  # the source must answer with ConfigError
        key = draw(st.sampled_from(["n_users", "n_items", "min_ratings", "max_ratings", "seed", "n_genres"]))
        params[key] = lo - 1 if key == "max_ratings" else draw(st.integers(-3, 0))
    return params


def _check_split(ds: RecDataset, cfg: SplitConfig, split: ColdStartSplit) -> None:
    assert set(split.episodes) == {"val", *cfg.scenarios}
    assert split.new_item_mask.shape == (ds.n_items,)
    users = split.manifest["users"]
    new_users = set(users["new"])
    assert not new_users & set(users["train"]) and not new_users & set(users["val"])
    assert not set(users["val"]) & set(users["train"])
    rated = {(int(u), int(i)): r for u, i, r in ds.ratings[["user", "item", "rating"]].itertuples(index=False)}
    for name, tasks in split.episodes.items():
        assert tasks, f"scenario {name} is empty"
        for t in tasks:
            assert len(t.query_items) == cfg.query_size == len(t.query_ratings)
            assert len(t.support_items) == len(t.support_ratings)
            if cfg.support_size is not None:  # support_size wins over min_support (as in test_splits)
                assert len(t.support_items) == cfg.support_size
            else:
                assert len(t.support_items) >= cfg.min_support
            both = np.concatenate([t.support_items, t.query_items])
            assert len(np.unique(both)) == len(both), "support and query overlap"
            want_new = name in ("item_cold", "user_item_cold")
            assert (split.new_item_mask[both] == want_new).all()
            ratings = np.concatenate([t.support_ratings, t.query_ratings])
            for i, r in zip(both, ratings):
                assert np.isclose(rated[(t.user, int(i))], r)
    for items, _ in split.train_pool.values():
        assert len(items) >= cfg.query_size + cfg.needed_support
        assert not split.new_item_mask[items].any()


@settings(max_examples=200, **FUZZ)
@given(data=st.data())
def test_make_split_random_shapes(data) -> None:
    cfg = data.draw(split_configs(), label="cfg")
    params = data.draw(synthetic_params(cfg), label="params")
    try:
        ds = load_dataset("synthetic", params, None)
    except ConfigError as e:
        _one_line(e)
        event("source ConfigError")
        return
    try:
        split = make_split(ds, cfg)
    except (ConfigError, DataError) as e:
        _one_line(e)
        event(f"split {type(e).__name__}")
        return
    event("split made")
    _check_split(ds, cfg, split)


@pytest.fixture(scope="module")
def small_ds() -> RecDataset:
    return load_dataset("synthetic", dict(n_users=12, n_items=20, min_ratings=3, max_ratings=10, seed=5), None)


@st.composite
def task_lists(draw, n_users: int, n_items: int) -> list[Task]:
    n_tasks = draw(st.integers(1, 5))
    max_s, max_q = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    tasks = []
    for _ in range(n_tasks):
        ns, nq = draw(st.integers(0, max_s)), draw(st.integers(0, max_q))
        items = draw(st.lists(st.integers(0, n_items - 1), min_size=ns + nq, max_size=ns + nq))
        rating = st.floats(1.0, 5.0, width=32)
        ratings = draw(st.lists(rating, min_size=ns + nq, max_size=ns + nq))
        tasks.append(
            Task(
                draw(st.integers(0, n_users - 1)),
                np.array(items[:ns], dtype=np.int64),
                np.array(ratings[:ns], dtype=np.float32),
                np.array(items[ns:], dtype=np.int64),
                np.array(ratings[ns:], dtype=np.float32),
            )
        )
    return tasks


@settings(max_examples=150, **FUZZ)
@given(data=st.data())
def test_collator_random_tasks(small_ds: RecDataset, data) -> None:
    ds = small_ds
    hidden = data.draw(st.one_of(st.none(), st.lists(st.integers(0, ds.n_items - 1), max_size=5)), label="hidden")
    tables = FeatureTables(ds, hidden_items=None if hidden is None else np.array(hidden, dtype=np.int64))
    tasks = data.draw(task_lists(ds.n_users, ds.n_items), label="tasks")
    b = EpisodeCollator(tables)(tasks)

    n = len(tasks)
    s_len = max(1, max(len(t.support_items) for t in tasks))
    q_len = max(1, max(len(t.query_items) for t in tasks))
    length = s_len + q_len
    assert b.n_tasks == n and b.n_support == s_len
    assert b.item_ids.shape == b.ratings.shape == b.support_mask.shape == b.query_mask.shape == (n, length)
    assert b.support_mask.dtype == b.query_mask.dtype == torch.bool
    assert b.user.categorical.shape == (n, ds.users.categorical.shape[1])
    assert b.user.multihot.shape == (n, ds.users.multihot.shape[1])
    assert b.item.categorical.shape == (n, length, ds.items.categorical.shape[1])
    assert b.item.multihot.shape == (n, length, ds.items.multihot.shape[1])
    assert not (b.support_mask & b.query_mask).any()
    assert not b.support_mask[:, s_len:].any() and not b.query_mask[:, :s_len].any()
    pad = ~(b.support_mask | b.query_mask)
    assert (b.item_ids[pad] == 0).all() and (b.ratings[pad] == 0).all()
    for i, t in enumerate(tasks):
        ns, nq = len(t.support_items), len(t.query_items)
        assert int(b.support_mask[i].sum()) == ns and int(b.query_mask[i].sum()) == nq
        assert b.support_mask[i, :ns].all() and b.query_mask[i, s_len : s_len + nq].all()
        assert b.item_ids[i, :ns].tolist() == t.support_items.tolist()
        assert b.item_ids[i, s_len : s_len + nq].tolist() == t.query_items.tolist()
        assert torch.equal(b.ratings[i, :ns], torch.from_numpy(t.support_ratings))
        assert torch.equal(b.ratings[i, s_len : s_len + nq], torch.from_numpy(t.query_ratings))
        assert int(b.user_ids[i]) == t.user
    for which in ("support", "query"):
        feats, ratings, mask = b.part(which)
        assert ratings.shape == mask.shape == feats.categorical.shape[:2]
    if hidden:
        assert (tables.item_cat[np.array(hidden), 0] == 0).all()


def test_collator_empty_task_list(small_ds: RecDataset) -> None:
    with pytest.raises(DataError, match="empty list of tasks"):
        EpisodeCollator(FeatureTables(small_ds))([])


# ---------------------------------------------------------------------------------------------
# 3. Manifest round trip under corruption

MANIFEST_SPLIT = dict(min_ratings=8, max_ratings=16, query_size=2, new_item_fraction=0.3)


class _Saved(tuple):
    """(dataset, split, manifest bytes), with a short repr for hypothesis' failure reports."""

    def __repr__(self) -> str:
        return "<saved split>"


@pytest.fixture(scope="module")
def saved_split(tmp_path_factory) -> tuple[RecDataset, ColdStartSplit, bytes]:
    ds = load_dataset("synthetic", dict(n_users=40, n_items=30, min_ratings=8, max_ratings=16, seed=3), None)
    split = make_split(ds, SplitConfig(**MANIFEST_SPLIT))
    path = save_manifest(split, tmp_path_factory.mktemp("manifest") / "split.json")
    return _Saved((ds, split, path.read_bytes()))


def _same_split(a: ColdStartSplit, b: ColdStartSplit) -> bool:
    if a.manifest != b.manifest or not np.array_equal(a.new_item_mask, b.new_item_mask):
        return False
    if a.train_pool.keys() != b.train_pool.keys() or a.episodes.keys() != b.episodes.keys():
        return False
    for u, (items, ratings) in a.train_pool.items():
        if not (np.array_equal(items, b.train_pool[u][0]) and np.array_equal(ratings, b.train_pool[u][1])):
            return False
    for name, tasks in a.episodes.items():
        if len(tasks) != len(b.episodes[name]):
            return False
        for s, t in zip(tasks, b.episodes[name]):
            fields = ("support_items", "support_ratings", "query_items", "query_ratings")
            if s.user != t.user or not all(np.array_equal(getattr(s, f), getattr(t, f)) for f in fields):
                return False
    return True


def _load_text(ds: RecDataset, text: bytes) -> ColdStartSplit:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "split.json"
        path.write_bytes(text)
        return load_split(ds, path)


def test_manifest_round_trip(saved_split) -> None:
    ds, split, text = saved_split
    assert _same_split(split, _load_text(ds, text))


@st.composite
def byte_mutation(draw, text: bytes) -> bytes:
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete_span"]))
    b = bytearray(text)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
    elif kind == "truncate":
        del b[draw(st.integers(0, len(b) - 1)) :]
    elif kind == "insert":
        k = draw(st.integers(0, len(b)))
        b[k:k] = draw(st.one_of(nasty_bytes, st.sampled_from([b" ", b"\n", b"\t", b",", b"{}", b"[", b"null"])))
    else:
        k = draw(st.integers(0, len(b) - 1))
        del b[k : k + draw(st.integers(1, 20))]
    return bytes(b)


def _paths(obj, prefix=()) -> list[tuple]:
    """Paths (key/index tuples) of every entry inside a JSON value."""
    out = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for k, v in items:
        out.append((*prefix, k))
        out.extend(_paths(v, (*prefix, k)))
    return out


JSON_JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**65), 2**65), st.floats(allow_nan=False),
    st.sampled_from(["", "x", "val", "warm", "random", "synthetic"]),
    st.builds(list), st.builds(dict), st.builds(lambda: [1, "a"]),  # fresh objects: they get edited
)  # fmt: skip


@st.composite
def structural_mutation(draw, text: bytes) -> tuple[bytes, bool]:
    """Delete a key / list entry or replace a value; rehash half of the time so that the edit gets past
    the content-hash check (a hand edit with a recomputed hash). Returns (text, rehashed)."""
    manifest = json.loads(text)
    for _ in range(draw(st.integers(1, 2))):
        paths = [p for p in _paths(manifest) if p != ("content_hash",)]
        # Favour the shallow paths: the long episode lists would otherwise dominate.
        depth = draw(st.integers(1, 5))
        paths = [p for p in paths if len(p) == depth] or paths
        path = draw(st.sampled_from(sorted(paths, key=str)))
        parent = manifest
        for k in path[:-1]:
            parent = parent[k]
        if draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON_JUNK)
    rehash = draw(st.booleans())
    if rehash:
        manifest["content_hash"] = content_hash(manifest)
    return json.dumps(manifest, sort_keys=True).encode(), rehash


@settings(max_examples=200, **FUZZ)
@given(data=st.data())
def test_manifest_byte_corruption(saved_split, data) -> None:
    ds, split, text = saved_split
    mutated = data.draw(byte_mutation(text), label="mutated")
    try:
        loaded = _load_text(ds, mutated)
    except DataError as e:
        _one_line(e)
        event("DataError")
    else:
        event("loaded")
        # Only harmless edits (e.g. one whitespace byte turned into another) may load, and then the
        # split must be the saved one.
        assert _same_split(split, loaded)


@settings(max_examples=200, **FUZZ)
@given(data=st.data())
def test_manifest_structural_corruption(saved_split, data) -> None:
    ds, _, text = saved_split
    mutated, rehashed = data.draw(structural_mutation(text), label="mutated")
    assume(mutated != text)
    try:
        loaded = _load_text(ds, mutated)
    except DataError as e:
        _one_line(e)
        event(f"DataError ({'rehashed' if rehashed else 'hash kept'})")
    else:
        event("loaded")
        assert rehashed, "an edit without a matching content hash was accepted"
        # A consistent hand edit may load; the result must still be a coherent split of ds.
        for tasks in loaded.episodes.values():
            for t in tasks:
                assert 0 <= t.user < ds.n_users
                assert len(t.support_items) == len(t.support_ratings)
                assert len(t.query_items) == len(t.query_ratings)


def test_manifest_regressions(saved_split) -> None:
    ds, _, text = saved_split
    for edit in ("drop config", "unknown train user", "bad config type"):
        m = json.loads(text)
        if edit == "drop config":
            del m["config"]
        elif edit == "unknown train user":
            m["users"]["train"].append(10**6)
        else:
            m["config"]["query_size"] = "3"
        m["content_hash"] = content_hash(m)  # a hand edit that also fixed the hash
        with pytest.raises(DataError):
            _load_text(ds, json.dumps(m).encode())
    with pytest.raises(DataError, match="not valid JSON"):
        _load_text(ds, b"1" * 5000)  # int() digit limit: ValueError, not JSONDecodeError


def test_negative_seeds_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="seed"):
        load_dataset("synthetic", {"n_users": 3, "n_items": 3, "min_ratings": 1, "max_ratings": 2, "seed": -1}, None)
    with pytest.raises(ConfigError, match="seed"):
        SplitConfig(seed=-1).check()
