"""Implicit-feedback episodes: every interaction is a positive (label 1) and each task's support and
query get ``per_positive`` sampled non-interacted items per positive (label 0); learners then train with
binary cross-entropy on logits (``LearnerContext.loss = "bce"``), or with ``data.negatives.loss=softmax``
a sampled softmax of every positive against the task's negatives (``masked_softmax_per_task``).

Sampling rules:

- Negatives of a user are never items the user interacted with anywhere in the dataset, and the query's
  negatives never reappear among the support's negatives. Within one set they are distinct.
- They come from the task's own item pool: existing items for training, validation, ``warm`` and
  ``user_cold``; new items in the item-cold scenarios, ``item_cold`` and ``user_item_cold`` (see
  :func:`metarec.data.scenarios.new_items`; the same pools full ranking uses).
- ``uniform``: every pool item alike. ``popularity``: probability proportional to
  ``(training interactions + 1) ** power``; new items have no training interactions, so inside the new
  pool popularity sampling is uniform (test-time popularity would leak the answer).
- Seeded and counter-based: a task's negatives depend only on (seed, stage, user) — ``stage`` is the
  epoch for training and the scenario for evaluation — never on the worker or on the order tasks are
  drawn. The query's negatives come from their own stream, so cutting the support to K ratings
  (support-size curves) leaves the query, negatives included, unchanged.
- Positives and negatives are shuffled together within the support and within the query, so no
  metric that breaks score ties by position can read the labels from the order.
- If a pool has fewer non-interacted items than asked for, the task gets all of them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from metarec.data.schema import RecDataset
from metarec.data.splits import ColdStartSplit, Task
from metarec.errors import ConfigError

SAMPLERS = ("uniform", "popularity")
LOSSES = ("bce", "softmax")  # training objectives on 0/1 labels


@dataclass
class NegativeConfig:
    per_positive: int = 0  # sampled negatives per positive in support and query; 0: off (explicit ratings)
    sampler: str = "uniform"  # uniform | popularity
    power: float = 1.0  # popularity sampler: P(item) ~ (training interactions + 1) ** power
    loss: str = "bce"  # bce: each item alone; softmax: each positive against the task's negatives (listwise)

    def check(self) -> None:
        if isinstance(self.per_positive, bool) or self.per_positive < 0:
            raise ConfigError(f"data.negatives.per_positive must be an integer >= 0, got {self.per_positive!r}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"data.negatives.sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"data.negatives.loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if not np.isfinite(self.power) or self.power < 0:
            raise ConfigError(f"data.negatives.power must be a finite number >= 0, got {self.power!r}")

    @property
    def enabled(self) -> bool:
        return self.per_positive > 0


def _stage_key(stage: str | int) -> int:
    return int(stage) if isinstance(stage, (int, np.integer)) else zlib.crc32(str(stage).encode()) + (1 << 32)


class NegativeSampler:
    """Adds seeded negatives to tasks (see the module docstring for the rules)."""

    def __init__(self, cfg: NegativeConfig, ds: RecDataset, split: ColdStartSplit) -> None:
        cfg.check()
        self.cfg = cfg
        r = ds.ratings
        users = r["user"].to_numpy(np.int64)
        items = r["item"].to_numpy(np.int64)
        order = np.lexsort((items, users))
        self._items = items[order]  # every user's interacted items, sorted, one segment per user
        self._offsets = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=ds.n_users))])
        counts = np.bincount(split.train_ratings()[0], minlength=ds.n_items).astype(np.float64)
        weights = (counts + 1.0) ** cfg.power
        self.pools: dict[bool, tuple[np.ndarray, np.ndarray | None]] = {}
        for new in (False, True):
            pool = np.flatnonzero(split.new_item_mask == new)
            cum = None
            if cfg.sampler == "popularity" and len(pool):
                cum = np.cumsum(weights[pool])
                cum /= cum[-1]
            self.pools[new] = (pool, cum)

    def interacted(self, user: int) -> np.ndarray:
        """The user's interacted items (sorted codes)."""
        return self._items[self._offsets[user] : self._offsets[user + 1]]

    def sample(self, rng: np.random.Generator, n: int, new_items: bool, exclude: np.ndarray) -> np.ndarray:
        """Up to ``n`` distinct pool items not in ``exclude``, in draw order."""
        pool, cum = self.pools[new_items]
        if n <= 0 or len(pool) == 0:
            return np.zeros(0, dtype=np.int64)
        allowed = len(pool) - int(np.isin(exclude, pool).sum()) if len(exclude) else len(pool)
        n = min(n, allowed)
        got = np.zeros(0, dtype=np.int64)
        while len(got) < n:
            draw = 2 * (n - len(got)) + 8
            idx = rng.integers(0, len(pool), draw) if cum is None else np.searchsorted(cum, rng.random(draw), "right")
            cand = pool[np.minimum(idx, len(pool) - 1)]
            cand = cand[~np.isin(cand, exclude) & ~np.isin(cand, got)]
            _, first = np.unique(cand, return_index=True)
            got = np.concatenate([got, cand[np.sort(first)]])
        return got[:n]

    def add(self, task: Task, seed: int, stage: str | int, new_items: bool) -> Task:
        """``task`` with label 1 on its items plus sampled negatives (label 0), each set shuffled."""
        k = self.cfg.per_positive
        key = [int(seed), _stage_key(stage), int(task.user)]
        seen = self.interacted(task.user)
        q_rng, s_rng = np.random.default_rng(key + [1]), np.random.default_rng(key + [0])
        q_neg = self.sample(q_rng, k * len(task.query_items), new_items, seen)
        s_neg = self.sample(s_rng, k * len(task.support_items), new_items, np.concatenate([seen, q_neg]))

        def join(rng: np.random.Generator, pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            # shuffled together: an order that put positives first would leak the labels to any metric
            # that breaks score ties by position
            items = np.concatenate([pos.astype(np.int64), neg])
            labels = np.concatenate([np.ones(len(pos), np.float32), np.zeros(len(neg), np.float32)])
            order = rng.permutation(len(items))
            return items[order], labels[order]

        s_items, s_labels = join(s_rng, task.support_items, s_neg)
        q_items, q_labels = join(q_rng, task.query_items, q_neg)
        return Task(task.user, s_items, s_labels, q_items, q_labels)

    def for_new_user(self, items: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """A new (served) user's support: the given items plus ``per_positive`` sampled existing items per
        positive (label 0), as in a test support; seeded by ``seed`` and the items, so the same user always
        gets the same negatives."""
        import zlib

        n = self.cfg.per_positive * int((labels > 0.5).sum())
        key = zlib.crc32(np.sort(items).astype(np.int64).tobytes())
        neg = self.sample(np.random.default_rng([int(seed), key, 2]), n, new_items=False, exclude=items)
        return (np.concatenate([items.astype(np.int64), neg]),
                np.concatenate([labels.astype(np.float32), np.zeros(len(neg), np.float32)]))
