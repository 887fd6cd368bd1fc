"""Cold-start top-k against classic collaborative filtering: user-cold full ranking on MovieLens-100K
(explicit, relevant = rating >= 4) and HetRec Last.fm 2K (implicit: 4 uniform negatives per positive,
sampled softmax), mean ± 95% CI over seeds on one split, support-size curve K = 1, 3, 5, 10, 20.

Learners: the fold-in baselines ``popularity``, ``itemknn``, ``ease`` (no training on the new user;
EASE's L2 and ItemKNN's neighbourhood size and shrinkage chosen on the validation users, ItemKNN also at
its fixed former defaults, ``FIXED_KNN``; on ml-100k ``itemknn``/``ease`` also with ``learner.fold=rated``,
folding in every rated support item as ``fism_ease`` does; each also with its setting chosen for small supports,
``SIZED``), ``global`` and ``finetune``, the gradient meta-learner
``maml`` and the amortised learners (``amortised``, which on the two-tower model modulates its output layer;
``fism`` and ``fism_ease`` — fism with an EASE prior, its recipe per data set in ``FISM_EASE`` — on the
two-tower model only), each on both base models where it applies (``melu`` MLP and ``twotower``). Every learner sees the same split
(asserted: one split hash), candidates, relevance rule and tuning budget (none beyond early stopping and
checkpoint selection on the validation users' Recall@10, EASE's validation grid of l2, ItemKNN's of neighbours x shrink, and for
``fism_ease`` its validation-chosen start where its recipe sets ``cf_start=validation``; the recipe per data set was
chosen on the validation users of seed 0, see ``FISM_EASE``). Writes ``benchmarks/results/ranking_vs_cf.md`` and the
README block ``ranking_vs_cf``.

    METAREC_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/ranking_vs_cf.py [--data ml100k lastfm]

Resumable (runs live in ``--work``; each finished run's config.yaml and metrics.json are also kept in
``--store``, committed, so that a benchmark longer than one sitting resumes from them); ``--smoke`` runs a few learners for a few meta-batches on synthetic
data in a temp folder and writes nothing under benchmarks/results.
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
from bench_utils import (README, command_line, curve_table, merge_blocks, read_block, run_model_groups, scenario_table,
                         update_readme)

from metarec.compare import ALL, run_name
from metarec.compare_help import RUNS
from metarec.runs import is_finished

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NAME = "ranking_vs_cf"
STORE = RESULTS / f"{NAME}_runs"  # kept run records, per data set and base model (bench_utils.keep_runs)
SIZES = ["1", "3", "5", "10", "20"]
METRICS = ["full_recall@10", "full_ndcg@10", "full_hitrate@10"]
# every trained learner keeps the epoch with the best validation-user Recall@10 (the job measured here)
COMMON = ["data.split.scenarios=[user_cold]", "trainer.max_epochs=30", "trainer.patience=5",
          "trainer.monitor=full_recall@10", "trainer.enable_progress_bar=false"]
DATA = {
    "ml100k": ["data=movielens100k"],
    "lastfm": ["data=lastfm2k", "data.negatives.loss=softmax"],
}
# fism_ease's recipe per data set, chosen on the validation users (never on test users):
# - ml100k: meta-trained on log-uniform support sizes, gates from their fixed start, learning at a tenth of
#   the usual rate (cf_lr_scale=3), ItemKNN's gate starting at 20 (cf_knn_scale=20): the best of 12 recipes
#   by validation Recall@10 averaged over the full support and the supports cut to 1, 3 and 5 ratings (the
#   val_k1/3/5 passes of data.val_support_sizes; the criterion the baselines' learner.select_sizes rows use),
#   mean of seeds 0-2: 0.2645 against 0.2640 for the former recipe (cf_knn_scale=5, chosen on the full
#   support alone: 0.3867 there against 0.3788) — a near tie on validation; with cf_knn_scale=20 also
#   cf_knn_neighbours=400 0.2638, cf_start=validation (sizes 1-20) 0.2622; from the former recipe
#   cf_knn_neighbours=400 0.2616, cf_knn_scale=50 0.2600, cf_start=validation 0.2560 (sizes 1-20 or 1-5),
#   and with it cf_lr_scale=1 0.2603, cf_lr_scale=10 0.2597; Last.fm's recipe 0.2589 (0.2587 without
#   loo_targets);
# - lastfm: the fixed start is dominated by ItemKNN, which ranks below EASE there: prior-only validation
#   Recall@10 0.1946 against 0.2134 for the validation-chosen start (cf_start=validation); half the training
#   episodes full, half log-uniform (data.train_support=mixed: full-support training alone collapsed at small
#   supports), the gates learning at a tenth of the usual rate (cf_lr_scale=3: at 30 validation fell from
#   0.2134 to 0.198-0.212 within epochs), at most 8 leave-one-out targets per task (1.5x faster steps);
#   the start scored over the validation supports cut to the benchmark's sizes too (cf_start_sizes): with
#   one to five ratings ItemKNN's fold-in ranks best there (prior-only validation Recall@10 at K = 1 / 3 / 5:
#   ItemKNN 0.080 / 0.129 / 0.147, EASE 0.070 / 0.112 / 0.129, the full-support start 0.083 / 0.119 / 0.136;
#   the best mix per size 0.094 / 0.134 / 0.153).
FISM_EASE = {
    "ml100k": "fism_ease@data.train_support=loguniform,learner.cf_lr_scale=3,learner.cf_knn_scale=20",
    "lastfm": ("fism_ease@data.train_support=mixed,learner.cf_start=validation,learner.cf_start_sizes=[1,3,5,10,20],"
               "learner.cf_lr_scale=3,learner.loo_targets=8"),
}
# the fold-in baselines also folding in every rated support item (as fism_ease does on explicit ratings);
# on implicit data `fold` changes nothing, so they run on ml100k only
RATED = ["itemknn@learner.fold=rated", "ease@learner.fold=rated"]
# the fold-in baselines' settings chosen for small supports too, by fism_ease's ml100k criterion: the mean
# validation Recall@10 over the full support and the supports cut to 1, 3, 5 ratings (learner.select_sizes)
SIZED = ["itemknn@learner.select_sizes=[1,3,5]", "ease@learner.select_sizes=[1,3,5]"]
SIZED_RATED = ["itemknn@learner.fold=rated,learner.select_sizes=[1,3,5]", "ease@learner.fold=rated,learner.select_sizes=[1,3,5]"]
# itemknn chooses neighbours and shrink on the validation users (as ease its l2); the fixed pair it used
# before (100 neighbours, shrink 10) is kept as a row: on both data sets it tests above the chosen pair
FIXED_KNN = "itemknn@learner.neighbours_grid=null,learner.shrink_grid=null"
# (base model, learners run on it); baselines without a model run in the first group
GROUPS = [
    ("melu", ["popularity", "itemknn", FIXED_KNN, "ease", *RATED, *SIZED, *SIZED_RATED, "global", "finetune", "maml",
              "amortised"]),
    ("twotower", ["global", "finetune", "maml", "amortised", "fism", "fism_ease"]),  # fism_ease: FISM_EASE's recipe
]

TITLES = {"ml100k": "MovieLens-100K (explicit; relevant = rating >= 4)", "lastfm": "Last.fm 2K (implicit; sampled softmax)"}
INTRO = ("User-cold full ranking: after adapting to the support, every existing item except the support's "
         "(positive) items is ranked; mean ± 95% CI half-width over seeds; best per column in bold. Each data set's "
         "section comes from its own call (`--data NAME` rewrites that section only).")


def placeholder(block: str) -> str:
    """A data set's section before its first run."""
    name = block.removeprefix(f"{NAME}_")
    return f"### {TITLES[name]}\n\n_Not run yet: `python benchmarks/ranking_vs_cf.py --data {name} --work DIR`._"


