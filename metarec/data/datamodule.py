"""LightningDataModule: dataset -> cold-start split -> meta-batches of episodes.

Training episodes are re-drawn every epoch from a seed, the epoch and the user, inside the worker that
builds them, so the same seed gives the same episodes whatever the number of DataLoader workers.
Validation and test episodes are the fixed ones of the split manifest.
"""

from __future__ import annotations

import copy

from pathlib import Path
from typing import Iterator

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset, Sampler

from metarec.data.data_config import DataConfig  # noqa: F401 (re-exported; a leaf module for --print-config)
from metarec.data.episodes import EpisodeCollator, FeatureTables
from metarec.data.negatives import NegativeSampler
from metarec.data.scenarios import VAL, VAL_SCENARIO, new_items  # noqa: F401 (VAL_SCENARIO: re-exported)
from metarec.data.text import item_text_embeddings, with_text_field
from metarec.data.schema import RecDataset
from metarec.data.splits import ColdStartSplit, SplitConfig, Task, cut_task, load_split, make_split, save_manifest
from metarec.data.sources import load_dataset
from metarec.errors import ConfigError


_M1, _M2, _M3 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective, well-mixed hash of 64-bit integers (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def epoch_keys(seed: int, epoch: int, n: int) -> np.ndarray:
    """``n`` pseudo-random 64-bit keys determined by (seed, epoch) alone (counter-based)."""
    base = _mix64(np.array([seed], dtype=np.uint64))[0] ^ _mix64(np.array([epoch + 1], dtype=np.uint64) * _M3)[0]
    with np.errstate(over="ignore"):
        return _mix64(base + np.arange(1, n + 1, dtype=np.uint64) * _M3)


class TrainEpisodes(Dataset):
    """Indexed by ``(epoch, i)``: training user ``i``'s query/support split for that epoch.

    Every user's ratings are shuffled at once per epoch (one ``lexsort`` of counter-based keys, cached
    per epoch), so an episode costs a slice; the order depends only on (seed, epoch), so every
    DataLoader worker draws the same episodes.
    """

    def __init__(self, split: ColdStartSplit, cfg: SplitConfig, negatives: NegativeSampler | None = None,
                 id_dropout: float = 0.0, support: str = "full") -> None:
        self.negatives = negatives
        self.id_dropout = id_dropout
        self.support = support
        self.users = split.train_users
        pools = [split.train_pool[int(u)] for u in self.users]
        lengths = np.array([len(p[0]) for p in pools], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.items = np.concatenate([p[0] for p in pools])
        self.ratings = np.concatenate([p[1] for p in pools])
        self.segment = np.repeat(np.arange(len(pools)), lengths)
        self.cfg = cfg
        self._epoch: int | None = None
        self._order: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.users)

    def order(self, epoch: int) -> np.ndarray:
        """Positions into the flat rating arrays, randomly permuted within each user's segment."""
        if self._epoch != epoch:
            self._order = np.lexsort((epoch_keys(self.cfg.seed, epoch, len(self.items)), self.segment))
            self._epoch = epoch
        return self._order

    def __getitem__(self, key: tuple[int, int]) -> Task:
        epoch, i = key
        idx = self.order(epoch)[self.offsets[i] : self.offsets[i + 1]]
        cfg = self.cfg
        task = cut_task(int(self.users[i]), self.items, self.ratings, idx, cfg.query_size, cfg.support_size)
        full = self.support == "mixed" and np.random.default_rng([self.cfg.seed, epoch, task.user, 13]).random() < 0.5
        if self.support in ("loguniform", "mixed") and not full:  # the order is already random: keep the first k
            n = len(task.support_items)
            u = np.random.default_rng([self.cfg.seed, epoch, task.user, 11]).random()
            k = min(n, max(1, int(np.exp(u * np.log(n + 1)))))
            task.support_items, task.support_ratings = task.support_items[:k], task.support_ratings[:k]
        if self.negatives is not None:
            task = self.negatives.add(task, self.cfg.seed, epoch, new_items=False)
        if self.id_dropout > 0:  # seeded by (seed, epoch, user) like everything else of the episode
            rng = np.random.default_rng([self.cfg.seed, epoch, task.user, 7])
            task.hide_ids = rng.random(len(task.support_items) + len(task.query_items)) < self.id_dropout
        return task


class EpochShuffleSampler(Sampler):
    """Yields ``(epoch, index)`` in a seeded order that changes every epoch (Lightning calls ``set_epoch``).

    Distributed (``world > 1``): every rank computes the same global order and takes, from each global
    meta-batch of ``batch_size`` tasks, its own contiguous share of ``batch_size / world``; so rank r's
    k-th batch plus the other ranks' k-th batches are exactly the k-th meta-batch of a single process,
    and a DDP step (gradients averaged over ranks) equals the single-process step. The order is cut to
    a multiple of ``world`` (at most ``world - 1`` users sit out an epoch, different ones each epoch),
    so every rank gets the same number of batches and the last batch splits evenly too.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1,
                 batch_size: int | None = None) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0
        self.rank, self.world, self.batch_size = rank, world, batch_size or world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.world

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
        if self.world > 1:
            order = order[: len(order) - len(order) % self.world]
            mine = []
            for start in range(0, len(order), self.batch_size):
                block = order[start : start + self.batch_size]
                share = len(block) // self.world
                mine.append(block[self.rank * share : (self.rank + 1) * share])
            order = np.concatenate(mine) if mine else order[:0]
        return iter([(self.epoch, int(i)) for i in order])


class ShardSampler(Sampler):
    """Evaluation under DDP: rank r gets tasks r, r + world, ... — each task exactly once over all ranks
    (no padding with repeated tasks, which would bias per-user averages)."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.n, self.rank, self.world = n, rank, world

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))


