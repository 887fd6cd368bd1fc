"""Amortised (in-context) adaptation, neural-process style as in TaNP (Lin et al., WWW 2021): no inner
gradient steps; a set encoder reads the user's support and the prediction is conditioned on it.

For each support rating the base model's ``body`` (user and item representation), the centred, scaled
rating and its residual against the unconditioned model's prediction go through an MLP. (Without the
residual the encoder learns to ignore the support on MovieLens-100K: the base model recognises training
users by their features, so the support adds little during meta-training, and new users then get
nothing from it — user-cold MAE 0.897 against 0.857 with it, one seed.) The task's context is

- ``encoder=mean``: the masked mean of these vectors (a deep set, as in conditional neural processes);
- ``encoder=attention``: that mean plus, for every target item, multi-head cross-attention from the
  target's representation to the support's (as in attentive neural processes), with a learned "no
  rating" entry so that an empty support is well defined;
- with ``latent_dim > 0`` also a Gaussian latent ``z`` (TaNP's stochastic path): meta-training samples it
  from ``q(z | support + query)`` and adds ``kl_weight * KL(q(z | support + query) || q(z | support))``;
  evaluation uses the mean of ``q(z | support)``.

The context modulates every linear layer of the base model's head (FiLM: ``x * (1 + gamma) + beta``,
TaNP's decoder modulation). The modulation starts at zero, so before training the learner predicts what
the base model predicts. Everything — base model, encoder, modulation — is trained end to end on the
query loss of each meta-batch (``targets=all``: the support ratings are targets too, as neural
processes are usually trained), with the same episodes, loss (``mse``/``bce``) and metrics as every
other learner. Adapting to a new user costs one forward pass over the support.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metarec.data.episodes import EpisodeBatch, Support
from metarec.errors import ConfigError
from metarec.learners.base import LearnerContext, MetaLearner
from metarec.data.features import Features
from metarec.models.base import BaseRecommender
from metarec.models.item_cache import ItemSideCache

ENCODERS = ("mean", "attention")
SERVE_CHUNK = 2048  # items per pass when serving (Amortised.serve): temporaries stay in cache (8,192: 5-10% slower at 100k items)


@dataclass
class AmortisedConfig:
    encoder: str = "attention"  # mean | attention
    hidden: int = 64  # width of the support encoder and of the context
    heads: int = 4  # attention heads (encoder=attention)
    latent_dim: int = 0  # > 0: a Gaussian latent path of this size (TaNP)
    kl_weight: float = 0.1  # weight of the latent path's KL term against the mean query loss
    targets: str = "query"  # meta-training targets: query | all (support too, as neural processes train)
    lr: float = 1e-3
    weight_decay: float = 0.0


@dataclass
class Context:
    """A task's encoded support: ``pooled`` ``[T, H]``; ``keys``/``values`` ``[T, S + 1, H]`` (attention;
    the extra entry is the learned "no rating" one) and ``key_mask`` ``[T, S + 1]``; the latent ``z``
    ``[T, Z]`` (latent path: the mean of ``q(z | support)``; a posterior sample in meta-training)."""

    pooled: torch.Tensor
    z: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    key_mask: torch.Tensor | None = None


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x [T, L, H]`` over the positions where ``mask [T, L]`` holds (0 where none does)."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(-2) / m.sum(-2).clamp_min(1.0)


class Amortised(MetaLearner):
    def __init__(self, model: BaseRecommender, ctx: LearnerContext, cfg: AmortisedConfig) -> None:
        super().__init__(model, ctx, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.encoder not in ENCODERS:
            raise ConfigError(f"learner.encoder must be one of {', '.join(ENCODERS)}, not {cfg.encoder!r}")
        if cfg.hidden < 1 or cfg.heads < 1 or cfg.hidden % cfg.heads:
            raise ConfigError(f"learner.hidden ({cfg.hidden}) must be a positive multiple of learner.heads ({cfg.heads})")
        if cfg.targets not in ("query", "all"):
            raise ConfigError(f"learner.targets must be query or all, not {cfg.targets!r}")
        if cfg.latent_dim < 0 or not (math.isfinite(cfg.kl_weight) and cfg.kl_weight >= 0):
            raise ConfigError("learner.latent_dim and learner.kl_weight must be >= 0")
        head = model.head
        if (not isinstance(head, nn.Sequential) or not isinstance(head[-1], nn.Linear)
                or not isinstance(getattr(head[0], "in_features", None), int)):
            raise ConfigError(f"learner amortised needs a model whose head is an nn.Sequential that reads the body "
                              f"with a layer that has in_features and ends in a linear layer "
                              f"({type(model).__name__} has {type(head).__name__})")
        self.cfg = cfg
        h = cfg.hidden
        width = head[0].in_features  # the body's width (the two-tower head starts with its UserVector, not a Linear)
        # support entry: [representation, rating, residual] -> vector
        self.entry = nn.Sequential(nn.Linear(width + 2, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h))
        cond = h
        if cfg.encoder == "attention":
            self.query_proj = nn.Linear(width, h)
            self.key_proj = nn.Linear(width, h)
            self.null_key = nn.Parameter(torch.zeros(h))
            self.null_value = nn.Parameter(torch.zeros(h))
            cond += h
        if cfg.latent_dim:
            self.latent = nn.Linear(h, 2 * cfg.latent_dim)
            cond += cfg.latent_dim
        self.condition = nn.Sequential(nn.Linear(cond, h), nn.ReLU())
        self.films = nn.ModuleList(nn.Linear(h, 2 * layer.out_features) for layer in head if isinstance(layer, nn.Linear))
        for film in self.films:  # no modulation at the start: the base model's predictions
            nn.init.zeros_(film.weight)
            nn.init.zeros_(film.bias)
        lo, hi = ctx.rating_range
        self.centre, self.scale = float(ctx.train_rating_mean), max((hi - lo) / 2.0, 1e-6)
        self._item_maps = ItemSideCache()  # serving: the catalogue's item parts of the body's linear maps

    # ----------------------------------------------------------------- pieces
    def entries(self, body: torch.Tensor, ratings: torch.Tensor) -> torch.Tensor:
        """Support entries ``[T, S, H]`` from representations ``[T, S, D]`` and ratings ``[T, S]``: the
        representation, the centred rating, and the rating's residual against the unconditioned model's
        prediction (how this user departs from what their features predict)."""
        r = ((ratings - self.centre) / self.scale).to(body.dtype).unsqueeze(-1)
        base = self.model.head(body).detach()  # what the unconditioned model predicts (an input, not a path)
        if self.ctx.binary_labels:
            base = torch.sigmoid(base)
        resid = (ratings.to(body.dtype).unsqueeze(-1) - base) / self.scale
        return self.entry(torch.cat([body, r, resid], dim=-1))

    def _gaussian(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, raw = self.latent(pooled).chunk(2, dim=-1)
        return mu, 0.1 + 0.9 * torch.sigmoid(raw)  # TaNP/ANP's bounded standard deviation

    def encode(self, body: torch.Tensor, ratings: torch.Tensor, mask: torch.Tensor) -> Context:
        """The context of each task from its support: representations ``[T, S, D]``, ratings and mask."""
        e = self.entries(body, ratings)
        pooled = masked_mean(e, mask)
        ctx = Context(pooled)
        if self.cfg.encoder == "attention":
            t = body.shape[0]
            ctx.keys = torch.cat([self.null_key.expand(t, 1, -1), self.key_proj(body)], dim=1)
            ctx.values = torch.cat([self.null_value.expand(t, 1, -1), e], dim=1)
            ctx.key_mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        if self.cfg.latent_dim:
            ctx.z = self._gaussian(pooled)[0]
        return ctx

    def attend(self, body: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Cross-attention from targets ``[T, Q, D]`` to the support: ``[T, Q, H]``."""
        return self.attend_queries(self.query_proj(body), ctx)

    def attend_queries(self, queries: torch.Tensor, ctx: Context) -> torch.Tensor:
        """``attend`` from the targets' projected queries ``[T, Q, H]`` (``ctx.key_mask`` ``None``: every
        entry is attended to)."""
        heads, h = self.cfg.heads, self.cfg.hidden
        t, q = queries.shape[:2]
        split = lambda x: x.reshape(t, x.shape[1], heads, h // heads).transpose(1, 2)  # noqa: E731
        qh, kh, vh = split(queries), split(ctx.keys), split(ctx.values)
        scores = qh @ kh.transpose(-1, -2) / math.sqrt(h // heads)  # [T, heads, Q, S + 1]
        if ctx.key_mask is not None:
            scores = scores.masked_fill(~ctx.key_mask[:, None, None, :], float("-inf"))
        out = torch.softmax(scores, dim=-1) @ vh
        return out.transpose(1, 2).reshape(t, q, h)

    def decode(self, body: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Outputs ``[T, Q]`` for targets ``[T, Q, D]``: the head, every linear layer FiLM-modulated by the
        context."""
        q = body.shape[1]
        parts = [ctx.pooled.unsqueeze(1).expand(-1, q, -1)]
        if self.cfg.encoder == "attention":
            parts.append(self.attend(body, ctx))
        if ctx.z is not None:
            parts.append(ctx.z.unsqueeze(1).expand(-1, q, -1))
        c = self.condition(torch.cat(parts, dim=-1))
        films = iter(self.films)
        x = body
        for layer in self.model.head:
            x = layer(x)
            if isinstance(layer, nn.Linear):
                gamma, beta = next(films)(c).chunk(2, dim=-1)
                x = x * (1.0 + gamma) + beta
        return x.squeeze(-1)

    def adapt(self, user: Features, support: Support) -> tuple[Features, Context]:
        """Each task's context from its support: the whole adaptation (one forward pass, no graph)."""
        with torch.no_grad():
            return user, self.encode(self.model.body(user, support.items), support.ratings, support.mask)

    def score(self, state: tuple[Features, Context], item_ids: torch.Tensor, items: Features) -> torch.Tensor:
        """Outputs ``[T, N]`` for the items of each task, given its context (when serving, through the
        base model's ``body_parts`` where it has them: ``serve``)."""
        user, ctx = state
        parts = self.model.body_parts(user, items)  # None outside serving
        if parts is not None and type(self.model.head[0]) is nn.Linear:
            u, i = parts
            return self.serve(u, self._item_maps(self, items, lambda _: self.item_maps(u.shape[-1], i)), ctx)
        return self.decode(self.model.body(user, items), ctx)

    def _linears(self) -> list[nn.Linear]:
        """The linear maps that read the body: the head's first layer (and the attention's query)."""
        return [self.model.head[0]] + ([self.query_proj] if self.cfg.encoder == "attention" else [])

    def item_maps(self, du: int, i: torch.Tensor) -> list[torch.Tensor]:
        """The item parts ``[T, N, out]`` of the linear maps that read the body (``_linears``), from the item
        parts ``i`` ``[T, N, Di]`` of the bodies (the user part's width ``du`` first): they depend on the
        items and the parameters only, so a loaded run serving a catalogue keeps them (``score``)."""
        maps = [i @ layer.weight[:, du:].T for layer in self._linears()]
        if self.cfg.encoder == "attention":  # the query's part per head, [T, heads, H / heads, N]: see serve
            t, n, h = maps[1].shape
            maps[1] = maps[1].reshape(t, n, self.cfg.heads, h // self.cfg.heads).permute(0, 2, 3, 1).contiguous()
        return maps

    def serve(self, u: torch.Tensor, maps: list[torch.Tensor], ctx: Context) -> torch.Tensor:
        """``decode`` of the bodies ``[u; i_n]`` up to float rounding, without making them: every linear map
        of the body (the head's first layer, the attention's query) is the sum of its user part (from ``u``
        ``[T, Du]``, once per task) and its item part (``maps``: ``item_maps``, ``[T, N, out]``; the query's
        per head and transposed, ``[T, heads, H / heads, N]``); what depends on the task only goes through
        once per task (the pooled support and the latent through the conditioning layer; the attention's
        keys per head, scaled, with the query's user part and the mask as their offset; the values through
        the conditioning layer, as one matrix over the heads, carrying the context's constant part); the
        attention scores are one product per head (not a product with block-diagonal keys, which multiplies
        zeros for every other head), laid out ``[heads, S+1, n]`` so that the softmax runs along the items'
        contiguous axis and the scores enter the values' product transposed, without a copy; the FiLM
        layers go through as one product whose betas also carry each head layer's additive term (the first
        layer's user part, the later layers' biases), so the head layers are plain products; the items go
        through in chunks of ``SERVE_CHUNK`` (for one user, as ``Recommender`` serves, as 2-D products).
        With ``encoder=mean`` the modulation is one vector per task."""
        cond, head = self.condition[0], list(self.model.head)
        h, du = self.cfg.hidden, u.shape[-1]
        users = [F.linear(u, layer.weight[:, :du], layer.bias).unsqueeze(1) for layer in self._linears()]
        c_const = F.linear(ctx.pooled, cond.weight[:, :h], cond.bias)  # [T, H]
        if ctx.z is not None:
            c_const = c_const + ctx.z @ cond.weight[:, cond.weight.shape[1] - ctx.z.shape[-1]:].T
        c_const = c_const.unsqueeze(1)  # [T, 1, H]
        # Each FiLM layer as per-task weights [T, 2 * out, H] and biases [T, 2 * out]: [gamma_l + 1, beta_l'],
        # the 1 of 1 + gamma in gamma's bias, and beta_l' = beta_l + (gamma_l + 1) * a_l the modulation of the
        # layer's additive term a_l (the first layer's user part, bias included; a later layer's bias), which
        # is linear in the context too: the layers then run as plain products of the item parts, no additions.
        t = u.shape[0]
        one = t == 1  # one user (serving): 2-D products
        linears = [layer for layer in head if isinstance(layer, nn.Linear)]
        film_w, film_b, sizes = [], [], []
        for j, (film, layer) in enumerate(zip(self.films, linears)):
            n_out = layer.out_features
            wg, wb = film.weight[:n_out], film.weight[n_out:]
            bg, bb = film.bias[:n_out] + 1.0, film.bias[n_out:]
            a = users[0][:, 0] if j == 0 else layer.bias  # [T, out] or [out] (or None: no bias)
            a = (torch.zeros_like(bg) if a is None else a).expand(t, n_out)
            film_w.append(torch.cat([wg.expand(t, -1, -1), wb + a.unsqueeze(-1) * wg], dim=1))
            film_b.append(torch.cat([bg.expand(t, -1), bb + a * bg], dim=1))
            sizes.append(2 * n_out)
        film_w, film_b = torch.cat(film_w, dim=1), torch.cat(film_b, dim=1)  # [T, sum 2 * out, H], [T, sum 2 * out]

        def modulations(c: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:  # c [T, n, H]
            if one:
                out = torch.addmm(film_b[0], c[0], film_w[0].T).unsqueeze(0)
            else:
                out = torch.baddbmm(film_b.unsqueeze(1), c, film_w.transpose(1, 2))
            return [m.chunk(2, dim=-1) for m in out.split(sizes, dim=-1)]

        if self.cfg.encoder == "attention":
            heads = self.cfg.heads
            dh, s1 = h // heads, ctx.keys.shape[1]
            keys = ctx.keys.reshape(t, s1, heads, dh).transpose(1, 2) / math.sqrt(dh)  # [T, heads, S+1, dh]
            offset = keys @ users[1].reshape(t, heads, dh, 1)  # [T, heads, S+1, 1]
            if ctx.key_mask is not None and not bool(ctx.key_mask.all()):
                offset = offset.masked_fill(~ctx.key_mask[:, None, :, None], float("-inf"))
            # the values through the conditioning layer, rows (head, entry): [T, heads * (S+1), H]; each head's
            # attention weights sum to 1, so the context's constant part rides in the values (1 / heads each)
            vh = ctx.values.reshape(t, s1, heads, dh).transpose(1, 2)  # [T, heads, S+1, dh]
            values = (vh @ cond.weight[:, h : 2 * h].T.reshape(heads, dh, h)).reshape(t, heads * s1, h)
            values = values + c_const / heads
        else:
            mods = modulations(torch.relu(c_const))  # [T, 1, out] each
        outs = []
        for s in range(0, maps[0].shape[1], SERVE_CHUNK):
            if self.cfg.encoder == "attention":
                q = maps[1][..., s : s + SERVE_CHUNK]  # [T, heads, dh, n]
                p = torch.baddbmm(offset[0], keys[0], q[0]) if one else offset + keys @ q  # [(T,) heads, S+1, n]
                p = torch.softmax(p, dim=-2)
                if one:
                    c = torch.mm(p.reshape(heads * s1, -1).T, values[0]).unsqueeze(0)
                else:
                    c = torch.bmm(p.reshape(t, heads * s1, -1).transpose(1, 2), values)
                mods = modulations(c.relu_())
            modulation = iter(mods)
            x = maps[0][:, s : s + SERVE_CHUNK]  # the head's first layer: its item part (the rest is in beta')
            for j, layer in enumerate(head):  # as decode (head[0] is the linear layer maps[0] went through)
                if not isinstance(layer, nn.Linear):
                    x = layer(x)
                    continue
                if j:
                    x = x @ layer.weight.T  # (its bias is in beta')
                gamma1, beta = next(modulation)
                x = torch.addcmul(beta, x, gamma1)
            outs.append(x.squeeze(-1))
        return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]

    # ---------------------------------------------------------------- learner
    def training_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        s = batch.n_support
        body = self.model.body(batch.user, batch.item)  # [T, L, D]: support and query in one pass
        ctx = self.encode(body[:, :s], batch.ratings[:, :s], batch.support_mask[:, :s])
        _, y, m = batch.part("query")
        kl = None
        if self.cfg.latent_dim:  # the posterior sees the query too; sample it, pull the prior towards it
            prior_mu, prior_sd = self._gaussian(ctx.pooled)
            every = batch.support_mask | batch.query_mask
            post_mu, post_sd = self._gaussian(masked_mean(self.entries(body, batch.ratings), every))
            ctx.z = post_mu + post_sd * torch.randn_like(post_sd)
            kl = (torch.log(prior_sd / post_sd) + (post_sd**2 + (post_mu - prior_mu) ** 2) / (2 * prior_sd**2)
                  - 0.5).sum(-1)
        if self.cfg.targets == "all":
            every = self.decode(body, ctx)
            loss = self.loss_fn(every, batch.ratings, batch.support_mask | batch.query_mask).mean()
            out = every[:, s:]
        else:
            out = self.decode(body[:, s:], ctx)
            loss = self.loss_fn(out, y, m).mean()
        if kl is not None:
            if self._trainer is not None:
                self.log("train/kl", kl.mean().detach(), batch_size=batch.n_tasks, on_step=True, on_epoch=True,
                         sync_dist=self.world_size > 1)
            loss = loss + self.cfg.kl_weight * kl.mean()
        return loss, out


__all__ = ["Amortised", "AmortisedConfig", "Context"]
