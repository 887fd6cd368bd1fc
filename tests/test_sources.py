"""Tests for metarec.data sources: MovieLens 100K (real and fake files), downloads, synthetic data."""

from __future__ import annotations

import hashlib
import io
import re
import stat
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from archive_helpers import zip_bytes

from metarec.data import download
from metarec.data.download import fetch_archive
from metarec.data.paths import resolve_data_root
from metarec.data.schema import RecDataset
from metarec.data.sources import SOURCES, load_dataset, movielens
from metarec.errors import ConfigError, DataError

# ---------------------------------------------------------------------------------------------
# Fake MovieLens files

_FLAGS_TOY = "|".join("1" if g in (3, 4, 5) else "0" for g in range(19))
_FLAGS_DRAMA = "|".join("1" if g == 8 else "0" for g in range(19))
_FLAGS_UNKNOWN = "|".join("1" if g == 0 else "0" for g in range(19))
FAKE_FILES: dict[str, bytes] = {
    "u.data": b"1\t1\t5\t881250949\n1\t2\t3\t881250950\n2\t1\t4\t881250951\n3\t3\t1\t881250952\n",
    "u.user": b"1|24|M|technician|85711\n2|53|F|other|94043\n3|16|M|student|T8H1N\n",
    "u.item": (
        f"1|Toy Story (1995)|01-Jan-1995||http://x/1|{_FLAGS_TOY}\n"
        f"2|Misérables, Les (1995)|01-Jan-1995||http://x/2|{_FLAGS_DRAMA}\n"
        f"3|unknown||||{_FLAGS_UNKNOWN}\n"
    ).encode("latin-1"),
    "u.genre": b"unknown|0\nAction|1\n\n",
    "u.occupation": b"other\nstudent\n",
}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


FAKE_SHA = {name: _sha(data) for name, data in FAKE_FILES.items()}


def _write_fake(root: Path, **overrides: bytes) -> Path:
    folder = root / "ml-100k"
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in {**FAKE_FILES, **overrides}.items():
        (folder / name).write_bytes(data)
    return folder






def _all_files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# ---------------------------------------------------------------------------------------------
# Real MovieLens 100K


@pytest.fixture(scope="module")
def ml100k(ml100k_root: Path) -> RecDataset:
    return load_dataset("movielens100k", {"download": False}, str(ml100k_root))


@pytest.mark.realdata
def test_ml100k_sizes_and_rating_counts(ml100k: RecDataset) -> None:
    assert (ml100k.n_users, ml100k.n_items, len(ml100k.ratings)) == (943, 1682, 100000)
    counts = ml100k.ratings["rating"].value_counts().sort_index().to_dict()
    assert counts == {1.0: 6110, 2.0: 11370, 3.0: 27145, 4.0: 34174, 5.0: 21201}
    assert ml100k.ratings.groupby("user").size().min() == 20
    ts = ml100k.ratings["timestamp"]
    assert (ts.min(), ts.max()) == (874724710, 893286638)
    assert list(ml100k.user_ids) == list(range(1, 944))
    assert list(ml100k.item_ids) == list(range(1, 1683))
    assert ml100k.rating_range == (1.0, 5.0)


@pytest.mark.realdata
def test_ml100k_first_rating_row(ml100k: RecDataset) -> None:
    row = ml100k.ratings.iloc[0]
    assert ml100k.user_ids[int(row["user"])] == 196
    assert ml100k.item_ids[int(row["item"])] == 242
    assert (row["rating"], row["timestamp"]) == (3.0, 881250949)


@pytest.mark.realdata
def test_ml100k_items(ml100k: RecDataset) -> None:
    toy = 0  # item 1, Toy Story: Animation, Children's, Comedy
    assert ml100k.item_titles[toy] == "Toy Story (1995)"
    assert np.flatnonzero(ml100k.items.multihot[toy]).tolist() == [3, 4, 5]
    assert ml100k.item_titles[542] == "Misérables, Les (1995)"
    assert ml100k.item_titles[1632] == "Á köldum klaka (Cold Fever) (1994)"
    unknown = 266  # item 267
    assert ml100k.item_titles[unknown] == "unknown"
    assert np.isnan(ml100k.item_year[unknown])
    assert ml100k.items.categorical[unknown].tolist() == [267, 0]
    assert ml100k.item_year[toy] == 1995
    assert np.isnan(ml100k.item_year).sum() == 1
    assert (ml100k.items.categorical[:, 1] > 0).sum() == 1681


