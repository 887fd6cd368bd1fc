"""``metarec compare``: a grid of learners x seeds on one shared split, summarised in tables and plots.

The grid lives in one output folder ``DIR``:

- ``DIR/split_manifest.json``: the one split every run uses (made by the first call, reused after);
- ``DIR/runs/<learner>-s<seed>/``: one ordinary run folder per learner and seed (see ``metarec.runs``);
  a run whose ``metrics.json`` exists is finished and never recomputed, so a call can be repeated or
  resumed after an interruption;
- ``DIR/results.csv``, ``DIR/results.md``, ``DIR/curve_<scenario>.png``, ``DIR/bars_mae.png``: the
  summaries, rewritten (atomically) from the finished runs on every call.

Heavy modules (torch, Lightning, matplotlib, scipy, wandb) are imported where they are needed, so that
``metarec --help`` stays fast.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import secrets
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from metarec.errors import ConfigError, DataError, MetarecError

DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_SUPPORT_SIZES = (1, 3, 5, 10, 20)
TABLE_METRICS = ("mae", "rmse", "ndcg@3")  # columns of the main table
CURVE_METRIC = "mae"
ALL = "all"  # support_size of the full-support test pass
CSV_COLUMNS = ("learner", "seed", "support_size", "scenario", "metric", "value", "run_dir")
MANIFEST = "split_manifest.json"
RUNS = "runs"  # run.experiment: the runs live in DIR/runs/<learner>-s<seed>

# Settings that do not change a run's results: a finished run made with other values of these is still
# reused. Any other difference between a finished run's config.yaml and the config compare composes
# for it now is an error (the grid would mix settings).
_IGNORED_FOR_RESUME = (
    "choices", "run", "logger", "data.manifest", "data.root", "data.num_workers",
    "trainer.enable_progress_bar", "trainer.log_every_n_steps", "trainer.accelerator", "trainer.devices",
)

HELP = f"""\
Train and test every learner x seed on ONE shared cold-start split, then summarise the grid.

  1. The split: made from the config of the first learner and saved as DIR/{MANIFEST}; when that
     file exists already (a repeated or resumed call) it is reused, and data settings that do not match
     it (data source or options, data.split.*) are an error rather than a mixed grid.
  2. Runs: DIR/{RUNS}/<learner>-s<seed>/, each an ordinary `metarec fit` run folder, tested on the full
     support and again with each test user's support cut to K ratings for every K of --support-sizes
     (metrics test/<scenario>/<metric> and test_k<K>/<scenario>/<metric>). A finished run (metrics.json
     present) is never recomputed, so the command is resumable: repeat it to continue after an
     interruption, or delete one run's metrics.json to recompute only that run. A finished run made
     with other settings than the current call's is an error (logger, progress bar, data folder, workers
     and devices may differ). One progress line per run.
  3. Outputs in DIR, rewritten atomically from the finished runs on every call:
       results.csv         one row per run and test metric: learner, seed, support_size ("all" for
                           the full support, else K), scenario, metric, value, run_dir (relative to DIR)
       results.md          learners x (scenario, metric) at full support as `mean ± h`, h = half-width
                           of the 95% Student-t confidence interval over seeds, best per column in bold;
                           then the MAE by support size K for each scenario (the cold-start curve);
                           the split hash, seeds and number of runs
       curve_<scenario>.png  MAE vs support size K, one line per learner, error bars = 95% CI
       bars_mae.png        full-support MAE per scenario and learner, error bars = 95% CI
     With logger=wandb, the results table and the plots are also logged to one extra W&B run (offline
     unless logger.mode or WANDB_MODE says otherwise; files under DIR/wandb).

Overrides (group=option or dotted.key=value, as for `metarec fit`) apply to every run, e.g.
  metarec compare --out runs/cmp --learners maml melu5 global --seeds 0 1 2 \\
      data=movielens100k trainer.max_epochs=20 logger=wandb
