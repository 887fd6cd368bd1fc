"""The outputs of ``metarec compare``: per-run metric rows, summaries over seeds (mean, 95% CI),
the markdown tables, the CSV and the optional W&B summary run (the plots: ``metarec.compare_plots``; the
W&B code: ``metarec.wandb_logging``).

matplotlib, scipy and wandb are imported where they are needed.
"""

from __future__ import annotations

import csv
import io
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

ALL = "all"  # support_size of the full-support test pass
TABLE_METRICS = ("mae", "rmse", "ndcg@3")  # columns of the main table
CURVE_METRIC = "mae"
# full-ranking columns (every candidate item ranked), shown in their own tables when the runs have them;
# learners that predict no ratings (itemknn, ease) report only these
RANKING_METRICS = ("full_recall@10", "full_ndcg@10")
RANKING_CURVE_METRIC = "full_recall@10"
MANIFEST = "split_manifest.json"
CSV_COLUMNS = ("learner", "seed", "support_size", "scenario", "metric", "value", "run_dir")


@dataclass(frozen=True)
class Stat:
    """Summary over seeds of one (learner, support size, scenario, metric): non-finite values are left out."""

    n: int
    mean: float
    std: float
    half_width: float  # of the 95% Student-t confidence interval; NaN when n < 2


# ---------------------------------------------------------------------------------------- aggregation
def parse_metric(name: str) -> Optional[tuple[str | int, str, str]]:
    """``test/user_cold/mae`` -> ``("all", "user_cold", "mae")``; ``test_k5/...`` -> ``(5, ...)``; else None."""
    parts = name.split("/")
    if len(parts) != 3:
        return None
    stage, scenario, metric = parts
    if stage == "test":
        return ALL, scenario, metric
    if stage.startswith("test_k") and stage[6:].isdigit():
        return int(stage[6:]), scenario, metric
    return None


def result_rows(records: Iterable[dict], out: Optional[Path] = None) -> list[dict]:
    """One row per run and test metric (see ``CSV_COLUMNS``); ``run_dir`` relative to ``out`` if given."""
    rows = []
    for r in records:
        run_dir = r.get("run_dir", "")
        if out is not None and run_dir:
            run_dir = os.path.relpath(run_dir, out)
        for name, value in sorted(r["metrics"].items()):
            parsed = parse_metric(name)
            if parsed is None:
                continue
            support, scenario, metric = parsed
            rows.append({
                "learner": r["learner"], "seed": int(r["seed"]), "support_size": support,
                "scenario": scenario, "metric": metric, "value": float(value), "run_dir": run_dir,
            })
    return rows


def summarize(rows: Iterable[dict], confidence: float = 0.95) -> dict[tuple, Stat]:
    """``{(learner, support_size, scenario, metric): Stat}`` over the rows' seeds (non-finite values dropped)."""
    from metarec.report import mean_ci, mean_std

    groups: dict[tuple, list[float]] = {}
    for row in rows:
        key = (row["learner"], row["support_size"], row["scenario"], row["metric"])
        values = groups.setdefault(key, [])
        if math.isfinite(row["value"]):
            values.append(float(row["value"]))
    out = {}
    for key, values in groups.items():
        if not values:
            out[key] = Stat(0, math.nan, math.nan, math.nan)
            continue
        mean, half = mean_ci(values, confidence)
        out[key] = Stat(len(values), mean, mean_std(values)[1] if len(values) > 1 else math.nan, half)
    return out


def users_per_size(manifest: dict, support_sizes: Iterable[int]) -> dict[tuple[str, str | int], int]:
    """``{(scenario, K): n}``: the test users of each scenario with at least K support ratings in the split
    manifest (those the test pass with support size K scores), and ``(scenario, "all")``: every test user."""
    out: dict[tuple[str, str | int], int] = {}
    for scenario, episodes in manifest.get("episodes", {}).items():
        sizes = [len(e.get("support", [])) for e in episodes]
        out[(scenario, ALL)] = len(sizes)
        for k in support_sizes:
            out[(scenario, k)] = sum(n >= k for n in sizes)
    return out


def _users_row(users: Optional[dict], scenario: str, sizes: list[str | int]) -> list[str]:
    """The table row of the number of test users per column (nothing without ``users``)."""
    if users is None:
        return []
    return ["| test users | " + " | ".join(str(users.get((scenario, k), "–")) for k in sizes) + " |"]


