"""Tables of finished runs: mean ± sample standard deviation (or confidence interval) over seeds."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable

from metarec.data.splits import SCENARIOS

DEFAULT_METRICS = ("mae", "rmse", "ndcg@3")
# full-ranking metrics, added as columns when some run has them (the only metrics of learners that
# predict no ratings, e.g. itemknn and ease, whose rating cells show "–")
RANKING_METRICS = ("full_recall@10",)


def aggregate(records: Iterable[dict[str, Any]], key: str = "learner") -> dict[str, dict[str, list[float]]]:
    """``{group: {metric_name: [value per run]}}``."""
    out: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        for name, value in r["metrics"].items():
            out[r[key]][name].append(value)
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def markdown_table(records: list[dict[str, Any]], metrics=None, stage: str = "test") -> str:
    """One row per learner, one column per scenario x metric: ``mean ± std (n)``; "–" where a learner has
    no value (e.g. rating metrics of a learner that only ranks). ``metrics``: default ``DEFAULT_METRICS``
    plus those of ``RANKING_METRICS`` some run has."""
    records = list(records)
    agg = aggregate(records)
    present = {k.split("/")[1] for r in records for k in r["metrics"] if k.startswith(stage + "/")}
    if metrics is None:
        names = {k.split("/")[-1] for r in records for k in r["metrics"] if k.startswith(stage + "/")}
        metrics = (*DEFAULT_METRICS, *(m for m in RANKING_METRICS if m in names))
    scenarios = [s for s in SCENARIOS if s in present]
    header = ["learner", "runs"] + [f"{s} {m.upper() if m in ('mae', 'rmse') else m}" for s in scenarios for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for learner in sorted(agg):
        cells = [learner]
        runs = max((len(v) for v in agg[learner].values()), default=0)
        cells.append(str(runs))
        for s in scenarios:
            for m in metrics:
                values = agg[learner].get(f"{stage}/{s}/{m}")
                if not values:
                    cells.append("–")
                    continue
                mean, std = mean_std(values)
                cells.append(f"{mean:.4f} ± {std:.4f}" if len(values) > 1 else f"{mean:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_ci(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width ``h`` of its Student-t confidence interval (``mean ± h``).

    ``h = t.ppf((1 + confidence) / 2, n - 1) * s / sqrt(n)`` with ``s`` the sample standard deviation;
    ``h`` is NaN for fewer than two values (no interval), and both are NaN for none.
    """
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean, std = mean_std(list(values))
    if n < 2:
        return mean, math.nan
    from scipy.stats import t

    return mean, float(t.ppf((1.0 + confidence) / 2.0, n - 1)) * std / math.sqrt(n)
