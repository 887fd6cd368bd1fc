"""Run folders: one per ``metarec fit``, holding everything needed to reproduce or evaluate the run.

Layout: ``config.yaml`` (resolved), ``split_manifest.json``, ``checkpoints/``, ``logs/`` and, written
last and atomically, ``metrics.json`` (+ ``metrics.csv``). A run is *finished* exactly when
``metrics.json`` exists.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import secrets
import shutil
import socket
import time
from pathlib import Path, PurePath
from typing import Any

from metarec.errors import ConfigError, MetarecError

METRICS_FILE = "metrics.json"
LOCK_FILE = ".lock"  # held (flock) by the one process writing the run; the OS drops it when that process dies
CHECKPOINT = Path("checkpoints") / "last.ckpt"
# a write that fails for one of these reasons is the user's to fix (free space, quota, permissions)
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})


def check_run_location(experiment: str, name: str | None) -> None:
    """Refuse a ``run.experiment`` (a relative folder, e.g. ``ablation/lr``) or ``run.name`` (a plain folder
    name) that would put the run folder outside ``run.root``."""
    parts = PurePath(experiment).parts
    if not parts or PurePath(experiment).is_absolute() or "\\" in experiment or {".", ".."} & set(parts):
        raise ConfigError(f"run.experiment {experiment!r} must be a relative folder inside run.root "
                          "(no absolute path, no '.' or '..')")
    if name is not None and (not name or "/" in name or "\\" in name or name in (".", "..")):
        raise ConfigError(f"run.name {name!r} must be a plain folder name")


# ------------------------------------------------------------------ one writer per run folder
class RunLock:
    """An exclusive lock on a run folder (``fcntl.flock`` on its ``.lock`` file), held while one process
    writes the run. The OS releases it when the process ends in any way (even SIGKILL), so a lock left
    by a dead process never blocks; the file keeps the last holder's pid and host for the message."""

    held = 0  # locks this process holds (metarec.exits: nothing to clean up while none is held)

    def __init__(self, run_dir: Path, fd: int) -> None:
        self.run_dir, self._fd = run_dir, fd
        RunLock.held += 1

    @classmethod
    def acquire(cls, run_dir: str | Path, busy: str = "choose another run.name") -> RunLock:
        """Lock ``run_dir`` (which must exist) or raise ``MetarecError`` naming the holder and ``busy``."""
        import fcntl

        run_dir = Path(run_dir)
        path = run_dir / LOCK_FILE
        for _ in range(10):  # the folder may be replaced between open and flock: lock the file now at path
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").split()
                os.close(fd)
                who = f" (pid {holder[0]} on {holder[1]})" if len(holder) == 2 else ""
                raise MetarecError(f"run {run_dir} is in use by another metarec process{who}; {busy}") from None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                try:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
                except OSError:  # the holder's name is only for messages (e.g. a full disk)
                    pass
                return cls(run_dir, fd)
            os.close(fd)
            run_dir.mkdir(parents=True, exist_ok=True)
        raise MetarecError(f"run {run_dir} keeps being replaced by another process; {busy}")  # pragma: no cover

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
            RunLock.held -= 1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def new_run_dir(root: str | Path, experiment: str, label: str) -> tuple[Path, RunLock]:
    """Create and lock a unique run folder ``root/experiment/<time>-<label>-<random>`` (never reuses one)."""
    base = Path(root) / experiment
    base.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    while True:
        path = base / f"{stamp}-{label}-{secrets.token_hex(3)}"
        try:
            path.mkdir()
            return path, RunLock.acquire(path)
        except FileExistsError:  # pragma: no cover - 24 random bits collided
            continue


def _check_named(path: Path) -> None:
    if is_finished(path):
        raise MetarecError(f"run {path} is already finished; choose another run.name or delete it")
    if any(p.name != LOCK_FILE for p in path.iterdir()) and not (path / "config.yaml").is_file():
        raise MetarecError(f"{path} exists and is not a metarec run folder; choose another run.name")


def claim_named_run(root: str | Path, experiment: str, name: str) -> tuple[Path, RunLock | None]:
    """Check the folder ``root/experiment/name`` before anything is built: refuse a finished run, a folder
    that is not a run, or a run another process is writing (its lock, taken here and kept). Changes nothing;
    ``open_named_run`` then creates or clears it."""
    check_run_location(experiment, name)
    path = Path(root) / experiment / name
    if not path.is_dir():
        return path, None
    lock = RunLock.acquire(path)
    try:
        _check_named(path)
    except BaseException:
        lock.release()
        raise
    return path, lock