compare sets learner (and learner.*), seed, run.*, data.manifest and data.eval_support_sizes itself;
overriding them is an error (use --learners, --seeds, --out, --support-sizes; for other learner
settings add an option file configs/learner/<option>.yaml).
"""


@dataclass
class CompareSpec:
    out: Path
    learners: list[str]
    seeds: list[int] = field(default_factory=lambda: list(DEFAULT_SEEDS))
    support_sizes: list[int] = field(default_factory=lambda: list(DEFAULT_SUPPORT_SIZES))
    overrides: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Stat:
    """Summary over seeds of one (learner, support size, scenario, metric): non-finite values are left out."""

    n: int
    mean: float
    std: float
    half_width: float  # of the 95% Student-t confidence interval; NaN when n < 2


# ----------------------------------------------------------------------------------------- arguments
_FORBIDDEN = {
    "learner": "use --learners; for other learner settings add an option file configs/learner/<option>.yaml",
    "seed": "use --seeds",
    "run": "--out DIR places the runs",
    "data.manifest": f"the split is DIR/{MANIFEST}",
    "data.eval_support_sizes": "use --support-sizes",
}


def check_overrides(overrides: Iterable[str]) -> None:
    """Refuse overrides of what compare sets itself (``learner``, ``seed``, ``run.*``, ...)."""
    for arg in overrides:
        key = arg.split("=", 1)[0].strip()
        for owned, hint in _FORBIDDEN.items():
            if key == owned or key.startswith(owned + "."):
                raise ConfigError(f"compare sets {owned} itself; drop the override {arg!r} ({hint})")


def _ints(name: str, values: Iterable[str], minimum: int) -> list[int]:
    out: list[int] = []
    for v in values:
        try:
            i = int(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: {v!r} is not an integer") from None
        if i < minimum:
            raise ConfigError(f"{name}: {i} is less than {minimum}")
        if i not in out:
            out.append(i)
    return out


def make_spec(
    out: str | Path,
    learners: Optional[list[str]] = None,
    seeds: Optional[list[str]] = None,
    support_sizes: Optional[list[str]] = None,
    overrides: Optional[list[str]] = None,
) -> CompareSpec:
    """A checked ``CompareSpec`` from command-line strings (``None`` for a default)."""
    from metarec.config import config_dir, group_options

    known = group_options("learner", config_dir())
    if learners is None:
        learners = list(known)
    if not learners:
        raise ConfigError("--learners needs at least one learner")
    chosen: list[str] = []
    for name in learners:
        if name not in known:
            raise ConfigError(f"unknown learner {name!r} in --learners (available: {', '.join(known)})")
        if name not in chosen:
            chosen.append(name)
    seed_list = _ints("--seeds", seeds, 0) if seeds is not None else list(DEFAULT_SEEDS)
    if not seed_list:
        raise ConfigError("--seeds needs at least one seed")
    sizes = list(DEFAULT_SUPPORT_SIZES)
    if support_sizes is not None:
        sizes = sorted(_ints("--support-sizes", support_sizes, 1))
    if not sizes:
        raise ConfigError("--support-sizes needs at least one size")
    overrides = list(overrides or [])
    check_overrides(overrides)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MetarecError(f"--out {out} exists and is not a folder")
    return CompareSpec(out.resolve(), chosen, seed_list, sizes, overrides)


# -------------------------------------------------------------------------------------------- configs
def run_name(learner: str, seed: int) -> str:
    return f"{learner}-s{seed}"


def run_config(spec: CompareSpec, learner: str, seed: int):
    """The validated config of one run of the grid."""
    from metarec.config import compose

    try:
        cfg = compose([*spec.overrides, f"learner={learner}", f"seed={seed}"])
    except ConfigError as e:
        raise ConfigError(f"{e} (in the config of learner {learner!r})") from None
    # Set directly rather than as `key=value` strings: a path is then never parsed as YAML.
    cfg.run.root = str(spec.out)
    cfg.run.experiment = RUNS
    cfg.run.name = run_name(learner, seed)
    cfg.data.manifest = str(spec.out / MANIFEST)
    cfg.data.eval_support_sizes = list(spec.support_sizes)
    return cfg


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _comparable(container: dict) -> dict[str, Any]:
    flat = _flatten(container)
    return {
        k: v for k, v in flat.items()
        if not any(k == p or k.startswith(p + ".") for p in _IGNORED_FOR_RESUME)
    }


def check_finished_run(run_dir: Path, cfg) -> None:
    """A finished run must have been made with the settings compare would use now."""
    import yaml
    from omegaconf import OmegaConf

    try:
        old = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"finished run {run_dir} has no readable config.yaml ({e}); delete the run folder") from None
    old_flat = _comparable(old if isinstance(old, dict) else {})
    new_flat = _comparable(OmegaConf.to_container(cfg, resolve=True))
    for key in sorted(set(old_flat) | set(new_flat), key=lambda k: (k != "data.source", k)):  # the source first
        a, b = old_flat.get(key, "<unset>"), new_flat.get(key, "<unset>")
        if a != b:
            hint = "use the same --support-sizes" if key == "data.eval_support_sizes" else "use the same overrides"
            raise ConfigError(
                f"finished run {run_dir} was made with {key}={a!r}, this call asks for {b!r}; {hint}, "
                f"delete that run, or choose another --out"
            )


# -------------------------------------------------------------------------------------------- the split
def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
        manifest["config"].keys()
        manifest["dataset"], manifest["content_hash"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{path} is not a readable split manifest ({e}); delete it or choose another --out") from None
    return manifest


def check_split_config(spec: CompareSpec, cfg) -> None:
    """An existing DIR/split_manifest.json must have been made with ``cfg``'s ``data.split`` settings."""
    from dataclasses import asdict

    from metarec.config import split_config

    path = spec.out / MANIFEST
    if not path.exists():
        return
    saved = _read_manifest(path)["config"]
    wanted = asdict(split_config(cfg.data))
    for key in sorted(set(saved) | set(wanted)):
        if saved.get(key) != wanted.get(key):
            raise ConfigError(
                f"{path} was made with data.split.{key}={saved.get(key)!r}, this call asks for "
                f"{wanted.get(key)!r}; use the data settings of the first call or choose another --out"
            )


