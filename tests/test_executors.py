"""The vmap executor computes the same numbers as the learn2learn reference (float64, ragged tasks)."""

from __future__ import annotations

import copy

import pytest
import torch

from metarec.data.datamodule import ColdStartDataModule, DataConfig
from metarec.data.splits import SplitConfig
from metarec.learners import LearnerContext, build_learner
from metarec.learners.maml import MAMLConfig
from metarec.learners.metasgd import MetaSGDConfig
from metarec.learners.reptile import ReptileConfig
from metarec.models import MeLU, MeLUConfig, TwoTower, TwoTowerConfig


@pytest.fixture(scope="module")
def dm():
    dm = ColdStartDataModule(DataConfig(params={"n_users": 200}, split=SplitConfig(), meta_batch_size=6), seed=0)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def setup(dm):
    batch = next(iter(dm.train_dataloader()))
    batch.ratings = batch.ratings.double()
    batch.item.multihot = batch.item.multihot.double()
    batch.user.multihot = batch.user.multihot.double()
    lengths = batch.support_mask.sum(1)
    assert len(set(lengths.tolist())) > 1, "the batch must hold tasks of different support lengths"
    ctx = LearnerContext((1.0, 5.0), 3.5, ["warm"], ["user_cold"])
    torch.manual_seed(0)
    model = MeLU(dm.dataset.schema, MeLUConfig(embed_dim=8, hidden=[16, 16])).double()
    return batch, ctx, model


# (learner name, config class, extra options): MAML, FOMAML, ANIL, MeLU, Meta-SGD
CASES = {
    "maml": ("maml", MAMLConfig, {}),
    "fomaml": ("maml", MAMLConfig, {"first_order": True}),
    "anil": ("maml", MAMLConfig, {"scope": "output"}),
    "melu": ("maml", MAMLConfig, {"scope": "head"}),
    "metasgd": ("metasgd", MetaSGDConfig, {}),
}


def _pair(setup, name, cls, extra, dense=False, split=False):
    """The learn2learn reference and the vmap executor; ``dense``: vmap with per-task copies of every
    adapted weight (no factored first layer); ``split``: under ``all``, where the first layer is not
    factored, the split first layer at any support size (without: never, so that the factored and dense
    paths are what the other tests check)."""
    batch, ctx, model = setup
    learners = []
    for executor in ("learn2learn", "vmap"):
        opts = {"inner_lr": 0.05, **extra, "executor": executor}
        learners.append(build_learner(name, copy.deepcopy(model), ctx, cls(**opts)))
    if dense:
        learners[1].executor.factored = None
    learners[1].executor.split_above = 0.0 if split else float("inf")
    return batch, learners


def _split_calls(monkeypatch, model) -> list:
    """A list that gets an entry at each call of ``forward_split`` on ``model``'s class (for this test)."""
    calls = []
    original = type(model).forward_split
    monkeypatch.setattr(type(model), "forward_split", lambda self, u, i: calls.append(1) or original(self, u, i))
    return calls


