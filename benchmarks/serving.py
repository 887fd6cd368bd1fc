"""Serving latency through the shipped API: ``Recommender.load(run).adapt(20 ratings).recommend(10)``.

For each learner kind (MAML scope ``all`` and ``head``, Meta-SGD, amortised, finetune, and the two-tower
learners ``ridge`` and ``fism``) a tiny run is trained (one short epoch: latency does not depend on the
model's quality) on MovieLens-100K (1,682 items; ``$METAREC_DATA_DIR``) and on a synthetic catalogue of
100,000 items (``data=synthetic data.params.n_items=100000``). Each run is loaded once; then, at torch
intra-op thread counts 1 and 2 per call (``Recommender.threads``; 1 is the default), one call is made and
discarded (the first call) and ``trials`` new users are timed: 20 ratings of random catalogue items, ``adapt`` then ``recommend(10)`` over the whole
catalogue. Every run is loaded first and the trials are taken in five interleaved rounds over all runs and
thread counts, so that a slow spell of a shared machine does not fall on one learner. p50/p99 of the whole call, and the p50 of its two halves. Targets: p50 <= 5 ms on ml-100k,
<= 50 ms at 100,000 items.

    .venv/bin/python benchmarks/serving.py            # full (about 20-30 minutes on 2 quiet CPU cores; runs kept in --work)
    .venv/bin/python benchmarks/serving.py --smoke    # seconds: tiny synthetic run, one learner; writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_utils import command_line, fmt_table, machine_info, update_readme

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
N_RATINGS, K = 20, 10
THREADS = (1, 2)
LEARNERS = {
    "maml_all": ("MAML, scope all", ["learner=maml", "learner.scope=all"]),
    "maml_head": ("MAML, scope head", ["learner=maml", "learner.scope=head"]),
    "metasgd": ("Meta-SGD", ["learner=metasgd"]),
    "amortised": ("amortised", ["learner=amortised"]),
    "finetune": ("finetune", ["learner=finetune"]),
    "ridge": ("ridge (two-tower)", ["learner=ridge", "model=twotower"]),
    "fism": ("fism (two-tower)", ["learner=fism", "model=twotower"]),
}
# name -> (label, overrides, p50 target in ms)
DATASETS = {
    "ml100k": ("MovieLens-100K (1,682 items)", ["data=movielens100k"], 5.0),
    "synthetic100k": ("synthetic, 100,000 items", ["data=synthetic", "data.params.n_items=100000",
                                                   "data.params.n_users=400"], 50.0),
}
# a short training: latency does not depend on how well the model is trained
TRAIN = ["trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.limit_val_batches=1",
         "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false", "data.ranking_ks=[]", "logger=csv"]
NOTES = """
What the time goes to (profiled by hand with `torch.profiler` on these runs; see also the
`adapt / recommend` columns):

- `recommend(k)` scores the whole catalogue through the learner's `rank_score`; the values shown are the
  ranking pass's own scores where the learner ranks by `score` (`MetaLearner.ranks_by_score`), else the
  top k are scored again. The catalogue's feature rows are gathered once per loaded run
  (`Recommender.catalogue`), and the top k are selected with `np.partition` (only the entries reaching
  the k-th score are sorted, ties by item code as a stable sort), instead of a full `argsort` per call.
