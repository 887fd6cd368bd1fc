"""How much of the user-cold distance to the Bayes-optimal oracle is the amount of training data: `ridge` and
reference fold-ins on the oracle benchmark's synthetic data (`oracle_gap.py`) at 1x, 2x, 4x and 8x its
800 users, the same generating model, one split per size.

`oracle_gap.py` finds the closest learners, `ridge` (two-tower) and `ridge_interval` (the same with the
whole-star likelihood), at 1.23x and 1.16x the posterior oracle on user-cold at 800 users. Whether that distance is the learner's or the data's is a question of how it moves when only
the number of users grows (items, ratings per user, noise and the split fractions stay). Per size:

- `ridge` at the settings the oracle study's `metarec tune` chose at 800 users (`model.dim=4`,
  `learner.prior_precision=1.57`, `learner.lr=0.0027`, `model.embed_dim=64`, `trainer.patience=20`, the rest
  at their defaults), not re-tuned per size, whole stars (`data.rating_grid=true`, as the oracle), a 100-epoch
  cap, five validation episodes per validation user (`data.val_folds=5`), as in that study; and the same
  with `learner.likelihood=interval` (a support rating is its cell of the rating grid), with and without
  `learner.query_loss=cell` (meta-trained on that likelihood of the query ratings, not their squared error);
- *Gaussian fold-in, true items*: the conjugate posterior mean of the user vector given the support with
  the **true** item vectors, biases and feature prior, rounding taken as Gaussian noise and clipping
  ignored, the prediction clipped and rounded (``oracle_fit.fitted_mae`` on the truth) -- what a learner
  with perfect item vectors and a Gaussian likelihood (every metarec learner's squared error) can reach;
- *interval fold-in, true items*: the MAP user vector under the exact likelihood of a whole star (its cell,
  open at 1 and 5: censored probit) with the true items, prior and noise (``oracle_fit.interval_mae``);
- *EM-fitted items*: the Gaussian fold-in with the item vectors fitted to the training users' ratings by EM
  (``oracle_fit.fit_items``; the row *oracle with fitted items* of `oracle_gap.py`), and the interval fold-in
  with those items (the row *interval fold-in with fitted items*): what finite training data leave to a
  learner that estimates the items as well as EM and folds the support in exactly;
- the posterior and the prior-only oracle (``metarec.data.oracle``).

Run::

    .venv/bin/python benchmarks/oracle_scaling.py --work DIR     # about 45 minutes on one core
    .venv/bin/python benchmarks/oracle_scaling.py --smoke        # CI: tiny sizes, one epoch, nothing written
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_utils import command_line, run_model_groups, update_readme
from oracle_fit import fit_items, fitted_mae, interval_mae, training_ratings

from metarec.compare import ALL
from metarec.config import compose, data_config, validate
from metarec.data.datamodule import ColdStartDataModule
from metarec.data.oracle import oracle_mae
from metarec.data.sources.synthetic import SyntheticConfig, synthetic_truth

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NAME = "oracle_scaling"
SCENARIO = "user_cold"
SIZES = [800, 1600, 3200, 6400]
DATA = ["data=synthetic", "data.params.round_ratings=true", "data.rating_grid=true", "trainer.max_epochs=100",
        "data.val_folds=5"]
# the oracle study's tuned ridge (README: distance to the oracle; ridge_interval's study chose the same trial)
RIDGE = "ridge@prior_precision=1.57,lr=0.0027,model.embed_dim=64"
RIDGE_INTERVAL = RIDGE + ",likelihood=interval"  # the same with the whole-star (censored probit) fold-in
RIDGE_CELL = RIDGE_INTERVAL + ",query_loss=cell"  # and meta-trained on that likelihood of the query ratings
VARIANTS = [RIDGE, RIDGE_INTERVAL, RIDGE_CELL]
NAMES = ["ridge", "ridge with the interval likelihood", "ridge with the interval likelihood and query loss"]
OVERRIDES = ["model=twotower", "model.dim=4", "trainer.patience=20", "trainer.enable_progress_bar=false"]
TARGET = 1.10


def references(data: list[str]) -> dict:
    """User-cold MAE of the oracles and the reference fold-ins on the split ``data`` makes, and its sizes."""
    cfg = validate(compose(data))
    dm = ColdStartDataModule(data_config(cfg.data), seed=int(cfg.seed))
    dm.setup()
    truth = synthetic_truth(SyntheticConfig(**cfg.data.params))
    tasks = dm.test_tasks(SCENARIO)
    ratings = training_ratings(dm.dataset, dm.split)
    fitted = fit_items(truth, *ratings, truth.item_vectors.shape[0])
    return {
        "posterior": oracle_mae(truth, dm.dataset, tasks),
        "prior": oracle_mae(truth, dm.dataset, tasks, posterior=False),
        "gaussian": fitted_mae(truth, (truth.item_vectors, truth.item_bias, truth.offset), dm.dataset, tasks),
        "interval": interval_mae(truth, (truth.item_vectors, truth.item_bias, truth.offset), dm.dataset, tasks),
        "fitted": fitted_mae(truth, fitted, dm.dataset, tasks),
        "fitted_interval": interval_mae(truth, fitted, dm.dataset, tasks),
        "train_users": len(dm.split.train_pool), "train_ratings": len(ratings[0]), "test_users": len(tasks),
    }


def table(rows: list[tuple[int, dict, list]]) -> list[str]:
    header = ["users", "training users / ratings", "user-cold test users", "posterior oracle MAE",
              "ridge MAE (× oracle)", "ridge, interval likelihood (×)", "ridge, interval likelihood and query loss (×)",
              "Gaussian fold-in, true items (×)",
              "interval fold-in, true items (×)", "EM-fitted items (×)", "interval fold-in, EM-fitted items (×)",
              "prior oracle (×)"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for n, ref, stats in rows:
        post = ref["posterior"]
        ratio = lambda v: f"{v:.4f} ({v / post:.2f}×)"  # noqa: E731
        learners = [f"{st.mean:.4f}{f' ± {st.half_width:.4f}' if st.n > 1 else ''} ({st.mean / post:.2f}×)" for st in stats]
        lines.append(f"| {n:,} | {ref['train_users']:,} / {ref['train_ratings']:,} | {ref['test_users']:,} | {post:.4f} | "
                     + " | ".join([*learners, ratio(ref["gaussian"]), ratio(ref["interval"]), ratio(ref["fitted"]),
                                   ratio(ref["fitted_interval"]), ratio(ref["prior"])]) + " |")
    return lines


def verdict(rows: list[tuple[int, dict, list]]) -> str:
    out = []
    for i, name in enumerate(NAMES):
        ratios = {n: stats[i].mean / ref["posterior"] for n, ref, stats in rows}
        within = [f"{n:,}" for n, r in ratios.items() if r <= TARGET]
        parts = ", ".join(f"{n:,} users {r:.3f}×" for n, r in ratios.items())
        out.append(f"{name} against the posterior oracle on user-cold (mean over seeds): {parts}; within {TARGET:.2f}× at "
                   + (f"{', '.join(within)} users." if within else "none of these sizes."))
    return " ".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=f"runs/{NAME}", help="output folder of the comparisons (runs, checkpoints)")
    p.add_argument("--seeds", nargs="+", default=["0", "1", "2"])
    p.add_argument("--sizes", nargs="+", type=int, default=SIZES, help="numbers of users of the synthetic data")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    if any(n < 100 for n in args.sizes):
        print("--sizes: each size must be at least 100 users", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp()) if args.smoke else Path(args.work)
    sizes, seeds = ([200, 400], ["0"]) if args.smoke else (args.sizes, args.seeds)
    extra = ["trainer.max_epochs=1", "trainer.limit_train_batches=3"] if args.smoke else []
    t0 = time.perf_counter()
    rows = []
    for n in sizes:
        data = [*DATA, f"data.params.n_users={n}"]
        ref = references(data)
        stats, labels, _, hashes = run_model_groups(work / f"users{n}", [("twotower", VARIANTS,
                                                                          [*data, *OVERRIDES, *extra])], seeds, ["3"])
        st = [stats.get((label, ALL, SCENARIO, "mae")) for label in labels]
        if None in st or len(hashes) != 1:
            print(f"{n} users: no user-cold MAE for {labels[st.index(None)] if None in st else 'ridge'}", file=sys.stderr)
            return 1
        rows.append((n, ref, st))
        print(table(rows)[-1], flush=True)
    lines, summary = table(rows), verdict(rows)
    print("\n".join(lines) + "\n\n" + summary)
    if args.smoke:
        shutil.rmtree(work, ignore_errors=True)
        return 0
    footer = (f"_Produced by `{command_line('oracle_scaling.py')}`: ridge over seeds {', '.join(seeds)} (mean ± 95% CI "
              f"half-width), one split per size; this call took {(time.perf_counter() - t0) / 60:.1f} min (finished "
              f"runs are not redone), torch {torch.__version__}, Python {platform.python_version()}, "
              f"{torch.get_num_threads()} CPU threads._")
    intro = ("User-cold query MAE on the oracle benchmark's synthetic whole-star data as only its number of users "
             "grows (items, ratings per user, noise and split fractions fixed), and in brackets the ratio to the "
             "posterior oracle's MAE on the same tasks. `ridge` at the settings tuned at 800 users; the Gaussian "
             "fold-in knows the true items but treats rounding as Gaussian noise and ignores clipping, as a "
             "squared-error learner does; the interval fold-in (and `ridge` with `likelihood=interval`) takes a whole "
             "star as its cell of the rating grid (censored probit, clipping included); `query_loss=cell` also "
             "meta-trains `ridge` on that likelihood of the query ratings instead of their squared error.")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{NAME}.md").write_text("\n".join(["# Distance to the oracle against the amount of training data", "",
                                                   intro, "", *lines, "", summary, "", footer]) + "\n")
    update_readme(NAME, "\n".join([intro, "", *lines, "", summary, "", footer]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
