"""Assembly: data module, base model and learner built from a validated config, the one way training,
serving (``Recommender``) and benchmarks put the pieces together; and the checkpoint check they share."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from metarec.config import data_config, to_object
from metarec.data.datamodule import VAL_SCENARIO, ColdStartDataModule
from metarec.errors import ConfigError, MetarecError
from metarec.learners import LEARNERS, LearnerContext, MetaLearner
from metarec.learners.base import rating_values
from metarec.models import MODELS
from metarec.monitor import monitor_for


def quiet_lightning() -> None:
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*TreeSpec.*")
    warnings.filterwarnings("ignore", message=".*`training_step` returned `None`.*")  # a skipped non-finite step
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")  # small data: epoch logs still come
    # a resumed run saves into its own checkpoints/ folder, which is meant to hold the earlier checkpoints
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")


def build(cfg: DictConfig, restoring: bool = False) -> tuple[ColdStartDataModule, MetaLearner]:
    """Data module (already set up) and learner for ``cfg``; ``restoring``: the caller loads a checkpoint
    into the learner next (``LearnerContext.restoring``)."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = ColdStartDataModule(data_config(cfg.data), seed=cfg.seed)
    dm.setup()
    ds = dm.dataset
    model_entry = MODELS.get(cfg.model.name)
    model = model_entry.factory(ds.schema, to_object(cfg.model, model_entry.config_cls))
    if dm.cfg.negatives.enabled:  # labels 0/1 with per_positive negatives per positive: start at the base rate
        rating_range, base = (0.0, 1.0), 1.0 / (1.0 + dm.cfg.negatives.per_positive)
        model.set_output_bias(math.log(base / (1.0 - base)))
    else:
        rating_range, base = tuple(ds.rating_range), dm.train_rating_mean()
        model.set_output_bias(base)
    monitor = monitor_for(cfg.trainer.monitor, dm.loss, cfg.data.ranking_ks)
    train_items = dm.split.train_ratings()
    grid = None
    if cfg.data.rating_grid:
        if dm.cfg.negatives.enabled:
            raise ConfigError("data.rating_grid=true needs explicit ratings; these data are 0/1 labels "
                              f"(data.negatives, loss {dm.loss}). Set data.rating_grid=false")
        grid = rating_values(train_items[1])
    ctx = LearnerContext(
        rating_range=rating_range,
        train_rating_mean=base,
        val_scenarios=[VAL_SCENARIO],
        test_scenarios=dm.scenarios,
        train_items=train_items,
        train_pool=dm.split.train_pool,
        validation_batches=dm.val_dataloader,
        n_items=ds.n_items,
        label=learner_label(cfg),
        nonfinite=cfg.trainer.nonfinite,
        max_nonfinite=cfg.trainer.max_nonfinite,
        hint=_nonfinite_hint(cfg),
        ranking_ks=tuple(int(k) for k in cfg.data.ranking_ks),
        all_items=dm.collate.tables.items(torch.arange(ds.n_items)),
        new_item_mask=torch.as_tensor(dm.split.new_item_mask),
        val_ranking=monitor.ranking,
        relevance_threshold=float(cfg.data.relevance_threshold),
        interactions_only=bool(getattr(ds, "implicit", False)),
        loss=dm.loss,
        rating_grid=grid,
        restoring=restoring,
    )
    entry = LEARNERS.get(cfg.learner.name)
    learner = entry.factory(model, ctx, to_object(cfg.learner, entry.config_cls))
    if monitor.ranking and learner.needs_training and not learner.ranks_items:
        raise ConfigError(f"trainer.monitor={cfg.trainer.monitor}: learner {cfg.learner.name} does not rank items; "
                          "monitor auto, mae or loss")
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


def learner_label(cfg: DictConfig) -> str:
    """The learner's option name (e.g. ``fomaml``, ``melu5``), else its registry name."""
    choices = cfg.get("choices") or {}
    return str(choices.get("learner") or cfg.learner.name)


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
