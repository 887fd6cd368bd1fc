"""Serving a new user from a finished run: load the meta-trained learner once, adapt it to one user's
handful of ratings exactly as the learner adapts at test time, and score or rank every item.

    rec = Recommender.load("runs/default/<run>")
    user = rec.adapt([(50, 5.0), (172, 4.0), (133, 1.0)], user_features={"gender": 2})
    user.predict([1, 2, 3])          # predicted ratings, clipped to the data's rating range
    user.recommend(10)               # [(item id, title, predicted rating), ...], best first

Adaptation follows the learner's own evaluation path: the same adapted scope (``all``/``head``/
``output``), the same inner learning rate (or Meta-SGD's learned per-parameter rates), the same number of
steps (``eval_inner_steps``, else ``inner_steps``; ``finetune_steps`` for ``finetune``), the same inner
gradient clipping, first order. The amortised learner encodes the given ratings once (its context; no
gradient steps) and conditions every prediction on it. Baselines use their own rule: ``global`` does not
adapt, ``item_mean`` predicts each item's training mean, ``user_mean`` the mean of the given ratings,
``popularity`` ranks by training interactions.

Implicit feedback (runs trained with ``data.negatives``): the given items are positives (rating 1; a 0
marks an item the user did not want), the support gets the run's sampled negatives exactly like a test
support, the loss is binary cross-entropy, and ``predict``/``recommend`` show interaction probabilities.

Adapting never touches the loaded meta-parameters: the inner loop runs on detached views of them
(no copy) and every update makes new tensors, through ``torch.func.functional_call`` on a per-thread
parameter-free (``meta`` device) copy of the adapted module's structure. So users can be adapted one
after another or from several threads at once, each getting exactly what it would get alone.
"""

from __future__ import annotations

import copy
import json
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from metarec.errors import ConfigError, MetarecError
from metarec.models.base import Features

__all__ = ["AdaptedUser", "Recommender"]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _meta_skeleton(module: nn.Module) -> nn.Module:
    """A copy of ``module``'s structure whose parameters and buffers live on the ``meta`` device (no
    memory); only ever called through ``functional_call`` with every parameter and buffer supplied."""
    memo: dict[int, Any] = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in module.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(module, memo)


