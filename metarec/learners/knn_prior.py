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
        self._kept: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # own_neighbours' per-user cache

    def rows(self, cols: torch.Tensor, x: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """``sim(i, :)`` ``[T, S, C]`` for each support column ``i`` (zero where ``cols`` is -1), with each
        task's training row ``x [T, C]`` taken out of the co-occurrences (and of the neighbour sets of the
        user's own items, ``own_neighbours``; ``users [T]``: the tasks' user ids, which key its cache)."""
        safe = cols.clamp_min(0)
        xi = x.gather(1, safe)  # [T, S]
        g = self.G[safe] - xi.unsqueeze(-1) * x.unsqueeze(1)
        norm = torch.sqrt((self.counts[safe] - xi).clamp_min(0).unsqueeze(-1)
                          * (self.counts - x).clamp_min(0).unsqueeze(1)) + self.shrink
        sim = torch.where(norm > 0, g / norm.clamp_min(1e-12), 0.0)
        return sim * (self.own_neighbours(safe, x, users) & (cols >= 0).unsqueeze(-1))

    def _candidates(self, g: torch.Tensor, c_l: torch.Tensor, x_l: torch.Tensor, c_j: torch.Tensor,
                    x_j: torch.Tensor) -> torch.Tensor:
        """The similarity of items ``l`` to items ``j`` without the user's row, from their co-occurrences
        ``g`` and counts ``c`` (all broadcast together); ``-inf`` where ``l`` is no candidate neighbour of
        ``j`` (no co-occurrence without the user). One formula for the thresholds and for the support items
        tested against them, so equal similarities are bitwise equal (ties are decided by index)."""
        g = g - x_l * x_j
        norm = torch.sqrt((c_l - x_l).clamp_min(0) * (c_j - x_j).clamp_min(0)) + self.shrink
        sim = torch.where(norm > 0, g / norm.clamp_min(1e-12), 0.0)
        return sim.masked_fill(~(g > 0), float("-inf"))

    def _thresholds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """For each row of ``x [T, C]`` (a training user's items) and each of its items ``j``: ``(j [T, U],
        v [T, U], last [T, U], valid [T, U])`` — the similarity of ``j``'s ``neighbours``-th neighbour without
        the user and that neighbour's index (ties to the lower index, as ``cosine_neighbours``); ``v`` is
        ``-inf`` where ``j`` has fewer candidates (then every candidate is one). Where a user holds fewer items
        than the widest row, ``j`` is padded with other columns (``valid`` false)."""
        own = x > 0
        t, c = x.shape
        width = max(int(own.sum(1).max()), 1)
        j = torch.argsort((~own).to(torch.int8), dim=1, stable=True)[:, :width]  # own columns first, ascending
        x_j = x.gather(1, j).unsqueeze(-1)
        sim = self._candidates(self.G[j], self.counts, x.unsqueeze(1), self.counts[j].unsqueeze(-1), x_j)
        sim = sim.masked_fill(torch.arange(c, device=x.device) == j.unsqueeze(-1), float("-inf"))  # l = j
        k = min(self.neighbours, c)
        v = sim.topk(k, dim=-1, sorted=False).values.amin(-1, keepdim=True)  # the k-th largest, with repeats
        slots = k - (sim > v).sum(-1, keepdim=True)  # how many of the ties at v are neighbours
        ties = (sim == v).cumsum(-1, dtype=torch.int32)  # ties are taken in index order
        last = (ties >= slots).to(torch.int8).argmax(-1)  # the first column reaching the slots-th tie
        return j, v.squeeze(-1), last, own.gather(1, j)

    def own_neighbours(self, safe: torch.Tensor, x: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """``[T, S, C]`` bool: whether support item ``i`` is among item ``j``'s neighbours. For the columns of
        a training user's own items (``x_j = 1``: every query and leave-one-out target is one) the
        neighbour set is recomputed without the user's row, exactly as ``cosine_neighbours`` would on the
        other users (top ``neighbours`` by similarity, non-zero co-occurrence, ties to the lower index):
        with the user's row a target's neighbours are chosen partly *because* the user holds both items,
        which made ItemKNN look better on training episodes than for new users. Other columns keep the
        neighbour sets of all training users (the user's row changes them only through the counts).

        The thresholds depend on the user alone, so with ``users`` (the tasks' user ids) they are computed
        once per training user and kept (``[U]`` numbers per user; the ``[T, U, C]`` similarities they come
        from cost most of a training step on a large catalogue)."""
        mask = self.mask[safe]  # [T, S, C]
        own = x > 0
        if not bool(own.any()):
            return mask
        t, c = x.shape
        j, v, last, has = self._cached_thresholds(x, users)
        x_l, x_j = x.gather(1, safe).unsqueeze(1), x.gather(1, j).unsqueeze(-1)
        s_i = self._candidates(self.G[j.unsqueeze(-1), safe.unsqueeze(1)], self.counts[safe].unsqueeze(1), x_l,
                               self.counts[j].unsqueeze(-1), x_j)  # [T, U, S]: support item i in column j
        s_i = s_i.masked_fill(safe.unsqueeze(1) == j.unsqueeze(-1), float("-inf"))
        v, last = v.unsqueeze(-1), last.unsqueeze(-1)
        # fewer than k candidates: v is -inf and every candidate (finite entry) is a neighbour
        member = torch.isfinite(s_i) & ((s_i > v) | ((s_i == v) & (safe.unsqueeze(1) <= last)))
        target = torch.where(has, j, c).unsqueeze(1).expand(-1, safe.shape[1], -1)  # padding: a spare column
        out = torch.cat([mask, mask.new_zeros(*mask.shape[:2], 1)], dim=-1)
        out.scatter_(2, target, member.transpose(1, 2))
        return out[..., :c]

    def _cached_thresholds(self, x: torch.Tensor, users: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """``_thresholds(x)``, from the per-user cache where ``users`` is given (training users' rows of ``X``
        never change within a run); rows without a user id are computed each time."""
        if users is None:
            return self._thresholds(x)
        ids = users.tolist()
        missing = sorted({u for u, row in zip(ids, x) if u not in self._kept and bool(row.any())})
        if missing:
            at = [ids.index(u) for u in missing]
            j, v, last, valid = self._thresholds(x[at])
            for r, u in enumerate(missing):
                n = int(valid[r].sum())  # the valid entries come first
                self._kept[u] = (j[r, :n].clone(), v[r, :n].clone(), last[r, :n].clone())
        empty = (x.new_zeros(0, dtype=torch.long), x.new_zeros(0), x.new_zeros(0, dtype=torch.long))
        parts = [self._kept[u] if bool(row.any()) else empty for u, row in zip(ids, x)]
        width = max(max(len(p[0]) for p in parts), 1)

        def pad(i: int, fill: float) -> torch.Tensor:
            return torch.stack([nn.functional.pad(p[i].to(x.device), (0, width - len(p[i])), value=fill) for p in parts])

        valid = torch.arange(width, device=x.device) < torch.tensor([len(p[0]) for p in parts], device=x.device).unsqueeze(-1)
        return pad(0, 0), pad(1, float("-inf")), pad(2, 0), valid

    def fold_in(self, support: Support, user_ids: torch.Tensor | None = None,
                rest_of: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(scores [T, I], rest [T, P, I] or None)``: each task's ItemKNN scores of the catalogue for the
        EASE prior's profile (leave-user-out for training users), and for each support entry of ``rest_of
        [T, P]`` (indices into the support, -1: padding) the scores from the rest of the profile."""
        ease = self.ease[0]
        x = ease.training_rows(user_ids, support.n_tasks)
        cols = ease.columns(support.item_ids, ease.positives(support), ease.alone(x))  # the EASE prior's profile
        weight = ease.weights(support)
        w = (cols >= 0).to(ease.P.dtype) if weight is None else weight.to(ease.P.dtype) * (cols >= 0)

        def contributions(entries: torch.Tensor) -> torch.Tensor:  # [T, P, C]: w_i sim(i, :) per entry
            pick = entries.clamp_min(0)
            picked = torch.where(entries >= 0, cols.gather(1, pick), -1)
            return self.rows(picked, x, user_ids) * (w.gather(1, pick) * (entries >= 0)).unsqueeze(-1)

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
