"""Shared fixtures. Real-data tests find the original files through ``METAREC_DATA_DIR``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ML100K_REQUIRED = ("u.data", "u.user", "u.item")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def ml100k_root() -> Path:
    """The ``METAREC_DATA_DIR`` folder holding ``ml-100k/``; skipped when absent (a failure under CI)."""
    env = os.environ.get("METAREC_DATA_DIR", "")
    root = Path(env).expanduser() if env else None
    if root is None:
        problem = "METAREC_DATA_DIR is not set"
    else:
        missing = [f for f in ML100K_REQUIRED if not (root / "ml-100k" / f).is_file()]
        problem = f"{root / 'ml-100k'} lacks {', '.join(missing)}" if missing else ""
    if problem:
        msg = f"real MovieLens 100K data not available: {problem} (set METAREC_DATA_DIR to the folder holding ml-100k/)"
        if _in_ci():
            pytest.fail(f"{msg}; CI must run the real-data tests", pytrace=False)
        pytest.skip(msg)
    return root
