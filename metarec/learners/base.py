"""The shared meta-learner LightningModule and the one learner contract, from training to serving.

A learner implements

- ``training_loss(batch) -> (query_loss, query_outputs)``: its meta-training objective on one
  meta-batch (learners with ``needs_training = False`` have none);
- ``adapt(user, support) -> state``: what it makes of each user's support set (adapted parameters, an
  encoded context, fold-in scores, ...: opaque to everything else);
- ``score(state, item_ids, items) -> outputs [T, N]``: raw outputs for any items (predicted ratings, or
  logits under ``bce``); ``rank_score`` is what full ranking and ``Recommender.recommend`` order items
  by (``score``, unless a learner ranks by something else: ``popularity`` by training counts).

Validation, test, full ranking, support-size passes and ``metarec.Recommender`` call ``adapt`` and
``score`` and nothing else, so a learner written outside the package is evaluated and served exactly
like a built-in one. This class does the rest: logging ``train/loss``, per-scenario metrics named
``{stage}/{scenario}/{metric}``, optimiser. Adaptation runs with gradients enabled
(``torch.enable_grad``), scoring without; nothing keeps a graph beyond the step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import MetricCollection

from metarec.data.data_config import RATING_LOSSES  # explicit ratings; the other losses are of 0/1 labels
from metarec.data.episodes import EpisodeBatch, Support
from metarec.errors import ConfigError, NonFiniteError
from metarec.metrics import rating_metrics
from metarec.metrics.full_ranking import full_ranking, full_ranking_metrics
from metarec.data.features import Features
from metarec.data.scenarios import VAL_SCENARIO, new_items
from metarec.models.base import BaseRecommender


@dataclass
class LearnerContext:
    """What a learner may know about the data besides batches."""

    rating_range: tuple[float, float]
    train_rating_mean: float
    val_scenarios: list[str]
    test_scenarios: list[str]
    train_items: Any = None  # (items, ratings) arrays seen by training; for statistics baselines
    train_pool: Any = None  # {user code: (item codes, ratings)} of every training user (closed-form learners)
    validation_batches: Any = None  # () -> iterable of EpisodeBatch: the validation users (for tuning on them)
    n_items: int = 0
    label: str = "learner"  # the learner option's name, for messages
    nonfinite: str = "skip"  # skip | fail: what a non-finite loss or meta-gradient does
    max_nonfinite: int = 10  # with "skip": fail once more meta-steps than this were skipped
    hint: str = "lower learner.inner_lr or set trainer.gradient_clip_val / learner.inner_grad_clip"
    # full-ranking evaluation at test time (empty ranking_ks: off)
    ranking_ks: tuple = ()
    all_items: Any = None  # Features of every item [I, ...]
    new_item_mask: Any = None  # bool tensor [I]
    val_ranking: bool = False  # validation epochs also rank the catalogue (trainer.monitor is a full-ranking metric; the val_kK passes always do)
    relevance_threshold: float = 4.0  # a query rating >= this is a relevant item (explicit feedback)
    interactions_only: bool = False  # the data are interactions, not ratings: every query item is relevant
    loss: str = "mse"  # mse: ratings; bce | softmax: binary labels with sampled negatives, the model outputs logits
    rating_grid: Any = None  # data.rating_grid: the sorted rating values predictions snap to (``rating_values``)
    restoring: bool = False  # built to load a checkpoint (``Recommender.load``): skip choices the checkpoint overwrites

    @property
    def binary_labels(self) -> bool:
        """Whether ratings are 0/1 labels (sampled negatives) and the model outputs logits."""
        return self.loss not in RATING_LOSSES


TIE_SHARE = 1e-3  # rating grid: share of the rounding remainder kept (order-preserving; <= 0.0005 on whole stars)
MAX_GRID = 20  # rating grid: at most this many distinct training ratings make a grid (else they are real-valued)


def rating_values(ratings: Any) -> torch.Tensor:
    """The distinct rating values of the training ratings, sorted (``data.rating_grid``); ``ConfigError``
    when they are not a grid (more than ``MAX_GRID`` values, or none)."""
    values = torch.unique(torch.as_tensor(ratings if ratings is not None else [], dtype=torch.float64))
    if not 1 <= len(values) <= MAX_GRID:
        raise ConfigError(f"data.rating_grid=true needs ratings on a grid (at most {MAX_GRID} distinct values, "
                          f"e.g. whole stars); the training data have {len(values)}. Set data.rating_grid=false")
    return values.float()


def snap_to_grid(pred: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Each prediction's nearest grid value, plus ``TIE_SHARE`` of the remainder so that the order of the
    predictions (the query ranking metrics) stays that of the real-valued ones."""
    grid = grid.to(pred.device, pred.dtype)
    nearest = grid[torch.bucketize(pred, (grid[1:] + grid[:-1]) / 2)]
    return nearest + TIE_SHARE * (pred - nearest)