def prepare_split(spec: CompareSpec, cfg) -> dict:
    """Make DIR/split_manifest.json from ``cfg``'s data settings, or check that the existing one fits them
    (split settings, data source, its options and files). Returns the manifest."""
    from metarec.config import data_config
    from metarec.data.datamodule import ColdStartDataModule

    path = spec.out / MANIFEST
    dc = data_config(cfg.data)
    if not path.exists():
        dc.manifest = None
        dm = ColdStartDataModule(dc, seed=int(cfg.seed))
        dm.setup()
        spec.out.mkdir(parents=True, exist_ok=True)
        dm.save_manifest(path)
        return dm.split.manifest
    check_split_config(spec, cfg)
    dataset = _read_manifest(path)["dataset"]
    dc.manifest = str(path)
    dm = ColdStartDataModule(dc, seed=int(cfg.seed))
    try:
        dm.setup()  # load_split refuses a manifest made on other data (source, options, files) or edited
    except DataError as e:
        raise DataError(
            f"{e} (it was made on {dataset!r}); use the data settings of the first call or choose another --out"
        ) from None
    return dm.split.manifest


# ------------------------------------------------------------------------------------------- the runs
def _finish_wandb_run() -> None:
    """``fit`` leaves its W&B run open; close it so that the next run gets its own."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def run_grid(spec: CompareSpec, echo: Callable[[str], None] = print) -> list[dict]:
    """Run (or reuse) every learner x seed; returns their metrics records, in grid order."""
    from metarec.runs import is_finished

    configs = {(l, s): run_config(spec, l, s) for l in spec.learners for s in spec.seeds}  # validates all first
    first = configs[(spec.learners[0], spec.seeds[0])]
    check_split_config(spec, first)  # cheap checks first: no data is loaded for them
    for (learner, seed), cfg in configs.items():
        d = spec.out / RUNS / run_name(learner, seed)
        if is_finished(d):
            check_finished_run(d, cfg)
    manifest = prepare_split(spec, first)
    total = len(configs)
    width = max(len(l) for l in spec.learners)
    records = []
    for i, ((learner, seed), cfg) in enumerate(configs.items(), 1):
        d = spec.out / RUNS / run_name(learner, seed)
        head = f"[{i:>{len(str(total))}}/{total}] {learner:<{width}} seed {seed}:"
        if is_finished(d):
            echo(f"{head} done before")
        else:
            from metarec.train import fit

            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    # a support-size pass where no test user of a scenario has K ratings is empty (NaN metrics,
                    # shown as – in results.md); Lightning and torchmetrics warn about it
                    warnings.filterwarnings("ignore", message=".*Total length of `DataLoader` across ranks is zero.*")
                    warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
                    d = fit(cfg)
            finally:
                if cfg.logger.name == "wandb":
                    _finish_wandb_run()
            echo(f"{head} {time.perf_counter() - t0:.1f} s")
        record = json.loads((d / "metrics.json").read_text())
        if record.get("split_hash") != manifest["content_hash"]:
            raise DataError(
                f"run {d} used split {record.get('split_hash')!r}, not {MANIFEST}'s {manifest['content_hash']!r}; "
                "delete that run"
            )
        record["run_dir"] = str(d)
        records.append(record)
    return records


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


def _support_key(s: str | int) -> tuple[int, int]:
    return (1, 0) if s == ALL else (0, int(s))


def _scenarios(stats: dict[tuple, Stat], support: str | int | None = None) -> list[str]:
    from metarec.data.splits import SCENARIOS

    present = {k[2] for k in stats if support is None or k[1] == support}
    return [s for s in SCENARIOS if s in present] + sorted(present - set(SCENARIOS))


def _metric_label(m: str) -> str:
    return m.upper() if m in ("mae", "rmse") else m.replace("ndcg", "nDCG")


def _lower_is_better(metric: str) -> bool:
    return not metric.startswith("ndcg")


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
                    overrides: Iterable[str] = ()) -> str:
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
        "Best per column in **bold** (lowest).",
    ]
    sizes: list[str | int] = [*support_sizes, ALL]
    curve_scenarios = _scenarios(stats)
    ordered = sorted(curve_scenarios, key=lambda s: s != "user_cold")  # user_cold first, then SCENARIOS order
    for s in ordered:
        header = ["learner"] + [f"K={k}" if k != ALL else "all" for k in sizes]
        columns = [[stats.get((l, k, s, CURVE_METRIC)) for l in learners] for k in sizes]
        lines += ["", f"### {s}", ""]
        lines += _table(header, learners, columns, [_lower_is_better(CURVE_METRIC)] * len(sizes), n_seeds)
    lines.append("")
    return "\n".join(lines)


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


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _err(stat: Optional[Stat]) -> float:
    return stat.half_width if stat is not None and stat.n > 1 and math.isfinite(stat.half_width) else 0.0


def _mean(stat: Optional[Stat]) -> float:
    return stat.mean if stat is not None and stat.n > 0 else math.nan


def plot_curves(stats: dict[tuple, Stat], learners: list[str], support_sizes: list[int], n_seeds: int,
                out: Path) -> list[Path]:
    """``curve_<scenario>.png``: MAE vs support size K per learner (and the full-support value at 'all')."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    paths = []
    colors = _colors(len(learners))
    markers = "osD^vP*Xh<>p"
    x_all = max(support_sizes) * 2.0
    for scenario in _scenarios(stats):
        fig = Figure(figsize=(7.5, 4.6))
        ax = fig.add_subplot()
        for i, learner in enumerate(learners):
            shift = 1.025 ** (i - (len(learners) - 1) / 2)  # spread overlapping error bars a little
            ks = [k * shift for k in support_sizes]
            st = [stats.get((learner, k, scenario, CURVE_METRIC)) for k in support_sizes]
            full = stats.get((learner, ALL, scenario, CURVE_METRIC))
            style = dict(color=colors[i], marker=markers[i % len(markers)], markersize=5, capsize=3)
            ax.errorbar(ks, [_mean(s) for s in st], yerr=[_err(s) for s in st], label=learner, linewidth=1.6, **style)
            ax.errorbar([x_all * shift], [_mean(full)], yerr=[_err(full)], linestyle="none", **style)
        ax.set_xscale("log")
        ax.axvline((max(support_sizes) * x_all) ** 0.5, color="0.8", linestyle=":", linewidth=1)
        ax.set_xticks([*support_sizes, x_all])
        ax.set_xticklabels([str(k) for k in support_sizes] + ["all"])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("support size K (ratings of each test user used for adaptation; all = full support)")
        ax.set_ylabel(f"test {_metric_label(CURVE_METRIC)} (lower is better)")
        ci = "error bars: 95% CI over seeds" if n_seeds > 1 else "one seed: no error bars"
        ax.set_title(f"{scenario}: {_metric_label(CURVE_METRIC)} vs support size ({ci})")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, title="learner")
        paths.append(_save(fig, out / f"curve_{scenario}.png"))
    return paths