def val_folds(tasks: list[Task], folds: int) -> list[Task]:
    """Each task, followed by its folds ``1..folds-1``: its ratings taken in the split's order (query, then
    support) and cut by ``cut_task`` after rotating by ``f * query_size`` positions, so that fold ``f``'s
    query is the next ``query_size`` ratings and its support the rest, as long as the task's own (and in
    the same order, for support-size cuts). A user has as many folds as its ratings fill whole queries
    (at most ``folds``); every fold's support is as long as the task's."""
    if folds == 1:
        return tasks
    out = []
    for t in tasks:
        out.append(t)
        items = np.concatenate([t.query_items, t.support_items])
        ratings = np.concatenate([t.query_ratings, t.support_ratings])
        q = len(t.query_items)
        for f in range(1, folds):
            if (f + 1) * q > len(items):
                break
            order = np.roll(np.arange(len(items)), -f * q)  # positions f*q.. first, then the start
            out.append(cut_task(t.user, items, ratings, order, q))
    return out


class ListDataset(Dataset):
    """Fixed tasks; with ``negatives``, each gets its seeded negatives for ``scenario`` when drawn."""

    def __init__(self, tasks: list[Task], negatives: NegativeSampler | None = None, seed: int = 0,
                 scenario: str = VAL) -> None:
        self.tasks = tasks
        self.negatives, self.seed, self.scenario = negatives, seed, scenario

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int) -> Task:
        task = self.tasks[i]
        if self.negatives is None:
            return task
        return self.negatives.add(task, self.seed, self.scenario, new_items=new_items(self.scenario))


