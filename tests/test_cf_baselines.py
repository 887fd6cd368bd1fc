"""The collaborative-filtering baselines ``itemknn`` and ``ease``: hand-computed item-item similarities
and fold-in scores, EASE's closed form, the choice of l2 on validation users only, the content fallback
for new items, end-to-end runs (ranking metrics only) and serving through ``metarec.Recommender``."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

import metarec
from metarec.config import compose
from metarec.data.episodes import Support
from metarec.errors import ConfigError, MetarecError
from metarec.learners import LearnerContext, build_learner
from metarec.learners.ease import EASEConfig
from metarec.learners.itemknn import ItemKNNConfig
from metarec.metrics.full_ranking import full_ranking
from metarec.models.base import Features
from metarec.runs import finished_runs
from metarec.train import fit

TINY = ["data.params.n_users=200", "trainer.enable_progress_bar=false"]


# ------------------------------------------------------------------------------------------ toy data
def toy_ctx(pool: dict, n_items: int, new=(), items: Features | None = None, **kw) -> LearnerContext:
    mask = torch.zeros(n_items, dtype=torch.bool)
    mask[list(new)] = True
    base = dict(
        rating_range=(1.0, 5.0), train_rating_mean=3.0, val_scenarios=["warm"], test_scenarios=["user_cold"],
        train_pool={u: (np.asarray(i, np.int64), np.asarray(r, np.float32)) for u, (i, r) in pool.items()},
        n_items=n_items, new_item_mask=mask, all_items=items, relevance_threshold=4.0,
    )
    base.update(kw)
    return LearnerContext(**base)


def support(rows: list[list[tuple[int, float]]]) -> Support:
    """A padded support from per-task ``(item, rating)`` lists."""
    s = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), s, dtype=torch.long)
    y = torch.zeros(len(rows), s)
    m = torch.zeros(len(rows), s, dtype=torch.bool)
    for t, row in enumerate(rows):
        for j, (i, r) in enumerate(row):
            ids[t, j], y[t, j], m[t, j] = i, r, True
    feats = Features(torch.zeros(len(rows), s, 1, dtype=torch.long), torch.zeros(len(rows), s, 0))
    return Support(ids, feats, y, m)


def scores_of(learner, sup: Support) -> np.ndarray:
    state = learner.adapt(None, sup)
    t, n = sup.n_tasks, learner.ctx.n_items
    ids = torch.arange(n).expand(t, n)
    return learner.score(state, ids, None).double().numpy()


# user -> (items, ratings); ratings below 4 are not relevant interactions
TOY_POOL = {
    0: ([0, 1, 4], [5, 4, 1]),
    1: ([0, 1, 2], [4, 5, 4]),
    2: ([1, 2], [5, 4]),
    3: ([2, 3, 4], [4, 5, 2]),
}


def test_itemknn_similarity_matches_a_hand_computation_with_shrink_and_neighbour_cut():
    # relevant interactions: items 0 {u0,u1}, 1 {u0,u1,u2}, 2 {u1,u2,u3}, 3 {u3}; item 4 only rated 1-2
    ctx = toy_ctx(TOY_POOL, 5)
    learner = build_learner("itemknn", nn.Identity(), ctx, ItemKNNConfig(neighbours=1, shrink=1.0,
                                                                        popularity_tiebreak=False))
    assert learner.covered.tolist() == [0, 1, 2, 3]  # item 4 has no relevant training interaction
    r6, r3 = math.sqrt(6), math.sqrt(3)
    s01, s02, s12, s23 = 2 / (r6 + 1), 1 / (r6 + 1), 2 / (3 + 1), 1 / (r3 + 1)
    # each target item j keeps its single most similar item: 0 <- 1 (s01 > s02), 1 <- 0 (s01 > s12),
    # 2 <- 1 (s12 > s23 > s02), 3 <- 2
    want = np.zeros((4, 4))
    want[1, 0], want[0, 1], want[1, 2], want[2, 3] = s01, s01, s12, s23
    np.testing.assert_allclose(learner.similarity.toarray(), want, rtol=1e-12)

    full = build_learner("itemknn", nn.Identity(), ctx, ItemKNNConfig(neighbours=10, shrink=1.0))
    sym = np.zeros((4, 4))
    for (i, j), v in {(0, 1): s01, (0, 2): s02, (1, 2): s12, (2, 3): s23}.items():
        sym[i, j] = sym[j, i] = v
    np.testing.assert_allclose(full.similarity.toarray(), sym, rtol=1e-12)

    # fold-in: support positives are ratings >= 4 (items 1 and 2; item 3 rated 2 is not one)
    got = scores_of(learner, support([[(1, 5.0), (2, 4.0), (3, 2.0)]]))[0]
    np.testing.assert_allclose(got, [s01, 0.0, s12, s23, 0.0], rtol=1e-6)


def test_itemknn_fold_in_is_the_sum_of_neighbour_similarities_over_support_positives():
    rng = np.random.default_rng(0)
    n_items = 30
    pool = {u: (rng.choice(n_items, 8, replace=False), rng.integers(1, 6, 8)) for u in range(40)}
    learner = build_learner("itemknn", nn.Identity(), toy_ctx(pool, n_items),
                            ItemKNNConfig(neighbours=5, shrink=2.0, popularity_tiebreak=False))
    w = np.zeros((n_items, n_items))
    c = learner.covered
    w[np.ix_(c, c)] = learner.similarity.toarray()
    assert (np.count_nonzero(w, axis=0) <= 5).all() and np.all(np.diag(w) == 0)
    rows = [[(int(i), float(r)) for i, r in zip(rng.choice(n_items, 6, replace=False), rng.integers(1, 6, 6))]
            for _ in range(4)]
    got = scores_of(learner, support(rows))
    for t, row in enumerate(rows):
        pos = [i for i, r in row if r >= 4]
        np.testing.assert_allclose(got[t], w[pos].sum(0), rtol=1e-6, atol=1e-7)


def _closed_form_b(x: np.ndarray, l2: float) -> np.ndarray:
    p = np.linalg.inv(x.T @ x + l2 * np.eye(x.shape[1]))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


@pytest.mark.parametrize("n_users", [40, 6])  # Gram of the items, and of the users (fewer users than items)
def test_ease_weights_equal_the_closed_form(n_users):
    rng = np.random.default_rng(n_users)
    n_items = 12
    pool = {u: (rng.choice(n_items, 5, replace=False), np.full(5, 5.0)) for u in range(n_users)}
    ctx = toy_ctx(pool, n_items)
    learner = build_learner("ease", nn.Identity(), ctx, EASEConfig(l2=3.0, popularity_tiebreak=False))
    x = np.zeros((n_users, n_items))
    for u, (its, _) in pool.items():
        x[u, its] = 1
    c = learner.covered
    want = _closed_form_b(x[:, c], 3.0)
    b = learner.item_weights()
    np.testing.assert_allclose(np.diag(b), 0.0, atol=1e-10)
    np.testing.assert_allclose(b, want, rtol=1e-7, atol=1e-9)
    # B = I - P diagMat(1/diag P): (X^T X + l2 I)(I - B) is diagonal
    m = (x[:, c].T @ x[:, c] + 3.0 * np.eye(len(c))) @ (np.eye(len(c)) - b)
    np.testing.assert_allclose(m - np.diag(np.diag(m)), 0.0, atol=1e-8)
    # fold-in scores are u B over the covered items
    rows = [[(int(i), 5.0) for i in rng.choice(n_items, 4, replace=False)] for _ in range(3)]
    got = scores_of(learner, support(rows))
    for t, row in enumerate(rows):
        u = np.zeros(n_items)
        u[[i for i, _ in row]] = 1
        full = np.zeros(n_items)
        full[c] = u[c] @ want
        np.testing.assert_allclose(got[t], full, rtol=1e-5, atol=1e-6)


def test_bce_support_positives_are_label_one_and_implicit_supports_count_every_item():
    ctx = toy_ctx(TOY_POOL, 5, loss="bce")
    learner = build_learner("itemknn", nn.Identity(), ctx, ItemKNNConfig(neighbours=10, shrink=0.0))
    # under bce every training interaction counts (item 4 too) and only label-1 support entries fold in
    assert learner.covered.tolist() == [0, 1, 2, 3, 4]
    sup = support([[(1, 1.0), (3, 0.0)]])
    assert learner.support_positives(sup).tolist() == [[True, False]]
    implicit = build_learner("itemknn", nn.Identity(), toy_ctx(TOY_POOL, 5, interactions_only=True), ItemKNNConfig())
    assert implicit.support_positives(support([[(1, 1.0), (3, 2.0)]])).tolist() == [[True, True]]
    explicit = build_learner("itemknn", nn.Identity(), toy_ctx(TOY_POOL, 5), ItemKNNConfig())
    assert explicit.support_positives(support([[(1, 4.0), (3, 3.5)]])).tolist() == [[True, False]]


def test_fold_rated_folds_in_every_rated_support_item_on_explicit_data_only():
    sup = support([[(1, 4.0), (3, 2.0), (0, 1.0)], [(2, 5.0)]])
    for name, cfg in (("itemknn", ItemKNNConfig(fold="rated", popularity_tiebreak=False)),
                      ("ease", EASEConfig(l2=2.0, fold="rated", popularity_tiebreak=False))):
        rated = build_learner(name, nn.Identity(), toy_ctx(TOY_POOL, 5), cfg)
        assert rated.support_positives(sup).tolist() == sup.mask.tolist()
        relevant = build_learner(name, nn.Identity(), toy_ctx(TOY_POOL, 5), dataclasses.replace(cfg, fold="relevant"))
        # folding in every rated item equals the relevant-items fold-in of a support where each rating is relevant
        lifted = dataclasses.replace(sup, ratings=torch.where(sup.mask, 5.0, 0.0))
        np.testing.assert_allclose(scores_of(rated, sup), scores_of(relevant, lifted), rtol=1e-6, atol=1e-9)
        assert not np.allclose(scores_of(rated, sup)[0], scores_of(relevant, sup)[0])
    implicit = build_learner("itemknn", nn.Identity(), toy_ctx(TOY_POOL, 5, loss="bce"), ItemKNNConfig(fold="rated"))
    assert implicit.support_positives(support([[(1, 1.0), (3, 0.0)]])).tolist() == [[True, False]]  # labels rule


def test_new_items_get_content_similarity_never_a_silent_zero():
    # items: one categorical field (item id, unique: dropped) + a 3-wide genre multi-hot
    genre = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 1]], dtype=torch.float32)
    items = Features(torch.tensor([[1], [2], [3], [4], [0], [0]]), genre)
    pool = {0: ([0, 1], [5, 5]), 1: ([1, 2], [5, 5]), 2: ([2, 3], [5, 5])}
    ctx = toy_ctx(pool, 6, new=(4, 5), items=items)
    for name, cfg in (("itemknn", ItemKNNConfig(content_weight=0.5)), ("ease", EASEConfig(l2=1.0, content_weight=0.5))):
        learner = build_learner(name, nn.Identity(), ctx, cfg)
        got = scores_of(learner, support([[(0, 5.0), (2, 5.0)]]))[0]
        unit = genre / genre.norm(dim=1, keepdim=True)
        want = 0.5 * (unit[[0, 2]].sum(0) @ unit[[4, 5]].T)  # cosine of genres (ids carry no similarity)
        np.testing.assert_allclose(got[[4, 5]], want.numpy(), rtol=1e-6)
        assert (got[[4, 5]] > 0).all()


def test_bad_options_are_one_line_config_errors(tmp_path):
    bad = [
        (ItemKNNConfig, dict(neighbours=0), "neighbours"),
        (ItemKNNConfig, dict(shrink=-1.0), "shrink"),
        (ItemKNNConfig, dict(neighbours_grid=[10, 0]), "neighbours_grid"),
        (ItemKNNConfig, dict(neighbours_grid=[]), "neighbours_grid"),
        (ItemKNNConfig, dict(shrink_grid=[1.0, float("nan")]), "shrink_grid"),
        (ItemKNNConfig, dict(select_by="recall@0"), "select_by"),
        (EASEConfig, dict(l2_grid=[]), "l2_grid"),
        (EASEConfig, dict(l2_grid=[10.0, -1.0]), "l2_grid"),
        (EASEConfig, dict(l2=0.0), "l2"),
        (EASEConfig, dict(select_by="mae"), "select_by"),
    ]
    for cls, kw, word in bad:
        with pytest.raises(ConfigError, match=word) as e:
            cls(**kw)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="interactions"):
        build_learner("itemknn", nn.Identity(), toy_ctx(TOY_POOL, 5), ItemKNNConfig(interactions="some"))
    with pytest.raises(ConfigError, match="learner.fold must be one of relevant, rated"):
        build_learner("ease", nn.Identity(), toy_ctx(TOY_POOL, 5), EASEConfig(l2=1.0, fold="all"))
    with pytest.raises(ConfigError, match="validation users"):  # a grid but no validation users to choose on
        build_learner("ease", nn.Identity(), toy_ctx(TOY_POOL, 5), EASEConfig())
    with pytest.raises(ConfigError, match="validation users.*learner.neighbours_grid=null"):
        build_learner("itemknn", nn.Identity(), toy_ctx(TOY_POOL, 5), ItemKNNConfig(shrink_grid=[0.0, 10.0]))
    with pytest.raises(ConfigError, match="learner.shrink") as e:  # through the command line's config
        fit(compose([*TINY, "learner=itemknn", "learner.shrink=-2", f"run.root={tmp_path}"]))
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------ on real runs
def _validation_recall(learner, dm, loader, size: int | None = None) -> float:
    """The validation users' mean Recall@10 under the learner's own adapt / rank_score (``size``: each
    support cut here to its first ``size`` ratings as the support-size-K passes cut it — the rest of the
    support is unknown to the learner and stays a candidate; users with fewer ratings are left out)."""
    values = []
    for batch in loader(dm):
        if size is not None:
            s = batch.n_support
            keep = batch.support_mask[:, :s] & (batch.support_mask[:, :s].cumsum(1) <= size)
            enough = batch.support_mask[:, :s].sum(1) >= size
            batch = dataclasses.replace(batch, support_mask=torch.cat([keep, batch.support_mask[:, s:]], 1),
                                        query_mask=batch.query_mask & enough.unsqueeze(1))
        state = learner.adapt(batch.user, batch.support())
        n = learner.ctx.n_items
        s = learner.rank_score(state, torch.arange(n).expand(batch.n_tasks, n), None)
        cand, rel = learner.ranking_targets(batch, "warm")
        v = full_ranking(s.masked_fill(~cand, float("-inf")), rel & cand, 10, "recall")
        values += v[~torch.isnan(v)].tolist()
    return float(np.mean(values))


def test_ease_chooses_l2_on_the_validation_users_only(monkeypatch):
    from metarec.assembly import build
    from metarec.data.datamodule import ColdStartDataModule

    def forbidden(self, *a, **kw):
        raise AssertionError("the l2 search touched the test users")

    monkeypatch.setattr(ColdStartDataModule, "test_dataloader", forbidden)
    monkeypatch.setattr(ColdStartDataModule, "test_tasks", forbidden)
    calls = []
    real = ColdStartDataModule.val_dataloader

    def val(self):
        calls.append(1)
        return real(self)

    monkeypatch.setattr(ColdStartDataModule, "val_dataloader", val)
    grid = [1.0, 30.0, 1000.0]
    dm, learner = build(compose([*TINY, "learner=ease", f"learner.l2_grid={grid}"]))
    assert calls and sorted(learner.l2_scores) == grid
    assert learner.chosen_l2 == max(grid, key=lambda l2: (learner.l2_scores[l2], -grid.index(l2)))
    assert learner.hparams["l2"] == learner.chosen_l2
    # each score is the validation users' Recall@10 under the learner's own adapt / rank_score
    users = {int(u) for b in real(dm) for u in b.user_ids}
    assert users.isdisjoint({t.user for s in dm.scenarios for t in dm.split.episodes[s]})
    for l2 in grid:
        learner.set_l2(l2)
        assert learner.l2_scores[l2] == pytest.approx(_validation_recall(learner, dm, real), rel=1e-6)


def test_itemknn_chooses_neighbours_and_shrink_on_the_validation_users_only(monkeypatch):
    """With grids (the learner's YAML sets them) the pair is the best of every (neighbours, shrink) on the
    validation users' Recall@10 (ties: the earlier pair), each score is that pair's own fold-in's, the test
    users are never read; without grids the fixed pair is used and nothing is scored."""
    from metarec.assembly import build
    from metarec.data.datamodule import ColdStartDataModule
    from metarec.learners.itemknn import cosine_neighbours

    def forbidden(self, *a, **kw):
        raise AssertionError("the neighbourhood search touched the test users")

    monkeypatch.setattr(ColdStartDataModule, "test_dataloader", forbidden)
    monkeypatch.setattr(ColdStartDataModule, "test_tasks", forbidden)
    real = ColdStartDataModule.val_dataloader
    dm, learner = build(compose([*TINY, "learner=itemknn", "learner.neighbours_grid=[2,20]",
                                 "learner.shrink_grid=[0.0,50.0]"]))
    pairs = [(2, 0.0), (20, 0.0), (2, 50.0), (20, 50.0)]
    assert list(learner.pair_scores) == pairs
    assert learner.chosen == max(pairs, key=lambda p: (learner.pair_scores[p], -pairs.index(p)))
    assert (learner.hparams["neighbours"], learner.hparams["shrink"]) == learner.chosen
    chosen = learner.similarity
    assert (chosen != cosine_neighbours(learner.X, *learner.chosen)).nnz == 0
    assert len({round(v, 9) for v in learner.pair_scores.values()}) > 1  # the settings do differ here
    for pair in pairs:
        learner.similarity = cosine_neighbours(learner.X, *pair)
        assert learner.pair_scores[pair] == pytest.approx(_validation_recall(learner, dm, real), rel=1e-6)
    _, fixed = build(compose([*TINY, "learner=itemknn", "learner.neighbours_grid=null", "learner.shrink_grid=null",
                              "learner.neighbours=7", "learner.shrink=3"]))
    assert fixed.chosen == (7, 3.0) and fixed.pair_scores == {}


@pytest.mark.parametrize("name", ["itemknn", "ease"])
def test_select_sizes_score_each_setting_over_the_full_and_the_cut_validation_supports(monkeypatch, name):
    """``learner.select_sizes``: a setting's score is the mean of its validation Recall@10 with the full
    support and with each validation support cut to its first K ratings; test users are never read."""
    from metarec.assembly import build
    from metarec.data.datamodule import ColdStartDataModule
    from metarec.learners.itemknn import cosine_neighbours

    def forbidden(self, *a, **kw):
        raise AssertionError("the choice touched the test users")

    monkeypatch.setattr(ColdStartDataModule, "test_dataloader", forbidden)
    monkeypatch.setattr(ColdStartDataModule, "test_tasks", forbidden)
    real = ColdStartDataModule.val_dataloader
    grid = (["learner.neighbours_grid=[2,20]", "learner.shrink_grid=[0.0,50.0]"] if name == "itemknn"
            else ["learner.l2_grid=[1.0,30.0,1000.0]"])
    dm, learner = build(compose([*TINY, f"learner={name}", *grid, "learner.select_sizes=[1,3]"]))
    scores = learner.pair_scores if name == "itemknn" else learner.l2_scores
    _, plain = build(compose([*TINY, f"learner={name}", *grid]))
    assert scores != (plain.pair_scores if name == "itemknn" else plain.l2_scores)
    for setting, score in scores.items():
        if name == "itemknn":
            learner.similarity = cosine_neighbours(learner.X, *setting)
        else:
            learner.set_l2(setting)
        want = np.mean([_validation_recall(learner, dm, real, size) for size in (None, 1, 3)])
        assert score == pytest.approx(want, rel=1e-6)
    best = max(scores, key=lambda k: (scores[k], -list(scores).index(k)))
    assert (learner.chosen if name == "itemknn" else learner.chosen_l2) == best
    for bad in ("[0]", "[]", "[1,true]"):
        with pytest.raises(MetarecError, match="learner.select_sizes") as e:
            build(compose([*TINY, f"learner={name}", f"learner.select_sizes={bad}"]))
        assert "\n" not in str(e.value)


def test_val_support_sizes_report_the_validation_users_at_small_supports(tmp_path):
    """``data.val_support_sizes=[K]``: after training, the validation users' supports cut to K are ranked
    by the learner (``val_kK/user_cold/...``, equal to the learner's own ranking of those supports); the
    test passes are unchanged and ``report --stage val_kK`` tabulates them."""
    from metarec.assembly import build
    from metarec.data.datamodule import ColdStartDataModule
    from metarec.report import load_runs, render_report

    over = [*TINY, "learner=itemknn", "learner.neighbours_grid=null", "learner.shrink_grid=null",
            "data.split.scenarios=[user_cold,item_cold]"]
    run = fit(compose([*over, f"run.root={tmp_path}/a", "data.val_support_sizes=[1,3]"]))
    plain = fit(compose([*over, f"run.root={tmp_path}/b"]))
    (record,), (before,) = finished_runs(run), finished_runs(plain)
    dm, learner = build(compose(over))
    real = ColdStartDataModule.val_dataloader
    for k in (1, 3):
        got = record["metrics"][f"val_k{k}/user_cold/full_recall@10"]
        assert got == pytest.approx(_validation_recall(learner, dm, real, k), rel=1e-5)
        cut = lambda d: d.for_support_size(k, "val").test_dataloader()[0]  # noqa: E731  (the pass's own episodes)
        assert got == pytest.approx(_validation_recall(learner, dm, cut), rel=1e-5)
        assert not any(m.startswith(f"val_k{k}/item_cold") for m in record["metrics"])
    assert record["metrics"]["val_k1/user_cold/full_recall@10"] != record["metrics"]["val_k3/user_cold/full_recall@10"]
    assert {m: v for m, v in record["metrics"].items() if m.startswith("test")} == before["metrics"]
    table = render_report(load_runs([run])[0], stage="val_k3")
    assert f"{record['metrics']['val_k3/user_cold/full_recall@10']:.4f}" in table
    with pytest.raises(ConfigError, match="data.val_support_sizes"):
        fit(compose([*over, f"run.root={tmp_path}/c", "data.val_support_sizes=[0]"]))


@pytest.fixture(scope="module")
def cf_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cfruns")
    return {
        name: fit(compose([*TINY, "trainer.fast_dev_run=true", f"run.root={root}", f"run.name={name}",
                           f"learner={name}"]))
        for name in ("itemknn", "ease")
    }


@pytest.mark.parametrize("name", ["itemknn", "ease"])
def test_fast_dev_run_reports_ranking_metrics_only(cf_runs, name):
    (record,) = finished_runs(cf_runs[name])
    metrics = record["metrics"]
    scenarios = {k.split("/")[1] for k in metrics}
    assert {"user_cold", "item_cold", "user_item_cold"} <= scenarios
    for s in scenarios:
        assert math.isfinite(metrics[f"test/{s}/full_recall@10"])
    assert not [k for k in metrics if k.split("/")[-1] in ("mae", "rmse", "loss") or "ndcg@3" == k.split("/")[-1]]
    assert record["epochs"] == 0 and record["best_checkpoint"] is None


@pytest.mark.parametrize("name", ["itemknn", "ease"])
def test_recommender_serves_the_learners_own_ranking(cf_runs, name):
    rec = metarec.Recommender.load(cf_runs[name])
    task = rec.datamodule.split.episodes["user_cold"][0]
    ratings = list(zip(rec.item_ids[task.support_items].tolist(), task.support_ratings.tolist()))
    got = [item for item, _, _ in rec.adapt(ratings).recommend(10)]

    learner = rec.learner
    ids = torch.as_tensor(task.support_items)[None]
    ratings_t = torch.as_tensor(task.support_ratings, dtype=torch.float32)[None]
    items = rec.datamodule.collate.tables.items(ids)  # new items' ids hidden, as at test time
    sup = Support(ids, items, ratings_t, torch.ones_like(ids, dtype=torch.bool))
    n = rec.n_items
    scores = learner.rank_score(learner.adapt(None, sup), torch.arange(n)[None], None)[0].double().numpy()
    scores[task.support_items] = -np.inf
    want = rec.item_ids[np.argsort(-scores, kind="stable")[:10]].tolist()
    assert got == want
    with pytest.raises(MetarecError, match="does not predict ratings"):
        rec.adapt(ratings).predict(want[:2])


def test_tables_show_a_dash_for_the_rating_metrics_of_ranking_only_learners():
    from metarec.compare_outputs import ALL, Stat, render_markdown
    from metarec.report import markdown_table

    ranked = {"test/user_cold/full_recall@10": 0.31, "test/user_cold/full_ndcg@10": 0.29}
    records = [
        {"learner": "itemknn", "metrics": ranked},
        {"learner": "maml", "metrics": {"test/user_cold/mae": 0.8, "test/user_cold/full_recall@10": 0.2}},
    ]
    table = markdown_table(records)
    header, _, *rows = table.splitlines()
    assert "user_cold MAE" in header and "user_cold full_recall@10" in header
    knn = next(r for r in rows if r.startswith("| itemknn "))
    assert knn == "| itemknn | 1 | – | – | – | 0.3100 |"

    stats = {
        ("itemknn", ALL, "user_cold", "full_recall@10"): Stat(1, 0.31, math.nan, math.nan),
        ("itemknn", 3, "user_cold", "full_recall@10"): Stat(1, 0.25, math.nan, math.nan),
        ("maml", ALL, "user_cold", "mae"): Stat(1, 0.8, math.nan, math.nan),
        ("maml", ALL, "user_cold", "full_recall@10"): Stat(1, 0.2, math.nan, math.nan),
    }
    md = render_markdown(stats, ["itemknn", "maml"], [0], [3], "abc", 2)
    main, ranking = md.split("## Full ranking, full support")
    assert "| itemknn | – | – | – |" in main  # MAE, RMSE, nDCG@3
    assert "| itemknn | **0.3100** |" in ranking and "| maml | 0.2000 |" in ranking
    assert "### Recall@10, user_cold" in ranking and "| itemknn | **0.2500** | **0.3100** |" in ranking
