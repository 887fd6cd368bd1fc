"""What checkpoint selection, early stopping and ``metarec tune`` watch: ``trainer.monitor``.

Always a metric of the validation users (``val/user_cold/...``, see :mod:`metarec.data.scenarios`):

- ``auto`` (default): their MAE for ratings; their loss (BCE or sampled softmax, proper scoring rules,
  unlike MAE on probabilities) for binary labels;
- ``mae``, ``rmse`` (ratings only) or ``loss``: lower is better;
- ``full_recall@K``, ``full_ndcg@K``, ``full_hitrate@K`` with K in ``data.ranking_ks``: their full-ranking
  metric over the catalogue, higher is better. The learner then also ranks the catalogue for every
  validation user after each epoch — the choice for a top-k study, where a model selected on MAE is
  selected for the wrong job.

Light (no torch import): the config checks read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from metarec.data.scenarios import VAL_SCENARIO
from metarec.errors import ConfigError

RANKING = ("full_recall", "full_ndcg", "full_hitrate")
LOWER = ("mae", "rmse", "loss")


@dataclass(frozen=True)
class Monitor:
    key: str  # the logged metric, e.g. val/user_cold/mae
    mode: str  # min | max

    @property
    def ranking(self) -> bool:
        """True when the metric is a full-ranking one (the validation pass must rank the catalogue)."""
        return self.key.rsplit("/", 1)[-1].startswith("full_")

    @property
    def direction(self) -> str:
        """Optuna's name for ``mode``."""
        return "minimize" if self.mode == "min" else "maximize"


def monitor_for(setting: str, loss: str, ranking_ks: Sequence[int] = ()) -> Monitor:
    """The metric ``trainer.monitor = setting`` names, for training loss ``loss`` (``mse`` for ratings)
    and the full-ranking cut-offs ``ranking_ks``; a one-line ``ConfigError`` for a name it cannot be."""
    setting = str(setting)
    binary = loss not in ("mse", "mae")  # learners.base.RATING_LOSSES (not imported: no torch here)
    if setting == "auto":
        name = "loss" if binary else "mae"
    elif setting in LOWER:
        if binary and setting != "loss":
            raise ConfigError(f"trainer.monitor={setting} is a rating error, and these data are binary labels "
                              "(data.negatives): use loss, auto or a full-ranking metric")
        name = setting
    else:
        base, _, k = setting.partition("@")
        ks = [int(x) for x in ranking_ks]
        if base not in RANKING or not k.isdigit():
            known = ", ".join(["auto", *LOWER, *(f"{m}@K" for m in RANKING)])
            raise ConfigError(f"trainer.monitor must be one of {known}, got {setting!r}")
        if int(k) not in ks:
            raise ConfigError(f"trainer.monitor={setting}: K={k} is not in data.ranking_ks ({ks or 'empty: full ranking is off'})")
        return Monitor(f"val/{VAL_SCENARIO}/{base}@{int(k)}", "max")
    return Monitor(f"val/{VAL_SCENARIO}/{name}", "min")


__all__ = ["Monitor", "monitor_for", "RANKING"]
