"""Tests for metarec.metrics: hand-computed cases, torchmetrics oracles, accumulation and reduction."""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import pytest
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional import mean_absolute_error, mean_squared_error
from torchmetrics.functional.retrieval import retrieval_normalized_dcg

from metarec.metrics import (
    QueryNDCG,
    UserMAE,
    UserRMSE,
    query_ndcg,
    rating_metrics,
    user_mae,
    user_rmse,
)

T_, F_ = True, False
Batch = tuple[Tensor, Tensor, Tensor]


def _t(rows: list[list[float]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def _close(actual: Tensor | float, expected: float, tol: float = 1e-5) -> None:
    assert float(actual) == pytest.approx(expected, rel=tol, abs=tol)


# Three users; padding holds 9 / 99 so that including it would visibly change every result.
RATING_BATCH: Batch = (
    _t([[1, 2, 3, 99], [4, 99, 99, 99], [99, 99, 99, 99]]),
    _t([[2, 2, 5, 9], [1, 9, 9, 9], [9, 9, 9, 9]]),
    torch.tensor([[T_, T_, T_, F_], [T_, F_, F_, F_], [F_, F_, F_, F_]]),
)


def _random_batch(gen: torch.Generator, users: int = 40, queries: int = 7, zero_rows: int = 5) -> Batch:
    """Random padded batch: distinct preds, integer ratings 1..5, a few empty and all-zero-rating users."""
    preds = torch.rand(users, queries, generator=gen) * 4 + 1
    target = torch.randint(1, 6, (users, queries), generator=gen).float()
    target[:zero_rows] = 0.0  # ideal DCG 0 for these users
    lengths = torch.randint(0, queries + 1, (users,), generator=gen)
    lengths[zero_rows] = 0  # at least one empty user
    mask = torch.arange(queries)[None, :] < lengths[:, None]
    # Padding is not always at the end: shuffle each row's mask.
    perm = torch.argsort(torch.rand(users, queries, generator=gen), dim=1)
    mask = mask.gather(1, perm)
    preds = torch.where(mask, preds, torch.full_like(preds, 1e6))
    return preds, target, mask


# ---------------------------------------------------------------------------------------------- rating


def test_user_mae_rmse_hand_computed_and_per_user_not_pooled() -> None:
    preds, target, mask = RATING_BATCH
    # user 0: errors |1-2|=1, |2-2|=0, |3-5|=2 -> MAE 3/3 = 1, MSE (1+0+4)/3 = 5/3, RMSE sqrt(5/3)
    # user 1: error |4-1|=3 -> MAE 3, RMSE 3;  user 2: empty -> NaN, ignored by the metrics
    mae, rmse = user_mae(preds, target, mask), user_rmse(preds, target, mask)
    _close(mae[0], 1.0)
    _close(mae[1], 3.0)
    _close(rmse[0], math.sqrt(5 / 3))
    _close(rmse[1], 3.0)
    assert torch.isnan(mae[2]) and torch.isnan(rmse[2])

    m_mae, m_rmse = UserMAE(), UserRMSE()
    m_mae.update(preds, target, mask)
    m_rmse.update(preds, target, mask)
    # per-user averages over 2 users
    _close(m_mae.compute(), (1 + 3) / 2)  # = 2.0
    _close(m_rmse.compute(), (math.sqrt(5 / 3) + 3) / 2)  # = 2.1455
    # pooled averages over the 4 entries would be different:
    pooled_mae = (1 + 0 + 2 + 3) / 4  # = 1.5
    pooled_rmse = math.sqrt((1 + 0 + 4 + 9) / 4)  # = 1.8708
    assert abs(float(m_mae.compute()) - pooled_mae) > 0.4
    assert abs(float(m_rmse.compute()) - pooled_rmse) > 0.2
    assert int(m_mae.users) == 2  # the empty third row is not counted


def test_rating_metrics_match_torchmetrics_per_user() -> None:
    gen = torch.Generator().manual_seed(0)
    preds, target, mask = _random_batch(gen)
    mae, rmse = user_mae(preds, target, mask), user_rmse(preds, target, mask)
    oracle_mae, oracle_rmse = [], []
    for u in range(preds.shape[0]):
        m = mask[u]
        if not m.any():
            assert torch.isnan(mae[u]) and torch.isnan(rmse[u])
            continue
        want_mae = mean_absolute_error(preds[u][m], target[u][m])
        want_rmse = mean_squared_error(preds[u][m], target[u][m]).sqrt()
        torch.testing.assert_close(mae[u], want_mae)
        torch.testing.assert_close(rmse[u], want_rmse)
        oracle_mae.append(want_mae)
        oracle_rmse.append(want_rmse)
    for metric, oracle in ((UserMAE(), oracle_mae), (UserRMSE(), oracle_rmse)):
        metric.update(preds, target, mask)
        torch.testing.assert_close(metric.compute(), torch.stack(oracle).mean())


# --------------------------------------------------------------------------------------------- ranking


def test_query_ndcg_hand_computed() -> None:
    # preds [0.9, 0.1, 0.5], ratings [3, 5, 1] -> gains [7, 31, 1]
    # ranked by preds: item0 (7), item2 (1), item1 (31); ideal order: 31, 7, 1
    preds = _t([[0.9, 0.1, 0.5]])
    target = _t([[3, 5, 1]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    dcg3 = 7 / math.log2(2) + 1 / math.log2(3) + 31 / math.log2(4)  # 23.1309
    idcg3 = 31 / math.log2(2) + 7 / math.log2(3) + 1 / math.log2(4)  # 35.9165
    _close(query_ndcg(preds, target, mask, k=3)[0], dcg3 / idcg3)  # 0.6440
    _close(query_ndcg(preds, target, mask, k=1)[0], 7 / 31)  # 0.2258
    dcg2 = 7 + 1 / math.log2(3)
    idcg2 = 31 + 7 / math.log2(3)
    _close(query_ndcg(preds, target, mask, k=2)[0], dcg2 / idcg2)


def test_query_ndcg_k_larger_than_query_set_uses_all_items() -> None:
    # 2 real items, 2 padded: preds [0.2, 0.8], ratings [4, 2] -> gains [15, 3]; ranked: 3, 15; ideal: 15, 3
    preds = _t([[0.2, 0.8, 50.0, 60.0]])
    target = _t([[4, 2, 5, 5]])
    mask = torch.tensor([[T_, T_, F_, F_]])
    want = (3 + 15 / math.log2(3)) / (15 + 3 / math.log2(3))
    for k in (2, 3, 10):
        _close(query_ndcg(preds, target, mask, k=k)[0], want)


def test_query_ndcg_padding_never_ranked() -> None:
    # Padded entries anywhere in the row, with preds above or equal to real preds, and padded values filled
    # with a score (0) above the real (negative) preds: user's real items are [-1 -> r=1, -2 -> r=5].
    preds = _t([[5.0, -1.0, 1e9, -2.0]])
    target = _t([[0, 1, 5, 5]])
    mask = torch.tensor([[F_, T_, F_, T_]])
    # ranked: gain 1 then gain 31 -> nDCG@1 = 1/31, nDCG@2 = (1 + 31/log2 3) / (31 + 1/log2 3)
    _close(query_ndcg(preds, target, mask, k=1)[0], 1 / 31)
    _close(query_ndcg(preds, target, mask, k=2)[0], (1 + 31 / math.log2(3)) / (31 + 1 / math.log2(3)))
    # Same user without padding gives the same value.
    dense = query_ndcg(_t([[-1.0, -2.0]]), _t([[1, 5]]), torch.ones(1, 2, dtype=torch.bool), k=2)
    _close(dense[0], float(query_ndcg(preds, target, mask, k=2)[0]))


def test_query_ndcg_ties_broken_by_position() -> None:
    preds = _t([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    target = _t([[1, 5, 3], [5, 1, 3]])  # gains [1, 31, 7] and [31, 1, 7]
    mask = torch.ones(2, 3, dtype=torch.bool)
    first = query_ndcg(preds, target, mask, k=1)
    # The tied items keep their row order, so the first item is ranked first.
    _close(first[0], 1 / 31)
    _close(first[1], 31 / 31)
    for _ in range(5):
        torch.testing.assert_close(query_ndcg(preds, target, mask, k=1), first)
    # k=2, row 0: ranked gains 1, 31 -> (1 + 31/log2 3) / (31 + 7/log2 3)
    _close(query_ndcg(preds, target, mask, k=2)[0], (1 + 31 / math.log2(3)) / (31 + 7 / math.log2(3)))


def _reference_ndcg(preds: list[float], ratings: list[float], k: int) -> float:
    """Plain-Python nDCG@k; Python's sorted() is stable, so ties keep their row order."""
    gains = [2**r - 1 for r in ratings]
    ranked = sorted(range(len(preds)), key=lambda i: -preds[i])
    dcg = sum(gains[i] / math.log2(pos + 2) for pos, i in enumerate(ranked[:k]))
    idcg = sum(g / math.log2(pos + 2) for pos, g in enumerate(sorted(gains, reverse=True)[:k]))
    return dcg / idcg if idcg > 0 else 0.0


def test_query_ndcg_many_ties_match_stable_reference() -> None:
    # Long rows with only three distinct preds: large enough that an unstable sort reorders ties.
    gen = torch.Generator().manual_seed(6)
    preds = torch.randint(0, 3, (8, 120), generator=gen).float()
    target = torch.randint(0, 6, (8, 120), generator=gen).float()
    mask = torch.rand(8, 120, generator=gen) < 0.8
    for k in (1, 5, 50):
        got = query_ndcg(preds, target, mask, k=k)
        for u in range(8):
            m = mask[u]
            _close(got[u], _reference_ndcg(preds[u][m].tolist(), target[u][m].tolist(), k))


def test_query_ndcg_zero_ideal_is_zero_and_counted_empty_ignored() -> None:
    preds = _t([[0.9, 0.1], [0.3, 0.2], [0.0, 0.0]])
    target = _t([[5, 1], [0, 0], [4, 4]])
    mask = torch.tensor([[T_, T_], [T_, T_], [F_, F_]])
    per_user = query_ndcg(preds, target, mask, k=2)
    _close(per_user[0], 1.0)  # perfect ranking
    _close(per_user[1], 0.0)  # every rating 0 -> ideal DCG 0 -> nDCG 0
    assert torch.isnan(per_user[2])  # empty user
    metric = QueryNDCG(k=2)
    metric.update(preds, target, mask)
    _close(metric.compute(), (1.0 + 0.0) / 2)  # two users counted, the empty one not
    assert int(metric.users) == 2


@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_query_ndcg_matches_torchmetrics(k: int) -> None:
    """Oracle: torchmetrics' retrieval_normalized_dcg with gains 2**r - 1 given as relevance.

    torchmetrics uses the target as a linear gain with discount 1/log2(rank + 1) and returns 0 when the
    ideal DCG is 0, as we do. It differs on ties in preds: it averages the gains of tied items (sklearn's
    convention) where we break ties by position; the random preds here are continuous and checked distinct
    per user, so the comparison does not depend on tie handling (see the next test).
    """
    gen = torch.Generator().manual_seed(k)
    preds, target, mask = _random_batch(gen)
    got = query_ndcg(preds, target, mask, k=k)
    oracle = []
    for u in range(preds.shape[0]):
        m = mask[u]
        if not m.any():
            assert torch.isnan(got[u])
            continue
        p, r = preds[u][m], target[u][m]
        assert p.unique().numel() == p.numel()
        want = retrieval_normalized_dcg(p, 2**r - 1, top_k=k)
        torch.testing.assert_close(got[u], want, rtol=1e-5, atol=1e-6)
        oracle.append(want)
    metric = QueryNDCG(k=k)
    metric.update(preds, target, mask)
    torch.testing.assert_close(metric.compute(), torch.stack(oracle).mean(), rtol=1e-5, atol=1e-6)


def test_torchmetrics_tie_convention_differs() -> None:
    """Documents why the oracle data has no tied preds: torchmetrics averages gains over ties."""
    preds, target = _t([[0.5, 0.5]]), _t([[5, 1]])  # gains 31, 1
    ours = query_ndcg(preds, target, torch.ones(1, 2, dtype=torch.bool), k=1)[0]
    theirs = retrieval_normalized_dcg(preds[0], 2 ** target[0] - 1, top_k=1)
    _close(ours, 1.0)  # first position wins the tie
    _close(theirs, (31 + 1) / 2 / 31)  # tied gains averaged


# ------------------------------------------------------------------------------- accumulation, reduction

FACTORIES: dict[str, Callable[..., Metric]] = {
    "mae": UserMAE,
    "rmse": UserRMSE,
    "ndcg@1": lambda **kw: QueryNDCG(k=1, **kw),
    "ndcg@3": lambda **kw: QueryNDCG(k=3, **kw),
}


def _pad_columns(batch: Batch, extra: int) -> Batch:
    preds, target, mask = batch
    rows = preds.shape[0]
    return (
        torch.cat([preds, torch.full((rows, extra), 7.0)], dim=1),
        torch.cat([target, torch.full((rows, extra), 3.0)], dim=1),
        torch.cat([mask, torch.zeros(rows, extra, dtype=torch.bool)], dim=1),
    )


@pytest.mark.parametrize("name", list(FACTORIES))
def test_accumulation_equals_single_update(name: str) -> None:
    gen = torch.Generator().manual_seed(1)
    batch = _random_batch(gen, users=30)
    whole = FACTORIES[name]()
    whole.update(*batch)
    parts = FACTORIES[name]()
    for i, rows in enumerate(torch.arange(30).split([7, 13, 10])):
        # Different padded widths per update must not matter either.
        parts.update(*_pad_columns(tuple(x[rows] for x in batch), extra=i))  # type: ignore[arg-type]
    torch.testing.assert_close(parts.compute(), whole.compute())
    assert int(parts.users) == int(whole.users)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_two_rank_reduction_equals_one_metric_over_all_users(name: str) -> None:
    """Runs torchmetrics' own sync path with a fake all_gather that returns both "ranks'" states."""
    gen = torch.Generator().manual_seed(2)
    batch0, batch1 = _random_batch(gen, users=30), _random_batch(gen, users=3, zero_rows=0)
    rank1 = FACTORIES[name]()
    rank1.update(*batch1)

    def fake_all_gather(tensor: Tensor, group: Any = None) -> list[Tensor]:
        for state in rank0._defaults:
            if getattr(rank0, state) is tensor:
                return [tensor, getattr(rank1, state)]
        raise AssertionError("unexpected tensor to gather")

    rank0 = FACTORIES[name](dist_sync_fn=fake_all_gather, distributed_available_fn=lambda: True)
    rank0.update(*batch0)
    local0, local1 = float(rank0.total / rank0.users), float(rank1.compute())
    reduced = rank0.compute()

    everyone = FACTORIES[name]()
    everyone.update(*batch0)
    everyone.update(*batch1)
    torch.testing.assert_close(reduced, everyone.compute())
    # The unequal user counts (≈25 vs 3) make an average of per-rank averages a different number.
    assert abs(float(reduced) - (local0 + local1) / 2) > 1e-4


def test_zero_users_compute_nan() -> None:
    for factory in FACTORIES.values():
        metric = factory()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchmetrics warns about compute() before update()
            assert torch.isnan(metric.compute())
        metric.update(_t([[1.0, 2.0]]), _t([[3.0, 4.0]]), torch.zeros(1, 2, dtype=torch.bool))
        assert torch.isnan(metric.compute())
        metric.update(torch.empty(0, 3), torch.empty(0, 3), torch.empty(0, 3, dtype=torch.bool))
        assert torch.isnan(metric.compute())


def test_input_validation() -> None:
    preds, target, mask = RATING_BATCH
    with pytest.raises(ValueError, match="same shape"):
        user_mae(preds, target[:, :2], mask)
    with pytest.raises(ValueError, match="bool"):
        user_rmse(preds, target, mask.float())
    with pytest.raises(ValueError, match="2-D"):
        query_ndcg(preds[0], target[0], mask[0], k=1)
    for bad_k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive int"):
            QueryNDCG(k=bad_k)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ collection


def test_rating_metrics_collection() -> None:
    coll = rating_metrics()
    assert set(coll.keys()) == {"mae", "rmse", "ndcg@1", "ndcg@3"}
    gen = torch.Generator().manual_seed(3)
    batches = [_random_batch(gen, users=12) for _ in range(3)]
    for b in batches:
        coll.update(*b)
    result = coll.compute()
    assert set(result) == {"mae", "rmse", "ndcg@1", "ndcg@3"}
    for name, factory in FACTORIES.items():
        single = factory()
        for b in batches:
            single.update(*b)
        assert result[name].ndim == 0
        torch.testing.assert_close(result[name], single.compute())
    coll.reset()
    coll.update(*RATING_BATCH)
    _close(coll.compute()["mae"], 2.0)


def test_rating_metrics_collection_does_not_merge_equal_states() -> None:
    """A perfect first batch gives equal states for mae/rmse and for ndcg@1/ndcg@3; they must stay apart."""
    coll = rating_metrics()
    target = _t([[5, 3, 1], [4, 2, 1]])
    mask = torch.ones(2, 3, dtype=torch.bool)
    coll.update(target.clone(), target, mask)  # errors 0, rankings perfect
    gen = torch.Generator().manual_seed(4)
    second = _random_batch(gen, users=10, zero_rows=0)
    coll.update(*second)
    result = coll.compute()
    for name, factory in FACTORIES.items():
        single = factory()
        single.update(target.clone(), target, mask)
        single.update(*second)
        torch.testing.assert_close(result[name], single.compute())
    assert float(result["mae"]) != pytest.approx(float(result["rmse"]))
    assert float(result["ndcg@1"]) != pytest.approx(float(result["ndcg@3"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    gen = torch.Generator().manual_seed(5)
    batch = _random_batch(gen)
    cpu, gpu = rating_metrics(), rating_metrics().to("cuda")
    cpu.update(*batch)
    gpu.update(*(x.cuda() for x in batch))
    want, got = cpu.compute(), gpu.compute()
    for name in want:
        torch.testing.assert_close(got[name].cpu(), want[name])
