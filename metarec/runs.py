"""Run folders: one per ``metarec fit``, holding everything needed to reproduce or evaluate the run.

Layout: ``config.yaml`` (resolved), ``split_manifest.json``, ``checkpoints/``, ``logs/`` and, written
last and atomically, ``metrics.json`` (+ ``metrics.csv``). A run is *finished* exactly when
``metrics.json`` exists.
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"


def new_run_dir(root: str | Path, experiment: str, label: str) -> Path:
    """Create a unique run folder ``root/experiment/<time>-<label>-<random>`` (never reuses one)."""
    base = Path(root) / experiment
    base.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    while True:
        path = base / f"{stamp}-{label}-{secrets.token_hex(3)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:  # pragma: no cover - 24 random bits collided
            continue


def named_run_dir(root: str | Path, experiment: str, name: str) -> Path:
    """The folder ``root/experiment/name``: created, or cleared if it holds an unfinished run.

    A finished run is never overwritten (``MetarecError``); a folder that is not a run folder is never
    cleared.
    """
    from metarec.errors import MetarecError

    if not name or "/" in name or name in (".", ".."):
        raise MetarecError(f"run.name {name!r} must be a plain folder name")
    path = Path(root) / experiment / name
    if path.exists():
        if is_finished(path):
            raise MetarecError(f"run {path} is already finished; choose another run.name or delete it")
        if any(path.iterdir()) and not (path / "config.yaml").is_file():
            raise MetarecError(f"{path} exists and is not a metarec run folder; choose another run.name")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_final_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Write ``metrics.csv`` then ``metrics.json`` (the finished marker), each atomically."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["metric", "value"])
    for k, v in sorted(record["metrics"].items()):
        w.writerow([k, v])
    atomic_write_text(run_dir / "metrics.csv", buf.getvalue())
    atomic_write_text(run_dir / METRICS_FILE, json.dumps(record, indent=2, sort_keys=True))


def is_finished(run_dir: str | Path) -> bool:
    return (Path(run_dir) / METRICS_FILE).is_file()


def finished_runs(root: str | Path) -> list[dict[str, Any]]:
    """The metrics records of every finished run under ``root`` (recursively)."""
    out = []
    for path in sorted(Path(root).rglob(METRICS_FILE)):
        record = json.loads(path.read_text())
        record["run_dir"] = str(path.parent)
        out.append(record)
    return out