def open_named_run(path: Path, lock: RunLock | None = None) -> RunLock:
    """Create ``path``, or clear the unfinished run in it; returns its lock (``lock`` if already held).
    A finished run is never overwritten and a folder that is not a run folder is never cleared."""
    if lock is None:
        path.mkdir(parents=True, exist_ok=True)
        lock = RunLock.acquire(path)
    try:
        _check_named(path)
        for entry in path.iterdir():
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    except BaseException:
        lock.release()
        raise
    return lock


def named_run_dir(root: str | Path, experiment: str, name: str) -> tuple[Path, RunLock]:
    """The folder ``root/experiment/name``, locked: created, or cleared if it holds an unfinished run."""
    path, lock = claim_named_run(root, experiment, name)
    return path, open_named_run(path, lock)


def write_error(e: OSError, what: str | Path) -> MetarecError | None:
    """A one-line ``MetarecError`` naming ``what`` for a write that failed for the user's reasons (disk
    full, quota, permissions); ``None`` for other errors."""
    if e.errno not in WRITE_ERRNOS:
        return None
    return MetarecError(f"cannot write {what}: {e.strerror or os.strerror(e.errno)}")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path``, ``fsync`` it, then rename it into place: ``path``
    holds the old or the new text, never a part. A full disk (or the like) is a one-line ``MetarecError``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        err = write_error(e, path)
        if err is None:
            raise
        raise err from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def is_resumable(run_dir: str | Path) -> bool:
    """An unfinished run with a checkpoint to continue from (``run.resume``)."""
    run_dir = Path(run_dir)
    return (run_dir / "config.yaml").is_file() and (run_dir / CHECKPOINT).is_file() and not is_finished(run_dir)


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

    from metarec.config import validate_saved
    from metarec.errors import MetarecError

    try:
        old = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError) as e:
        raise MetarecError(f"run {run_dir} has no readable config.yaml ({e})") from None
    try:
        saved = OmegaConf.create(old if isinstance(old, dict) else {})
        old = OmegaConf.to_container(validate_saved(saved), resolve=True)
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
    ``last`` (the folder ``run.name`` if set, else the newest resumable ``<label>-s<seed>`` run of
    ``run.experiment``: unfinished, with a checkpoint). The run must be unfinished and its saved config
    must match ``cfg`` except for settings that do not change results and the training budget
    (``trainer.max_epochs`` / ``max_steps`` / ``patience``)."""
    want = str(cfg.run.resume)
    check_run_location(cfg.run.experiment, cfg.run.name)
    base = Path(cfg.run.root) / cfg.run.experiment
    if want == "last":
        if cfg.run.name:
            run = base / cfg.run.name
        else:
            pattern = f"*-{label}-s{cfg.seed}-*"
            candidates = [p for p in base.glob(pattern) if is_resumable(p)]
            if not candidates:
                raise MetarecError(f"run.resume=last: no unfinished {label} run with seed {cfg.seed} and a "
                                   f"checkpoint in {base}")
            run = max(candidates, key=lambda p: p.stat().st_mtime)
        ckpt = run / CHECKPOINT
    else:
        path = Path(want)
        if path.is_file():
            run, ckpt = path.parent.parent, path
        else:
            run, ckpt = path, path / CHECKPOINT
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
            except OSError as e:
                err = write_error(e, path)
                if err is None:
                    raise
                raise err from None
            finally:
                tmp.unlink(missing_ok=True)

    return AtomicCheckpointIO()


def finished_runs(root: str | Path) -> list[dict[str, Any]]:
    """The metrics records of every finished run under ``root`` (recursively)."""
    out = []
    from metarec.errors import MetarecError

    for path in sorted(Path(root).rglob(METRICS_FILE)):
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise MetarecError(f"{path}: not a readable metrics file ({str(e).splitlines()[0]})") from None
        if not isinstance(record, dict):
            raise MetarecError(f"{path}: not a metrics record (a JSON object)")
        record["run_dir"] = str(path.parent)
        out.append(record)
    return out
