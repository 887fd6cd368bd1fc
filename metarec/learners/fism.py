"""``fism``: amortised fold-in for the two-tower model — a new user's vector is read off their support
items' vectors, meta-trained episode by episode (support -> query), with no inner gradient steps.

In the spirit of FISM (Kabbur et al., KDD 2013) and of item-based fold-in (ItemKNN, EASE), but learned
end to end on cold-start episodes like a neural process: for each task

    u = W h_u + c  +  P · sum_i v_i / n^alpha  +  R · sum_i r~_i v_i / n^alpha

where ``W h_u + c`` is the two-tower model's own user vector from the user's features, ``v_i`` the item
tower's vectors of the support items (the positives under implicit feedback; every rated item, plus a
rating-weighted pool with ``r~`` the centred, scaled rating, on explicit ratings), ``n`` their number
and ``alpha`` FISM's normalisation exponent. The score of any item is the model's own output layer on
``[u * v_j, b_j]``. ``P`` and ``R`` start at zero, so before training the learner is the two-tower
model. Adapting a new user is one pass of the item tower over the support; scoring the catalogue is one
matrix product with the item vectors. Needs ``model=twotower``.

Ranking objective (``rank_loss``), added to the pointwise query loss (weighted ``rating_weight``):

- ``inbatch``: each task's relevant query items against the other tasks' query items, log-Q corrected
  (cheap; popular items dominate the negatives);
- ``full``: a softmax over the whole catalogue of existing items (the task's support items left out),
  with FISM's leave-one-out targets as well: every relevant support item is also predicted from the
  rest of the support (its own vector taken out of the pool), so each episode teaches from all its
  relevant items, not only the ten query ones. One item-tower pass over the catalogue per meta-step;
- ``recall``: the same targets and catalogue, but a smooth Recall@``rank_k`` instead of the softmax
  (``smooth_miss``: a sigmoid count of the items ranked above each target, ApproxNDCG-style). The
  softmax likelihood also rewards lifting targets from far down the list, which popularity does well;
  Recall@K only counts the top K, and this loss passes almost no gradient for hopeless targets.
  ``rank_norm=std`` measures logit differences in standard deviations of each list, so the loss cannot
  be lowered by scaling the logits up (which otherwise drives the learned gates of ``cf_prior`` up until
  the sigmoids saturate); ``loo_targets`` caps the leave-one-out targets per task (a random subset each
  step: the catalogue terms cost time in proportion to their number).

Item-item prior (``cf_prior=ease``, learner option ``fism_ease``): the ranking logits get an EASE fold-in
term, ``logit_j += g(n) * (s B)_j`` with ``s`` the support's relevant items (as the ``ease`` learner folds
them in; ``cf_fold=rated``: every rated item, weighted by a learned weight per rating level), ``B``
EASE's item-item weights on the training users (``l2`` chosen on the validation users, as ``ease`` chooses it, unless ``cf_l2`` is set) and ``g(n) = exp(a) (1 + n)^b`` a learned gate of the number
``n`` of folded-in items (``a`` starts at ``log cf_scale``, ``b`` at 0), plus ``w(n) log q_j`` (the item's log
training popularity, ``w(n) = exp(c) (1 + n)^d`` learned from 1) and the factor model's logits weighted ``m`` (learned, from
``cf_mix``): training starts near EASE with popularity instead of from a random model. The factor model then learns what
the neighbourhood model misses (user features, small supports) — Koren's integrated model (KDD 2008) in
cold-start episodes. Training episodes see **leave-user-out** EASE scores (the user's own row taken out of
``X`` exactly; ``metarec.learners.ease_prior``), so the gate is fitted on scores of the kind a new user
gets; rating predictions (``score``) are unchanged. ``cf_knn=true`` adds ItemKNN's fold-in score of the
same profile with its own gate ``g_k(n)`` (``metarec.learners.knn_prior``: leave-user-out similarities in
training). ``cf_start=validation`` starts ``g_k`` and ``w`` at the offsets (a small grid) whose prior-only
ranking has the best Recall@``rank_k`` on the validation users, as ``ease`` chooses its l2
(``cf_start_sizes``: scored over the full support and supports cut to those sizes, the gates' slopes in
the grid). Needs ``rank_loss=full`` or ``recall``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch
from torch import nn

from metarec.data.episodes import EpisodeBatch, Support
from metarec.data.features import Features
from metarec.errors import ConfigError
from metarec.learners.base import LearnerContext, MetaLearner
from metarec.learners.ease_prior import FOLDS, EasePrior, entries_of
from metarec.learners.foldin import support_positives
from metarec.learners.knn_prior import KnnPrior
from metarec.models.base import BaseRecommender
from metarec.models.item_cache import ItemSideCache


@dataclass
class FISMConfig:
    alpha: float = 0.5  # pooled support vectors are divided by n ** alpha (FISM's normalisation)
    rank_weight: float = 1.0  # weight of the ranking loss (rank_loss) added to the query loss
    rank_loss: str = "full"  # full: softmax over the catalogue; recall: smooth Recall@rank_k over the catalogue; inbatch: over the meta-batch's query items (log-Q corrected)
    rank_k: int = 10  # rank_loss=recall: the cut-off K of the smooth Recall@K
    rank_temperature: float = 1.0  # rank_loss=recall: logit difference scale of the smooth "ranked above" count
    rank_norm: str = "none"  # rank_loss=recall: none | std: logit differences in units of each list's standard deviation (scale-free)
    leave_one_out: bool = True  # rank_loss=full: also predict each relevant support item from the rest of the support
    loo_targets: Optional[int] = None  # leave_one_out: at most this many support targets per task and step, drawn at random (None: all)
    rating_weight: float = 1.0  # weight of the pointwise query loss (mse on ratings, bce/softmax on labels)
    cf_prior: str = "none"  # none | ease: add EASE's fold-in score (leave-user-out in training) to the ranking logits
    cf_scale: float = 20.0  # cf_prior=ease: the gate's initial scale exp(a)
    cf_mix: float = 0.1  # cf_prior=ease: the factor model's initial weight m in the ranking logits (learned)
    cf_lr_scale: float = 30.0  # cf_prior=ease: the gate, popularity and mix weights learn at lr * this (no decay)
    cf_l2: Optional[float] = None  # cf_prior=ease: EASE's l2; None: chosen on the validation users as `ease` does
    cf_knn: bool = False  # cf_prior=ease: also add ItemKNN's fold-in score (its own learned gate; leave-user-out in training)
    cf_knn_scale: float = 5.0  # cf_knn: its gate's initial scale
    cf_knn_neighbours: Optional[int] = None  # cf_knn: ItemKNN's neighbourhood size (None: the itemknn learner's default)
    cf_knn_shrink: Optional[float] = None  # cf_knn: ItemKNN's shrinkage (None: the itemknn learner's default)
    cf_fold: str = "relevant"  # cf_prior=ease: fold in the relevant support items | every rated one, weighted per rating level (learned)
    cf_start: str = "fixed"  # cf_prior=ease: fixed: the gates start at cf_scale, cf_knn_scale, popularity 1 | validation: ItemKNN's and popularity's start chosen on the validation users
    cf_start_sizes: Optional[List[int]] = None  # cf_start=validation: also score the validation users' supports cut to these sizes (mean with the full support); the gates' slopes join the grid
    lr: float = 3e-3
    weight_decay: float = 0.0


RANK_LOSSES = ("inbatch", "full", "recall")
CATALOGUE_LOSSES = ("full", "recall")  # computed over the whole catalogue (full_softmax)
CF_PRIORS = ("none", "ease")
CF_STARTS = ("fixed", "validation")
# cf_start=validation: offsets (nats) of ItemKNN's gate and of the popularity weight from their fixed start;
# the first of each is the fixed start itself (ties go to it)
KNN_STARTS = (0.0, -2.0, -4.0, -6.0)
POP_STARTS = (0.0, -3.0, -6.0)
# cf_start_sizes: the grid also moves the slopes (per unit of log(1 + n)) of ItemKNN's gate and of the
# popularity weight — at small supports ItemKNN's fold-in can rank best where EASE's does with the full one
SIZED_KNN_STARTS = (0.0, 2.0, -2.0, -4.0, -6.0)
KNN_SLOPES = (0.0, -0.75, -1.5)
SIZED_POP_STARTS = (0.0, -1.5, -3.0, -6.0)
POP_SLOPES = (0.0, -0.75)
RANK_NORMS = ("none", "std")


class FISM(MetaLearner):
    needs_model = "twotower"  # the base model this learner is written for (tests and tables read it)

    def __init__(self, model: BaseRecommender, ctx: LearnerContext, cfg: FISMConfig) -> None:
        super().__init__(model, ctx, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if not (hasattr(model, "item_side") and hasattr(model, "user_tower")):
            raise ConfigError(f"learner fism needs a two-tower model (model=twotower), not {type(model).__name__}")
        if not 0.0 <= cfg.alpha <= 1.0:
            raise ConfigError(f"learner.alpha must be in [0, 1], got {cfg.alpha}")
        if not (math.isfinite(cfg.rank_weight) and cfg.rank_weight >= 0):
            raise ConfigError(f"learner.rank_weight must be a finite number >= 0, got {cfg.rank_weight}")
        if not (math.isfinite(cfg.rating_weight) and cfg.rating_weight >= 0):
            raise ConfigError(f"learner.rating_weight must be a finite number >= 0, got {cfg.rating_weight}")
        if cfg.rank_loss not in RANK_LOSSES:
            raise ConfigError(f"learner.rank_loss must be one of {', '.join(RANK_LOSSES)}, got {cfg.rank_loss!r}")
        if cfg.rating_weight == 0 and cfg.rank_weight == 0:
            raise ConfigError("learner.rating_weight and learner.rank_weight are both 0: nothing to train")
        if cfg.cf_fold not in FOLDS:
            raise ConfigError(f"learner.cf_fold must be one of {', '.join(FOLDS)}, got {cfg.cf_fold!r}")
        if cfg.cf_prior not in CF_PRIORS:
            raise ConfigError(f"learner.cf_prior must be one of {', '.join(CF_PRIORS)}, got {cfg.cf_prior!r}")
        if cfg.cf_prior != "none" and cfg.rank_loss not in CATALOGUE_LOSSES:
            raise ConfigError(f"learner.cf_prior={cfg.cf_prior} needs learner.rank_loss=full or recall")
        k = cfg.rank_k
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"learner.rank_k must be an integer >= 1, got {k!r}")
        cap = cfg.loo_targets
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ConfigError(f"learner.loo_targets must be an integer >= 1 or null (every target), got {cap!r}")
        if not (math.isfinite(cfg.rank_temperature) and cfg.rank_temperature > 0):
            raise ConfigError(f"learner.rank_temperature must be a finite number > 0, got {cfg.rank_temperature}")
        if cfg.rank_norm not in RANK_NORMS:
            raise ConfigError(f"learner.rank_norm must be one of {', '.join(RANK_NORMS)}, got {cfg.rank_norm!r}")
        for name in ("cf_scale", "cf_lr_scale"):
            value = getattr(cfg, name)
            if cfg.cf_prior != "none" and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"learner.{name} must be a finite number > 0, got {value}")
        if cfg.rank_loss in CATALOGUE_LOSSES and (ctx.all_items is None or ctx.new_item_mask is None):
            raise ConfigError(f"learner.rank_loss={cfg.rank_loss} needs the catalogue's item features "
                              "(LearnerContext.all_items and new_item_mask); use learner.rank_loss=inbatch")
        self.cfg = cfg
        self._item_cache = ItemSideCache()  # serving: the catalogue's item side, kept while nothing changes
        self.dim = model.head[0].dim
        self.pool = nn.Linear(self.dim, self.dim, bias=False)  # P
        self.rated = nn.Linear(self.dim, self.dim, bias=False)  # R (explicit ratings)
        for layer in (self.pool, self.rated):
            nn.init.zeros_(layer.weight)
        lo, hi = ctx.rating_range
        self.centre, self.scale = float(ctx.train_rating_mean), max((hi - lo) / 2.0, 1e-6)
        self.separate_rank = not ctx.binary_labels
        if self.separate_rank:  # explicit ratings: the ranking score's own user and item terms
            self.rank_user = nn.Linear(self.dim, self.dim, bias=False)
            self.rank_item = nn.Linear(model.item_encoder.out_dim, 1, bias=False)
            nn.init.zeros_(self.rank_user.weight)
            nn.init.zeros_(self.rank_item.weight)
        counts = np.bincount(ctx.train_items[0], minlength=ctx.n_items) if ctx.train_items is not None else np.zeros(ctx.n_items)
        logq = np.log((counts + 1.0) / (counts + 1.0).sum()) if ctx.n_items else np.zeros(0)
        self.register_buffer("logq", torch.as_tensor(logq, dtype=torch.float32), persistent=False)
        self.cf = EasePrior(model, ctx, cfg.cf_l2, cfg.cf_fold) if cfg.cf_prior == "ease" else None
        if not isinstance(cfg.cf_knn, bool):
            raise ConfigError(f"learner.cf_knn must be true or false, got {cfg.cf_knn!r}")
        if cfg.cf_knn and self.cf is None:
            raise ConfigError("learner.cf_knn=true adds ItemKNN next to the EASE prior: it needs learner.cf_prior=ease")
        if cfg.cf_knn and not (math.isfinite(cfg.cf_knn_scale) and cfg.cf_knn_scale > 0):
            raise ConfigError(f"learner.cf_knn_scale must be a finite number > 0, got {cfg.cf_knn_scale}")
        n, shrink = cfg.cf_knn_neighbours, cfg.cf_knn_shrink
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ConfigError(f"learner.cf_knn_neighbours must be an integer >= 1 or null, got {n!r}")
        if shrink is not None and (isinstance(shrink, bool) or not isinstance(shrink, (int, float))
                                   or not math.isfinite(shrink) or shrink < 0):
            raise ConfigError(f"learner.cf_knn_shrink must be a finite number >= 0 or null, got {shrink!r}")
        self.knn = KnnPrior(self.cf, ctx.label, cfg.cf_knn_neighbours, cfg.cf_knn_shrink) if cfg.cf_knn else None
        if self.knn is not None:
            self.cf_knn_gate = nn.Parameter(torch.tensor([math.log(cfg.cf_knn_scale), 0.0]))  # g_k(n), as g(n)
        if self.cf is not None:
            self.cf_gate = nn.Parameter(torch.tensor([math.log(cfg.cf_scale), 0.0]))
            self.cf_mix = nn.Parameter(torch.tensor(float(cfg.cf_mix)))
            self.cf_pop = nn.Parameter(torch.tensor([0.0, 0.0]))  # w(n) = exp(c) (1 + n)^d on log popularity
            self.save_hyperparameters({"cf_l2": self.cf.l2})
        if cfg.cf_start not in CF_STARTS:
            raise ConfigError(f"learner.cf_start must be one of {', '.join(CF_STARTS)}, got {cfg.cf_start!r}")
        if cfg.cf_start == "validation" and self.cf is None:
            raise ConfigError("learner.cf_start=validation chooses where the item-item prior's gates start: it needs "
                              "learner.cf_prior=ease")
        sizes = cfg.cf_start_sizes
        if sizes is not None and (cfg.cf_start != "validation" or not isinstance(sizes, (list, tuple)) or not sizes
                                  or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in sizes)):
            raise ConfigError("learner.cf_start_sizes must be a non-empty list of integers >= 1 (support sizes the "
                              f"validation-chosen start is scored at) with learner.cf_start=validation, got {sizes!r}")
        self.start_scores: dict[tuple[float, ...], float] = {}
        if cfg.cf_start == "validation" and not ctx.restoring:  # a checkpoint overwrites the start (Recommender.load)
            self.choose_start()

    def choose_start(self) -> None:
        """``cf_start=validation``: the offsets (``KNN_STARTS`` x ``POP_STARTS``) of ItemKNN's gate and the
        popularity weight whose prior-only ranking (the factor model left out) has the best Recall@``rank_k``
        on the validation users, as ``ease`` chooses its l2 — the start of training, which is then learned.
        Fixed gates can start far from the mix the data favour (on Last.fm ItemKNN's fold-in, which ranks
        below EASE's, dominates the fixed start), and the ranking loss moves them slowly.

        With ``cf_start_sizes``, a setting's score is the mean over the full support and the supports cut to
        each of those sizes (each validation user's first K ratings, as the support-size-K test passes cut
        them), and the grid also moves the slopes of the two gates (``SIZED_*``, ``*_SLOPES``): the mix
        can then lean on ItemKNN for a few ratings and on EASE for many."""
        if self.ctx.validation_batches is None:
            raise ConfigError(f"learner {self.ctx.label}: cf_start=validation needs the validation users; "
                              "set learner.cf_start=fixed")
        sizes = [None, *(self.cfg.cf_start_sizes or [])]
        sized = len(sizes) > 1
        knn = (SIZED_KNN_STARTS if sized else KNN_STARTS) if self.knn is not None else (0.0,)
        knn_slopes = KNN_SLOPES if sized and self.knn is not None else (0.0,)
        grid = [(a, b, c, d) for a in knn for b in knn_slopes for c in (SIZED_POP_STARTS if sized else POP_STARTS)
                for d in (POP_SLOPES if sized else (0.0,))]

        def scores(batch):
            for size in sizes:
                support = self.first_ratings(batch.support(), size)
                e, n = self.cf.fold_in(support)
                k = self.knn.fold_in(support)[0] if self.knn is not None else None
                for a, b, c, d in grid:
                    yield self.prior_logits(e, n, k, knn_offset=a, pop_offset=c, knn_slope=b, pop_slope=d)

        with torch.no_grad():
            means, count = self.validation_grid(scores, len(grid) * len(sizes), self.cfg.rank_k)
        if count == 0:
            raise ConfigError(f"learner {self.ctx.label}: no validation user has a relevant query item to choose "
                              "cf_start on; set learner.cf_start=fixed")
        means = means.reshape(len(sizes), len(grid)).mean(0)
        self.start_scores = {key: float(m) for key, m in zip(grid, means)}
        a, b, c, d = grid[int(np.argmax(means))]
        with torch.no_grad():
            if self.knn is not None:
                self.cf_knn_gate += torch.tensor([a, b])
            self.cf_pop += torch.tensor([c, d])
        self.save_hyperparameters({"cf_start_offsets": [a, c] if not sized else [a, b, c, d]})

    def first_ratings(self, support: Support, size: int | None) -> Support:
        """``support`` cut to each task's first ``size`` ratings (``None``: as it is); sampled negatives are
        not ratings and stay (they are never folded in). Unlike ``base.first_ratings`` (``validation_grid``'s
        sizes, the ``val_kK``/``test_kK`` passes) the rest of the support stays out of the candidates and
        users with fewer ratings keep all of theirs: ``cf_start_sizes``' choice as it was made for the
        kept Last.fm runs."""
        if size is None:
            return support
        real = support_positives(self.ctx, support, "rated")  # the ratings (under sampled negatives: label 1)
        rank = real.cumsum(1)
        return dataclasses.replace(support, mask=support.mask & (~real | (rank <= size)))

    def gate(self, n: torch.Tensor) -> torch.Tensor:
        """``g(n) = exp(a) (1 + n)^b`` for numbers of folded-in items ``n`` (broadcasting)."""
        return torch.exp(self.cf_gate[0] + self.cf_gate[1] * torch.log1p(n))

    def _support_parts(self, user: Features, support: Support):
        """``(u0 [T, dim], v [T, S, dim], keep [T, S], weight [T, S] or None)``: the features' user vector,
        the support's item vectors, which of them are pooled and their rating weights."""
        m = self.model
        u0 = m.head[0].proj(m.user_tower(m.user_encoder(user)))
        v = m.item_side(support.items)[..., : self.dim]  # [T, S, dim]
        if self.ctx.binary_labels:  # the positives; sampled negatives say little about a user
            return u0, v, support.mask & (support.ratings > 0.5), None
        return u0, v, support.mask, ((support.ratings - self.centre) / self.scale).to(v.dtype)

    def _pooled(self, u0, sum_v, sum_wv, n) -> torch.Tensor:
        """``u0 + P sum_v / n^alpha (+ R sum_wv / n^alpha)`` for pools of ``n`` items (broadcasting)."""
        norm = n.clamp_min(1.0) ** self.cfg.alpha
        u = u0 + self.pool(sum_v / norm)
        return u if sum_wv is None else u + self.rated(sum_wv / norm)

    def user_vector(self, user: Features, support: Support) -> torch.Tensor:
        """Each task's user vector ``[T, dim]`` from its features and support."""
        u0, v, keep, weight = self._support_parts(user, support)
        k = keep.to(v.dtype).unsqueeze(-1)
        sum_wv = None if weight is None else (v * k * weight.unsqueeze(-1)).sum(-2)
        return self._pooled(u0, (v * k).sum(-2), sum_wv, k.sum(-2))

    def adapt(self, user: Features, support: Support):
        """The user vector ``[T, dim]``; with ``cf_prior``, ``(user vector, gated prior scores [T, I])``."""
        u = self.user_vector(user, support)
        if self.cf is None:
            return u
        e, n = self.cf.fold_in(support)
        k = self.knn.fold_in(support)[0] if self.knn is not None else None
        return u, self.prior_logits(e, n, k)

    def prior_logits(self, e: torch.Tensor, n: torch.Tensor, k: torch.Tensor | None = None,
                     knn_offset: float = 0.0, pop_offset: float = 0.0, knn_slope: float = 0.0,
                     pop_slope: float = 0.0) -> torch.Tensor:
        """``g(n) * e + w(n) * log q (+ g_k(n) * k)``: the gated EASE scores ``e [..., I]`` of pools of ``n``
        items plus the weighted log training popularity (what ranks the items when the support folds in
        nothing), and with ``cf_knn`` the gated ItemKNN scores ``k``; the offsets and slopes are added to
        the log scales and exponents of ``g_k`` and ``w`` (``choose_start`` tries them)."""
        log_n = torch.log1p(n)
        w = torch.exp(self.cf_pop[0] + pop_offset + (self.cf_pop[1] + pop_slope) * log_n).unsqueeze(-1)
        out = self.gate(n).unsqueeze(-1) * e + w * self.logq
        if k is not None:
            gate = torch.exp(self.cf_knn_gate[0] + knn_offset + (self.cf_knn_gate[1] + knn_slope) * log_n)
            out = out + gate.unsqueeze(-1) * k
        return out

    def _item_side(self, items: Features) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The user-independent item parts: ``v [T, N, dim]``, ``b [T, N, 1]``, the ranking item term."""
        m = self.model
        f = m.item_encoder(items)
        return m.item_tower(f), m.item_bias(f), self.rank_item(f).squeeze(-1) if self.separate_rank else None

    def _outputs(self, u: torch.Tensor, items: Features, rank: bool) -> torch.Tensor:
        m = self.model
        v, b, r = self._item_cache(self, items, self._item_side)  # one pass per catalogue when serving
        u = u.unsqueeze(-2)
        out = m.head[-1](torch.cat([u * v, b], dim=-1)).squeeze(-1)
        if rank and self.separate_rank:
            out = out + (self.rank_user(u) * v).sum(-1) + r
        return out

    def score(self, state, item_ids: torch.Tensor, items: Features) -> torch.Tensor:
        return self._outputs(state[0] if isinstance(state, tuple) else state, items, rank=False)

    def rank_score(self, state, item_ids: torch.Tensor, items: Features) -> torch.Tensor:
        if not isinstance(state, tuple):
            return self._outputs(state, items, rank=True)
        u, prior = state
        return self.cf_mix * self._outputs(u, items, rank=True) + prior.gather(1, item_ids.to(prior.device).expand(prior.shape[0], -1))

    def in_batch_softmax(self, u: torch.Tensor, batch: EpisodeBatch) -> torch.Tensor:
        """Each task's relevant query items against every other task's query items (log-Q corrected):
        mean over tasks with a relevant item of the mean over those items of ``lse(allowed) - s_pos``."""
        ids, items = batch.query()
        _, y, m = batch.part("query")
        t, q = ids.shape
        flat_ids, valid = ids.reshape(-1), m.reshape(-1)
        flat = Features(items.categorical.reshape(t * q, -1), items.multihot.reshape(t * q, -1))
        logits = self.rank_score(u, None, flat.for_tasks(t)) - self.logq[flat_ids]  # [T, T*Q]
        own = torch.zeros(t, t * q, dtype=torch.bool, device=ids.device)
        own.view(t, t, q)[torch.arange(t), torch.arange(t)] = m
        every = torch.cat([batch.item_ids[:, : batch.n_support], ids], dim=1)  # the task's own items
        seen = (flat_ids[None, :, None] == every[:, None, :]).any(-1) & ~own  # accidental hits
        allowed = valid[None, :] & ~seen
        relevant = (y > 0.5) if self.ctx.binary_labels else (y >= self.ctx.relevance_threshold)
        pos = torch.zeros_like(own)
        pos.view(t, t, q)[torch.arange(t), torch.arange(t)] = m & relevant
        lse = torch.logsumexp(logits.masked_fill(~allowed, -1e9), dim=-1, keepdim=True)
        per_task = ((lse - logits) * pos).sum(-1) / pos.sum(-1).clamp_min(1)
        has = pos.any(-1)
        return per_task[has].mean() if has.any() else logits.sum() * 0.0

    def catalogue_items(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v [I, dim], c [I])``: every catalogue item's vector and the user-independent part of its
        ranking score (output-layer bias and item bias, plus the ranking item term on explicit data)."""
        m, items = self.model, self.ctx.all_items
        f = m.item_encoder(Features(items.categorical.to(device), items.multihot.to(device)))  # [I, E]
        out = m.head[-1]
        c = out.weight[0, self.dim] * m.item_bias(f).squeeze(-1) + out.bias[0]
        if self.separate_rank:
            c = c + self.rank_item(f).squeeze(-1)
        return m.item_tower(f), c

    def catalogue_logits(self, u: torch.Tensor, items: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``rank_score`` of every item of the catalogue for user vectors ``u [..., dim]`` -> ``[..., I]``,
        as one matrix product (the output layer ``Linear([u * v, b])`` is linear in ``v`` and ``b``);
        ``items``: ``catalogue_items``' result, when the caller already has it."""
        v, c = items if items is not None else self.catalogue_items(u.device)
        left = u * self.model.head[-1].weight[0, : self.dim]
        if self.separate_rank:
            left = left + self.rank_user(u)
        return left @ v.T + c

    def full_softmax(self, batch: EpisodeBatch) -> torch.Tensor:
        """The catalogue softmax: for each task, mean over its targets of ``lse(allowed) - s_target``;
        targets are the relevant query items (user vector from the whole support) and, with
        ``leave_one_out``, the relevant pooled support items (user vector from the rest of the support;
        at most ``loo_targets`` of them per task, at random).
        Allowed: existing items that are not pooled support items (a target's own item stays allowed)."""
        u0, v, keep, weight = self._support_parts(batch.user, batch.support())
        s = batch.n_support
        k = keep.to(v.dtype).unsqueeze(-1)
        wv = None if weight is None else v * k * weight.unsqueeze(-1)
        sum_v, sum_wv, n = (v * k).sum(-2), None if wv is None else wv.sum(-2), k.sum(-2)
        relevant = (batch.ratings > 0.5) if self.ctx.binary_labels else (batch.ratings >= self.ctx.relevance_threshold)
        n_items = self.ctx.new_item_mask.shape[0]
        ids = batch.item_ids
        pooled = torch.zeros(batch.n_tasks, n_items + 1, dtype=torch.bool, device=ids.device)
        pooled.scatter_(1, torch.where(keep, ids[:, :s], n_items), True)
        blocked = pooled[:, :n_items] | self.ctx.new_item_mask.to(ids.device)  # [T, I]
        u_list = [self._pooled(u0, sum_v, sum_wv, n).unsqueeze(1)]  # [T, 1, dim]: the query's user vector
        target_list = [ids[:, s:]]
        is_target = [batch.query_mask[:, s:] & relevant[:, s:]]
        entries = None
        if self.cfg.leave_one_out:  # formed for the support targets only (never for sampled negatives)
            targets = keep & relevant[:, :s] & (n > 1.5)  # a user with one item has no "rest"
            if self.cfg.loo_targets is not None:
                targets = self.at_most(targets, self.cfg.loo_targets)
            entries = entries_of(targets)
            pick, valid = entries.clamp_min(0), entries >= 0
            along = pick.unsqueeze(-1).expand(-1, -1, v.shape[-1])
            k_e = k.gather(1, pick.unsqueeze(-1)) * valid.unsqueeze(-1)
            rest_wv = None if wv is None else sum_wv.unsqueeze(1) - wv.gather(1, along) * valid.unsqueeze(-1)
            u_list.append(self._pooled(u0.unsqueeze(1), sum_v.unsqueeze(1) - v.gather(1, along) * k_e, rest_wv,
                                       n.unsqueeze(1) - k_e))
            target_list.append(ids[:, :s].gather(1, pick))
            is_target.append(targets.gather(1, pick) & valid)
        priors = self.training_priors(batch, entries) if self.cf is not None else [0.0] * len(u_list)
        losses, counts = [], []
        catalogue = self.catalogue_items(ids.device)  # once per meta-step, for the query and leave-one-out targets
        for u, tgt, pos, prior in zip(u_list, target_list, is_target, priors):
            logits = self.catalogue_logits(u, catalogue)
            if self.cf is not None:
                logits = self.cf_mix * logits + prior
            logits = logits.expand(-1, tgt.shape[1], -1)  # [T, P, I]
            mask = blocked.unsqueeze(1).expand_as(logits).clone()
            safe = torch.where(pos, tgt, 0)
            mask.scatter_(2, safe.unsqueeze(-1), ~pos.unsqueeze(-1) & mask.gather(2, safe.unsqueeze(-1)))
            allowed = logits.masked_fill(mask, float("-inf"))
            picked = logits.gather(2, safe.unsqueeze(-1)).squeeze(-1)
            if self.cfg.rank_loss == "recall":
                per_target = self.smooth_miss(allowed, picked)
            else:
                per_target = torch.logsumexp(allowed, dim=-1) - picked
            losses.append((per_target * pos).sum(-1))
            counts.append(pos.sum(-1))
        total, count = sum(losses), sum(counts)
        has = count > 0
        return (total[has] / count[has]).mean() if has.any() else total.sum() * 0.0

    @staticmethod
    def at_most(mask: torch.Tensor, cap: int) -> torch.Tensor:
        """``mask [T, S]`` with at most ``cap`` true entries per row kept, a uniformly random subset (each
        meta-step draws anew; the cost of the catalogue terms grows with the number of targets)."""
        if mask.shape[1] <= cap:
            return mask
        draw = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, 2.0)
        kth = draw.kthvalue(cap, dim=1, keepdim=True).values
        return mask & (draw <= kth)

    def smooth_miss(self, allowed: torch.Tensor, picked: torch.Tensor) -> torch.Tensor:
        """``1 - smooth hit@K`` per target: ``r = sum_j sigmoid((l_j - l_target) / temperature)`` over the
        allowed items other than the target (a smooth count of the items ranked above it) and
        ``hit = sigmoid(K - 1/2 - r)`` (ApproxNDCG-style, Qin et al. 2010). Targets far outside the top K
        pass almost no gradient: the objective is the top of the list, as Recall@K is.

        The count sharpens as the logits grow, so with learned scales (the prior's gates) this loss alone
        drives them up until the sigmoids saturate and the gradient is gone — training then jumps between
        whichever term dominates. ``rank_norm=std`` measures the differences in units of each list's
        standard deviation over its allowed items (not detached): the loss no longer depends on the
        logits' overall scale, only on their order and relative spacing, and ``rank_temperature`` is in
        those units."""
        if self.cfg.rank_norm != "std":  # blocked items are -inf: sigmoid 0, gradient 0
            above = torch.sigmoid((allowed - picked.unsqueeze(-1)) / self.cfg.rank_temperature).sum(-1) - 0.5
            return 1.0 - torch.sigmoid(self.cfg.rank_k - 0.5 - above)
        finite = torch.isfinite(allowed)  # blocked items left out (dividing -inf by the deviation: 0 * inf backward)
        values = allowed.masked_fill(~finite, 0.0)
        count = finite.sum(-1, keepdim=True).clamp_min(2)
        mean = values.sum(-1, keepdim=True) / count
        var = ((values - mean).square() * finite).sum(-1, keepdim=True) / (count - 1)
        diff = (values - picked.unsqueeze(-1)) / (var + 1e-12).sqrt()
        above = (torch.sigmoid(diff / self.cfg.rank_temperature) * finite).sum(-1) - 0.5
        return 1.0 - torch.sigmoid(self.cfg.rank_k - 0.5 - above)

    def configure_optimizers(self):
        if self.cf is None:
            return super().configure_optimizers()
        scalars = [self.cf_gate, self.cf_pop, self.cf_mix, *self.cf.parameters()]
        if self.knn is not None:
            scalars.append(self.cf_knn_gate)
        ids = {id(p) for p in scalars}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return torch.optim.Adam([{"params": rest},
                                 {"params": scalars, "lr": self.lr * self.cfg.cf_lr_scale, "weight_decay": 0.0}],
                                lr=self.lr, weight_decay=self.weight_decay)

    def training_priors(self, batch: EpisodeBatch, entries: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The gated leave-user-out prior scores ``[T, 1, I]`` for the query targets and, with
        ``leave_one_out``, ``[T, P, I]`` for each support entry of ``entries [T, P]`` (indices into the
        support, -1: padding; ``None``: every support entry) from the rest of the profile."""
        support = batch.support()
        loo = self.cfg.leave_one_out
        if loo and entries is None:
            entries = torch.arange(batch.n_support, device=support.item_ids.device).expand(batch.n_tasks, -1)
        rest_of = entries if loo else None
        k, k_rest = self.knn.fold_in(support, batch.user_ids, rest_of) if self.knn is not None else (None, None)
        if not loo:
            e, n = self.cf.fold_in(support, batch.user_ids)
            return [self.prior_logits(e, n, k).unsqueeze(1)]
        e, n, rest, rest_n = self.cf.fold_in_leave_one_out(support, batch.user_ids, entries)
        return [self.prior_logits(e, n, k).unsqueeze(1), self.prior_logits(rest, rest_n, k_rest)]

    def training_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.user_vector(batch.user, batch.support())
        out = self.score(u, *batch.query())
        _, y, m = batch.part("query")
        loss = self.cfg.rating_weight * self.loss_fn(out, y.to(out.dtype), m).mean()
        if self.cfg.rank_weight > 0:
            rank = self.full_softmax(batch) if self.cfg.rank_loss in CATALOGUE_LOSSES else self.in_batch_softmax(u, batch)
            loss = loss + self.cfg.rank_weight * rank
        return loss, out


__all__ = ["FISM", "FISMConfig"]