@pytest.mark.realdata
def test_ml100k_schema_and_users(ml100k: RecDataset) -> None:
    schema = ml100k.schema.to_dict()
    assert schema["user_categorical"] == [
        {"name": "age", "size": 8},
        {"name": "gender", "size": 3},
        {"name": "occupation", "size": 22},
        {"name": "zip_prefix", "size": 12},
    ]
    assert schema["item_categorical"] == [{"name": "item_id", "size": 1683}, {"name": "release_year", "size": 17}]
    assert schema["item_multihot"] == [{"name": "genre", "size": 19}]
    cat = ml100k.users.categorical
    assert np.bincount(cat[:, 1], minlength=3).tolist() == [0, 670, 273]
    assert (cat[:, [0, 2, 3]] > 0).all()
    assert cat[0].tolist() == [2, 1, 20, 9]  # user 1: 24, M, technician, 85711
    assert (cat[:, 3] == 11).sum() == 18  # zip codes that start with a letter


# ---------------------------------------------------------------------------------------------
# Fake MovieLens files: parsing, features and malformed input


def test_fake_files_parse(tmp_path: Path) -> None:
    _write_fake(tmp_path)
    ds = load_dataset("movielens100k", {"download": False}, str(tmp_path))
    assert (ds.n_users, ds.n_items, len(ds.ratings)) == (3, 3, 4)
    assert ds.item_titles == ["Toy Story (1995)", "Misérables, Les (1995)", "unknown"]
    assert ds.users.categorical.tolist() == [[2, 1, 20, 9], [6, 2, 14, 10], [1, 1, 19, 11]]
    assert ds.items.categorical.tolist() == [[1, 1], [2, 1], [3, 0]]
    assert np.isnan(ds.item_year[2]) and ds.item_year[0] == 1995
    assert ds.ratings["rating"].tolist() == [5.0, 3.0, 4.0, 1.0]
    assert ds.ratings["item"].tolist() == [0, 1, 0, 2]
    assert ds.ratings.dtypes.to_dict() == {
        "user": np.int64, "item": np.int64, "rating": np.float64, "timestamp": np.int64
    }  # fmt: skip


_DATA = FAKE_FILES["u.data"].decode()
_USER = FAKE_FILES["u.user"].decode()
_ITEM = FAKE_FILES["u.item"].decode("latin-1")


def _replace_line(text: str, lineno: int, new: str) -> bytes:
    lines = text.splitlines()
    lines[lineno - 1] = new
    return ("\n".join(lines) + "\n").encode("latin-1")


