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

from metarec.data.episodes import EpisodeBatch, Support
from metarec.data.features import Features
from metarec.errors import ConfigError
from metarec.learners.base import LearnerContext, MetaLearner
from metarec.models.base import BaseRecommender
from metarec.models.item_cache import ItemSideCache


@dataclass
class RidgeConfig:
    prior_precision: float = 1.0  # initial lambda (per coordinate, relative to the noise variance)
    learn_precision: bool = True  # meta-learn lambda (else fixed at prior_precision)
    lr: float = 1e-3
    weight_decay: float = 0.0


class Ridge(MetaLearner):
    needs_model = "twotower"  # the base model this learner is written for (tests and tables read it)

    def __init__(self, model: BaseRecommender, ctx: LearnerContext, cfg: RidgeConfig) -> None:
        super().__init__(model, ctx, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if not (hasattr(model, "item_side") and hasattr(model, "user_tower")):
            raise ConfigError(f"learner ridge needs a two-tower model (model=twotower), not {type(model).__name__}")
        if not (math.isfinite(cfg.prior_precision) and cfg.prior_precision > 0):
            raise ConfigError(f"learner.prior_precision must be a finite number > 0, got {cfg.prior_precision}")
        self.cfg = cfg
        self.dim = model.head[0].dim
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
        hess = torch.einsum("tsd,ts,tse->tde", x, curv, x) + torch.diag_embed(self.log_precision.exp()).expand(
            x.shape[0], -1, -1)
        return u0 + torch.linalg.solve(hess, grad.unsqueeze(-1)).squeeze(-1)

    def score(self, state: torch.Tensor, item_ids: torch.Tensor, items: Features) -> torch.Tensor:
        x, offset = self._item_cache(self, items, self._items)  # user-independent: one pass per catalogue
        return (x * state.unsqueeze(-2)).sum(-1) + offset

    def training_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.adapt(batch.user, batch.support())
        out = self.score(u, *batch.query())
        _, y, m = batch.part("query")
        return self.loss_fn(out, y.to(out.dtype), m).mean(), out


__all__ = ["Ridge", "RidgeConfig"]
