"""Implicit feedback: seeded negative sampling (uniform and popularity), binary cross-entropy through the
same learners and executors, ranking targets, serving, and the config checks."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import cli_env, run_cli

from metarec.config import compose
from metarec.data.datamodule import ColdStartDataModule, DataConfig
from metarec.data.negatives import NegativeConfig, NegativeSampler
from metarec.data.splits import SplitConfig, Task
from metarec.errors import ConfigError, MetarecError
from metarec.learners import LearnerContext, build_learner
from metarec.learners.base import masked_bce_per_task, masked_softmax_per_task
from metarec.learners.maml import MAMLConfig
from metarec.learners.metasgd import MetaSGDConfig
from metarec.learners.reptile import ReptileConfig
from metarec.models import MeLU, MeLUConfig
from metarec.recommend import Recommender
from metarec.runs import finished_runs
from metarec.train import build, fit

K = 3  # negatives per positive


def _dm(per_positive: int = K, sampler: str = "uniform", num_workers: int = 0, **split) -> ColdStartDataModule:
    cfg = DataConfig(
        params={"n_users": 200}, split=SplitConfig(**split), meta_batch_size=8, eval_batch_size=8,
        num_workers=num_workers, negatives=NegativeConfig(per_positive=per_positive, sampler=sampler),
    )
    dm = ColdStartDataModule(cfg, seed=0)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def dm() -> ColdStartDataModule:
    return _dm()


def _tasks(loader) -> list[Task]:
    """The tasks of a loader's dataset, in order (what the collator receives)."""
    ds = loader.dataset
    if hasattr(loader.sampler, "set_epoch"):
        return [ds[key] for key in loader.sampler]
    return [ds[i] for i in range(len(ds))]


# ---------------------------------------------------------------------------------------------
# Sampling rules


def _check_task(dm: ColdStartDataModule, raw: Task, task: Task, new_items: bool) -> None:
    seen = dm.negatives.interacted(raw.user)
    for pos_items, items, labels in ((raw.support_items, task.support_items, task.support_ratings),
                                     (raw.query_items, task.query_items, task.query_ratings)):
        pos, neg = items[labels == 1.0], items[labels == 0.0]
        assert set(np.unique(labels)) <= {0.0, 1.0}
        assert sorted(pos.tolist()) == sorted(pos_items.tolist())  # the positives are the task's own items
        assert len(neg) == K * len(pos_items)
        assert len(np.unique(neg)) == len(neg)
        assert not np.isin(neg, seen).any(), "a negative the user interacted with"
        assert (dm.split.new_item_mask[neg] == new_items).all(), "a negative outside the scenario's pool"
    s_neg = task.support_items[task.support_ratings == 0]
    q_neg = task.query_items[task.query_ratings == 0]
    assert not np.isin(s_neg, q_neg).any()


def test_training_episodes_follow_the_sampling_rules(dm) -> None:
    loader = dm.train_dataloader()
    plain = _dm(per_positive=0).train_dataloader()
    tasks, raws = _tasks(loader), _tasks(plain)
    assert len(tasks) == len(raws) > 50
    for raw, task in zip(raws, tasks):
        assert raw.user == task.user
        _check_task(dm, raw, task, new_items=False)
    # shuffled together: positives are not always first
    first_is_positive = [t.query_ratings[0] == 1.0 for t in tasks]
    assert 0 < np.mean(first_is_positive) < 0.6


@pytest.mark.parametrize("scenario", ["val", "warm", "user_cold", "item_cold", "user_item_cold"])
def test_evaluation_episodes_follow_the_sampling_rules(dm, scenario) -> None:
    raws = dm.split.episodes[scenario]
    ds = dm.eval_dataset(scenario, raws)
    for i, raw in enumerate(raws):
        _check_task(dm, raw, ds[i], new_items=scenario in ("item_cold", "user_item_cold"))


def test_negatives_are_seeded_and_independent_of_workers() -> None:
    a, b = _dm(), _dm(num_workers=2)
    batches_a = [(x.item_ids, x.ratings) for x in a.train_dataloader()]
    batches_b = [(x.item_ids, x.ratings) for x in b.train_dataloader()]
    assert len(batches_a) == len(batches_b) > 0
    for (ia, ra), (ib, rb) in zip(batches_a, batches_b):
        assert torch.equal(ia, ib) and torch.equal(ra, rb)
    test_a = [x.item_ids for x in a.test_dataloader()[0]]
    test_b = [x.item_ids for x in b.test_dataloader()[0]]
    assert all(torch.equal(x, y) for x, y in zip(test_a, test_b))


