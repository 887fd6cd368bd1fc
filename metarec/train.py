"""``fit``: build data, model and learner from a validated config; train, test, record the run."""

from __future__ import annotations

import copy
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from metarec.config import data_config, to_object
from metarec.data.datamodule import VAL_SCENARIO, ColdStartDataModule
from metarec.errors import ConfigError, MetarecError
from metarec.learners import LEARNERS, LearnerContext, MetaLearner
from metarec.models import MODELS
from metarec.runs import (
    RUN_DIR_ENV, atomic_checkpoint_io, atomic_write_text, is_rank_zero, job_run_name, named_run_dir, new_run_dir,
    resume_target, wait_for_run_dir, write_final_metrics,
)

MONITOR = f"val/{VAL_SCENARIO}/mae"


def monitor_key(loss: str) -> str:
    """What checkpointing and early stopping watch: warm-validation MAE for ratings; the validation BCE
    (a proper scoring rule, unlike MAE on probabilities) for implicit feedback."""
    return MONITOR if loss == "mse" else f"val/{VAL_SCENARIO}/loss"


def _quiet_lightning() -> None:
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*TreeSpec.*")
    warnings.filterwarnings("ignore", message=".*`training_step` returned `None`.*")  # a skipped non-finite step
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")  # small data: epoch logs still come


def build(cfg: DictConfig) -> tuple[ColdStartDataModule, MetaLearner]:
    """Data module (already set up) and learner for ``cfg``."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = ColdStartDataModule(data_config(cfg.data), seed=cfg.seed)
    dm.setup()
    ds = dm.dataset
    model_entry = MODELS.get(cfg.model.name)
    model = model_entry.factory(ds.schema, to_object(cfg.model, model_entry.config_cls))
    if dm.loss == "bce":  # labels 0/1 with per_positive negatives per positive: start at the base rate
        rating_range, base = (0.0, 1.0), 1.0 / (1.0 + dm.cfg.negatives.per_positive)
        model.set_output_bias(math.log(base / (1.0 - base)))
    else:
        rating_range, base = tuple(ds.rating_range), dm.train_rating_mean()
        model.set_output_bias(base)
    ctx = LearnerContext(
        rating_range=rating_range,
        train_rating_mean=base,
        val_scenarios=[VAL_SCENARIO],
        test_scenarios=dm.scenarios,
        train_items=dm.split.train_ratings(),
        n_items=ds.n_items,
        label=learner_label(cfg),
        nonfinite=cfg.trainer.nonfinite,
        max_nonfinite=cfg.trainer.max_nonfinite,
        hint=_nonfinite_hint(cfg),
        ranking_ks=tuple(int(k) for k in cfg.data.ranking_ks),
        all_items=dm.collate.tables.items(torch.arange(ds.n_items)),
        new_item_mask=torch.as_tensor(dm.split.new_item_mask),
        relevance_threshold=float(cfg.data.relevance_threshold),
        implicit=bool(getattr(ds, "implicit", False)),
        loss=dm.loss,
    )
    entry = LEARNERS.get(cfg.learner.name)
    learner = entry.factory(model, ctx, to_object(cfg.learner, entry.config_cls))
    return dm, learner


def _nonfinite_hint(cfg: DictConfig) -> str:
    parts = []
    if "inner_lr" in cfg.learner:
        parts.append(f"lower learner.inner_lr (now {cfg.learner.inner_lr})")
    parts.append(f"lower learner.lr (now {cfg.learner.get('lr', '-')})")
    parts.append("set trainer.gradient_clip_val")
    if "inner_grad_clip" in cfg.learner:
        parts.append("set learner.inner_grad_clip")
    return ", ".join(parts[:-1]) + " or " + parts[-1]


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


def check_checkpoint(path: str | Path) -> None:
    """Refuse, with one clear line, a checkpoint that is missing, truncated or corrupt, or that carries
    anything but tensors and plain data (it is only ever read with ``torch.load(weights_only=True)``)."""
    import pickle

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MetarecError(f"checkpoint {path} does not exist") from None
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise MetarecError(
                f"checkpoint {path} holds objects other than tensors and plain data; refusing to load it "
                f"(loaded with weights_only=True): {first}"
            ) from None
        raise MetarecError(f"checkpoint {path} is truncated or corrupt: {first}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MetarecError(f"checkpoint {path} is truncated or corrupt: {first}") from None


def learner_label(cfg: DictConfig) -> str:
    """The learner's option name (e.g. ``fomaml``, ``melu5``), else its registry name."""
    choices = cfg.get("choices") or {}
    return str(choices.get("learner") or cfg.learner.name)


def _test(trainer: pl.Trainer, learner: MetaLearner, dm: ColdStartDataModule, ckpt, support_size) -> dict:
    """One test pass over every scenario; with ``support_size`` K, metrics are named ``test_kK/...``."""
    dm.test_support_size = support_size
    learner.test_stage = "test" if support_size is None else f"test_k{support_size}"
    if ckpt is not None:
        check_checkpoint(ckpt)
    try:
        results = trainer.test(learner, datamodule=dm, ckpt_path=ckpt, verbose=False, weights_only=True)
    finally:
        dm.test_support_size, learner.test_stage = None, "test"
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
    _quiet_lightning()
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
