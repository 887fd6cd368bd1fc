"""A synthetic explicit-feedback dataset with a known structure; needs nothing on disk.

Each user has a preference vector ``p_u = prior(features_u) + user_spread * N(0, I)``: the prior is a
sum of per-value embeddings of the user's categorical features, the rest is personal. Each item has a
vector ``q_i`` built from its genres plus noise, with ``q_i[0] = 1`` so that ``p_u[0]`` acts as the
user's bias. ``rating = clip(global_mean + b_i + <p_u, q_i> - c + noise * N(0, 1), 1, 5)``, where the
constant ``c`` centres ``b_i + <p_u, q_i>`` over the sampled ratings. With ``round_ratings: true``
the ratings are whole stars 1-5 (MovieLens format).

The generating truth (feature priors, item vectors and biases, ``c``) is known:
:func:`synthetic_truth` returns it, and :mod:`metarec.data.oracle` computes from it the Bayes-optimal
prediction for a user from any support set -- the calibration point of ``benchmarks/oracle_gap.py``.

Features (code 0 = unknown): users ``age_group`` (cardinality 7), ``gender`` (3), ``occupation`` (11);
items ``item_id`` (n_items + 1), ``release_year`` (5-year buckets of 1950-2000; 12) and the multi-hot
``genre`` (width ``n_genres``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from metarec.data.schema import CategoricalField, FeatureTable, MultiHotField, RecDataset
from metarec.errors import ConfigError

USER_FIELDS = (("age_group", 6), ("gender", 2), ("occupation", 10))  # (name, number of values)
UNKNOWN_RATE = 0.03  # share of user feature values recorded as unknown (code 0)
FIRST_YEAR, LAST_YEAR, YEAR_BUCKET = 1950, 2000, 5
START_TIME = 946_684_800  # 2000-01-01 UTC
TIME_SPAN_S = 2 * 365 * 24 * 3600


@dataclass
class SyntheticConfig:
    """Options of the ``synthetic`` source."""

    n_users: int = 800
    n_items: int = 300
    min_ratings: int = 15
    max_ratings: int = 60
    latent_dim: int = 4
    n_genres: int = 8
    user_spread: float = 0.8  # std of each user's personal deviation from the feature prior
    prior_strength: float = 0.6  # std of the part of the preference set by the user's features
    item_bias: float = 0.3  # std of the item biases
    noise: float = 0.3  # std of the rating noise
    global_mean: float = 3.5
    popularity: float = 0.8  # Zipf exponent of how often items are rated
    seed: int = 0
    round_ratings: bool = False  # whole stars 1-5 (MovieLens format) instead of real-valued ratings


@dataclass(frozen=True)
class SyntheticTruth:
    """What generated a synthetic dataset, indexed like ``RecDataset.user_ids`` / ``item_ids`` (code order)."""

    prior_mean: np.ndarray  # [n_users, latent_dim]: the part of each preference set by the user's features
    preferences: np.ndarray  # [n_users, latent_dim]: the drawn p_u (the oracle never reads it; tests do)
    item_vectors: np.ndarray  # [n_items, latent_dim] (first coordinate 1)
    item_bias: np.ndarray  # [n_items]
    offset: float  # global_mean - c: rating = offset + b_i + <p_u, q_i> + noise, then clipped (and rounded)
    user_spread: float  # std of the personal deviation p_u - prior_mean (per coordinate)
    noise: float
    rating_range: tuple[float, float]
    rounded: bool


def synthetic(cfg: SyntheticConfig, root: str | None = None) -> RecDataset:
    """Synthetic users and items with latent preferences, feature-driven priors and personal deviations."""
    return _generate(cfg)[0]


def synthetic_truth(cfg: SyntheticConfig) -> SyntheticTruth:
    """The generating parameters of ``synthetic(cfg)`` (the same draws: the same seed, the same order)."""
    return _generate(cfg)[1]


def _generate(cfg: SyntheticConfig) -> tuple[RecDataset, SyntheticTruth]:
    _check(cfg)
    rng = np.random.default_rng(cfg.seed)
    user_cat = _user_categorical(rng, cfg.n_users)
    prior, pref = _user_preferences(rng, cfg, user_cat)
    years = rng.integers(FIRST_YEAR, LAST_YEAR + 1, size=cfg.n_items)
    genres = _item_genres(rng, cfg.n_items, cfg.n_genres)
    item_vec, bias = _item_vectors(rng, cfg, genres, years)
    ratings, centre = _ratings(rng, cfg, pref, item_vec, bias)
    truth = SyntheticTruth(
        prior_mean=prior, preferences=pref, item_vectors=item_vec, item_bias=bias, offset=cfg.global_mean - centre,
        user_spread=cfg.user_spread, noise=cfg.noise, rating_range=(1.0, 5.0), rounded=cfg.round_ratings,
    )
    return RecDataset(
        name="synthetic",
        ratings=ratings,
        users=FeatureTable(
            categorical_fields=[CategoricalField(name, k + 1) for name, k in USER_FIELDS],
            categorical=user_cat,
        ),
        items=_item_table(cfg.n_items, years, genres),
        user_ids=np.arange(1, cfg.n_users + 1, dtype=np.int64),
        item_ids=np.arange(1, cfg.n_items + 1, dtype=np.int64),
        item_year=years.astype(np.float64),
        rating_range=(1.0, 5.0),
        item_titles=[f"Synthetic item {i}" for i in range(1, cfg.n_items + 1)],
    ), truth


def _check(cfg: SyntheticConfig) -> None:
    def bad(msg: str) -> ConfigError:
        return ConfigError(f"data source 'synthetic': {msg}")

    for key in ("n_users", "n_items", "min_ratings", "latent_dim", "n_genres"):
        if getattr(cfg, key) < 1:
            raise bad(f"{key} must be at least 1, got {getattr(cfg, key)}")
    if not cfg.min_ratings <= cfg.max_ratings <= cfg.n_items:
        raise bad(
            f"need min_ratings <= max_ratings <= n_items, got {cfg.min_ratings}, {cfg.max_ratings}, {cfg.n_items}"
        )
    for key in ("user_spread", "prior_strength", "item_bias", "noise", "popularity"):
        if getattr(cfg, key) < 0:
            raise bad(f"{key} must not be negative, got {getattr(cfg, key)}")
    if cfg.seed < 0:
        raise bad(f"seed must not be negative, got {cfg.seed}")


def _user_categorical(rng: np.random.Generator, n_users: int) -> np.ndarray:
    cols = []
    for _, k in USER_FIELDS:
        codes = rng.integers(1, k + 1, size=n_users)
        codes[rng.random(n_users) < UNKNOWN_RATE] = 0
        cols.append(codes)
    return np.stack(cols, axis=1).astype(np.int64)


def _user_preferences(
    rng: np.random.Generator, cfg: SyntheticConfig, user_cat: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Feature prior (sum of per-value embeddings; unknown adds nothing), and it plus a personal deviation."""
    scale = cfg.prior_strength / np.sqrt(len(USER_FIELDS))
    prior = np.zeros((cfg.n_users, cfg.latent_dim))
    for j, (_, k) in enumerate(USER_FIELDS):
        emb = rng.normal(0.0, scale, size=(k + 1, cfg.latent_dim))
        emb[0] = 0.0
        prior += emb[user_cat[:, j]]
    return prior, prior + rng.normal(0.0, cfg.user_spread, size=(cfg.n_users, cfg.latent_dim))