def test_negatives_change_with_the_epoch_but_not_with_the_support_cut(dm) -> None:
    eps = dm.train_dataloader().dataset
    t0, t1 = eps[(0, 0)], eps[(1, 0)]
    assert not np.array_equal(np.sort(t0.query_items), np.sort(t1.query_items))
    assert np.array_equal(eps[(0, 0)].query_items, t0.query_items)  # same key, same task
    full = dm.test_dataloader()
    cut = dm.for_support_size(2).test_dataloader()
    assert dm.test_support_size is None  # the module itself is left as it is
    full_tasks = {t.user: t for t in _tasks(full[0])}
    for t in _tasks(cut[0]):
        ref = full_tasks[t.user]
        assert int((t.support_ratings == 1).sum()) == 2 and len(t.support_items) == 2 * (1 + K)
        assert np.array_equal(t.query_items, ref.query_items) and np.array_equal(t.query_ratings, ref.query_ratings)


@pytest.mark.parametrize("sampler", ["uniform", "popularity"])
def test_sampling_distribution(dm, sampler) -> None:
    """One draw per call from a user's pool: frequencies match the sampler's distribution."""
    cfg = NegativeConfig(per_positive=1, sampler=sampler, power=1.0)
    s = NegativeSampler(cfg, dm.dataset, dm.split)
    pool = s.pools[False][0]
    counts = np.bincount(dm.split.train_ratings()[0], minlength=dm.dataset.n_items)[pool]
    want = np.ones(len(pool)) if sampler == "uniform" else counts + 1.0
    want = want / want.sum()
    rng = np.random.default_rng(0)
    n = 40_000
    draws = np.concatenate([s.sample(rng, 1, False, np.zeros(0, np.int64)) for _ in range(n)])
    freq = np.bincount(np.searchsorted(pool, draws), minlength=len(pool)) / n
    assert np.abs(freq - want).max() < 0.01
    # chi-square goodness of fit (df = pool - 1): far below a 1e-6 tail
    chi2 = ((freq - want) ** 2 / want).sum() * n
    assert chi2 < len(pool) + 8 * math.sqrt(2 * len(pool)), chi2


def test_a_small_pool_gives_what_it_has(dm) -> None:
    s = dm.negatives
    pool = s.pools[True][0]
    got = s.sample(np.random.default_rng(0), 10 * len(pool), True, pool[:3])
    assert sorted(got.tolist()) == sorted(pool[3:].tolist())


@pytest.mark.parametrize("override, fragment", [
    ("data.negatives.per_positive=-1", "data.negatives.per_positive"),
    ("data.negatives.sampler=zipf", "data.negatives.sampler must be one of uniform, popularity"),
    ("data.negatives.power=-2", "data.negatives.power"),
    ("data.negatives.loss=hinge", "data.negatives.loss must be one of bce, softmax"),
    ("data.negatives.bogus=1", "unknown config key data.negatives.bogus"),
])
def test_bad_negative_options_are_one_line_errors(override, fragment) -> None:
    with pytest.raises(ConfigError, match=fragment) as e:
        compose([override])
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# Loss and learners


def test_bce_matches_torch() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 7, generator=g, dtype=torch.float64) * 30  # large logits: still stable
    target = (torch.rand(4, 7, generator=g) > 0.5).double()
    mask = torch.rand(4, 7, generator=g) > 0.3
    got = masked_bce_per_task(logits, target, mask)
    for t in range(4):
        want = torch.nn.functional.binary_cross_entropy_with_logits(logits[t][mask[t]], target[t][mask[t]])
        torch.testing.assert_close(got[t], want)


