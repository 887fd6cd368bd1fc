"""Per-user (per-task) metrics on padded query sets ``preds``/``target``/``mask`` of shape ``[T, Q]``."""

from metarec.metrics.collection import rating_metrics
from metarec.metrics.ranking import QueryNDCG, query_ndcg
from metarec.metrics.rating import PerUserMean, UserMAE, UserRMSE, user_mae, user_rmse

__all__ = [
    "PerUserMean",
    "QueryNDCG",
    "UserMAE",
    "UserRMSE",
    "query_ndcg",
    "rating_metrics",
    "user_mae",
    "user_rmse",
]
