"""ItemKNN fold-in scores as a second prior term of a meta-trained ranker (``fism cf_knn=true``), next to
EASE's (``metarec.learners.ease_prior``), with the same profile (which support items are folded in, and
their weights) and the same care for training episodes.

The ``itemknn`` learner's shrunk cosine of two covered items over the training users' interactions ``X``,

    sim(i, j) = G_ij / (sqrt(c_i c_j) + shrink),   G = X^T X,  c = diag(G),

kept where ``i`` is among ``j``'s ``neighbours`` most similar items (``N(j)``), scores item ``j`` for a
profile ``s`` as ``sum_i s_i sim(i, j)``. For a **training** episode the similarities are recomputed
without the user's own row ``x`` — ``G_ij - x_i x_j`` and ``c_i - x_i`` — so the term is meta-trained on
scores of the kind a new user gets. The neighbour sets ``N(j)`` of the user's own items ``j`` (every query
and leave-one-out target is one) are recomputed without the user too: with the user's row, ``i`` can be in
``N(j)`` only because this user holds both, and on Last.fm 2K that leak made an ItemKNN-heavy mix look
best on training episodes while EASE-heavier mixes are best for new users. The other columns keep the
neighbour sets of all training users (there the user's row only lowers the counts ``c_i``; an
approximation). Validation and test users get exactly the
``itemknn`` learner's fold-in. Only the support items' rows are formed (``[T, S, C]``); ``G`` is dense
float32 over the covered items (``C^2 x 4`` bytes plus a ``C^2`` neighbour mask), rebuilt when a run is
loaded. Only the folded-in entries' rows are formed, once: the leave-one-out scores of the entries asked for
(the training targets; never the sampled negatives) take their row out of the sum.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from metarec.data.episodes import Support
from metarec.errors import ConfigError
from metarec.learners.ease_prior import MAX_BYTES, EasePrior, entries_of
from metarec.learners.itemknn import ItemKNNConfig, cosine_neighbours


class KnnPrior(nn.Module):
    def __init__(self, ease: EasePrior, label: str, neighbours: int | None = None, shrink: float | None = None) -> None:
        super().__init__()
        defaults = ItemKNNConfig()
        self.neighbours = int(defaults.neighbours if neighbours is None else neighbours)
        self.shrink = float(defaults.shrink if shrink is None else shrink)
        ItemKNNConfig(neighbours=self.neighbours, shrink=self.shrink)  # the itemknn learner's checks
        self.ease = [ease]  # not a submodule: its parameters and buffers belong to the owner
        c = int(ease.P.shape[0])
        if c * c * 5 > MAX_BYTES:
            raise ConfigError(f"learner {label}: cf_knn=true keeps the item x item co-occurrences dense: {c:,} covered "
                              f"items need {c * c * 5 / 2**30:.1f} GiB (limit {MAX_BYTES / 2**30:.0f} GiB); set "
                              f"learner.cf_knn=false")
        x = sp.csr_matrix(ease.X.cpu().numpy().astype(np.float64))
        gram = np.asarray((x.T @ x).todense(), dtype=np.float32)
        sim = cosine_neighbours(x, self.neighbours, self.shrink)
        mask = np.zeros((c, c), dtype=bool)
        mask[sim.nonzero()] = True
        self.register_buffer("G", torch.as_tensor(gram), persistent=False)
        self.register_buffer("counts", torch.as_tensor(np.diag(gram).copy()), persistent=False)
        self.register_buffer("mask", torch.as_tensor(mask), persistent=False)

    def rows(self, cols: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``sim(i, :)`` ``[T, S, C]`` for each support column ``i`` (zero where ``cols`` is -1), with each
        task's training row ``x [T, C]`` taken out of the co-occurrences (and of the neighbour sets of the
        user's own items, ``own_neighbours``)."""
        safe = cols.clamp_min(0)
        xi = x.gather(1, safe)  # [T, S]
        g = self.G[safe] - xi.unsqueeze(-1) * x.unsqueeze(1)
        norm = torch.sqrt((self.counts[safe] - xi).clamp_min(0).unsqueeze(-1)
                          * (self.counts - x).clamp_min(0).unsqueeze(1)) + self.shrink
        sim = torch.where(norm > 0, g / norm.clamp_min(1e-12), 0.0)
        return sim * (self.own_neighbours(safe, x) & (cols >= 0).unsqueeze(-1))

    def own_neighbours(self, safe: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``[T, S, C]`` bool: whether support item ``i`` is among item ``j``'s neighbours. For the columns of
        a training user's own items (``x_j = 1``: every query and leave-one-out target is one) the
        neighbour set is recomputed without the user's row, exactly as ``cosine_neighbours`` would on the
        other users (top ``neighbours`` by similarity, non-zero co-occurrence, ties to the lower index):
        with the user's row a target's neighbours are chosen partly *because* the user holds both items,
        which made ItemKNN look better on training episodes than for new users. Other columns keep the
        neighbour sets of all training users (the user's row changes them only through the counts)."""
        mask = self.mask[safe]  # [T, S, C]
        own = x > 0
        if not bool(own.any()):
            return mask
        t, c = x.shape
        width = int(own.sum(1).max())
        order = torch.argsort((~own).to(torch.int8), dim=1, stable=True)[:, :width]  # [T, U]: own columns first
        has = own.gather(1, order)
        j = order  # the recomputed columns (padded with others where a user holds fewer)
        xj = x.gather(1, j)  # 1 where has
        g = self.G[j] - x.unsqueeze(1) * xj.unsqueeze(-1)  # [T, U, C]: co-occurrence of l with j, without the user
        norm = torch.sqrt((self.counts - x).clamp_min(0).unsqueeze(1) * (self.counts[j] - xj).clamp_min(0).unsqueeze(-1)) + self.shrink
        sim = torch.where(norm > 0, g / norm.clamp_min(1e-12), 0.0)
        valid = (g > 0) & (torch.arange(c, device=x.device) != j.unsqueeze(-1))
        sim = sim.masked_fill(~valid, float("-inf"))
        k = min(self.neighbours, c)
        values, index = torch.sort(sim, dim=-1, descending=True, stable=True)  # ties: lower index first
        v_k, i_k = values[..., k - 1 : k], index[..., k - 1 : k]  # [T, U, 1]: the last neighbour
        s_i = sim.gather(2, safe.unsqueeze(1).expand(-1, width, -1))  # [T, U, S]: support item i in column j
        # fewer than k valid entries: v_k is -inf and every valid (finite) entry is a neighbour
        member = torch.isfinite(s_i) & ((s_i > v_k) | ((s_i == v_k) & (safe.unsqueeze(1) <= i_k)))
        target = torch.where(has, j, c).unsqueeze(1).expand(-1, safe.shape[1], -1)  # padding: a spare column
        out = torch.cat([mask, mask.new_zeros(*mask.shape[:2], 1)], dim=-1)
        out.scatter_(2, target, member.transpose(1, 2))
        return out[..., :c]

    def fold_in(self, support: Support, user_ids: torch.Tensor | None = None,
                rest_of: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(scores [T, I], rest [T, P, I] or None)``: each task's ItemKNN scores of the catalogue for the
        EASE prior's profile (leave-user-out for training users), and for each support entry of ``rest_of
        [T, P]`` (indices into the support, -1: padding) the scores from the rest of the profile."""
        ease = self.ease[0]
        keep = ease.positives(support)
        cols = torch.where(keep, ease.column[support.item_ids], -1)
        weight = ease.weights(support)
        w = (cols >= 0).to(ease.P.dtype) if weight is None else weight.to(ease.P.dtype) * (cols >= 0)
        x = ease.training_rows(user_ids, support.n_tasks)

        def contributions(entries: torch.Tensor) -> torch.Tensor:  # [T, P, C]: w_i sim(i, :) per entry
            pick = entries.clamp_min(0)
            picked = torch.where(entries >= 0, cols.gather(1, pick), -1)
            return self.rows(picked, x) * (w.gather(1, pick) * (entries >= 0)).unsqueeze(-1)

        folded = entries_of(cols >= 0)  # [T, F]: only the folded-in entries' rows are formed, once
        rows = contributions(folded)
        scores = rows.sum(1)
        if rest_of is None:
            return ease.to_catalogue(scores), None
        t, s = cols.shape
        at = torch.full((t, s + 1), -1, dtype=torch.long, device=cols.device)  # support entry -> its row in `rows`
        at.scatter_(1, torch.where(folded >= 0, folded, s), torch.arange(folded.shape[1], device=cols.device).expand(t, -1))
        row = torch.where(rest_of >= 0, at[:, :s].gather(1, rest_of.clamp_min(0)), -1)  # -1: not folded in, nothing to take out
        taken = rows.gather(1, row.clamp_min(0).unsqueeze(-1).expand(-1, -1, rows.shape[-1])) * (row >= 0).unsqueeze(-1)
        return ease.to_catalogue(scores), ease.to_catalogue(scores.unsqueeze(1) - taken)


__all__ = ["KnnPrior"]
