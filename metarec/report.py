"""Tables of finished runs: mean ± sample standard deviation (or confidence interval) over seeds.

``metarec report`` (``render_report``) never averages unlike runs together: one table per data set and
loss, one row per configuration (every setting equal but the seed), cells mean ± 95% CI half-width.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from metarec.data.splits import SCENARIOS
from metarec.errors import DataError, MetarecError
from metarec.runs import METRICS_FILE, RESULT_NEUTRAL, config_difference

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


# ------------------------------------------------------------------------------- metarec report
# `metarec report` never averages unlike runs: a table per data set and loss, a row per configuration
# (every setting equal but the seed), cells mean ± 95% CI over the row's runs.
CONFIDENCE = 0.95
REPORT_METRICS = ("mae", "rmse", "ndcg@3", "full_recall@10", "full_ndcg@10")
RATING_ERRORS = ("mae", "rmse")  # errors of predicted ratings: left out of the tables of implicit feedback


@dataclass
class Run:
    """A finished run: its ``metrics.json`` record and its validated ``config.yaml``."""

    path: Path
    record: dict[str, Any]
    cfg: Any  # DictConfig

    @property
    def learner(self) -> str:
        return str(self.record["learner"])


@dataclass
class Row:
    label: str
    runs: list[Run]


@dataclass
class Table:
    title: str
    implicit: bool
    rows: list[Row] = field(default_factory=list)


def read_record(path: Path) -> dict[str, Any]:
    """The record of a ``metrics.json``; ``DataError`` (one line, naming nothing but the problem) if the
    file is not a JSON object with a ``learner`` name and a ``metrics`` mapping of numbers."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot be read ({e})") from None
    except ValueError as e:
        raise DataError(f"is not valid JSON ({e})") from None
    if not isinstance(record, dict):
        raise DataError(f"holds a JSON {type(record).__name__}, not an object")
    metrics = record.get("metrics")
    if not isinstance(metrics, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()
    ):
        raise DataError("has no 'metrics' mapping of numbers")
    if not isinstance(record.get("learner"), str):
        raise DataError("has no 'learner' name")
    return record


def _run_config(run_dir: Path):
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from metarec.config import validate_saved

    try:
        raw = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DataError(f"no readable config.yaml ({str(e).splitlines()[0] if str(e) else e})") from None
    if not isinstance(raw, dict):
        raise DataError("its config.yaml is not a mapping")
    try:
        return validate_saved(OmegaConf.create(raw))
    except (MetarecError, OmegaConfBaseException, ValueError, TypeError) as e:
        raise DataError(f"a config.yaml this version cannot read ({str(e).splitlines()[0]})") from None


def load_runs(roots: Iterable[str | Path]) -> tuple[list[Run], list[str]]:
    """The finished runs under ``roots`` (run folders or folders holding runs, searched recursively) and
    one warning line per run left out: a ``metrics.json`` that is not a run record (corrupt, truncated,
    edited), or a run whose ``config.yaml`` cannot be read. A root that does not exist is an error."""
    runs: list[Run] = []
    warnings: list[str] = []
    for root in roots:
        if not Path(root).exists():
            raise MetarecError(f"{root} does not exist")
        for path in sorted(Path(root).rglob(METRICS_FILE)):
            try:
                record = read_record(path)
            except DataError as e:
                warnings.append(f"skipped {path}: it {e}")
                continue
            try:
                cfg = _run_config(path.parent)
            except DataError as e:
                warnings.append(f"skipped {path.parent}: {e}")
                continue
            record["run_dir"] = str(path.parent)
            runs.append(Run(path.parent, record, cfg))
    return runs, warnings


def _partition(runs: list[Run], bucket: Callable[[Run], Any], ignored: tuple[str, ...]) -> list[list[Run]]:
    """Runs in groups whose settings are equal but for ``ignored`` ones (first seen first)."""
    groups: list[list[Run]] = []
    for run in runs:
        for group in groups:
            if bucket(group[0]) == bucket(run) and config_difference(group[0].path, run.cfg, ignored) is None:
                group.append(run)
                break
        else:
            groups.append([run])
    return groups


def _value(cfg, key: str) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key, default="<unset>")


def _labels(groups: list[list[Run]], names: list[str], ignored: tuple[str, ...]) -> list[str]:
    """``names``, made unique by the settings that tell equally named groups apart: ``maml`` and
    ``maml (learner.inner_steps=5)`` become ``maml (learner.inner_steps=1)`` and ``... =5``."""
    keys: dict[str, list[str]] = {}  # name -> distinguishing keys
    while True:
        labels = []
        for group, name in zip(groups, names):
            ks = keys.get(name, [])
            shown = ", ".join(f"{k}={_value(group[0].cfg, k)}" for k in ks)
            labels.append(f"{name} ({shown})" if shown else name)
        clash = next(((i, j) for i in range(len(labels)) for j in range(i) if labels[i] == labels[j]), None)
        if clash is None:
            return labels
        i, j = clash
        diff = config_difference(groups[j][0].path, groups[i][0].cfg, ignored)
        if diff is None or diff[0] in keys.get(names[i], []):
            return labels  # pragma: no cover - groups differ by construction
        keys.setdefault(names[i], []).append(diff[0])


def _feedback(cfg) -> tuple[bool, str]:
    neg = cfg.data.negatives
    if int(neg.per_positive) > 0:
        return True, f"implicit feedback, {neg.per_positive} sampled negatives per positive, loss {neg.loss}"
    return False, f"explicit ratings, loss {_value(cfg, 'data.rating_loss') if 'rating_loss' in cfg.data else 'mse'}"


