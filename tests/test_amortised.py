"""The amortised (neural-process style) learner: it starts as the base model, reads the support as a set
(order and padding do not matter, tasks do not see each other), learns what no global model can (a
per-user offset visible only in the support), and trains through the CLI with every base model."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

from metarec.config import compose
from metarec.data.episodes import EpisodeCollator, FeatureTables, Support
from metarec.data.features import Features
from metarec.data.schema import CategoricalField, FeatureTable, RecDataset
from metarec.data.splits import Task
from metarec.errors import ConfigError
from metarec.learners import LearnerContext, build_learner
from metarec.learners.amortised import AmortisedConfig
from metarec.learners.baselines import GlobalConfig
from metarec.models import MeLU, MeLUConfig
from metarec.models.twotower import TwoTower, TwoTowerConfig
from metarec.runs import finished_runs
from metarec.train import fit
from test_learners import ctx, tiny_batch, tiny_dataset

CONFIGS = {
    "mean": AmortisedConfig(encoder="mean", hidden=8, heads=2),
    "attention": AmortisedConfig(encoder="attention", hidden=8, heads=2),
    "latent": AmortisedConfig(encoder="attention", hidden=8, heads=2, latent_dim=3),
}


# base models: the two-tower head starts with its user vector (not a linear layer) and ends in one output
MODELS = {
    "melu": lambda schema: MeLU(schema, MeLUConfig(embed_dim=4, hidden=[6])),
    "twotower": lambda schema: TwoTower(schema, TwoTowerConfig(embed_dim=4, dim=3, user_hidden=[6], item_hidden=[5])),
}


def learner_for(ds, cfg: AmortisedConfig, perturb: bool = True, model: str = "melu"):
    torch.manual_seed(0)
    model = MODELS[model](ds.schema).double()
    learner = build_learner("amortised", model, ctx(ds), copy.deepcopy(cfg)).double()
    if perturb:  # non-zero modulation, so that the support matters
        with torch.no_grad():
            for film in learner.films:
                film.weight.normal_(0.0, 0.5)
                film.bias.normal_(0.0, 0.1)
    return learner


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_starts_as_the_base_model(name, model):
    ds = tiny_dataset()
    learner = learner_for(ds, CONFIGS[name], perturb=False, model=model)
    batch = tiny_batch(ds)
    _, out = learner.meta_step(batch, train=False)
    expected = learner.model(batch.user, batch.item)[:, batch.n_support :]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_support_is_a_set_padding_is_ignored_and_tasks_are_independent(name, model):
    ds = tiny_dataset()
    learner = learner_for(ds, CONFIGS[name], model=model)
    batch = tiny_batch(ds)
    _, out = learner.meta_step(batch, train=False)
    s = batch.n_support

    # permuting the support positions (with their masks) changes nothing
    perm = torch.tensor([4, 2, 0, 3, 1])
    shuffled = copy.copy(batch)
    idx = torch.cat([perm, torch.arange(s, batch.item_ids.shape[1])])
    shuffled.item = batch.item.index((slice(None), idx))
    shuffled.item_ids, shuffled.ratings = batch.item_ids[:, idx], batch.ratings[:, idx]
    shuffled.support_mask, shuffled.query_mask = batch.support_mask[:, idx], batch.query_mask[:, idx]
    torch.testing.assert_close(learner.meta_step(shuffled, train=False)[1], out, rtol=0, atol=1e-12)

    # task 0 has 3 support ratings and 2 padded positions: garbage there changes nothing
    padded = copy.copy(batch)
    padded.ratings = batch.ratings.clone()
    padded.ratings[0, 3:s] = 123.0
    cat = batch.item.categorical.clone()
    cat[0, 3:s] = 5
    padded.item = type(batch.item)(cat, batch.item.multihot)
    torch.testing.assert_close(learner.meta_step(padded, train=False)[1], out, rtol=0, atol=1e-12)

    # each task alone gives its row of the batch
    r = ds.ratings.set_index(["user", "item"]).rating
    tasks = [(0, [0, 1, 2], [3, 4]), (2, [1, 3, 5, 6, 7], [0, 2, 4])]
    for t, (u, sup, qry) in enumerate(tasks):
        task = Task(u, np.array(sup), np.array([r[u, i] for i in sup], np.float32),
                    np.array(qry), np.array([r[u, i] for i in qry], np.float32))
        alone = EpisodeCollator(FeatureTables(ds))([task])
        alone.ratings = alone.ratings.double()
        alone.item.multihot, alone.user.multihot = alone.item.multihot.double(), alone.user.multihot.double()
        torch.testing.assert_close(learner.meta_step(alone, train=False)[1][0], out[t, : len(qry)], rtol=0, atol=1e-12)

    # the ratings matter: flipping them changes the predictions
    flipped = copy.copy(batch)
    flipped.ratings = torch.where(batch.support_mask, 6.0 - batch.ratings, batch.ratings)
    assert not torch.allclose(learner.meta_step(flipped, train=False)[1], out)

    # full ranking scores the query items as the query path does
    n_items = ds.items.categorical.shape[0]
    ids = torch.arange(n_items).expand(batch.n_tasks, n_items)
    state = learner.adapt(batch.user, batch.support())
    scores = learner.rank_score(state, ids, FeatureTables(ds).items(torch.arange(n_items)).for_tasks(batch.n_tasks))
    scores = scores.double()
    for t in range(batch.n_tasks):
        q = batch.item_ids[t, s:][batch.query_mask[t, s:]]
        torch.testing.assert_close(scores[t, q], out[t, : len(q)], rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_serving_maps_the_bodys_user_and_item_parts_apart_and_equals_the_usual_scores(name, monkeypatch):
    """Inside ``serving()`` scoring takes ``Amortised.serve`` (the body's user and item parts mapped
    separately, the context's per-task inputs once, the items in chunks) and gets ``decode``'s outputs."""
    import metarec.learners.amortised as am
    from metarec.models.item_cache import serving

    ds = tiny_dataset()
    learner = learner_for(ds, CONFIGS[name]).eval()
    batch = tiny_batch(ds)
    state = learner.adapt(batch.user, batch.support())
    with torch.no_grad():
        usual = learner.score(state, *batch.query())
    monkeypatch.setattr(am, "SERVE_CHUNK", 2)  # several chunks
    taken, real = [], learner.serve
    monkeypatch.setattr(learner, "serve", lambda *a: taken.append(1) or real(*a))
    with serving(), torch.no_grad():
        fast = learner.score(state, *batch.query())
    assert taken and fast.shape == usual.shape
    torch.testing.assert_close(fast, usual, rtol=0, atol=1e-10)
    with torch.no_grad():  # outside serving: the usual path
        learner.score(state, *batch.query())
    assert len(taken) == 1
    s = batch.support()  # one user, as Recommender serves: the 2-D products
    one = Support(s.item_ids[:1], s.items.index((slice(0, 1),)), s.ratings[:1], s.mask[:1])
    state = learner.adapt(batch.user.index((slice(0, 1),)), one)
    items, feats = batch.query()
    query = (items[:1], feats.index((slice(0, 1),)))
    with torch.no_grad():
        usual = learner.score(state, *query)
        with serving():
            fast = learner.score(state, *query)
    assert len(taken) == 2
    torch.testing.assert_close(fast, usual, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_serving_a_catalogue_keeps_its_item_maps_until_a_parameter_changes(name, monkeypatch):
    """The items' parts of the body's linear maps are kept per loaded run for a catalogue (one task's
    items, at least ``min_items``) and made again when a parameter or the items change; the scores
    equal ``decode``'s every time."""
    from metarec.models.item_cache import serving

    ds = tiny_dataset()
    learner = learner_for(ds, CONFIGS[name]).eval()
    learner._item_maps.min_items = 2
    batch = tiny_batch(ds)
    s = batch.support()
    user = batch.user.index((slice(0, 1),))
    state = learner.adapt(user, Support(s.item_ids[:1], s.items.index((slice(0, 1),)), s.ratings[:1], s.mask[:1]))
    n_items = ds.items.categorical.shape[0]
    ids = torch.arange(n_items)[None]
    items = FeatureTables(ds).items(torch.arange(n_items)).for_tasks(1)
    made, real = [], learner.item_maps
    monkeypatch.setattr(learner, "item_maps", lambda *a: made.append(1) or real(*a))

    def check() -> None:
        with torch.no_grad():
            usual = learner.decode(learner.model.body(user, items), state[1])
            with serving():
                fast = learner.score(state, ids, items)
        torch.testing.assert_close(fast, usual, rtol=0, atol=1e-10)

    check(), check()
    assert len(made) == 1  # the second call answered from memory
    with torch.no_grad():
        learner.model.head[0].weight[0, -1] += 0.5  # an in-place change: its version moves
    check()
    assert len(made) == 2
    items = Features(items.categorical.flip(1), items.multihot.flip(1))  # other items (the same set, reordered)
    ids = ids.flip(1)
    check()
    assert len(made) == 3


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_an_empty_support_is_well_defined(name, model):
    ds = tiny_dataset()
    learner = learner_for(ds, CONFIGS[name], model=model)
    batch = tiny_batch(ds)
    empty = copy.copy(batch)
    empty.support_mask = torch.zeros_like(batch.support_mask)
    _, out = learner.meta_step(empty, train=False)
    assert torch.isfinite(out).all()
    other = copy.copy(empty)
    other.ratings = torch.where(batch.support_mask, 1.0, batch.ratings)
    torch.testing.assert_close(learner.meta_step(other, train=False)[1], out, rtol=0, atol=1e-12)


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_parameter_gets_a_meta_gradient(name, model):
    ds = tiny_dataset()
    learner = learner_for(ds, CONFIGS[name], model=model)
    torch.manual_seed(1)
    loss, _ = learner.meta_step(tiny_batch(ds), train=True)
    loss.backward()
    missing = [n for n, p in learner.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # the padding rows of the embeddings (code 0) are the only exceptions
    assert missing == [], missing


def test_latent_path_samples_in_training_only_and_adds_a_nonnegative_kl():
    ds = tiny_dataset()
    learner = learner_for(ds, CONFIGS["latent"])
    batch = tiny_batch(ds)
    a, b = learner.meta_step(batch, train=False), learner.meta_step(batch, train=False)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)  # evaluation: the prior mean, deterministic
    torch.manual_seed(0)
    loss1, out1 = learner.meta_step(batch, train=True)
    torch.manual_seed(1)
    _, out2 = learner.meta_step(batch, train=True)
    assert not torch.allclose(out1, out2)  # training samples z from the posterior
    _, y, m = batch.part("query")
    query_loss = learner.loss_fn(out1, y, m).mean()
    assert loss1 >= query_loss  # + kl_weight * KL, and KL >= 0
    no_kl = copy.deepcopy(learner)
    no_kl.cfg.kl_weight = 0.0
    torch.manual_seed(0)
    torch.testing.assert_close(no_kl.meta_step(batch, train=True)[0], query_loss)


def test_targets_all_trains_on_support_and_query_but_evaluates_on_query():
    ds = tiny_dataset()
    learner = learner_for(ds, dataclasses.replace(CONFIGS["attention"], targets="all"))
    batch = tiny_batch(ds)
    s = batch.n_support
    loss, out = learner.meta_step(batch, train=True)
    ctx_ = learner.encode(learner.model.body(batch.user, batch.item)[:, :s], batch.ratings[:, :s],
                          batch.support_mask[:, :s])
    every = learner.decode(learner.model.body(batch.user, batch.item), ctx_)
    torch.testing.assert_close(loss, learner.loss_fn(every, batch.ratings, batch.support_mask | batch.query_mask).mean())
    torch.testing.assert_close(out, every[:, s:])
    _, y, m = batch.part("query")
    eval_loss, eval_out = learner.meta_step(batch, train=False)
    torch.testing.assert_close(eval_out, out)
    torch.testing.assert_close(eval_loss, learner.loss_fn(out, y, m).mean())
    assert not torch.allclose(loss, eval_loss)


# ---------------------------------------------------------------------------------------------
# It learns what a global model cannot: each user's offset, visible only in its support


N_ITEMS = 30


def offset_tasks(rng: np.random.Generator, n: int, effects: np.ndarray) -> list[Task]:
    tasks = []
    for _ in range(n):
        offset = rng.normal(0.0, 1.5)
        items = rng.choice(N_ITEMS, 12, replace=False)
        ratings = (3.0 + offset + effects[items] + rng.normal(0.0, 0.1, 12)).astype(np.float32)
        tasks.append(Task(0, items[:8], ratings[:8], items[8:], ratings[8:]))
    return tasks


def offset_dataset() -> RecDataset:
    rows = [(0, i, 3.0, 0) for i in range(N_ITEMS)]
    return RecDataset(
        name="offsets", ratings=pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"]),
        users=FeatureTable([CategoricalField("g", 2)], np.array([[1]])),
        items=FeatureTable([CategoricalField("item_id", N_ITEMS + 1)], np.arange(1, N_ITEMS + 1)[:, None]),
        user_ids=np.arange(1), item_ids=np.arange(N_ITEMS), item_year=np.full(N_ITEMS, np.nan),
    )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_learns_per_user_offsets_a_global_model_cannot(name):
    ds = offset_dataset()
    context = LearnerContext(rating_range=(1.0, 5.0), train_rating_mean=3.0, val_scenarios=["warm"],
                             test_scenarios=["user_cold"])
    collate = EpisodeCollator(FeatureTables(ds))
    effects = np.random.default_rng(0).normal(0.0, 0.5, N_ITEMS)
    results = {}
    for kind, cfg in (("amortised", dataclasses.replace(CONFIGS[name], hidden=16)), ("global", GlobalConfig())):
        torch.manual_seed(0)
        model = MeLU(ds.schema, MeLUConfig(embed_dim=8, hidden=[16]))
        model.set_output_bias(3.0)
        learner = build_learner(kind, model, context, cfg)
        opt = torch.optim.Adam(learner.parameters(), lr=1e-2)
        rng = np.random.default_rng(1)
        for _ in range(300):
            loss, _ = learner.meta_step(collate(offset_tasks(rng, 16, effects)), train=True)
            opt.zero_grad()
            loss.backward()
            opt.step()
        test = collate(offset_tasks(np.random.default_rng(2), 200, effects))
        with torch.no_grad():
            results[kind] = float(learner.meta_step(test, train=False)[0])
    # the offsets' variance is 2.25: the global model cannot go below it, reading the support can
    assert results["global"] > 1.5
    assert results["amortised"] < 0.25 * results["global"], results


# ---------------------------------------------------------------------------------------------
# Configuration and the CLI


@pytest.mark.parametrize("override, fragment", [
    ("learner.encoder=lstm", "learner.encoder must be one of mean, attention"),
    ("learner.hidden=10", "positive multiple of learner.heads"),
    ("learner.targets=support", "learner.targets must be query or all"),
    ("learner.latent_dim=-1", "learner.latent_dim must be an integer >= 0"),
    ("learner.kl_weight=-0.5", "learner.kl_weight must be a finite number >= 0"),
])
def test_bad_settings_are_one_line_errors(override, fragment, tmp_path):
    with pytest.raises(ConfigError, match=fragment) as e:  # refused when the config is built, or by the learner
        fit(compose(["learner=amortised", override, "data.params.n_users=50", f"run.root={tmp_path}"]))
    assert "\n" not in str(e.value)
    assert not any(tmp_path.rglob("metrics.json"))


@pytest.mark.parametrize("extra", [
    ["learner=amortised", "model=transformer", "model.d_model=16", "model.heads=2", "model.ffn=32"],
    ["learner=amortised", "model=twotower"],
    ["learner=amortised", "model=twotower", "data.negatives.per_positive=2", "data.negatives.loss=softmax"],
    ["learner=tanp", "data.negatives.per_positive=2"],
])
def test_fits_with_other_models_and_losses(extra, tmp_path):
    cfg = compose([*extra, "data.params.n_users=200", "trainer.fast_dev_run=true", "trainer.enable_progress_bar=false",
                   f"run.root={tmp_path}"])
    (record,) = finished_runs(fit(cfg))
    assert all(math.isfinite(v) for v in record["metrics"].values())
