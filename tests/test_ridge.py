"""``learner=ridge``: the user vector is the closed-form posterior mode given the support."""

from __future__ import annotations

import dataclasses

import numpy as np
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


def _train(learner, batch, opt, steps: int = 30) -> float:
    """The query loss after ``steps`` optimiser steps on one batch."""
    for _ in range(steps):
        opt.zero_grad()
        loss, _ = learner.training_loss(batch)
        loss.backward()
        opt.step()
    return loss.item()


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
    assert _train(learner, batch, opt) < 0.5 * first.item()


# ---------------------------------------------------------------- likelihood: interval (ratings on a grid)

GRID = (1.0, 2.0, 3.0, 4.0, 5.0)


def _interval(ds, steps: int = 3, **cfg):
    context = dataclasses.replace(ctx(ds), rating_grid=GRID)
    return _learner(ds, context, likelihood="interval", newton_steps=steps, **cfg)


def test_probit_cell_terms_are_the_derivatives_of_the_cell_log_probability() -> None:
    """``r / sigma`` and ``c / sigma^2`` are the first and second derivatives of ``-log(Phi(b) - Phi(a))`` in
    the score ``s`` (autograd, float64), in both tails and for open cells; ``Z`` against scipy."""
    from scipy.stats import norm

    from metarec.learners.ridge import OPEN, probit_cell_terms

    sigma = 0.7
    for low, high, s0 in [(2.5, 3.5, 3.1), (2.5, 3.5, -9.0), (2.5, 3.5, 14.0), (-float("inf"), 1.5, 6.0),
                          (4.5, float("inf"), -3.0), (4.5, float("inf"), 4.9), (-float("inf"), 1.5, 1.0)]:
        s = torch.tensor(s0, dtype=torch.float64, requires_grad=True)
        a = (low - s) / sigma if low > -float("inf") else torch.tensor(-OPEN, dtype=torch.float64)
        b = (high - s) / sigma if high < float("inf") else torch.tensor(OPEN, dtype=torch.float64)
        # log Z by the tail each cell lies in (autograd differentiates it), checked against scipy
        if float(a.detach()) > 0:
            log_z = torch.special.log_ndtr(-a) + torch.log1p(-torch.exp(torch.special.log_ndtr(-b) - torch.special.log_ndtr(-a)))
            want = norm.logsf(float(a.detach())) + np.log1p(-np.exp(norm.logsf(float(b.detach())) - norm.logsf(float(a.detach()))))
        else:
            log_z = torch.special.log_ndtr(b) + torch.log1p(-torch.exp(torch.special.log_ndtr(a) - torch.special.log_ndtr(b)))
            want = norm.logcdf(float(b.detach())) + np.log1p(-np.exp(norm.logcdf(float(a.detach())) - norm.logcdf(float(b.detach()))))
        assert abs(float(log_z) - want) < 1e-8 * (1 + abs(want))
        (d1,) = torch.autograd.grad(-log_z, s, create_graph=True)
        (d2,) = torch.autograd.grad(d1, s)
        r, c = probit_cell_terms(a.detach(), b.detach())
        torch.testing.assert_close(r / sigma, d1.detach(), rtol=1e-7, atol=1e-10)
        torch.testing.assert_close(c / sigma**2, d2, rtol=1e-6, atol=1e-9)
        assert float(c) >= 0  # log-concave: the Newton steps' matrix stays positive definite


def test_cells_are_the_grid_values_cells() -> None:
    learner = _interval(tiny_dataset())
    low, high = learner.cells(torch.tensor([1.0, 3.0, 5.0, 2.0], dtype=torch.float64))
    inf = float("inf")
    assert low.tolist() == [-inf, 2.5, 4.5, 1.5] and high.tolist() == [1.5, 3.5, inf, 2.5]
    half = dataclasses.replace(ctx(tiny_dataset()), rating_grid=(0.5, 1.0, 1.5, 2.0))
    low, high = _learner(tiny_dataset(), half, likelihood="interval").cells(torch.tensor([0.5, 1.5, 2.0]))
    assert low.tolist() == [-inf, 1.25, 1.75] and high.tolist() == [0.75, 1.75, inf]


def test_interval_user_vector_is_the_penalised_likelihood_mode() -> None:
    """With enough Newton steps the adapted vector zeroes the gradient of ``sigma^2 * sum -log P(cell | s) +
    1/2 (u - u0)^T diag(lambda) (u - u0)`` (the grid cells of the ratings, open at 1 and 5), computed by
    autograd from scipy-free formulas; padding never counts; 3 steps are already close."""
    ds = tiny_dataset()
    learner = _interval(ds, steps=12, noise=0.4)
    batch = tiny_batch(ds)
    support = batch.support()
    u = learner.adapt(batch.user, support)
    three = _interval(ds, steps=3, noise=0.4).adapt(batch.user, support)
    gaussian = _learner(ds).adapt(batch.user, support)
    lam, sigma = learner.log_precision.exp().detach(), 0.4
    for t in range(batch.n_tasks):
        keep = support.mask[t]
        x, off = learner._items(support.items.index(t))
        x, off, y = x[keep].detach(), off[keep].detach(), support.ratings[t][keep]
        u0 = learner.prior_vector(batch.user.index(t)).detach()
        v = u[t].detach().clone().requires_grad_(True)
        s = x @ v + off
        # log P(cell) in log space (torch's ndtr is 2e-6 off at -6.7 sigma; log_ndtr is not), each difference
        # taken in its lower tail; the open cells are one tail
        lcdf = torch.special.log_ndtr
        a, b = (y - 0.5 - s) / sigma, (y + 0.5 - s) / sigma
        mid = torch.where(a > 0, lcdf(-a) + torch.log1p(-torch.exp(lcdf(-b) - lcdf(-a))),
                          lcdf(b) + torch.log1p(-torch.exp(lcdf(a) - lcdf(b))))
        log_cell = torch.where(y <= 1, lcdf(b), torch.where(y >= 5, lcdf(-a), mid))
        obj = -sigma**2 * log_cell.sum() + 0.5 * ((v - u0) ** 2 * lam).sum()
        (g,) = torch.autograd.grad(obj, v)
        assert g.abs().max() < 1e-8
        assert (three[t] - u[t]).abs().max() < 1e-3 * (1 + u[t].abs().max())
    assert not torch.allclose(u, gaussian)  # the cells are not the Gaussian's points
    padded = dataclasses.replace(support, ratings=torch.where(support.mask, support.ratings, torch.full_like(support.ratings, 99.0)))
    torch.testing.assert_close(learner.adapt(batch.user, padded), u)


