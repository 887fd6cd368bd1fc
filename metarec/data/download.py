"""Download a zip archive and extract chosen, checksum-verified members, safely and atomically.

Every file is first written to a hidden temporary file in the destination folder and only renamed
into place once it is complete (and, for extracted members, its checksum matches), so a failure at any
point leaves no partial file behind. Archives with absolute paths, ``..`` components, symlinks or
other special members are refused before anything is extracted.

:func:`ensure_files` is what the sources call: it downloads only when files are missing and the
source's ``download`` option allows it. :func:`fetch_archive` checks every file against a pinned
sha256; :func:`fetch_unpinned` is for archives whose files have no pinned sha256: each file is checked
against a known *git blob id* where one is known (``sha1(b"blob <size>\\0" + content)``, the id public
git repositories show for a file), and the archive against an MD5 if the caller passes one. Files with
neither are accepted as downloaded; the loaders then validate their contents line by line.

Hostile or broken servers: ``timeout`` bounds the whole download (a server that trickles bytes is cut
off at the deadline, not only one that stalls); a pinned file's known size (``sizes``) is checked
against the size the archive declares before anything is extracted, and extraction stops at it, so a
small archive cannot fill the disk before its checksum is checked (hashes are computed while
streaming). Temporary files are removed on any exception, ``KeyboardInterrupt`` and ``SystemExit``
included (a ``SIGTERM`` handler that raises is the caller's part).

Progress: while the archive downloads, an interactive terminal (stderr) shows a rich progress bar with
the bytes received, the rate and the time left (total from the server's ``Content-Length``; without one
the bar shows bytes and rate only). Logs, pipes and CI (stderr not a terminal) get nothing.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import stat
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from metarec.data.download_progress import download_progress
from metarec.data.paths import DATA_DIR_ENV
from metarec.errors import DataError

DEFAULT_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


def ensure_files(
    folder: Path,
    names: Sequence[str],
    label: str,
    *,
    download: bool,
    url: str,
    member_prefix: str,
    timeout: float = DEFAULT_TIMEOUT_S,
    sha256: Mapping[str, str] | None = None,
    blob_ids: Mapping[str, str] | None = None,
    archive_md5: str = "",
    sizes: Mapping[str, int] | None = None,
) -> None:
    """Make sure the files ``names`` exist in ``folder``, downloading the archive at ``url`` if allowed.

    Nothing happens when every file is there (existing files are not re-verified). Otherwise, without
    ``download``, a ``DataError`` names the missing files; with it, the archive is fetched: by
    :func:`fetch_archive` when ``sha256`` pins every wanted file (its keys are extracted), else by
    :func:`fetch_unpinned` (``names`` extracted, checked against ``blob_ids`` and ``archive_md5``).
    ``sizes``: the known byte size of some files (extraction refuses or stops at any other size).
    """
    missing = [name for name in names if not (folder / name).is_file()]
    if not missing:
        return
    if not download:
        raise DataError(
            f"{label} files missing in {folder}: {', '.join(missing)}; place them there, set "
            f"{DATA_DIR_ENV} to a folder that holds {folder.name}/, or allow download=true"
        )
    if sha256 is not None:
        fetch_archive(url, folder, sha256, member_prefix, timeout=timeout, sizes=sizes)
    else:
        fetch_unpinned(url, folder, names, member_prefix, blob_ids=blob_ids, archive_md5=archive_md5, timeout=timeout,
                       sizes=sizes)


def _download_into(url: str, dest_dir: str | os.PathLike[str], names: list[str], timeout: float) -> tuple[Path, Path]:
    """``(dest folder, downloaded archive)``: the folder created if needed, the archive fetched into it."""
    dest = Path(dest_dir)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the data folder {dest}: {e.strerror or e}") from None
    return dest, _download(url, dest, names, timeout)


def fetch_archive(
    url: str,
    dest_dir: str | os.PathLike[str],
    expected: Mapping[str, str],
    member_prefix: str,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    sizes: Mapping[str, int] | None = None,
) -> list[Path]:
    """Download the zip at ``url`` and extract ``member_prefix + name`` to ``dest_dir/name``.

    ``expected`` maps each wanted file name to its sha256 (hex), ``sizes`` (optional) to its size in
    bytes. Returns the written paths.
    Raises ``DataError`` on network failure, an unsafe or corrupt archive, a missing member or a
    checksum mismatch; nothing partial is left in ``dest_dir``.
    """
    dest, archive = _download_into(url, dest_dir, list(expected), timeout)
    try:
        with _open_zip(archive, url) as zf:
            infos = _checked_members(zf, url)
            return _extract_verified(zf, infos, url, dest, expected, member_prefix, sizes)
    finally:
        archive.unlink(missing_ok=True)


def fetch_unpinned(
    url: str,
    dest_dir: str | os.PathLike[str],
    names: Sequence[str],
    member_prefix: str,
    *,
    blob_ids: Mapping[str, str] | None = None,
    archive_md5: str = "",
    timeout: float = DEFAULT_TIMEOUT_S,
    sizes: Mapping[str, int] | None = None,
) -> list[Path]:
    """Download the zip at ``url`` and extract ``member_prefix + name`` to ``dest_dir/name`` for each name.

    ``blob_ids`` maps some names to their expected git blob id; ``archive_md5`` (hex, optional) is
    checked against the whole archive. Raises ``DataError`` on any failure, leaving nothing behind.
    """
    names = list(names)
    blob_ids = dict(blob_ids or {})
    dest, archive = _download_into(url, dest_dir, names, timeout)
    try:
        if archive_md5:
            got = _md5(archive)
            if got != archive_md5.strip().lower():
                raise DataError(
                    f"checksum mismatch for the archive from {url}: md5 is {got}, expected {archive_md5}; "
                    "the download was deleted"
                )
        with _open_zip(archive, url) as zf:
            infos = _checked_members(zf, url)

            def check(name: str, tmp: Path, sha256: str) -> str | None:
                want = blob_ids.get(name)
                if not want:
                    return None
                got = git_blob_sha1(tmp)
                return None if got == want.lower() else f"git blob id is {got}, expected {want}"

            return extract_members(zf, infos, url, dest, names, member_prefix, check, sizes)
    finally:
        archive.unlink(missing_ok=True)


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


def _download(url: str, dest: Path, names: list[str], timeout: float) -> Path:
    """Fetch ``url`` into a temp file in ``dest`` and atomically rename it; return the final path.
    ``timeout`` (seconds) bounds the whole download, not only each read."""
    tmp = _temp_path(dest, "download")
    deadline = time.monotonic() + timeout
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "metarec"})
        with open(tmp, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
            declared = resp.headers.get("Content-Length")
            total = int(declared) if declared is not None and declared.isdigit() else None
            with download_progress(url, total) as advance:
                _stream(resp, out, deadline, timeout, advance)
            size = out.tell()
        if declared is not None and declared.isdigit() and int(declared) != size:
            raise http.client.IncompleteRead(b"", int(declared) - size)
        final = dest / _archive_name(url, names)
        os.replace(tmp, final)
        return final
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        raise DataError(
            f"could not download {url} ({_reason(e)}); place {', '.join(names)} in {dest} "
            f"yourself, or set {DATA_DIR_ENV} to a data folder that already has them"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def _stream(resp, out, deadline: float, timeout: float, advance: Callable[[int], None] = lambda n: None) -> None:
    """Copy the response body to ``out`` until its end, or raise ``TimeoutError`` at ``deadline``
    (``time.monotonic()``): each read waits at most until the deadline, and returns what has arrived.
    ``advance(n)`` is told of every block of ``n`` bytes written."""
    sock = getattr(getattr(getattr(resp, "fp", None), "raw", None), "_sock", None)  # to shorten its timeout
    late = f"not complete within the timeout of {timeout:g} s"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(late)
        if sock is not None:
            try:
                sock.settimeout(left)
            except OSError:  # closed: the read below says so
                pass
        try:
            block = resp.read1(_CHUNK)
        except TimeoutError:  # the socket's timeout: at most the time left
            raise TimeoutError(late) from None
        if not block:
            return
        out.write(block)
        advance(len(block))


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return str(e.reason)
    if isinstance(e, http.client.IncompleteRead):
        return f"connection closed with {e.expected} bytes still to come"
    return str(e) or type(e).__name__


def _archive_name(url: str, names: list[str]) -> str:
    """A hidden name, so that a user's own file of the same name is never overwritten or deleted."""
    base = Path(urllib.parse.urlparse(url).path).name or "download.zip"
    return f".{base}.archive" if f".{base}" in names else f".{base}"


