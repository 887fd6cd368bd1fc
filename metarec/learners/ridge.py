"""``ridge``: closed-form Bayesian adaptation of the two-tower user vector, meta-trained through the solve.

A new user's vector is the posterior mode of a Gaussian prior given the support, computed in closed form
instead of by inner gradient steps (ALPaCA, Harrison et al., WAFR 2018; R2-D2, Bertinetto et al., ICLR
2019 "Meta-learning with differentiable closed-form solvers"). With the two-tower model's output
``s_j = <u, w * v_j> + w_b b_j + c`` (``w``, ``w_b``, ``c``: its output layer) and ``x_j = w * v_j``:

- prior: ``u ~ N(u_0, diag(1/lambda))``, ``u_0 = W h_u + c_u`` the user tower's vector from the user's
  features, ``lambda > 0`` a learned per-coordinate prior precision (in units of the noise variance);
- adaptation: one Newton step on ``loss(support) + 1/2 (u - u_0)^T diag(lambda) (u - u_0)`` from ``u_0``:

      u = u_0 + (X^T D X + diag(lambda))^-1 X^T (y - p)

  with ``p`` the support outputs at ``u_0`` (predicted ratings; probabilities under ``bce``/``softmax``)
  and ``D`` the loss curvature (1 for squared error: the step is exact, ``u`` is the ridge / posterior
  mean; ``p (1 - p)`` for logistic labels: one IRLS step).

With ``likelihood: interval`` (ratings on a grid, ``data.rating_grid=true``) a support rating is what it
is on whole stars: the latent rating ``s + sigma * N(0, 1)`` fell in the rating's cell of the grid (between
the midpoints to its neighbours; the lowest and highest cells open), a censored-probit likelihood (ordinal
regression with fixed cut points). The Gaussian solution above is then the start of ``newton_steps`` Newton
steps on ``sigma^2 * (-log likelihood) + 1/2 (u - u_0)^T diag(lambda) (u - u_0)`` (log-concave: each step
solves ``(X^T diag(c) X + diag(lambda)) delta = gradient`` with the probit curvatures ``c``); ``sigma`` is
learned. A clipped or rounded rating then says "at least 5", "between 3.5 and 4.5", not "exactly 5" (on the
synthetic data with the true item vectors this fold-in is at 0.99-1.00x the posterior oracle, the Gaussian
one at 1.01-1.07x; with learned item vectors it beats the Gaussian ``ridge`` there only when meta-trained on
the same likelihood, ``query_loss: cell``: ``benchmarks/oracle_scaling.py``).

With ``query_loss: cell`` (and the interval likelihood) meta-training scores the query ratings by the same
likelihood, ``-log P(query rating's cell | prediction, sigma)``, instead of their squared error: the fold-in
and the loss then agree, and ``sigma`` is trained by both.

Meta-training backpropagates the query loss through the solve into the item tower, the user tower, the
output layer and ``lambda``, so the item vectors are learned for exactly this fold-in. Adapting a new
user is one item-tower pass over the support and one ``dim x dim`` solve; scoring the catalogue is one
matrix product. On data drawn from a linear-Gaussian preference model this has the form of the Bayes
posterior mean (exact given the true item vectors and prior: ``benchmarks/oracle_gap.py`` measures how
close the learned ones get). Needs ``model=twotower``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.special import log_ndtr

from metarec.data.episodes import EpisodeBatch, Support
from metarec.data.features import Features
from metarec.errors import ConfigError
from metarec.learners.base import LearnerContext, MetaLearner, _masked_mean
from metarec.models.base import BaseRecommender
from metarec.models.item_cache import ItemSideCache


@dataclass
class RidgeConfig:
    prior_precision: float = 1.0  # initial lambda (per coordinate, relative to the noise variance)
    learn_precision: bool = True  # meta-learn lambda (else fixed at prior_precision)
    lr: float = 1e-3
    weight_decay: float = 0.0
    likelihood: str = "gaussian"  # gaussian | interval (needs data.rating_grid=true: a rating is its grid cell)
    noise: float = 0.5  # initial sigma of the interval likelihood (rating units; learned)
    newton_steps: int = 3  # interval likelihood: Newton steps from the Gaussian solution
    # the meta-training query loss: mse (the squared error of the query predictions, the data's loss) | cell
    # (-log P(the query rating's grid cell) under N(prediction, sigma^2): the interval likelihood's own loss,
    # which its fold-in shares; needs likelihood=interval)
    query_loss: str = "mse"


LIKELIHOODS = ("gaussian", "interval")
QUERY_LOSSES = ("mse", "cell")
OPEN = 1e3  # an open cell's far edge, in units of sigma: Phi and phi are 0 / 1 there to double precision


class Ridge(MetaLearner):
    needs_model = "twotower"  # the base model this learner is written for (tests and tables read it)

    def __init__(self, model: BaseRecommender, ctx: LearnerContext, cfg: RidgeConfig) -> None:
        super().__init__(model, ctx, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if not (hasattr(model, "item_side") and hasattr(model, "user_tower")):
            raise ConfigError(f"learner ridge needs a two-tower model (model=twotower), not {type(model).__name__}")
        if not (math.isfinite(cfg.prior_precision) and cfg.prior_precision > 0):
            raise ConfigError(f"learner.prior_precision must be a finite number > 0, got {cfg.prior_precision}")
        if cfg.likelihood not in LIKELIHOODS:
            raise ConfigError(f"learner.likelihood must be one of {', '.join(LIKELIHOODS)}, got {cfg.likelihood!r}")
        if cfg.likelihood == "interval":
            if ctx.binary_labels:
                raise ConfigError("learner.likelihood=interval is for ratings; with 0/1 labels use the default gaussian")
            if ctx.rating_grid is None or len(ctx.rating_grid) < 2:
                raise ConfigError("learner.likelihood=interval needs ratings on a grid: set data.rating_grid=true")
            if not (math.isfinite(cfg.noise) and cfg.noise > 0):
                raise ConfigError(f"learner.noise must be a finite number > 0, got {cfg.noise}")
            if isinstance(cfg.newton_steps, bool) or not isinstance(cfg.newton_steps, int) or cfg.newton_steps < 1:
                raise ConfigError(f"learner.newton_steps must be an integer >= 1, got {cfg.newton_steps!r}")
        if cfg.query_loss not in QUERY_LOSSES:
            raise ConfigError(f"learner.query_loss must be one of {', '.join(QUERY_LOSSES)}, got {cfg.query_loss!r}")
        if cfg.query_loss == "cell" and cfg.likelihood != "interval":
            raise ConfigError("learner.query_loss=cell is the interval likelihood's loss: set learner.likelihood=interval")
        self.cfg = cfg
        self.dim = model.head[0].dim
        interval = cfg.likelihood == "interval"  # (the Gaussian fold-in's checkpoints hold neither)
        self.register_parameter("log_noise", nn.Parameter(torch.tensor(math.log(cfg.noise))) if interval else None)
        grid = torch.as_tensor(sorted(ctx.rating_grid), dtype=torch.float64) if interval else None
        self.register_buffer("grid", grid, persistent=False)  # the grid values: cells between their midpoints
        log_lam = torch.full((self.dim,), math.log(cfg.prior_precision))
        self.log_precision = nn.Parameter(log_lam, requires_grad=cfg.learn_precision)
        self._item_cache = ItemSideCache()  # serving: the catalogue's (x, offset), kept while nothing changes

    def _items(self, items: Features) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, offset)``: each item's effective vector ``w * v`` ``[..., dim]`` and its user-independent
        output ``w_b b + c`` ``[...]``."""
        m = self.model
        side = m.item_side(items)
        out = m.head[-1]
        w = out.weight[0]
        x = side[..., : self.dim] * w[: self.dim]
        offset = side[..., self.dim] * w[self.dim] + out.bias[0]
        return x, offset

    def prior_vector(self, user: Features) -> torch.Tensor:
        m = self.model
        return m.head[0].proj(m.user_tower(m.user_encoder(user)))

    def adapt(self, user: Features, support: Support) -> torch.Tensor:
        """Each task's user vector ``[T, dim]``: one Newton step from the prior mean on its support."""
        u0 = self.prior_vector(user)  # [T, d]
        x, offset = self._items(support.items)  # [T, S, d], [T, S]
        k = support.mask.to(x.dtype)
        s0 = (x * u0.unsqueeze(-2)).sum(-1) + offset
        y = support.ratings.to(x.dtype)
        if self.ctx.binary_labels:
            p = torch.sigmoid(s0)
            curv = p * (1 - p) * k
        else:
            p, curv = s0, k
        grad = ((y - p) * k).unsqueeze(-1).mul(x).sum(-2)  # X^T (y - p)   [T, d]
        lam = self.log_precision.exp()
        prior = torch.diag_embed(lam).expand(x.shape[0], -1, -1)
        hess = torch.einsum("tsd,ts,tse->tde", x, curv, x) + prior
        u = u0 + torch.linalg.solve(hess, grad.unsqueeze(-1)).squeeze(-1)
        if self.cfg.likelihood == "interval":
            u = self._interval_steps(u, u0, x, offset, y, support.mask, lam, prior)
        return u

    def cells(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each rating's grid cell ``(low, high)``: the midpoints to its neighbouring grid values (the nearest
        grid value's cell; ``-inf`` / ``inf`` beyond the lowest / highest value)."""
        g = self.grid.to(y.dtype)
        cuts = (g[1:] + g[:-1]) / 2
        j = torch.bucketize(y.contiguous(), cuts)  # the cell holding y
        inf = torch.tensor(float("inf"), dtype=y.dtype, device=y.device)
        edges = torch.cat([-inf[None], cuts, inf[None]])
        return edges[j], edges[j + 1]

    def standardised_cells(self, y: torch.Tensor, mask: torch.Tensor):
        """For ratings ``y`` (``mask``: which count; padding gets the lowest cell), a function of the scores
        ``s`` and ``sigma`` giving each rating's cell edges in units of sigma from ``s``, ``(a, b)``; an open
        edge is OPEN sigmas away (finite in both branches of ``where``, so no inf * 0 in the backward pass)."""
        low, high = self.cells(torch.where(mask, y, self.grid[0].to(y.dtype)))
        open_low, open_high = torch.isinf(low), torch.isinf(high)
        low, high = low.masked_fill(open_low, 0.0), high.masked_fill(open_high, 0.0)

        def at(s: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            a = torch.where(open_low, torch.full_like(s, -OPEN), (low - s) / sigma)
            b = torch.where(open_high, torch.full_like(s, OPEN), (high - s) / sigma)
            return a, b

        return at

    def _interval_steps(self, u, u0, x, offset, y, mask, lam, prior) -> torch.Tensor:
        """Newton steps on ``sigma^2 * sum -log P(rating's cell | s) + 1/2 (u - u0)^T diag(lam) (u - u0)``."""
        sigma = self.log_noise.exp().to(x.dtype)
        cells = self.standardised_cells(y, mask)
        k = mask.to(x.dtype)
        for _ in range(self.cfg.newton_steps):
            s = (x * u.unsqueeze(-2)).sum(-1) + offset
            r, c = probit_cell_terms(*cells(s, sigma))
            g = x.mul((sigma * r * k).unsqueeze(-1)).sum(-2) + lam * (u - u0)  # the objective's gradient
            h = torch.einsum("tsd,ts,tse->tde", x, c * k, x) + prior
            u = u - torch.linalg.solve(h, g.unsqueeze(-1)).squeeze(-1)
        return u

    def score(self, state: torch.Tensor, item_ids: torch.Tensor, items: Features) -> torch.Tensor:
        x, offset = self._item_cache(self, items, self._items)  # user-independent: one pass per catalogue
        return (x * state.unsqueeze(-2)).sum(-1) + offset

    def training_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.adapt(batch.user, batch.support())
        out = self.score(u, *batch.query())
        _, y, m = batch.part("query")
        if self.cfg.query_loss == "cell":  # each task's mean -log P(cell) over its query ratings
            nll = -cell_log_prob(*self.standardised_cells(y.to(out.dtype), m)(out, self.log_noise.exp().to(out.dtype)))
            return _masked_mean(nll, m).mean(), out
        return self.loss_fn(out, y.to(out.dtype), m).mean(), out


def cell_log_prob(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``log Z = log(Phi(b) - Phi(a))`` for standardised cell edges ``a < b``, in log space: stable in both
    tails (each difference taken in the tail the cell lies in)."""
    upper = a > 0  # both edges in the upper tail: Z = Phi(-a) - Phi(-b)
    big = torch.where(upper, log_ndtr(-a), log_ndtr(b))
    small = torch.where(upper, log_ndtr(-b), log_ndtr(a))
    return big + torch.log1p(-torch.exp(small - big))


def probit_cell_terms(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``Z = Phi(b) - Phi(a)`` (``a < b``, standardised cell edges): ``r = (phi(b) - phi(a)) / Z`` and
    ``c = (b phi(b) - a phi(a)) / Z + r^2``, so that ``d(-log Z)/ds = r / sigma`` and ``d2(-log Z)/ds2 =
    c / sigma^2`` for ``a = (low - s) / sigma``, ``b = (high - s) / sigma``."""
    log_z = cell_log_prob(a, b)
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    pa = torch.exp(-0.5 * a * a - half_log_2pi - log_z)  # phi(a) / Z
    pb = torch.exp(-0.5 * b * b - half_log_2pi - log_z)
    r = pb - pa
    return r, b * pb - a * pa + r * r


__all__ = ["Ridge", "RidgeConfig", "cell_log_prob", "probit_cell_terms"]
