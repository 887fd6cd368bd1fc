"""The help text of ``metarec compare`` (what the command does, its outputs, overrides and variants)."""

from metarec.compare_outputs import MANIFEST

RUNS = "runs"  # run.experiment: the runs live in DIR/runs/<learner>-s<seed>

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
     and devices may differ). On a terminal a progress bar over the grid (runs done / total, ETA)
     replaces each run's own bar; elsewhere (logs) one line per run, ending with the ETA.
  3. Outputs in DIR, rewritten atomically from the finished runs on every call:
       results.csv         one row per run and test metric: learner, seed, support_size ("all" for
                           the full support, else K), scenario, metric, value, run_dir (relative to DIR)
       results.md          learners x (scenario, metric) at full support as `mean ± h`, h = half-width
                           of the 95% Student-t confidence interval over seeds, best per column in bold;
                           then the MAE by support size K for each scenario (the cold-start curve);
                           the split hash, seeds and number of runs
       curve_<scenario>.png  MAE vs support size K, one line per learner, error bars = 95% CI
       bars_mae.png        full-support MAE per scenario and learner, error bars = 95% CI
     With logger=wandb (offline unless logger.mode or WANDB_MODE says otherwise) the grid is one W&B
     group named after DIR (or logger.group): each run with job_type = its learner or variant and
     tags learner:/data:/model:/scenario:, plus a summary run (job_type compare, files under DIR/wandb)
     with the tables, the support-size curves as W&B line plots and the plots above;
     logger.artifacts=true adds the split manifest and each run's best checkpoint as artifacts.

Overrides (group=option or dotted.key=value, as for `metarec fit`) apply to every run, e.g.
  metarec compare --out runs/cmp --learners maml melu5 global --seeds 0 1 2 \\
      data=movielens100k trainer.max_epochs=20 logger=wandb
compare sets learner (and learner.*), seed, run.*, data.manifest and data.eval_support_sizes itself;
overriding them is an error (use --learners, --seeds, --out, --support-sizes; for other learner
settings use a variant, below, or add an option file learner/<option>.yaml to a folder given with
--config-path).

Variants: LEARNER@key=value[,key=value] in --learners is that learner with other settings, a row of
its own in every table and plot, run in its own folders DIR/{RUNS}/<variant>-s<seed> (resumable like
the others), e.g.
  metarec compare --out runs/steps --learners maml maml@inner_steps=5 maml@inner_lr=0.1,inner_steps=3
A key without a dot is a learner setting; model.* and trainer.* keys may differ too
(maml@model.embed_dim=16); data settings and seeds are shared by the grid.
"""