def _temp_path(dest: Path, label: str) -> Path:
    fd, name = tempfile.mkstemp(dir=dest, prefix=f".{label}.", suffix=".part")
    os.close(fd)
    return Path(name)


def _open_zip(archive: Path, url: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"the file downloaded from {url} is not a valid zip archive ({e})") from None


_DRIVE = re.compile(r"^[A-Za-z]:")


def _is_unsafe_name(name: str) -> bool:
    """True for absolute paths, drive letters, backslashes, NULs or ``..`` components."""
    if not name or name.startswith("/") or "\\" in name or "\x00" in name or _DRIVE.match(name):
        return True
    return ".." in name.split("/")


def _checked_members(zf: zipfile.ZipFile, url: str) -> dict[str, zipfile.ZipInfo]:
    """All members by name; refuse the archive if any member is unsafe."""
    infos: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        if _is_unsafe_name(info.filename):
            raise DataError(
                f"refusing the archive from {url}: member {info.filename!r} has an absolute path "
                "or '..' component"
            )
        file_type = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver recorded none
        if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise DataError(
                f"refusing the archive from {url}: member {info.filename!r} is a symlink or special file"
            )
        infos[info.filename] = info
    return infos


def _extract_verified(
    zf: zipfile.ZipFile,
    infos: dict[str, zipfile.ZipInfo],
    url: str,
    dest: Path,
    expected: Mapping[str, str],
    member_prefix: str,
    sizes: Mapping[str, int] | None = None,
) -> list[Path]:
    """Extract every expected member, checking each one's sha256, then rename them into place."""

    def check(name: str, tmp: Path, sha256: str) -> str | None:
        want = expected[name]
        return None if sha256 == want.lower() else f"sha256 is {sha256}, expected {want}"

    return extract_members(zf, infos, url, dest, list(expected), member_prefix, check, sizes)


