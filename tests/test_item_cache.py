"""``ItemSideCache``: the two-tower ``ridge`` learner scores a catalogue from remembered item vectors only
while nothing they depend on changed (serving: ``Recommender.recommend`` scores every item per user)."""

from __future__ import annotations

import pytest
import torch

from metarec.data.episodes import Support
from metarec.data.features import Features
from metarec.data.schema import CategoricalField, FeatureSchema, MultiHotField
from metarec.learners import LearnerContext, build_learner
from metarec.learners.ridge import RidgeConfig
from metarec.models import TwoTower, TwoTowerConfig

N = 1500  # a catalogue: at least the cache's default min_items (1024)
SCHEMA = FeatureSchema(
    user_categorical=(CategoricalField("g", 3),),
    item_categorical=(CategoricalField("item_id", N + 1),),
    item_multihot=(MultiHotField("genre", 5),),
)


def _learner():
    torch.manual_seed(0)
    model = TwoTower(SCHEMA, TwoTowerConfig(embed_dim=4, dim=4, user_hidden=[8], item_hidden=[8]))
    learner = build_learner("ridge", model, LearnerContext((1.0, 5.0), 3.0, ["warm"], ["user_cold"]), RidgeConfig())
    learner.eval()
    calls = []
    inner = model.item_side
    model.item_side = lambda items: (calls.append(items.categorical.shape[-2]), inner(items))[1]
    return learner, calls


def _catalogue(n: int = N, seed: int = 0) -> Features:
    g = torch.Generator().manual_seed(seed)
    return Features(torch.arange(1, n + 1)[None, :, None], (torch.rand(1, n, 5, generator=g) < 0.4).float())


def _user(learner) -> torch.Tensor:
    items = _catalogue(6, seed=1)
    support = Support(torch.arange(6)[None], items, torch.tensor([[5.0, 1.0, 4.0, 2.0, 3.0, 5.0]]),
                      torch.ones(1, 6, dtype=torch.bool))
    with torch.no_grad():
        return learner.adapt(Features(torch.tensor([[1]]), torch.zeros(1, 0)), support)


def _fresh(learner, u, items) -> torch.Tensor:
    """The score computed without the cache."""
    x, offset = learner._items(items)
    return (x * u.unsqueeze(-2)).sum(-1) + offset


def _score(learner, u, items) -> torch.Tensor:
    with torch.no_grad():
        return learner.score(u, None, items)


def test_catalogue_scores_come_from_memory_and_equal_a_fresh_computation() -> None:
    learner, calls = _learner()
    u = _user(learner)
    items = _catalogue()
    first = _score(learner, u, items)
    calls.clear()
    again = _score(learner, u, _catalogue())  # new tensors, same features: from memory
    other_user = _score(learner, u + 1.0, _catalogue())
    assert calls == []
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(other_user, _fresh(learner, u + 1.0, items), rtol=0, atol=0)


@pytest.mark.parametrize("change", ["parameter in place", "load_state_dict", "other features", "other size"])
def test_anything_the_item_side_depends_on_changing_recomputes_it(change) -> None:
    learner, calls = _learner()
    u = _user(learner)
    items = _catalogue()
    _score(learner, u, items)
    calls.clear()
    if change == "parameter in place":
        with torch.no_grad():
            learner.model.item_tower[0].weight.mul_(1.5)
    elif change == "load_state_dict":
        state = {k: v + 0.25 if v.is_floating_point() else v for k, v in learner.state_dict().items()}
        learner.load_state_dict(state)
    elif change == "other features":
        items = _catalogue(seed=7)
    else:
        items = _catalogue(N - 10)
    got = _score(learner, u, items)
    assert len(calls) == 1
    with torch.no_grad():
        torch.testing.assert_close(got, _fresh(learner, u, items), rtol=0, atol=0)


def test_training_gradients_and_small_item_sets_never_use_it() -> None:
    learner, calls = _learner()
    u = _user(learner)
    items = _catalogue()
    _score(learner, u, items)
    calls.clear()
    learner.score(u, None, items)  # gradients recorded
    learner.train()
    _score(learner, u, items)  # training mode
    learner.eval()
    small = Features(items.categorical[:, :10], items.multihot[:, :10])
    _score(learner, u, small)
    _score(learner, u, small)  # a support or a top-k is computed every time
    batched = Features(items.categorical.expand(2, N, 1), items.multihot.expand(2, N, 5))
    _score(learner, u.expand(2, -1), batched)  # several tasks (evaluation batches): not remembered
    assert calls == [N, N, 10, 10, N]


def test_the_very_same_item_tensors_skip_the_comparison_until_written(monkeypatch) -> None:
    learner, calls = _learner()
    u = _user(learner)
    items = _catalogue()
    first = _score(learner, u, items)
    compared = []
    equal = torch.equal
    monkeypatch.setattr(torch, "equal", lambda a, b: compared.append(1) or equal(a, b))
    calls.clear()
    torch.testing.assert_close(_score(learner, u, items), first, rtol=0, atol=0)
    assert calls == [] and compared == []  # the same objects, unwritten: known without comparing
    items.multihot[0, 0].copy_(1.0 - items.multihot[0, 0])  # written in place: compared, recomputed
    got = _score(learner, u, items)
    assert compared and calls == [N]
    with torch.no_grad():
        torch.testing.assert_close(got, _fresh(learner, u, items), rtol=0, atol=0)
