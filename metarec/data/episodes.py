"""Episodes: a task is one user's support and query set; a meta-batch is one padded ``EpisodeBatch``.

Layout of the position axis (length ``n_support + n_query``): support ratings occupy positions
``[0, n_support)`` left-aligned, query ratings ``[n_support, n_support + n_query)`` left-aligned;
``support_mask`` / ``query_mask`` mark the real entries. Padding positions hold item code 0, rating 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from metarec.data.schema import RecDataset
from metarec.data.splits import Task
from metarec.errors import DataError
from metarec.data.features import Features


@dataclass
class Support:
    """What a learner adapts to: each task's support items (codes ``[T, S]`` and features), their
    ratings (0/1 labels under implicit feedback, sampled negatives included) and a mask of real entries."""

    item_ids: torch.Tensor  # [T, S]
    items: Features  # [T, S, Fi], [T, S, Mi]
    ratings: torch.Tensor  # [T, S] float
    mask: torch.Tensor  # [T, S] bool

    @property
    def n_tasks(self) -> int:
        return int(self.item_ids.shape[0])

    def positives(self, implicit_labels: bool, threshold: float) -> torch.Tensor:
        """Bool ``[T, S]``: the support entries that count as relevant — label 1 under implicit labels,
        else a rating of at least ``threshold``."""
        return self.mask & (self.ratings > 0.5 if implicit_labels else self.ratings >= threshold)

    def as_batch(self, user: Features) -> "EpisodeBatch":
        """An ``EpisodeBatch`` with this support and an empty (fully masked) one-wide query block, for
        code that runs on whole episodes (the executors' inner loops)."""
        t, s = self.item_ids.shape
        pad = lambda x: torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)  # noqa: E731
        mask = pad(self.mask)
        return EpisodeBatch(
            user_ids=torch.full((t,), -1, dtype=torch.long, device=self.item_ids.device), user=user,
            item_ids=pad(self.item_ids), item=Features(pad(self.items.categorical), pad(self.items.multihot)),
            ratings=pad(self.ratings), support_mask=mask, query_mask=torch.zeros_like(mask), n_support=s,
        )


@dataclass
class EpisodeBatch:
    user_ids: torch.Tensor  # [T]
    user: Features  # [T, Fu], [T, Mu]
    item_ids: torch.Tensor  # [T, L]
    item: Features  # [T, L, Fi], [T, L, Mi]
    ratings: torch.Tensor  # [T, L] float
    support_mask: torch.Tensor  # [T, L] bool
    query_mask: torch.Tensor  # [T, L] bool
    n_support: int  # support block width S; the query block is [S, L)

    @property
    def n_tasks(self) -> int:
        return int(self.user_ids.shape[0])

    def part(self, which: str) -> tuple[Features, torch.Tensor, torch.Tensor]:
        """(item features, ratings, mask) of the ``support`` or ``query`` block."""
        sl = slice(0, self.n_support) if which == "support" else slice(self.n_support, None)
        mask = self.support_mask if which == "support" else self.query_mask
        return self.item.index((slice(None), sl)), self.ratings[:, sl], mask[:, sl]

    def support(self) -> Support:
        """The support block as what ``MetaLearner.adapt`` takes."""
        s = self.n_support
        return Support(self.item_ids[:, :s], self.item.index((slice(None), slice(0, s))), self.ratings[:, :s],
                       self.support_mask[:, :s])

    def query(self) -> tuple[torch.Tensor, Features]:
        """The query block's item codes ``[T, Q]`` and features, as ``MetaLearner.score`` takes them."""
        s = self.n_support
        return self.item_ids[:, s:], self.item.index((slice(None), slice(s, None)))

    def to(self, device) -> "EpisodeBatch":
        f = lambda x: x.to(device)  # noqa: E731
        return EpisodeBatch(
            f(self.user_ids), Features(f(self.user.categorical), f(self.user.multihot)), f(self.item_ids),
            Features(f(self.item.categorical), f(self.item.multihot)), f(self.ratings), f(self.support_mask),
            f(self.query_mask), self.n_support,
        )


class FeatureTables:
    """Feature tensors of a dataset, gathered by id when a meta-batch is collated."""

    def __init__(self, ds: RecDataset, hidden_items: np.ndarray | None = None) -> None:
        self.item_id_column = None
        self.user_cat = torch.as_tensor(ds.users.categorical, dtype=torch.long)
        self.user_multi = torch.as_tensor(ds.users.multihot, dtype=torch.float32)
        item_cat = torch.as_tensor(ds.items.categorical, dtype=torch.long).clone()
        names = [f.name for f in ds.items.categorical_fields]
        if "item_id" in names:
            self.item_id_column = names.index("item_id")
        if hidden_items is not None and self.item_id_column is not None:
            # A new item's id has never been seen in training: give it the "unknown" code (a zero
            # embedding) rather than an untrained random vector.
            item_cat[torch.as_tensor(hidden_items), self.item_id_column] = 0
        self.item_cat = item_cat
        self.item_multi = torch.as_tensor(ds.items.multihot, dtype=torch.float32)

    def users(self, ids: torch.Tensor) -> Features:
        return Features(self.user_cat[ids], self.user_multi[ids])

    def items(self, ids: torch.Tensor) -> Features:
        return Features(self.item_cat[ids], self.item_multi[ids])


class EpisodeCollator:
    """Turns a list of ``Task`` into one padded ``EpisodeBatch``."""

    def __init__(self, tables: FeatureTables) -> None:
        self.tables = tables

    def __call__(self, tasks: list[Task]) -> EpisodeBatch:
        n = len(tasks)
        if n == 0:
            raise DataError("cannot collate an empty list of tasks")
        s_len = max(1, max(len(t.support_items) for t in tasks))
        q_len = max(1, max(len(t.query_items) for t in tasks))
        length = s_len + q_len
        items = np.zeros((n, length), dtype=np.int64)
        ratings = np.zeros((n, length), dtype=np.float32)
        s_mask = np.zeros((n, length), dtype=bool)
        q_mask = np.zeros((n, length), dtype=bool)
        hide = np.zeros((n, length), dtype=bool)
        for i, t in enumerate(tasks):
            ns, nq = len(t.support_items), len(t.query_items)
            items[i, :ns], ratings[i, :ns], s_mask[i, :ns] = t.support_items, t.support_ratings, True
            sl = slice(s_len, s_len + nq)
            items[i, sl], ratings[i, sl], q_mask[i, sl] = t.query_items, t.query_ratings, True
            if t.hide_ids is not None:
                hide[i, :ns], hide[i, sl] = t.hide_ids[:ns], t.hide_ids[ns:]
        user_ids = torch.as_tensor(np.array([t.user for t in tasks], dtype=np.int64))
        item_ids = torch.from_numpy(items)
        item = self.tables.items(item_ids)
        if hide.any() and self.tables.item_id_column is not None:  # item-id dropout: as if these were new items
            item.categorical[..., self.tables.item_id_column][torch.from_numpy(hide)] = 0
        return EpisodeBatch(
            user_ids=user_ids,
            user=self.tables.users(user_ids),
            item_ids=item_ids,
            item=item,
            ratings=torch.from_numpy(ratings),
            support_mask=torch.from_numpy(s_mask),
            query_mask=torch.from_numpy(q_mask),
            n_support=s_len,
        )