def _grads(learner):
    return {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def _assert_same_training_step(batch, ref, fast) -> dict:
    """One meta-training step of each learner: the same query loss, predictions and meta-gradients.
    Returns the reference's gradients."""
    results = []
    for learner in (ref, fast):
        loss, preds = learner.meta_step(batch, train=True)
        loss.backward()
        results.append((loss.detach(), preds.detach(), _grads(learner)))
    (l1, p1, g1), (l2, p2, g2) = results
    _close(l1, l2)
    _close(p1, p2)
    assert g1.keys() == g2.keys() and len(g1) > 0
    for k in g1:
        _close(g1[k], g2[k])
    return g1


@pytest.mark.parametrize("dense", [False, True], ids=["factored", "dense"])
@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("scope", ["head", "all"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_query_loss_and_meta_gradient_agree(setup, case, scope, steps, dense):
    name, cls, extra = CASES[case]
    extra = {"scope": scope, **extra}  # ANIL keeps its output scope; the others take the parametrised one
    if case == "anil" and scope == "all":
        pytest.skip("ANIL adapts the output layer only")
    batch, (ref, fast) = _pair(setup, name, cls, {**extra, "inner_steps": steps}, dense)
    # MAML-type learners (scalar rate) take the factored first layer unless told not to
    factored = not dense and case != "metasgd"
    assert (fast.executor.factored is not None) == factored
    g1 = _assert_same_training_step(batch, ref, fast)
    if case == "metasgd":
        assert any(k.startswith("maml.lrs") for k in g1)


@pytest.mark.parametrize("dense", [False, True], ids=["factored", "dense"])
@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("scope", ["head", "all"])
def test_evaluation_predictions_agree(setup, scope, steps, dense):
    batch, (ref, fast) = _pair(setup, "maml", MAMLConfig, {"scope": scope, "inner_steps": steps}, dense)
    _, p1 = ref.meta_step(batch, train=False)
    _, p2 = fast.meta_step(batch, train=False)
    assert not p1.requires_grad and not p2.requires_grad
    _close(p1, p2)


@pytest.mark.parametrize("dense", [False, True], ids=["factored", "dense"])
@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("scope", ["head", "all"])
def test_reptile_direction_agrees(setup, scope, steps, dense):
    batch, (ref, fast) = _pair(setup, "reptile", ReptileConfig, {"scope": scope, "inner_steps": steps}, dense)
    d1, l1 = ref.reptile_direction(batch)
    d2, l2 = fast.reptile_direction(batch)
    _close(l1, l2)
    assert len(d1) == len(d2) > 0
    for a, b in zip(d1, d2):
        _close(a, b)
    assert any(a.abs().sum() > 0 for a in d1)


def test_vmap_chunking_gives_the_same_numbers(setup):
    batch, (ref, _) = _pair(setup, "maml", MAMLConfig, {"scope": "head", "inner_steps": 2})
    _, ctx, model = setup
    chunked = build_learner(
        "maml", copy.deepcopy(model), ctx, MAMLConfig(inner_lr=0.05, scope="head", inner_steps=2, executor="vmap", chunk_size=2)
    )
    l1, _ = ref.meta_step(batch, train=True)
    l2, _ = chunked.meta_step(batch, train=True)
    _close(l1.detach(), l2.detach())


class FixedBiasMeLU(MeLU):
    """MeLU whose biases are meta-learned but not adapted per task under ``head``."""

    def adapts(self, scope):
        return (lambda name: not name.endswith("bias")) if scope == "head" else None


@pytest.mark.parametrize("clip", [None, 0.05])
@pytest.mark.parametrize("first_order", [False, True])
def test_factored_first_layer_with_fixed_biases_and_clipping(dm, setup, first_order, clip):
    """The factored path when the first layer's bias is not adapted (it stays a meta-parameter), with
    and without inner-gradient clipping, first and second order: the same numbers as learn2learn."""
    batch, ctx, _ = setup
    torch.manual_seed(1)
    model = FixedBiasMeLU(dm.dataset.schema, MeLUConfig(embed_dim=8, hidden=[16, 16])).double()
    cfg = {"inner_lr": 0.5, "inner_steps": 3, "scope": "head", "first_order": first_order, "inner_grad_clip": clip}
    learners = [build_learner("maml", copy.deepcopy(model), ctx, MAMLConfig(**cfg, executor=e))
                for e in ("learn2learn", "vmap")]
    assert learners[1].executor.factored is not None and learners[1].executor.partial
    assert any("bias" in k for k in _assert_same_training_step(batch, *learners))
    # and the materialised adapted weights (Reptile, scoring) equal learn2learn's clone
    phis, _ = learners[1].executor.adapted_parameters(batch, 3)
    ref, _ = learners[0].executor.adapted_parameters(batch, 3)
    for a, b in zip(phis, ref):
        _close(a, b)


@pytest.mark.parametrize("clip", [None, 0.05])
@pytest.mark.parametrize("first_order", [False, True])
def test_factored_first_layer_under_all_folds_into_a_copy(dm, setup, first_order, clip):
    """Scope ``all``: the first layer's input changes every step, so its factored terms pile up and fold
    into a per-task copy (which later steps update) while the rows the layer still goes through outnumber
    out*in/(out+in); the last steps' terms stay factored. Five steps here fold and keep terms: the numbers
    stay learn2learn's."""
    batch, ctx, _ = setup
    torch.manual_seed(2)
    model = MeLU(dm.dataset.schema, MeLUConfig(embed_dim=16, hidden=[128, 16])).double()
    out_dim, in_dim = model.head[0].weight.shape
    support = batch.n_support  # each step adds a term of this rank
    assert 2 * support <= out_dim * in_dim / (out_dim + in_dim) < 3 * support
    cfg = {"inner_lr": 0.3, "inner_steps": 5, "scope": "all", "first_order": first_order, "inner_grad_clip": clip}
    learners = [build_learner("maml", copy.deepcopy(model), ctx, MAMLConfig(**cfg, executor=e))
                for e in ("learn2learn", "vmap")]
    assert learners[1].executor.factored is not None
    _assert_same_training_step(batch, *learners)
    phis, _ = learners[1].executor.adapted_parameters(batch, 5)
    ref, _ = learners[0].executor.adapted_parameters(batch, 5)
    for a, b in zip(phis, ref):
        _close(a, b)


@pytest.mark.parametrize("steps, folds", [(1, 0), (3, 2)])
def test_factored_terms_fold_only_while_the_rows_left_outnumber_the_rank(setup, monkeypatch, steps, folds):
    """Under ``all`` a step folds the factored terms into a per-task copy only while the rows the first layer
    still goes through (the later steps' supports, then the query) outnumber out*in/(out+in): here 12,
    between the query's 10 rows and the support's 27, so one step folds nothing (whatever the support) and
    three steps fold at the first two (2 x 27 + 10 and 27 + 10 rows left) and keep the last step's terms,
    which only the query sees. The numbers are learn2learn's."""
    import metarec.learners.executors.factored as factored

    batch, (ref, fast) = _pair(setup, "maml", MAMLConfig, {"scope": "all", "inner_steps": steps})
    out_dim, in_dim = fast.model.head[0].weight.shape
    assert batch.ratings.shape[1] - batch.n_support < out_dim * in_dim / (out_dim + in_dim) < batch.n_support
    calls = []
    original = factored.minus
    monkeypatch.setattr(factored, "minus", lambda w, terms: calls.append(len(terms)) or original(w, terms))
    _assert_same_training_step(batch, ref, fast)
    assert fast.executor.factored is not None and len(calls) == folds


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("scope", ["head", "output", "all"])
@pytest.mark.parametrize("case", ["maml", "fomaml", "metasgd"])
def test_two_tower_model_agrees_across_executors(dm, setup, case, scope, steps):
    """The dot-product base model under every scope: training steps and evaluation predictions equal
    learn2learn's (float64), as for MeLU."""
    batch, ctx, _ = setup
    torch.manual_seed(3)
    model = TwoTower(dm.dataset.schema, TwoTowerConfig(embed_dim=8, dim=8, user_hidden=[16], item_hidden=[16])).double()
    name, cls, extra = CASES[case]
    learners = [build_learner(name, copy.deepcopy(model), ctx, cls(**{"inner_lr": 0.05, **extra, "scope": scope,
                                                                      "inner_steps": steps, "executor": e}))
                for e in ("learn2learn", "vmap")]
    g = _assert_same_training_step(batch, *learners)
    if scope != "all":  # the item tower still learns, in the outer loop, through the adapted head
        assert any(k.startswith("model.item_tower") for k in g)
    _close(learners[0].meta_step(batch, train=False)[1], learners[1].meta_step(batch, train=False)[1])


@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("case", ["maml", "fomaml", "metasgd"])
def test_split_first_layer_under_all_agrees(setup, monkeypatch, case, steps):
    """Under ``all``, where the first layer is not factored (Meta-SGD; MAML made dense here), supports longer
    than ``split_above`` run the model's ``forward_split`` (the first head layer on the user and item parts
    apart) with per-task copies: the same loss, predictions, meta-gradients."""
    name, cls, extra = CASES[case]
    batch, (ref, fast) = _pair(setup, name, cls, {**extra, "scope": "all", "inner_steps": steps}, dense=True,
                               split=True)
    assert fast.executor.split is not None
    calls = _split_calls(monkeypatch, fast.executor.split.model)
    _assert_same_training_step(batch, ref, fast)
    _, p1 = ref.meta_step(batch, train=False)
    _, p2 = fast.meta_step(batch, train=False)
    _close(p1, p2)
    assert calls, "the split forward was not used"


def test_forward_split_equals_forward(setup):
    batch, _, model = setup
    _close(model.forward_split(batch.user, batch.item), model(batch.user, batch.item))


def test_split_is_chosen_from_the_support_size_and_only_under_all(setup):
    _, ctx, model = setup
    from metarec.learners import build_learner as build

    head = build("maml", copy.deepcopy(model), ctx, MAMLConfig(scope="head"))
    assert head.executor.split is None
    whole = build("maml", copy.deepcopy(model), ctx, MAMLConfig(scope="all"))
    out_dim, in_dim = model.head[0].weight.shape
    assert whole.executor.split_above == pytest.approx(out_dim * in_dim / (out_dim + in_dim))


@pytest.mark.parametrize("case, split_used", [("maml", False), ("metasgd", True)])
def test_factored_first_layer_takes_precedence_over_the_split_one(setup, monkeypatch, case, split_used):
    """With a support longer than ``split_above``, MAML (scalar rate) keeps its first layer factored and
    never runs ``forward_split``; Meta-SGD (learned rates, no factored layer) runs it on per-task copies."""
    batch, ctx, model = setup
    name, cls, extra = CASES[case]
    fast = build_learner(name, copy.deepcopy(model), ctx, cls(**{**extra, "scope": "all", "executor": "vmap"}))
    assert batch.n_support > fast.executor.split_above
    calls = _split_calls(monkeypatch, model)
    fast.meta_step(batch, train=True)
    assert bool(calls) is split_used and (fast.executor.factored is None) is split_used


class WholeBodyMeLU(MeLU):
    """MeLU that does not offer its body's two parts: the factored first layer takes the concatenation."""

    splits_body = False


@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("scope", ["head", "all"])
def test_factored_first_layer_takes_the_body_parts_where_the_model_splits_it(dm, setup, scope, steps):
    """MeLU splits its body, so the factored first layer runs on the user and item parts (``Parts``: the
    prefix under ``head``, the per-task body under ``all``); a model that does not is given the concatenation.
    Both paths: learn2learn's loss, predictions, meta-gradients and materialised adapted weights."""
    batch, ctx, model = setup
    for cls, parts in ((MeLU, True), (WholeBodyMeLU, False)):
        torch.manual_seed(4)
        net = cls(dm.dataset.schema, MeLUConfig(embed_dim=8, hidden=[16, 16])).double()
        learners = [build_learner("maml", copy.deepcopy(net), ctx, MAMLConfig(inner_lr=0.05, inner_steps=steps,
                                                                              scope=scope, executor=e))
                    for e in ("learn2learn", "vmap")]
        ex = learners[1].executor
        ex.split_above = float("inf")
        assert ex.factored is not None and ex.factored.parts is parts
        assert ex.prefix_parts is (parts and scope == "head")
        _assert_same_training_step(batch, *learners)
        phis, _ = ex.adapted_parameters(batch, steps)
        ref, _ = learners[0].executor.adapted_parameters(batch, steps)
        for a, b in zip(phis, ref):
            _close(a, b)


def test_body_parts_are_not_used_where_the_first_layer_is_not_factored(setup):
    """Meta-SGD (learned rates: no factored layer) and zero inner steps under ``head`` take the body whole."""
    batch, ctx, model = setup
    metasgd = build_learner("metasgd", copy.deepcopy(model), ctx, MetaSGDConfig(scope="head"))
    assert metasgd.executor.factored is None and not metasgd.executor.prefix_parts
    batch, (ref, fast) = _pair(setup, "maml", MAMLConfig, {"scope": "head", "inner_steps": 0})
    assert fast.executor.prefix_parts
    _assert_same_training_step(batch, ref, fast)


def test_parts_products_equal_the_concatenated_ones():
    from metarec.learners.executors.factored import Blocks, Parts, gram, minus, times_weight, weight_term

    g = torch.Generator().manual_seed(0)
    x = Parts(torch.randn(3, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64))
    y = Parts(torch.randn(3, generator=g, dtype=torch.float64), torch.randn(2, 4, generator=g, dtype=torch.float64))
    w = torch.randn(6, 7, generator=g, dtype=torch.float64)
    a = torch.randn(5, 6, generator=g, dtype=torch.float64)
    whole_x, whole_y = x.cat(), y.cat()
    assert whole_x.shape == (5, 7)
    _close(times_weight(x, w), whole_x @ w.T)
    _close(gram(x, y), whole_x @ whole_y.T)
    term = weight_term(a, x)  # with parts: the weight's user and item column blocks, never concatenated
    assert isinstance(term, Blocks) and term.user.shape == (6, 3) and term.items.shape == (6, 4)
    _close(term.cat(), a.T @ whole_x)
    b = torch.randn(2, 6, generator=g, dtype=torch.float64)
    dense = minus(w, [term, weight_term(b, y)])  # a per-task copy of W after two folded terms
    assert isinstance(dense, Blocks)
    _close(dense.cat(), w - a.T @ whole_x - b.T @ whole_y)
    _close(times_weight(x, dense), whole_x @ (w - a.T @ whole_x - b.T @ whole_y).T)
    _close(minus(dense, [weight_term(a, x)]).cat(), w - 2 * a.T @ whole_x - b.T @ whole_y)
    _close(minus(w, [a.T @ whole_x]), w - a.T @ whole_x)  # plain input: plain matrices
    assert minus(w, []) is w
