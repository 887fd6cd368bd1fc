"""``benchmarks/oracle_fit.py``: the oracle's fold-in with item parameters fitted to training ratings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from metarec.data.oracle import oracle_mae
from metarec.data.sources.synthetic import SyntheticConfig, synthetic, synthetic_truth
from metarec.data.splits import Task


@pytest.fixture
def oracle_fit(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import oracle_fit

    return oracle_fit


def _tasks(ds, users) -> list[Task]:
    r = ds.ratings
    tasks = []
    for u, g in r[r.user.isin(users)].groupby("user"):
        items, ratings = g.item.to_numpy(), g.rating.to_numpy()
        tasks.append(Task(int(u), items[:10], ratings[:10], items[10:], ratings[10:]))
    return tasks


def test_more_training_users_fit_items_closer_to_the_truth(oracle_fit) -> None:
    """With the true items the fold-in is near the posterior oracle; items fitted to many training users
    come closer to that than items fitted to few, and both beat knowing nothing about the items."""
    cfg = SyntheticConfig(n_users=700, n_items=40, min_ratings=20, max_ratings=30, round_ratings=True)
    ds, truth = synthetic(cfg), synthetic_truth(cfg)
    test = _tasks(ds, range(600, 700))
    r = ds.ratings

    def fitted(n_train: int) -> float:
        train = r[r.user < n_train]
        fit = oracle_fit.fit_items(truth, train.user.to_numpy(), train.item.to_numpy(), train.rating.to_numpy(), 40)
        return oracle_fit.fitted_mae(truth, fit, ds, test)

    true_items = oracle_fit.fitted_mae(truth, (truth.item_vectors, truth.item_bias, truth.offset), ds, test)
    no_items = oracle_fit.fitted_mae(truth, (np.c_[np.ones(40), np.zeros((40, 3))], np.zeros(40), 3.5), ds, test)
    few, many = fitted(20), fitted(600)
    assert oracle_mae(truth, ds, test) <= true_items * 1.05  # the conjugate fold-in is close to the exact oracle
    assert true_items < many < few < no_items
    assert many < 1.1 * true_items
