"""Full-ranking metrics against hand-computed values and torchmetrics; candidates and relevance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchmetrics.functional.retrieval as R

from metarec.config import compose
from metarec.metrics.full_ranking import FullRanking, full_ranking
from metarec.runs import finished_runs
from metarec.train import build, fit

INF = float("-inf")


def test_hand_computed_values():
    # one user, 5 items; ranking by score: items 3, 0, 4, 1 (item 2 is not a candidate); relevant: 0 and 1
    scores = torch.tensor([[0.8, 0.1, INF, 0.9, 0.5]])
    relevant = torch.tensor([[True, True, False, False, False]])
    assert full_ranking(scores, relevant, 2, "recall").item() == pytest.approx(0.5)
    assert full_ranking(scores, relevant, 2, "hitrate").item() == 1.0
    assert full_ranking(scores, relevant, 1, "hitrate").item() == 0.0
    # DCG@2 = 0/log2(2) + 1/log2(3); IDCG@2 = 1 + 1/log2(3)
    want = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert full_ranking(scores, relevant, 2, "ndcg").item() == pytest.approx(want)
    # @4 sees both: DCG = 1/log2(3) + 1/log2(5)
    want4 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert full_ranking(scores, relevant, 4, "ndcg").item() == pytest.approx(want4)
    assert full_ranking(scores, relevant, 4, "recall").item() == 1.0


def test_users_without_relevant_items_are_not_counted():
    m = FullRanking("recall", 2)
    m.update(torch.tensor([[0.9, 0.1], [0.5, 0.4]]), torch.tensor([[True, False], [False, False]]))
    assert m.users.item() == 1 and m.compute().item() == 1.0


@pytest.mark.parametrize("k", [1, 5, 10, 20])
def test_against_torchmetrics_retrieval_metrics(k):
    g = torch.Generator().manual_seed(k)
    t, n = 16, 40
    scores = torch.rand(t, n, generator=g, dtype=torch.float64)  # no ties
    relevant = torch.rand(t, n, generator=g) < 0.15
    relevant[:, 0] = True
    for kind, oracle in (("recall", R.retrieval_recall), ("ndcg", R.retrieval_normalized_dcg),
                         ("hitrate", R.retrieval_hit_rate)):
        got = full_ranking(scores, relevant, k, kind)
        want = torch.stack([oracle(scores[i], relevant[i], top_k=k) for i in range(t)])
        torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-6, atol=1e-9)


def test_candidates_exclude_support_and_follow_the_scenario(tmp_path):
    cfg = compose(["data.params.n_users=200", "trainer.max_epochs=1", f"run.root={tmp_path}"])
    dm, learner = build(cfg)
    new = learner.ctx.new_item_mask
    for scenario, loader in zip(dm.scenarios, dm.test_dataloader()):
        batch = next(iter(loader))
        cand, rel = learner.ranking_targets(batch, scenario)
        s = batch.n_support
        for t in range(batch.n_tasks):
            support = batch.item_ids[t, :s][batch.support_mask[t, :s]]
            assert not cand[t, support].any()
            pool = new if scenario in ("item_cold", "user_item_cold") else ~new
            assert torch.equal(cand[t] | ~pool, ~pool | cand[t]) and not (cand[t] & ~pool).any()
            q = batch.item_ids[t, s:][batch.query_mask[t, s:]]
            r = batch.ratings[t, s:][batch.query_mask[t, s:]]
            assert set(torch.nonzero(rel[t]).flatten().tolist()) == set(q[r >= 4.0].tolist())


def test_fit_reports_full_ranking_metrics_per_scenario(tmp_path):
    cfg = compose(["data.params.n_users=200", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                   f"run.root={tmp_path}", "data.eval_support_sizes=[3]"])
    (record,) = finished_runs(fit(cfg))
    for stage in ("test", "test_k3"):
        for scen in ("warm", "user_cold", "item_cold", "user_item_cold"):
            for k in (5, 10, 20):
                for kind in ("recall", "ndcg", "hitrate"):
                    v = record["metrics"][f"{stage}/{scen}/full_{kind}@{k}"]
                    # NaN only where no test user of a small scenario has a relevant (rating >= 4) query item
                    assert (0.0 <= v <= 1.0) or (scen == "user_item_cold" and np.isnan(v))
                    if scen in ("warm", "user_cold"):
                        assert np.isfinite(v)
        assert record["metrics"][f"{stage}/user_cold/full_recall@20"] >= record["metrics"][f"{stage}/user_cold/full_recall@5"]


def test_val_support_passes_rank_without_ranking_every_validation_epoch(tmp_path, monkeypatch):
    """With ``data.val_support_sizes`` and an MAE monitor, the ``val_kK`` passes report full-ranking metrics,
    while the validation epochs do not rank the catalogue (ranking there serves only a ranking monitor)."""
    from metarec.learners.base import MetaLearner

    ranked = []
    real = MetaLearner.catalogue_scores

    def counting(self, *a, **kw):
        ranked.append(self.trainer.state.stage.value)
        return real(self, *a, **kw)

    monkeypatch.setattr(MetaLearner, "catalogue_scores", counting)
    cfg = compose(["data.params.n_users=200", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                   f"run.root={tmp_path}", "data.val_support_sizes=[2]", "data.split.scenarios=[user_cold]"])
    (record,) = finished_runs(fit(cfg))
    for kind in ("recall", "ndcg", "hitrate"):
        assert 0.0 <= record["metrics"][f"val_k2/user_cold/full_{kind}@10"] <= 1.0
    assert np.isfinite(record["metrics"]["val_k2/user_cold/mae"])
    assert ranked and set(ranked) == {"test"}  # the test and val_kK passes, no validation epoch


@pytest.mark.parametrize("learner", ["maml", "amortised", "itemknn"])
def test_catalogue_scores_in_chunks_equal_one_pass(tmp_path, monkeypatch, learner):
    """Full ranking scores the catalogue in chunks of (task, item) pairs: the same scores as one pass."""
    import metarec.learners.base as base
    from metarec.models.base import Features

    cfg = compose(["data.params.n_users=200", f"learner={learner}", f"run.root={tmp_path}"])
    dm, model = build(cfg)
    model.eval()
    batch = next(iter(dm.test_dataloader()[0]))
    state, _, _ = model.evaluate(batch)
    items, t = model.ctx.all_items, batch.n_tasks
    n = items.categorical.shape[0]
    with torch.no_grad():
        whole = model.rank_score(state, torch.arange(n).expand(t, n), Features(items.categorical, items.multihot).for_tasks(t))
        monkeypatch.setattr(base, "RANK_CHUNK_ROWS", 7 * t)  # 7 items per chunk, the last one short
        assert n % 7
        chunked = model.catalogue_scores(state, t, batch.item_ids.device)
    torch.testing.assert_close(chunked, whole.float(), rtol=1e-5, atol=1e-5)
