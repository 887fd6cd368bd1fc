"""Does training converge at the defaults? The trained learners of the oracle-gap grid (``global``,
``finetune``, ``maml``, ``metasgd``, ``amortised`` on the ``melu`` MLP; ``global``, ``finetune``, ``maml``,
``ridge`` on the dot-product ``twotower``), each at its default config and the default trainer (``max_epochs``,
``patience``, checkpoint and early stopping on the validation users' MAE), on MovieLens-100K and on the
synthetic whole-star data set of ``oracle_gap.py``.

Per run: the validation MAE after every epoch, the best epoch and why training stopped. A run **plateaued**
when early stopping ended it (``patience`` epochs without a new best) or its best epoch lies at least
``patience`` epochs before the last; otherwise it was **still improving** when ``max_epochs`` ended it, and
the table says by how much its validation MAE fell over its last ``patience`` epochs. Writes
``benchmarks/results/convergence.md``, one plot per data set (``convergence_<data>.png``: validation MAE by
epoch, one line per learner and seed, the best epoch marked) and the README block ``convergence``.

    METAREC_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/convergence.py [--data ml100k synthetic] [--seeds 0]

Resumable (runs live in ``--work``); ``--smoke`` runs two learners for two epochs on a small synthetic
data set in a temp folder and writes nothing under benchmarks/results.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from bench_utils import command_line, fmt_table, update_readme

from metarec.compare import compare, make_spec
from metarec.config import compose, validate
from metarec.monitor import monitor_for

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NAME = "convergence"
DATA = {
    "ml100k": ["data=movielens100k"],
    "synthetic": ["data=synthetic", "data.params.round_ratings=true"],  # oracle_gap.py's data set
}
GROUPS = [
    ("melu", ["global", "finetune", "maml", "metasgd", "amortised"]),
    ("twotower", ["global", "finetune", "maml", "ridge"]),
]
COMMON = ["trainer.enable_progress_bar=false"]
IMAGES = "<images>/"  # the plots' folder: results/ from the README, none from results/convergence.md


@dataclass
class Curve:
    label: str  # "learner (model) seed s"
    values: list[float]  # the monitored validation metric after each epoch (epoch 0 first)
    max_epochs: int
    patience: int

    @property
    def best(self) -> int:
        return min(range(len(self.values)), key=self.values.__getitem__)

    @property
    def plateaued(self) -> bool:
        """Early stopping ended the run, or its best epoch is at least ``patience`` epochs before its last."""
        return len(self.values) < self.max_epochs or len(self.values) - 1 - self.best >= self.patience

    @property
    def last_drop(self) -> float:
        """How much the best value so far fell over the last ``patience`` epochs (0: none)."""
        if len(self.values) <= self.patience:
            return self.values[0] - min(self.values)
        return min(self.values[: -self.patience]) - min(self.values)


def read_curve(run: Path, key: str) -> list[float]:
    """The value of ``key`` after each epoch, from the run's ``logs/metrics.csv``."""
    by_epoch: dict[int, float] = {}
    with open(run / "logs" / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row.get(key):
                by_epoch[int(row["epoch"])] = float(row[key])
    return [by_epoch[e] for e in sorted(by_epoch)]


def run_data(name: str, work: Path, seeds: list[str], smoke: bool) -> list[Curve]:
    curves = []
    for model, learners in GROUPS:
        overrides = [*DATA[name], *COMMON, f"model={model}"]
        if smoke:
            learners = learners[:1] if model == "melu" else ["ridge"]
            overrides = ["data=synthetic", "data.params.n_users=150", f"model={model}", "trainer.max_epochs=2",
                         "trainer.limit_train_batches=3", *COMMON]
        spec = make_spec(work / name / model, learners, seeds, None, overrides)  # the default support sizes
        compare(spec, echo=lambda line: print(line, flush=True))
        cfg = validate(compose(overrides))
        t = cfg.trainer
        key = monitor_for(t.monitor, "mse", cfg.data.ranking_ks).key
        for learner in learners:
            for seed in seeds:
                run = spec.out / "runs" / f"{learner}-s{seed}"
                epochs = json.loads((run / "metrics.json").read_text())["epochs"]
                values = read_curve(run, key)
                if len(values) != epochs:
                    raise SystemExit(f"{run}: {len(values)} validation values for {epochs} epochs")
                curves.append(Curve(f"{learner} ({model}) seed {seed}", values, int(t.max_epochs), int(t.patience)))
    return curves


def table(curves: list[Curve]) -> list[str]:
    rows = []
    for c in curves:
        stop = "early stopping" if len(c.values) < c.max_epochs else "max_epochs"
        verdict = "plateaued" if c.plateaued else f"**still improving** (−{c.last_drop:.4f} in the last {c.patience})"
        rows.append([c.label, len(c.values), c.best + 1, f"{c.values[c.best]:.4f}", stop, verdict])
    return fmt_table(["run", "epochs", "best epoch", "best val MAE", "stopped by", "at the stop"], rows).splitlines()


def plot(curves: list[Curve], title: str, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    for c in curves:
        epochs = list(range(1, len(c.values) + 1))
        (line,) = ax.plot(epochs, c.values, label=c.label, linewidth=1.2)
        ax.plot([c.best + 1], [c.values[c.best]], "o", color=line.get_color(), markersize=4)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation MAE (user-cold validation users)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=f"runs/{NAME}", help="output folder of the comparisons (runs, checkpoints)")
    p.add_argument("--seeds", nargs="+", default=["0"])
    p.add_argument("--data", nargs="+", default=list(DATA), choices=list(DATA))
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp()) if args.smoke else Path(args.work)
    t0 = time.perf_counter()
    sections, n_runs, n_flat = [], 0, 0
    for name in (["synthetic"] if args.smoke else args.data):
        curves = run_data(name, work, ["0"] if args.smoke else args.seeds, args.smoke)
        lines = table(curves)
        print("\n".join(lines))
        if args.smoke:
            plot(curves, "smoke", work / "smoke.png")
            ok = (work / "smoke.png").stat().st_size > 0 and all(c.values for c in curves)
            shutil.rmtree(work, ignore_errors=True)
            return 0 if ok else 1
        title = {"ml100k": "MovieLens-100K", "synthetic": "synthetic whole stars (oracle_gap.py)"}[name]
        RESULTS.mkdir(exist_ok=True)
        plot(curves, f"{title}: validation MAE by epoch, default configs", RESULTS / f"{NAME}_{name}.png")
        n_runs, n_flat = n_runs + len(curves), n_flat + sum(c.plateaued for c in curves)
        sections += [f"### {title}", "", *lines, "",
                     f"![validation MAE by epoch]({IMAGES}{NAME}_{name}.png)", ""]
    command = command_line("convergence.py")
    summary = f"{n_flat} of {n_runs} runs had plateaued when training stopped."
    footer = (f"_Produced by `{command}`, seeds {', '.join(args.seeds)}; this call took "
              f"{(time.perf_counter() - t0) / 60:.1f} min (finished runs are not redone), torch {torch.__version__}, "
              f"Python {platform.python_version()}, {torch.get_num_threads()} CPU threads._")
    intro = ("Validation MAE by epoch at the default configs (trainer defaults: early stopping and checkpoint "
             "selection on the validation users' MAE). Plateaued: early stopping ended the run, or its best "
             "epoch lies at least `patience` epochs before its last.")
    body = [intro, "", *sections, summary, "", footer]
    text = "\n".join(body)
    (RESULTS / f"{NAME}.md").write_text(f"# Training convergence at the defaults\n\n{text.replace(IMAGES, '')}\n")
    update_readme(NAME, text.replace(IMAGES, "benchmarks/results/"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
