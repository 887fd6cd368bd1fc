"""Cold-start splits following MeLU's protocol, saved as a reloadable manifest.

Users with ``min_ratings..max_ratings`` ratings are kept. A random fraction of them is *new* (never
seen in training); the remaining *existing* users are split into training users and held-out
validation users. Items are *new* by random fraction, by release year, or by first-seen-time quantile.

Scenarios (each a list of fixed episodes, identical for every learner scored on the split):

- ``val``: validation users x existing items (held out of training; logged as ``val/user_cold/...``)
- ``warm``: training users x existing items (MeLU's "existing items for existing users"; as in MeLU this
  is training-set performance)
- ``user_cold``: new users x existing items
- ``item_cold``: training users x new items
- ``user_item_cold``: new users x new items

Per task: ``query_size`` random ratings of the user inside the scenario form the query; the support is
the rest, or ``support_size`` of the rest. Users with too few ratings in a scenario are left out of it.
Training episodes are drawn afresh every epoch from the training users' existing-item ratings.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

import numpy as np

from metarec.data import scenarios
from metarec.data.scenarios import SCENARIOS, VAL
from metarec.data.schema import RecDataset, dataset_fingerprint
from metarec.errors import ConfigError, DataError

NEW_ITEM_METHODS = ("random", "year", "time")
MANIFEST_FORMAT = 1


@dataclass
class SplitConfig:
    seed: int = 0
    min_ratings: int = 13
    max_ratings: int = 100
    new_user_fraction: float = 0.2
    val_user_fraction: float = 0.1
    new_item_method: str = "random"
    new_item_fraction: float = 0.2
    new_item_year: int = 1998
    query_size: int = 10
    support_size: Optional[int] = None
    min_support: int = 1
    scenarios: list[str] = field(default_factory=lambda: list(SCENARIOS))

    def check(self) -> None:
        """Raise ``ConfigError`` with one line naming the option to fix."""
        if self.seed < 0:
            raise ConfigError(f"data.split.seed must be >= 0, got {self.seed}")
        if self.query_size < 1:
            raise ConfigError(f"data.split.query_size must be >= 1, got {self.query_size}")
        if self.min_support < 1:
            raise ConfigError(f"data.split.min_support must be >= 1, got {self.min_support}")
        if self.support_size is not None and self.support_size < 1:
            raise ConfigError(f"data.split.support_size must be >= 1 or null, got {self.support_size}")
        need = self.query_size + self.needed_support
        if self.min_ratings < need:
            raise ConfigError(
                f"data.split.min_ratings ({self.min_ratings}) must be at least query_size + support "
                f"({need}): every user needs {self.query_size} query ratings and {self.needed_support} support ratings"
            )
        if self.max_ratings < self.min_ratings:
            raise ConfigError("data.split.max_ratings must be >= data.split.min_ratings")
        for name in ("new_user_fraction", "val_user_fraction", "new_item_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"data.split.{name} must be in [0, 1), got {v}")
        if self.new_item_method not in NEW_ITEM_METHODS:
            raise ConfigError(
                f"data.split.new_item_method must be one of {', '.join(NEW_ITEM_METHODS)}, got {self.new_item_method!r}"
            )
        unknown = [s for s in self.scenarios if s not in SCENARIOS]
        if unknown or not self.scenarios:
            raise ConfigError(f"data.split.scenarios: unknown {unknown} (known: {', '.join(SCENARIOS)})")

    @property
    def needed_support(self) -> int:
        return max(self.min_support, self.support_size or 0)


@dataclass
class Task:
    """One user's episode: support and query items (codes) with their ratings."""

    user: int
    support_items: np.ndarray
    support_ratings: np.ndarray
    query_items: np.ndarray
    query_ratings: np.ndarray
    # training only (data.item_id_dropout): positions whose item id is hidden, support then query
    hide_ids: Optional[np.ndarray] = None


@dataclass
class ColdStartSplit:
    manifest: dict
    new_item_mask: np.ndarray  # bool [n_items]
    train_pool: dict[int, tuple[np.ndarray, np.ndarray]]  # user -> (items, ratings) for training episodes
    episodes: dict[str, list[Task]]  # "val" and the evaluation scenarios

    @property
    def train_users(self) -> np.ndarray:
        return np.fromiter(self.train_pool.keys(), dtype=np.int64, count=len(self.train_pool))

    def train_ratings(self) -> tuple[np.ndarray, np.ndarray]:
        """All (item, rating) pairs that training may see."""
        items = np.concatenate([v[0] for v in self.train_pool.values()])
        ratings = np.concatenate([v[1] for v in self.train_pool.values()])
        return items, ratings


