"""EASE fold-in scores as a prior term of a meta-trained ranker (``fism cf_prior=ease``).

A learner that adds an item-item fold-in score to its own ranking logits must not be meta-trained on
scores that have already seen the episode: EASE's weights ``B`` are fitted on the training users' rows, so
for a *training* episode they encode this very user's query items (a stacking leak — the learner would
learn to trust them far more than it should for a new user). This module gives the exact
**leave-user-out** EASE for a training episode by a rank-one (Sherman–Morrison) downdate of
``P = (X^T X + l2 I)^-1``: with ``x`` the training user's row of ``X``,

    P' = P + (P x)(P x)^T / d,   d = 1 - x^T P x,    B' = I - P' diagMat(1 / diag(P')),

so a support profile ``s`` (its relevant items, binary) scores the covered items

    s B' = s - (s P') / diag(P'),   s P' = s P + (s . P x) P x / d,   diag(P') = diag(P) + (P x)^2 / d,

and the profile without one of its items ``j`` scores ``s B' - s_j B'[j, :]`` (linear in ``s``), with
``B'[j, :] = e_j - P'[j, :] / diag(P')``. Users outside ``X`` (validation and test users) get ``x = 0``:
plain EASE, exactly what the ``ease`` learner computes for them.

Items that no other training user holds (``alone``) are, without the user's row, what an item no
training user holds is to a new user: not covered. They are not folded in (nor counted in ``n``) and
score exactly 0. In exact arithmetic their ``B'`` rows and columns are zero anyway, but the float32
downdate leaves a residue of ``P``'s entries — and ``P`` ties exactly those items to the user's own
items. On Last.fm 2K (12% of a user's artists are held by no other training user) a training episode
whose one support item was such an artist ranked the user's own query items by that residue: EASE's
leave-user-out Recall@10 at one support item was 0.128 on training episodes against 0.073 for new
users and for EASE refitted without the episodes' users.

The profile ``s`` (``fold``): the support's relevant items with entries 1, as ``ease`` folds them in; or
(``fold=rated``, explicit ratings only) every rated support item with a **learned weight per rating
level** (ratings rounded to the nearest whole level of the rating range), starting at the relevant-items
rule (1 for levels >= ``relevance_threshold``, else 0) — at small supports most of the few ratings are
below the threshold, and that the user rated an item at all says what they watch. On implicit feedback
``rated`` folds in the positives, as ``relevant`` does.

``X``, the covered items and ``l2`` are the ``ease`` learner's own (``metarec.learners.ease``; ``l2``
chosen on the validation users only, unless given). ``P`` is kept dense in float32 over the covered items:
``C^2 x 4`` bytes (ml-100k: ~1.4k items, 8 MB; Last.fm 2K: ~12k items, ~0.6 GB), rebuilt from the data
when a run is loaded (it is not saved in checkpoints).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from metarec.data.episodes import Support
from metarec.errors import ConfigError
from metarec.learners.base import LearnerContext
from metarec.learners.foldin import support_positives
from metarec.models.base import BaseRecommender

MAX_BYTES = 4 * 2**30  # P (C x C, float32) above this is refused with one line


def entries_of(mask: torch.Tensor) -> torch.Tensor:
    """``[T, P]`` (long): the indices of each row's true entries of ``mask [T, S]``, in order, padded with
    -1 (``P``: the most true entries of a row, at least 1). Leave-one-out terms are formed for these only —
    under sampled negatives most support entries are negatives, which are never targets."""
    width = max(int(mask.sum(1).max()) if mask.numel() else 0, 1)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]
    return torch.where(mask.gather(1, order), order, -1)


FOLDS = ("relevant", "rated")


class EasePrior(nn.Module):
    def __init__(self, model: BaseRecommender, ctx: LearnerContext, l2: float | None = None,
                 fold: str = "relevant") -> None:
        super().__init__()
        from metarec.learners.ease import EASE, EASEConfig

        if fold not in FOLDS:
            raise ConfigError(f"learner.cf_fold must be one of {', '.join(FOLDS)}, got {fold!r}")
        if ctx.binary_labels or ctx.interactions_only:
            fold = "relevant"  # implicit feedback: no rating levels to weigh; the positives are folded in

        ease = EASE(model, ctx, EASEConfig(l2=l2))  # X, covered items, l2 (relevant fold-in, validation users only)
        self.l2 = float(ease.chosen_l2)
        self.l2_scores = dict(ease.l2_scores)
        self.ctx = ctx
        c = len(ease.covered)
        if c * c * 4 > MAX_BYTES:
            raise ConfigError(f"learner {ctx.label}: cf_prior=ease keeps EASE's item x item matrix dense: {c:,} covered "
                              f"items need {c * c * 4 / 2**30:.1f} GiB (limit {MAX_BYTES / 2**30:.0f} GiB); use "
                              f"cf_prior=none, or fewer items (data.split.min_ratings, a smaller catalogue)")
        v, w = ease.V, ease.w
        p = np.eye(len(ease.covered)) / self.l2 - (v * w) @ v.T
        self.register_buffer("P", torch.as_tensor(p, dtype=torch.float32), persistent=False)
        self.register_buffer("diag_p", torch.as_tensor(np.diag(p).copy(), dtype=torch.float32), persistent=False)
        self.register_buffer("covered", torch.as_tensor(ease.covered, dtype=torch.long), persistent=False)
        self.register_buffer("column", torch.as_tensor(ease.column, dtype=torch.long), persistent=False)
        users = np.array(sorted(ctx.train_pool), dtype=np.int64)  # X's rows, in this order (FoldIn)
        row_of = np.full(int(users.max()) + 1 if len(users) else 0, -1, dtype=np.int64)
        row_of[users] = np.arange(len(users))
        self.register_buffer("row_of", torch.as_tensor(row_of), persistent=False)
        self.register_buffer("X", torch.as_tensor(ease.X.toarray(), dtype=torch.bool), persistent=False)
        self.register_buffer("holders", torch.as_tensor(np.asarray(ease.X.sum(0)).ravel(), dtype=torch.float32),
                             persistent=False)  # training users holding each covered item
        self.n_items = int(ctx.n_items)
        self.fold = fold
        if fold == "rated":  # a learned weight per rating level, from the relevant-items rule (1 if >= threshold)
            lo, hi = ctx.rating_range
            levels = np.arange(math.floor(lo), math.ceil(hi) + 1, dtype=np.float64)
            self.register_buffer("levels", torch.as_tensor(levels, dtype=torch.float32), persistent=False)
            self.level_weight = nn.Parameter(torch.as_tensor((levels >= ctx.relevance_threshold).astype(np.float32)))

    # ---------------------------------------------------------------- pieces
    def positives(self, support: Support) -> torch.Tensor:
        """Bool ``[T, S]``: the support items folded in — as the ``ease`` learner folds them in, or with
        ``fold=rated`` every rated item."""
        return support_positives(self.ctx, support, self.fold)

    def weights(self, support: Support) -> torch.Tensor | None:
        """``[T, S]``: with ``fold=rated``, each support item's entry in the profile, the learned weight of
        its rating level (ratings rounded to the nearest level); else None (entries 1)."""
        if self.fold != "rated":
            return None
        level = torch.bucketize(support.ratings.to(self.levels.dtype).contiguous(), (self.levels[1:] + self.levels[:-1]) / 2)
        return self.level_weight[level]

    def alone(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, C]`` bool: the covered items that no training user but the task's own (row ``x``) holds —
        uncovered once that row is left out (none for users outside ``X``)."""
        return (x > 0) & (self.holders - x <= 0)

    def columns(self, item_ids: torch.Tensor, keep: torch.Tensor, alone: torch.Tensor | None = None) -> torch.Tensor:
        """``[T, S]``: each support item's column, -1 where it is not kept, not covered, or (``alone``
        ``[T, C]``) held by no other training user."""
        cols = torch.where(keep, self.column[item_ids], -1)
        if alone is not None:
            cols = torch.where(alone.gather(1, cols.clamp_min(0)), -1, cols)
        return cols

    def profile(self, item_ids: torch.Tensor, keep: torch.Tensor, weight: torch.Tensor | None = None,
                alone: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s [T, C], cols [T, S])``: covered-item rows of the kept support items (entries 1, or
        ``weight``) and each support item's column (``columns``)."""
        cols = self.columns(item_ids, keep, alone)
        c = self.P.shape[0]
        s = torch.zeros(item_ids.shape[0], c + 1, device=item_ids.device, dtype=self.P.dtype)
        if weight is None:
            s = s.scatter(1, torch.where(cols >= 0, cols, c), 1.0)
        else:
            s = s.scatter_add(1, torch.where(cols >= 0, cols, c), weight.to(s.dtype) * (cols >= 0))
        return s[:, :c], cols

    def downdate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P x [T, C], d [T])`` for each task's training row ``x [T, C]`` (``training_rows``)."""
        if not bool(x.any()):
            return torch.zeros_like(x), x.new_ones(x.shape[0])
        px = x @ self.P
        return px, 1.0 - (x * px).sum(-1)

    def training_rows(self, user_ids: torch.Tensor | None, t: int) -> torch.Tensor:
        """``[T, C]`` (0/1, ``P``'s dtype): each task's row of ``X`` — zero for users outside ``X`` or when
        ``user_ids`` is None."""
        if user_ids is None or self.X.shape[0] == 0:
            return self.P.new_zeros(t, self.P.shape[0])
        ids = user_ids.to(self.row_of.device)
        inside = (ids >= 0) & (ids < self.row_of.shape[0])
        rows = torch.where(inside, self.row_of[ids.clamp(0, max(self.row_of.shape[0] - 1, 0))], -1)
        return torch.where((rows >= 0).unsqueeze(-1), self.X[rows.clamp_min(0)], False).to(self.P.dtype)

    def scores(self, s: torch.Tensor, px: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s B' [T, C], diag(P') [T, C])``."""
        diag = self.diag_p + px**2 / d.unsqueeze(-1)
        sp = s @ self.P + ((s * px).sum(-1) / d).unsqueeze(-1) * px
        return s - sp / diag, diag

    def rows(self, cols: torch.Tensor, px: torch.Tensor, d: torch.Tensor, diag: torch.Tensor) -> torch.Tensor:
        """``B'[j, :]`` ``[T, S, C]`` for each support column ``j`` (zero rows where ``cols`` is -1)."""
        safe = cols.clamp_min(0)
        p_rows = self.P[safe] + (px.gather(1, safe) / d.unsqueeze(-1)).unsqueeze(-1) * px.unsqueeze(1)
        out = -p_rows / diag.unsqueeze(1)
        out.scatter_add_(2, safe.unsqueeze(-1), torch.ones_like(out[..., :1]))
        return out * (cols >= 0).unsqueeze(-1).to(out.dtype)

    def to_catalogue(self, covered_scores: torch.Tensor) -> torch.Tensor:
        """``[..., C]`` -> ``[..., I]`` (0 for items without a column)."""
        out = covered_scores.new_zeros(*covered_scores.shape[:-1], self.n_items)
        out[..., self.covered] = covered_scores
        return out

    # ---------------------------------------------------------------- uses
    def fold_in(self, support: Support, user_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores [T, I], n [T])``: each task's EASE scores of every item and its number of folded-in
        items; ``user_ids``: leave each training user's own row out of ``X`` (training episodes only)."""
        keep = self.positives(support)
        x = self.training_rows(user_ids, support.n_tasks)
        alone = self.alone(x)
        s, cols = self.profile(support.item_ids, keep, self.weights(support), alone)
        px, d = self.downdate(x)
        e, _ = self.scores(s, px, d)
        return self.to_catalogue(e.masked_fill(alone, 0.0)), (cols >= 0).sum(-1).to(e.dtype)

    def fold_in_leave_one_out(self, support: Support, user_ids: torch.Tensor | None,
                              entries: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """``(scores [T, I], n [T], rest [T, P, I], rest_n [T, P])``: as ``fold_in``, plus the scores from
        the rest of the profile of each support entry in ``entries [T, P]`` (indices into the support, -1:
        padding; ``None``: every entry, ``P = S``) — equal to ``scores`` for entries not folded in."""
        keep = self.positives(support)
        weight = self.weights(support)
        x = self.training_rows(user_ids, support.n_tasks)
        alone = self.alone(x)
        s, cols = self.profile(support.item_ids, keep, weight, alone)
        px, d = self.downdate(x)
        e, diag = self.scores(s, px, d)
        n = (cols >= 0).sum(-1).to(e.dtype)
        if entries is not None:
            pick = entries.clamp_min(0)
            cols = torch.where(entries >= 0, cols.gather(1, pick), -1)
            weight = None if weight is None else weight.gather(1, pick)
        rows = self.rows(cols, px, d, diag)
        rest = e.unsqueeze(1) - (rows if weight is None else rows * weight.unsqueeze(-1))
        rest_n = n.unsqueeze(1) - (cols >= 0).to(e.dtype)
        return (self.to_catalogue(e.masked_fill(alone, 0.0)), n,
                self.to_catalogue(rest.masked_fill(alone.unsqueeze(1), 0.0)), rest_n)


__all__ = ["EasePrior"]