def absolute_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).abs()


def squared_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target) ** 2


def logistic_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of ``logits`` against 0/1 ``target``, elementwise: ``softplus(x) - x * y``
    (stable for any logit; plain ops, so ``vmap``/``grad`` apply)."""
    return F.softplus(logits) - logits * target


ELEMENTWISE = {"mse": squared_error, "mae": absolute_error, "bce": logistic_loss}


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(values.dtype)
    return (values * m).sum(-1) / m.sum(-1).clamp_min(1.0)


def masked_mse_per_task(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over each row's masked entries: ``[T]``."""
    return _masked_mean(squared_error(pred, target), mask)


def masked_mae_per_task(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over each row's masked entries: ``[T]``."""
    return _masked_mean(absolute_error(pred, target), mask)


def masked_bce_per_task(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy (on logits) over each row's masked entries: ``[T]``."""
    return _masked_mean(logistic_loss(logits, target), mask)


def masked_softmax_per_task(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sampled softmax over each row's masked entries: every positive (label 1) against the row's
    negatives (label 0), ``log(exp(s_p) + sum_n exp(s_n)) - s_p`` averaged over the positives: ``[T]``.
    A listwise ranking loss (a positive must outscore all the task's negatives at once), unlike ``bce``,
    which scores each item alone. With uniform negatives this is the unbiased sampled softmax; with the
    popularity sampler no log-Q correction is applied (the loss then favours less popular items)."""
    pos = mask & (target > 0.5)
    neg = mask & ~(target > 0.5)
    # a large finite floor instead of -inf keeps the gradient finite for rows without negatives
    lse = torch.logsumexp(logits.masked_fill(~neg, -1e9), dim=-1, keepdim=True)
    return _masked_mean(torch.logaddexp(logits, lse) - logits, pos)


LOSSES = {"mse": masked_mse_per_task, "mae": masked_mae_per_task, "bce": masked_bce_per_task,
          "softmax": masked_softmax_per_task}


def task_loss(name: str):
    """The per-task masked loss function called ``name`` (``mse`` | ``mae`` | ``bce`` | ``softmax``)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"unknown loss {name!r} (known: {', '.join(LOSSES)})") from None


RANK_CHUNK_ROWS = 16384  # full ranking: (task, item) pairs scored per chunk (bounds the activations)


def first_ratings(batch: EpisodeBatch, size: int | None, binary_labels: bool = False) -> EpisodeBatch:
    """``batch`` with each task's support cut to its first ``size`` ratings (``None``: as it is), as the
    support-size-K passes cut theirs (``ColdStartDataModule.test_tasks``): the support's other entries are
    masked out — neither folded in nor kept out of the candidates — and a task with fewer than ``size``
    ratings is left out (its query masked: it counts nowhere). With ``binary_labels`` the ratings are the
    label-1 entries; sampled negatives stay (they are never folded in)."""
    if size is None:
        return batch
    s = batch.n_support
    mask = batch.support_mask[:, :s]
    real = mask & (batch.ratings[:, :s] > 0.5) if binary_labels else mask
    support = mask & (~real | (real.cumsum(1) <= size))
    query = batch.query_mask & (real.sum(1, keepdim=True) >= size)
    return dataclasses.replace(batch, support_mask=torch.cat([support, batch.support_mask[:, s:]], 1), query_mask=query)


class MetaLearner(pl.LightningModule):
    needs_training = True
    ranks_items = True  # False for learners whose scores cannot order items (no full-ranking metrics)
    predicts_ratings = True  # False for rankers (e.g. item-item fold-in): no rating metrics, '-' in tables

    def __init__(self, model: BaseRecommender, ctx: LearnerContext, lr: float = 1e-3, weight_decay: float = 0.0):
        super().__init__()
        self.model = model
        self.ctx = ctx
        self.loss_fn = task_loss(ctx.loss)
        self.lr = lr
        self.weight_decay = weight_decay
        rated = self.predicts_ratings
        self.val_metrics = nn.ModuleDict({s: rating_metrics() for s in ctx.val_scenarios} if rated else {})
        self.test_metrics = nn.ModuleDict({s: rating_metrics() for s in ctx.test_scenarios} if rated else {})
        def rankers(scenarios) -> nn.ModuleDict:
            return nn.ModuleDict({s: MetricCollection(full_ranking_metrics(ctx.ranking_ks), compute_groups=False)
                                  for s in scenarios} if ctx.ranking_ks and self.ranks_items else {})

        self.rank_metrics = rankers(ctx.test_scenarios)
        self.val_rank_metrics = rankers(ctx.val_scenarios)  # updated in validation epochs only with ctx.val_ranking

    # ----------------------------------------------------------------- contract
    def training_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The meta-training objective: mean query loss over tasks and query outputs ``[T, Q]``."""
        raise NotImplementedError(f"{type(self).__name__} has no training objective")

    def adapt(self, user: Features, support: Support) -> Any:
        """Each task's state after reading its support. Default: no adaptation, the user's features."""
        return user

    def score(self, state: Any, item_ids: torch.Tensor, items: Features) -> torch.Tensor:
        """Raw outputs ``[T, N]`` for items ``[T, N]`` (codes and features) given ``adapt``'s state.
        Default: the base model as it is."""
        return self.model(state, items)

    def rank_score(self, state: Any, item_ids: torch.Tensor, items: Features) -> torch.Tensor:
        """What items are ranked by (full ranking, ``recommend``): ``score`` unless overridden."""
        return self.score(state, item_ids, items)

    @property
    def ranks_by_score(self) -> bool:
        """Whether items are ranked by ``score`` itself (``rank_score`` not overridden): a ranking pass
        then already holds the scores of the items it picks."""
        return type(self).rank_score is MetaLearner.rank_score

    def evaluate(self, batch: EpisodeBatch) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """``(state, mean query loss, query outputs [T, Q])``: adapt to each support, score its query."""
        with torch.enable_grad():
            state = self.adapt(batch.user, batch.support())
        with torch.no_grad():
            out = self.score(state, *batch.query())
            _, y, m = batch.part("query")
            loss = self.loss_fn(out, y.to(out.dtype), m).mean()
        return state, loss, out

    def meta_step(self, batch: EpisodeBatch, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean query loss over tasks and query outputs ``[T, Q]``: the training objective, or (``train``
        false) adaptation to each support and scoring of its query through ``adapt``/``score``."""
        if train:
            return self.training_loss(batch)
        _, loss, out = self.evaluate(batch)
        return loss, out

    # --------------------------------------------------------------- lightning
    @property
    def world_size(self) -> int:
        """Number of training processes (1 without a Trainer)."""
        return int(self.trainer.world_size) if self._trainer is not None else 1

    def all_finite(self, *tensors: torch.Tensor) -> bool:
        """Whether every tensor is finite on every process (under DDP all ranks must take the same
        decision, or the ones that skip a step would leave the others waiting for their gradients)."""
        ok = all(bool(torch.isfinite(t).all()) for t in tensors)
        if self.world_size > 1:
            ok = bool(self.trainer.strategy.reduce_boolean_decision(ok, all=True))
        return ok

    def training_step(self, batch: EpisodeBatch, batch_idx: int) -> torch.Tensor | None:
        loss, _ = self.meta_step(batch, train=True)
        if not self.all_finite(loss):
            self.nonfinite_step("query loss")
            return None  # Lightning skips backward and the optimiser step
        self.log("train/loss", loss, batch_size=batch.n_tasks, prog_bar=True, on_step=True, on_epoch=True,
                 sync_dist=self.world_size > 1)
        return loss

    # -------------------------------------------------------------- non-finite guard
    skipped_steps = 0
    attempted_steps = 0  # training batches run, skipped or not (over the whole run, resumed parts too)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.attempted_steps += 1

    def on_train_end(self) -> None:
        """A run whose every meta-step was skipped trained nothing: stop it before it is tested and
        marked finished (under DDP every process counts the same steps and skips)."""
        if self.attempted_steps and self.skipped_steps >= self.attempted_steps:
            raise NonFiniteError(
                f"{self.ctx.label}: all {self.attempted_steps} meta-steps had a non-finite loss or meta-gradient "
                f"and were skipped, so nothing was trained; {self.ctx.hint}"
            )

    def nonfinite_step(self, what: str) -> None:
        """Count a meta-step dropped for a non-finite ``what``; raise per the policy."""
        self.skipped_steps += 1
        step = self.trainer.global_step if self._trainer is not None else self.skipped_steps
        if self._trainer is not None:
            self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
        if self.ctx.nonfinite == "fail" or self.skipped_steps > self.ctx.max_nonfinite:
            why = ""
            if self.ctx.nonfinite != "fail":
                why = f" ({self.skipped_steps} meta-steps skipped, more than trainer.max_nonfinite={self.ctx.max_nonfinite})"
            raise NonFiniteError(f"{self.ctx.label}: non-finite {what} at meta-step {step}{why}; {self.ctx.hint}")

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """Run the step's closure (training_step + backward), then drop the step if a meta-gradient is
        not finite; otherwise step the optimiser."""
        if optimizer_closure is not None:
            optimizer_closure()
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads and not all(torch.isfinite(g).all() for g in grads):
            optimizer.zero_grad()
            self.nonfinite_step("meta-gradient")
            return
        optimizer.step()

    def _eval_step(self, stage: str, batch: EpisodeBatch, dataloader_idx: int) -> None:
        prefix = self.test_stage() if stage == "test" else stage
        users = "val" if stage == "val" or self.validation_users_pass() else "test"
        scenario = (self.ctx.val_scenarios if users == "val" else self.ctx.test_scenarios)[dataloader_idx]
        state, loss, out = self.evaluate(batch)
        if self.predicts_ratings:
            _, target, mask = batch.part("query")
            metrics = (self.val_metrics if users == "val" else self.test_metrics)[scenario]
            metrics.update(self.to_prediction(out.detach()).float(), target.float(), mask)
            # under DDP averaged over processes (the monitor under bce: every process must agree on it)
            self.log(f"{prefix}/{scenario}/loss", loss.detach(), batch_size=batch.n_tasks, add_dataloader_idx=False,
                     sync_dist=self.world_size > 1)
        ranking = self.rank_metrics if users == "test" else self.val_rank_metrics
        if ranking and (stage == "test" or self.ctx.val_ranking):  # test passes (val_kK too) always rank
            with torch.no_grad():
                scores = self.catalogue_scores(state, batch.n_tasks, batch.item_ids.device)
            candidates, relevant = self.ranking_targets(batch, scenario)
            ranking[scenario].update(scores.masked_fill(~candidates, float("-inf")), relevant & candidates)

    def catalogue_scores(self, state: Any, n_tasks: int, device: torch.device) -> torch.Tensor:
        """``rank_score`` of every catalogue item for each task ``[T, I]`` (float32), in chunks of about
        ``RANK_CHUNK_ROWS`` (task, item) pairs: the activations of one chunk stay small and are reused
        instead of allocating ``[tasks, catalogue, width]`` buffers at once (Last.fm: 17.6k items)."""
        items = self.ctx.all_items
        n = items.categorical.shape[0]
        cat, multi = items.categorical.to(device), items.multihot.to(device)
        step = max(1, RANK_CHUNK_ROWS // max(n_tasks, 1))
        out = []
        for s in range(0, n, step):
            ids = torch.arange(s, min(s + step, n), device=device).expand(n_tasks, -1)
            chunk = Features(cat[s : s + step], multi[s : s + step]).for_tasks(n_tasks)
            out.append(self.rank_score(state, ids, chunk).detach().float())
        return torch.cat(out, dim=1) if out else torch.zeros(n_tasks, 0, device=device)

    def to_prediction(self, out: torch.Tensor) -> torch.Tensor:
        """Model outputs -> predictions, for the rating metrics and for ``Recommender.predict``: ratings
        clipped to the rating range (with ``data.rating_grid``, then snapped to the nearest rating value of
        the training data: ``snap_to_grid``), or probabilities (sigmoid of the logits) under binary labels.
        The same for every learner, so that no learner gets a rounding the others do not."""
        if self.ctx.binary_labels:
            return torch.sigmoid(out)
        pred = out.clamp(*self.ctx.rating_range)
        return pred if self.ctx.rating_grid is None else snap_to_grid(pred, self.ctx.rating_grid)

    # ------------------------------------------------------------ full ranking
    def ranking_targets(self, batch: EpisodeBatch, scenario: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(candidates, relevant)``, bool ``[T, I]``. Candidates: the scenario's items (new items in the
        item-cold scenarios, existing items otherwise) except the user's support items (its positives
        under ``bce``: sampled negatives stay candidates). Relevant: the query items rated at least
        ``relevance_threshold``; every query item when the data are interactions only (``interactions_only``);
        the query positives under binary labels (sampled negatives)."""
        new = self.ctx.new_item_mask.to(batch.item_ids.device)
        pool = new if new_items(scenario) else ~new
        t, n_items, s = batch.n_tasks, new.shape[0], batch.n_support

        def scatter(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(t, n_items + 1, dtype=torch.bool, device=ids.device)
            out.scatter_(1, torch.where(mask, ids, n_items), True)
            return out[:, :n_items]

        s_mask, q_mask = batch.support_mask[:, :s], batch.query_mask[:, s:]
        if self.ctx.binary_labels:
            s_mask, q_mask = s_mask & (batch.ratings[:, :s] > 0.5), q_mask & (batch.ratings[:, s:] > 0.5)
        elif not self.ctx.interactions_only:
            q_mask = q_mask & (batch.ratings[:, s:] >= self.ctx.relevance_threshold)
        candidates = pool.unsqueeze(0).expand(t, -1) & ~scatter(batch.item_ids[:, :s], s_mask)
        return candidates, scatter(batch.item_ids[:, s:], q_mask)

    def validation_grid(self, scores: Callable[[EpisodeBatch], Iterable[torch.Tensor]], size: int, k: int,
                        kind: str = "recall", sizes: Sequence[int | None] = (None,)) -> tuple[np.ndarray, int]:
        """``(means [len(sizes) * size], users)``: for each support size in ``sizes`` (``None``: the full
        support) and each of ``size`` candidate settings, the mean full-ranking ``kind``@``k`` over the
        validation users (those with a relevant query item) — how learners choose a setting on validation
        users only (``ease``'s l2, ``fism``'s ``cf_start``). At a size K the validation users are cut as the
        ``val_kK`` and ``test_kK`` passes cut theirs (``first_ratings``: the first K ratings; users with fewer
        are left out; the rest of the support is neither folded in nor excluded from the candidates).
        ``scores(batch)`` yields the ``size`` settings' scores ``[T, I]`` of one (cut) validation batch, in
        order; candidates and relevant items are ``ranking_targets``' of the validation scenario; ``users``:
        those counted at the first size. The caller checks ``ctx.validation_batches``."""
        sums, users = np.zeros((len(sizes), size)), np.zeros(len(sizes))
        for batch in self.ctx.validation_batches():
            for at, cut in enumerate(sizes):
                part = first_ratings(batch, cut, self.ctx.binary_labels)
                candidates, relevant = self.ranking_targets(part, VAL_SCENARIO)
                relevant = relevant & candidates
                for g, logits in enumerate(scores(part)):
                    c, r = candidates.to(logits.device), relevant.to(logits.device)
                    values = full_ranking(logits.masked_fill(~c, float("-inf")), r, k, kind)
                    counted = ~torch.isnan(values)
                    sums[at, g] += float(values[counted].sum())
                    users[at] += int(counted.sum()) if g == 0 else 0
        return (sums / np.maximum(users, 1)[:, None]).reshape(-1), int(users[0])

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
        if self.ctx.val_ranking:
            self._log_metrics("val", self.val_rank_metrics)

    def test_stage(self) -> str:
        """The metric prefix of the running test pass: the data module's (``test_kK`` for a pass at
        support size K, ``ColdStartDataModule.for_support_size``), else ``test``."""
        dm = self.trainer.datamodule if self._trainer is not None else None
        return getattr(dm, "test_stage", "test")

    def validation_users_pass(self) -> bool:
        """Whether the running test pass reads the validation users (``val_kK``: their supports cut to K,
        ``ColdStartDataModule.for_support_size(k, users="val")``); its metrics go to the validation
        collections, under the validation scenario."""
        dm = self.trainer.datamodule if self._trainer is not None else None
        return getattr(dm, "test_users", "test") == "val"

    def on_test_epoch_end(self) -> None:
        val = self.validation_users_pass()
        self._log_metrics(self.test_stage(), self.val_metrics if val else self.test_metrics)
        self._log_metrics(self.test_stage(), self.val_rank_metrics if val else self.rank_metrics)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Save the random number generators' states (as tensors and plain data, so the checkpoint still
        loads with ``weights_only=True``): a resumed run continues their streams."""
        import random

        import numpy as np

        checkpoint["metarec_steps"] = {"attempted": int(self.attempted_steps), "skipped": int(self.skipped_steps)}
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        checkpoint["metarec_rng"] = {
            "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        import random

        import numpy as np

        steps = checkpoint.get("metarec_steps")
        if isinstance(steps, dict):  # the non-finite guard counts over the whole run
            self.attempted_steps, self.skipped_steps = int(steps.get("attempted", 0)), int(steps.get("skipped", 0))
        state = checkpoint.get("metarec_rng")
        if not state:
            return
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