def _user_rating_lists(ds: RecDataset) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    r = ds.ratings.sort_values(["user", "item"], kind="stable")
    users = r["user"].to_numpy(np.int64)
    items = r["item"].to_numpy(np.int64)
    ratings = r["rating"].to_numpy(np.float32)
    bounds = np.flatnonzero(np.diff(users)) + 1
    out = {}
    for u_items, u_ratings, u in zip(np.split(items, bounds), np.split(ratings, bounds), users[np.r_[0, bounds]]):
        out[int(u)] = (u_items, u_ratings)
    return out


def _new_items(ds: RecDataset, cfg: SplitConfig, rng: np.random.Generator) -> np.ndarray:
    n = ds.n_items
    mask = np.zeros(n, dtype=bool)
    if cfg.new_item_method == "random":
        mask[rng.permutation(n)[: int(round(cfg.new_item_fraction * n))]] = True
    elif cfg.new_item_method == "year":
        with np.errstate(invalid="ignore"):
            mask = np.nan_to_num(ds.item_year, nan=-np.inf) >= cfg.new_item_year
    else:  # time: items first rated in the last new_item_fraction of first-seen times
        first = ds.ratings.groupby("item")["timestamp"].min()
        if cfg.new_item_fraction > 0:
            cut = np.quantile(first.to_numpy(), 1.0 - cfg.new_item_fraction)
            mask[first.index[first.to_numpy() > cut].to_numpy()] = True
    return mask


def cut_task(user: int, items, ratings, order, query_size: int, support_size: int | None = None) -> Task:
    """``user``'s ratings (``items``, ``ratings``) taken in ``order`` (positions; None: as they are), cut:
    the first ``query_size`` are the query, the rest (its first ``support_size`` if given) the support.
    The one rule of the split's episodes, the training episodes and the support-size-K test passes."""
    if order is None:
        order = np.arange(len(items))
    q, s = order[:query_size], order[query_size:]
    if support_size is not None:
        s = s[:support_size]
    return Task(user, items[s], ratings[s], items[q], ratings[q])


def _episode(rng, user, items, ratings, cfg: SplitConfig) -> Task | None:
    if len(items) < cfg.query_size + cfg.needed_support:
        return None
    return cut_task(user, items, ratings, rng.permutation(len(items)), cfg.query_size, cfg.support_size)


def make_split(ds: RecDataset, cfg: SplitConfig) -> ColdStartSplit:
    """Split ``ds`` into training users and fixed evaluation episodes per scenario."""
    cfg.check()
    rng = np.random.default_rng(cfg.seed)
    lists = _user_rating_lists(ds)
    kept = np.array(sorted(u for u, (it, _) in lists.items() if cfg.min_ratings <= len(it) <= cfg.max_ratings))
    if len(kept) == 0:
        raise DataError(
            f"no user of {ds.name} has between {cfg.min_ratings} and {cfg.max_ratings} ratings; "
            "change data.split.min_ratings / max_ratings"
        )
    perm = rng.permutation(kept)
    n_new = int(round(cfg.new_user_fraction * len(perm)))
    new_users, existing = np.sort(perm[:n_new]), perm[n_new:]
    n_val = int(round(cfg.val_user_fraction * len(existing)))
    val_users, train_users = np.sort(existing[:n_val]), np.sort(existing[n_val:])
    new_item = _new_items(ds, cfg, rng)

    def part(users, want_new_items: bool):
        for u in users:
            items, ratings = lists[int(u)]
            keep = new_item[items] == want_new_items
            yield int(u), items[keep], ratings[keep]

    # val first, then the scenarios in table order: a set's position seeds its random stream (never reorder)
    plan = {VAL: (val_users, False)}
    for s in SCENARIOS:
        plan[s] = (new_users if scenarios.new_users(s) else train_users, scenarios.new_items(s))
    episodes: dict[str, list[Task]] = {}
    for name in [VAL, *cfg.scenarios]:
        users, want_new = plan[name]
        ep_rng = np.random.default_rng([cfg.seed, 1 + list(plan).index(name)])
        tasks = [_episode(ep_rng, u, it, r, cfg) for u, it, r in part(users, want_new)]
        episodes[name] = [t for t in tasks if t is not None]
    min_len = cfg.query_size + cfg.needed_support
    train_pool = {u: (it, r) for u, it, r in part(train_users, False) if len(it) >= min_len}
    _check_nonempty(ds.name, episodes, train_pool, cfg)
    manifest = _manifest(ds, cfg, new_users, val_users, train_users, new_item, episodes, train_pool)
    return ColdStartSplit(manifest, new_item, train_pool, episodes)


