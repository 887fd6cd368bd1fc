"""nDCG@k inside each user's query set (MeLU's definition), vectorised over padded ``[T, Q]`` batches.

Definition, per user with query items ``i`` (mask True) and true ratings ``r_i``:

* gain ``2**r_i - 1``; discount ``1 / log2(rank + 1)`` with ranks starting at 1;
* DCG@k sums gain x discount over the first ``k`` items ranked by ``preds`` descending; ties in ``preds``
  are broken by position in the row (earlier first, a stable sort), so the result is deterministic;
* IDCG@k is the same sum with items ordered by true rating descending;
* nDCG@k = DCG@k / IDCG@k. If ``k`` exceeds the user's query count, all its items are used.
* A user whose IDCG is 0 (every true rating 0) gets nDCG 0 and is still counted in the average.
  Targets are expected to be non-negative (ratings), so gains are non-negative.

Padded entries are never ranked; users with an empty mask row get NaN from :func:`query_ndcg` and are
ignored by :class:`QueryNDCG`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from metarec.metrics.rating import PerUserMean, _check_inputs


def _rank_order(scores: Tensor, mask: Tensor) -> Tensor:
    """Per-row permutation ``[T, Q]``: masked entries by ``scores`` descending, ties by position, padding last."""
    filled = torch.where(mask, scores, torch.zeros_like(scores))
    by_score = torch.sort(filled, dim=1, descending=True, stable=True).indices
    # A second stable sort on the mask moves padded entries to the end, keeping the score order.
    by_mask = torch.sort(mask.gather(1, by_score).to(torch.uint8), dim=1, descending=True, stable=True).indices
    return by_score.gather(1, by_mask)


def query_ndcg(preds: Tensor, target: Tensor, mask: Tensor, k: int) -> Tensor:
    """Per-user nDCG@k ``[T]`` inside each query set; NaN for users with an empty mask row."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    preds, target, mask = _check_inputs(preds, target, mask)
    gain = torch.where(mask, torch.exp2(target) - 1, torch.zeros_like(target))
    n_queries = preds.shape[1]
    rank = torch.arange(1, n_queries + 1, device=preds.device, dtype=gain.dtype)
    discount = torch.where(rank <= k, 1.0 / torch.log2(rank + 1), torch.zeros_like(rank))
    dcg = (gain.gather(1, _rank_order(preds, mask)) * discount).sum(dim=1)
    idcg = (gain.gather(1, _rank_order(gain, mask)) * discount).sum(dim=1)
    ndcg = torch.where(idcg > 0, dcg / torch.where(idcg > 0, idcg, torch.ones_like(idcg)), torch.zeros_like(dcg))
    return torch.where(mask.any(dim=1), ndcg, torch.full_like(ndcg, float("nan")))


class QueryNDCG(PerUserMean):
    """Mean over users of nDCG@k inside each user's query set (see the module docstring)."""

    is_differentiable: bool = False
    higher_is_better: bool = True

    def __init__(self, k: int, **kwargs: Any) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        super().__init__(**kwargs)
        self.k = k

    def per_user(self, preds: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        return query_ndcg(preds, target, mask, self.k)
