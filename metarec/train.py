"""``fit``: build data, model and learner from a validated config; train, test, record the run."""

from __future__ import annotations

import copy
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from metarec.config import as_text
from metarec.assembly import build, check_checkpoint, learner_label, quiet_lightning
from metarec.data.datamodule import ColdStartDataModule
from metarec.errors import ConfigError, MetarecError
from metarec.exits import Interrupted, received
from metarec.learners import MetaLearner
from metarec.monitor import Monitor, monitor_for
from metarec.codebook import write_codebook
from metarec.run_header import header_rows, print_run_header
from metarec.runs import (
    RUN_DIR_ENV, WRITE_ERRNOS, RunLock, atomic_checkpoint_io, atomic_write_text, check_run_location,
    claim_named_run, is_finished, is_rank_zero, is_resumable, job_run_name, new_run_dir, open_named_run,
    resume_target, wait_for_run_dir, write_error, write_final_metrics,
)

def run_monitor(cfg: DictConfig) -> Monitor:
    """What checkpointing, early stopping and tuning watch for this config (``trainer.monitor``; see
    :mod:`metarec.monitor`): the validation users' MAE, their loss under binary labels, or a full-ranking
    metric."""
    from metarec.config import negative_config

    neg = negative_config(cfg.data)
    return monitor_for(cfg.trainer.monitor, neg.loss if neg.enabled else "mse", cfg.data.ranking_ks)


def _logger(cfg: DictConfig, run_dir: Path):
    if cfg.logger.name == "csv":
        version = ""  # logs/metrics.csv; a resumed run logs next to it (logs/resume-N/), losing nothing
        if cfg.run.resume:
            version = f"resume-{1 + sum(1 for _ in (run_dir / 'logs').glob('resume-*'))}"
        return pl.loggers.CSVLogger(save_dir=str(run_dir), name="logs", version=version)
    from metarec.wandb_logging import lightning_logger  # group, job_type, tags, best-value summaries, artifacts

    return lightning_logger(cfg, run_dir, learner_label(cfg))


def make_trainer(cfg: DictConfig, run_dir: Path, trainable: bool, monitor: Monitor | None = None) -> tuple[pl.Trainer, Any]:
    t = cfg.trainer
    monitor = monitor or run_monitor(cfg)
    callbacks: list[pl.Callback] = []
    checkpoint = None
    if trainable:
        checkpoint = pl.callbacks.ModelCheckpoint(
            dirpath=str(run_dir / "checkpoints"), monitor=monitor.key, mode=monitor.mode, save_last=True,
            filename="best-{epoch}",
        )
        callbacks.append(checkpoint)
        if t.patience > 0:
            callbacks.append(pl.callbacks.EarlyStopping(monitor=monitor.key, mode=monitor.mode, patience=t.patience))
    limits = {k: t[k] for k in ("limit_train_batches", "limit_val_batches", "limit_test_batches") if t[k] is not None}
    trainer = pl.Trainer(
        default_root_dir=str(run_dir),
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        use_distributed_sampler=False,  # the data module shards meta-batches and evaluation tasks itself
        precision=t.precision,
        gradient_clip_val=t.gradient_clip_val,
        deterministic=t.deterministic,
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.enable_progress_bar,
        enable_model_summary=False,
        fast_dev_run=t.fast_dev_run,
        num_sanity_val_steps=0,
        inference_mode=False,  # adaptation at val/test time needs autograd
        plugins=[atomic_checkpoint_io()],  # a checkpoint on disk is always whole
        logger=_logger(cfg, run_dir),
        callbacks=callbacks,
        **limits,
    )
    return trainer, checkpoint


def _test(trainer: pl.Trainer, learner: MetaLearner, dm: ColdStartDataModule, ckpt, support_size,
          users: str = "test") -> dict:
    """One test pass over every scenario; with ``support_size`` K, metrics are named ``test_kK/...``
    (``users="val"``: the validation users' supports cut to K, ``val_kK/user_cold/...``)."""
    if ckpt is not None:
        check_checkpoint(ckpt)
    view = dm.for_support_size(support_size, users)
    results = trainer.test(learner, datamodule=view, ckpt_path=ckpt, verbose=False, weights_only=True)
    return {
        k: float(v)
        for block in results
        for k, v in block.items()
        if k.split("/")[0] == view.test_stage and not k.endswith("/loss")
    }


