"""What the collaborative-filtering baselines (``itemknn``, ``ease``) share: item-item models fitted in
closed form on the training users' interactions, into which a new user is *folded in* from the
support set. No Lightning training, no gradient step on the new user.

Interactions (the binary user x item matrix ``X`` of the training users):

- explicit ratings (``loss=mse`` on data that is not implicit): ``learner.interactions=relevant`` (the
  default) keeps the ratings >= ``data.relevance_threshold`` (the standard binarisation of MovieLens for
  item-item CF and EASE); ``all`` keeps every rating;
- implicit data (``data.negatives`` on: 0/1 labels, ``LearnerContext.binary_labels``; or a dataset of
  implicit feedback): every interaction.

Only items with at least one such training interaction ("covered" items) get a collaborative score;
``X`` never has a column for any other item.

Support positives (what is folded in): with sampled negatives (``bce``/``softmax``) the label-1
entries; on implicit data without negatives every support item; on explicit data the support ratings
>= ``relevance_threshold`` — or, with ``learner.fold=rated``, every rated support item (that the user
rated an item at all says what they watch, whatever the rating: at small supports most of the few
ratings are below the threshold). ``fold`` changes nothing on implicit data.

Scores (``adapt`` computes each task's scores of every item once; ``score`` reads them):

- covered items: the learner's fold-in score (``itemknn``: summed similarities, ``ease``: ``u B``);
- new items (``LearnerContext.new_item_mask``, the item-cold scenarios; they have no training
  interactions, so their collaborative score would be 0 whatever the user): a content score instead,
  ``content_weight * sum over support positives i of cos(f_i, f_j)`` with ``f`` the item's content
  vector — one-hot codes of its categorical fields and its multi-hot (or dense) fields, with every
  feature value carried by a single item dropped (the item id, above all: it cannot make two items
  similar and would only shrink every cosine). ``content_weight`` only matters where new and existing
  items compete in one list (``Recommender.recommend`` over the whole catalogue); every ranking metric
  ranks new and existing items apart. A dataset without item content logs a warning: new items then
  cannot be told apart;
- existing items without training interactions: 0 (no evidence either way).

``rank_score`` (full ranking, ``Recommender.recommend``) adds ``1e-6 * popularity / max popularity``
(training interactions) when ``popularity_tiebreak`` is on: items the support says nothing about (score
0: a user without support positives, items outside every neighbourhood) are ordered by popularity
instead of by item code, without reordering scores that differ by more than 1e-6.

These learners predict no ratings (``predicts_ratings = False``): rating metrics are not computed and
show as "–" in tables; they report full-ranking metrics only.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Callable, Iterable

import numpy as np
import scipy.sparse as sp
import torch

from metarec.data.episodes import Support
from metarec.errors import ConfigError
from metarec.learners.base import LearnerContext, MetaLearner
from metarec.models.base import BaseRecommender, Features

log = logging.getLogger(__name__)

INTERACTIONS = ("relevant", "all")
FOLDS = ("relevant", "rated")  # explicit data: fold in the support's relevant items | every rated one
TIEBREAK = 1e-6
SELECT = re.compile(r"^(recall|ndcg)@([1-9][0-9]*)$")  # learner.select_by: what settings are chosen by


def check_common(cfg: Any) -> None:
    """One-line ``ConfigError`` for the options every fold-in learner has."""
    if cfg.interactions not in INTERACTIONS:
        raise ConfigError(f"learner.interactions must be one of {', '.join(INTERACTIONS)}, got {cfg.interactions!r}")
    if cfg.fold not in FOLDS:
        raise ConfigError(f"learner.fold must be one of {', '.join(FOLDS)}, got {cfg.fold!r}")
    w = cfg.content_weight
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w) or w < 0:
        raise ConfigError(f"learner.content_weight must be a finite number >= 0, got {w!r}")


def check_select_by(value: Any, sizes: Any = None) -> None:
    """One-line ``ConfigError`` for ``learner.select_by`` and ``learner.select_sizes``."""
    if not isinstance(value, str) or not SELECT.match(value):
        raise ConfigError(f"learner.select_by must be recall@K or ndcg@K (K >= 1), got {value!r}")
    if sizes is not None and (not isinstance(sizes, (list, tuple)) or not sizes
                              or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in sizes)):
        raise ConfigError("learner.select_sizes must be a non-empty list of integers >= 1 (support sizes the "
                          f"validation choice is also scored at) or null, got {sizes!r}")


def content_vectors(items: Features | None, n_items: int) -> sp.csr_matrix:
    """``[I, D]`` L2-normalised content vectors (float64 CSR): one-hot categorical codes (code 0 =
    unknown: no feature) and the multi-hot/dense fields, minus every feature value present on at most one
    item. Rows without any feature are zero."""
    if items is None:
        return sp.csr_matrix((n_items, 0))
    cat = items.categorical.detach().cpu().numpy().astype(np.int64)
    multi = items.multihot.detach().cpu().numpy().astype(np.float64)
    blocks = []
    rows = np.arange(cat.shape[0])
    for j in range(cat.shape[1]):
        codes = cat[:, j]
        known = codes > 0
        width = int(codes.max()) + 1 if codes.size else 1
        onehot = (np.ones(int(known.sum())), (rows[known], codes[known]))
        blocks.append(sp.csr_matrix(onehot, shape=(len(codes), width)))
    if multi.shape[1]:
        blocks.append(sp.csr_matrix(multi))
    if not blocks:
        return sp.csr_matrix((n_items, 0))
    f = sp.hstack(blocks, format="csc")
    shared = np.flatnonzero(np.diff(f.indptr) > 1)  # values on two items or more
    f = f[:, shared].tocsr()
    norms = np.sqrt(np.asarray(f.multiply(f).sum(axis=1)).ravel())
    f = sp.diags(np.where(norms > 0, 1.0 / np.maximum(norms, 1e-300), 0.0)) @ f
    return f.tocsr()


def support_positives(ctx: LearnerContext, support: Support, fold: str = "relevant") -> torch.Tensor:
    """Bool ``[T, S]``: the support items a fold-in counts — the label-1 entries with sampled negatives
    (binary labels); every entry on implicit data without negatives; on explicit data the ratings >=
    ``relevance_threshold``, or every rated item with ``fold="rated"``."""
    if ctx.binary_labels:
        return support.positives(True, ctx.relevance_threshold)
    if ctx.interactions_only or fold == "rated":
        return support.mask.clone()
    return support.positives(False, ctx.relevance_threshold)


class FoldIn(MetaLearner):
    """Base of the closed-form item-item learners: interaction matrix, fold-in plumbing, content and
    popularity fallbacks. Subclasses fit their model in ``__init__`` and implement ``collaborative``."""

    needs_training = False
    predicts_ratings = False
    ranks_items = True

    def __init__(self, model: BaseRecommender, ctx: LearnerContext, cfg: Any) -> None:
        check_common(cfg)
        super().__init__(model, ctx)
        self.cfg = cfg
        n = int(ctx.n_items)
        self.n_items_total = n
        new = np.zeros(n, dtype=bool) if ctx.new_item_mask is None else np.asarray(ctx.new_item_mask, dtype=bool)
        self.new_items = new
        if ctx.train_pool is None:
            raise ConfigError(f"learner {ctx.label} needs the training users' interactions (LearnerContext.train_pool)")
        users, items, popularity = self._interactions(ctx, cfg.interactions, new)
        self.n_train_users = len(ctx.train_pool)
        self.popularity = popularity  # [I] training interactions (all kinds), for the tie-break
        covered = np.unique(items)
        self.covered = covered  # item codes with a column in X, ascending
        self.column = np.full(n, -1, dtype=np.int64)
        self.column[covered] = np.arange(len(covered))
        self.X = sp.csr_matrix(
            (np.ones(len(items)), (users, self.column[items])), shape=(self.n_train_users, len(covered))
        )
        self.X.sum_duplicates()
        self.X.data[:] = 1.0
        self.content = content_vectors(ctx.all_items, n)
        self.content_new = self.content[np.flatnonzero(new)].T.tocsr() if new.any() else None  # [D, I_new]
        if new.any() and self.content.shape[1] == 0:
            log.warning("%s: the items have no content features; new items (item-cold scenarios) cannot be told "
                        "apart and rank in item order", ctx.label)

    # ------------------------------------------------------------------ data
    @staticmethod
    def _interactions(ctx: LearnerContext, which: str, new: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user row, item code) of the training interactions ``X`` is made of, and every item's number of
        training interactions."""
        keep_all = which == "all" or ctx.binary_labels or ctx.interactions_only
        users, items, pop_items = [], [], []
        for row, (_, (its, rs)) in enumerate(sorted(ctx.train_pool.items())):
            its = np.asarray(its, dtype=np.int64)
            pop_items.append(its)
            if not keep_all:
                its = its[np.asarray(rs, dtype=np.float64) >= ctx.relevance_threshold]
            its = its[~new[its]]  # new items never have training interactions; never give them a column
            users.append(np.full(len(its), row, dtype=np.int64))
            items.append(its)
        cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.int64)  # noqa: E731
        popularity = np.bincount(cat(pop_items), minlength=len(new)).astype(np.float64)
        return cat(users), cat(items), popularity

    def support_positives(self, support: Support) -> torch.Tensor:
        return support_positives(self.ctx, support, self.cfg.fold)

    def positive_rows(self, support: Support) -> tuple[np.ndarray, np.ndarray]:
        """(task, item code) of every support positive, duplicates removed."""
        pos = self.support_positives(support).cpu().numpy()
        ids = support.item_ids.cpu().numpy()
        t, s = np.nonzero(pos)
        pairs = np.unique(np.stack([t, ids[t, s]], 1), axis=0) if len(t) else np.zeros((0, 2), np.int64)
        return pairs[:, 0], pairs[:, 1]

    def profile(self, tasks: np.ndarray, items: np.ndarray, n_tasks: int) -> sp.csr_matrix:
        """``[T, C]`` binary rows of the covered support positives (what ``X``'s rows are for a training user)."""
        cols = self.column[items]
        ok = cols >= 0
        return sp.csr_matrix((np.ones(int(ok.sum())), (tasks[ok], cols[ok])), shape=(n_tasks, len(self.covered)))

    # ------------------------------------------------------------ contract
    def collaborative(self, rows: sp.csr_matrix) -> np.ndarray:
        """Fold-in scores ``[T, C]`` of the covered items for binary user rows ``[T, C]``."""
        raise NotImplementedError

    def fold_in(self, support: Support) -> np.ndarray:
        """Scores ``[T, I]`` (float64) of every item for each task's support."""
        t = support.n_tasks
        tasks, items = self.positive_rows(support)
        out = np.zeros((t, self.n_items_total), dtype=np.float64)
        if len(self.covered):
            out[:, self.covered] = self.collaborative(self.profile(tasks, items, t))
        if self.content_new is not None and self.cfg.content_weight > 0 and self.content.shape[1]:
            ind = sp.csr_matrix((np.ones(len(items)), (tasks, items)), shape=(t, self.n_items_total))
            prof = ind @ self.content  # [T, D]: sum of the positives' unit content vectors
            out[:, self.new_items] = self.cfg.content_weight * np.asarray((prof @ self.content_new).todense())
        return out

    def adapt(self, user: Features, support: Support) -> torch.Tensor:
        return torch.as_tensor(self.fold_in(support), dtype=torch.float32, device=support.item_ids.device)

    def score(self, state: torch.Tensor, item_ids: torch.Tensor, items: Features) -> torch.Tensor:
        return state.gather(1, item_ids.to(state.device))

    def popularity_bonus(self) -> np.ndarray:
        """``[I]``: what ``rank_score`` adds to ``score`` (``1e-6 * popularity / max``; 0 without the tie-break)."""
        if not self.cfg.popularity_tiebreak:
            return np.zeros(self.n_items_total)
        return TIEBREAK * self.popularity / max(float(self.popularity.max(initial=0.0)), 1.0)

    def rank_score(self, state: torch.Tensor, item_ids: torch.Tensor, items: Features) -> torch.Tensor:
        out = self.score(state, item_ids, items)
        if self.cfg.popularity_tiebreak:
            bonus = torch.as_tensor(self.popularity_bonus(), dtype=out.dtype, device=out.device)
            out = out + bonus[item_ids.to(out.device)]
        return out

    def choose_on_validation(self, names: list[str], scores: Callable[[sp.csr_matrix], Iterable[np.ndarray]],
                             what: str, fix: str) -> tuple[int, np.ndarray]:
        """``(index of the best, every setting's score)`` of the settings ``names`` by ``learner.select_by``
        on the **validation users only** (ties: the earlier setting). ``scores(rows)`` yields, in the order of
        ``names``, each setting's fold-in scores ``[T, C]`` of the covered items for a validation batch's
        binary support rows ``rows`` ``[T, C]``; the popularity tie-break is added as ``rank_score`` does.
        With ``learner.select_sizes`` a setting's score is the mean over the full support and the supports
        cut to each of those sizes (each validation user's first K ratings, cut as the ``val_kK``/``test_kK``
        passes cut them: ``base.first_ratings``): a setting for small supports.
        ``what``/``fix``: the choice and the option that fixes it instead, for the one-line errors."""
        if self.ctx.validation_batches is None:
            raise ConfigError(f"learner {self.ctx.label}: choosing {what} needs the validation users; {fix}")
        kind, k = SELECT.match(self.cfg.select_by).groups()
        bonus = torch.as_tensor(self.popularity_bonus(), dtype=torch.float32)

        sizes = [None, *(self.cfg.select_sizes or [])]

        def full(batch):
            support = batch.support()
            tasks, items = self.positive_rows(support)
            for covered in scores(self.profile(tasks, items, support.n_tasks)):
                out = np.zeros((support.n_tasks, self.n_items_total))
                if len(self.covered):
                    out[:, self.covered] = covered
                yield torch.as_tensor(out, dtype=torch.float32) + bonus

        means, count = self.validation_grid(full, len(names), int(k), kind, sizes)
        means = means.reshape(len(sizes), len(names)).mean(0)
        if count == 0:
            raise ConfigError(f"learner {self.ctx.label}: no validation user has a relevant query item to choose "
                              f"{what} by {self.cfg.select_by}; {fix}")
        best = int(np.argmax(means))
        log.info("%s: %s chosen on %d validation users by %s (%s)", self.ctx.label, names[best], count,
                 self.cfg.select_by, ", ".join(f"{n}: {m:.4f}" for n, m in zip(names, means)))
        return best, means

    def configure_optimizers(self):
        return None
