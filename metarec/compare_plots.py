"""The plots of ``metarec compare``: the cold-start curves (a metric vs support size K, with the number
of test users at each K) and the bars of full-support MAE; error bars are 95% CIs over seeds, and a
grid of one seed draws none. matplotlib is imported where it is needed.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Optional

from metarec.compare_outputs import ALL, CURVE_METRIC, Stat, _metric_label, _scenarios, atomic_write_bytes


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


def _errorbar_style(n_seeds: int, stats: list[Optional[Stat]]) -> dict:
    """Error bars and caps with more than one seed; with one seed none (no zero-width caps)."""
    if n_seeds < 2:
        return {"yerr": None, "capsize": 0}
    return {"yerr": [_err(s) for s in stats], "capsize": 3}


def _k_label(k: int | str, users: Optional[dict], scenario: str) -> str:
    text = "all" if k == ALL else str(k)
    if users is not None and (scenario, k) in users:
        text += f"\nn={users[(scenario, k)]}"
    return text


def curve_figure(stats: dict[tuple, Stat], learners: list[str], support_sizes: list[int], n_seeds: int,
                 scenario: str, users: Optional[dict] = None):
    """The figure of ``curve_<scenario>.png``: MAE vs support size K per learner (and the full-support value
    at 'all'); ``users`` (``{(scenario, K or "all"): n}``) puts the number of test users under each K."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    colors = _colors(len(learners))
    markers = "osD^vP*Xh<>p"
    x_all = max(support_sizes) * 2.0
    fig = Figure(figsize=(7.5, 4.6))
    ax = fig.add_subplot()
    for i, learner in enumerate(learners):
        shift = 1.025 ** (i - (len(learners) - 1) / 2)  # spread overlapping error bars a little
        ks = [k * shift for k in support_sizes]
        st = [stats.get((learner, k, scenario, CURVE_METRIC)) for k in support_sizes]
        full = stats.get((learner, ALL, scenario, CURVE_METRIC))
        style = dict(color=colors[i], marker=markers[i % len(markers)], markersize=5)
        ax.errorbar(ks, [_mean(s) for s in st], label=learner, linewidth=1.6, **_errorbar_style(n_seeds, st), **style)
        ax.errorbar([x_all * shift], [_mean(full)], linestyle="none", **_errorbar_style(n_seeds, [full]), **style)
    ax.set_xscale("log")
    ax.axvline((max(support_sizes) * x_all) ** 0.5, color="0.8", linestyle=":", linewidth=1)
    ax.set_xticks([*support_sizes, x_all])
    ax.set_xticklabels([_k_label(k, users, scenario) for k in [*support_sizes, ALL]])
    ax.xaxis.set_minor_locator(NullLocator())
    counted = "; n = test users with at least K support ratings" if users is not None else ""
    ax.set_xlabel(f"support size K (ratings of each test user used for adaptation; all = full support{counted})")
    ax.set_ylabel(f"test {_metric_label(CURVE_METRIC)} (lower is better)")
    ci = "error bars: 95% CI over seeds" if n_seeds > 1 else "one seed: no error bars"
    ax.set_title(f"{scenario}: {_metric_label(CURVE_METRIC)} vs support size ({ci})")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, title="learner")
    return fig


def plot_curves(stats: dict[tuple, Stat], learners: list[str], support_sizes: list[int], n_seeds: int,
                out: Path, users: Optional[dict] = None) -> list[Path]:
    """``curve_<scenario>.png`` for every scenario (see ``curve_figure``)."""
    return [_save(curve_figure(stats, learners, support_sizes, n_seeds, scenario, users), out / f"curve_{scenario}.png")
            for scenario in _scenarios(stats)]


def bars_figure(stats: dict[tuple, Stat], learners: list[str], n_seeds: int):
    """The figure of ``bars_mae.png``: full-support MAE, grouped by scenario, one bar per learner, CI error
    bars (none with one seed)."""
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
        bars = _errorbar_style(n_seeds, st)
        ax.bar(x + (i - (len(learners) - 1) / 2) * width, means, width, yerr=bars["yerr"],
               capsize=2 if bars["capsize"] else 0, color=colors[i], label=learner)
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
    return fig


def plot_bars(stats: dict[tuple, Stat], learners: list[str], n_seeds: int, out: Path) -> Path:
    """``bars_mae.png`` (see ``bars_figure``)."""
    return _save(bars_figure(stats, learners, n_seeds), out / "bars_mae.png")
