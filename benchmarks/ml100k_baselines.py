"""MovieLens-100K, default cold-start split: MAML vs the global, item-mean and bias baselines over seeds.

Writes ``benchmarks/results/ml100k_baselines.{md,json}`` and refreshes the README table between the
``ml100k_baselines`` markers. The split is the default one (split seed 0) for every run; the seeds vary
model initialisation and training order. ``--smoke`` runs one seed for one epoch into a temp folder and
writes nothing under ``benchmarks/results`` (CI uses it).

    METAREC_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/ml100k_baselines.py
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_utils import command_line, update_readme

from metarec.config import compose
from metarec.report import markdown_table, mean_std
from metarec.runs import finished_runs
from metarec.train import fit

HERE = Path(__file__).resolve().parent
LEARNERS = ("maml", "global", "item_mean", "bias")  # bias: mu + b_i + the support's user bias
README_MARK = "ml100k_baselines"


def run_all(root: Path, seeds: list[int], extra: list[str]) -> list[dict]:
    for learner in LEARNERS:
        for seed in seeds:
            cfg = compose([
                "data=movielens100k", f"learner={learner}", f"seed={seed}", f"run.root={root}",
                "run.experiment=ml100k_baselines", "trainer.enable_progress_bar=false", *extra,
            ])
            t0 = time.perf_counter()
            run = fit(cfg)
            print(f"{learner:<10} seed {seed}: {time.perf_counter() - t0:6.1f} s  {run}", flush=True)
    return finished_runs(root)


def summary(records: list[dict], metric: str = "test/user_cold/mae") -> dict[str, dict]:
    out = {}
    for learner in LEARNERS:
        values = [r["metrics"][metric] for r in records if r["learner"] == learner]
        mean, std = mean_std(values)
        out[learner] = {"mean": mean, "std": std, "values": values}
    return out


def render(records: list[dict], seeds: list[int]) -> str:
    s = summary(records)
    lines = [
        f"User-cold query MAE on ml-100k (default split, seeds {', '.join(map(str, seeds))}; mean ± sample std):",
        "",
        "| learner | user-cold MAE | per seed |",
        "|---|---|---|",
    ]
    for learner, v in s.items():
        per_seed = ", ".join(f"{x:.4f}" for x in v["values"])
        lines.append(f"| {learner} | {v['mean']:.4f} ± {v['std']:.4f} | {per_seed} |")
    lines += ["", "All scenarios (query MAE / RMSE / nDCG@3):", "", markdown_table(records)]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs-root", default=None, help="where the run folders go (default: a temp folder)")
    p.add_argument("--smoke", action="store_true", help="one seed, one epoch, nothing written to results")
    args = p.parse_args()
    seeds = args.seeds[:1] if args.smoke else args.seeds
    extra = ["trainer.max_epochs=1"] if args.smoke else []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.runs_root or tmp)
        t0 = time.perf_counter()
        records = run_all(root, seeds, extra)
        elapsed = time.perf_counter() - t0
    text = render(records, seeds)
    print(text)
    if args.smoke:
        return 0
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    meta = {
        "command": command_line("ml100k_baselines.py"),
        "seconds": round(elapsed, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": torch.get_num_threads(),
    }
    (results / "ml100k_baselines.json").write_text(
        json.dumps({"meta": meta, "user_cold_mae": summary(records), "runs": records}, indent=2, sort_keys=True)
    )
    footer = f"\n\n_Produced by `{meta['command']}` in {meta['seconds']} s (torch {meta['torch']}, {meta['cpus']} CPU threads)._"
    (results / "ml100k_baselines.md").write_text("# " + __doc__.splitlines()[0] + "\n\n" + text + footer + "\n")
    update_readme(README_MARK, text + footer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
