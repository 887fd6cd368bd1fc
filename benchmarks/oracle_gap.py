"""How far from the best possible: every learner's query MAE on synthetic data divided by the Bayes-optimal
oracle's, per scenario, mean ± 95% CI over seeds on one split.

The data (``data=synthetic``, whole-star ratings) come from a known linear-Gaussian preference model
(see ``metarec/data/sources/synthetic.py``), so for every evaluation task the best possible prediction
is computable (``metarec/data/oracle.py``): the **posterior oracle** knows the true item vectors, biases
and the feature prior and updates on the task's support; the **prior oracle** uses only the user's
features. A ratio of 1.00 to the posterior oracle is the best any learner can do; a ratio to the prior
oracle above 1 means the learner did not even use the features as well as the truth allows. The ratings are
whole stars and the oracle predicts whole stars (the absolute-error optimum), so every learner does too
(``data.rating_grid=true``: its clipped prediction snapped to the nearest whole star, the same rule for
all); the row ``ridge@data.rating_grid=false`` is ridge's real-valued prediction, and the row *real-valued
posterior oracle* is the posterior's median before rounding, the best a real-valued prediction can reach. On user-cold, the row *oracle
with fitted items* (``oracle_fit.py``) replaces the true item vectors and biases by a fit of the true model
family to the training users' ratings: how far finite training data alone keep a correct learner from 1.00×;
the row *interval fold-in with fitted items* folds the support in with the exact likelihood of a whole star
(its cell of the grid, as ``ridge_interval`` does) at those items.

Learners run on both base models (``melu`` MLP and the dot-product ``twotower``, which matches the
generating model). ``--tuned DIR`` uses the best configs of ``metarec tune`` studies (validation users
only, the same number of trials for every learner) instead of the defaults: ``DIR/melu`` and
``DIR/twotower``, one ``metarec tune --out DIR/<model> model=<model> <the DATA settings below>`` each. Writes ``benchmarks/results/oracle_gap.md`` and the README block
``oracle_gap``.

    .venv/bin/python benchmarks/oracle_gap.py [--seeds 0 1 2] [--tuned DIR]

Resumable (runs live in ``--work``); ``--smoke`` runs two learners for a few meta-batches on a small data
set in a temp folder and writes nothing under benchmarks/results.
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
from metarec.tune_outputs import load_tuned

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NAME = "oracle_gap"
SCENARIOS = ("warm", "user_cold", "item_cold", "user_item_cold")
# whole stars, as the oracle; an epoch cap early stopping ends runs well before (at the 30-epoch default some
# learners were still improving on this data: convergence.py); validation reads up to five episodes per
# validation user (data.val_folds=5: the split's, then the next 10 ratings in turn as the query)
DATA = ["data=synthetic", "data.params.round_ratings=true", "data.rating_grid=true", "trainer.max_epochs=100",
        "data.val_folds=5"]
COMMON = ["trainer.enable_progress_bar=false"]
GROUPS = [
    ("melu", ["global", "finetune", "maml", "metasgd", "amortised"]),
    ("twotower", ["global", "finetune", "maml", "ridge", "ridge_interval", "ridge@data.rating_grid=false"]),
]


FITTED = {  # user-cold references with the items fitted to the training users (oracle_fit.py): row -> fold-in
    "oracle with fitted items (user-cold)": fitted_mae,  # conjugate Gaussian fold-in (rounding as noise)
    "interval fold-in with fitted items (user-cold)": interval_mae,  # the exact likelihood of a whole star
}


def oracles(overrides: list[str]) -> tuple[dict, dict, dict, dict, dict]:
    """Posterior, prior and real-valued posterior oracle MAE per scenario on the split ``overrides`` make, the
    fold-ins with fitted items (``FITTED``: row -> {scenario: MAE}, user-cold only: the other scenarios' items or
    users are in training), and users per scenario."""
    cfg = validate(compose(overrides))
    dm = ColdStartDataModule(data_config(cfg.data), seed=int(cfg.seed))
    dm.setup()
    truth = synthetic_truth(SyntheticConfig(**cfg.data.params))
    post, prior, real, users = {}, {}, {}, {}
    fitted: dict[str, dict] = {row: {} for row in FITTED}
    items = fit_items(truth, *training_ratings(dm.dataset, dm.split), truth.item_vectors.shape[0])
    for s in dm.scenarios:
        tasks = dm.test_tasks(s)
        post[s], prior[s], users[s] = (oracle_mae(truth, dm.dataset, tasks),
                                       oracle_mae(truth, dm.dataset, tasks, posterior=False), len(tasks))
        real[s] = oracle_mae(truth, dm.dataset, tasks, whole_stars=False)
        if s == "user_cold":
            for row, fold_in in FITTED.items():
                fitted[row][s] = fold_in(truth, items, dm.dataset, tasks)
    return post, prior, real, fitted, users


def run_groups(work: Path, seeds: list[str], data: list[str], smoke: bool, tuned: str | None):
    groups = []
    for model, learners in GROUPS:
        overrides = [*data, *COMMON, f"model={model}"]
        if smoke:
            learners = ["global", "maml"] if model == "melu" else ["ridge", "ridge@data.rating_grid=false"]
            overrides += ["trainer.max_epochs=1", "trainer.limit_train_batches=3"]
        groups.append((model, learners, overrides))
    # variants (``ridge@data.rating_grid=false``) run on their learner's tuned settings, the variant's winning
    best = {m: load_tuned(Path(tuned) / m, sorted({l.split("@")[0] for l in learners}))
            for m, learners, _ in groups} if tuned else None
    return run_model_groups(work, groups, seeds, ["3"], best)  # one support size: the oracle is at full support


def table(stats, labels, post, prior, real, fitted, scenarios) -> list[str]:
    """MAE ± CI and its ratio to the posterior oracle per scenario; best learner per column in bold."""
    header = ["learner"] + [f"{s} MAE (× oracle)" for s in scenarios]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    best = {s: min((stats[(l, ALL, s, "mae")].mean for l in labels if (l, ALL, s, "mae") in stats), default=None)
            for s in scenarios}
    for l in labels:
        cells = []
        for s in scenarios:
            st = stats.get((l, ALL, s, "mae"))
            if st is None:
                cells.append("–")
                continue
            spread = f" ± {st.half_width:.4f}" if st.n > 1 else ""  # one seed: no interval
            text = f"{st.mean:.4f}{spread} ({st.mean / post[s]:.2f}×)"
            cells.append(f"**{text}**" if st.mean == best[s] else text)
        lines.append(f"| {l} | " + " | ".join(cells) + " |")
    lines.append("| *prior oracle (features only)* | " + " | ".join(
        f"{prior[s]:.4f} ({prior[s] / post[s]:.2f}×)" for s in scenarios) + " |")
    lines.append("| *real-valued posterior oracle (not rounded)* | " + " | ".join(
        f"{real[s]:.4f} ({real[s] / post[s]:.2f}×)" for s in scenarios) + " |")
    for row, ref in fitted.items():
        lines.append(f"| *{row}* | " + " | ".join(
            f"{ref[s]:.4f} ({ref[s] / post[s]:.2f}×)" if s in ref else "–" for s in scenarios) + " |")
    lines.append("| *posterior oracle (features + support)* | " + " | ".join(f"{post[s]:.4f} (1.00×)" for s in scenarios) + " |")
    return lines


def verdict(stats, labels, post, prior, scenario: str = "user_cold") -> str:
    have = [l for l in labels if (l, ALL, scenario, "mae") in stats]
    if not have:
        return ""
    mae = {l: stats[(l, ALL, scenario, "mae")].mean for l in have}
    best = min(have, key=mae.get)
    above_prior = [l for l in have if mae[l] >= prior[scenario]]
    return (f"{scenario}: best {best} at {mae[best] / post[scenario]:.2f}× the posterior oracle "
            f"(target ≤ 1.10×); {len(above_prior)} of {len(have)} learners do not beat the prior-only oracle"
            + (f" ({', '.join(above_prior)})." if above_prior else "."))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=f"runs/{NAME}", help="output folder of the comparisons (runs, checkpoints)")
    p.add_argument("--seeds", nargs="+", default=["0", "1", "2"])
    p.add_argument("--tuned", default=None, help="a `metarec tune` output folder: use its best configs")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp()) if args.smoke else Path(args.work)
    data = [*DATA, "data.params.n_users=200"] if args.smoke else DATA
    seeds = ["0"] if args.smoke else args.seeds
    t0 = time.perf_counter()
    post, prior, real, fitted, users = oracles(data)
    stats, labels, n_runs, hashes = run_groups(work, seeds, data, args.smoke, args.tuned)
    if len(hashes) != 1:
        print(f"the groups ran on different splits ({sorted(hashes)})", file=sys.stderr)
        return 1
    scenarios = [s for s in SCENARIOS if s in post]
    lines = table(stats, labels, post, prior, real, fitted, scenarios)
    summary = verdict(stats, labels, post, prior)
    print("\n".join(lines) + "\n\n" + summary)
    if args.smoke:
        shutil.rmtree(work, ignore_errors=True)
        missing = [l for l in labels if (l, ALL, "user_cold", "mae") not in stats]
        if missing:
            print(f"no user_cold MAE for {missing}", file=sys.stderr)
            return 1
        return 0
    command = command_line("oracle_gap.py")
    budget = "tuned configs from `--tuned DIR`" if args.tuned else "default configs (no tuning)"
    footer = (f"_Produced by `{command}`: {n_runs} runs ({budget}), seeds {', '.join(seeds)}, split "
              f"{next(iter(hashes))[:12]}, users per scenario {', '.join(f'{s} {users[s]}' for s in scenarios)}; "
              f"this call took {(time.perf_counter() - t0) / 60:.1f} min (finished runs are not redone), torch "
              f"{torch.__version__}, Python {platform.python_version()}, {torch.get_num_threads()} CPU threads._")
    intro = ("Query MAE on synthetic whole-star ratings with a known generating model, mean ± 95% CI half-width "
             "over seeds, and in brackets its ratio to the Bayes-optimal posterior oracle's MAE on the same "
             "tasks (1.00× is the best possible). Every learner predicts whole stars, as the oracle does "
             "(`data.rating_grid=true`), except the real-valued contrast `ridge@data.rating_grid=false`.")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{NAME}.md").write_text("\n".join(["# Distance to the Bayes-optimal oracle", "", intro, "",
                                                   *lines, "", summary, "", footer]) + "\n")
    update_readme(NAME, "\n".join([intro, "", *lines, "", summary, "", footer]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