def group_runs(runs: list[Run]) -> list[Table]:
    """One table per data set and loss (equal ``data.*`` settings), one row per configuration (every
    setting equal but the seed); settings that do not change results are ignored (``RESULT_NEUTRAL``)."""
    if not runs:
        return []
    not_grouped = (*RESULT_NEUTRAL, "seed", "data.eval_support_sizes", "data.val_support_sizes")
    non_data = tuple(k for k in runs[0].cfg.keys() if k != "data")
    data_only = (*not_grouped, *non_data)
    parts = _partition(runs, lambda r: (str(r.cfg.data.source), _feedback(r.cfg)), data_only)
    names = [f"{p[0].cfg.data.source}, {_feedback(p[0].cfg)[1]}" for p in parts]
    tables = []
    for part, title in zip(parts, _labels(parts, names, data_only)):
        groups = _partition(part, lambda r: r.learner, not_grouped)
        labels = _labels(groups, [g[0].learner for g in groups], not_grouped)
        rows = sorted((Row(label, g) for label, g in zip(labels, groups)), key=lambda r: r.label)
        tables.append(Table(title, _feedback(part[0].cfg)[0], rows))
    return tables


def stages(runs: Iterable[Run]) -> list[str]:
    """The metric stages of the runs (``test``, ``test_k5``, ``val``, ...)."""
    return sorted({k.split("/")[0] for r in runs for k in r.record["metrics"] if k.count("/") == 2})


def _select(runs: list[Run], wanted: Optional[list[str]], option: str, names: Callable[[Run], set[str]]) -> list[Run]:
    if not wanted:
        return runs
    kept = [r for r in runs if names(r) & set(wanted)]
    if not kept:
        known = sorted({n for r in runs for n in names(r)})
        raise MetarecError(f"no finished run matches {option} {' '.join(wanted)} (the runs have: {', '.join(known)})")
    return kept


def _cell(values: list[float], runs: int) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "–"
    mean, half = mean_ci(finite, CONFIDENCE)
    text = f"{mean:.4f}" if len(finite) == 1 else f"{mean:.4f} ± {half:.4f}"
    return text if len(finite) == runs else f"{text} (n={len(finite)})"


def _metric_label(m: str) -> str:
    return m.upper() if m in RATING_ERRORS else m


def table_lines(table: Table, stage: str) -> list[str]:
    """The markdown of one table: label, number of runs, their seeds, then scenario x metric cells."""
    prefix = stage + "/"
    keys = {k for row in table.rows for r in row.runs for k in r.record["metrics"] if k.startswith(prefix)}
    present_s = {k.split("/")[1] for k in keys}
    present_m = {k.split("/")[2] for k in keys}
    metrics = [m for m in REPORT_METRICS if m in present_m and not (table.implicit and m in RATING_ERRORS)]
    if not metrics:  # e.g. a stage with other metrics than the usual ones
        metrics = sorted(present_m)
    scenarios = [s for s in SCENARIOS if s in present_s] + sorted(present_s - set(SCENARIOS))
    header = ["learner", "runs", "seeds"] + [f"{s} {_metric_label(m)}" for s in scenarios for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.rows:
        seeds = ", ".join(str(v) for v in sorted((r.record.get("seed", "?") for r in row.runs),
                                                 key=lambda v: (0, v, "") if isinstance(v, int) else (1, 0, str(v))))
        cells = [row.label, str(len(row.runs)), seeds]
        for s in scenarios:
            for m in metrics:
                values = [float(r.record["metrics"][f"{stage}/{s}/{m}"]) for r in row.runs
                          if f"{stage}/{s}/{m}" in r.record["metrics"]]
                cells.append(_cell(values, len(row.runs)))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_report(runs: list[Run], stage: str = "test", data: Optional[list[str]] = None,
                  learners: Optional[list[str]] = None) -> str:
    """The ``metarec report`` text: the runs (kept by the ``data`` / ``learners`` filters) in tables of one
    data set and loss each, a row per configuration, cells mean ± 95% CI half-width over the row's runs."""
    runs = _select(runs, data, "--data", lambda r: {str(r.cfg.data.source), str(r.record.get("data", ""))} - {""})
    runs = _select(runs, learners, "--learner", lambda r: {r.learner, str(r.cfg.learner.name)})
    available = stages(runs)
    if stage not in available:
        raise MetarecError(f"--stage {stage!r}: the runs have no metrics of that stage (stages available: "
                           f"{', '.join(available) or 'none'})")
    tables = group_runs(runs)
    lines = [
        f"Stage {stage}. Cells: mean ± h over the runs of a row (its seeds), h = half-width of the "
        f"{CONFIDENCE:.0%} confidence interval of the mean (Student t, t.ppf(0.975, n-1) · s/√n); a row of one run "
        "shows its value; `(n=…)` marks a cell with fewer finite values than runs. A row holds the runs whose "
        "settings differ in the seed only (and in settings that do not change results); a table holds the runs "
        "on one data set and loss. Implicit feedback: no MAE/RMSE (they would be of probabilities).",
    ]
    if len(tables) > 1:
        lines += ["", f"The runs are on {len(tables)} different data sets or losses: one table each, never "
                      "averaged together (choose with --data)."]
    for table in tables:
        lines += ["", f"## {table.title}", "", *table_lines(table, stage)]
    return "\n".join(lines)