def plot_bars(stats: dict[tuple, Stat], learners: list[str], n_seeds: int, out: Path) -> Path:
    """``bars_mae.png``: full-support MAE, grouped by scenario, one bar per learner, CI error bars."""
    import numpy as np
    from matplotlib.figure import Figure

    scenarios = _scenarios(stats, ALL)
    colors = _colors(len(learners))
    width = 0.8 / max(len(learners), 1)
    fig = Figure(figsize=(max(7.5, 1.2 + 0.25 * len(learners) * len(scenarios)), 4.6))
    ax = fig.add_subplot()
    x = np.arange(len(scenarios))
    lo, hi = math.inf, -math.inf
    for i, learner in enumerate(learners):
        st = [stats.get((learner, ALL, s, "mae")) for s in scenarios]
        means, errs = [_mean(s) for s in st], [_err(s) for s in st]
        ax.bar(x + (i - (len(learners) - 1) / 2) * width, means, width, yerr=errs, capsize=2,
               color=colors[i], label=learner)
        for m, e in zip(means, errs):
            if math.isfinite(m):
                lo, hi = min(lo, m - e), max(hi, m + e)
    cut = ""
    if math.isfinite(lo):
        pad = max(hi - lo, 1e-3)
        bottom = max(0.0, lo - pad)
        ax.set_ylim(bottom, hi + 0.15 * pad)
        cut = ", axis cut" if bottom > 0 else ""
    ax.set_xticks(x)
    ax.set_xticklabels(scenarios)
    ax.set_xlabel("test scenario")
    ax.set_ylabel(f"test MAE at full support (lower is better{cut})")
    ci = "error bars: 95% CI over seeds" if n_seeds > 1 else "one seed: no error bars"
    ax.set_title(f"MAE per scenario and learner ({ci})")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, title="learner")
    return _save(fig, out / "bars_mae.png")