def _item_genres(rng: np.random.Generator, n_items: int, n_genres: int) -> np.ndarray:
    """Each item gets 1-3 genres, some genres more common than others."""
    weights = rng.dirichlet(np.full(n_genres, 2.0))
    out = np.zeros((n_items, n_genres), dtype=np.float32)
    for i in range(n_items):
        k = min(int(rng.integers(1, 4)), n_genres)
        out[i, rng.choice(n_genres, size=k, replace=False, p=weights)] = 1.0
    return out


def _item_vectors(
    rng: np.random.Generator, cfg: SyntheticConfig, genres: np.ndarray, years: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Item latent vectors (genre mean + noise, first coordinate 1) and biases (slightly year-dependent)."""
    genre_emb = rng.normal(0.0, 1.0, size=(cfg.n_genres, cfg.latent_dim))
    vec = genres @ genre_emb / genres.sum(axis=1, keepdims=True)
    vec = 0.5 * vec + rng.normal(0.0, 0.3, size=vec.shape)
    vec[:, 0] = 1.0
    age = (LAST_YEAR - years) / (LAST_YEAR - FIRST_YEAR)
    bias = rng.normal(0.0, cfg.item_bias, size=cfg.n_items) + 0.2 * (age - 0.5)
    return vec, bias


def _ratings(
    rng: np.random.Generator, cfg: SyntheticConfig, pref: np.ndarray, item_vec: np.ndarray, bias: np.ndarray
) -> tuple[pd.DataFrame, float]:
    """Sample who rates what (popularity-skewed), when (increasing times) and the rating values; and the
    centring constant ``c``."""
    rank = rng.permutation(cfg.n_items)
    pop = (rank + 1.0) ** -cfg.popularity
    pop /= pop.sum()
    counts = rng.integers(cfg.min_ratings, cfg.max_ratings + 1, size=cfg.n_users)
    users = np.repeat(np.arange(cfg.n_users), counts)
    items = np.concatenate([rng.choice(cfg.n_items, size=k, replace=False, p=pop) for k in counts])
    start = rng.uniform(0, 0.75 * TIME_SPAN_S, size=cfg.n_users)
    times = start[users] + rng.uniform(0, 0.25 * TIME_SPAN_S, size=len(users))
    raw = bias[items] + np.einsum("nd,nd->n", pref[users], item_vec[items])
    centre = float(raw.mean())
    score = cfg.global_mean + raw - centre  # centred so that the mean rating is near global_mean
    rating = np.clip(score + rng.normal(0.0, cfg.noise, size=len(users)), 1.0, 5.0)
    if cfg.round_ratings:
        rating = np.round(rating)
    order = np.argsort(times, kind="stable")
    ts = START_TIME + np.floor(times[order]).astype(np.int64) + np.arange(len(order), dtype=np.int64)
    return pd.DataFrame(
        {"user": users[order], "item": items[order], "rating": rating[order], "timestamp": ts}
    ).astype({"user": np.int64, "item": np.int64, "rating": np.float64}), centre


def _item_table(n_items: int, years: np.ndarray, genres: np.ndarray) -> FeatureTable:
    year_code = (years - FIRST_YEAR) // YEAR_BUCKET + 1
    year_card = (LAST_YEAR - FIRST_YEAR) // YEAR_BUCKET + 2
    return FeatureTable(
        categorical_fields=[CategoricalField("item_id", n_items + 1), CategoricalField("release_year", year_card)],
        categorical=np.stack([np.arange(1, n_items + 1), year_code], axis=1).astype(np.int64),
        multihot_fields=[MultiHotField("genre", genres.shape[1], values=tuple(f"genre {g}" for g in range(genres.shape[1])))],
        multihot=genres,
    )