def kept(store: Path, model: str, learner: str, seeds: list[str]) -> bool:
    """Whether every seed's run of ``learner`` on ``model`` is kept in ``store`` (one data set's)."""
    return all(is_finished(store / model / RUNS / run_name(learner, int(s))) for s in seeds)


def run_data(name: str, work: Path, seeds: list[str], smoke: bool, store: Path | None = None,
             kept_only: bool = False) -> tuple[dict, list[str], int, set, list[str]]:
    """Both groups on data set ``name``; stats keyed by ``"learner (model)"``, and the learners left out
    (``kept_only``: only learners whose runs are all kept in ``store`` are compared; nothing new runs)."""
    groups, sizes, missing = [], SIZES, []
    for model, learners in GROUPS:
        overrides = [*DATA[name], *COMMON, f"model={model}"]
        if name != "ml100k":
            learners = [l for l in learners if l not in RATED + SIZED_RATED]
        learners = [FISM_EASE[name] if l == "fism_ease" else l for l in learners]
        if smoke:
            learners = learners[:2] if model == "melu" else ["fism", FISM_EASE["ml100k"]]
            overrides = ["data=synthetic", "data.params.n_users=150", "data.split.scenarios=[user_cold]",
                         f"model={model}", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
                         "trainer.monitor=full_recall@10",
                         "trainer.enable_progress_bar=false"]
            sizes = ["3"]
        if kept_only:
            missing += [f"{l} ({model})" for l in learners if not kept(store / name, model, l, seeds)]
            learners = [l for l in learners if kept(store / name, model, l, seeds)]
        if learners:
            groups.append((model, learners, overrides))
    return (*run_model_groups(work / name, groups, seeds, sizes, store=None if store is None else store / name),
            missing)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=f"runs/{NAME}", help="output folder of the comparisons (runs, checkpoints)")
    p.add_argument("--seeds", nargs="+", default=["0", "1", "2"])
    p.add_argument("--data", nargs="+", default=list(DATA), choices=list(DATA))
    p.add_argument("--store", default=str(STORE.relative_to(HERE.parent)),
                   help="folder of kept run records (each finished run's config.yaml and metrics.json, committed): "
                        "restored into --work first, so a call resumes where an earlier one stopped; 'none': off")
    p.add_argument("--kept-only", action="store_true",
                   help="tabulate the learners whose runs are all kept in --store, run nothing, and name the others "
                        "(a section while a long data set is still running)")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp()) if args.smoke else Path(args.work)
    blocks = {}
    for name in (["smoke"] if args.smoke else args.data):
        t_data = time.perf_counter()
        store = None if args.smoke or args.store == "none" else Path(args.store)
        n_kept = 0 if store is None else len(list((store / name).glob("*/runs/*/metrics.json")))
        if args.kept_only and store is None:
            print("--kept-only tabulates the runs kept in --store; give a store", file=sys.stderr)
            return 2
        stats, labels, n_runs, hashes, missing = run_data("ml100k" if args.smoke else name, work, ["0"] if args.smoke
                                                          else args.seeds, args.smoke, store, args.kept_only)
        if not labels:
            print(f"{name}: no learner has all its runs kept in {store}", file=sys.stderr)
            return 2
        if len(hashes) != 1:
            print(f"{name}: the groups ran on different splits ({sorted(hashes)})", file=sys.stderr)
            return 1
        table = scenario_table(stats, labels, ["user_cold"], METRICS)
        sizes = [3] if args.smoke else [int(k) for k in SIZES]
        curve = curve_table(stats, labels, "user_cold", METRICS[0], sizes)
        print("\n".join(table))
        if args.smoke:
            shutil.rmtree(work, ignore_errors=True)
            missing = [l for l in labels if (l, ALL, "user_cold", METRICS[0]) not in stats]
            if missing:
                print(f"no full_recall@10 for {missing}", file=sys.stderr)
                return 1
            return 0
        key = lambda l: stats[(l, ALL, "user_cold", METRICS[0])]  # noqa: E731
        ranked = sorted((l for l in labels if (l, ALL, "user_cold", METRICS[0]) in stats), key=lambda l: -key(l).mean)
        best = ranked[0]
        rivals = [l for l in ranked[1:] if key(l).mean + key(l).half_width >= key(best).mean - key(best).half_width]
        verdict = (f"Best user-cold Recall@10: {best} ({key(best).mean:.4f}); "
                   + (f"the 95% intervals of {', '.join(rivals)} overlap it." if rivals
                      else "beyond every other learner's 95% interval."))
        footer = (f"_{n_runs} runs, split {next(iter(hashes))[:12]}; produced by `{command_line('ranking_vs_cf.py')}`, "
                  f"seeds {', '.join(args.seeds)}; this call took {(time.perf_counter() - t_data) / 60:.1f} min on this "
                  f"data set (finished runs are not redone{f'; {n_kept} runs kept from earlier calls' if n_kept else ''}), torch {torch.__version__}, Python "
                  f"{platform.python_version()}, {torch.get_num_threads()} CPU threads._")
        partial = ([f"**Partial:** not run yet (or not every seed): {', '.join(missing)}. Their runs are kept as they "
                    f"finish; `--data {name}` without `--kept-only` completes them.", ""] if missing else [])
        blocks[f"{NAME}_{name}"] = "\n".join([f"### {TITLES[name]}", "", *partial, *table, "", verdict, "",
                                              "Recall@10 by support size K:", "", *curve, "", footer])
    order = [f"{NAME}_{name}" for name in DATA]
    results = RESULTS / f"{NAME}.md"
    old_file = results.read_text() if results.exists() else None
    RESULTS.mkdir(exist_ok=True)
    body = merge_blocks(old_file, blocks, order, placeholder)
    results.write_text("\n".join(["# Cold-start top-k against classic CF", "", INTRO, "", body]) + "\n")
    readme = read_block(README.read_text(), NAME)
    update_readme(NAME, "\n".join([INTRO, "", merge_blocks(readme, blocks, order, placeholder)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
