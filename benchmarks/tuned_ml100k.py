"""Rating quality on MovieLens-100K with the same tuning budget for every learner: user-cold MAE of each
learner at its ``metarec tune`` config (Optuna TPE, median pruning, the same number of trials for all,
scored on the validation users only), mean ± 95% CI over seeds on the default split.

Learners: ``global`` (the non-adapting baseline), ``finetune``, ``bias`` (the baseline predictor
mu + b_i + b_u with the user's bias folded in from the support: no training, its two shrinkages tuned) and
the meta-learners ``maml``, ``metasgd`` and ``amortised`` on the ``melu`` MLP; ``global``, ``finetune``,
``maml``, ``amortised`` and ``ridge`` on the dot-product ``twotower``. Every learner searches its own space
(``metarec/configs/search/<learner>.yaml``); pass ``--rating-grid`` to have every learner predict whole
stars (``data.rating_grid=true``, the same rule for all) in tuning and testing, ``--rating-loss mae`` to have
every learner train on the absolute error of its real-valued predictions (``data.rating_loss=mae``; inner loops
keep the squared error). Validation (early stopping,
checkpoints, the trials' scores) reads up to five episodes per validation user (``data.val_folds=5``: the
split's, then the user's next 10 ratings in turn as the query), not one. Targets checked in the
verdict: the best tuned meta-learner's user-cold MAE <= 0.80, and every tuned meta-learner below the
best tuned ``global``; the verdict also names the meta-learners below tuned ``bias``, the strongest
simple rating predictor. Writes
``benchmarks/results/tuned_ml100k.md`` and the README block ``tuned_ml100k`` (with ``--rating-grid``:
``tuned_ml100k_grid``; with ``--rating-loss mae``: ``tuned_ml100k_mae``).

    METAREC_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/tuned_ml100k.py [--trials 10] [--seeds 0 1 2]

Resumable: the studies (``WORK/tune/<model>/study.db``) and the runs (``WORK/cmp``) continue where a killed
call stopped. ``--smoke`` tunes four learners for two trials of a few meta-batches on a small synthetic
data set in a temp folder and writes nothing under benchmarks/results.
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
from bench_utils import cell, command_line, run_model_groups, update_readme

from metarec.compare import ALL
from metarec.tune import make_tune_spec, tune
from metarec.tune_outputs import load_tuned

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NAME = "tuned_ml100k"
TARGET = 0.80
# an epoch cap early stopping ends runs well before; five validation episodes per validation user (disjoint
# queries): the 47 validation users' every epoch, checkpoint and trial scored on up to 5x their ratings
DATA = ["data=movielens100k", "trainer.max_epochs=100", "data.val_folds=5"]
COMMON = ["trainer.enable_progress_bar=false"]
GROUPS = [
    ("melu", ["global", "finetune", "bias", "maml", "metasgd", "amortised"]),
    ("twotower", ["global", "finetune", "maml", "amortised", "ridge"]),
]
BASELINES = ("global", "finetune", "bias")  # the rest are the meta-learners the targets are about
SCENARIO = "user_cold"


def run(work: Path, trials: int, seeds: list[str], data: list[str], smoke: bool):
    groups, best = [], {}
    for model, learners in GROUPS:
        overrides = [*data, *COMMON, f"model={model}"]
        if smoke:
            learners = ["global", "bias", "maml"] if model == "melu" else ["ridge"]
            overrides += ["trainer.max_epochs=1", "trainer.limit_train_batches=3"]
        spec = make_tune_spec(work / "tune" / model, learners, trials, overrides)
        tune(spec, echo=lambda line: print(line, flush=True))
        best[model] = load_tuned(spec.out, learners)
        groups.append((model, learners, overrides))
    stats, labels, n_runs, hashes = run_model_groups(work / "cmp", groups, seeds, ["3"], best)
    return stats, labels, n_runs, hashes, best


def table(stats, labels, best) -> list[str]:
    header = ["learner", f"{SCENARIO} MAE", f"{SCENARIO} RMSE", "tuned settings"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    maes = {l: stats[(l, ALL, SCENARIO, "mae")].mean for l in labels if (l, ALL, SCENARIO, "mae") in stats}
    top = min(maes.values()) if maes else None
    for l in labels:
        cells = []
        for metric in ("mae", "rmse"):
            st = stats.get((l, ALL, SCENARIO, metric))
            text = cell(st)
            cells.append(f"**{text}**" if metric == "mae" and st is not None and st.mean == top else text)
        learner, model = l.rsplit(" (", 1)
        settings = " ".join(f"`{short(o)}`" for o in best[model.rstrip(")")].get(learner, [])) or "(defaults)"
        lines.append(f"| {l} | " + " | ".join(cells) + f" | {settings} |")
    return lines


def short(override: str) -> str:
    """``learner.lr=0.0026938830192854116`` -> ``learner.lr=0.00269``: a tuned real number to 3 digits."""
    key, _, value = override.partition("=")
    try:
        return f"{key}={float(value):.3g}" if any(c in value for c in ".e") else override
    except ValueError:
        return override


def verdict(stats, labels) -> str:
    mae = {l: stats[(l, ALL, SCENARIO, "mae")] for l in labels if (l, ALL, SCENARIO, "mae") in stats}
    meta = [l for l in mae if l.split(" (")[0] not in BASELINES]
    globals_ = [l for l in mae if l.startswith("global (")]
    if not meta or not globals_:
        return ""
    best = min(meta, key=lambda l: mae[l].mean)
    ref = min(globals_, key=lambda l: mae[l].mean)
    losers = [l for l in meta if mae[l].mean >= mae[ref].mean]
    overlap = [l for l in meta if l not in losers and mae[l].mean + mae[l].half_width >= mae[ref].mean - mae[ref].half_width]
    text = (f"Best tuned meta-learner: {best}, user-cold MAE {cell(mae[best])} "
            f"(target <= {TARGET:.2f}: {'met' if mae[best].mean <= TARGET else 'missed'}). Best tuned global: {ref} "
            f"{mae[ref].mean:.4f}; meta-learners not below it: {', '.join(losers) or 'none'}"
            + (f"; below it but within its 95% interval: {', '.join(overlap)}." if overlap else "."))
    simple = [l for l in mae if l.startswith("bias (")]
    if simple:
        b = mae[simple[0]]
        below = [l for l in meta if mae[l].mean < b.mean]
        beyond = [l for l in below if mae[l].mean + mae[l].half_width < b.mean - b.half_width]
        text += (f" Tuned bias (the baseline predictor): {b.mean:.4f}; meta-learners below it: "
                 f"{', '.join(below) or 'none'}" + (f" (beyond both 95% intervals: {', '.join(beyond) or 'none'})." if below else "."))
    return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=f"runs/{NAME}", help="output folder of the studies and runs")
    p.add_argument("--trials", type=int, default=10, help="trials per learner (the same for every learner)")
    p.add_argument("--seeds", nargs="+", default=["0", "1", "2"])
    p.add_argument("--rating-grid", action="store_true", help="every learner predicts whole stars (data.rating_grid)")
    p.add_argument("--rating-loss", choices=("mse", "mae"), default="mse",
                   help="every learner's training loss on the ratings (data.rating_loss)")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp()) if args.smoke else Path(args.work)
    smoke = ["data=synthetic", "data.params.n_users=150", "data.params.round_ratings=true", "data.val_folds=2"]
    data = (smoke if args.smoke else list(DATA)) + (["data.rating_grid=true"] if args.rating_grid else [])
    data += [f"data.rating_loss={args.rating_loss}"] if args.rating_loss != "mse" else []
    seeds, trials = (["0"], 2) if args.smoke else (args.seeds, args.trials)
    t0 = time.perf_counter()
    stats, labels, n_runs, hashes, best = run(work, trials, seeds, data, args.smoke)
    if len(hashes) != 1:
        print(f"the groups ran on different splits ({sorted(hashes)})", file=sys.stderr)
        return 1
    lines, summary = table(stats, labels, best), verdict(stats, labels)
    print("\n".join(lines) + "\n\n" + summary)
    if args.smoke:
        shutil.rmtree(work, ignore_errors=True)
        missing = [l for l in labels if (l, ALL, SCENARIO, "mae") not in stats]
        if missing or not summary:
            print(f"no {SCENARIO} MAE for {missing}", file=sys.stderr)
            return 1
        return 0
    command = command_line("tuned_ml100k.py")
    grid = "every learner predicts whole stars (`data.rating_grid=true`)" if args.rating_grid else "real-valued predictions"
    if args.rating_loss != "mse":
        grid += f"; every learner trains on the {args.rating_loss.upper()} of its ratings (`data.rating_loss={args.rating_loss}`)"
    footer = (f"_Produced by `{command}`: {trials} trials per learner, then {n_runs} runs, seeds {', '.join(seeds)}, "
              f"split {next(iter(hashes))[:12]}; {grid}; this call took {(time.perf_counter() - t0) / 60:.1f} min "
              f"(finished trials and runs are not redone), torch {torch.__version__}, Python "
              f"{platform.python_version()}, {torch.get_num_threads()} CPU threads._")
    intro = (f"User-cold query MAE on MovieLens-100K, each learner at the best of {trials} `metarec tune` trials "
             "(validation users only; the same budget for every learner), mean ± 95% CI half-width over seeds.")
    RESULTS.mkdir(exist_ok=True)
    body = "\n".join([intro, "", *lines, "", summary, "", footer])
    name = NAME + ("_grid" if args.rating_grid else "") + ("" if args.rating_loss == "mse" else f"_{args.rating_loss}")
    (RESULTS / f"{name}.md").write_text(f"# Tuned learners on MovieLens-100K ({grid})\n\n{body}\n")
    update_readme(name, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
