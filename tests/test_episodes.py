"""Tests for metarec.data.episodes (padding, masks, features) and the ColdStartDataModule loaders."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from metarec.data.datamodule import ColdStartDataModule, DataConfig, EpochShuffleSampler, TrainEpisodes
from metarec.data.episodes import EpisodeBatch, EpisodeCollator, FeatureTables
from metarec.data.schema import RecDataset
from metarec.data.sources import load_dataset
from metarec.data.splits import SplitConfig, Task
from metarec.errors import ConfigError

SYN_PARAMS = dict(n_users=120, n_items=60, min_ratings=14, max_ratings=35, seed=2)
SPLIT = dict(min_ratings=14, max_ratings=35, query_size=5, new_item_fraction=0.25)


@pytest.fixture(scope="module")
def ds() -> RecDataset:
    return load_dataset("synthetic", SYN_PARAMS, None)


def _task(user, s_items, s_ratings, q_items, q_ratings) -> Task:
    return Task(
        user,
        np.array(s_items, dtype=np.int64),
        np.array(s_ratings, dtype=np.float32),
        np.array(q_items, dtype=np.int64),
        np.array(q_ratings, dtype=np.float32),
    )


TASKS = [
    _task(3, [5, 7, 9], [1.0, 2.0, 3.0], [11, 12], [4.0, 5.0]),
    _task(8, [2], [3.5], [20, 21, 22, 23], [1.5, 2.5, 3.25, 4.75]),
    _task(0, [1, 4, 6, 8, 10], [5.0, 4.0, 3.0, 2.0, 1.0], [13], [2.0]),
]
S, Q = 5, 4  # widest support, widest query


# ---------------------------------------------------------------------------------------------
# EpisodeCollator


def test_collator_padding_and_masks(ds):
    b = EpisodeCollator(FeatureTables(ds))(TASKS)
    assert isinstance(b, EpisodeBatch)
    assert b.n_tasks == 3 and b.n_support == S
    expected_items = torch.tensor(
        [
            [5, 7, 9, 0, 0, 11, 12, 0, 0],
            [2, 0, 0, 0, 0, 20, 21, 22, 23],
            [1, 4, 6, 8, 10, 13, 0, 0, 0],
        ]
    )
    expected_ratings = torch.tensor(
        [
            [1.0, 2.0, 3.0, 0, 0, 4.0, 5.0, 0, 0],
            [3.5, 0, 0, 0, 0, 1.5, 2.5, 3.25, 4.75],
            [5.0, 4.0, 3.0, 2.0, 1.0, 2.0, 0, 0, 0],
        ]
    )
    T, F_ = True, False
    expected_smask = torch.tensor(
        [[T, T, T, F_, F_, F_, F_, F_, F_], [T, F_, F_, F_, F_, F_, F_, F_, F_], [T, T, T, T, T, F_, F_, F_, F_]]
    )
    expected_qmask = torch.tensor(
        [[F_, F_, F_, F_, F_, T, T, F_, F_], [F_, F_, F_, F_, F_, T, T, T, T], [F_, F_, F_, F_, F_, T, F_, F_, F_]]
    )
    assert b.user_ids.dtype == torch.int64 and b.user_ids.tolist() == [3, 8, 0]
    assert b.item_ids.dtype == torch.int64 and torch.equal(b.item_ids, expected_items)
    assert b.ratings.dtype == torch.float32 and torch.equal(b.ratings, expected_ratings)
    assert b.support_mask.dtype == torch.bool and torch.equal(b.support_mask, expected_smask)
    assert b.query_mask.dtype == torch.bool and torch.equal(b.query_mask, expected_qmask)
    assert not (b.support_mask & b.query_mask).any()
    pad = ~(b.support_mask | b.query_mask)
    assert (b.item_ids[pad] == 0).all() and (b.ratings[pad] == 0).all()


def test_collator_features_follow_positions(ds):
    b = EpisodeCollator(FeatureTables(ds))(TASKS)
    L = S + Q
    ui, ii = b.user_ids.numpy(), b.item_ids.numpy()
    assert b.user.categorical.shape == (3, ds.users.categorical.shape[1])
    assert b.item.categorical.shape == (3, L, ds.items.categorical.shape[1])
    assert b.item.multihot.shape == (3, L, ds.items.multihot.shape[1])
    np.testing.assert_array_equal(b.user.categorical.numpy(), ds.users.categorical[ui])
    np.testing.assert_array_equal(b.user.multihot.numpy(), ds.users.multihot[ui])
    for t in range(3):
        for p in range(L):
            np.testing.assert_array_equal(b.item.categorical[t, p].numpy(), ds.items.categorical[ii[t, p]])
            np.testing.assert_array_equal(b.item.multihot[t, p].numpy(), ds.items.multihot[ii[t, p]])
    # item_id feature is code + 1 in the synthetic source: a concrete check that rows are not shuffled.
    assert b.item.categorical[0, 1, 0].item() == 8 and b.item.categorical[1, 8, 0].item() == 24


def test_batch_part(ds):
    b = EpisodeCollator(FeatureTables(ds))(TASKS)
    fs, rs, ms = b.part("support")
    fq, rq, mq = b.part("query")
    n_cat, n_multi = ds.items.categorical.shape[1], ds.items.multihot.shape[1]
    assert fs.categorical.shape == (3, S, n_cat) and fs.multihot.shape == (3, S, n_multi)
    assert rs.shape == ms.shape == (3, S)
    assert fq.categorical.shape == (3, Q, n_cat) and fq.multihot.shape == (3, Q, n_multi)
    assert rq.shape == mq.shape == (3, Q)
    for i, t in enumerate(TASKS):
        ns, nq = len(t.support_items), len(t.query_items)
        assert ms[i].tolist() == [True] * ns + [False] * (S - ns)
        assert mq[i].tolist() == [True] * nq + [False] * (Q - nq)
        assert rs[i, :ns].tolist() == t.support_ratings.tolist()
        assert rq[i, :nq].tolist() == t.query_ratings.tolist()
        np.testing.assert_array_equal(fs.categorical[i, :ns].numpy(), ds.items.categorical[t.support_items])
        np.testing.assert_array_equal(fq.categorical[i, :nq].numpy(), ds.items.categorical[t.query_items])
        np.testing.assert_array_equal(fq.multihot[i, :nq].numpy(), ds.items.multihot[t.query_items])
        assert (rs[i, ns:] == 0).all() and (rq[i, nq:] == 0).all()


def test_batch_to_keeps_everything(ds):
    b = EpisodeCollator(FeatureTables(ds))(TASKS)
    c = b.to("cpu")
    assert c.n_support == b.n_support
    for name in ("user_ids", "item_ids", "ratings", "support_mask", "query_mask"):
        assert torch.equal(getattr(c, name), getattr(b, name))
    assert torch.equal(c.item.categorical, b.item.categorical) and torch.equal(c.user.multihot, b.user.multihot)


def test_single_task_has_no_padding(ds):
    b = EpisodeCollator(FeatureTables(ds))([TASKS[0]])
    assert b.n_support == 3 and b.item_ids.shape == (1, 5)
    assert b.item_ids.tolist() == [[5, 7, 9, 11, 12]]
    assert b.support_mask.tolist() == [[True, True, True, False, False]]
    assert b.query_mask.tolist() == [[False, False, False, True, True]]


def test_hidden_new_items_get_unknown_id_code(ds):
    before = ds.items.categorical.copy()
    hidden = np.array([5, 11, 20, 2])
    tables = FeatureTables(ds, hidden_items=hidden)
    np.testing.assert_array_equal(ds.items.categorical, before)  # the dataset is not modified
    b = EpisodeCollator(tables)(TASKS)
    col = [f.name for f in ds.items.categorical_fields].index("item_id")
    ids = b.item_ids.numpy()
    cat = b.item.categorical.numpy()
    is_hidden = np.isin(ids, hidden)
    assert is_hidden.sum() == 4
    assert (cat[..., col][is_hidden] == 0).all()
    np.testing.assert_array_equal(cat[..., col][~is_hidden], before[ids[~is_hidden], col])
    # Other columns and the multi-hot are untouched.
    other = [j for j in range(cat.shape[-1]) if j != col]
    np.testing.assert_array_equal(cat[..., other], before[ids][..., other])
    np.testing.assert_array_equal(b.item.multihot.numpy(), ds.items.multihot[ids])
    # Without hidden items every id keeps its code.
    plain = EpisodeCollator(FeatureTables(ds))(TASKS)
    assert (plain.item.categorical[..., col][torch.from_numpy(is_hidden)] > 0).all()


# ---------------------------------------------------------------------------------------------
# ColdStartDataModule


def _dm(num_workers=0, seed=0, split_seed=0, **kw) -> ColdStartDataModule:
    cfg = DataConfig(
        source="synthetic",
        params=dict(SYN_PARAMS),
        split=SplitConfig(**{**SPLIT, "seed": split_seed}),
        meta_batch_size=16,
        eval_batch_size=8,
        num_workers=num_workers,
        **kw,
    )
    dm = ColdStartDataModule(cfg, seed=seed)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def dm() -> ColdStartDataModule:
    return _dm()


def _same_task(a: Task, b: Task) -> bool:
    return (
        a.user == b.user
        and np.array_equal(a.support_items, b.support_items)
        and np.array_equal(a.query_items, b.query_items)
        and np.array_equal(a.support_ratings, b.support_ratings)
        and np.array_equal(a.query_ratings, b.query_ratings)
    )


def _unpack(batch: EpisodeBatch) -> list[tuple]:
    """(user, support items, support ratings, query items, query ratings) per task of a batch."""
    out = []
    for i in range(batch.n_tasks):
        sm, qm = batch.support_mask[i], batch.query_mask[i]
        out.append(
            (
                int(batch.user_ids[i]),
                batch.item_ids[i][sm].tolist(),
                batch.ratings[i][sm].tolist(),
                batch.item_ids[i][qm].tolist(),
                batch.ratings[i][qm].tolist(),
            )
        )
    return out


def _as_tuple(t: Task) -> tuple:
    return (
        t.user,
        np.asarray(t.support_items).tolist(),
        np.asarray(t.support_ratings, np.float32).tolist(),
        np.asarray(t.query_items).tolist(),
        np.asarray(t.query_ratings, np.float32).tolist(),
    )


def test_train_episodes_redrawn_per_epoch_and_reproducible(dm):
    cfg = dm.split_config
    eps = TrainEpisodes(dm.split, cfg)
    assert len(eps) == len(dm.split.train_pool) > 0
    changed = 0
    for i in range(len(eps)):
        a0, a0_again, a1 = eps[(0, i)], eps[(0, i)], eps[(1, i)]
        assert _same_task(a0, a0_again)
        changed += not np.array_equal(a0.query_items, a1.query_items)
        for t in (a0, a1):
            items, ratings = dm.split.train_pool[t.user]
            assert len(t.query_items) == cfg.query_size
            assert len(t.support_items) == len(items) - cfg.query_size
            assert not set(t.query_items.tolist()) & set(t.support_items.tolist())
            assert set(t.query_items.tolist()) | set(t.support_items.tolist()) == set(items.tolist())
            assert not dm.split.new_item_mask[t.query_items].any()
            lookup = dict(zip(items.tolist(), ratings.tolist()))
            assert t.query_ratings.tolist() == [lookup[x] for x in t.query_items.tolist()]
            assert t.support_ratings.tolist() == [lookup[x] for x in t.support_items.tolist()]
    assert changed >= len(eps) // 2  # nearly every user's query changes between epochs
    # A fresh data module with the same seeds draws the same episodes.
    other = TrainEpisodes(_dm().split, cfg)
    assert all(_same_task(eps[(3, i)], other[(3, i)]) for i in range(len(eps)))
    # Another split seed draws others.
    third = _dm(split_seed=1)
    eps3 = TrainEpisodes(third.split, third.split_config)
    u = int(np.intersect1d(eps.users, eps3.users)[0])
    i, j = int(np.flatnonzero(eps.users == u)[0]), int(np.flatnonzero(eps3.users == u)[0])
    assert not _same_task(eps[(0, i)], eps3[(0, j)])


def test_loguniform_train_support_cuts_training_supports_only(dm):
    """data.train_support=loguniform: each training episode keeps the first k of its support, k in 1..n,
    the same for the same (seed, epoch, user); small supports are common; the query and evaluation do not change."""
    full = TrainEpisodes(dm.split, dm.split_config)
    cut = TrainEpisodes(dm.split, dm.split_config, support="loguniform")
    sizes = []
    for e in (0, 1, 2):
        for i in range(len(full)):
            a, b = full[(e, i)], cut[(e, i)]
            assert np.array_equal(a.query_items, b.query_items)
            assert 1 <= len(b.support_items) <= len(a.support_items)
            assert np.array_equal(b.support_items, a.support_items[: len(b.support_items)])
            assert np.array_equal(b.support_ratings, a.support_ratings[: len(b.support_items)])
            assert _same_task(b, cut[(e, i)])
            sizes.append((len(b.support_items), len(a.support_items)))
    k, n = np.array(sizes).T
    assert (k <= 5).mean() > 0.3 and (k < n).mean() > 0.5 and (k > n // 2).any()
    m = _dm(train_support="loguniform")
    assert m.train_dataloader().dataset.support == "loguniform"


def test_mixed_train_support_keeps_about_half_the_supports_full(dm):
    """data.train_support=mixed: a seeded coin per (seed, epoch, user) keeps the full support, else the
    support is cut exactly as loguniform cuts it; the query does not change."""
    full = TrainEpisodes(dm.split, dm.split_config)
    cut = TrainEpisodes(dm.split, dm.split_config, support="loguniform")
    mixed = TrainEpisodes(dm.split, dm.split_config, support="mixed")
    kept, cuts = [], []
    for e in (0, 1, 2, 3):
        for i in range(len(full)):
            a, b, m = full[(e, i)], cut[(e, i)], mixed[(e, i)]
            assert np.array_equal(m.query_items, a.query_items)
            assert _same_task(m, mixed[(e, i)])
            is_full = _same_task(m, a)
            assert is_full or _same_task(m, b)
            kept.append(is_full)
            cuts.append(len(b.support_items) < len(a.support_items))
    kept, cuts = np.array(kept), np.array(cuts)
    assert 0.35 < kept[cuts].mean() < 0.65  # among episodes loguniform would cut, about half stay full
    assert (~kept & cuts).any()
    assert _dm(train_support="mixed").train_dataloader().dataset.support == "mixed"


def test_train_episodes_honour_support_size():
    cfg = DataConfig(
        source="synthetic", params=dict(SYN_PARAMS), split=SplitConfig(**{**SPLIT, "support_size": 3})
    )
    m = ColdStartDataModule(cfg)
    m.setup()
    eps = TrainEpisodes(m.split, m.split_config)
    assert {len(eps[(e, i)].support_items) for e in (0, 1) for i in range(len(eps))} == {3}


def test_sampler_orders(dm):
    s = EpochShuffleSampler(10, seed=4)
    e0 = list(s)
    assert list(s) == e0
    assert [e for e, _ in e0] == [0] * 10 and sorted(i for _, i in e0) == list(range(10))
    s.set_epoch(1)
    e1 = list(s)
    assert [e for e, _ in e1] == [1] * 10 and sorted(i for _, i in e1) == list(range(10))
    assert [i for _, i in e1] != [i for _, i in e0]
    assert list(EpochShuffleSampler(4, seed=4, shuffle=False)) == [(0, 0), (0, 1), (0, 2), (0, 3)]


def _train_batches(num_workers: int, epochs: int = 2) -> list[list[EpisodeBatch]]:
    dm = _dm(num_workers=num_workers)
    loader = dm.train_dataloader()
    assert loader.num_workers == num_workers
    out = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)  # what Lightning does at the start of every epoch
        out.append(list(loader))
    del loader
    return out


def _assert_batches_equal(a: EpisodeBatch, b: EpisodeBatch) -> None:
    assert a.n_support == b.n_support
    for name in ("user_ids", "item_ids", "ratings", "support_mask", "query_mask"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), name
    for name in ("categorical", "multihot"):
        assert torch.equal(getattr(a.user, name), getattr(b.user, name))
        assert torch.equal(getattr(a.item, name), getattr(b.item, name))


def test_training_batches_same_with_and_without_workers(dm):
    serial = _train_batches(0)
    parallel = _train_batches(2)
    n_train = len(dm.split.train_pool)
    assert [len(e) for e in serial] == [len(e) for e in parallel] == [-(-n_train // 16)] * 2
    for es, ep in zip(serial, parallel):
        for bs, bp in zip(es, ep):
            _assert_batches_equal(bs, bp)
    # Each epoch visits every training user once, in an order and with episodes that change per epoch.
    users = [torch.cat([b.user_ids for b in e]).tolist() for e in serial]
    assert sorted(users[0]) == sorted(users[1]) == sorted(dm.split.train_pool)
    assert users[0] != users[1]
    by_user = [{t[0]: t for b in e for t in _unpack(b)} for e in serial]
    assert any(by_user[0][u][3] != by_user[1][u][3] for u in by_user[0])
    # The batches are the TrainEpisodes tasks of that epoch.
    eps = TrainEpisodes(dm.split, dm.split_config)
    index = {int(u): i for i, u in enumerate(eps.users)}
    for epoch in (0, 1):
        for u, tup in by_user[epoch].items():
            assert tup == _as_tuple(eps[(epoch, index[u])])


def test_training_loader_hides_no_existing_item(dm):
    col = [f.name for f in dm.dataset.items.categorical_fields].index("item_id")
    batch = next(iter(dm.train_dataloader()))
    real = batch.support_mask | batch.query_mask
    assert (batch.item.categorical[..., col][real] == batch.item_ids[real] + 1).all()


def _loader_tasks(loader) -> list[tuple]:
    return [t for b in loader for t in _unpack(b)]


def test_val_and_test_loaders_yield_manifest_episodes(dm):
    assert dm.scenarios == ["warm", "user_cold", "item_cold", "user_item_cold"]
    val = _loader_tasks(dm.val_dataloader())
    assert val == [_as_tuple(t) for t in dm.split.episodes["val"]]
    loaders = dm.test_dataloader()
    assert len(loaders) == len(dm.scenarios)
    for scen, loader in zip(dm.scenarios, loaders):
        assert loader.batch_size == 8
        assert _loader_tasks(loader) == [_as_tuple(t) for t in dm.split.episodes[scen]], scen
    # Fixed episodes: a second pass gives the same.
    assert _loader_tasks(dm.test_dataloader()[2]) == [_as_tuple(t) for t in dm.split.episodes["item_cold"]]


def test_new_item_ids_hidden_in_eval_batches(dm):
    col = [f.name for f in dm.dataset.items.categorical_fields].index("item_id")
    loaders = dict(zip(dm.scenarios, dm.test_dataloader()))
    for scen in ("item_cold", "user_item_cold"):
        b = next(iter(loaders[scen]))
        real = b.support_mask | b.query_mask
        assert (b.item.categorical[..., col][real] == 0).all(), scen
    b = next(iter(loaders["user_cold"]))
    real = b.support_mask | b.query_mask
    assert (b.item.categorical[..., col][real] == b.item_ids[real] + 1).all()
    shown = _dm(hide_new_item_ids=False)
    b = next(iter(dict(zip(shown.scenarios, shown.test_dataloader()))["item_cold"]))
    real = b.support_mask | b.query_mask
    assert (b.item.categorical[..., col][real] == b.item_ids[real] + 1).all()


def test_data_module_from_saved_manifest(dm, tmp_path):
    path = dm.save_manifest(tmp_path / "split.json")
    # A different split seed in the config is ignored: the manifest decides.
    cfg = replace(dm.cfg, manifest=str(path), split=SplitConfig(**{**SPLIT, "seed": 7}))
    again = ColdStartDataModule(cfg)
    again.setup("test")
    assert again.split.manifest["content_hash"] == dm.split.manifest["content_hash"]
    assert again.split_config.seed == 0
    assert again.scenarios == dm.scenarios
    for scen, a, b in zip(dm.scenarios, dm.test_dataloader(), again.test_dataloader()):
        assert _loader_tasks(a) == _loader_tasks(b), scen
    assert _loader_tasks(again.val_dataloader()) == _loader_tasks(dm.val_dataloader())
    assert again.train_rating_mean() == pytest.approx(dm.train_rating_mean())
    e1, e2 = TrainEpisodes(dm.split, dm.split_config), TrainEpisodes(again.split, again.split_config)
    assert all(_same_task(e1[(1, i)], e2[(1, i)]) for i in range(len(e1)))


def test_item_id_dropout_hides_ids_in_training_only() -> None:
    dm = _dm(item_id_dropout=0.5)
    col = dm.collate.tables.item_id_column
    batch = next(iter(dm.train_dataloader()))
    real = batch.support_mask | batch.query_mask
    ids = batch.item.categorical[..., col][real]
    share = (ids == 0).float().mean().item()
    assert 0.35 < share < 0.65, share
    # the items themselves (and their other features) are unchanged
    torch.testing.assert_close(batch.item.multihot, dm.collate.tables.items(batch.item_ids).multihot)
    again = next(iter(_dm(item_id_dropout=0.5).train_dataloader()))
    assert torch.equal(again.item.categorical, batch.item.categorical)  # seeded
    val = next(iter(dm.val_dataloader()))
    known = ~torch.as_tensor(dm.split.new_item_mask)[val.item_ids]
    vmask = (val.support_mask | val.query_mask) & known
    assert (val.item.categorical[..., col][vmask] != 0).all()  # evaluation sees every known id
    with pytest.raises(ConfigError, match="data.item_id_dropout must be in"):
        _dm(item_id_dropout=1.0).train_dataloader()


def test_val_folds_give_each_validation_user_its_next_queries_from_its_own_ratings(dm):
    """``data.val_folds=F``: each validation user's fixed episode, then up to F - 1 more whose queries are
    its next ``query_size`` ratings (disjoint from the others'), the rest the support, as long as the
    fixed episode's; the K-cut validation passes cut every fold; test episodes are untouched."""
    folds = _dm(val_folds=3)
    val = _loader_tasks(folds.val_dataloader())
    fixed = dm.split.episodes["val"]
    q = len(fixed[0].query_items)
    at = 0
    n_folds = []
    for t in fixed:
        items = np.concatenate([t.query_items, t.support_items])
        rating = dict(zip(items.tolist(), np.concatenate([t.query_ratings, t.support_ratings]).tolist()))
        n = min(3, len(items) // q)
        mine = val[at : at + n]
        at += n
        n_folds.append(n)
        assert mine[0] == _as_tuple(t)
        assert {u for u, *_ in mine} == {t.user}
        queries = [set(qi) for _, _, _, qi, _ in mine]
        assert all(len(x) == q for x in queries) and len(set().union(*queries)) == n * q  # disjoint queries
        for f, (_, si, sr, qi, qr) in enumerate(mine):
            assert qi == items[f * q : (f + 1) * q].tolist()  # the next query_size ratings in the split's order
            assert sorted(si + qi) == sorted(items.tolist()) and len(si) == len(t.support_items)
            assert sr == [np.float32(rating[i]) for i in si] and qr == [np.float32(rating[i]) for i in qi]
    assert at == len(val) and max(n_folds) == 3 and len(val) > len(fixed)
    assert min(n_folds) >= 1
    for a, b in zip(folds.test_dataloader(), dm.test_dataloader()):  # test episodes: the same
        assert _loader_tasks(a) == _loader_tasks(b)
    cut = folds.for_support_size(2, users="val").test_tasks("val")
    assert len(cut) == len(val)
    for c, (_, si, _, qi, _) in zip(cut, val):
        assert c.support_items.tolist() == si[:2] and c.query_items.tolist() == qi
    assert _loader_tasks(_dm(val_folds=1).val_dataloader()) == [_as_tuple(t) for t in fixed]


def test_val_folds_must_be_a_positive_count():
    from metarec.config import compose

    for bad in ("0", "-1", "1.5", "true"):
        with pytest.raises(ConfigError, match="data.val_folds"):
            compose([f"data.val_folds={bad}"])
