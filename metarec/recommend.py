"""Serving a new user from a finished run: load the trained learner once, adapt it to one user's
handful of ratings exactly as the learner adapts at test time, and score or rank every item.

    rec = Recommender.load("runs/default/<run>")
    user = rec.adapt([(50, 5.0), (172, 4.0), (133, 1.0)], user_features={"gender": "F", "age": "35-44"})
    user.predict([1, 2, 3])          # predicted ratings, clipped to the data's rating range
    user.recommend(10)               # [(item id, title, predicted rating), ...], best first

User features are raw values (``"F"``, ``"writer"``, a number in a bucketed field) looked up in the run's
saved codebook (``codebook.json``, :mod:`metarec.codebook`), or integer codes; a run made before codebooks
were saved takes integer codes only.

This module only loads the run, maps original ids and user features to the learner's codes, and calls
the learner's own ``adapt`` and ``score``/``rank_score`` (``metarec.learners.base``) — the very calls
that test-time evaluation and full ranking make. It never asks what kind of learner it serves, so a
learner written outside the package is served like a built-in one: gradient-based learners take their
evaluation inner steps, the amortised learner encodes the ratings, fold-in baselines read the item-item
matrix, ``popularity`` ranks by training interactions.

Implicit feedback (runs trained with ``data.negatives``): the given items are positives (rating 1; a 0
marks an item the user did not want), the support gets the run's sampled negatives exactly like a test
support (``NegativeSampler.for_new_user``), and ``predict``/``recommend`` show interaction probabilities.

Adapting never touches the loaded parameters (learners adapt detached copies, keeping no graph), and
calls into the learner are serialised by a lock (``torch.func.functional_call`` swaps a module's
parameters while it runs), so users can be served one after another or from several threads, each
getting exactly what it would get alone.

Speed (``benchmarks/serving.py``): the catalogue's feature rows are gathered once per loaded run, the top
``k`` are selected without sorting the whole catalogue (same order as a stable sort: ties by item code),
and scoring runs inside ``item_cache.serving()``, where a model may take an exact serving-only shortcut
(``MeLU.serve``: the first layer split into user and item parts, the item part field by field).
Each call into the learner runs with ``threads`` torch intra-op threads (``Recommender.load(run,
threads=n)``, default 1; set for the call and restored after; ``None``: torch's own setting): one call is
small work, and on a machine whose cores other processes also use, a second intra-op thread made calls
several to tens of times slower in ``benchmarks/serving.py``'s measurements (2 cores), while saving about a
third at 100,000 items when the cores were free.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarec.data.episodes import Support
from metarec.errors import ConfigError, MetarecError
from metarec.data.features import Features
from metarec.models.item_cache import serving

__all__ = ["AdaptedUser", "Recommender"]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class Recommender:
    """A finished run's learner, ready to adapt to new users. Build it with :meth:`load`."""

    def __init__(self, run_dir: Path, cfg, datamodule, learner, checkpoint: Path | None,
                 codebook: dict | None = None, threads: int | None = 1) -> None:
        self.run_dir = run_dir
        self.codebook = codebook  # the run's value codebook (None: a run older than codebooks)
        self.config = cfg
        self.datamodule = datamodule
        self.learner = learner
        self.checkpoint = checkpoint
        ds = datamodule.dataset
        self.dataset = ds
        lo, hi = learner.ctx.rating_range  # (0, 1) under implicit feedback (data.negatives)
        self.rating_range = (float(lo), float(hi))
        self.implicit = learner.ctx.binary_labels  # outputs are logits; predictions are probabilities
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
        # functional_call swaps a module's parameters while it runs: one learner call at a time
        self._lock = threading.Lock()
        self.threads = _check_threads(threads)  # torch intra-op threads per call (None: torch's setting)
        self._catalogue: tuple[torch.Tensor, Features] | None = None  # every item's codes and features

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, run_dir: str | Path, threads: int | None = 1) -> Recommender:
        """The learner of the finished run in ``run_dir``, on its own split, with its best checkpoint
        (else ``checkpoints/last.ckpt``), in eval mode. ``threads``: torch intra-op threads for each
        ``adapt``/``predict``/``recommend`` call (set for the call, restored after; default 1); ``None``:
        whatever torch is set to."""
        threads = _check_threads(threads)
        import yaml
        from omegaconf import DictConfig, OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        from metarec.config import as_text, validate_saved
        from metarec.runs import METRICS_FILE
        from metarec.assembly import build, check_checkpoint, quiet_lightning

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
        cfg = validate_saved(raw)  # a `${...}` the run kept as text stays text
        cfg.data.manifest = as_text(str(manifest.resolve()))
        quiet_lightning()
        dm, learner = build(cfg, restoring=True)

        ckpt = None
        best = record.get("best_checkpoint")
        if best is not None and (not isinstance(best, str) or "\x00" in best):
            raise MetarecError(f"{run / METRICS_FILE}: best_checkpoint must be a path in the run folder, "
                               f"got {str(best)!r:.80}")
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
        from metarec.codebook import read_codebook

        return cls(run, cfg, dm, learner, ckpt, read_codebook(run), threads)

    # ---------------------------------------------------------------- helpers
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
        """Codes of a list of original item ids; a ``MetarecError`` for anything else (a single id given
        as text is refused, not read character by character)."""
        if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
            raise MetarecError(f"items must be a list of item ids, got {type(items).__name__} {items!r:.60}")
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

    def catalogue(self) -> tuple[torch.Tensor, Features]:
        """Every item's codes ``[1, n_items]`` and features, gathered once (the same tensors every call:
        callers must not modify them)."""
        if self._catalogue is None:
            ids = torch.arange(self.n_items)[None]
            self._catalogue = ids, self._items(ids)
        return self._catalogue

    @contextmanager
    def _call(self) -> Iterator[None]:
        """One call into the learner: the lock, serving mode, and the thread setting."""
        with self._lock, serving():
            before = torch.get_num_threads()
            if self.threads is not None and self.threads != before:
                torch.set_num_threads(self.threads)
            try:
                yield
            finally:
                if torch.get_num_threads() != before:
                    torch.set_num_threads(before)

    def _user(self, user_features: Mapping[str, Any] | None) -> Features:
        cat = torch.zeros(len(self._user_cat_fields), dtype=torch.long)
        widths = [f.width for f in self._user_multi_fields]
        multi = torch.zeros(sum(widths), dtype=torch.float32)
        if user_features is None:
            return Features(cat, multi)
        if not isinstance(user_features, Mapping):
            raise MetarecError("user_features must be a mapping of user field name to raw value or code (or None)")
        from metarec.codebook import resolve_code

        cat_pos = {f.name: j for j, f in enumerate(self._user_cat_fields)}
        multi_pos = {f.name: j for j, f in enumerate(self._user_multi_fields)}
        known = ", ".join([*cat_pos, *multi_pos]) or "none"
        book = (self.codebook or {}).get("user") or {}
        for name, value in user_features.items():
            if isinstance(value, np.generic):
                value = value.item()
            if name in cat_pos:
                f = self._user_cat_fields[cat_pos[name]]
                if value is None:
                    continue
                cat[cat_pos[name]] = resolve_code(name, value, f.cardinality, book.get(name), self.codebook is not None)
            elif name in multi_pos:  # a set of active values: names or column indices 0..width-1
                j = multi_pos[name]
                start, width = sum(widths[:j]), widths[j]
                values = [value] if isinstance(value, (str, int)) else value or ()
                for v in values:
                    v = v.item() if isinstance(v, np.generic) else v
                    col = resolve_code(name, v, width, book.get(name), self.codebook is not None, kind="multihot")
                    multi[start + col] = 1.0
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

    # ---------------------------------------------------------------- serving
    def adapt(self, ratings, user_features: Mapping[str, Any] | None = None, *,
              entry_names: Sequence[str] | None = None) -> AdaptedUser:
        """A new user adapted to ``ratings`` (``[(item id, rating), ...]`` or ``{item id: rating}``, original
        item ids). ``user_features`` maps user field names to raw values (text, looked up in the run's
        codebook, e.g. ``{"gender": "F"}``) or integer codes (``None`` or absent = unknown, code 0). ``entry_names`` (optional, one per rating) name the entries in error messages."""
        codes_np, values_np = self._parse(ratings, entry_names)
        user = self._user(user_features)
        codes, labels = codes_np, values_np
        if self.implicit:  # the run's sampled negatives, as in a test support
            codes, labels = self.datamodule.negatives.for_new_user(codes, labels, self.datamodule.split_config.seed)
        ids = torch.from_numpy(codes)[None]
        support = Support(ids, self._items(ids), torch.from_numpy(labels)[None], torch.ones_like(ids, dtype=torch.bool))
        with self._call(), torch.enable_grad():
            state = self.learner.adapt(self._one(user), support)
        return AdaptedUser(self, user, codes_np, values_np, state)

    def _scores(self, u: AdaptedUser, codes: np.ndarray | None, rank: bool = False) -> np.ndarray:
        """Raw outputs (``rank``: ranking scores) of item ``codes`` (``None``: the whole catalogue) for the
        adapted user ``u``: predicted ratings (unclipped) or logits under implicit feedback."""
        score = self.learner.rank_score if rank else self.learner.score
        if codes is None:
            ids, items = self.catalogue()
        else:
            ids = torch.as_tensor(codes, dtype=torch.long)[None]
            items = self._items(ids)
        with self._call(), torch.no_grad():
            return score(u.state, ids, items)[0].detach().float().numpy()

    def _prediction(self, raw: np.ndarray, clip: bool) -> np.ndarray:
        """Raw scores -> what users read: the learner's predictions, exactly as evaluation makes them
        (``MetaLearner.to_prediction``: probabilities under implicit feedback; ratings clipped to the rating
        range, and on the rating grid with ``data.rating_grid``), or the raw ratings with ``clip=False``."""
        if not (self.implicit or clip):
            return raw
        with torch.no_grad():
            return self.learner.to_prediction(torch.from_numpy(raw.astype(np.float64))).numpy()


