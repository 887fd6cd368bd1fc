"""``learner=ridge``: the user vector is the closed-form posterior mode given the support."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_learners import ctx, tiny_batch, tiny_dataset

from metarec.errors import ConfigError
from metarec.learners import build_learner
from metarec.learners.ridge import RidgeConfig
from metarec.models import MeLU, MeLUConfig, TwoTower, TwoTowerConfig


def _learner(ds, context=None, **cfg):
    torch.manual_seed(0)
    model = TwoTower(ds.schema, TwoTowerConfig(embed_dim=4, dim=4, user_hidden=[8], item_hidden=[8])).double()
    learner = build_learner("ridge", model, context or ctx(ds), RidgeConfig(**cfg)).double()
    with torch.no_grad():  # distinct precisions per coordinate, so the diagonal is really used
        learner.log_precision.copy_(torch.tensor([-1.0, 0.0, 0.5, 1.0]))
    return learner


def test_needs_a_two_tower_model_and_a_positive_precision() -> None:
    ds = tiny_dataset()
    with pytest.raises(ConfigError, match="needs a two-tower model"):
        build_learner("ridge", MeLU(ds.schema, MeLUConfig(embed_dim=2, hidden=[])), ctx(ds), RidgeConfig())
    model = TwoTower(ds.schema, TwoTowerConfig(embed_dim=4, dim=4))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="prior_precision"):
            build_learner("ridge", model, ctx(ds), RidgeConfig(prior_precision=bad))


def test_ratings_user_vector_is_the_ridge_solution() -> None:
    """Squared error: the adapted vector is the exact minimiser of the support's squared error plus the
    prior penalty (zero gradient there), and equals the textbook ridge formula."""
    ds = tiny_dataset()
    learner = _learner(ds)
    batch = tiny_batch(ds)
    support = batch.support()
    u = learner.adapt(batch.user, support)
    lam = learner.log_precision.exp()
    for t in range(batch.n_tasks):
        keep = support.mask[t]
        x, off = learner._items(support.items.index(t))
        x, off, y = x[keep], off[keep], support.ratings[t][keep]
        u0 = learner.prior_vector(batch.user.index(t))
        want = u0 + torch.linalg.solve(x.T @ x + torch.diag(lam), x.T @ (y - off - x @ u0))
        torch.testing.assert_close(u[t], want)
        # zero gradient of the penalised objective at the solution
        v = u[t].detach().clone().requires_grad_(True)
        obj = 0.5 * ((x.detach() @ v + off.detach() - y) ** 2).sum() + 0.5 * ((v - u0.detach()) ** 2 * lam.detach()).sum()
        (g,) = torch.autograd.grad(obj, v)
        assert g.abs().max() < 1e-8
    # padding never counts: extra masked-out positions change nothing
    padded = dataclasses.replace(support, ratings=torch.where(support.mask, support.ratings, torch.full_like(support.ratings, 99.0)))
    torch.testing.assert_close(learner.adapt(batch.user, padded), u)
    # scores are the two-tower model's own outputs at the adapted vector
    ids, items = batch.query()
    m = learner.model
    side = m.item_side(items)
    want = m.head[-1](torch.cat([u.unsqueeze(-2) * side[..., :4], side[..., 4:]], dim=-1)).squeeze(-1)
    torch.testing.assert_close(learner.score(u, ids, items), want)


def test_binary_labels_take_one_newton_step() -> None:
    """0/1 labels: ``u = u0 + (X^T diag(p(1-p)) X + diag(lambda))^-1 X^T (y - p)``, ``p`` at the prior."""
    ds = tiny_dataset()
    context = dataclasses.replace(ctx(ds), rating_range=(0.0, 1.0), loss="bce")
    learner = _learner(ds, context)
    batch = tiny_batch(ds)
    batch.ratings = (batch.ratings >= 3).double()
    support = batch.support()
    u = learner.adapt(batch.user, support)
    lam = learner.log_precision.exp()
    for t in range(batch.n_tasks):
        keep = support.mask[t]
        x, off = learner._items(support.items.index(t))
        x, off, y = x[keep], off[keep], support.ratings[t][keep]
        u0 = learner.prior_vector(batch.user.index(t))
        p = torch.sigmoid(x @ u0 + off)
        hess = x.T @ (x * (p * (1 - p))[:, None]) + torch.diag(lam)
        torch.testing.assert_close(u[t], u0 + torch.linalg.solve(hess, x.T @ (y - p)))


def test_meta_training_reaches_the_precision_and_lowers_the_query_loss() -> None:
    """Gradients flow through the solve into both towers and the prior precision; a few Adam steps on
    one batch lower its query loss."""
    ds = tiny_dataset()
    learner = _learner(ds, lr=0.05)
    batch = tiny_batch(ds)
    opt = torch.optim.Adam(learner.parameters(), lr=0.05)
    first, _ = learner.training_loss(batch)
    first.backward()
    assert learner.log_precision.grad is not None and learner.log_precision.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.model.item_tower.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.model.user_tower.parameters())
    for _ in range(30):
        opt.zero_grad()
        loss, _ = learner.training_loss(batch)
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first.item()
