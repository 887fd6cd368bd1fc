"""Full-ranking quality on HetRec Last.fm 2K, user-cold: implicit feedback (every listened artist is a
positive, 4 sampled unheard artists per positive, BCE), MAML against the ``global``,
``finetune`` and ``popularity`` baselines, 3 seeds, support sizes 1, 3, 5, 10, 20. Runs
``metarec compare`` and writes ``benchmarks/results/full_ranking_lastfm.md`` plus the README section.

    METAREC_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/full_ranking_lastfm.py

Full ranking: after adapting to the support, every existing artist except the support's positives is
ranked; relevant = the query's positives. Resumable: the runs live in ``--work`` (default
``runs/full_ranking_lastfm``). ``--smoke`` runs two learners for one epoch of 5 meta-batches in a temp folder
and writes nothing under benchmarks/results.
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
from bench_utils import command_line, curve_table, scenario_table, update_readme

from metarec.compare import ALL, compare, make_spec, result_rows, summarize

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NAME = "full_ranking_lastfm"
LEARNERS = ["maml", "amortised", "global", "finetune", "popularity"]
SIZES = ["1", "3", "5", "10", "20"]
METRICS = ["full_recall@10", "full_ndcg@10", "full_hitrate@10"]
# user-cold only (the protocol); early stopping on the validation BCE
OVERRIDES = ["data=lastfm2k", "data.split.scenarios=[user_cold]", "trainer.max_epochs=15", "trainer.patience=3",
             "trainer.enable_progress_bar=false"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=f"runs/{NAME}", help="compare output folder (runs, checkpoints)")
    p.add_argument("--seeds", nargs="+", default=["0", "1", "2"])
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    if args.smoke:
        tmp = tempfile.mkdtemp()
        spec = make_spec(tmp, ["maml", "popularity"], ["0"], ["5"],
                         [*OVERRIDES, "trainer.max_epochs=1", "trainer.limit_train_batches=5",
                          "trainer.limit_val_batches=1"])
    else:
        spec = make_spec(args.work, LEARNERS, args.seeds, SIZES, OVERRIDES)
    t0 = time.perf_counter()
    result = compare(spec, echo=lambda line: print(line, flush=True))
    elapsed = time.perf_counter() - t0
    stats = summarize(result_rows(result["records"], spec.out))
    table = scenario_table(stats, spec.learners, ["user_cold"], METRICS)
    curves = [curve_table(stats, spec.learners, "user_cold", m, spec.support_sizes) for m in METRICS[:2]]
    print("\n".join(table))
    if args.smoke:
        shutil.rmtree(tmp, ignore_errors=True)
        missing = [l for l in spec.learners if (l, ALL, "user_cold", "full_recall@10") not in stats]
        if missing:
            print(f"no full_recall@10 for {missing}", file=sys.stderr)
            return 1
        return 0
    command = command_line("full_ranking_lastfm.py")
    seeds = ", ".join(str(s) for s in spec.seeds)
    footer = (
        f"_Produced by `{command}`: {len(result['records'])} runs, seeds {seeds}; this call took "
        f"{elapsed / 60:.1f} min (finished runs are not redone), torch {torch.__version__}, Python "
        f"{platform.python_version()}, {torch.get_num_threads()} CPU threads._"
    )
    intro = (
        "User-cold users of HetRec Last.fm 2K, implicit feedback: each listened artist is a positive, each task "
        "gets 4 sampled unheard artists per positive (uniform), and every learner trains with BCE. After "
        "adapting to the support, all existing artists except the support's positives are ranked; relevant = "
        "the query's 10 positives. Mean ± 95% CI half-width over seeds; best per column in bold."
    )
    sections = [
        "# Full-ranking quality on Last.fm 2K (user-cold, implicit feedback)", "", intro, "",
        "## Full support", "", *table, "",
    ]
    for m, lines in zip(METRICS[:2], curves):
        sections += [f"## {m} by support size K (positives in the support)", "", *lines, ""]
    sections.append(footer)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{NAME}.md").write_text("\n".join(sections) + "\n")
    key = lambda l: stats[(l, ALL, "user_cold", METRICS[0])]  # noqa: E731
    ranked = sorted((l for l in spec.learners if (l, ALL, "user_cold", METRICS[0]) in stats), key=lambda l: -key(l).mean)
    verdict = ""
    if ranked:
        best = ranked[0]
        rivals = [l for l in ranked[1:] if key(l).mean + key(l).half_width >= key(best).mean - key(best).half_width]
        verdict = (f"Best user-cold Recall@10: {best} ({key(best).mean:.4f}); "
                   + (f"the 95% intervals of {', '.join(rivals)} overlap it." if rivals else "beyond every other learner's 95% interval."))
    update_readme(NAME, "\n".join([
        intro, "", *table, "", verdict, "", "Recall@10 by support size K:", "", *curves[0], "",
        f"Full tables: [`benchmarks/results/{NAME}.md`](benchmarks/results/{NAME}.md).", "", footer,
    ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