class Recommender:
    """A finished run's learner, ready to adapt to new users. Build it with :meth:`load`."""

    def __init__(self, run_dir: Path, cfg, datamodule, learner, checkpoint: Path | None) -> None:
        from metarec.learners.amortised import Amortised
        from metarec.learners.baselines import FineTune, GlobalModel, ItemMean, UserMean
        from metarec.learners.popularity import Popularity

        self.run_dir = run_dir
        self.config = cfg
        self.datamodule = datamodule
        self.learner = learner
        self.checkpoint = checkpoint
        ds = datamodule.dataset
        self.dataset = ds
        lo, hi = learner.ctx.rating_range  # (0, 1) under implicit feedback (data.negatives)
        self.rating_range = (float(lo), float(hi))
        self.implicit = learner.ctx.loss == "bce"  # outputs are logits; predictions are probabilities
        self.item_ids = np.asarray(ds.item_ids)
        self.n_items = int(ds.n_items)
        titles = list(ds.item_titles or [])
        self.item_titles = titles + [""] * (self.n_items - len(titles))
        self._code = {}
        self._code_str = {}
        for code, raw in enumerate(self.item_ids.tolist()):
            self._code.setdefault(raw, code)
            self._code_str.setdefault(str(raw), code)
        tables = datamodule.collate.tables  # new items' ids hidden exactly as at test time
        self._item_cat, self._item_multi = tables.item_cat, tables.item_multi
        self._user_cat_fields = list(ds.users.categorical_fields)
        self._user_multi_fields = list(ds.users.multihot_fields)
        self.model = learner.model
        self._local = threading.local()

        # What adapts, and how: the learner's own executor and its evaluation settings.
        self.kind = "model"
        self.scope: str | None = None
        executor = getattr(learner, "executor", None)
        if isinstance(learner, Popularity):
            self.kind = "popularity"
        elif isinstance(learner, ItemMean):
            self.kind = "item_mean"
        elif isinstance(learner, UserMean):
            self.kind = "user_mean"
        elif isinstance(learner, Amortised):
            self.kind = "amortised"  # the support's encoding is the adaptation
        elif executor is not None:
            self.kind = "adapt"
            self._executor = executor
            self._module = executor.module
            self.scope = self._scope_of(executor)
            self._names = list(executor.names)  # the adapted ones (under lora: adapters and head)
            lrs = getattr(executor.wrapper, "lrs", None)  # Meta-SGD's learned per-parameter rates
            if lrs is None:
                self._lrs = {n: float(executor.inner_lr) for n in self._names}
            else:
                by_name = dict(zip(executor.all_names, lrs))
                self._lrs = {n: by_name[n].detach() for n in self._names}
            self._clip = executor.inner_grad_clip
            # lora: the base weights the adapted ones are used with (never written)
            self._fixed = {n: p.detach() for n, p in executor.fixed_params().items()}
            if isinstance(learner, FineTune):
                self.steps = int(learner.cfg.finetune_steps)
            elif hasattr(learner, "steps"):
                self.steps = int(learner.steps(False))
            else:
                c = learner.cfg
                self.steps = int(c.inner_steps if c.eval_inner_steps is None else c.eval_inner_steps)
        elif not isinstance(learner, GlobalModel):
            raise MetarecError(f"learner {type(learner).__name__} cannot serve new users (no known adaptation rule)")

        # Cached item encodings when the item encoder does not adapt (scopes head/output, global model).
        self._item_enc = None
        m = self.model
        if self.kind in ("model", "adapt") and self.scope != "all" and all(
            hasattr(m, a) for a in ("item_encoder", "user_encoder", "combine")
        ):
            with torch.no_grad():
                self._item_enc = m.item_encoder(Features(self._item_cat, self._item_multi)).detach()

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, run_dir: str | Path) -> Recommender:
        """The learner of the finished run in ``run_dir``, on its own split, with its best checkpoint
        (else ``checkpoints/last.ckpt``), in eval mode."""
        import yaml
        from omegaconf import DictConfig, OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        from metarec.config import validate
        from metarec.runs import METRICS_FILE
        from metarec.train import _quiet_lightning, build, check_checkpoint

        run = Path(run_dir)
        if not run.is_dir():
            raise MetarecError(f"run folder {run} does not exist")
        if not (run / "config.yaml").is_file():
            raise MetarecError(f"{run} is not a metarec run folder (no config.yaml)")
        if not (run / METRICS_FILE).is_file():
            raise MetarecError(f"run {run} is not finished (no {METRICS_FILE}); let it finish or train it again")
        manifest = run / "split_manifest.json"
        if not manifest.is_file():
            raise MetarecError(f"run {run} has no split_manifest.json")
        try:
            record = json.loads((run / METRICS_FILE).read_text())
        except (OSError, ValueError) as e:
            raise MetarecError(f"{run / METRICS_FILE} is not readable JSON: {_first_line(e)}") from None
        if not isinstance(record, dict):
            raise MetarecError(f"{run / METRICS_FILE} is not a metrics record")
        try:
            raw = OmegaConf.load(run / "config.yaml")
        except (OmegaConfBaseException, yaml.YAMLError, OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{run / 'config.yaml'}: {_first_line(e)}") from None
        if not isinstance(raw, DictConfig):
            raise ConfigError(f"{run / 'config.yaml'}: expected a mapping at the top level")
        cfg = validate(raw)
        cfg.data.manifest = str(manifest.resolve())
        _quiet_lightning()
        dm, learner = build(cfg)

        ckpt = None
        best = record.get("best_checkpoint")
        if best:
            path = (run / best).resolve()
            if not path.is_relative_to(run.resolve()):
                raise MetarecError(f"{run / METRICS_FILE} names a best checkpoint outside the run folder: {best}")
            if path.is_file():
                ckpt = path
        if ckpt is None and (run / "checkpoints" / "last.ckpt").is_file():
            ckpt = run / "checkpoints" / "last.ckpt"
        if ckpt is None and learner.needs_training:
            raise MetarecError(f"run {run} has no checkpoint (neither best_checkpoint nor checkpoints/last.ckpt)")
        if ckpt is not None:
            check_checkpoint(ckpt)
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or "state_dict" not in state:
                raise MetarecError(f"checkpoint {ckpt} has no state_dict")
            try:
                learner.load_state_dict(state["state_dict"])
            except (RuntimeError, KeyError, ValueError) as e:
                raise MetarecError(f"checkpoint {ckpt} does not fit the run's config: {_first_line(e)}") from None
        learner.eval()
        return cls(run, cfg, dm, learner, ckpt)

    # ---------------------------------------------------------------- helpers
    def _scope_of(self, executor) -> str:
        if executor.prefix is None:
            return "all"
        if executor.partial:
            return "lora"
        return "head" if executor.module is self.model.head else "output"

    def _skeleton(self) -> nn.Module:
        """This thread's parameter-free copy of the adapted module (functional_call swaps attributes
        on the module it is given, so threads must never share one)."""
        sk = getattr(self._local, "skeleton", None)
        if sk is None:
            sk = self._local.skeleton = _meta_skeleton(self._module)
        return sk

    def item_code(self, item: Any) -> int | None:
        """The code of an original item id (as the data gives it, or its string form); None if unknown."""
        if isinstance(item, (bool, np.bool_)):
            return None
        if isinstance(item, np.generic):
            item = item.item()
        try:
            code = self._code.get(item)
        except TypeError:  # unhashable
            return None
        if code is None:
            code = self._code_str.get(str(item).strip())
        return code

    def item_codes(self, items: Iterable[Any]) -> np.ndarray:
        codes = []
        for i, item in enumerate(items):
            code = self.item_code(item)
            if code is None:
                raise MetarecError(f"items entry {i + 1}: unknown item id {item!r}")
            codes.append(code)
        return np.asarray(codes, dtype=np.int64)

    @staticmethod
    def _one(user: Features) -> Features:
        """One user's features as a batch of one task."""
        return Features(user.categorical[None], user.multihot[None])

    def _items(self, codes: torch.Tensor) -> Features:
        return Features(self._item_cat[codes], self._item_multi[codes])

    def _user(self, user_features: Mapping[str, Any] | None) -> Features:
        cat = torch.zeros(len(self._user_cat_fields), dtype=torch.long)
        widths = [f.width for f in self._user_multi_fields]
        multi = torch.zeros(sum(widths), dtype=torch.float32)
        if user_features is None:
            return Features(cat, multi)
        if not isinstance(user_features, Mapping):
            raise MetarecError("user_features must be a mapping of user field name to value code (or None)")
        cat_pos = {f.name: j for j, f in enumerate(self._user_cat_fields)}
        multi_pos = {f.name: j for j, f in enumerate(self._user_multi_fields)}
        known = ", ".join([*cat_pos, *multi_pos]) or "none"
        for name, value in user_features.items():
            if name in cat_pos:
                f = self._user_cat_fields[cat_pos[name]]
                if value is None:
                    continue
                if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                    raise MetarecError(f"user feature {name}: value {value!r} is not an integer code")
                if not 0 <= int(value) < f.cardinality:
                    raise MetarecError(
                        f"user feature {name}: code {value!r} is outside 0..{f.cardinality - 1} (0 = unknown)"
                    )
                cat[cat_pos[name]] = int(value)
            elif name in multi_pos:  # a set of active value indices 0..width-1
                j = multi_pos[name]
                start, width = sum(widths[:j]), widths[j]
                for v in value or ():
                    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or not 0 <= v < width:
                        raise MetarecError(f"user feature {name}: value {v!r} is not an index in 0..{width - 1}")
                    multi[start + int(v)] = 1.0
            else:
                raise MetarecError(f"unknown user feature {name!r} (known: {known})")
        return Features(cat, multi)

    def _parse(self, ratings, names: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(ratings, Mapping):
            entries = list(ratings.items())
        elif isinstance(ratings, (str, bytes)):
            raise MetarecError("ratings must be a list of (item id, rating) pairs or a mapping item id -> rating")
        else:
            try:
                entries = list(ratings)
            except TypeError:
                raise MetarecError(
                    "ratings must be a list of (item id, rating) pairs or a mapping item id -> rating"
                ) from None
        if not entries:
            raise MetarecError("no ratings given: a new user needs at least one (item id, rating) pair")
        lo, hi = self.rating_range
        codes, values, first = [], [], {}
        for i, entry in enumerate(entries):
            where = names[i] if names is not None and i < len(names) else f"ratings entry {i + 1}"
            if isinstance(entry, (str, bytes)) or not isinstance(entry, (Sequence, np.ndarray)) or len(entry) != 2:
                raise MetarecError(f"{where}: {entry!r} is not an (item id, rating) pair")
            item, rating = entry
            code = self.item_code(item)
            if code is None:
                raise MetarecError(f"{where}: unknown item id {item!r}")
            if rating is None:  # an interaction without a rating: only meaningful for implicit feedback
                if not self.implicit:
                    raise MetarecError(
                        f"{where}: item {item!r} has no rating, but this run was trained on explicit ratings"
                    )
                rating = 1.0
            if isinstance(rating, (bool, np.bool_)) or not isinstance(rating, Real):
                raise MetarecError(f"{where}: rating {rating!r} of item {item!r} is not a number")
            r = float(rating)
            if not (math.isfinite(r) and lo <= r <= hi):
                raise MetarecError(f"{where}: rating {rating!r} of item {item!r} is outside the rating range {lo:g}..{hi:g}")
            if code in first:
                raise MetarecError(f"{where}: item {item!r} is rated twice (also in {first[code]})")
            first[code] = where
            codes.append(code)
            values.append(r)
        return np.asarray(codes, dtype=np.int64), np.asarray(values, dtype=np.float32)

    def _prefix(self, user: Features, codes: torch.Tensor) -> torch.Tensor:
        """Input of the adapted module (scopes head/output) or of the head (global): no gradient."""
        m = self.model
        with torch.no_grad():
            if self._item_enc is not None:
                x = m.combine(m.user_encoder(user), self._item_enc[codes])
                if self.scope == "output":
                    x = m.head[:-1](x)
                return x.detach()
            if self.kind == "adapt":
                return self._executor.prefix(user, self._items(codes)).detach()
            return m.body(user, self._items(codes)).detach()

    def _call(self, params: dict, user: Features, codes: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """The adapted module with ``params`` on ``codes`` (``x``: its precomputed input, if any)."""
        state = {**self._fixed, **params, **{n: b for n, b in self._module.named_buffers()}}
        if self.scope == "all":
            return functional_call(self._skeleton(), state, (user, self._items(codes)))
        if x is None:
            x = self._prefix(user, codes)
        return functional_call(self._skeleton(), state, (x,)).squeeze(-1)

    # ---------------------------------------------------------------- serving
    def adapt(self, ratings, user_features: Mapping[str, Any] | None = None, *,
              entry_names: Sequence[str] | None = None) -> AdaptedUser:
        """A new user adapted to ``ratings`` (``[(item id, rating), ...]`` or ``{item id: rating}``, original
        item ids). ``user_features`` maps user field names to value codes (``None`` or absent = unknown,
        code 0). ``entry_names`` (optional, one per rating) name the entries in error messages."""
        from metarec.learners.executors import clip_by_global_norm

        codes_np, values_np = self._parse(ratings, entry_names)
        user = self._user(user_features)
        codes = torch.from_numpy(codes_np)
        y = torch.from_numpy(values_np)
        if self.kind == "user_mean":
            return AdaptedUser(self, user, codes_np, values_np, mean=float(y.mean()))
        if self.kind not in ("adapt", "amortised"):
            return AdaptedUser(self, user, codes_np, values_np)
        if self.implicit:
            codes, y = self._with_negatives(codes_np, values_np)
        mask = torch.ones_like(y, dtype=torch.bool)
        if self.kind == "amortised":
            with torch.no_grad():
                context = self.learner.adapt(self._one(user), self._items(codes[None]), y[None], mask[None])
            return AdaptedUser(self, user, codes_np, values_np, context=context)
        params = {n: p.detach() for n, p in zip(self._names, self._executor.adapted_params())}  # views, never written
        x = None if self.scope == "all" else self._prefix(user, codes)
        with torch.enable_grad():
            for _ in range(self.steps):
                leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
                loss = self.learner.loss_fn(self._call(leaves, user, codes, x), y, mask)
                grads = torch.autograd.grad(loss, [leaves[n] for n in self._names], allow_unused=True)
                grads = clip_by_global_norm(list(grads), self._clip)
                with torch.no_grad():
                    params = {
                        n: params[n] if g is None else params[n] - self._lrs[n] * g.detach()
                        for n, g in zip(self._names, grads)
                    }
        return AdaptedUser(self, user, codes_np, values_np, params=params)

    def _with_negatives(self, codes: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Implicit feedback: the user's items plus sampled negatives, as in a test support set (the run's
        sampler and ``per_positive``; existing items not given; seeded by the split seed and the items,
        so the same user always gets the same negatives)."""
        import zlib

        sampler = self.datamodule.negatives
        n = sampler.cfg.per_positive * int((labels > 0.5).sum())
        key = zlib.crc32(np.sort(codes).astype(np.int64).tobytes())
        rng = np.random.default_rng([int(self.datamodule.split_config.seed), key, 2])
        neg = sampler.sample(rng, n, new_items=False, exclude=codes)
        all_codes = np.concatenate([codes, neg])
        all_labels = np.concatenate([labels, np.zeros(len(neg), np.float32)])
        return torch.from_numpy(all_codes), torch.from_numpy(all_labels)

    def _prediction(self, raw: np.ndarray, clip: bool) -> np.ndarray:
        """Raw scores -> what users read: probabilities (implicit feedback) or ratings, clipped if asked."""
        if self.implicit:
            return 1.0 / (1.0 + np.exp(-raw.astype(np.float64)))
        return np.clip(raw, *self.rating_range) if clip else raw

    def _scores(self, u: AdaptedUser, codes: np.ndarray) -> torch.Tensor:
        """Raw scores of item ``codes`` for the adapted user ``u``: predicted ratings (unclipped), or
        logits under implicit feedback."""
        idx = torch.as_tensor(codes, dtype=torch.long)
        if self.kind == "user_mean":
            return self.learner.output(torch.full((len(codes),), u.mean, dtype=torch.float32))
        if self.kind in ("item_mean", "popularity"):
            return self.learner.item_outputs()[idx].detach().clone()
        with torch.no_grad():
            if self.kind == "adapt":
                return self._call(u.params, u.user, idx).detach()
            if self.kind == "amortised":
                return self.learner.predict(self._one(u.user), self._items(idx[None]), u.context)[0].detach()
            m = self.model
            if self._item_enc is not None:
                return m.head(self._prefix(u.user, idx)).squeeze(-1).detach()
            return m(u.user, self._items(idx)).detach()


class AdaptedUser:
    """One new user after adaptation: predict ratings, rank items. Holds only the adapted parameters."""

    def __init__(self, rec: Recommender, user: Features, seen: np.ndarray, ratings: np.ndarray,
                 params: dict | None = None, mean: float | None = None, context=None) -> None:
        self.recommender = rec
        self.user = user
        self.seen = seen  # item codes of the given ratings
        self.ratings = ratings
        self.params = params  # adapted parameters of the learner's scope (None: no adaptation)
        self.mean = mean  # user_mean: the mean of the given ratings
        self.context = context  # amortised: the encoded support

    @property
    def seen_items(self) -> list:
        return self.recommender.item_ids[self.seen].tolist()

    def predict(self, items: Iterable[Any], clip: bool = True) -> np.ndarray:
        """Predicted ratings of ``items`` (original ids), clipped to the rating range unless ``clip=False``;
        under implicit feedback, the probability that the user interacts with each item."""
        rec = self.recommender
        return rec._prediction(rec._scores(self, rec.item_codes(items)).numpy(), clip)

    def recommend(self, k: int = 10, exclude_seen: bool = True) -> list[tuple[Any, str, float]]:
        """The ``k`` best items over the whole catalogue as ``(item id, title, predicted rating)``, best
        first (ranked by the unclipped score, ties by item order; the rating shown is clipped; under
        implicit feedback it is the interaction probability). ``popularity`` ranks by training count."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise MetarecError(f"k must be a positive integer, got {k!r}")
        rec = self.recommender
        codes = np.arange(rec.n_items)
        shown = rec._scores(self, codes).numpy()
        raw = shown.astype(np.float64)
        if rec.kind == "popularity":
            raw = rec.learner.item_counts.numpy().astype(np.float64)
        if exclude_seen:
            raw[self.seen] = -np.inf
        order = np.argsort(-raw, kind="stable")
        order = order[np.isfinite(raw[order])][: int(k)]
        values = rec._prediction(shown[order], clip=True)
        return [(rec.item_ids[c].item(), rec.item_titles[c], float(v)) for c, v in zip(order, values)]
