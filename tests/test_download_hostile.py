"""Downloads from hostile or broken servers (``data.params.url`` pointing anywhere): a zip bomb is
refused before anything is extracted, a trickling server is cut off at the total ``timeout``, and an
interrupted download (SIGTERM turned into an exception, Ctrl-C) leaves no temporary file."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from archive_helpers import zip_bytes
from cli_helpers import REPO

from metarec.data import download
from metarec.data.download import fetch_archive, fetch_unpinned
from metarec.data.sources import load_dataset, movielens
from metarec.errors import DataError


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def test_pinned_sizes_are_the_official_files_sizes() -> None:
    assert set(movielens.ML100K_SIZES) == set(movielens.ML100K_SHA256)
    from metarec.data.sources import lastfm

    assert set(lastfm.LASTFM_SIZES) == set(lastfm.LASTFM_SHA256)


def test_a_member_larger_than_its_pinned_size_is_refused_before_extraction(
    tmp_path: Path, http_server: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 20 MB member compressed to a few KB: refused from the size the archive declares, nothing written."""
    www, base = http_server
    bomb = b"0" * (20 << 20)
    (www / "ml-100k.zip").write_bytes(zip_bytes({"u.data": bomb}))
    monkeypatch.setattr(download, "_copy_member", lambda *a, **k: pytest.fail("extracted before the size check"))
    dest = tmp_path / "d"
    with pytest.raises(DataError) as err:
        fetch_archive(f"{base}/ml-100k.zip", dest, {"u.data": hashlib.sha256(bomb).hexdigest()}, "ml-100k/",
                      sizes={"u.data": 1979173})
    msg = str(err.value)
    assert "checksum mismatch" in msg and "20971520 bytes, expected 1979173" in msg and "\n" not in msg
    assert _files(dest) == []


def test_the_official_source_refuses_an_archive_of_other_sizes(tmp_path: Path, http_server: tuple[Path, str]) -> None:
    www, base = http_server
    (www / "ml-100k.zip").write_bytes(zip_bytes({n: b"1\t1\t5\t0\n" for n in movielens.ML100K_SHA256}))
    with pytest.raises(DataError, match=r"checksum mismatch .*u\.data.* bytes, expected 1979173"):
        load_dataset("movielens100k", {"url": f"{base}/ml-100k.zip"}, str(tmp_path))
    assert _files(tmp_path / "ml-100k") == []


def test_extraction_never_writes_more_than_the_known_size(tmp_path: Path, http_server: tuple[Path, str]) -> None:
    """Even when the declared size check is passed (here: no pin, the declared size is a lie would be
    caught by zipfile), streaming stops as soon as more than the known size comes out."""
    dest = tmp_path / "d"
    dest.mkdir()
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_bytes({"u.data": b"x" * 5000}))
    import zipfile

    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("ml-100k/u.data")
        with pytest.raises(DataError, match="holds more than 100 bytes"):
            download._copy_member(zf, info, dest / "t", "http://x", size=100)
    assert (dest / "t").stat().st_size <= 100


def test_unpinned_member_larger_than_the_free_space_is_refused(
    tmp_path: Path, http_server: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    www, base = http_server
    (www / "ml-1m.zip").write_bytes(zip_bytes({"ratings.dat": b"1::1::5::0\n" * 100}, prefix="ml-1m/"))
    monkeypatch.setattr(download.shutil, "disk_usage", lambda p: type("U", (), {"free": 10})())
    with pytest.raises(DataError, match="more than the 10 bytes free"):
        fetch_unpinned(f"{base}/ml-1m.zip", tmp_path / "d", ["ratings.dat"], "ml-1m/")
    assert _files(tmp_path / "d") == []


class _Trickle(BaseHTTPRequestHandler):
    """Sends a 150-byte body one byte every 0.2 s (30 s in all), then closes."""

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "150")
        self.end_headers()
        try:
            for _ in range(150):
                self.wfile.write(b"P")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:  # the client gave up
            pass

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def trickle_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/ml-100k.zip"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_a_trickling_server_is_cut_off_at_the_total_timeout(tmp_path: Path, trickle_url: str) -> None:
    """Every read gets a byte well within the timeout; only a total deadline stops the download (without
    one, the whole body arrives and the error would be 'not a valid zip archive')."""
    with pytest.raises(DataError) as err:
        fetch_archive(trickle_url, tmp_path / "d", {"u.data": "0" * 64}, "ml-100k/", timeout=1.0)
    msg = str(err.value)
    assert "not complete within the timeout of 1 s" in msg and "\n" not in msg
    assert _files(tmp_path / "d") == []


_INTERRUPTED = """
import signal, sys
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # what a CLI does with SIGTERM
from metarec.data.download import fetch_archive
fetch_archive({url!r}, {dest!r}, {{"u.data": "0" * 64}}, "ml-100k/", timeout=120.0)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_download_leaves_no_temporary_file(tmp_path: Path, trickle_url: str, signum: int) -> None:
    dest = tmp_path / "d"
    script = textwrap.dedent(_INTERRUPTED.format(url=trickle_url, dest=str(dest)))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(600):  # until the download has started writing its temporary file
            if any(n.endswith(".part") for n in _files(dest)) or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()
        assert any(n.startswith(".download.") and n.endswith(".part") for n in _files(dest))
        proc.send_signal(signum)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert _files(dest) == []
