"""Import learn2learn quietly: it imports gym, whose import prints an unrelated notice to stderr."""

from __future__ import annotations

import contextlib
import io
import warnings

with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
    warnings.simplefilter("ignore")
    import learn2learn as l2l  # noqa: E402

__all__ = ["l2l"]