def test_interval_meta_training_learns_the_noise_and_lowers_the_query_loss() -> None:
    ds = tiny_dataset()
    learner = _interval(ds, lr=0.05)
    batch = tiny_batch(ds)
    opt = torch.optim.Adam(learner.parameters(), lr=0.05)
    first, _ = learner.training_loss(batch)
    first.backward()
    assert learner.log_noise.grad is not None and torch.isfinite(learner.log_noise.grad) and learner.log_noise.grad != 0
    assert all(torch.isfinite(p.grad).all() for p in learner.parameters() if p.grad is not None)
    assert _train(learner, batch, opt) < 0.5 * first.item()
    assert "log_noise" not in dict(_learner(ds).named_parameters())  # the Gaussian fold-in's checkpoints: unchanged


def test_cell_query_loss_is_the_mean_negative_log_cell_probability_of_the_query_ratings() -> None:
    """``query_loss=cell``: per task, the mean over its query ratings of ``-log P(cell | prediction, sigma)``
    (open cells at the grid's ends; padding never counts), then the mean over tasks — against scipy; it
    trains the noise, and lowers itself in a few steps."""
    from scipy.stats import norm

    ds = tiny_dataset()
    learner = _interval(ds, noise=0.6, query_loss="cell", lr=0.05)
    batch = tiny_batch(ds)
    loss, out = learner.training_loss(batch)
    _, y, m = batch.part("query")
    sigma = learner.log_noise.exp().item()  # 0.6 up to the float32 parameter's rounding
    want = []
    for t in range(batch.n_tasks):
        terms = []
        for s, r in zip(out[t][m[t]].tolist(), y[t][m[t]].tolist()):
            hi = 1.0 if r >= 5 else norm.cdf((r + 0.5 - s) / sigma)
            lo = 0.0 if r <= 1 else norm.cdf((r - 0.5 - s) / sigma)
            terms.append(-np.log(hi - lo))
        want.append(np.mean(terms))
    assert abs(loss.item() - np.mean(want)) < 1e-9
    padded = dataclasses.replace(batch, ratings=torch.where(batch.support_mask | batch.query_mask, batch.ratings,
                                                            torch.full_like(batch.ratings, 99.0)))
    torch.testing.assert_close(learner.training_loss(padded)[0], loss)
    # the same predictions as the squared-error learner: only the loss differs
    torch.testing.assert_close(out, _interval(ds, noise=0.6).training_loss(batch)[1])
    loss.backward()
    assert learner.log_noise.grad is not None and learner.log_noise.grad != 0
    opt = torch.optim.Adam(learner.parameters(), lr=0.05)
    assert _train(learner, batch, opt) < loss.item() - 0.2


@pytest.mark.parametrize("cfg, context, match", [
    ({"query_loss": "mae"}, {"rating_grid": GRID}, "query_loss must be one of mse, cell"),
    ({"query_loss": "cell"}, {"rating_grid": GRID}, "set learner.likelihood=interval"),
    ({"likelihood": "probit"}, {"rating_grid": GRID}, "likelihood must be one of gaussian, interval"),
    ({"likelihood": "interval"}, {}, "needs ratings on a grid: set data.rating_grid=true"),
    ({"likelihood": "interval"}, {"rating_grid": GRID, "loss": "bce", "rating_range": (0.0, 1.0)}, "is for ratings"),
    ({"likelihood": "interval", "noise": 0.0}, {"rating_grid": GRID}, "learner.noise must be a finite number > 0"),
    ({"likelihood": "interval", "noise": float("nan")}, {"rating_grid": GRID}, "learner.noise"),
    ({"likelihood": "interval", "newton_steps": 0}, {"rating_grid": GRID}, "newton_steps must be an integer >= 1"),
    ({"likelihood": "interval", "newton_steps": True}, {"rating_grid": GRID}, "newton_steps"),
])
def test_bad_interval_settings_are_refused_in_one_line(cfg, context, match) -> None:
    ds = tiny_dataset()
    model = TwoTower(ds.schema, TwoTowerConfig(embed_dim=4, dim=4))
    with pytest.raises(ConfigError, match=match):
        build_learner("ridge", model, dataclasses.replace(ctx(ds), **context), RidgeConfig(**cfg))
