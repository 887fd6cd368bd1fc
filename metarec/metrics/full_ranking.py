"""Full-ranking metrics: after adaptation, every candidate item is scored and ranked for each user.

Inputs are dense ``[T, I]``: ``scores`` (non-candidates must hold ``-inf``) and ``relevant`` (bool: the
user's held-out positives among the candidates). Binary relevance:

- ``Recall@k`` = relevant items in the top k / relevant items;
- ``nDCG@k`` = sum over the top k of rel_i / log2(i + 1), divided by its ideal value (all relevant first);
- ``HitRate@k`` = 1 if any relevant item is in the top k.

Users without a relevant item are not counted. Tied scores keep ``torch.topk``'s order (tests avoid
ties). Everything is vectorised; torchmetrics' retrieval metrics are the test oracle.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metarec.metrics.rating import PerUserMean

KINDS = ("recall", "ndcg", "hitrate")


def topk_hits(scores: Tensor, relevant: Tensor, k: int) -> Tensor:
    """``[T, k']`` 0/1 hits of the top ``k' = min(k, I)`` items by score."""
    k = min(k, scores.shape[-1])
    idx = torch.topk(scores, k, dim=-1).indices
    return relevant.gather(-1, idx).to(scores.dtype)


def full_ranking(scores: Tensor, relevant: Tensor, k: int, kind: str) -> Tensor:
    """Per-user ``kind``@``k`` ``[T]``; NaN for users with no relevant item."""
    rel = relevant.bool()
    n_rel = rel.sum(-1).to(scores.dtype)
    hits = topk_hits(scores, rel, k)
    if kind == "recall":
        value = hits.sum(-1) / n_rel
    elif kind == "hitrate":
        value = (hits.sum(-1) > 0).to(scores.dtype)
    elif kind == "ndcg":
        disc = 1.0 / torch.log2(torch.arange(2, hits.shape[-1] + 2, device=scores.device, dtype=scores.dtype))
        dcg = (hits * disc).sum(-1)
        ideal_n = torch.clamp(n_rel, max=hits.shape[-1]).long()
        cum = torch.cat([torch.zeros(1, device=scores.device, dtype=scores.dtype), disc.cumsum(0)])
        value = dcg / cum[ideal_n]
    else:
        raise ValueError(f"unknown full-ranking metric {kind!r} (known: {', '.join(KINDS)})")
    return torch.where(n_rel > 0, value, torch.full_like(value, float("nan")))


class FullRanking(PerUserMean):
    """Mean over users (with at least one relevant item) of ``kind``@``k``."""

    higher_is_better = True

    def __init__(self, kind: str, k: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if kind not in KINDS or k < 1:
            raise ValueError(f"FullRanking needs kind in {KINDS} and k >= 1, got {kind!r}, {k}")
        self.kind, self.k = kind, k

    def update(self, scores: Tensor, relevant: Tensor) -> None:  # type: ignore[override]
        super().update(scores, relevant.to(scores.dtype), relevant.bool())

    def per_user(self, preds: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        return full_ranking(preds, mask, self.k, self.kind)


def full_ranking_metrics(ks=(5, 10, 20)) -> dict[str, FullRanking]:
    """Named ``full_recall@k``, ``full_ndcg@k``, ``full_hitrate@k`` (``ndcg@k`` alone is the query-set
    nDCG of MeLU's protocol)."""
    return {f"full_{kind}@{k}": FullRanking(kind, k) for k in ks for kind in KINDS}
