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


# ------------------------------------------------------------------ several processes, one run
RUN_DIR_ENV = "METAREC_RUN_DIR"  # set by rank 0 for the processes Lightning launches after it


def is_rank_zero() -> bool:
    """Whether this process is the first of its job (or the only one): torchrun sets ``RANK``, srun
    ``SLURM_PROCID``, Lightning's own DDP launcher ``LOCAL_RANK``/``NODE_RANK`` for the processes it adds."""
    return all(int(os.environ.get(v, "0") or 0) == 0 for v in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"))


def job_run_name(label: str, seed: int) -> str | None:
    """A run name every process of an externally launched multi-process job (srun, torchrun) agrees on;
    ``None`` for a single process (which gets a fresh unique folder as usual)."""
    for var, size in (("SLURM_JOB_ID", "SLURM_NTASKS"), ("TORCHELASTIC_RUN_ID", "WORLD_SIZE")):
        job = os.environ.get(var)
        if job and job != "none" and int(os.environ.get(size, "1") or 1) > 1:
            array = os.environ.get("SLURM_ARRAY_TASK_ID")
            return f"{label}-s{seed}-job{job}" + (f"-{array}" if array and var == "SLURM_JOB_ID" else "")
    return None


def wait_for_run_dir(path: Path, timeout_s: float = 600.0) -> Path:
    """Other ranks: wait until rank 0 has prepared ``path`` (its ``config.yaml`` exists)."""
    from metarec.errors import MetarecError

    deadline = time.monotonic() + timeout_s
    while not (path / "config.yaml").is_file():
        if time.monotonic() > deadline:
            raise MetarecError(f"rank 0 did not prepare the run folder {path} within {timeout_s:.0f} s")
        time.sleep(0.2)
    return path


# ------------------------------------------------------------------ comparing with a saved config
# Settings that do not change a run's results.
RESULT_NEUTRAL = (
    "choices", "run", "logger", "data.manifest", "data.root", "data.num_workers",
    "trainer.enable_progress_bar", "trainer.log_every_n_steps", "trainer.accelerator", "trainer.devices",
    "trainer.num_nodes", "trainer.strategy",
)


# Optional features: the setting that switches each on -> the prefix of its other options, which do not
# change results while it is off.
SWITCHES = {"data.text.enabled": "data.text.", "data.negatives.per_positive": "data.negatives."}


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_difference(run_dir: Path, cfg, ignored: tuple[str, ...] = RESULT_NEUTRAL) -> tuple[str, Any, Any] | None:
    """The first setting (``key``, value in ``run_dir/config.yaml``, value in ``cfg``) that differs,
    ignoring the ``ignored`` keys (and everything under them); ``None`` if none does. The saved config
    goes through today's schema first, so options added since the run was made take their defaults.
    A missing, unreadable or no longer valid config.yaml is a ``MetarecError``."""
    import yaml
    from omegaconf import OmegaConf

    from metarec.config import validate
    from metarec.errors import MetarecError

    try:
        old = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError) as e:
        raise MetarecError(f"run {run_dir} has no readable config.yaml ({e})") from None
    try:
        old = OmegaConf.to_container(validate(OmegaConf.create(old if isinstance(old, dict) else {})), resolve=True)
    except MetarecError as e:
        raise MetarecError(f"run {run_dir} has a config.yaml this version cannot read ({e})") from None

    def comparable(container: dict) -> dict[str, Any]:
        flat = _flatten(container)
        off = [prefix for switch, prefix in SWITCHES.items() if not flat.get(switch)]
        return {
            k: v for k, v in flat.items()
            if not any(k == p or k.startswith(p + ".") for p in ignored)
            and (k in SWITCHES or not any(k.startswith(p) for p in off))
        }

    old_flat = comparable(old)
    new_flat = comparable(OmegaConf.to_container(cfg, resolve=True))
    # the source first, then the feature switches (a switched feature's own options follow from them)
    for key in sorted(set(old_flat) | set(new_flat), key=lambda k: (k != "data.source", k not in SWITCHES, k)):
        a, b = old_flat.get(key, "<unset>"), new_flat.get(key, "<unset>")
        if a != b:
            return key, a, b
    return None


# ------------------------------------------------------------------ resuming
def resume_target(cfg, label: str) -> tuple[Path, Path]:
    """``(run folder, checkpoint)`` for ``run.resume``: a run folder, a checkpoint file inside one, or
    ``last`` (the folder ``run.name`` if set, else the newest unfinished ``<label>-s<seed>`` run of
    ``run.experiment``). The run must be unfinished and its saved config must match ``cfg`` except for
    settings that do not change results and the training budget (``trainer.max_epochs`` / ``max_steps``
    / ``patience``)."""
    from metarec.errors import ConfigError, MetarecError

    want = str(cfg.run.resume)
    base = Path(cfg.run.root) / cfg.run.experiment
    if want == "last":
        if cfg.run.name:
            run = base / cfg.run.name
        else:
            pattern = f"*-{label}-s{cfg.seed}-*"
            candidates = [p for p in base.glob(pattern) if (p / "config.yaml").is_file() and not is_finished(p)]
            if not candidates:
                raise MetarecError(f"run.resume=last: no unfinished {label} run with seed {cfg.seed} in {base}")
            run = max(candidates, key=lambda p: p.stat().st_mtime)
        ckpt = run / "checkpoints" / "last.ckpt"
    else:
        path = Path(want)
        if path.is_file():
            run, ckpt = path.parent.parent, path
        else:
            run, ckpt = path, path / "checkpoints" / "last.ckpt"
    if not (run / "config.yaml").is_file():
        raise MetarecError(f"run.resume: {run} is not a metarec run folder (no config.yaml)")
    if is_finished(run):
        raise MetarecError(f"run.resume: run {run} is already finished; nothing to resume")
    if not ckpt.is_file():
        raise MetarecError(f"run.resume: {ckpt} does not exist (the run stopped before its first checkpoint); "
                           "start it again without run.resume")
    budget = ("trainer.max_epochs", "trainer.max_steps", "trainer.patience")
    diff = config_difference(run, cfg, RESULT_NEUTRAL + budget)
    if diff:
        key, a, b = diff
        raise ConfigError(f"run.resume: run {run} was made with {key}={a!r}, this call asks for {b!r}; "
                          "resume with the run's own settings")
    return run, ckpt


def atomic_checkpoint_io():
    """Lightning checkpoint I/O that writes to a temporary file and renames it into place, so a
    checkpoint on disk is always whole, even if the process is killed while saving."""
    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
            try:
                super().save_checkpoint(checkpoint, tmp, storage_options)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)

    return AtomicCheckpointIO()


def finished_runs(root: str | Path) -> list[dict[str, Any]]:
    """The metrics records of every finished run under ``root`` (recursively)."""
    out = []
    for path in sorted(Path(root).rglob(METRICS_FILE)):
        record = json.loads(path.read_text())
        record["run_dir"] = str(path.parent)
        out.append(record)
    return out
