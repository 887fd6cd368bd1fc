"""Tables of finished runs: mean ± sample standard deviation over seeds, per learner and scenario."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable

from metarec.data.splits import SCENARIOS

DEFAULT_METRICS = ("mae", "rmse", "ndcg@3")


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


def markdown_table(records: list[dict[str, Any]], metrics=DEFAULT_METRICS, stage: str = "test") -> str:
    """One row per learner, one column per scenario x metric: ``mean ± std (n)``."""
    agg = aggregate(records)
    present = {k.split("/")[1] for r in records for k in r["metrics"] if k.startswith(stage + "/")}
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
