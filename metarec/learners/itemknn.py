"""``itemknn``: item-based collaborative filtering (Sarwar et al. 2001; Deshpande & Karypis 2004) with a
new user folded in from the support set. Not trained, no step on the new user.

From the training users' binary interaction matrix ``X`` (see ``metarec.learners.foldin`` for which
interactions count and for the content/popularity fallbacks), the shrunk cosine similarity of two
covered items ``i != j`` is

    sim(i, j) = (x_i . x_j) / (||x_i|| ||x_j|| + shrink)

(``x_i`` the item's column: co-occurrence count over the square root of the two items' counts, damped
for items seen by few users). For each item ``j`` only its ``neighbours`` most similar items are kept
(ties broken by item code, lower first): ``N(j)``. A user's score of ``j`` is the sum of the
similarities of the support positives among ``j``'s neighbours,

    score(j) = sum over support positives i in N(j) of sim(i, j).

The similarity matrix is sparse (at most ``neighbours`` entries per item, float64) over the covered
items only; building it needs the sparse co-occurrence matrix ``X^T X`` once per ``shrink``.

``neighbours`` and ``shrink``: fixed, or — where ``neighbours_grid`` and/or ``shrink_grid`` are set (the
learner's YAML sets both) — the pair with the best ``select_by`` on the **validation users only**, as
``ease`` chooses its ``l2`` (ties: the earlier pair, shrinks outer, neighbours inner); the choice and every
pair's score are kept in the hyperparameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import scipy.sparse as sp

from metarec.errors import ConfigError
from metarec.learners.base import LearnerContext
from metarec.learners.foldin import FoldIn, check_select_by
from metarec.models.base import BaseRecommender


@dataclass
class ItemKNNConfig:
    neighbours: int = 100  # similar items kept per item
    shrink: float = 10.0  # added to the cosine's denominator
    interactions: str = "relevant"  # explicit data: relevant (rating >= data.relevance_threshold) | all
    fold: str = "relevant"  # explicit data: fold in the support's relevant items | every rated item
    content_weight: float = 0.1  # new items: weight of their content similarity to the support positives
    popularity_tiebreak: bool = True  # rank_score: ties (e.g. score 0) ordered by training popularity
    neighbours_grid: Optional[list[int]] = None  # set: neighbours chosen from it on the validation users
    shrink_grid: Optional[list[float]] = None  # set: shrink chosen from it on the validation users
    select_by: str = "recall@10"  # recall@K | ndcg@K on the validation users (where a grid is set)
    select_sizes: Optional[list[int]] = None  # also score the validation supports cut to these sizes (mean with the full one)

    def __post_init__(self) -> None:
        for k in [self.neighbours, *_grid(self.neighbours_grid, "neighbours_grid")]:
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
                raise ConfigError(f"learner.neighbours (and neighbours_grid) must be integers >= 1, got {k!r}")
        for s in [self.shrink, *_grid(self.shrink_grid, "shrink_grid")]:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not np.isfinite(s) or s < 0:
                raise ConfigError(f"learner.shrink (and shrink_grid) must be finite numbers >= 0, got {s!r}")
        check_select_by(self.select_by, self.select_sizes)

    def candidates(self) -> list[tuple[int, float]]:
        """The (neighbours, shrink) pairs to choose from, shrinks outer (one co-occurrence pass each)."""
        return [(int(k), float(s)) for s in (self.shrink_grid or [self.shrink])
                for k in (self.neighbours_grid or [self.neighbours])]


def _grid(values, name: str) -> list:
    if values is None:
        return []
    if not isinstance(values, (list, tuple)) or not values:
        raise ConfigError(f"learner.{name} must be a non-empty list or null, got {values!r}")
    return list(values)


def cosine_neighbours(x: sp.csr_matrix, neighbours: int, shrink: float) -> sp.csr_matrix:
    """``[C, C]`` CSR: entry ``(i, j)`` is ``sim(i, j)`` if ``i`` is among ``j``'s ``neighbours`` most
    similar items (diagonal excluded; ties by lower ``i``), else absent."""
    return ranked_similarities(x, shrink)(neighbours)


def ranked_similarities(x: sp.csr_matrix, shrink: float):
    """``cosine_neighbours`` for one ``shrink`` as a function of ``neighbours``: the co-occurrences are
    counted and ranked once, each call keeps the top ``neighbours`` per item."""
    x = sp.csr_matrix(x, dtype=np.float64)
    n = x.shape[1]
    gram = (x.T @ x).tocoo()
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())
    off = (gram.row != gram.col) & (gram.data != 0)
    row, col, dot = gram.row[off].astype(np.int64), gram.col[off].astype(np.int64), gram.data[off]
    sim = dot / (norms[row] * norms[col] + shrink)
    order = np.lexsort((row, -sim, col))  # by target item j, best first, ties by lower i
    row, col, sim = row[order], col[order], sim[order]
    start = np.searchsorted(col, np.arange(n))
    rank = np.arange(len(col)) - start[col]

    def top(neighbours: int) -> sp.csr_matrix:
        keep = rank < neighbours
        return sp.csr_matrix((sim[keep], (row[keep], col[keep])), shape=(n, n))

    return top


class ItemKNN(FoldIn):
    def __init__(self, model: BaseRecommender, ctx: LearnerContext, cfg: ItemKNNConfig) -> None:
        super().__init__(model, ctx, cfg)
        pairs = cfg.candidates()
        self.pair_scores: dict[tuple[int, float], float] = {}
        if len(pairs) == 1:
            self.chosen = pairs[0]
            self.similarity = cosine_neighbours(self.X, *self.chosen)
        else:
            self.chosen, self.similarity = self.select(pairs)
        self.save_hyperparameters({"neighbours": self.chosen[0], "shrink": self.chosen[1],
                                   "pair_scores": {f"{k},{s:g}": v for (k, s), v in self.pair_scores.items()}})

    def select(self, pairs: list[tuple[int, float]]) -> tuple[tuple[int, float], sp.csr_matrix]:
        """The pair with the best ``select_by`` on the validation users, and its similarity matrix."""
        matrices, shrink, top = [], None, None
        for k, s in pairs:  # grouped by shrink (``candidates``): one co-occurrence ranking per shrink
            if s != shrink:
                shrink, top = s, ranked_similarities(self.X, s)
            matrices.append(top(k))

        def scores(rows):
            for m in matrices:
                yield np.asarray((rows @ m).todense())

        best, means = self.choose_on_validation([f"neighbours={k}, shrink={s:g}" for k, s in pairs], scores,
                                                "neighbours and shrink from their grids",
                                                "set learner.neighbours_grid=null learner.shrink_grid=null")
        self.pair_scores = {p: float(m) for p, m in zip(pairs, means)}
        return pairs[best], matrices[best]

    def collaborative(self, rows: sp.csr_matrix) -> np.ndarray:
        return np.asarray((rows @ self.similarity).todense())
