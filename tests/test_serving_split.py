"""Serving shortcuts: ``MeLU.serve`` (the first layer split into user and item parts, the item part field by
field: ``FieldProduct``) equals the usual scoring path for every gradient learner and scope, is taken only
inside ``item_cache.serving()``; ``recommend.top_k`` equals a stable full sort."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metarec.data.episodes import Support
from metarec.data.features import Features
from metarec.data.schema import CategoricalField, DenseField, FeatureSchema, MultiHotField
from metarec.learners import LearnerContext, build_learner
from metarec.learners.baselines import FineTuneConfig
from metarec.learners.maml import MAMLConfig
from metarec.learners.metasgd import MetaSGDConfig
from metarec.models import MeLU, MeLUConfig
from metarec.models.melu import FieldProduct
from metarec.models.item_cache import is_serving, serving, sparse_embedding_grads
from metarec.recommend import top_k

N = 3000  # a catalogue: more than one serving chunk of the head is not needed, but more than min_items is
SCHEMA = FeatureSchema(
    user_categorical=(CategoricalField("g", 3), CategoricalField("age", 5)),
    user_multihot=(MultiHotField("likes", 4),),
    item_categorical=(CategoricalField("item_id", N + 1), CategoricalField("year", 7)),
    item_multihot=(MultiHotField("genre", 6), DenseField("text", 3)),
)
LEARNERS = {
    "maml_head": ("maml", MAMLConfig(scope="head", inner_lr=0.5, inner_steps=2)),
    "maml_all": ("maml", MAMLConfig(scope="all", inner_lr=0.5)),
    "maml_clip": ("maml", MAMLConfig(scope="all", inner_lr=0.5, inner_steps=2, inner_grad_clip=0.05)),
    "anil": ("maml", MAMLConfig(scope="output", inner_lr=0.5)),
    "metasgd": ("metasgd", MetaSGDConfig(scope="all", inner_lr=0.5)),
    "finetune": ("finetune", FineTuneConfig(scope="all", finetune_lr=0.5, finetune_steps=2)),
}


def _learner(name: str):
    torch.manual_seed(0)
    model = MeLU(SCHEMA, MeLUConfig(embed_dim=8, hidden=[16, 8]))
    kind, cfg = LEARNERS[name]
    learner = build_learner(kind, model, LearnerContext((1.0, 5.0), 3.0, ["warm"], ["user_cold"]), cfg)
    return learner.eval()


def _catalogue(n: int = N, tasks: int = 1) -> Features:
    g = torch.Generator().manual_seed(1)
    cat = torch.stack([torch.arange(1, n + 1), torch.randint(0, 7, (n,), generator=g)], -1)
    multi = torch.cat([(torch.rand(n, 6, generator=g) < 0.3).float(), torch.randn(n, 3, generator=g)], -1)
    return Features(cat[None].expand(tasks, -1, -1).clone(), multi[None].expand(tasks, -1, -1).clone())


def _users(tasks: int = 1) -> Features:
    cat = torch.tensor([[1, 2], [2, 4], [0, 1]])[:tasks]
    multi = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0], [0, 1, 1, 1]])[:tasks]
    return Features(cat, multi)


def _adapt(learner, tasks: int = 1):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, N, (tasks, 6), generator=g)
    items = _catalogue()
    support_items = Features(items.categorical[0][ids], items.multihot[0][ids])
    ratings = torch.randint(1, 6, (tasks, 6), generator=g).float()
    support = Support(ids, support_items, ratings, torch.ones(tasks, 6, dtype=torch.bool))
    with torch.enable_grad():
        return learner.adapt(_users(tasks), support)


def _ranked(learner, state, items: Features) -> torch.Tensor:
    with torch.no_grad():
        return learner.rank_score(state, None, items)


@pytest.mark.parametrize("name", list(LEARNERS))
@pytest.mark.parametrize("tasks", [1, 2])
def test_serving_split_equals_the_usual_path(name, tasks, monkeypatch) -> None:
    learner = _learner(name)
    state = _adapt(learner, tasks)
    items = _catalogue(tasks=tasks)
    usual = _ranked(learner, state, items)
    took = []
    serve = learner.model.serve
    monkeypatch.setattr(learner.model, "serve", lambda *a: took.append(1) or serve(*a))
    with serving():
        assert is_serving()
        fast = _ranked(learner, state, items)
        again = _ranked(learner, state, items)  # (from memory under head/output)
        few = _ranked(learner, state, Features(items.categorical[:, :7], items.multihot[:, :7]))
    assert not is_serving()
    assert len(took) == 3 and fast.shape == usual.shape == (tasks, N)
    torch.testing.assert_close(fast, usual, rtol=0, atol=1e-5)
    torch.testing.assert_close(again, fast, rtol=0, atol=0)
    torch.testing.assert_close(few, usual[:, :7], rtol=0, atol=1e-5)
    assert torch.equal(_ranked(learner, _adapt(learner, tasks), items), usual)  # the usual path is untouched


def test_serve_is_only_taken_when_serving_without_gradients() -> None:
    learner = _learner("maml_head")
    user, params = _adapt(learner)
    model, items = learner.model, _catalogue()
    names = {f"head.{n}": v for n, v in params.items()}
    torch.set_grad_enabled(False)
    try:
        _serve_cases(model, names, user, items)
    finally:
        torch.set_grad_enabled(True)


def _serve_cases(model, names, user, items) -> None:
    assert model.serve(names, user, items) is None  # not serving: training and evaluation never take it
    with serving():
        assert model.serve(names, user, items) is not None
        assert model.serve({"nope": names["head.0.weight"]}, user, items) is None
        with torch.enable_grad():
            assert model.serve(names, user, items) is None
        model.train()
        assert model.serve(names, user, items) is None


@pytest.mark.parametrize("name", ["maml_head", "maml_all"])
def test_the_item_part_is_made_field_by_field_with_the_current_parameters(name, monkeypatch) -> None:
    """Serving never concatenates the item field vectors (the encoder's forward is not called); only the
    normalised multi-hot inputs are kept per catalogue, so a change of the encoder's parameters shows at once."""
    learner = _learner(name)
    state = _adapt(learner)
    items = _catalogue()
    encoder = learner.model.item_encoder
    calls, prepared = [], []
    forward, inputs = type(encoder).forward, FieldProduct.inputs
    monkeypatch.setattr(type(encoder), "forward",
                        lambda self, x: (calls.append(1) if self is encoder else None) or forward(self, x))
    monkeypatch.setattr(FieldProduct, "inputs", staticmethod(lambda e, m: prepared.append(1) or inputs(e, m)))
    with serving():
        first = _ranked(learner, state, items)
        second = _ranked(learner, state, items)
        with torch.no_grad():  # the encoder's parameters change (the year table, a looked-up product)
            encoder.categorical[1].weight.add_(0.5)
        changed = _ranked(learner, state, items)
        other = _catalogue()  # equal items in other tensors: compared, still from memory
        again = _ranked(learner, state, other)
        other.multihot[0, 0, :6] = 1 - other.multihot[0, 0, :6]  # different items: prepared again
        _ranked(learner, state, other)
    assert not calls and len(prepared) == 3  # first, after the change (the memo asks for unchanged parameters
    # even where, as here, the result does not depend on them), and for the different items
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    torch.testing.assert_close(again, changed, rtol=0, atol=0)
    torch.testing.assert_close(changed, _ranked(learner, state, items), rtol=0, atol=1e-5)
    if name == "maml_head":  # the changed table is the model's own: every score moves
        assert not torch.allclose(changed, first)
    else:  # the state holds the user's adapted copy of the item encoder: the scores do not move
        torch.testing.assert_close(changed, first, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["maml_head", "maml_all"])
def test_other_encoders_keep_the_concatenated_path(name, monkeypatch) -> None:
    """An item encoder of modules ``FieldProduct`` does not know: the item field vectors are made by the
    encoder itself, remembered per catalogue while it does not adapt."""
    monkeypatch.setattr(FieldProduct, "supports", staticmethod(lambda encoder: False))
    learner = _learner(name)
    state = _adapt(learner)
    items = _catalogue()
    usual = _ranked(learner, state, items)
    encoder = learner.model.item_encoder
    calls = []
    forward = type(encoder).forward
    monkeypatch.setattr(type(encoder), "forward",
                        lambda self, x: (calls.append(1) if self is encoder else None) or forward(self, x))
    with serving():
        first = _ranked(learner, state, items)
        second = _ranked(learner, state, items)
    torch.testing.assert_close(first, usual, rtol=0, atol=1e-5)
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    assert len(calls) == (1 if name == "maml_head" else 2)  # under ``all``: the user's copy, every call


@pytest.mark.parametrize("n_items", [1, 6, 7, 8, 50])
def test_field_product_equals_the_concatenated_product(n_items) -> None:
    """Small tables (fewer rows than items) looked up from their product, large ones multiplied per item,
    multi-hot and dense maps folded: the concatenated field vectors' product, float64."""
    torch.manual_seed(3)
    model = MeLU(SCHEMA, MeLUConfig(embed_dim=5, hidden=[4])).double()
    encoder = model.item_encoder
    items = _catalogue(50)
    cat, multi = items.categorical[0][:n_items], items.multihot[0][:n_items].double()
    cat[0, 1] = 0  # an unknown year
    w = torch.randn(4, encoder.out_dim, dtype=torch.float64)
    start = torch.randn(4, dtype=torch.float64)
    product = FieldProduct(encoder, dict(encoder.named_parameters()), w, n_items)
    assert [j for j, _ in product.lookup] == ([1] if n_items > 7 else [])
    with torch.no_grad():
        got = product(start, cat, FieldProduct.inputs(encoder, multi))
        expected = start + encoder(Features(cat, multi)) @ w.T
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_serving_marks_only_its_thread() -> None:
    import threading

    seen = []
    with serving():
        t = threading.Thread(target=lambda: seen.append(is_serving()))
        t.start()
        t.join()
        assert is_serving()
    assert seen == [False] and not is_serving()


@pytest.mark.parametrize("k", [1, 3, 10, 19, 20, 25])
def test_top_k_equals_a_stable_full_sort(k) -> None:
    rng = np.random.default_rng(k)
    for _ in range(50):
        scores = rng.integers(0, 5, 20).astype(np.float64)  # many ties
        scores[rng.random(20) < 0.2] = -np.inf
        scores[rng.random(20) < 0.1] = np.nan
        scores[rng.random(20) < 0.05] = np.inf
        order = np.argsort(-scores, kind="stable")
        expected = order[np.isfinite(scores[order])][:k]
        np.testing.assert_array_equal(top_k(scores, k), expected)


@pytest.mark.parametrize("name", list(LEARNERS))
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_serving_adapts_one_user_without_vmap_to_the_same_parameters(name, sparse, monkeypatch) -> None:
    """One task inside ``serving()``: the executor takes its inner steps with plain autograd (no vmap, no
    ``torch.func.grad``; embedding tables' gradients sparse, with ``sparse``, as for large tables) and gets
    the vmapped path's adapted parameters (clipped inner gradients and learned rates included); two tasks,
    or outside serving, still go through vmap."""
    import metarec.learners.executors.vmap as vm
    import metarec.models.melu as melu

    if sparse:
        monkeypatch.setattr(melu, "SPARSE_MIN_ROWS", 1)

    learner = _learner(name)
    usual_user, usual = _adapt(learner)
    calls = []
    real_vmap = vm.vmap
    monkeypatch.setattr(vm, "vmap", lambda *a, **kw: calls.append(1) or real_vmap(*a, **kw))
    with serving():
        _, fast = _adapt(learner)
        assert not calls  # no vmap for one user
        _adapt(learner, 2)
        assert calls  # a batch of users keeps vmap
    assert fast.keys() == usual.keys()
    for n in usual:
        torch.testing.assert_close(fast[n], usual[n], rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(), (5,), (2, 5)])