- MeLU learners (MAML, Meta-SGD, finetune): scoring runs inside `item_cache.serving()`, where
  `MeLU.serve` splits the first decision layer, `W [e_u; e_i] + b = (W_u e_u + b) + W_i e_i`: the user
  part is one vector per call, no `[items, fields x 32]` concatenation is made, and the item part is
  computed field by field with the user's (maybe adapted) parameters (`melu.FieldProduct`): the release
  year's 12-row table is multiplied by its block of `W_i` once per call and then looked up per item, the
  genres' value embeddings are folded into their block (`[8, 64]`, applied to the genre flags normalised
  once per loaded run), and only the 100,001-row item-id table is multiplied per item (`[items, 32]` by
  `[32, 64]` instead of `[items, 96]` by `[96, 64]`); the items go through the head in chunks of 8,192
  (temporaries stay small instead of fresh 25-77 MB buffers per call). Scope `all` then costs about what
  `head` costs: no per-call item field vectors (this script's previous run, with the concatenated
  item field vectors: `recommend` p50 at 100,000 items and one thread 61.7 ms under `all`, 42.0 ms under
  `head`). What remains per call at 100,000 items is the head's matrix products with the user's
  adapted weights (`addmm`: about 0.2 G multiply-adds for the item-id block and 0.4 G for the 64-64
  layer, which bound MAML and Meta-SGD there). The `adapt` half is the inner loop on the support alone
  with plain `torch.autograd.grad` (`VmapExecutor.adapt` when serving; `torch.func.grad` took 3.6 ms of a
  1.7 ms step): about a hundred small ops per step; `finetune` takes 5 steps under scope `all`.
  Embedding tables of at least 10,000 rows (`melu.SPARSE_MIN_ROWS`: the 100,001-row item-id table) give
  sparse gradients in that loop (the support's rows; a dense one was written, clipped and subtracted in
  full at every step: finetune's adapt 98 -> 23 ms in one process).
- The amortised learner (`Amortised.serve`): the body's user and item parts go through the attention
  query and the head's first layer apart (the user's once; the catalogue's item parts of both maps are
  kept per loaded run, made from `MeLU.body_parts`' field vectors, the query's per head and transposed,
  `[heads, 16, items]`). The attention scores are one product per head against that head's keys (a
  product with keys laid out block-diagonally over the heads, as before, multiplied zeros for the other
  three heads), laid out `[heads, support + 1, items]` so that the `softmax` runs along the items'
  contiguous axis (over the 21 entries' axis it vectorised poorly) and the scores enter the values' product
  transposed, without a copy; the values are prepared once per user, already through the context layer
  and carrying the context's constant part (each head's weights sum to 1). The FiLM layers of every head
  layer are one product (`[items, 64]` by `[64, 258]`) whose betas also carry each head layer's additive
  term (the first layer's user part, the later layers' biases: `beta' = beta + (1 + gamma) * a` is linear
  in the context too), so the head's layers run as plain products without bias copies. Per item remain
  about 27 k multiply-adds (the FiLM product 16.5 k of them), 2.7 G per call at 100,000 items, which bound
  it there; the ReLU between the context and the FiLM layers keeps them per item. For one user (as
  `Recommender` serves) the products are 2-D, over chunks of 2,048 items (with 8,192 the chunk's
  temporaries leave the cache). `recommend` at 100,000 items, one process, the same loaded run, interleaved:
  65 -> 47 ms at two threads and 98 -> 83 ms at one with this call's changes (per-head scores, the
  items' axis last, the folded additive terms); 107 -> 92 ms and 67 -> 50 ms with the previous call's (2-D
  products, one FiLM product, smaller chunks); before keeping the item parts and the block-diagonal
  attention, on an earlier and slower machine: 283 ms against 178 ms.
- Two-tower `ridge` and `fism`: the item vectors and biases do not depend on the user, so they are
  computed once per loaded run (`metarec/models/item_cache.py`, recomputed if the items or any parameter
  change); a call is then one product with the user vector.
- Threads: each call runs with `Recommender.threads` intra-op threads (default 1). With other processes
  on the cores, a second intra-op thread can make a call many times slower; compare the columns.
