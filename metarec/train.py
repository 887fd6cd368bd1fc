"""``fit``: build data, model and learner from a validated config; train, test, record the run."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from metarec.assembly import build, check_checkpoint, learner_label, quiet_lightning
from metarec.data.datamodule import VAL_SCENARIO, ColdStartDataModule
from metarec.errors import ConfigError, MetarecError
from metarec.learners import MetaLearner
from metarec.runs import (
    RUN_DIR_ENV, atomic_checkpoint_io, atomic_write_text, is_rank_zero, job_run_name, named_run_dir, new_run_dir,
    resume_target, wait_for_run_dir, write_final_metrics,
)

MONITOR = f"val/{VAL_SCENARIO}/mae"


def monitor_key(loss: str) -> str:
    """What checkpointing and early stopping watch: warm-validation MAE for ratings; the validation BCE
    (a proper scoring rule, unlike MAE on probabilities) for implicit feedback."""
    return MONITOR if loss == "mse" else f"val/{VAL_SCENARIO}/loss"


def _logger(cfg: DictConfig, run_dir: Path):
    if cfg.logger.name == "csv":
        version = ""  # logs/metrics.csv; a resumed run logs next to it (logs/resume-N/), losing nothing
        if cfg.run.resume:
            version = f"resume-{1 + sum(1 for _ in (run_dir / 'logs').glob('resume-*'))}"
        return pl.loggers.CSVLogger(save_dir=str(run_dir), name="logs", version=version)
    os.environ.setdefault("WANDB_MODE", cfg.logger.mode)
    os.environ.setdefault("WANDB_SILENT", "true")
    return pl.loggers.WandbLogger(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        save_dir=str(run_dir),
        group=cfg.run.experiment,
        name=run_dir.name,
        config=OmegaConf.to_container(cfg, resolve=True),
    )


def _trainer(cfg: DictConfig, run_dir: Path, trainable: bool, monitor: str = MONITOR) -> tuple[pl.Trainer, Any]:
    t = cfg.trainer
    callbacks: list[pl.Callback] = []
    checkpoint = None
    if trainable:
        checkpoint = pl.callbacks.ModelCheckpoint(
            dirpath=str(run_dir / "checkpoints"), monitor=monitor, mode="min", save_last=True,
            filename="best-{epoch}",
        )
        callbacks.append(checkpoint)
        if t.patience > 0:
            callbacks.append(pl.callbacks.EarlyStopping(monitor=monitor, mode="min", patience=t.patience))
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


def _test(trainer: pl.Trainer, learner: MetaLearner, dm: ColdStartDataModule, ckpt, support_size) -> dict:
    """One test pass over every scenario; with ``support_size`` K, metrics are named ``test_kK/...``."""
    if ckpt is not None:
        check_checkpoint(ckpt)
    results = trainer.test(learner, datamodule=dm.for_support_size(support_size), ckpt_path=ckpt, verbose=False,
                           weights_only=True)
    return {
        k: float(v)
        for block in results
        for k, v in block.items()
        if k.split("/")[0].startswith("test") and not k.endswith("/loss")
    }


def fit(cfg: DictConfig) -> Path:
    """Train and test one run; returns its folder (finished once ``metrics.json`` is written).
    Settings Lightning itself rejects (e.g. ``trainer.limit_val_batches`` too small for the data) become
    a one-line ``ConfigError``; the run folder is then left unfinished."""
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    try:
        return _fit(cfg)
    except MisconfigurationException as e:
        text = " ".join(str(e).split())
        raise ConfigError(f"Lightning rejected the trainer settings: {text}") from None


def _run_dir(cfg: DictConfig, label: str, rank_zero: bool) -> Path:
    """The new run's folder. Under DDP every process runs ``fit``: rank 0 makes the folder, the others
    use the same one — the one rank 0 announced (Lightning's launcher), or, for srun/torchrun jobs, the
    name they all derive from the job id — and never clear or create one themselves."""
    announced = os.environ.get(RUN_DIR_ENV)
    if announced and not rank_zero:
        return Path(announced)
    name = cfg.run.name or job_run_name(label, cfg.seed)
    if not rank_zero:
        if not name:
            raise MetarecError("a process other than rank 0 needs run.name (or SLURM/torchrun job ids) to find its run")
        return wait_for_run_dir(Path(cfg.run.root) / cfg.run.experiment / name)
    if name:
        return named_run_dir(cfg.run.root, cfg.run.experiment, name)
    return new_run_dir(cfg.run.root, cfg.run.experiment, f"{label}-s{cfg.seed}")


def _fit(cfg: DictConfig) -> Path:
    quiet_lightning()
    label = learner_label(cfg)
    rank_zero = is_rank_zero()
    resume_from = None
    if cfg.run.resume:
        run_dir, resume_from = resume_target(cfg, label)
        check_checkpoint(resume_from)
        cfg = copy.deepcopy(cfg)
        cfg.data.manifest = str(run_dir / "split_manifest.json")  # the run's own split
    else:
        run_dir = _run_dir(cfg, label, rank_zero)
    if rank_zero:
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        os.environ[RUN_DIR_ENV] = str(run_dir)  # the processes Lightning's DDP launcher starts use it too
    dm, learner = build(cfg)
    if resume_from is None and rank_zero:
        dm.save_manifest(run_dir / "split_manifest.json")
    monitor = monitor_key(learner.ctx.loss)
    trainer, checkpoint = _trainer(cfg, run_dir, learner.needs_training, monitor)
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
    if checkpoint is not None and checkpoint.best_model_score is not None:
        metrics[monitor] = float(checkpoint.best_model_score)
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
