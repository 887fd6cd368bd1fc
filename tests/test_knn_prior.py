"""The ItemKNN prior of ``fism cf_knn=true`` (``metarec.learners.knn_prior``): plain fold-in equals the
``itemknn`` learner; a training user's similarities leave their own row out (equal to ItemKNN refitted
without the user when every co-occurring pair is a neighbour); the leave-one-out rows are the fold-in of the
rest of the profile; and fism adds it with its own learned gate."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_cf_baselines import scores_of, support, toy_ctx
from test_ease_prior import L2, N_ITEMS, _cf_learner, _pool, _rows
from test_learners import tiny_batch, tiny_dataset
from torch import nn

from metarec.errors import ConfigError
from metarec.learners import build_learner
from metarec.learners.ease_prior import EasePrior
from metarec.learners.itemknn import ItemKNNConfig
from metarec.learners.knn_prior import KnnPrior


def _priors(pool: dict, neighbours: int, fold: str = "relevant"):
    ease = EasePrior(nn.Identity(), toy_ctx(pool, N_ITEMS), L2, fold=fold)
    return ease, KnnPrior(ease, "test", neighbours, 2.0)


@pytest.mark.parametrize("fold", ["relevant", "rated"])
def test_plain_fold_in_equals_the_itemknn_learner(fold: str) -> None:
    pool = _pool()
    ease, knn = _priors(pool, 3, fold)
    if fold == "rated":  # every level weighs 1: every rated item folds in, as itemknn's fold=rated
        with torch.no_grad():
            ease.level_weight.fill_(1.0)
    learner = build_learner("itemknn", nn.Identity(), toy_ctx(pool, N_ITEMS),
                            ItemKNNConfig(neighbours=3, shrink=2.0, fold=fold, popularity_tiebreak=False))
    sup = support(_rows(np.random.default_rng(4)))
    with torch.no_grad():
        got, rest = knn.fold_in(sup)
    assert rest is None
    np.testing.assert_allclose(got.double().numpy(), scores_of(learner, sup), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("neighbours", [N_ITEMS, 3, 1])
def test_a_training_user_gets_similarities_without_their_row(neighbours: int) -> None:
    """Every co-occurring pair a neighbour: the whole leave-user-out fold-in is ItemKNN refitted without the
    user. Fewer neighbours: exact on the columns of the user's own items (the training targets), whose
    neighbour sets are recomputed without the user."""
    pool = _pool()
    _, knn = _priors(pool, neighbours)
    rows = _rows(np.random.default_rng(5))
    sup = support(rows)
    users = torch.tensor([2, 40, 9, 17])  # 40: not a training user
    got, _ = knn.fold_in(sup, users)
    checked = 0
    for t, u in enumerate(users.tolist()):
        rest_pool = {k: v for k, v in pool.items() if k != u}
        alone = build_learner("itemknn", nn.Identity(), toy_ctx(rest_pool, N_ITEMS),
                              ItemKNNConfig(neighbours=neighbours, shrink=2.0, popularity_tiebreak=False))
        want = scores_of(alone, support([rows[t]]))[0]
        own = np.arange(N_ITEMS) if neighbours == N_ITEMS or u not in pool else pool[u][0][pool[u][1] >= 4.0]
        np.testing.assert_allclose(got[t].double().numpy()[own], want[own], rtol=1e-5, atol=1e-6)
        checked += int((want[own] != 0).sum())
    assert checked > 0
    plain, _ = knn.fold_in(sup)
    assert not torch.allclose(got[0], plain[0])
    torch.testing.assert_close(got[1], plain[1])


def test_the_neighbour_thresholds_are_kept_per_training_user() -> None:
    """own_neighbours computes a training user's thresholds once and keeps them: a later batch with another
    support of the same users (and different batch widths) scores as a fresh prior, and as the uncached path."""
    pool = _pool()
    _, knn = _priors(pool, 2)
    users = torch.tensor([2, 40, 9, 17])  # 40: not a training user, never kept
    knn.fold_in(support(_rows(np.random.default_rng(5))), users)
    assert set(knn._kept) == {2, 9, 17}
    kept = {u: [t.clone() for t in v] for u, v in knn._kept.items()}
    rows = _rows(np.random.default_rng(8))[:3]
    sup, again = support(rows), torch.tensor([17, 9, 40])
    got, _ = knn.fold_in(sup, again)
    _, fresh = _priors(pool, 2)
    torch.testing.assert_close(got, fresh.fold_in(sup, again)[0])
    assert all(all(torch.equal(a, b) for a, b in zip(kept[u], knn._kept[u])) for u in kept)  # reused, not redone
    ease = knn.ease[0]
    keep = ease.positives(sup)
    safe = torch.where(keep, ease.column[sup.item_ids], -1).clamp_min(0)
    x = ease.training_rows(again, sup.n_tasks)
    assert torch.equal(knn.own_neighbours(safe, x, again), knn.own_neighbours(safe, x))


def test_leave_one_out_rows_are_the_fold_in_of_the_rest() -> None:
    ease, knn = _priors(_pool(), 4, "rated")
    with torch.no_grad():
        ease.level_weight.copy_(torch.tensor([-0.5, 0.25, 0.5, 1.0, 2.0]))
    rows = _rows(np.random.default_rng(6))
    sup = support(rows)
    users = torch.tensor([1, 3, 77, 5])
    with torch.no_grad():
        e, rest = knn.fold_in(sup, users, rest_of=torch.arange(sup.item_ids.shape[1]).expand(sup.n_tasks, -1))
        torch.testing.assert_close(e, knn.fold_in(sup, users)[0])
        for t, row in enumerate(rows):
            for j in range(len(row)):
                without = dataclasses.replace(sup, mask=sup.mask.clone())
                without.mask[t, j] = False
                torch.testing.assert_close(rest[t, j], knn.fold_in(without, users)[0][t], rtol=1e-5, atol=1e-6)
        s = sup.item_ids.shape[1]  # any order of entries, with -1 padding: the same rows, padding = no change
        order = torch.cat([torch.arange(s - 1, -1, -1), torch.tensor([-1])]).expand(sup.n_tasks, -1)
        _, shuffled = knn.fold_in(sup, users, rest_of=order)
        torch.testing.assert_close(shuffled[:, :s], rest.flip(1))
        torch.testing.assert_close(shuffled[:, s], e)


def test_fism_adds_the_gated_knn_term_and_trains_its_gate() -> None:
    ds, learner = _cf_learner(rating_weight=0.0, cf_knn=True, cf_knn_scale=2.0)
    batch = tiny_batch(ds)
    sup = batch.support()
    with torch.no_grad():
        learner.cf_knn_gate.copy_(torch.tensor([0.3, -0.2]))
    e, n = learner.cf.fold_in(sup)
    k, _ = learner.knn.fold_in(sup)
    without = learner.prior_logits(e, n)
    gate = torch.exp(0.3 - 0.2 * torch.log1p(n.double())).unsqueeze(-1)
    torch.testing.assert_close(learner.adapt(batch.user, sup)[1], without + gate * k.double())
    loss, _ = learner.meta_step(batch, train=True)
    loss.backward()
    assert learner.cf_knn_gate.grad.abs().sum() > 0
    assert any(p is learner.cf_knn_gate for p in learner.configure_optimizers().param_groups[1]["params"])
    for bad, match in (({"cf_knn": "yes"}, "cf_knn must be true or false"),
                       ({"cf_knn": True, "cf_knn_scale": 0.0}, "cf_knn_scale must be"),
                       ({"cf_knn": True, "cf_prior": "none"}, "needs learner.cf_prior=ease"),
                       ({"cf_knn": True, "cf_knn_neighbours": 0}, "cf_knn_neighbours must be"),
                       ({"cf_knn": True, "cf_knn_shrink": float("nan")}, "cf_knn_shrink must be")):
        with pytest.raises(ConfigError, match=match):
            _cf_learner(**bad)


def test_the_knn_prior_takes_its_neighbourhood_from_the_options() -> None:
    """``cf_knn_neighbours`` / ``cf_knn_shrink`` set the prior's ItemKNN (default: the itemknn learner's)."""
    _, plain = _cf_learner(cf_knn=True)
    assert (plain.knn.neighbours, plain.knn.shrink) == (ItemKNNConfig().neighbours, ItemKNNConfig().shrink)
    ds, learner = _cf_learner(cf_knn=True, cf_knn_neighbours=1, cf_knn_shrink=0.5)
    assert (learner.knn.neighbours, learner.knn.shrink) == (1, 0.5)
    want = KnnPrior(learner.cf, "test", 1, 0.5)
    sup = tiny_batch(ds).support()
    with torch.no_grad():
        torch.testing.assert_close(learner.knn.fold_in(sup)[0], want.fold_in(sup)[0])
        assert not torch.equal(learner.knn.fold_in(sup)[0], plain.knn.fold_in(sup)[0])


def test_a_catalogue_too_large_for_the_dense_co_occurrences_is_one_line(monkeypatch) -> None:
    import metarec.learners.knn_prior as kp

    ease = EasePrior(nn.Identity(), toy_ctx(_pool(), N_ITEMS), L2)
    monkeypatch.setattr(kp, "MAX_BYTES", 5 * 10 * 10)  # 12 covered items > 10
    with pytest.raises(ConfigError, match="cf_knn=true keeps the item x item co-occurrences dense: 12 covered") as e:
        KnnPrior(ease, "fism_ease")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("knn", [False, True])
def test_leave_one_out_terms_for_the_targets_only_leave_the_loss_unchanged(monkeypatch, knn: bool) -> None:
    """The catalogue loss forms leave-one-out terms for the support targets only; forming them for every
    support entry (non-targets weigh 0) gives the same loss."""
    import metarec.learners.fism as fism_module

    ds, learner = _cf_learner(cf_knn=knn, cf_fold="rated", rank_loss="recall")
    batch = tiny_batch(ds)
    with torch.no_grad():
        learner.cf.level_weight.copy_(torch.tensor([-0.5, 0.25, 0.5, 1.0, 2.0], dtype=learner.cf.level_weight.dtype))
    compact = learner.full_softmax(batch)
    every = lambda mask: torch.arange(mask.shape[1]).expand(mask.shape[0], -1)  # noqa: E731
    monkeypatch.setattr(fism_module, "entries_of", every)
    torch.testing.assert_close(learner.full_softmax(batch), compact)


def test_smooth_recall_loss_matches_a_hand_computation() -> None:
    ds, learner = _cf_learner(rank_loss="recall", rank_k=2, rank_temperature=0.5)
    allowed = torch.tensor([[[3.0, 1.0, float("-inf"), 0.0, 2.0]]], dtype=torch.float64)
    picked = torch.tensor([[1.0]], dtype=torch.float64)  # the target is the item with logit 1.0
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    above = sig((3 - 1) / 0.5) + sig(0.0) + 0.0 + sig((0 - 1) / 0.5) + sig((2 - 1) / 0.5) - 0.5
    want = 1.0 - sig(2 - 0.5 - above)
    assert learner.smooth_miss(allowed, picked).item() == pytest.approx(want, rel=1e-12)
    for bad, match in (({"rank_k": 0}, "rank_k must be an integer >= 1"),
                       ({"rank_temperature": 0.0}, "rank_temperature must be"),
                       ({"rank_norm": "max"}, "rank_norm must be one of none, std"),
                       ({"cf_fold": "all"}, "cf_fold must be one of relevant, rated"),
                       ({"rank_loss": "inbatch"}, "needs learner.rank_loss=full or recall")):
        with pytest.raises(ConfigError, match=match):
            _cf_learner(**bad)


def test_scale_free_smooth_recall_measures_differences_in_standard_deviations() -> None:
    """``rank_norm=std``: the hand computation with each list's differences divided by the standard
    deviation of its allowed logits; the loss is unchanged when every logit is scaled (so the learned gates
    are not pushed up for sharpness), and blocked (-inf) items give finite gradients."""
    ds, learner = _cf_learner(rank_loss="recall", rank_k=2, rank_temperature=0.5, rank_norm="std")
    logits = [3.0, 1.0, float("-inf"), 0.0, 2.0]
    allowed = torch.tensor([[logits]], dtype=torch.float64)
    picked = torch.tensor([[1.0]], dtype=torch.float64)
    sd = np.std([3.0, 1.0, 0.0, 2.0], ddof=1)
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    above = sum(sig((v - 1.0) / sd / 0.5) for v in (3.0, 1.0, 0.0, 2.0)) - 0.5
    want = 1.0 - sig(2 - 0.5 - above)
    assert learner.smooth_miss(allowed, picked).item() == pytest.approx(want, rel=1e-12)
    for scale in (0.01, 7.0, 1e4):
        got = learner.smooth_miss(allowed * scale, picked * scale).item()
        assert got == pytest.approx(want, rel=1e-9)
    plain = dataclasses.replace(learner.cfg, rank_norm="none")
    learner.cfg, scaled = plain, learner.smooth_miss(allowed * 10, picked * 10).item()
    assert scaled != pytest.approx(learner.smooth_miss(allowed, picked).item(), rel=1e-3)  # without it: not scale-free
    learner.cfg = dataclasses.replace(plain, rank_norm="std")
    x = allowed.clone().requires_grad_(True)
    p = picked.clone().requires_grad_(True)
    learner.smooth_miss(x, p).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[0, 0, 2] == 0 and torch.isfinite(p.grad).all()
    batch = tiny_batch(ds)
    loss = learner.full_softmax(batch)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(learner.cf_gate.grad).all()


def test_loo_targets_caps_the_support_targets_per_task_at_random() -> None:
    from metarec.learners.fism import FISM

    torch.manual_seed(3)
    mask = torch.rand(50, 12) < 0.6
    for cap in (1, 4, 12):
        kept = FISM.at_most(mask, cap)
        assert not (kept & ~mask).any()
        torch.testing.assert_close(kept.sum(1), mask.sum(1).clamp_max(cap))
    firsts = {tuple(FISM.at_most(mask, 2)[0].nonzero().flatten().tolist()) for _ in range(20)}
    assert len(firsts) > 1  # a fresh draw each step
    ds, learner = _cf_learner(rank_loss="recall", cf_knn=True)
    batch = tiny_batch(ds)
    every = learner.full_softmax(batch)
    learner.cfg = dataclasses.replace(learner.cfg, loo_targets=100)  # above every task's count: the same loss
    torch.testing.assert_close(learner.full_softmax(batch), every)
    learner.cfg = dataclasses.replace(learner.cfg, loo_targets=1)
    assert torch.isfinite(learner.full_softmax(batch))
    for bad in (0, 2.5, True):
        with pytest.raises(ConfigError, match="loo_targets must be an integer >= 1 or null"):
            _cf_learner(loo_targets=bad)


@pytest.mark.parametrize("knn", [False, True])
def test_cf_start_validation_starts_the_gates_at_the_best_prior_mix_on_the_validation_users(knn: bool) -> None:
    from metarec.data.scenarios import VAL_SCENARIO
    from metarec.learners.fism import KNN_STARTS, POP_STARTS
    from metarec.metrics.full_ranking import full_ranking

    ds = tiny_dataset()
    batch = tiny_batch(ds)
    batch.ratings = torch.tensor([[5.0, 4.0, 1.0, 0.0, 0.0, 5.0, 4.0, 0.0], [2.0, 5.0, 4.0, 5.0, 1.0, 4.0, 5.0, 3.0]],
                                 dtype=batch.ratings.dtype)[:, : batch.ratings.shape[1]]
    _, fixed = _cf_learner(cf_knn=knn)
    _, learner = _cf_learner(validation_batches=lambda: [batch], cf_knn=knn, cf_start="validation")
    grid = [(a, 0.0, c, 0.0) for a in (KNN_STARTS if knn else (0.0,)) for c in POP_STARTS]
    assert list(learner.start_scores) == grid
    sup = batch.support()
    with torch.no_grad():
        e, n = fixed.cf.fold_in(sup)
        k = fixed.knn.fold_in(sup)[0] if knn else None
        candidates, relevant = fixed.ranking_targets(batch, VAL_SCENARIO)
        for (a, _, c, _), got in learner.start_scores.items():  # each offset's prior-only Recall@10, by hand
            logits = fixed.prior_logits(e, n, k, knn_offset=a, pop_offset=c).masked_fill(~candidates, float("-inf"))
            values = full_ranking(logits, relevant & candidates, 10, "recall")
            assert got == pytest.approx(float(values[~values.isnan()].mean()))
    best = max(learner.start_scores.values())
    a, _, c, _ = next(key for key, v in learner.start_scores.items() if v == best)  # ties: the earlier one
    assert learner.cf_pop[0].item() == pytest.approx(fixed.cf_pop[0].item() + c)
    if knn:
        assert learner.cf_knn_gate[0].item() == pytest.approx(fixed.cf_knn_gate[0].item() + a)
    torch.testing.assert_close(learner.cf_gate, fixed.cf_gate)  # EASE's gate is the reference: unchanged
    with pytest.raises(ConfigError, match="cf_start=validation needs the validation users"):
        _cf_learner(cf_start="validation")
    with pytest.raises(ConfigError, match="cf_start must be one of fixed, validation"):
        _cf_learner(cf_start="val")
    with pytest.raises(ConfigError, match="cf_start=validation .* needs learner.cf_prior=ease"):
        _cf_learner(validation_batches=lambda: [batch], cf_start="validation", cf_prior="none", rank_loss="full")


def test_cf_start_sizes_scores_each_setting_over_cut_supports_and_moves_the_slopes() -> None:
    """With ``cf_start_sizes`` a setting's score is the mean of its prior-only Recall@10 with the full support
    and with each validation user's first K ratings; the chosen offsets and slopes are added to both gates."""
    from metarec.data.scenarios import VAL_SCENARIO
    from metarec.learners.fism import KNN_SLOPES, POP_SLOPES, SIZED_KNN_STARTS, SIZED_POP_STARTS
    from metarec.metrics.full_ranking import full_ranking

    ds = tiny_dataset()
    batch = tiny_batch(ds)
    batch.ratings = torch.tensor([[5.0, 4.0, 1.0, 0.0, 0.0, 5.0, 4.0, 0.0], [2.0, 5.0, 4.0, 5.0, 1.0, 4.0, 5.0, 3.0]],
                                 dtype=batch.ratings.dtype)[:, : batch.ratings.shape[1]]
    _, fixed = _cf_learner(cf_knn=True)
    _, learner = _cf_learner(validation_batches=lambda: [batch], cf_knn=True, cf_start="validation",
                             cf_start_sizes=[1, 2])
    grid = [(a, b, c, d) for a in SIZED_KNN_STARTS for b in KNN_SLOPES for c in SIZED_POP_STARTS for d in POP_SLOPES]
    assert list(learner.start_scores) == grid
    full = batch.support()
    cut = fixed.first_ratings(full, 1)
    assert (cut.mask.sum(1) == 1).all() and (cut.mask <= full.mask).all()  # each task's first rating only
    assert cut.mask[0, 0] and cut.mask[1, 0]
    assert fixed.first_ratings(full, None) is full
    candidates, relevant = fixed.ranking_targets(batch, VAL_SCENARIO)
    parts = []
    with torch.no_grad():
        for size in (None, 1, 2):
            sup = fixed.first_ratings(full, size)
            parts.append((*fixed.cf.fold_in(sup), fixed.knn.fold_in(sup)[0]))
        for (a, b, c, d), got in list(learner.start_scores.items())[::7]:
            want = []
            for e, n, k in parts:
                logits = fixed.prior_logits(e, n, k, knn_offset=a, pop_offset=c, knn_slope=b, pop_slope=d)
                values = full_ranking(logits.masked_fill(~candidates, float("-inf")), relevant & candidates, 10, "recall")
                want.append(float(values[~values.isnan()].mean()))
            assert got == pytest.approx(sum(want) / 3)
    best = max(learner.start_scores.values())
    a, b, c, d = next(key for key, v in learner.start_scores.items() if v == best)
    torch.testing.assert_close(learner.cf_knn_gate, fixed.cf_knn_gate + torch.tensor([a, b]))
    torch.testing.assert_close(learner.cf_pop, fixed.cf_pop + torch.tensor([c, d]))
    for bad in ([], [0], [1.5], "3"):
        with pytest.raises(ConfigError, match="cf_start_sizes must be a non-empty list of integers >= 1"):
            _cf_learner(validation_batches=lambda: [batch], cf_knn=True, cf_start="validation", cf_start_sizes=bad)
    with pytest.raises(ConfigError, match="cf_start_sizes must be .* with learner.cf_start=validation"):
        _cf_learner(cf_start_sizes=[1])


