"""Full-ranking quality on MovieLens-100K, from the runs of ``benchmarks/quality_ml100k.py``.

Reads ``<work>/results.csv`` (default ``runs/quality_ml100k``) and writes
``benchmarks/results/full_ranking_ml100k.md``: per scenario, full_recall@10 and full_ndcg@10 (every
candidate item ranked after adaptation; relevant = query ratings >= 4), mean ± 95% CI over seeds.

    .venv/bin/python benchmarks/full_ranking_ml100k.py [--work runs/quality_ml100k]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench_utils import read_rows, scenario_table, update_readme

from metarec.compare import ALL, summarize

HERE = Path(__file__).resolve().parent
SCENARIOS = ["warm", "user_cold", "item_cold", "user_item_cold"]
METRICS = ["full_recall@10", "full_ndcg@10"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/quality_ml100k")
    args = p.parse_args()
    path = Path(args.work) / "results.csv"
    if not path.is_file():
        print(f"{path} not found: run benchmarks/quality_ml100k.py first", file=sys.stderr)
        return 2
    rows = read_rows(path)
    stats = summarize(rows)
    learners = sorted({r["learner"] for r in rows})
    lines = scenario_table(stats, learners, SCENARIOS, METRICS)
    seeds = sorted({r["seed"] for r in rows})
    text = (
        "# Full-ranking quality on MovieLens-100K\n\n"
        "Every candidate item ranked after adaptation (the scenario's items minus the user's support); "
        "relevant = the user's query items rated >= 4. Mean ± 95% CI half-width over seeds "
        f"{', '.join(seeds)}; same runs and split as `quality_ml100k.md`; best per column in bold.\n\n"
        + "\n".join(lines) + "\n\n"
        f"_Produced by `python benchmarks/full_ranking_ml100k.py` from `{path}`._\n"
    )
    out = HERE / "results" / "full_ranking_ml100k.md"
    out.write_text(text)
    print(text)
    cold = scenario_table(stats, learners, ["user_cold"], METRICS)

    def recall(l):
        return stats[(l, ALL, "user_cold", METRICS[0])].mean

    ranked = [l for l in learners if l != "popularity" and (l, ALL, "user_cold", METRICS[0]) in stats]
    # learners that predict ratings (an MAE) and those that only rank (item-item fold-ins: itemknn, ease)
    rating = [l for l in ranked if (l, ALL, "user_cold", "mae") in stats]
    rank_only = sorted((l for l in ranked if l not in rating), key=recall, reverse=True)
    lines = [*cold, ""]
    if rating and ("popularity", ALL, "user_cold", METRICS[0]) in stats:
        pop = recall("popularity")
        best = max(rating, key=recall)
        verdict = "beats" if recall(best) > pop else "does not beat"
        text = (f"The best learner that predicts ratings, {best} (user-cold Recall@10 {recall(best):.4f}), {verdict} "
                f"`popularity` ({pop:.4f}): a model trained to predict ratings is not a ranking model; for top-k lists "
                "train on implicit feedback (`data.negatives`), as on Last.fm below.")
        if rank_only:
            some = ", ".join(f"{l} {recall(l):.4f}" for l in rank_only)
            low = min(recall(l) for l in rank_only)
            verdict = "beat" if low > pop else "do not all beat"
            above = " and every learner that predicts ratings" if low > max(recall(l) for l in rating) else ""
            text += (f" The item-item fold-ins of the support, which only rank ({some}), {verdict} `popularity`{above} "
                     "(`ranking_vs_cf.py` below compares ranking-trained learners with them).")
        lines += [text, ""]
    lines.append("All scenarios: [`benchmarks/results/full_ranking_ml100k.md`](benchmarks/results/full_ranking_ml100k.md); "
                 "_produced by `python benchmarks/full_ranking_ml100k.py` from the quality runs above._")
    update_readme("full_ranking_ml100k", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