def log_to_wandb(logger_cfg, out: Path, rows: list[dict], stats: dict[tuple, Stat], images: list[Path],
                 config: dict) -> Optional[Path]:
    """With ``logger.name == "wandb"``: one extra W&B run (under ``out/wandb``) holding the results table, a
    summary table and the plots; returns its local folder. A no-op (``None``) for any other logger."""
    if logger_cfg is None or logger_cfg.name != "wandb":
        return None
    os.environ.setdefault("WANDB_MODE", str(logger_cfg.mode))
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    _finish_wandb_run()
    run = wandb.init(
        project=logger_cfg.project,
        entity=logger_cfg.entity,
        dir=str(out),
        name=f"compare-{out.name}",
        group="compare",
        job_type="compare",
        config=config,
    )
    try:
        def plain(v):
            return v if not isinstance(v, float) or math.isfinite(v) else None

        results = wandb.Table(columns=list(CSV_COLUMNS), data=[[plain(r[c]) if c != "support_size" else str(r[c])
                                                                for c in CSV_COLUMNS] for r in rows])
        summary = wandb.Table(
            columns=["learner", "support_size", "scenario", "metric", "n", "mean", "std", "ci95_half_width"],
            data=[[k[0], str(k[1]), k[2], k[3], s.n, plain(s.mean), plain(s.std), plain(s.half_width)]
                  for k, s in sorted(stats.items(), key=lambda kv: (kv[0][0], _support_key(kv[0][1]), kv[0][2:]))],
        )
        payload: dict[str, Any] = {"results": results, "summary": summary}
        for p in images:
            payload[p.stem] = wandb.Image(str(p), caption=p.stem)
        run.log(payload)
        local = Path(run.dir).parent
    finally:
        run.finish()
    return local


# ------------------------------------------------------------------------------------------ together
def compare(spec: CompareSpec, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the grid, then write the summaries; returns ``{"records", "outputs", "wandb"}``."""
    records = run_grid(spec, echo)
    out = spec.out
    rows = result_rows(records, out)
    stats = summarize(rows)
    split_hashes = {r["split_hash"] for r in records}
    (split_hash,) = split_hashes
    outputs = [out / "results.csv", out / "results.md"]
    from metarec.runs import atomic_write_text

    atomic_write_text(outputs[0], csv_text(rows))
    md = render_markdown(stats, spec.learners, spec.seeds, spec.support_sizes, split_hash, len(records),
                         title=f"metarec compare: {out.name}", overrides=spec.overrides)
    atomic_write_text(outputs[1], md)
    images = plot_curves(stats, spec.learners, spec.support_sizes, len(spec.seeds), out)
    images.append(plot_bars(stats, spec.learners, len(spec.seeds), out))
    outputs += images
    config = {
        "learners": spec.learners, "seeds": spec.seeds, "support_sizes": spec.support_sizes,
        "overrides": spec.overrides, "split_hash": split_hash, "runs": len(records),
    }
    first = run_config(spec, spec.learners[0], spec.seeds[0])
    wandb_dir = log_to_wandb(first.logger, out, rows, stats, images, config)
    return {"records": records, "outputs": outputs, "wandb": wandb_dir, "markdown": md}
