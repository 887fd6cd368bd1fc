"""MAML's inner step and meta-gradients against closed forms; baselines against direct computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from metarec.data.episodes import EpisodeBatch, EpisodeCollator, FeatureTables
from metarec.data.schema import CategoricalField, FeatureTable, RecDataset
from metarec.data.splits import Task
from metarec.learners import LearnerContext, build_learner
from metarec.learners.baselines import GlobalConfig, ItemMeanConfig
from metarec.learners.maml import MAMLConfig
from metarec.models import MeLU, MeLUConfig

N_USERS, N_ITEMS = 3, 8


def tiny_dataset() -> RecDataset:
    rng = np.random.default_rng(0)
    rows = [(u, i, float(rng.integers(1, 6)), 0) for u in range(N_USERS) for i in range(N_ITEMS)]
    users = FeatureTable([CategoricalField("g", 3)], np.array([[1], [2], [1]]))
    items = FeatureTable([CategoricalField("item_id", N_ITEMS + 1)], np.arange(1, N_ITEMS + 1)[:, None])
    return RecDataset(
        name="tiny",
        ratings=pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"]),
        users=users,
        items=items,
        user_ids=np.arange(N_USERS),
        item_ids=np.arange(N_ITEMS),
        item_year=np.full(N_ITEMS, np.nan),
    )


def ctx(ds: RecDataset) -> LearnerContext:
    r = ds.ratings
    return LearnerContext(
        rating_range=(1.0, 5.0),
        train_rating_mean=float(r.rating.mean()),
        val_scenarios=["warm"],
        test_scenarios=["user_cold"],
        train_items=(r.item.to_numpy(), r.rating.to_numpy()),
        n_items=N_ITEMS,
    )


def tiny_batch(ds: RecDataset) -> EpisodeBatch:
    """Two tasks with different support lengths (3 and 5) and query lengths (2 and 3)."""
    r = ds.ratings.set_index(["user", "item"]).rating

    def task(u, s, q):
        return Task(u, np.array(s), np.array([r[u, i] for i in s], np.float32),
                    np.array(q), np.array([r[u, i] for i in q], np.float32))

    batch = EpisodeCollator(FeatureTables(ds))([task(0, [0, 1, 2], [3, 4]), task(2, [1, 3, 5, 6, 7], [0, 2, 4])])
    batch.ratings = batch.ratings.double()
    batch.item.multihot = batch.item.multihot.double()
    batch.user.multihot = batch.user.multihot.double()
    return batch


def linear_head_model(ds):
    torch.manual_seed(0)
    model = MeLU(ds.schema, MeLUConfig(embed_dim=2, hidden=[])).double()  # head = one Linear(4, 1)
    return model


def closed_form(model, batch, alpha, first_order):
    """Query loss and meta-gradient of the head's (w, b) for one inner SGD step, by hand.

    With X = [h, 1] (augmented) and theta = [w, b]: L_s = mean((X_s theta - y_s)^2),
    g = 2/n_s X_s^T (X_s theta - y_s), theta' = theta - alpha g, H_s = 2/n_s X_s^T X_s,
    dL_q(theta')/dtheta = (I - alpha H_s) grad_q(theta')   (first order: grad_q(theta') only).
    """
    lin = model.head[0]
    theta = torch.cat([lin.weight.detach()[0], lin.bias.detach()])
    with torch.no_grad():
        h = model.body(batch.user, batch.item)
    losses, grads = [], []
    s = batch.n_support
    for t in range(batch.n_tasks):
        sm, qm = batch.support_mask[t, :s], batch.query_mask[t, s:]
        xs = torch.cat([h[t, :s][sm], torch.ones(int(sm.sum()), 1, dtype=h.dtype)], 1)
        xq = torch.cat([h[t, s:][qm], torch.ones(int(qm.sum()), 1, dtype=h.dtype)], 1)
        ys, yq = batch.ratings[t, :s][sm], batch.ratings[t, s:][qm]
        g = 2.0 / len(ys) * xs.T @ (xs @ theta - ys)
        adapted = theta - alpha * g
        resid = xq @ adapted - yq
        losses.append((resid**2).mean())
        gq = 2.0 / len(yq) * xq.T @ resid
        if not first_order:
            gq = (torch.eye(len(theta), dtype=h.dtype) - alpha * 2.0 / len(ys) * xs.T @ xs) @ gq
        grads.append(gq)
    return torch.stack(losses).mean(), torch.stack(grads).mean(0)


@pytest.mark.parametrize("first_order", [False, True])
def test_maml_one_inner_step_matches_closed_form(first_order):
    ds = tiny_dataset()
    batch = tiny_batch(ds)
    model = linear_head_model(ds)
    alpha = 0.1
    learner = build_learner("maml", model, ctx(ds), MAMLConfig(inner_lr=alpha, inner_steps=1, first_order=first_order, scope="head"))
    loss, preds = learner.meta_step(batch, train=True)
    loss.backward()
    lin = model.head[0]
    got_grad = torch.cat([lin.weight.grad[0], lin.bias.grad])
    want_loss, want_grad = closed_form(model, batch, alpha, first_order)
    torch.testing.assert_close(loss, want_loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-9, atol=1e-12)
    assert preds.shape == (2, batch.ratings.shape[1] - batch.n_support)


def test_first_and_second_order_meta_gradients_differ_on_a_curved_loss():
    ds = tiny_dataset()
    batch = tiny_batch(ds)
    grads = {}
    for fo in (False, True):
        model = linear_head_model(ds)
        learner = build_learner("maml", model, ctx(ds), MAMLConfig(inner_lr=0.1, first_order=fo, scope="head"))
        learner.meta_step(batch, train=True)[0].backward()
        grads[fo] = torch.cat([p.grad.flatten() for p in model.head.parameters()])
    # The squared loss has Hessian 2/n X^T X != 0, so the second-order term must show.
    assert (grads[False] - grads[True]).norm() > 1e-3 * grads[True].norm()


def test_zero_inner_steps_is_the_unadapted_model():
    ds = tiny_dataset()
    batch = tiny_batch(ds)
    model = linear_head_model(ds)
    learner = build_learner("maml", model, ctx(ds), MAMLConfig(inner_steps=0, scope="head"))
    _, preds = learner.meta_step(batch, train=False)
    direct = model(batch.user, batch.item)[:, batch.n_support :]
    torch.testing.assert_close(preds, direct.detach())


def test_all_scope_adapts_embeddings_and_head_only_scope_does_not():
    ds = tiny_dataset()
    batch = tiny_batch(ds)
    preds = {}
    for scope in ("head", "all"):
        model = linear_head_model(ds)
        learner = build_learner("maml", model, ctx(ds), MAMLConfig(inner_lr=0.5, scope=scope))
        preds[scope] = learner.meta_step(batch, train=False)[1]
    assert not torch.allclose(preds["head"], preds["all"])
    assert model.adapted_parameter_names("head") == ["head.0.weight", "head.0.bias"]
    assert "user_encoder.categorical.0.weight" in model.adapted_parameter_names("all")


def test_evaluation_keeps_no_graph_and_touches_no_parameter():
    ds = tiny_dataset()
    batch = tiny_batch(ds)
    model = linear_head_model(ds)
    learner = build_learner("maml", model, ctx(ds), MAMLConfig(inner_lr=0.1, inner_steps=3, scope="head"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    learner.test_step(batch, 0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    result = learner.test_metrics["user_cold"].compute()
    assert np.isfinite(float(result["mae"]))


def test_item_mean_predicts_training_item_means_and_global_mean_for_unseen():
    ds = tiny_dataset()
    batch = tiny_batch(ds)
    c = ctx(ds)
    r = ds.ratings[ds.ratings.item != 4]  # item 4 is never seen in "training"
    c.train_items = (r.item.to_numpy(), r.rating.to_numpy())
    learner = build_learner("item_mean", linear_head_model(ds), c, ItemMeanConfig())
    _, preds = learner.meta_step(batch, train=False)
    means = r.groupby("item").rating.mean()
    q_items = batch.item_ids[:, batch.n_support :]
    for t in range(2):
        for j in range(int(batch.query_mask[t].sum())):
            item = int(q_items[t, j])
            want = c.train_rating_mean if item == 4 else means[item]
            assert preds[t, j].item() == pytest.approx(want, rel=1e-6)


def test_global_trains_on_support_and_query_but_evaluates_on_query_only():
    ds = tiny_dataset()
    batch = tiny_batch(ds)
    model = linear_head_model(ds)
    learner = build_learner("global", model, ctx(ds), GlobalConfig())
    train_loss, _ = learner.meta_step(batch, train=True)
    pred = model(batch.user, batch.item).detach()
    all_mask = batch.support_mask | batch.query_mask
    assert train_loss.item() == pytest.approx(((pred - batch.ratings)[all_mask] ** 2).mean().item())
    eval_loss, q = learner.meta_step(batch, train=False)
    s = batch.n_support
    per_task = [((pred[t, s:] - batch.ratings[t, s:])[batch.query_mask[t, s:]] ** 2).mean() for t in range(2)]
    assert eval_loss.item() == pytest.approx(torch.stack(per_task).mean().item())
