"""The standard set of cold-start evaluation metrics as one ``MetricCollection``."""

from __future__ import annotations

from torchmetrics import MetricCollection

from metarec.metrics.ranking import QueryNDCG
from metarec.metrics.rating import UserMAE, UserRMSE


def rating_metrics() -> MetricCollection:
    """Metrics ``"mae"``, ``"rmse"``, ``"ndcg@1"``, ``"ndcg@3"``, each updated with ``(preds, target, mask)``.

    ``compute_groups`` is off: torchmetrics would merge metrics whose states are equal after the first
    update (e.g. MAE and RMSE when every error is 0 or 1, or nDCG@1 and nDCG@3 on a perfect ranking), and
    then report one metric's value for both on all later batches.
    """
    return MetricCollection(
        {"mae": UserMAE(), "rmse": UserRMSE(), "ndcg@1": QueryNDCG(k=1), "ndcg@3": QueryNDCG(k=3)},
        compute_groups=False,
    )
