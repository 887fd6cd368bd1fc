"""ItemKNN fold-in scores as a second prior term of a meta-trained ranker (``fism cf_knn=true``), next to
EASE's (``metarec.learners.ease_prior``), with the same profile (which support items are folded in, and
their weights) and the same care for training episodes.

The ``itemknn`` learner's shrunk cosine of two covered items over the training users' interactions ``X``,

    sim(i, j) = G_ij / (sqrt(c_i c_j) + shrink),   G = X^T X,  c = diag(G),

kept where ``i`` is among ``j``'s ``neighbours`` most similar items (``N(j)``), scores item ``j`` for a
profile ``s`` as ``sum_i s_i sim(i, j)``. For a **training** episode the similarities are recomputed
without the user's own row ``x`` — ``G_ij - x_i x_j`` and ``c_i - x_i`` — so the term is meta-trained on
scores of the kind a new user gets (the neighbour sets ``N(j)`` stay those of all training users: an
approximation, the only place the user's row still counts). Validation and test users get exactly the
``itemknn`` learner's fold-in. Only the support items' rows are formed (``[T, S, C]``); ``G`` is dense
float32 over the covered items (``C^2 x 4`` bytes plus a ``C^2`` neighbour mask), rebuilt when a run is
loaded. Only the folded-in entries' rows are formed, and the leave-one-out rows only for the entries asked
for (the training targets; never the sampled negatives).
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
        task's training row ``x [T, C]`` taken out of the co-occurrences."""
        safe = cols.clamp_min(0)
        xi = x.gather(1, safe)  # [T, S]
        g = self.G[safe] - xi.unsqueeze(-1) * x.unsqueeze(1)
        norm = torch.sqrt((self.counts[safe] - xi).clamp_min(0).unsqueeze(-1)
                          * (self.counts - x).clamp_min(0).unsqueeze(1)) + self.shrink
        sim = torch.where(norm > 0, g / norm.clamp_min(1e-12), 0.0)
        return sim * (self.mask[safe] & (cols >= 0).unsqueeze(-1))

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

        scores = contributions(entries_of(cols >= 0)).sum(1)  # only the folded-in entries' rows are formed
        rest = None if rest_of is None else ease.to_catalogue(scores.unsqueeze(1) - contributions(rest_of))
        return ease.to_catalogue(scores), rest


__all__ = ["KnnPrior"]