def test_embedding_lookups_give_sparse_gradients_only_inside_the_serving_inner_loop(shape, monkeypatch) -> None:
    """Inside ``sparse_embedding_grads()`` the field encoders give the same vectors and a sparse gradient
    of each large embedding table (the used rows only) equal to the dense one; outside it, and for tables
    under ``SPARSE_MIN_ROWS`` rows, dense as in training."""
    import metarec.models.melu as melu

    torch.manual_seed(0)
    model = MeLU(SCHEMA, MeLUConfig(embed_dim=8, hidden=[16, 8]))
    enc = model.item_encoder
    cat = _catalogue(20).categorical[0, 3:3 + (int(np.prod(shape)) if shape else 1)].reshape(*shape, 2)
    multi = torch.zeros(*shape, 9)
    x = Features(cat, multi)
    table = enc.categorical[0].weight

    def vectors_and_grad():
        out = enc(x)
        return out, torch.autograd.grad((out * torch.arange(out.shape[-1])).sum(), [table])[0]

    dense_out, dense_g = vectors_and_grad()
    assert not dense_g.is_sparse
    assert table.shape[0] < melu.SPARSE_MIN_ROWS
    with sparse_embedding_grads():
        assert not vectors_and_grad()[1].is_sparse  # a small table: dense
    monkeypatch.setattr(melu, "SPARSE_MIN_ROWS", table.shape[0])
    with sparse_embedding_grads():
        sparse_out, sparse_g = vectors_and_grad()
    assert sparse_g.is_sparse and not vectors_and_grad()[1].is_sparse  # the flag ends with the block
    torch.testing.assert_close(sparse_out, dense_out, rtol=0, atol=0)
    torch.testing.assert_close(sparse_g.to_dense(), dense_g, rtol=0, atol=1e-12)
    assert sparse_g.coalesce().indices().unique().numel() <= max(1, int(np.prod(shape)))  # used rows only
