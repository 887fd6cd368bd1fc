"""Where dataset files live on disk."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "METAREC_DATA_DIR"


def resolve_data_root(root: str | os.PathLike[str] | None) -> Path:
    """The data root: ``root`` if given, else ``$METAREC_DATA_DIR``, else ``~/.cache/metarec``."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get(DATA_DIR_ENV, "")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/metarec").expanduser()
