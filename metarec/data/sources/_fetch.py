"""Download an archive whose files have no pinned sha256, checking what can be checked.

Like :func:`metarec.data.download.fetch_archive` (same safety rules: hidden temporary files renamed
into place only when complete, unsafe members refused, nothing partial left behind), but each file is
checked against a known *git blob id* where one is known (``sha1(b"blob <size>\\0" + content)``, the id
public git repositories show for a file), and the archive against an MD5 if the caller passes one.
Files with neither are accepted as downloaded; the loaders then validate their contents line by line.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from metarec.data import download
from metarec.errors import DataError

_CHUNK = 1 << 20


def git_blob_sha1(path: str | os.PathLike[str]) -> str:
    """The git blob id of a file: hex ``sha1(b"blob <size>\\0" + content)``."""
    size = os.path.getsize(path)
    h = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def fetch_unpinned(
    url: str,
    dest_dir: str | os.PathLike[str],
    names: Sequence[str],
    member_prefix: str,
    *,
    blob_ids: Mapping[str, str] | None = None,
    archive_md5: str = "",
    timeout: float = download.DEFAULT_TIMEOUT_S,
) -> list[Path]:
    """Download the zip at ``url`` and extract ``member_prefix + name`` to ``dest_dir/name`` for each name.

    ``blob_ids`` maps some names to their expected git blob id; ``archive_md5`` (hex, optional) is
    checked against the whole archive. Raises ``DataError`` on any failure, leaving nothing behind.
    """
    dest = Path(dest_dir)
    names = list(names)
    blob_ids = dict(blob_ids or {})
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the data folder {dest}: {e.strerror or e}") from None
    archive = download._download(url, dest, names, timeout)
    try:
        if archive_md5:
            got = _md5(archive)
            if got != archive_md5.strip().lower():
                raise DataError(
                    f"checksum mismatch for the archive from {url}: md5 is {got}, expected {archive_md5}; "
                    "the download was deleted"
                )
        with download._open_zip(archive, url) as zf:
            infos = download._checked_members(zf, url)
            return _extract(zf, infos, url, dest, names, member_prefix, blob_ids)
    finally:
        archive.unlink(missing_ok=True)


def _extract(zf, infos, url: str, dest: Path, names: list[str], prefix: str, blob_ids: dict[str, str]) -> list[Path]:
    def check(name: str, tmp: Path, sha256: str) -> str | None:
        want = blob_ids.get(name)
        if not want:
            return None
        got = git_blob_sha1(tmp)
        return None if got == want.lower() else f"git blob id is {got}, expected {want}"

    return download.extract_members(zf, infos, url, dest, names, prefix, check)
