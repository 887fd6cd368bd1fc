"""Shared fixtures. Real-data tests find the original files through ``METAREC_DATA_DIR``."""

from __future__ import annotations

import os
from pathlib import Path

import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

ML100K_REQUIRED = ("u.data", "u.user", "u.item")


@pytest.fixture(autouse=True)
def _no_user_config_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests compose the repository's configs: a developer's own METAREC_CONFIG_PATH folders are ignored."""
    monkeypatch.delenv("METAREC_CONFIG_PATH", raising=False)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def real_data_root(folder: str, required, label: str) -> Path:
    """The ``METAREC_DATA_DIR`` folder holding ``folder/`` with the ``required`` files; skips the test
    when they are absent, and fails it under CI (real-data tests must never be skipped silently there)."""
    env = os.environ.get("METAREC_DATA_DIR", "")
    root = Path(env).expanduser() if env else None
    if root is None:
        problem = "METAREC_DATA_DIR is not set"
    else:
        missing = [f for f in required if not (root / folder / f).is_file()]
        problem = f"{root / folder} lacks {', '.join(missing)}" if missing else ""
    if problem:
        msg = f"real {label} data not available: {problem} (set METAREC_DATA_DIR to the folder holding {folder}/)"
        if _in_ci():
            pytest.fail(f"{msg}; CI must run the real-data tests", pytrace=False)
        pytest.skip(msg)
    return root


@pytest.fixture(scope="session")
def ml100k_root() -> Path:
    """The ``METAREC_DATA_DIR`` folder holding ``ml-100k/``; skipped when absent (a failure under CI)."""
    return real_data_root("ml-100k", ML100K_REQUIRED, "MovieLens 100K")


@pytest.fixture(scope="session")
def lastfm_root() -> Path:
    """The ``METAREC_DATA_DIR`` folder holding ``lastfm-2k/``; skipped when absent (a failure under CI)."""
    from metarec.data.sources import lastfm

    return real_data_root("lastfm-2k", lastfm.REQUIRED_FILES, "Last.fm 2K")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A local HTTP server on 127.0.0.1 serving the returned folder at the returned base URL."""
    www = tmp_path / "www"
    www.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
