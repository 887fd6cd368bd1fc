"""``ease``: EASE (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data") with a new user
folded in from the support set. Not trained by Lightning, no step on the new user.

On the training users' binary interaction matrix ``X`` (users x covered items; see
``metarec.learners.foldin`` for which interactions count and for the content/popularity fallbacks):

    P = (X^T X + l2 I)^-1,    B = I - P diagMat(1 / diag(P))    (so diag(B) = 0),

and a user with binary support row ``u`` (its positives) scores the items ``u B``.

Computed without ever forming a C x C matrix (C covered items): with the thin eigendecomposition
``X^T X = V diag(s) V^T`` (V: C x r, r = rank <= min(users, C)),

    P = I / l2 - V diag(w) V^T,   w = s / (l2 (s + l2)),
    (u B)_j = u_j - (u P)_j / P_jj,   u P = u / l2 - ((u V) * w) V^T,   P_jj = 1 / l2 - sum_k V_jk^2 w_k.

``V`` comes from one symmetric eigendecomposition of the smaller Gram matrix — ``X^T X`` (C x C) when
there are fewer covered items than training users, else ``X X^T`` (users x users, then
``V = X^T U diag(s^-1/2)``) — in float64; every ``l2`` then costs one pass over ``V``. Memory: ``V``,
C x r float64 (Last.fm 2K: about 12k items x 1.3k users, ~125 MB).

``l2``: fixed by ``learner.l2``, else chosen from ``learner.l2_grid`` by ``learner.select_by``
(``recall@K`` or ``ndcg@K``, full ranking of the existing items as in the test metrics) on the
**validation users only** (``LearnerContext.validation_batches``: held-out existing users); ties go to
the earlier grid value. The choice is kept as ``chosen_l2`` with every grid value's score in
``l2_scores``, logged (Python logging, INFO) and saved in the run's hyperparameters (``hparams.yaml``
of the CSV logger).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import scipy.sparse as sp

from metarec.errors import ConfigError
from metarec.learners.base import LearnerContext
from metarec.learners.foldin import FoldIn, check_select_by
from metarec.models.base import BaseRecommender


def _positive_number(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and bool(np.isfinite(x)) and x > 0


@dataclass
class EASEConfig:
    l2: Optional[float] = None  # fixed l2; None: chosen from l2_grid on the validation users
    l2_grid: list[float] = field(default_factory=lambda: [1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0])
    select_by: str = "recall@10"  # recall@K | ndcg@K on the validation users
    select_sizes: Optional[list[int]] = None  # also score the validation supports cut to these sizes (mean with the full one)
    interactions: str = "relevant"  # explicit data: relevant (rating >= data.relevance_threshold) | all
    fold: str = "relevant"  # explicit data: fold in the support's relevant items | every rated item
    content_weight: float = 0.1  # new items: weight of their content similarity to the support positives
    popularity_tiebreak: bool = True  # rank_score: ties ordered by training popularity

    def __post_init__(self) -> None:
        if self.l2 is not None and not _positive_number(self.l2):
            raise ConfigError(f"learner.l2 must be a finite number > 0 or null, got {self.l2!r}")
        grid = list(self.l2_grid) if isinstance(self.l2_grid, (list, tuple)) else None
        if self.l2 is None and not grid:
            raise ConfigError(f"learner.l2_grid must be a non-empty list of numbers > 0 (or set learner.l2), "
                              f"got {self.l2_grid!r}")
        if grid and not all(_positive_number(v) for v in grid):
            raise ConfigError(f"learner.l2_grid must hold finite numbers > 0, got {self.l2_grid!r}")
        check_select_by(self.select_by, self.select_sizes)


def gram_eigen(x: sp.csr_matrix, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """``(s, V)``: ``X^T X = V diag(s) V^T`` over the eigenvalues above ``tol * max``, from the smaller
    of ``X^T X`` and ``X X^T`` (float64)."""
    x = sp.csr_matrix(x, dtype=np.float64)
    users, items = x.shape
    if items == 0 or x.nnz == 0:
        return np.zeros(0), np.zeros((items, 0))
    if items <= users:
        s, v = np.linalg.eigh((x.T @ x).toarray())
        keep = s > tol * s.max()
        return s[keep], np.ascontiguousarray(v[:, keep])
    s, u = np.linalg.eigh((x @ x.T).toarray())
    keep = s > tol * s.max()
    s, u = s[keep], u[:, keep]
    v = np.asarray(x.T @ u) / np.sqrt(s)
    return s, np.ascontiguousarray(v)


class EASE(FoldIn):
    def __init__(self, model: BaseRecommender, ctx: LearnerContext, cfg: EASEConfig) -> None:
        super().__init__(model, ctx, cfg)
        self.s, self.V = gram_eigen(self.X)
        self.l2_scores: dict[float, float] = {}
        if cfg.l2 is not None:
            chosen = float(cfg.l2)
        elif len(cfg.l2_grid) == 1:
            chosen = float(cfg.l2_grid[0])
        else:
            chosen = self.select_l2([float(v) for v in cfg.l2_grid])
        self.set_l2(chosen)
        self.save_hyperparameters({"l2": self.chosen_l2,
                                   "l2_scores": {str(k): v for k, v in self.l2_scores.items()}})

    # ------------------------------------------------------------- the model
    def set_l2(self, l2: float) -> None:
        self.chosen_l2 = float(l2)
        self.w = self.s / (l2 * (self.s + l2))
        self.diag_p = 1.0 / l2 - (self.V**2) @ self.w

    def _scores(self, u: np.ndarray, uv: np.ndarray, l2: float, w: np.ndarray, diag_p: np.ndarray) -> np.ndarray:
        up = u / l2 - (uv * w) @ self.V.T
        return u - up / diag_p

    def collaborative(self, rows: sp.csr_matrix) -> np.ndarray:
        u = rows.toarray()
        return self._scores(u, u @ self.V, self.chosen_l2, self.w, self.diag_p)

    def item_weights(self) -> np.ndarray:
        """``B`` (C x C, dense, float64) over the covered items (``self.covered``), for inspection and
        tests; scoring never forms it."""
        c = len(self.covered)
        p = np.eye(c) / self.chosen_l2 - (self.V * self.w) @ self.V.T
        return np.eye(c) - p / np.diag(p)[None, :]

    # ------------------------------------------------------------ selection
    def select_l2(self, grid: list[float]) -> float:
        """The grid value with the best ``select_by`` on the validation users (ties: the earlier one)."""
        v2 = self.V**2
        weights = [self.s / (l2 * (self.s + l2)) for l2 in grid]
        diags = [1.0 / l2 - v2 @ w for l2, w in zip(grid, weights)]
        del v2

        def scores(rows):
            u = rows.toarray()
            uv = u @ self.V
            for g, l2 in enumerate(grid):
                yield self._scores(u, uv, l2, weights[g], diags[g])

        best, means = self.choose_on_validation([f"l2={l2:g}" for l2 in grid], scores, "l2 from l2_grid",
                                                "set learner.l2")
        self.l2_scores = {l2: float(m) for l2, m in zip(grid, means)}
        return grid[best]
