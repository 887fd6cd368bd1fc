"""Tests for metarec.data.splits: cold-start split invariants, manifests, new-item methods, config errors.

Synthetic data (small, fast) and the real MovieLens 100K files (through the ``ml100k_root`` fixture).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from metarec.data import scenarios
from metarec.data.schema import RecDataset
from metarec.data.sources import load_dataset
from metarec.data.splits import (
    SCENARIOS,
    ColdStartSplit,
    SplitConfig,
    content_hash,
    cut_task,
    load_split,
    make_split,
    save_manifest,
)
from metarec.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]

# Source ratings per user span 12..45, the split keeps 15..40: users are dropped at both ends.
SYN_PARAMS = dict(n_users=160, n_items=80, min_ratings=12, max_ratings=45, seed=3)
SYN_SPLIT = dict(min_ratings=15, max_ratings=40, query_size=5, new_item_fraction=0.25)

# Which users and which items each scenario draws from.
SCENARIO_USERS = {"val": "val", "warm": "train", "user_cold": "new", "item_cold": "train", "user_item_cold": "new"}
SCENARIO_NEW_ITEMS = {"val": False, "warm": False, "user_cold": False, "item_cold": True, "user_item_cold": True}


# ---------------------------------------------------------------------------------------------
# Helpers


def syn_cfg(**kw) -> SplitConfig:
    return SplitConfig(**{**SYN_SPLIT, **kw})


def codes_of(ids: np.ndarray, raw: list) -> np.ndarray:
    """Codes of raw ids (both sources' id arrays are sorted)."""
    lookup = {int(v): i for i, v in enumerate(ids)}
    return np.array([lookup[int(v)] for v in raw], dtype=np.int64)


def rating_matrix(ds: RecDataset) -> np.ndarray:
    """Dense [n_users, n_items] float32 ratings, NaN where unrated."""
    m = np.full((ds.n_users, ds.n_items), np.nan, dtype=np.float32)
    r = ds.ratings
    m[r["user"].to_numpy(), r["item"].to_numpy()] = r["rating"].to_numpy(np.float32)
    return m


def user_groups(ds: RecDataset, split: ColdStartSplit) -> dict[str, np.ndarray]:
    u = split.manifest["users"]
    return {k: codes_of(ds.user_ids, u[k]) for k in ("new", "val", "train")}


def check_split(ds: RecDataset, cfg: SplitConfig, split: ColdStartSplit) -> None:
    """Assert every documented invariant of ``split`` made from ``ds`` with ``cfg``."""
    m = split.manifest
    counts = ds.ratings.groupby("user").size()
    kept = set(counts.index[(counts >= cfg.min_ratings) & (counts <= cfg.max_ratings)].tolist())
    assert kept, "test set-up: no kept users"
    assert len(kept) < len(counts), "test set-up: the count filter should drop someone"

    # Users: new / val / train are disjoint and together are the kept users.
    groups = user_groups(ds, split)
    sets = {k: set(v.tolist()) for k, v in groups.items()}
    for k, v in groups.items():
        assert len(sets[k]) == len(v), f"duplicate users in group {k}"
    assert not sets["new"] & sets["val"]
    assert not sets["new"] & sets["train"]
    assert not sets["val"] & sets["train"]
    assert sets["new"] | sets["val"] | sets["train"] == kept
    for u in kept:
        assert cfg.min_ratings <= counts[u] <= cfg.max_ratings
    assert len(groups["new"]) == int(round(cfg.new_user_fraction * len(kept)))
    n_existing = len(kept) - len(groups["new"])
    assert len(groups["val"]) == int(round(cfg.val_user_fraction * n_existing))

    # New items: the mask and the manifest agree.
    new_item = split.new_item_mask
    assert new_item.dtype == bool and new_item.shape == (ds.n_items,)
    assert sorted(codes_of(ds.item_ids, m["new_items"]).tolist()) == np.flatnonzero(new_item).tolist()

    R = rating_matrix(ds)
    need = cfg.query_size + cfg.needed_support
    assert list(split.episodes) == ["val", *cfg.scenarios]
    for scen, tasks in split.episodes.items():
        group = sets[SCENARIO_USERS[scen]]
        want_new = SCENARIO_NEW_ITEMS[scen]
        # Exactly the group's users with enough ratings on the scenario's kind of item get one task.
        eligible = {u for u in group if int((~np.isnan(R[u]) & (new_item == want_new)).sum()) >= need}
        users = [t.user for t in tasks]
        assert len(users) == len(set(users)), f"{scen}: a user has two tasks"
        assert set(users) == eligible, scen
        assert tasks, scen
        for t in tasks:
            s, q = np.asarray(t.support_items), np.asarray(t.query_items)
            assert len(q) == cfg.query_size
            if cfg.support_size is not None:
                assert len(s) == cfg.support_size
            else:
                assert len(s) >= cfg.min_support
                # The support is the rest of the user's ratings in the scenario.
                n_in = int((~np.isnan(R[t.user]) & (new_item == want_new)).sum())
                assert len(s) + len(q) == n_in
            assert len(set(s.tolist())) == len(s) and len(set(q.tolist())) == len(q)
            assert not set(s.tolist()) & set(q.tolist()), f"{scen}: query item in support"
            assert (new_item[s] == want_new).all() and (new_item[q] == want_new).all(), scen
            # Ratings are the dataset's ratings of these (user, item) pairs.
            np.testing.assert_array_equal(np.asarray(t.support_ratings, np.float32), R[t.user, s])
            np.testing.assert_array_equal(np.asarray(t.query_ratings, np.float32), R[t.user, q])
            assert not np.isnan(R[t.user, s]).any() and not np.isnan(R[t.user, q]).any()

    # No user is both warm (train/val episodes) and cold (new-user episodes).
    warm_users = {t.user for s in ("val", "warm", "item_cold") if s in split.episodes for t in split.episodes[s]}
    cold_users = {t.user for s in ("user_cold", "user_item_cold") if s in split.episodes for t in split.episodes[s]}
    assert not warm_users & cold_users

    # Training pool: train users with enough existing-item ratings, exactly their existing-item ratings.
    expected_pool = {u for u in sets["train"] if int((~np.isnan(R[u]) & ~new_item).sum()) >= need}
    assert set(split.train_pool) == expected_pool
    for u, (items, ratings) in split.train_pool.items():
        want = np.flatnonzero(~np.isnan(R[u]) & ~new_item)
        assert sorted(np.asarray(items).tolist()) == want.tolist()
        np.testing.assert_array_equal(np.asarray(ratings, np.float32), R[u, items])

    # Manifest episodes and stats agree with the in-memory episodes.
    for scen, tasks in split.episodes.items():
        rows = m["episodes"][scen]
        assert len(rows) == len(tasks)
        for row, t in zip(rows, tasks):
            assert codes_of(ds.user_ids, [row["user"]])[0] == t.user
            assert codes_of(ds.item_ids, row["support"]).tolist() == np.asarray(t.support_items).tolist()
            assert codes_of(ds.item_ids, row["query"]).tolist() == np.asarray(t.query_items).tolist()
        assert m["stats"][f"{scen}_users"] == len(tasks)
    assert m["stats"]["train_users"] == len(split.train_pool)
    assert m["stats"]["new_items"] == int(new_item.sum())
    assert m["stats"]["items"] == ds.n_items
    assert m["content_hash"] == content_hash(m)


def assert_same_episodes(a: ColdStartSplit, b: ColdStartSplit) -> None:
    assert list(a.episodes) == list(b.episodes)
    for scen in a.episodes:
        assert len(a.episodes[scen]) == len(b.episodes[scen]), scen
        for ta, tb in zip(a.episodes[scen], b.episodes[scen]):
            assert ta.user == tb.user
            for f in ("support_items", "support_ratings", "query_items", "query_ratings"):
                x, y = getattr(ta, f), getattr(tb, f)
                assert x.dtype == y.dtype, f
                np.testing.assert_array_equal(x, y, err_msg=f"{scen} {f}")


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def syn() -> RecDataset:
    return load_dataset("synthetic", SYN_PARAMS, None)


@pytest.fixture(scope="module")
def syn_split(syn) -> ColdStartSplit:
    return make_split(syn, syn_cfg())


@pytest.fixture(scope="module")
def ml_cfg() -> SplitConfig:
    """The split options of metarec/configs/data/movielens100k.yaml."""
    conf = OmegaConf.load(REPO / "metarec" / "configs" / "data" / "movielens100k.yaml")
    return SplitConfig(**OmegaConf.to_container(conf.split))


@pytest.fixture(scope="module")
def ml(ml100k_root) -> RecDataset:
    return load_dataset("movielens100k", {"download": False}, str(ml100k_root))


@pytest.fixture(scope="module")
def ml_split(ml, ml_cfg) -> ColdStartSplit:
    return make_split(ml, ml_cfg)


# ---------------------------------------------------------------------------------------------
# Invariants on synthetic data


def test_synthetic_split_invariants(syn, syn_split):
    check_split(syn, syn_cfg(), syn_split)


@pytest.mark.parametrize("method", ["year", "time"])
def test_synthetic_split_invariants_other_item_methods(syn, method):
    cfg = syn_cfg(new_item_method=method, new_item_year=1985, seed=5)
    check_split(syn, cfg, make_split(syn, cfg))


def test_synthetic_split_invariants_with_min_support(syn):
    cfg = syn_cfg(min_support=9, min_ratings=20)
    split = make_split(syn, cfg)
    check_split(syn, cfg, split)
    assert min(len(t.support_items) for ts in split.episodes.values() for t in ts) >= 9


@pytest.mark.parametrize("k", [1, 4])
def test_support_size_gives_exactly_k_support_items(syn, k):
    cfg = syn_cfg(support_size=k)
    split = make_split(syn, cfg)
    check_split(syn, cfg, split)
    for scen, tasks in split.episodes.items():
        assert {len(t.support_items) for t in tasks} == {k}, scen
        assert {len(t.query_items) for t in tasks} == {cfg.query_size}, scen


def test_support_size_raises_the_needed_ratings(syn):
    # With support_size=12 a user needs 5 + 12 ratings in a scenario to get a task.
    cfg = syn_cfg(support_size=12, min_ratings=17, new_item_fraction=0.1, scenarios=["warm", "user_cold"])
    split = make_split(syn, cfg)
    check_split(syn, cfg, split)


def test_subset_of_scenarios(syn):
    cfg = syn_cfg(scenarios=["user_item_cold", "warm"])
    split = make_split(syn, cfg)
    assert list(split.episodes) == ["val", "user_item_cold", "warm"]
    check_split(syn, cfg, split)
    assert set(split.manifest["episodes"]) == {"val", "user_item_cold", "warm"}


def test_round_trip_keeps_scenario_order(syn, tmp_path):
    # The saved JSON sorts its keys; the reloaded split must still list scenarios as make_split does.
    split = make_split(syn, syn_cfg(scenarios=["user_item_cold", "warm", "item_cold"]))
    loaded = load_split(syn, save_manifest(split, tmp_path / "split.json"))
    assert list(loaded.episodes) == ["val", "user_item_cold", "warm", "item_cold"]
    assert_same_episodes(loaded, split)


# ---------------------------------------------------------------------------------------------
# Determinism, manifests


def test_same_seed_gives_identical_manifest(syn, syn_split):
    again = make_split(syn, syn_cfg())
    assert again.manifest == syn_split.manifest
    assert again.manifest["content_hash"] == syn_split.manifest["content_hash"]
    assert_same_episodes(again, syn_split)
    np.testing.assert_array_equal(again.new_item_mask, syn_split.new_item_mask)


def test_different_seed_gives_different_split(syn, syn_split):
    other = make_split(syn, syn_cfg(seed=1))
    assert other.manifest["content_hash"] != syn_split.manifest["content_hash"]
    assert other.manifest["users"]["new"] != syn_split.manifest["users"]["new"]
    assert other.manifest["new_items"] != syn_split.manifest["new_items"]
    assert other.manifest["episodes"]["warm"] != syn_split.manifest["episodes"]["warm"]
    check_split(syn, syn_cfg(seed=1), other)


def test_manifest_is_json_and_round_trips(syn, syn_split, tmp_path):
    path = save_manifest(syn_split, tmp_path / "sub" / "split.json")
    assert path == tmp_path / "sub" / "split.json" and path.is_file()
    assert not (tmp_path / "sub" / "split.json.tmp").exists()
    assert json.loads(path.read_text()) == syn_split.manifest

    loaded = load_split(syn, path)
    assert loaded.manifest == syn_split.manifest
    assert_same_episodes(loaded, syn_split)
    np.testing.assert_array_equal(loaded.new_item_mask, syn_split.new_item_mask)
    assert set(loaded.train_pool) == set(syn_split.train_pool)
    for u, (items, ratings) in syn_split.train_pool.items():
        np.testing.assert_array_equal(loaded.train_pool[u][0], items)
        np.testing.assert_array_equal(loaded.train_pool[u][1], ratings)
    check_split(syn, syn_cfg(), loaded)


def _edit(path: Path, fn) -> None:
    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m, sort_keys=True))


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda m: m["episodes"]["warm"][0]["query"].reverse(), id="reorder-query"),
        pytest.param(
            lambda m: m["episodes"]["user_cold"][0].update(
                support=m["episodes"]["user_cold"][0]["query"][:1] + m["episodes"]["user_cold"][0]["support"][1:],
                query=m["episodes"]["user_cold"][0]["support"][:1] + m["episodes"]["user_cold"][0]["query"][1:],
            ),
            id="swap-support-query",
        ),
        pytest.param(lambda m: m["users"]["new"].pop(), id="drop-user"),
        pytest.param(lambda m: m["config"].update(query_size=3), id="config"),
        pytest.param(lambda m: m.update(content_hash="0" * 64), id="hash"),
        pytest.param(lambda m: m.pop("content_hash"), id="no-hash"),
    ],
)
def test_hand_edited_manifest_is_refused(syn, syn_split, tmp_path, edit):
    path = save_manifest(syn_split, tmp_path / "split.json")
    _edit(path, edit)
    with pytest.raises(DataError, match="content hash"):
        load_split(syn, path)