def _scenarios(stats: dict[tuple, Stat], support: str | int | None = None) -> list[str]:
    from metarec.data.splits import SCENARIOS

    present = {k[2] for k in stats if support is None or k[1] == support}
    return [s for s in SCENARIOS if s in present] + sorted(present - set(SCENARIOS))


def _metric_label(m: str) -> str:
    if m.startswith("full_"):  # full_recall@10 -> Recall@10
        m = m[len("full_"):].replace("recall", "Recall").replace("hitrate", "HitRate")
    return m.upper() if m in ("mae", "rmse") else m.replace("ndcg", "nDCG")


def _lower_is_better(metric: str) -> bool:
    return not (metric.startswith("ndcg") or metric.startswith("full_"))


def _cell(stat: Optional[Stat], seeds: int, digits: int = 4) -> str:
    if stat is None or stat.n == 0:
        return "–"
    text = f"{stat.mean:.{digits}f}"
    if stat.n > 1:
        text += f" ± {stat.half_width:.{digits}f}"
    if stat.n != seeds:
        text += f" (n={stat.n})"
    return text


def _table(header: list[str], rows: list[str], columns: list[list[Optional[Stat]]], lower: list[bool],
           seeds: int) -> list[str]:
    """Markdown table: ``columns[j][i]`` is row ``i``'s stat in column ``j``; best mean per column in bold."""
    best: list[Optional[str]] = []
    for col, low in zip(columns, lower):
        means = [s.mean for s in col if s is not None and s.n > 0]
        best.append(None if not means else f"{(min(means) if low else max(means)):.4f}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, name in enumerate(rows):
        cells = [name]
        for j, col in enumerate(columns):
            stat = col[i]
            text = _cell(stat, seeds)
            if stat is not None and stat.n > 0 and best[j] is not None and f"{stat.mean:.4f}" == best[j]:
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def render_markdown(stats: dict[tuple, Stat], learners: list[str], seeds: list[int], support_sizes: list[int],
                    split_hash: str, n_runs: int, title: str = "metarec compare",
                    overrides: Iterable[str] = (), users: Optional[dict] = None) -> str:
    """The results.md text; ``users`` (``users_per_size``) adds a row of test users per K to the curve tables."""
    n_seeds = len(seeds)
    if n_seeds > 1:
        ci = (f"Cells: mean ± h over {n_seeds} seeds, h = half-width of the 95% confidence interval of the mean "
              f"(Student t, t.ppf(0.975, n-1) · s/√n); `(n=…)` marks a cell with fewer finite values than seeds.")
    else:
        ci = f"One seed ({seeds[0]}): the cells show that run's value only, no confidence interval."
    over = " ".join(f"`{o}`" for o in overrides) or "none"
    lines = [
        f"# {title}",
        "",
        f"Split `{split_hash}` (DIR/{MANIFEST}, the same for every run); seeds {', '.join(map(str, seeds))}; "
        f"{n_runs} runs ({_plural(len(learners), 'learner')} × {_plural(n_seeds, 'seed')}). Overrides: {over}.",
        "",
        "## Test metrics, full support",
        "",
        ci + " Best per column in **bold** (lowest MAE and RMSE, highest nDCG).",
        "",
    ]
    scenarios = _scenarios(stats, ALL)
    header = ["learner"] + [f"{s} {_metric_label(m)}" for s in scenarios for m in TABLE_METRICS]
    columns = [[stats.get((l, ALL, s, m)) for l in learners] for s in scenarios for m in TABLE_METRICS]
    lower = [_lower_is_better(m) for _ in scenarios for m in TABLE_METRICS]
    lines += _table(header, learners, columns, lower, n_seeds)
    lines += [
        "",
        f"## {_metric_label(CURVE_METRIC)} by support size (the cold-start curve)",
        "",
        "Column K: every test user's support cut to its first K ratings; users with fewer than K support ratings "
        "are left out of that column (– where no user has K). Column all: the full support (as above). "
        + ("Row *test users*: how many test users each column scores. " if users is not None else "")
        + "Best per column in **bold** (lowest).",
    ]
    sizes: list[str | int] = [*support_sizes, ALL]
    curve_scenarios = _scenarios(stats)
    ordered = sorted(curve_scenarios, key=lambda s: s != "user_cold")  # user_cold first, then SCENARIOS order
    for s in ordered:
        header = ["learner"] + [f"K={k}" if k != ALL else "all" for k in sizes]
        columns = [[stats.get((l, k, s, CURVE_METRIC)) for l in learners] for k in sizes]
        lines += ["", f"### {s}", ""]
        lines += _table(header, learners, columns, [_lower_is_better(CURVE_METRIC)] * len(sizes), n_seeds)
        lines += _users_row(users, s, sizes)
    lines += _ranking_sections(stats, learners, sizes, n_seeds, users)
    lines.append("")
    return "\n".join(lines)


def _ranking_sections(stats: dict[tuple, Stat], learners: list[str], sizes: list[str | int], n_seeds: int,
                      users: Optional[dict] = None) -> list[str]:
    """The full-ranking tables (``RANKING_METRICS`` at full support, ``RANKING_CURVE_METRIC`` by support
    size), when the runs have these metrics; nothing otherwise."""
    metrics = [m for m in RANKING_METRICS if any(k[3] == m for k in stats)]
    if not metrics:
        return []
    scenarios = _scenarios(stats, ALL)
    header = ["learner"] + [f"{s} {_metric_label(m)}" for s in scenarios for m in metrics]
    columns = [[stats.get((l, ALL, s, m)) for l in learners] for s in scenarios for m in metrics]
    lines = [
        "",
        "## Full ranking, full support",
        "",
        "Every candidate item of the scenario ranked for each test user (its support items excluded); relevant: "
        "the user's relevant query items; users without one are not counted. Learners that predict no ratings "
        "(e.g. `itemknn`, `ease`) report only these and show – in the rating tables above. Best per column in "
        "**bold** (highest).",
        "",
        *_table(header, learners, columns, [_lower_is_better(m) for _ in scenarios for m in metrics], n_seeds),
    ]
    if RANKING_CURVE_METRIC not in metrics:
        return lines
    label = _metric_label(RANKING_CURVE_METRIC)
    lines += ["", f"## {label} by support size (full ranking)", "",
              "Columns as in the MAE curve tables (test users: those scored; a user without a relevant query item "
              "is not counted in Recall). Best per column in **bold** (highest)."]
    for s in sorted(_scenarios(stats), key=lambda s: s != "user_cold"):
        head = ["learner"] + [f"K={k}" if k != ALL else "all" for k in sizes]
        cols = [[stats.get((l, k, s, RANKING_CURVE_METRIC)) for l in learners] for k in sizes]
        lines += ["", f"### {label}, {s}", ""]
        lines += _table(head, learners, cols, [False] * len(sizes), n_seeds)
        lines += _users_row(users, s, sizes)
    return lines


# ------------------------------------------------------------------------------------------- writing
def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({**row, "value": repr(row["value"])})
    return buf.getvalue()


def log_to_wandb(cfg, out: Path, rows: list[dict], stats: dict[tuple, Stat], images: list[Path], config: dict,
                 learners: list[str], support_sizes: list[int], users: Optional[dict] = None,
                 files: Iterable[Path] = ()) -> Optional[Path]:
    """With ``logger=wandb`` in ``cfg`` (a run config of the grid): the grid's summary W&B run (under
    ``out/wandb``, in the grid's group, job_type ``compare``) holding the results and summary tables, the
    support-size curves as W&B line plots and the static plots (see ``metarec.wandb_logging``); returns its
    local folder. A no-op (``None``) for any other logger."""
    if cfg is None or cfg.logger.name != "wandb":
        return None
    from metarec.compare_variants import parse_variant
    from metarec.wandb_logging import curve_tables, log_summary_run, summary_tags

    options = list(dict.fromkeys(parse_variant(l)[0] for l in learners))
    layout = {"group": cfg.logger.group or out.name, "job_type": "compare",
              "tags": summary_tags(cfg, options, [l for l in learners if l not in options])}
    metrics = [m for m in (CURVE_METRIC, RANKING_CURVE_METRIC) if any(k[3] == m for k in stats)]
    curves = curve_tables(stats, learners, support_sizes, metrics, users)
    return log_summary_run(cfg.logger, out, layout, rows, stats, images, config, curves, CSV_COLUMNS, files)
