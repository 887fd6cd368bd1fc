"""The shared meta-learner LightningModule: train, validation and test all run ``meta_step``.

A learner implements ``meta_step(batch, train) -> (query_loss, query_predictions)``; this class does the
rest: logging ``train/loss``, per-scenario metrics named ``{stage}/{scenario}/{metric}``, optimiser.
Validation and test adapt with gradients enabled (``torch.enable_grad``) but keep no graph beyond the
step: predictions and losses are detached before they reach the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from metarec.data.episodes import EpisodeBatch
from metarec.metrics import rating_metrics
from metarec.models.base import BaseRecommender


@dataclass
class LearnerContext:
    """What a learner may know about the data besides batches."""

    rating_range: tuple[float, float]
    train_rating_mean: float
    val_scenarios: list[str]
    test_scenarios: list[str]
    train_items: Any = None  # (items, ratings) arrays seen by training; for statistics baselines
    n_items: int = 0


def masked_mse_per_task(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over each row's masked entries: ``[T]``."""
    m = mask.to(pred.dtype)
    return ((pred - target) ** 2 * m).sum(-1) / m.sum(-1).clamp_min(1.0)


class MetaLearner(pl.LightningModule):
    needs_training = True
    test_stage = "test"  # metric prefix of test passes; e.g. "test_k5" for a support-size-5 pass

    def __init__(self, model: BaseRecommender, ctx: LearnerContext, lr: float = 1e-3, weight_decay: float = 0.0):
        super().__init__()
        self.model = model
        self.ctx = ctx
        self.lr = lr
        self.weight_decay = weight_decay
        self.val_metrics = nn.ModuleDict({s: rating_metrics() for s in ctx.val_scenarios})
        self.test_metrics = nn.ModuleDict({s: rating_metrics() for s in ctx.test_scenarios})

    # ----------------------------------------------------------------- contract
    def meta_step(self, batch: EpisodeBatch, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the mean query loss over tasks and query predictions ``[T, Q]`` (query block)."""
        raise NotImplementedError

    # --------------------------------------------------------------- lightning
    def training_step(self, batch: EpisodeBatch, batch_idx: int) -> torch.Tensor:
        loss, _ = self.meta_step(batch, train=True)
        self.log("train/loss", loss, batch_size=batch.n_tasks, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def _eval_step(self, stage: str, batch: EpisodeBatch, dataloader_idx: int) -> None:
        names = self.ctx.val_scenarios if stage == "val" else self.ctx.test_scenarios
        scenario = names[dataloader_idx]
        with torch.enable_grad():
            loss, preds = self.meta_step(batch, train=False)
        preds = preds.detach().clamp(*self.ctx.rating_range)
        _, target, mask = batch.part("query")
        metrics = (self.val_metrics if stage == "val" else self.test_metrics)[scenario]
        metrics.update(preds.float(), target.float(), mask)
        prefix = self.test_stage if stage == "test" else stage
        self.log(f"{prefix}/{scenario}/loss", loss.detach(), batch_size=batch.n_tasks, add_dataloader_idx=False)

    def validation_step(self, batch: EpisodeBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch: EpisodeBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("test", batch, dataloader_idx)

    def _log_metrics(self, stage: str, collections: nn.ModuleDict) -> None:
        for scenario, coll in collections.items():
            values = coll.compute()
            for name, value in values.items():
                self.log(f"{stage}/{scenario}/{name}", value, add_dataloader_idx=False, prog_bar=name == "mae")
            coll.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_stage, self.test_metrics)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
