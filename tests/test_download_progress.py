"""Download progress: a rich bar (bytes, rate, time left) on an interactive terminal, nothing otherwise;
the checked, atomic download is the same either way."""

from __future__ import annotations

import hashlib
import io
import sys
import zipfile
from pathlib import Path

import pytest

from metarec.data.download import fetch_archive

CONTENT = b"1\t2\t5\t881250949\n" * 4000


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _serve_zip(www: Path) -> str:
    with zipfile.ZipFile(www / "tiny.zip", "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("tiny/u.data", CONTENT)
    return str((www / "tiny.zip").stat().st_size)


@pytest.mark.parametrize("terminal", [True, False])
def test_download_shows_progress_only_on_a_terminal(tmp_path: Path, http_server: tuple[Path, str], terminal: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    www, base = http_server
    size = _serve_zip(www)
    err = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    dest = tmp_path / "data"
    paths = fetch_archive(f"{base}/tiny.zip", dest, {"u.data": hashlib.sha256(CONTENT).hexdigest()}, "tiny/",
                          sizes={"u.data": len(CONTENT)})
    assert paths == [dest / "u.data"] and (dest / "u.data").read_bytes() == CONTENT
    assert sorted(p.name for p in dest.iterdir()) == ["u.data"]  # no archive or temporary file left
    shown = err.getvalue()
    if not terminal:
        assert shown == ""
        return
    assert "downloading" in shown and "tiny.zip" in shown
    from rich.filesize import decimal

    total = decimal(int(size)).split()  # e.g. ['64.1', 'kB']: the bar ends at the whole archive
    assert f"{total[0]}/{total[0]} {total[1]}" in shown, shown
