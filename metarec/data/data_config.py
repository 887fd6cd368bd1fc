"""The ``data`` section's options, :class:`DataConfig`: a leaf module (no torch, no Lightning), so that
``metarec fit --print-config`` validates the data section without importing either.
:mod:`metarec.data.datamodule` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from metarec.data.negatives import NegativeConfig
from metarec.data.splits import SplitConfig
from metarec.data.text import TextConfig
from metarec.errors import ConfigError


# full: a training episode's support is every rating of the user that is not in its query; loguniform: cut
# to k ratings, k drawn log-uniformly from 1..n (n: the full support) per episode, seeded by (seed, epoch,
# user) -- so meta-training sees the small supports that cold-start evaluation (eval_support_sizes) asks about;
# mixed: half the episodes (a seeded coin per seed, epoch and user) full, the others loguniform -- small
# supports are common and the full support is too (under loguniform a support near n is rare).
TRAIN_SUPPORT = ("full", "loguniform", "mixed")
# explicit ratings: the loss of the training objective (the query ratings of meta-training, every rating of a
# global model): mse, or mae (absolute error: the predictions aim at each rating's median, which is what MAE
# rewards; the mean is what squared error rewards). Inner loops keep the squared error of the support.
RATING_LOSSES = ("mse", "mae")


@dataclass
class DataConfig:
    source: str = "synthetic"
    root: Optional[str] = None
    params: Any = field(default_factory=dict)
    split: SplitConfig = field(default_factory=SplitConfig)
    manifest: Optional[str] = None
    meta_batch_size: int = 32
    eval_batch_size: int = 64
    eval_support_sizes: list[int] = field(default_factory=list)  # extra test passes: support cut to K
    # after training, passes over the validation users with their supports cut to K (val_kK/user_cold/...,
    # full-ranking metrics too): settings for small supports can be chosen without reading test users
    val_support_sizes: list[int] = field(default_factory=list)
    # validation episodes per validation user: the split's fixed one, and with F > 1 up to F - 1 more whose
    # queries are the user's next query_size ratings in turn (the rest the support, as long as the split's
    # episode): F times the validation ratings for early stopping, checkpoints and tuning, from the same
    # users. Test episodes are untouched.
    val_folds: int = 1
    ranking_ks: list[int] = field(default_factory=lambda: [5, 10, 20])  # full-ranking Recall/nDCG/HitRate@k
    relevance_threshold: float = 4.0  # full ranking: query ratings >= this are relevant (explicit data)
    negatives: NegativeConfig = field(default_factory=NegativeConfig)  # per_positive > 0: implicit feedback, BCE
    text: TextConfig = field(default_factory=TextConfig)  # enabled: item text embeddings as a dense item field
    num_workers: int = 0
    hide_new_item_ids: bool = True
    item_id_dropout: float = 0.0  # training: hide each item's id with this probability (learn to use content)
    train_support: str = "full"  # training episodes' support: full (every non-query rating) | loguniform (cut) | mixed (see above)
    # rating metrics and Recommender.predict: snap every learner's clipped prediction to the nearest rating
    # value of the training data (whole stars, half stars). With a symmetric predictive distribution that is
    # the absolute-error optimum (the median of a rounded rating is the rounded median): MAE falls, RMSE
    # rises, the order of the predictions is kept. Explicit ratings on a grid only.
    rating_grid: bool = False
    rating_loss: str = "mse"  # explicit ratings: the training objective's loss, mse | mae (RATING_LOSSES above)

    def __post_init__(self) -> None:
        if self.rating_loss not in RATING_LOSSES:
            raise ConfigError(f"data.rating_loss must be one of {', '.join(RATING_LOSSES)}, got {self.rating_loss!r}")
        if self.train_support not in TRAIN_SUPPORT:
            raise ConfigError(f"data.train_support must be one of {', '.join(TRAIN_SUPPORT)}, got {self.train_support!r}")
        if not 0.0 <= self.item_id_dropout < 1.0:
            raise ConfigError(f"data.item_id_dropout must be in [0, 1), got {self.item_id_dropout}")