def extract_members(
    zf: zipfile.ZipFile,
    infos: dict[str, zipfile.ZipInfo],
    url: str,
    dest: Path,
    names: Sequence[str],
    member_prefix: str,
    check: Callable[[str, Path, str], str | None],
    sizes: Mapping[str, int] | None = None,
) -> list[Path]:
    """Extract ``member_prefix + name`` for every name to a temp file in ``dest``; ``check(name, temp,
    sha256)`` returns a mismatch description or ``None``. Only when every file passed are they renamed
    into place; on any failure (or interruption) no file (temp or final) is left behind. A file of known
    size (``sizes``) whose member declares another size is refused before it is extracted, and never
    more than its size is written; any member larger than the free space of ``dest`` is refused."""
    temps: dict[str, Path] = {}
    try:
        for name in names:
            member = member_prefix + name
            info = infos.get(member)
            if info is None or info.is_dir():
                raise DataError(f"the archive from {url} has no file {member!r}")
            size = (sizes or {}).get(name)
            _check_declared_size(info, size, url, dest / name)
            temps[name] = tmp = _temp_path(dest, name)
            problem = check(name, tmp, _copy_member(zf, info, tmp, url, size))
            if problem:
                raise DataError(
                    f"checksum mismatch for {dest / name} from {url}: {problem}; the downloaded file was deleted"
                )
        finals = []
        for name, tmp in temps.items():
            os.replace(tmp, dest / name)
            finals.append(dest / name)
        return finals
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)


def _check_declared_size(info: zipfile.ZipInfo, size: int | None, url: str, target: Path) -> None:
    """Refuse a member whose declared size is not the known one, or does not fit on the disk."""
    if size is not None and info.file_size != size:
        raise DataError(f"checksum mismatch for {target} from {url}: the archive's {info.filename!r} is "
                        f"{info.file_size} bytes, expected {size}; nothing was extracted")
    try:
        free = shutil.disk_usage(target.parent).free
    except OSError:
        return
    if info.file_size > free:
        raise DataError(f"refusing the archive from {url}: member {info.filename!r} is {info.file_size} bytes, "
                        f"more than the {free} bytes free in {target.parent}")


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, url: str, size: int | None = None) -> str:
    """Stream one member into ``target``, hashing as it goes; return its sha256. With a known ``size``,
    stop (``DataError``) as soon as more than ``size`` bytes come out."""
    h = hashlib.sha256()
    limit = info.file_size if size is None else size
    written = 0
    try:
        with zf.open(info) as src, open(target, "wb") as out:
            for block in iter(lambda: src.read(_CHUNK), b""):
                written += len(block)
                if written > limit:
                    raise DataError(f"checksum mismatch for {target.parent / Path(info.filename).name} from {url}: "
                                    f"{info.filename!r} holds more than {limit} bytes; the downloaded file was deleted")
                h.update(block)
                out.write(block)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:
        raise DataError(f"the archive from {url} is corrupt: cannot read {info.filename!r} ({e})") from None
    except OSError as e:
        raise DataError(f"cannot write {target}: {e.strerror or e}") from None
    return h.hexdigest()