def test_manifest_of_other_data_is_refused(syn_split, tmp_path):
    path = save_manifest(syn_split, tmp_path / "split.json")
    other = load_dataset("synthetic", {**SYN_PARAMS, "seed": 4}, None)
    with pytest.raises(DataError, match="other data"):
        load_split(other, path)


def test_manifest_of_slightly_changed_ratings_is_refused(syn, syn_split, tmp_path):
    path = save_manifest(syn_split, tmp_path / "split.json")
    ratings = syn.ratings.copy()
    ratings.loc[ratings.index[7], "rating"] = 1.0 if ratings["rating"].iat[7] != 1.0 else 2.0
    changed = replace(syn, ratings=ratings)
    with pytest.raises(DataError, match="other data"):
        load_split(changed, path)


def test_unreadable_manifests_are_refused(syn, syn_split, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_split(syn, tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": 1, ')
    with pytest.raises(DataError, match="not valid JSON"):
        load_split(syn, bad)
    path = save_manifest(syn_split, tmp_path / "split.json")
    _edit(path, lambda m: m.update(format=99))
    with pytest.raises(DataError, match="format"):
        load_split(syn, path)


# ---------------------------------------------------------------------------------------------
# New-item methods


def test_random_new_items(syn):
    a = make_split(syn, syn_cfg(new_item_fraction=0.3, seed=0)).new_item_mask
    b = make_split(syn, syn_cfg(new_item_fraction=0.3, seed=1)).new_item_mask
    assert a.sum() == b.sum() == round(0.3 * syn.n_items)
    assert not np.array_equal(a, b)
    none = make_split(syn, syn_cfg(new_item_fraction=0.0, scenarios=["warm", "user_cold"]))
    assert not none.new_item_mask.any()
    assert none.manifest["new_items"] == []


def test_year_new_items(syn):
    cfg = syn_cfg(new_item_method="year", new_item_year=1985)
    split = make_split(syn, cfg)
    expected = syn.item_year >= 1985
    assert 0 < expected.sum() < syn.n_items
    np.testing.assert_array_equal(split.new_item_mask, expected)
    # Independent of the seed and of new_item_fraction.
    other = make_split(syn, replace(cfg, seed=9, new_item_fraction=0.9))
    np.testing.assert_array_equal(other.new_item_mask, expected)


def test_year_new_items_unknown_year_is_not_new(syn):
    years = syn.item_year.copy()
    years[:40] = np.nan
    years[40:] = 2000.0
    ds = replace(syn, item_year=years)
    split = make_split(ds, syn_cfg(new_item_method="year", new_item_year=1998))
    assert not split.new_item_mask[:40].any()
    assert split.new_item_mask[40:].all()


def test_time_new_items(syn):
    frac = 0.25
    split = make_split(syn, syn_cfg(new_item_method="time", new_item_fraction=frac))
    mask = split.new_item_mask
    first = syn.ratings.groupby("item")["timestamp"].min()
    rated = first.index.to_numpy()
    new_first = first[mask[rated]].to_numpy()
    old_first = first[~mask[rated]].to_numpy()
    assert len(new_first) and len(old_first)
    # Items first rated latest are the new ones.
    assert new_first.min() > old_first.max()
    assert abs(int(mask.sum()) - frac * len(rated)) <= 1
    # Depends on the data only, not on the seed.
    other = make_split(syn, syn_cfg(new_item_method="time", new_item_fraction=frac, seed=8))
    np.testing.assert_array_equal(other.new_item_mask, mask)


def test_time_new_items_follow_timestamps(syn):
    # Reverse time: the items first rated earliest now become the new ones.
    ratings = syn.ratings.copy()
    ratings["timestamp"] = ratings["timestamp"].max() - ratings["timestamp"]
    ds = replace(syn, ratings=ratings)
    mask = make_split(ds, syn_cfg(new_item_method="time", new_item_fraction=0.25)).new_item_mask
    first_orig = syn.ratings.groupby("item")["timestamp"].min()
    first_new = ratings.groupby("item")["timestamp"].min()
    assert first_new[mask[first_new.index]].min() > first_new[~mask[first_new.index]].max()
    # In original time, what is "new" now was not rated last.
    assert first_orig[mask[first_orig.index]].max() < first_orig.max()


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "kw, option",
    [
        (dict(min_ratings=10, query_size=10), "min_ratings"),
        (dict(min_ratings=12, query_size=10, min_support=3), "min_ratings"),
        (dict(min_ratings=15, query_size=10, support_size=6), "min_ratings"),
        (dict(min_ratings=20, max_ratings=19), "max_ratings"),
        (dict(query_size=0), "query_size"),
        (dict(min_support=0), "min_support"),
        (dict(support_size=0), "support_size"),
        (dict(new_user_fraction=1.0), "new_user_fraction"),
        (dict(new_user_fraction=-0.1), "new_user_fraction"),
        (dict(val_user_fraction=1.5), "val_user_fraction"),
        (dict(new_item_fraction=float("nan")), "new_item_fraction"),
        (dict(new_item_method="popularity"), "new_item_method"),
        (dict(scenarios=["warm", "cold"]), "scenarios"),
        (dict(scenarios=["val"]), "scenarios"),
        (dict(scenarios=[]), "scenarios"),
    ],
)
def test_config_errors(syn, kw, option):
    cfg = SplitConfig(**{**dict(min_ratings=15, max_ratings=40, query_size=5), **kw})
    with pytest.raises(ConfigError, match=option):
        make_split(syn, cfg)


def test_scenario_names_are_the_documented_ones():
    assert SCENARIOS == ("warm", "user_cold", "item_cold", "user_item_cold")


@pytest.mark.parametrize(
    "kw, scenario",
    [
        (dict(new_item_fraction=0.0, scenarios=["user_item_cold"]), "user_item_cold"),
        (dict(new_item_fraction=0.0, scenarios=["warm", "item_cold"]), "item_cold"),
        (dict(new_item_method="year", new_item_year=2100, scenarios=["user_cold", "item_cold"]), "item_cold"),
        (dict(new_user_fraction=0.0, scenarios=["warm", "user_cold"]), "user_cold"),
        (dict(val_user_fraction=0.0, scenarios=["warm"]), "val"),
    ],
)
def test_empty_scenario_is_a_data_error_naming_it(syn, kw, scenario):
    with pytest.raises(DataError, match=f"scenario '{scenario}' is empty"):
        make_split(syn, syn_cfg(**kw))


def test_no_kept_user_is_a_data_error(syn):
    with pytest.raises(DataError, match="min_ratings"):
        make_split(syn, syn_cfg(min_ratings=60, max_ratings=70))


# ---------------------------------------------------------------------------------------------
# Real MovieLens 100K


def test_ml100k_config_is_the_documented_one(ml_cfg):
    assert (ml_cfg.min_ratings, ml_cfg.max_ratings, ml_cfg.query_size) == (13, 100, 10)
    assert (ml_cfg.new_user_fraction, ml_cfg.val_user_fraction) == (0.2, 0.1)
    assert (ml_cfg.new_item_method, ml_cfg.new_item_fraction) == ("random", 0.2)


def test_ml100k_user_counts(ml100k_root, ml, ml_cfg, ml_split):
    raw = pd.read_csv(ml100k_root / "ml-100k" / "u.data", sep="\t", header=None, names=["u", "i", "r", "t"])
    assert len(raw) == 100_000
    per_user = raw.groupby("u").size()
    kept_ids = set(per_user.index[(per_user >= 13) & (per_user <= 100)].tolist())
    assert 550 <= len(kept_ids) <= 650

    users = ml_split.manifest["users"]
    assert set(users["new"]) | set(users["val"]) | set(users["train"]) == kept_ids
    n_new = round(0.2 * len(kept_ids))
    n_val = round(0.1 * (len(kept_ids) - n_new))
    assert (len(users["new"]), len(users["val"]), len(users["train"])) == (
        n_new,
        n_val,
        len(kept_ids) - n_new - n_val,
    )
    stats = ml_split.manifest["stats"]
    assert stats["items"] == 1682
    assert stats["new_items"] == round(0.2 * 1682)
    # Everyone kept has >= 13 ratings, so every existing user has a training pool and a warm task,
    # unless more than 3 of their ratings fell on new items; most do.
    assert 0.8 * len(users["train"]) <= stats["train_users"] <= len(users["train"])
    assert stats["warm_users"] == stats["train_users"]
    assert 0 < stats["user_item_cold_users"] <= stats["user_cold_users"] <= len(users["new"])
    assert 0 < stats["item_cold_users"] <= len(users["train"])


def test_ml100k_split_invariants(ml, ml_cfg, ml_split):
    check_split(ml, ml_cfg, ml_split)


def test_ml100k_year_split(ml, ml_cfg):
    cfg = replace(ml_cfg, new_item_method="year", new_item_year=1998)
    split = make_split(ml, cfg)
    expected = np.nan_to_num(ml.item_year, nan=0.0) >= 1998
    np.testing.assert_array_equal(split.new_item_mask, expected)
    assert expected.sum() > 0
    unknown = np.flatnonzero(np.isnan(ml.item_year))
    assert len(unknown) >= 1 and not split.new_item_mask[unknown].any()
    check_split(ml, cfg, split)


def test_ml100k_time_split(ml, ml_cfg):
    cfg = replace(ml_cfg, new_item_method="time")
    split = make_split(ml, cfg)
    first = ml.ratings.groupby("item")["timestamp"].min()
    mask = split.new_item_mask
    assert first[mask[first.index]].min() > first[~mask[first.index]].max()
    assert abs(int(mask.sum()) - 0.2 * len(first)) <= 1
    check_split(ml, cfg, split)


def test_ml100k_round_trip_and_refusals(ml, ml_split, syn, tmp_path):
    path = save_manifest(ml_split, tmp_path / "ml.json")
    loaded = load_split(ml, path)
    assert loaded.manifest["content_hash"] == ml_split.manifest["content_hash"]
    assert_same_episodes(loaded, ml_split)
    np.testing.assert_array_equal(loaded.new_item_mask, ml_split.new_item_mask)
    assert set(loaded.train_pool) == set(ml_split.train_pool)
    # Made on other data.
    with pytest.raises(DataError, match="other data"):
        load_split(syn, path)
    # Edited by hand: a new user moved to training.
    _edit(path, lambda m: m["users"]["train"].append(m["users"]["new"].pop()))
    with pytest.raises(DataError, match="content hash"):
        load_split(ml, path)


def test_ml100k_same_seed_same_manifest(ml, ml_cfg, ml_split):
    assert make_split(ml, ml_cfg).manifest == ml_split.manifest
    other = make_split(ml, replace(ml_cfg, seed=1))
    assert other.manifest["content_hash"] != ml_split.manifest["content_hash"]
    assert other.manifest["users"]["new"] != ml_split.manifest["users"]["new"]


def test_ml100k_ratings_are_integers_of_u_data(ml100k_root, ml_split):
    raw = pd.read_csv(ml100k_root / "ml-100k" / "u.data", sep="\t", header=None, names=["u", "i", "r", "t"])
    lookup = {(u, i): r for u, i, r in raw[["u", "i", "r"]].itertuples(index=False)}
    rows = ml_split.manifest["episodes"]["user_cold"]
    tasks = ml_split.episodes["user_cold"]
    for row, t in zip(rows, tasks):
        got = [lookup[(row["user"], i)] for i in row["query"]]
        assert np.asarray(t.query_ratings).tolist() == [float(x) for x in got]
        assert math.isclose(
            float(np.sum(t.support_ratings)), float(sum(lookup[(row["user"], i)] for i in row["support"]))
        )


def test_fingerprint_accepts_text_ids_and_tells_data_apart():
    from metarec.data.schema import dataset_fingerprint
    from metarec.data.sources import load_dataset

    ds = load_dataset("synthetic", {"n_users": 100}, None)
    ds.user_ids = np.array([f"usér-{i}" for i in range(ds.n_users)], dtype=object)
    a = dataset_fingerprint(ds)
    ds.user_ids = np.array([f"user-{i}" for i in range(ds.n_users)], dtype=object)
    assert a != dataset_fingerprint(ds)


def test_the_scenario_table_matches_what_the_split_draws() -> None:
    assert SCENARIOS == scenarios.SCENARIOS == ("warm", "user_cold", "item_cold", "user_item_cold")
    for name in ("val", *SCENARIOS):
        assert scenarios.new_items(name) == SCENARIO_NEW_ITEMS[name]
        assert scenarios.new_users(name) == (SCENARIO_USERS[name] == "new")
    assert not scenarios.new_items("train") and scenarios.VAL_SCENARIO == "user_cold"  # validation users are held out


def test_cut_task_takes_the_query_first_then_at_most_support_size() -> None:
    items, ratings = np.arange(10, 20), np.arange(10, dtype=np.float32)
    t = cut_task(7, items, ratings, np.array([3, 1, 4, 0, 5, 9, 2]), 2, 3)
    assert (t.user, t.query_items.tolist(), t.support_items.tolist()) == (7, [13, 11], [14, 10, 15])
    assert t.query_ratings.tolist() == [3.0, 1.0] and t.support_ratings.tolist() == [4.0, 0.0, 5.0]
    t = cut_task(7, items, ratings, None, 4)
    assert t.query_items.tolist() == [10, 11, 12, 13] and t.support_items.tolist() == list(range(14, 20))