def _check_nonempty(name, episodes, train_pool, cfg: SplitConfig) -> None:
    need = cfg.query_size + cfg.needed_support
    if not train_pool:
        raise DataError(f"{name}: no training user has {need} ratings on existing items; lower data.split.query_size")
    for scen, tasks in episodes.items():
        if not tasks:
            raise DataError(
                f"{name}: scenario {scen!r} is empty (no user has {need} ratings in it); lower data.split.query_size "
                f"or support_size, change the item/user fractions, or drop it from data.split.scenarios"
            )


def _ids(ds_ids: np.ndarray, codes) -> list:
    return [v.item() if hasattr(v, "item") else v for v in ds_ids[np.asarray(codes, dtype=np.int64)]]


def _manifest(ds, cfg, new_users, val_users, train_users, new_item, episodes, train_pool) -> dict:
    body = {
        "format": MANIFEST_FORMAT,
        "dataset": ds.name,
        "dataset_fingerprint": dataset_fingerprint(ds),
        "config": asdict(cfg),
        "users": {
            "new": _ids(ds.user_ids, new_users),
            "val": _ids(ds.user_ids, val_users),
            "train": _ids(ds.user_ids, train_users),
        },
        "new_items": _ids(ds.item_ids, np.flatnonzero(new_item)),
        "episodes": {
            name: [
                {
                    "user": _ids(ds.user_ids, [t.user])[0],
                    "support": _ids(ds.item_ids, t.support_items),
                    "query": _ids(ds.item_ids, t.query_items),
                }
                for t in tasks
            ]
            for name, tasks in episodes.items()
        },
        "stats": {
            "train_users": len(train_pool),
            **{f"{name}_users": len(t) for name, t in episodes.items()},
            "new_items": int(new_item.sum()),
            "items": int(len(new_item)),
        },
    }
    body["content_hash"] = content_hash(body)
    return body


