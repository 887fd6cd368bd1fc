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
items only; building it needs the sparse co-occurrence matrix ``X^T X`` once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from metarec.errors import ConfigError
from metarec.learners.base import LearnerContext
from metarec.learners.foldin import FoldIn
from metarec.models.base import BaseRecommender


@dataclass
class ItemKNNConfig:
    neighbours: int = 100  # similar items kept per item
    shrink: float = 10.0  # added to the cosine's denominator
    interactions: str = "relevant"  # explicit data: relevant (rating >= data.relevance_threshold) | all
    fold: str = "relevant"  # explicit data: fold in the support's relevant items | every rated item
    content_weight: float = 0.1  # new items: weight of their content similarity to the support positives
    popularity_tiebreak: bool = True  # rank_score: ties (e.g. score 0) ordered by training popularity

    def __post_init__(self) -> None:
        k = self.neighbours
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"learner.neighbours must be an integer >= 1, got {k!r}")
        s = self.shrink
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not np.isfinite(s) or s < 0:
            raise ConfigError(f"learner.shrink must be a finite number >= 0, got {s!r}")


def cosine_neighbours(x: sp.csr_matrix, neighbours: int, shrink: float) -> sp.csr_matrix:
    """``[C, C]`` CSR: entry ``(i, j)`` is ``sim(i, j)`` if ``i`` is among ``j``'s ``neighbours`` most
    similar items (diagonal excluded; ties by lower ``i``), else absent."""
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
    keep = rank < neighbours
    return sp.csr_matrix((sim[keep], (row[keep], col[keep])), shape=(n, n))


class ItemKNN(FoldIn):
    def __init__(self, model: BaseRecommender, ctx: LearnerContext, cfg: ItemKNNConfig) -> None:
        super().__init__(model, ctx, cfg)
        self.similarity = cosine_neighbours(self.X, int(cfg.neighbours), float(cfg.shrink))

    def collaborative(self, rows: sp.csr_matrix) -> np.ndarray:
        return np.asarray((rows @ self.similarity).todense())