def test_recommender_load_takes_the_start_from_the_checkpoint_without_choosing_it_again(tmp_path, monkeypatch) -> None:
    """``cf_start=validation`` chooses the start when a run is built for training; ``Recommender.load``
    restores a checkpoint over it, so it does not run the validation grid again (seconds on a large
    catalogue), and serves the checkpoint's gates."""
    import metarec
    from metarec.config import compose
    from metarec.learners.fism import FISM
    from metarec.train import fit

    run = fit(compose(["data.params.n_users=120", "trainer.enable_progress_bar=false", f"run.root={tmp_path}",
                       "run.name=f", "model=twotower", "learner=fism_ease", "learner.cf_start=validation",
                       "learner.cf_start_sizes=[1,2]", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                       "trainer.limit_val_batches=1", "trainer.monitor=full_recall@10"]))
    saved = torch.load(next((run / "checkpoints").glob("*.ckpt")), map_location="cpu", weights_only=True)["state_dict"]

    def refuse(self):
        raise AssertionError("choose_start ran while loading a checkpoint")

    monkeypatch.setattr(FISM, "choose_start", refuse)
    rec = metarec.Recommender.load(run)
    torch.testing.assert_close(rec.learner.cf_knn_gate.detach(), saved["cf_knn_gate"])
    torch.testing.assert_close(rec.learner.cf_pop.detach(), saved["cf_pop"])
    task = rec.datamodule.split.episodes["user_cold"][0]
    ratings = list(zip(rec.item_ids[task.support_items].tolist(), task.support_ratings.tolist()))
    assert len(rec.adapt(ratings).recommend(5)) == 5
    with pytest.raises(AssertionError, match="choose_start ran"):
        fit(compose(["data.params.n_users=120", f"run.root={tmp_path}", "run.name=g", "model=twotower",
                     "learner=fism_ease", "learner.cf_start=validation", "trainer.fast_dev_run=true"]))
