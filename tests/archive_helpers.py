"""Building zip archives in memory for the download tests."""

from __future__ import annotations

import io
import zipfile


def zip_bytes(members: dict[str, bytes], prefix: str = "ml-100k/") -> bytes:
    """A deflated zip holding ``prefix + name`` for every member."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(prefix + name, data)
    return buf.getvalue()