class AdaptedUser:
    """One new user after adaptation: predict ratings, rank items. Holds the learner's state for the user."""

    def __init__(self, rec: Recommender, user: Features, seen: np.ndarray, ratings: np.ndarray, state: Any) -> None:
        self.recommender = rec
        self.user = user
        self.seen = seen  # item codes of the given ratings
        self.ratings = ratings
        self.state = state  # what the learner's adapt made of the ratings (a batch of one task)

    def predict(self, items: Iterable[Any], clip: bool = True) -> np.ndarray:
        """Predicted ratings of ``items`` (original ids), clipped to the rating range unless ``clip=False``;
        under implicit feedback, the probability that the user interacts with each item."""
        rec = self.recommender
        if not rec.learner.predicts_ratings:
            raise MetarecError(f"learner {rec.learner.ctx.label} ranks items but does not predict ratings; "
                               f"use recommend(k)")
        return rec._prediction(rec._scores(self, rec.item_codes(items)), clip)

    def recommend(self, k: int = 10, exclude_seen: bool = True) -> list[tuple[Any, str, float]]:
        """The ``k`` best items over the whole catalogue as ``(item id, title, value)``, best first, ranked
        by the learner's ranking score (ties by item order). The value is the predicted rating (clipped),
        the interaction probability under implicit feedback, or the ranking score itself for learners
        that do not predict ratings (e.g. ``itemknn``)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise MetarecError(f"k must be a positive integer, got {k!r}")
        rec = self.recommender
        raw = rec._scores(self, None, rank=True).astype(np.float64)
        if exclude_seen:
            raw[self.seen] = -np.inf
        order = top_k(raw, int(k))
        if rec.learner.predicts_ratings:  # the ranking pass's own scores where the learner ranks by them
            scores = raw[order] if rec.learner.ranks_by_score else rec._scores(self, order)
            values = rec._prediction(scores, clip=True)
        else:
            values = raw[order]
        return [(rec.item_ids[c].item(), rec.item_titles[c], float(v)) for c, v in zip(order, values)]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest finite ``scores``, largest first, ties by index: the first ``k`` finite
    entries of a stable descending sort, without sorting everything (only the entries that reach the
    k-th largest value are sorted)."""
    idx = np.flatnonzero(np.isfinite(scores))
    neg = -scores[idx]
    if k < len(idx):
        keep = neg <= np.partition(neg, k - 1)[k - 1]  # every entry reaching the k-th largest (ties too)
        idx, neg = idx[keep], neg[keep]
    return idx[np.argsort(neg, kind="stable")][:k]


def _check_threads(threads: Any) -> int | None:
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise MetarecError(f"threads must be a positive integer or None, got {threads!r}")
    return int(threads)