"""
SMOKE_DATA = ("synthetic, 300 items (smoke)", ["data=synthetic", "data.params.n_users=100"], 50.0)
SMOKE_TRAIN = ["trainer.limit_train_batches=1"]


def train(work: Path, dataset: str, learner: str, data_overrides: list[str], extra: tuple[str, ...] = ()) -> Path:
    """The finished tiny run ``work/dataset/learner`` (trained now in a subprocess, unless already there)."""
    from metarec.runs import METRICS_FILE

    run = work / dataset / learner
    if (run / METRICS_FILE).is_file():
        return run
    cmd = [sys.executable, "-m", "metarec", "fit", *data_overrides, *LEARNERS[learner][1], *TRAIN,
           f"run.root={work}", f"run.experiment={dataset}", f"run.name={learner}", *extra]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0 or not (run / METRICS_FILE).is_file():
        last = (out.stderr.strip() or out.stdout.strip() or "?").splitlines()[-1]
        raise RuntimeError(f"training {dataset}/{learner} failed (exit {out.returncode}): {last}")
    print(f"  trained {dataset}/{learner} in {time.perf_counter() - t0:.0f} s", flush=True)
    return run


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q))


def measure(runs: dict[tuple[str, str], Path], threads: tuple[int, ...], trials: int, rounds: int = 5,
            seed: int = 0) -> dict[tuple[str, str], dict]:
    """Load every run once; per run and thread count, one discarded call, then ``trials`` timed new users,
    taken in ``rounds`` interleaved rounds over all runs (a slow spell of the machine then spreads over
    every learner instead of falling on one)."""
    from metarec import Recommender

    recs, out, rngs, times = {}, {}, {}, {}
    for key, run in runs.items():
        t0 = time.perf_counter()
        recs[key] = Recommender.load(run)
        out[key] = {"load_s": time.perf_counter() - t0, "n_items": recs[key].n_items}
        rngs[key] = np.random.default_rng(seed)

    def new_user(key) -> list[tuple]:
        rec, rng = recs[key], rngs[key]
        lo, hi = rec.rating_range
        codes = rng.choice(rec.n_items, N_RATINGS, replace=False)
        ratings = np.clip(np.round(rng.uniform(lo, hi, N_RATINGS)), lo, hi)
        return list(zip(rec.item_ids[codes].tolist(), ratings.tolist()))

    try:
        for key, rec in recs.items():
            for n in threads:
                rec.threads = n  # as Recommender.load(run, threads=n)
                rec.adapt(new_user(key)).recommend(K)  # the first call: excluded
                times[key, n] = ([], [], [])
        per_round = -(-trials // rounds)
        for r in range(rounds):
            for key, rec in recs.items():
                for n in threads:
                    rec.threads = n
                    total, adapt, recommend = times[key, n]
                    for _ in range(min(per_round, trials - r * per_round)):
                        ratings = new_user(key)
                        t0 = time.perf_counter()
                        user = rec.adapt(ratings)
                        t1 = time.perf_counter()
                        top = user.recommend(K)
                        t2 = time.perf_counter()
                        assert len(top) == K
                        total.append((t2 - t0) * 1e3)
                        adapt.append((t1 - t0) * 1e3)
                        recommend.append((t2 - t1) * 1e3)
    finally:
        for rec in recs.values():
            rec.threads = 1
    for (key, n), (total, adapt, recommend) in times.items():
        out[key][str(n)] = {"p50_ms": _pct(total, 50), "p99_ms": _pct(total, 99), "adapt_p50_ms": _pct(adapt, 50),
                            "recommend_p50_ms": _pct(recommend, 50), "trials": len(total)}
    return out


def run_all(work: Path, datasets: dict, learners: list[str], threads: tuple[int, ...], trials: int,
            extra: tuple[str, ...] = ()) -> list[dict]:
    runs = {(ds, learner): train(work, ds, learner, overrides, extra)
            for ds, (label, overrides, target) in datasets.items() for learner in learners}
    measured = measure(runs, threads, trials)
    rows = []
    for (ds, learner), run in runs.items():
        label, _, target = datasets[ds]
        m = measured[ds, learner]
        rows.append({"dataset": ds, "dataset_label": label, "learner": learner, "target_p50_ms": target,
                     "run": str(run), **m})
        print(f"{ds} {learner}: " + "; ".join(
            f"{n} thread{'s' if n > 1 else ''} p50 {m[str(n)]['p50_ms']:.2f} ms p99 {m[str(n)]['p99_ms']:.2f} ms "
            f"(adapt {m[str(n)]['adapt_p50_ms']:.2f}, recommend {m[str(n)]['recommend_p50_ms']:.2f})"
            for n in threads), flush=True)
    return rows


def table(rows: list[dict], threads: tuple[int, ...]) -> str:
    head = ["data", "learner", "items"]
    for n in threads:
        head += [f"p50 ms ({n}t)", f"p99 ms ({n}t)", f"adapt / recommend p50 ms ({n}t)"]
    head += ["target p50", "met"]
    body = []
    for r in rows:
        cells = [r["dataset_label"], LEARNERS[r["learner"]][0], f"{r['n_items']:,}"]
        for n in threads:
            m = r[str(n)]
            cells += [f"{m['p50_ms']:.2f}", f"{m['p99_ms']:.2f}", f"{m['adapt_p50_ms']:.2f} / {m['recommend_p50_ms']:.2f}"]
        best = min(r[str(n)]["p50_ms"] for n in threads)
        cells += [f"{r['target_p50_ms']:g} ms", "yes" if best <= r["target_p50_ms"] else "**no**"]
        body.append(cells)
    return fmt_table(head, body)


def readme_summary(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]
    lines = [f"Measured by `{command_line('serving.py')}` on {meta['cpu']} (torch threads 1 and 2 per call), "
             f"`Recommender.load(run).adapt({N_RATINGS} ratings).recommend({K})` over the whole catalogue, first call "
             "excluded; full table in [`benchmarks/results/serving.md`](benchmarks/results/serving.md).", ""]
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == ds]
        target = rs[0]["target_p50_ms"]
        lines.append(f"- {rs[0]['dataset_label']} (target p50 <= {target:g} ms), p50 / p99 at 1 thread: " + ", ".join(
            f"{LEARNERS[r['learner']][0]} {r['1']['p50_ms']:.1f} / {r['1']['p99_ms']:.1f} ms" for r in rs if "1" in r)
            + f"; target met (p50 at 1 or 2 threads) by {sum(min(r[str(n)]['p50_ms'] for n in THREADS if str(n) in r) <= target for r in rs)} "
              f"of {len(rs)}.")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny synthetic run, one learner, seconds; writes nothing")
    p.add_argument("--work", type=Path, default=Path("runs/bench_serving"),
                   help="where the tiny runs are trained (kept and reused)")
    p.add_argument("--trials", type=int, default=300, help="timed new users per run and thread count")
    p.add_argument("--learners", nargs="+", default=list(LEARNERS), choices=list(LEARNERS))
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--no-readme", action="store_true",
                   help="write benchmarks/results only; print the README summary instead of updating README.md")
    args = p.parse_args()
    if args.trials < 1:
        print("serving.py: --trials must be a positive integer", file=sys.stderr)
        return 2
    if args.smoke:
        with tempfile.TemporaryDirectory() as tmp:
            rows = run_all(Path(tmp), {"smoke": SMOKE_DATA}, ["maml_head"], THREADS, 5, tuple(SMOKE_TRAIN))
        print(table(rows, THREADS))
        print("(smoke: nothing written)")
        return 0
    if "ml100k" in args.datasets and not os.environ.get("METAREC_DATA_DIR"):
        print("serving.py: set METAREC_DATA_DIR to the folder holding ml-100k (or pass --datasets synthetic100k)",
              file=sys.stderr)
        return 2
    result = {"meta": {**machine_info(), "ratings": N_RATINGS, "k": K, "trials": args.trials}}
    result["rows"] = run_all(args.work, {d: DATASETS[d] for d in args.datasets}, args.learners, THREADS, args.trials)
    print(table(result["rows"], THREADS))
    if (args.learners, args.datasets) != (list(LEARNERS), list(DATASETS)):
        print("(partial grid: nothing written)")
        return 0
    meta = result["meta"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serving.json").write_text(json.dumps(result, indent=2))
    head = (f"# Serving latency through `Recommender`\n\n_Produced by `{command_line('serving.py')}` on "
            f"{meta['device']} ({meta['cpu']}), torch {meta['torch']}; {args.trials} new users per run and thread "
            f"count in five interleaved rounds over all runs, first call excluded; 1-minute load average at the start {meta['load_average_1min']:.2f}._\n\n")
    (RESULTS / "serving.md").write_text(head + table(result["rows"], THREADS) + "\n" + NOTES)
    if args.no_readme:
        print("README summary (not written):\n" + readme_summary(result))
    else:
        update_readme("serving", readme_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
