"""Running the ``metarec`` CLI in a subprocess, the way a user does, for the end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "metarec" / "configs"
TIMEOUT_S = 300


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """This process's environment without W&B / metarec settings, pointed at ``data_dir``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "METAREC_"))}
    env.update(
        METAREC_CONFIG_DIR=str(CONFIGS),
        METAREC_DATA_DIR=str(data_dir),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])),
        PYTHONUNBUFFERED="1",
        # one thread per process: the models are tiny, and several OpenMP thread pools fighting over
        # two cores (runs side by side, other test processes) can slow a run down tenfold
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``python -m metarec.cli ARGS`` in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "metarec.cli", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
    )


def wandb_offline_env(home: Path) -> dict[str, str]:
    """W&B settings for an offline run with every W&B folder under ``home`` (no account, no network)."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(home),
        "WANDB_CONFIG_DIR": str(home / "config"),
        "WANDB_CACHE_DIR": str(home / "cache"),
        "WANDB_DATA_DIR": str(home / "data"),
        "WANDB_SILENT": "true",
    }