class ColdStartDataModule(pl.LightningDataModule):
    def __init__(self, cfg: DataConfig, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.seed = seed
        self.dataset: RecDataset | None = None
        self.split: ColdStartSplit | None = None
        self.collate: EpisodeCollator | None = None
        self.negatives: NegativeSampler | None = None  # implicit feedback (data.negatives.per_positive > 0)
        self.test_support_size: int | None = None  # K: test on supports cut to K ratings (see for_support_size)
        self.test_users: str = "test"  # whose episodes the test passes read: test | val (see for_support_size)

    # ------------------------------------------------------------------ set-up
    def setup(self, stage: str | None = None) -> None:
        if self.split is not None:
            return
        self.dataset = load_dataset(self.cfg.source, self.cfg.params, self.cfg.root)
        if self.cfg.text.enabled:
            self.dataset = with_text_field(self.dataset, item_text_embeddings(self.dataset, self.cfg.text))
        if self.cfg.manifest:
            self.split = load_split(self.dataset, self.cfg.manifest)
        else:
            self.split = make_split(self.dataset, self.cfg.split)
        hidden = np.flatnonzero(self.split.new_item_mask) if self.cfg.hide_new_item_ids else None
        self.collate = EpisodeCollator(FeatureTables(self.dataset, hidden))
        if self.cfg.negatives.enabled:
            self.negatives = NegativeSampler(self.cfg.negatives, self.dataset, self.split)

    @property
    def loss(self) -> str:
        """The training objective the data call for: ``data.negatives.loss`` (``bce`` | ``softmax``) with sampled
        negatives, else ``data.rating_loss`` (``mse`` | ``mae``)."""
        return self.cfg.negatives.loss if self.cfg.negatives.enabled else self.cfg.rating_loss

    @property
    def split_config(self) -> SplitConfig:
        return SplitConfig(**self.split.manifest["config"])

    @property
    def scenarios(self) -> list[str]:
        """Evaluation scenarios, in test-dataloader order."""
        return [s for s in self.split.episodes if s != VAL]

    def save_manifest(self, path: str | Path) -> Path:
        return save_manifest(self.split, path)

    def train_rating_mean(self) -> float:
        return float(self.split.train_ratings()[1].mean())

    # ------------------------------------------------------------- dataloaders
    def _rank_world(self) -> tuple[int, int]:
        """(this process's rank, number of processes) of the attached Trainer; (0, 1) without one."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def per_rank_batch(self, world: int) -> int:
        """``data.meta_batch_size`` is the global meta-batch: each of ``world`` processes takes its share."""
        b = self.cfg.meta_batch_size
        if b % world:
            raise ConfigError(
                f"data.meta_batch_size={b} must be a multiple of the number of processes ({world}) so that "
                f"every process gets the same share of each meta-batch"
            )
        return b // world

    def loader(self, dataset, batch_size: int, sampler=None) -> DataLoader:
        """A DataLoader of episodes with this module's collation and worker settings."""
        workers = self.cfg.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            collate_fn=self.collate,
            num_workers=workers,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        episodes = TrainEpisodes(self.split, self.split_config, self.negatives, self.cfg.item_id_dropout,
                                 self.cfg.train_support)
        rank, world = self._rank_world()
        share = self.per_rank_batch(world)
        sampler = EpochShuffleSampler(len(episodes), self.seed, rank=rank, world=world, batch_size=self.cfg.meta_batch_size)
        return self.loader(episodes, share, sampler)

    def _eval_loader(self, dataset) -> DataLoader:
        rank, world = self._rank_world()
        sampler = ShardSampler(len(dataset), rank, world) if world > 1 else None
        return self.loader(dataset, self.cfg.eval_batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.eval_dataset(VAL, self.val_tasks()))

    def val_tasks(self) -> list[Task]:
        """The validation episodes: the split's fixed episode of each validation user, and with
        ``data.val_folds = F`` its folds 1..F-1 next to it (``val_folds``)."""
        return val_folds(self.split.episodes[VAL], self.cfg.val_folds)

    def eval_dataset(self, scenario: str, tasks: list[Task]) -> ListDataset:
        return ListDataset(tasks, self.negatives, self.split_config.seed, scenario)

    def for_support_size(self, k: int | None, users: str = "test") -> "ColdStartDataModule":
        """This data module (same dataset, split and negatives: nothing is copied) whose test passes cut
        every support to ``k`` ratings (``None``: the full support); this module is left as it is. With
        ``users="val"`` the passes read the **validation** users instead (one loader, logged as
        ``val_kK/user_cold/...``): how a setting for small supports is chosen without reading test users."""
        if users not in ("test", VAL):
            raise ValueError(f"users must be 'test' or {VAL!r}, got {users!r}")
        if users == VAL and k is None:
            raise ValueError("a validation pass at the full support is the validation loop itself")
        view = copy.copy(self)
        view.test_support_size, view.test_users = k, users
        return view

    @property
    def test_stage(self) -> str:
        """The metric prefix of this module's test passes: ``test``, ``test_kK`` for support size K, or
        ``val_kK`` for the validation users' supports cut to K."""
        if self.test_users == VAL:
            return f"{VAL}_k{self.test_support_size}"
        return "test" if self.test_support_size is None else f"test_k{self.test_support_size}"

    def test_tasks(self, scenario: str) -> list[Task]:
        """The scenario's fixed episodes (``VAL``: the validation users'); with ``test_support_size = K``,
        the users with at least K support ratings, their support cut to its first K (the manifest's
        random order)."""
        tasks = self.val_tasks() if scenario == VAL else self.split.episodes[scenario]
        k = self.test_support_size
        if k is None:
            return tasks
        # The manifest's order is query then support: cutting it with support_size=K keeps the query.
        return [
            cut_task(t.user, np.concatenate([t.query_items, t.support_items]),
                     np.concatenate([t.query_ratings, t.support_ratings]), None, len(t.query_items), k)
            for t in tasks
            if len(t.support_items) >= k
        ]

    def test_dataloader(self) -> list[DataLoader]:
        if self.test_users == VAL:  # validation users, logged under the validation scenario (as validation is)
            return [self._eval_loader(self.eval_dataset(VAL, self.test_tasks(VAL)))]
        return [self._eval_loader(self.eval_dataset(s, self.test_tasks(s))) for s in self.scenarios]