@dataclass
class _RunFolder:
    """The folder a ``fit`` call writes: its path once known, the lock this process holds on it, and
    whether this call made (or cleared) it."""

    path: Path | None = None
    lock: RunLock | None = None
    created: bool = False

    def discard(self) -> None:
        """Remove a folder this call made that never became a usable run."""
        if self.created and self.path is not None and self.path.is_dir():
            shutil.rmtree(self.path, ignore_errors=True)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def fit(cfg: DictConfig) -> Path:
    """Train and test one run; returns its folder (finished once ``metrics.json`` is written).

    Everything is validated and the data, model and learner are built before the run folder is made, so
    a config or data error creates nothing; settings Lightning itself rejects (e.g.
    ``trainer.limit_val_batches`` too small for the data) become a one-line ``ConfigError`` and the folder
    made for the run is removed again. The process holds the run folder's lock until it returns. A full
    disk is a one-line ``MetarecError`` naming the file; SIGTERM / SIGINT (see ``metarec.exits``)
    leave an ``Interrupted`` saying which run stopped and whether ``run.resume`` can continue it."""
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    run = _RunFolder()
    try:
        return _fit(cfg, run)
    except Interrupted as e:
        raise _interrupted(e, run)
    except (ConfigError, MisconfigurationException) as e:
        if received() is not None:
            raise _interrupted(Interrupted(received()), run) from e
        if not (run.path and any((run.path / "checkpoints").glob("*.ckpt"))):
            run.discard()  # nothing of value in it yet
        if isinstance(e, ConfigError):
            raise
        text = " ".join(str(e).split())
        raise ConfigError(f"Lightning rejected the trainer settings: {text}") from None
    except OSError as e:
        if received() is not None:
            raise _interrupted(Interrupted(received()), run) from e
        if e.errno not in WRITE_ERRNOS:
            raise
        if e.filename:  # e.g. a folder that cannot be made
            raise MetarecError(f"{e.filename}: {e.strerror}") from None
        raise write_error(e, f"to run folder {run.path or cfg.run.root}") from None  # a write(): no file name
    except BaseException as e:
        # an error that a signal caused (e.g. a DataLoader worker stopped along with this process, or
        # Lightning turning an interrupt into SystemExit) is reported as that signal
        if received() is not None and not isinstance(e, MetarecError):
            raise _interrupted(Interrupted(received()), run) from e
        if run.path is not None and not (run.path / "config.yaml").is_file():
            run.discard()
        raise
    finally:
        run.release()


def _interrupted(e: Interrupted, run: _RunFolder) -> Interrupted:
    if run.path is not None and not (run.path / "config.yaml").is_file():
        run.discard()  # stopped before it became a run
    elif run.path is not None and e.run_dir is None:
        e.run_dir, e.resumable = run.path, is_resumable(run.path)
    return e


def _claim_run(cfg: DictConfig, label: str, rank_zero: bool) -> tuple[Path | None, RunLock | None]:
    """Rank 0's checks of a named run's folder before anything is built (nothing is created): a finished
    run, a folder that is not a run and a run another process writes are refused; the lock of an existing
    folder is taken now and kept."""
    name = cfg.run.name or job_run_name(label, cfg.seed)
    if not rank_zero or not name:
        return None, None
    return claim_named_run(cfg.run.root, cfg.run.experiment, name)


def _run_dir(cfg: DictConfig, label: str, rank_zero: bool,
             claimed: tuple[Path | None, RunLock | None] = (None, None)) -> tuple[Path, RunLock | None]:
    """The new run's folder and rank 0's lock on it. Under DDP every process runs ``fit``: rank 0 makes
    the folder, the others use the same one — the one rank 0 announced (Lightning's launcher), or, for
    srun/torchrun jobs, the name they all derive from the job id — and never clear, create or lock one."""
    announced = os.environ.get(RUN_DIR_ENV)
    if announced and not rank_zero:
        return Path(announced), None
    name = cfg.run.name or job_run_name(label, cfg.seed)
    if not rank_zero:
        if not name:
            raise MetarecError("a process other than rank 0 needs run.name (or SLURM/torchrun job ids) to find its run")
        return wait_for_run_dir(Path(cfg.run.root) / cfg.run.experiment / name), None
    if name:
        path, lock = claimed if claimed[0] is not None else (Path(cfg.run.root) / cfg.run.experiment / name, None)
        return path, open_named_run(path, lock)
    return new_run_dir(cfg.run.root, cfg.run.experiment, f"{label}-s{cfg.seed}")