@pytest.mark.parametrize(
    ("file", "lineno", "new_line", "what"),
    [
        ("u.data", 2, "1\t2\t3", "expected 4 fields"),
        ("u.data", 3, "2\t1\tfour\t881250951", "not an integer"),
        ("u.data", 1, "1\t1\t6\t881250949", "outside 1..5"),
        ("u.data", 4, "9\t3\t1\t881250952", "user id 9 that is not in u.user"),
        ("u.data", 4, "3\t42\t1\t881250952", "item id 42 that is not in u.item"),
        ("u.data", 3, "1\t1\t4\t881250951", "duplicate rating of user 1 for item 1"),
        ("u.data", 2, "", "expected 4 fields"),
        ("u.user", 2, "2|fifty|F|other|94043", "not an integer"),
        ("u.user", 3, "3|16|M|student", "expected 5 fields"),
        ("u.user", 3, "1|16|M|student|T8H1N", "duplicate user id 1"),
        ("u.item", 3, "3|unknown|||" + "|0" * 18, "expected 24 fields"),
        ("u.item", 2, "2|X|01-Jan-1995||u|" + "|".join(["2"] + ["0"] * 18), "0 or 1"),
        ("u.item", 1, "1|Toy|1995-01-01||u|" + _FLAGS_TOY, "not like 01-Jan-1995"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path: Path, file: str, lineno: int, new_line: str, what: str) -> None:
    original = {"u.data": _DATA, "u.user": _USER, "u.item": _ITEM}[file]
    _write_fake(tmp_path, **{file: _replace_line(original, lineno, new_line)})
    with pytest.raises(DataError) as err:
        load_dataset("movielens100k", {"download": False}, str(tmp_path))
    msg = str(err.value)
    assert re.search(rf"{re.escape(file)}, line {lineno}: ", msg), msg
    assert what in msg
    assert "\n" not in msg


def test_trailing_blank_lines_and_crlf_are_accepted(tmp_path: Path) -> None:
    _write_fake(tmp_path, **{"u.data": FAKE_FILES["u.data"].replace(b"\n", b"\r\n") + b"\n\n"})
    ds = load_dataset("movielens100k", {"download": False}, str(tmp_path))
    assert len(ds.ratings) == 4


def test_missing_files_without_download(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"u\.data, u\.user, u\.item") as err:
        load_dataset("movielens100k", {"download": False}, str(tmp_path))
    assert str(tmp_path / "ml-100k") in str(err.value)
    assert "METAREC_DATA_DIR" in str(err.value)


# ---------------------------------------------------------------------------------------------
# Downloads


def test_download_from_local_server(
    tmp_path: Path, http_server: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    www, base = http_server
    (www / "ml-100k.zip").write_bytes(zip_bytes({**FAKE_FILES, "README": b"not wanted"}))
    monkeypatch.setattr(movielens, "ML100K_SHA256", FAKE_SHA)
    monkeypatch.setattr(movielens, "ML100K_SIZES", {n: len(d) for n, d in FAKE_FILES.items()})
    root = tmp_path / "data"
    ds = load_dataset("movielens100k", {"url": f"{base}/ml-100k.zip"}, str(root))
    assert (ds.n_users, ds.n_items, len(ds.ratings)) == (3, 3, 4)
    assert _all_files(root) == ["ml-100k", *(f"ml-100k/{n}" for n in sorted(FAKE_FILES))]
    for name, data in FAKE_FILES.items():
        assert (root / "ml-100k" / name).read_bytes() == data


def test_download_checksum_mismatch_deletes_and_names_both_hashes(
    tmp_path: Path, http_server: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    www, base = http_server
    (www / "ml-100k.zip").write_bytes(zip_bytes(FAKE_FILES))
    wrong = "0" * 64
    monkeypatch.setattr(movielens, "ML100K_SHA256", {**FAKE_SHA, "u.item": wrong})
    monkeypatch.setattr(movielens, "ML100K_SIZES", {n: len(d) for n, d in FAKE_FILES.items()})
    root = tmp_path / "data"
    with pytest.raises(DataError) as err:
        load_dataset("movielens100k", {"url": f"{base}/ml-100k.zip"}, str(root))
    msg = str(err.value)
    assert str(root / "ml-100k" / "u.item") in msg
    assert FAKE_SHA["u.item"] in msg and wrong in msg
    assert _all_files(root) == ["ml-100k"]


def test_download_verifies_the_real_checksums_by_default(tmp_path: Path, http_server: tuple[Path, str]) -> None:
    www, base = http_server
    (www / "ml-100k.zip").write_bytes(zip_bytes(FAKE_FILES))
    with pytest.raises(DataError, match="checksum mismatch"):
        load_dataset("movielens100k", {"url": f"{base}/ml-100k.zip"}, str(tmp_path))
    assert _all_files(tmp_path / "ml-100k") == []


class _TruncatingHandler(SimpleHTTPRequestHandler):
    """Promises 1000 bytes, sends 10, then closes the connection."""

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"PK" + b"\0" * 8)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def test_truncated_download_leaves_nothing(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TruncatingHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/ml-100k.zip"
        with pytest.raises(DataError, match="990 bytes still to come"):
            fetch_archive(url, tmp_path / "d", {"u.data": "0" * 64}, "ml-100k/", timeout=5.0)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert _all_files(tmp_path / "d") == []


@pytest.mark.realdata
def test_download_with_official_checksums(
    ml100k_root: Path, tmp_path: Path, http_server: tuple[Path, str]
) -> None:
    www, base = http_server
    src = ml100k_root / "ml-100k"
    official = {name: (src / name).read_bytes() for name in movielens.ML100K_SHA256}
    (www / "ml-100k.zip").write_bytes(zip_bytes(official))
    ds = load_dataset("movielens100k", {"url": f"{base}/ml-100k.zip"}, str(tmp_path))
    assert len(ds.ratings) == 100000
    assert _all_files(tmp_path / "ml-100k") == sorted(movielens.ML100K_SHA256)


def test_missing_member_and_http_error(tmp_path: Path, http_server: tuple[Path, str]) -> None:
    www, base = http_server
    (www / "a.zip").write_bytes(zip_bytes({"u.data": b"x"}))
    with pytest.raises(DataError, match="no file 'ml-100k/u.user'"):
        fetch_archive(f"{base}/a.zip", tmp_path / "d", {"u.data": _sha(b"x"), "u.user": "0" * 64}, "ml-100k/")
    with pytest.raises(DataError, match="HTTP 404") as err:
        fetch_archive(f"{base}/missing.zip", tmp_path / "d", {"u.data": "0" * 64}, "ml-100k/")
    assert str(tmp_path / "d") in str(err.value)
    (www / "bad.zip").write_bytes(b"this is not a zip")
    with pytest.raises(DataError, match="not a valid zip"):
        fetch_archive(f"{base}/bad.zip", tmp_path / "d", {"u.data": "0" * 64}, "ml-100k/")
    assert _all_files(tmp_path / "d") == []


def _symlink_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("ml-100k/u.data")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def _member_zip(name: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ml-100k/u.data", b"ok")
        zf.writestr(zipfile.ZipInfo(name), b"evil")
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["dotdot", "nested_dotdot", "absolute", "backslash", "symlink"])
def test_malicious_archive_is_refused(tmp_path: Path, http_server: tuple[Path, str], kind: str) -> None:
    www, base = http_server
    outside = tmp_path / "evil"
    data = {
        "dotdot": lambda: _member_zip("../evil"),
        "nested_dotdot": lambda: _member_zip("ml-100k/../../evil"),
        "absolute": lambda: _member_zip(str(outside)),
        "backslash": lambda: _member_zip("..\\evil"),
        "symlink": _symlink_zip,
    }[kind]()
    (www / "x.zip").write_bytes(data)
    dest = tmp_path / "data" / "ml-100k"
    reason = "symlink or special file" if kind == "symlink" else "absolute path or '..'"
    with pytest.raises(DataError, match=f"refusing the archive .*{re.escape(reason)}"):
        fetch_archive(f"{base}/x.zip", dest, {"u.data": _sha(b"ok")}, "ml-100k/")
    assert not outside.exists()
    assert _all_files(tmp_path / "data") == ["ml-100k"]


def test_offline_message_names_folder_and_files(tmp_path: Path) -> None:
    cfg = {"url": "http://127.0.0.1:9/ml-100k.zip", "timeout_s": 5.0}
    with pytest.raises(DataError) as err:
        load_dataset("movielens100k", cfg, str(tmp_path))
    msg = str(err.value)
    folder = tmp_path / "ml-100k"
    assert str(folder) in msg and "METAREC_DATA_DIR" in msg
    for name in ("u.data", "u.user", "u.item"):
        assert name in msg
    assert "\n" not in msg
    assert _all_files(folder) == []


def test_fetch_archive_uses_a_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def fake_urlopen(request: object, timeout: float | None = None) -> object:
        seen["timeout"] = timeout
        raise OSError("no network in this test")

    monkeypatch.setattr(download.urllib.request, "urlopen", fake_urlopen)
    with pytest.raises(DataError, match="no network in this test"):
        fetch_archive("http://example.invalid/x.zip", tmp_path, {"u.data": "0" * 64}, "", timeout=3.0)
    assert seen["timeout"] == 3.0
    assert _all_files(tmp_path) == []


def test_existing_files_are_not_reverified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_fake(tmp_path)  # checksums differ from the official ones, download stays on
    monkeypatch.setattr(download, "fetch_archive", lambda *a, **k: pytest.fail("must not download"))
    ds = load_dataset("movielens100k", {}, str(tmp_path))
    assert ds.n_users == 3


# ---------------------------------------------------------------------------------------------
# Data root


def test_resolve_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("METAREC_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_root("~/given") == tmp_path / "home" / "given"
    assert resolve_data_root(None) == tmp_path / "env"
    monkeypatch.delenv("METAREC_DATA_DIR")
    assert resolve_data_root(None) == tmp_path / "home" / ".cache" / "metarec"


# ---------------------------------------------------------------------------------------------
# Synthetic


def _frames_equal(a: RecDataset, b: RecDataset) -> bool:
    return (
        a.ratings.equals(b.ratings)
        and np.array_equal(a.users.categorical, b.users.categorical)
        and np.array_equal(a.items.categorical, b.items.categorical)
        and np.array_equal(a.items.multihot, b.items.multihot)
        and np.array_equal(a.item_year, b.item_year)
    )


def test_synthetic_is_deterministic_and_well_formed() -> None:
    a = load_dataset("synthetic", {"seed": 3}, None)
    b = load_dataset("synthetic", {"seed": 3}, None)
    c = load_dataset("synthetic", {"seed": 4}, None)
    assert _frames_equal(a, b)
    assert not a.ratings.equals(c.ratings)
    assert (a.n_users, a.n_items) == (800, 300)
    per_user = a.ratings.groupby("user").size()
    assert per_user.min() >= 15 and per_user.max() <= 60 and len(per_user) == 800
    assert a.ratings["timestamp"].is_monotonic_increasing
    assert a.ratings["rating"].between(1, 5).all()
    assert 3.0 < a.ratings["rating"].mean() < 4.0 and a.ratings["rating"].std() > 0.7
    assert 1950 <= a.item_year.min() and a.item_year.max() <= 2000
    schema = a.schema.to_dict()
    assert [f["name"] for f in schema["user_categorical"]] == ["age_group", "gender", "occupation"]
    assert schema["item_categorical"] == [{"name": "item_id", "size": 301}, {"name": "release_year", "size": 12}]
    assert schema["item_multihot"] == [{"name": "genre", "size": 8}]
    assert (a.items.multihot.sum(axis=1) >= 1).all()


def _holdout_maes(ratings: pd.DataFrame) -> tuple[float, float]:
    """MAE on each user's last rating of (mean of the user's other ratings, mean of the item's other ratings)."""
    last = ratings.groupby("user").tail(1)
    rest = ratings.drop(last.index)
    user_mean = rest.groupby("user")["rating"].mean().reindex(last["user"]).to_numpy()
    item_mean = rest.groupby("item")["rating"].mean().reindex(last["item"])
    item_mean = item_mean.fillna(rest["rating"].mean()).to_numpy()
    y = last["rating"].to_numpy()
    return float(np.abs(user_mean - y).mean()), float(np.abs(item_mean - y).mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_synthetic_users_ratings_carry_personal_signal(seed: int) -> None:
    ds = load_dataset("synthetic", {"seed": seed}, None)
    user_mae, item_mae = _holdout_maes(ds.ratings)
    assert user_mae < 0.85 * item_mae, (user_mae, item_mae)


def test_synthetic_without_personal_deviation_has_less_user_signal() -> None:
    base = _holdout_maes(load_dataset("synthetic", {"seed": 0}, None).ratings)
    flat = _holdout_maes(load_dataset("synthetic", {"seed": 0, "user_spread": 0.0}, None).ratings)
    assert flat[0] / flat[1] > base[0] / base[1]


# ---------------------------------------------------------------------------------------------
# Options


def test_sources_registered() -> None:
    assert {"movielens100k", "synthetic"} <= set(SOURCES.names())


@pytest.mark.parametrize(
    ("name", "params", "pattern"),
    [
        ("synthetic", {"n_user": 5}, r"unknown option 'n_user' \(known: n_users, n_items"),
        ("movielens100k", {"dowload": False}, r"unknown option 'dowload' \(known: download, url"),
        ("synthetic", {"n_users": "many"}, r"option 'n_users'"),
        ("synthetic", {"min_ratings": 80}, r"min_ratings <= max_ratings"),
        ("no_such_source", {}, r"unknown data source 'no_such_source'"),
    ],
)
def test_bad_options_raise_config_error(name: str, params: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as err:
        load_dataset(name, params, None)
    assert "\n" not in str(err.value)


def test_dictconfig_params_are_accepted() -> None:
    from omegaconf import OmegaConf

    ds = load_dataset("synthetic", OmegaConf.create({"n_users": 40, "n_items": 50, "max_ratings": 30, "seed": 1}), None)
    assert (ds.n_users, ds.n_items) == (40, 50)