def test_sampled_softmax_matches_a_hand_computation() -> None:
    """Each positive against the task's negatives: log(e^{s_p} + sum_n e^{s_n}) - s_p, mean over the
    task's positives; masked entries and other positives never enter a positive's denominator."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 5.0], [0.5, 3.0, -2.0, 0.0, 0.0]], dtype=torch.float64)
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, True, False], [True, True, True, False, False]])
    got = masked_softmax_per_task(logits, target, mask)
    e = math.exp
    neg0 = e(0.0) + e(-1.0)  # the 5.0 entry is masked out
    want0 = ((math.log(e(2.0) + neg0) - 2.0) + (math.log(e(1.0) + neg0) - 1.0)) / 2
    want1 = math.log(e(3.0) + e(0.5) + e(-2.0)) - 3.0
    torch.testing.assert_close(got, torch.tensor([want0, want1], dtype=torch.float64))
    # a row without negatives or without positives costs nothing and has a finite gradient
    x = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    loss = masked_softmax_per_task(x, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]), torch.ones(2, 3, dtype=torch.bool))
    loss.sum().backward()
    assert torch.equal(loss.detach(), torch.zeros(2, dtype=torch.float64)) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("model", ["melu", "twotower"])
def test_softmax_training_runs_end_to_end(tmp_path, model) -> None:
    """``data.negatives.loss=softmax`` trains, monitors the validation loss and serves probabilities."""
    run = fit(compose([f"model={model}", "data.params.n_users=200", "data.negatives.per_positive=4",
                       "data.negatives.loss=softmax", "trainer.max_epochs=2", f"run.root={tmp_path}"]))
    (record,) = finished_runs(run)
    assert "val/user_cold/loss" in record["metrics"] and "test/user_cold/full_recall@10" in record["metrics"]
    rec = Recommender.load(run)
    assert rec.implicit and rec.learner.ctx.loss == "softmax"
    p = rec.adapt([(rec.item_ids[0].item(), 1.0), (rec.item_ids[1].item(), 1.0)]).predict(rec.item_ids[:5])
    assert ((p > 0) & (p < 1)).all()


@pytest.fixture(scope="module")
def bce_setup(dm):
    batch = next(iter(dm.train_dataloader()))
    batch.ratings = batch.ratings.double()
    batch.item.multihot, batch.user.multihot = batch.item.multihot.double(), batch.user.multihot.double()
    ctx = LearnerContext((0.0, 1.0), 0.25, ["warm"], ["user_cold"], loss="bce")
    torch.manual_seed(0)
    model = MeLU(dm.dataset.schema, MeLUConfig(embed_dim=8, hidden=[16, 16])).double()
    return batch, ctx, model


@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("scope", ["head", "all"])
@pytest.mark.parametrize("name, cls", [("maml", MAMLConfig), ("metasgd", MetaSGDConfig)])
def test_executors_agree_under_bce(bce_setup, name, cls, scope, steps) -> None:
    batch, ctx, model = bce_setup
    out = []
    for executor in ("learn2learn", "vmap"):
        learner = build_learner(name, copy.deepcopy(model), ctx, cls(inner_lr=0.5, inner_steps=steps, scope=scope,
                                                                      executor=executor))
        loss, preds = learner.meta_step(batch, train=True)
        loss.backward()
        out.append((loss.detach(), preds.detach(), {n: p.grad for n, p in learner.named_parameters() if p.grad is not None}))
    (l1, p1, g1), (l2, p2, g2) = out
    torch.testing.assert_close(l1, l2, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(p1, p2, rtol=1e-6, atol=1e-9)
    assert g1.keys() == g2.keys() and g1
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], rtol=1e-6, atol=1e-9)
    # the loss really is BCE of the adapted logits: below log(2) is not required, but it is finite
    # and differs from the MSE the same predictions would give
    y, m = batch.part("query")[1:]
    assert torch.isfinite(l1) and not torch.allclose(l1, ((p1 - y) ** 2 * m).sum() / m.sum())


def test_reptile_directions_agree_under_bce(bce_setup) -> None:
    batch, ctx, model = bce_setup
    dirs = []
    for executor in ("learn2learn", "vmap"):
        learner = build_learner("reptile", copy.deepcopy(model), ctx,
                                ReptileConfig(inner_lr=0.5, inner_steps=3, scope="all", executor=executor))
        dirs.append(learner.reptile_direction(batch))
    (d1, l1), (d2, l2) = dirs
    torch.testing.assert_close(l1, l2, rtol=1e-6, atol=1e-9)
    for a, b in zip(d1, d2):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_ranking_targets_under_bce(tmp_path) -> None:
    cfg = compose(["data.params.n_users=200", f"data.negatives.per_positive={K}", f"run.root={tmp_path}"])
    dm, learner = build(cfg)
    batch = next(iter(dm.test_dataloader()[dm.scenarios.index("user_cold")]))
    candidates, relevant = learner.ranking_targets(batch, "user_cold")
    s = batch.n_support
    for t in range(batch.n_tasks):
        s_items, s_lab = batch.item_ids[t, :s][batch.support_mask[t, :s]], batch.ratings[t, :s][batch.support_mask[t, :s]]
        q_items, q_lab = batch.item_ids[t, s:][batch.query_mask[t, s:]], batch.ratings[t, s:][batch.query_mask[t, s:]]
        assert set(torch.nonzero(relevant[t]).flatten().tolist()) == set(q_items[q_lab == 1].tolist())
        assert not candidates[t, s_items[s_lab == 1]].any()  # the support's positives are excluded
        assert candidates[t, s_items[s_lab == 0]].all()  # its sampled negatives stay candidates
        assert candidates[t, q_items].all()
    assert learner.ctx.rating_range == (0.0, 1.0) and learner.ctx.loss == "bce"
    bias = learner.model.head[-1].bias.item()
    assert bias == pytest.approx(math.log(1 / K))  # logit of the base rate 1 / (1 + K)


LEARNERS = ["maml", "fomaml", "anil", "melu1", "metasgd", "reptile", "global", "finetune", "popularity", "user_mean",
            "amortised", "tanp"]


@pytest.mark.parametrize("learner", LEARNERS)
def test_learners_train_and_evaluate_on_implicit_data(learner, tmp_path) -> None:
    cfg = compose([f"learner={learner}", "data.params.n_users=200", f"data.negatives.per_positive={K}",
                   "data.negatives.sampler=popularity", "trainer.fast_dev_run=true",
                   "trainer.enable_progress_bar=false", f"run.root={tmp_path}"])
    (record,) = finished_runs(fit(cfg))
    m = record["metrics"]
    assert all(math.isfinite(v) for v in m.values())
    for scenario in ("warm", "user_cold", "item_cold", "user_item_cold"):
        assert 0.0 <= m[f"test/{scenario}/mae"] <= 1.0  # probabilities against 0/1 labels
        if learner != "user_mean":
            assert 0.0 <= m[f"test/{scenario}/full_recall@10"] <= 1.0


def test_item_mean_refuses_implicit_training(tmp_path) -> None:
    cfg = compose(["learner=item_mean", "data.params.n_users=200", "data.negatives.per_positive=1", f"run.root={tmp_path}"])
    with pytest.raises(ConfigError, match="learner=popularity"):
        build(cfg)


def test_maml_learns_the_implicit_task(tmp_path) -> None:
    """A few epochs of MAML on implicit synthetic data rank held-out items far better than chance."""
    cfg = compose(["data.params.n_users=300", f"data.negatives.per_positive={K}", "trainer.max_epochs=4",
                   "trainer.enable_progress_bar=false", f"run.root={tmp_path}"])
    run = fit(cfg)
    (record,) = finished_runs(run)
    m = record["metrics"]
    # the query holds 10 positives among 10 * (1 + K) items: random order gives nDCG@3 near 1 / (1 + K)
    assert m["test/user_cold/ndcg@3"] > 1.5 / (1 + K)
    # full ranking: a random order of the existing items finds about 10 / n of the query positives in a top 10
    stats = json.loads((run / "split_manifest.json").read_text())["stats"]
    assert m["test/user_cold/full_recall@10"] > 5 * 10 / (stats["items"] - stats["new_items"])


# ---------------------------------------------------------------------------------------------
# Serving


@pytest.fixture(scope="module")
def implicit_runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("implicit_runs")
    base = ["data.params.n_users=200", f"data.negatives.per_positive={K}", "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false", f"run.root={root}"]
    return {name: fit(compose([*base, f"run.name={name}", f"learner={name}"])) for name in ("maml", "popularity")}


def test_recommender_serves_implicit_runs(implicit_runs) -> None:
    rec = Recommender.load(implicit_runs["maml"])
    assert rec.implicit and rec.rating_range == (0.0, 1.0)
    task = rec.datamodule.split.episodes["user_cold"][0]
    items = rec.item_ids[task.support_items].tolist()
    a = rec.adapt([(i, None) for i in items])
    b = rec.adapt([(i, 1.0) for i in items])
    p = a.predict(items)
    assert ((p > 0) & (p < 1)).all()
    np.testing.assert_array_equal(p, b.predict(items))  # None means an interaction; negatives are seeded
    top = a.recommend(5)
    assert len(top) == 5 and all(0 < score < 1 for _, _, score in top)
    assert not set(i for i, _, _ in top) & set(items)
    with pytest.raises(MetarecError, match="outside the rating range 0..1"):
        rec.adapt([(items[0], 4.0)])


def test_popularity_recommends_the_most_interacted_items(implicit_runs) -> None:
    rec = Recommender.load(implicit_runs["popularity"])
    counts = rec.learner.item_counts.numpy()
    top = rec.adapt([(rec.item_ids[0].item(), 1.0)]).recommend(3, exclude_seen=False)
    want = np.argsort(-counts, kind="stable")[:3]
    assert [i for i, _, _ in top] == rec.item_ids[want].tolist()


def test_cli_recommend_accepts_an_item_only_file(implicit_runs, tmp_path) -> None:
    rec = Recommender.load(implicit_runs["maml"])
    f = tmp_path / "likes.csv"
    f.write_text("item\n" + "\n".join(str(i) for i in rec.item_ids[:4].tolist()) + "\n")
    out = run_cli("recommend", "--run", str(implicit_runs["maml"]), "--ratings", str(f), "-k", "3",
                  cwd=tmp_path, env=cli_env(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "probability" in out.stdout.splitlines()[0] and len(out.stdout.splitlines()) == 4


def test_explicit_runs_refuse_a_missing_rating(tmp_path) -> None:
    run = fit(compose(["data.params.n_users=200", "learner=global", "trainer.max_epochs=1",
                       "trainer.enable_progress_bar=false", f"run.root={tmp_path}"]))
    rec = Recommender.load(run)
    with pytest.raises(MetarecError, match="has no rating, but this run was trained on explicit ratings"):
        rec.adapt([(rec.item_ids[0].item(), None)])