def _fit(cfg: DictConfig, run: _RunFolder) -> Path:
    quiet_lightning()
    label = learner_label(cfg)
    rank_zero = is_rank_zero()
    check_run_location(cfg.run.experiment, cfg.run.name)
    resume_from = None
    claimed: tuple[Path | None, RunLock | None] = (None, None)
    if cfg.run.resume:
        run.path, resume_from = resume_target(cfg, label)
        if rank_zero:
            run.lock = RunLock.acquire(run.path, busy="wait for it to end (or stop it) before resuming")
            if is_finished(run.path):  # it finished while this call was checking it
                raise MetarecError(f"run.resume: run {run.path} is already finished; nothing to resume")
        check_checkpoint(resume_from)
        cfg = copy.deepcopy(cfg)
        cfg.data.manifest = as_text(str(run.path / "split_manifest.json"))  # the run's own split
    else:
        claimed = _claim_run(cfg, label, rank_zero)
        run.lock = claimed[1]
    dm, learner = build(cfg)  # every config and data error is found here, before a run folder exists
    if resume_from is None:
        run.path, run.lock = _run_dir(cfg, label, rank_zero, claimed)
        run.created = rank_zero
    run_dir = run.path
    if rank_zero:
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        os.environ[RUN_DIR_ENV] = str(run_dir)  # the processes Lightning's DDP launcher starts use it too
    if resume_from is None and rank_zero:
        dm.save_manifest(run_dir / "split_manifest.json")
        write_codebook(run_dir, dm.dataset)  # raw feature value -> code, for `recommend --user-feature`
    monitor = run_monitor(cfg)
    trainer, checkpoint = make_trainer(cfg, run_dir, learner.needs_training, monitor)
    if rank_zero:  # run folder, data and split counts, model size, device (metarec.run_header)
        print_run_header(header_rows(cfg, run_dir, dm, learner, trainer, resume_from))
    epochs = 0
    if learner.needs_training:
        # resuming restores model, optimiser, epoch and loop counters, callbacks (best checkpoint, early
        # stopping) and the RNG states; each epoch's episodes depend only on (seed, epoch)
        trainer.fit(learner, datamodule=dm, ckpt_path=resume_from, weights_only=True)
        epochs = trainer.current_epoch
        if trainer.interrupted:
            raise KeyboardInterrupt
    ckpt = None
    if checkpoint is not None and checkpoint.best_model_path and not cfg.trainer.fast_dev_run:
        ckpt = checkpoint.best_model_path
    metrics = _test(trainer, learner, dm, ckpt, None)
    for k in cfg.data.eval_support_sizes:
        metrics.update(_test(trainer, learner, dm, ckpt, int(k)))
    for k in cfg.data.val_support_sizes:  # validation users at small supports: for choosing settings there
        metrics.update(_test(trainer, learner, dm, ckpt, int(k), users="val"))
    if checkpoint is not None and checkpoint.best_model_score is not None:
        metrics[monitor.key] = float(checkpoint.best_model_score)
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    record = {
        "learner": label,
        "algorithm": cfg.learner.name,
        "model": cfg.model.name,
        "data": cfg.data.source,
        "experiment": cfg.run.experiment,
        "seed": int(cfg.seed),
        "split_hash": dm.split.manifest["content_hash"],
        "split_stats": dm.split.manifest["stats"],
        "epochs": int(epochs),
        "best_checkpoint": os.path.relpath(ckpt, run_dir) if ckpt else None,
        "non_finite_metrics": bad,
        "metrics": metrics,
    }
    if rank_zero:
        write_final_metrics(run_dir, record)
    if cfg.logger.name == "wandb":  # end the W&B run, else the next fit() in this process logs into it
        import wandb

        wandb.finish()
    return run_dir