def content_hash(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "content_hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save_manifest(split: ColdStartSplit, path: str | Path) -> Path:
    """Write the manifest atomically (temp file then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(split.manifest, sort_keys=True))
    os.replace(tmp, path)
    return path


def load_split(ds: RecDataset, path: str | Path) -> ColdStartSplit:
    """Rebuild a split from a saved manifest; refuses a manifest made on other data or edited by hand."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"split manifest {path} does not exist") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, too-long numbers, nesting
        raise DataError(f"split manifest {path} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(f"split manifest {path} has an unknown format; re-create it with this metarec version")
    if manifest.get("content_hash") != content_hash(manifest):
        raise DataError(f"split manifest {path} does not match its content hash (edited or corrupt)")
    cfg = _check_manifest(manifest, path)
    if manifest["dataset"] != ds.name or manifest["dataset_fingerprint"] != dataset_fingerprint(ds):
        raise DataError(f"split manifest {path} was made on other data than {ds.name}")
    user_code = {v: i for i, v in enumerate(_ids(ds.user_ids, np.arange(ds.n_users)))}
    item_code = {v: i for i, v in enumerate(_ids(ds.item_ids, np.arange(ds.n_items)))}
    lists = _user_rating_lists(ds)
    new_item = np.zeros(ds.n_items, dtype=bool)
    unknown = [i for i in manifest["new_items"] if i not in item_code]
    if unknown:
        raise DataError(f"split manifest {path} names item {unknown[0]!r}, which is not in {ds.name}")
    new_item[[item_code[i] for i in manifest["new_items"]]] = True

    def lookup(u, raw_items):
        items, ratings = lists.get(u, (np.zeros(0, np.int64), np.zeros(0, np.float32)))
        try:
            codes = np.array([item_code[i] for i in raw_items], dtype=np.int64)
        except KeyError as e:
            raise DataError(f"split manifest {path} names item {e.args[0]!r}, which is not in {ds.name}") from None
        pos = np.minimum(np.searchsorted(items, codes), max(len(items) - 1, 0))
        if len(codes) and (len(items) == 0 or not np.array_equal(items[pos], codes)):
            raise DataError(f"split manifest {path} lists an item that user {ds.user_ids[u]!r} never rated")
        return codes, ratings[pos]

    episodes = {}
    for name, tasks in ((s, manifest["episodes"][s]) for s in [VAL, *cfg.scenarios]):  # make_split order
        out = []
        for t in tasks:
            if t["user"] not in user_code:
                raise DataError(f"split manifest {path} names user {t['user']!r}, which is not in {ds.name}")
            u = user_code[t["user"]]
            s_items, s_r = lookup(u, t["support"])
            q_items, q_r = lookup(u, t["query"])
            out.append(Task(u, s_items, s_r, q_items, q_r))
        episodes[name] = out
    min_len = cfg.query_size + cfg.needed_support
    train_pool = {}
    for raw in manifest["users"]["train"]:
        if raw not in user_code:
            raise DataError(f"split manifest {path} names user {raw!r}, which is not in {ds.name}")
        u = user_code[raw]
        items, ratings = lists.get(u, (np.zeros(0, np.int64), np.zeros(0, np.float32)))
        keep = ~new_item[items]
        if keep.sum() >= min_len:
            train_pool[u] = (items[keep], ratings[keep])
    return ColdStartSplit(manifest, new_item, train_pool, episodes)


def _is_id(v) -> bool:
    return isinstance(v, (int, float, str)) and not isinstance(v, bool)


def _check_manifest(manifest: dict, path: Path) -> SplitConfig:
    """Check the keys and value types ``load_split`` relies on (as ``make_split`` writes them); the config.

    Raises ``DataError`` rather than letting a KeyError or TypeError escape from a manifest that was edited
    and re-hashed, or written by another tool.
    """

    def bad(what: str) -> DataError:
        return DataError(f"split manifest {path} is malformed: {what}; re-create it with this metarec version")

    def id_list(value, where: str) -> None:
        if not isinstance(value, list) or not all(_is_id(v) for v in value):
            raise bad(f"{where} must be a list of ids")

    for key, typ in (("dataset", str), ("dataset_fingerprint", str), ("config", dict), ("users", dict),
                     ("new_items", list), ("episodes", dict), ("stats", dict)):  # fmt: skip
        if not isinstance(manifest.get(key), typ):
            raise bad(f"{key!r} is missing or not a {'JSON object' if typ is dict else typ.__name__}")
    cfg = _manifest_config(manifest["config"], bad)
    for group in ("new", "val", "train"):
        id_list(manifest["users"].get(group), f"users.{group}")
    id_list(manifest["new_items"], "new_items")
    for name in [VAL, *cfg.scenarios]:
        tasks = manifest["episodes"].get(name)
        if not isinstance(tasks, list):
            raise bad(f"episodes.{name} is missing or not a list")
        for t in tasks:
            if not isinstance(t, dict) or not _is_id(t.get("user")):
                raise bad(f"an episode of episodes.{name} has no user id")
            id_list(t.get("support"), f"the support of an episode of episodes.{name}")
            id_list(t.get("query"), f"the query of an episode of episodes.{name}")
    return cfg


def _manifest_config(raw: dict, bad) -> SplitConfig:
    """The manifest's ``config`` as a checked ``SplitConfig`` (missing keys take their defaults)."""
    defaults = SplitConfig()
    known = [f.name for f in fields(SplitConfig)]
    for key, value in raw.items():
        if key not in known:
            raise bad(f"config has unknown key {key!r}")
        default = getattr(defaults, key)
        if key == "support_size":
            ok = value is None or (isinstance(value, int) and not isinstance(value, bool))
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:  # scenarios
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        if not ok:
            raise bad(f"config.{key} has the wrong type ({type(value).__name__})")
    cfg = SplitConfig(**raw)
    try:
        cfg.check()
    except ConfigError as e:
        raise bad(f"invalid config ({e})") from None
    return cfg
