"""Quality on MovieLens-100K: every learner x 3 seeds on one split, the cold-start curve (support sizes
1, 3, 5, 10, 20), early stopping on validation MAE. Runs `metarec compare`, then copies its table
and plots to ``benchmarks/results/quality_ml100k*`` and refreshes the README section.

    METAREC_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/quality_ml100k.py

Resumable: the runs live in ``--work`` (default ``runs/quality_ml100k``); finished ones are not redone.
``--smoke`` runs a tiny grid for one epoch in a temp folder and writes nothing under benchmarks/results.
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
from bench_utils import command_line, update_readme

from metarec.compare import ALL, compare, make_spec, result_rows, summarize

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NAME = "quality_ml100k"
SCENARIOS = ("warm", "user_cold", "item_cold", "user_item_cold")


def winners(stats, learners: list[str]) -> list[str]:
    """Per scenario: the learner with the lowest mean MAE, and its margin over finetune and global."""
    lines = []
    for scen in SCENARIOS:
        maes = {l: stats[(l, ALL, scen, "mae")] for l in learners if (l, ALL, scen, "mae") in stats}
        if not maes:
            continue
        best = min(maes, key=lambda l: maes[l].mean)
        parts = [f"**{scen}**: best MAE {best} {maes[best].mean:.4f} ± {maes[best].half_width:.4f}"]
        for ref in ("finetune", "global"):
            if ref in maes and ref != best:
                d = maes[ref].mean - maes[best].mean
                parts.append(f"{d:+.4f} better than {ref} ({maes[ref].mean:.4f} ± {maes[ref].half_width:.4f})")
        lines.append("- " + "; ".join(parts))
    return lines


def mae_table(stats, learners: list[str]) -> str:
    """Query MAE per learner and scenario (full support): mean ± 95% CI half-width, best in bold."""
    cells = {(l, sc): stats.get((l, ALL, sc, "mae")) for l in learners for sc in SCENARIOS}
    rank_only = [l for l in learners if not any(cells[(l, sc)] for sc in SCENARIOS)]
    learners = [l for l in learners if l not in rank_only]  # no rating predictions (itemknn, ease): no row
    best = {sc: min((cells[(l, sc)].mean for l in learners if cells[(l, sc)]), default=None) for sc in SCENARIOS}
    lines = ["| learner | " + " | ".join(f"{sc} MAE" for sc in SCENARIOS) + " |", "|---" * (len(SCENARIOS) + 1) + "|"]
    for l in learners:
        row = []
        for sc in SCENARIOS:
            st = cells[(l, sc)]
            text = "–" if st is None else f"{st.mean:.4f} ± {st.half_width:.4f}"
            row.append(f"**{text}**" if st is not None and st.mean == best[sc] else text)
        lines.append(f"| {l} | " + " | ".join(row) + " |")
    if rank_only:
        lines += ["", f"Not in this table: {', '.join(rank_only)}, which rank items without predicting ratings "
                      "(their full-ranking results follow)."]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=f"runs/{NAME}", help="compare output folder (runs, checkpoints)")
    p.add_argument("--seeds", nargs="+", default=["0", "1", "2"])
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    if args.smoke:
        tmp = tempfile.mkdtemp()
        spec = make_spec(tmp, ["maml", "global", "item_mean"], ["0"], ["1", "3"],
                         ["data=movielens100k", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"])
    else:
        spec = make_spec(args.work, None, args.seeds, None,
                         ["data=movielens100k", "trainer.enable_progress_bar=false"])
    t0 = time.perf_counter()
    result = compare(spec, echo=lambda line: print(line, flush=True))
    elapsed = time.perf_counter() - t0
    stats = summarize(result_rows(result["records"], spec.out))
    summary = winners(stats, spec.learners)
    print(result["markdown"])
    print("\n".join(summary))
    if args.smoke:
        shutil.rmtree(tmp, ignore_errors=True)
        return 0
    RESULTS.mkdir(exist_ok=True)
    figures = RESULTS / NAME
    figures.mkdir(exist_ok=True)
    for path in result["outputs"]:
        if path.suffix in (".png", ".csv"):
            shutil.copy(path, figures / path.name)
    command = command_line("quality_ml100k.py")
    footer = (
        f"_Produced by `{command}`: {len(result['records'])} runs; this call took {elapsed / 60:.1f} min "
        f"(finished runs are not redone), torch {torch.__version__}, Python {platform.python_version()}, "
        f"{torch.get_num_threads()} CPU threads._"
    )
    md = result["markdown"] + "\n\n## Winners (full support, query MAE)\n\n" + "\n".join(summary) + "\n\n" + footer + "\n"
    (RESULTS / f"{NAME}.md").write_text(md)
    readme_block = "\n".join([
        mae_table(stats, spec.learners), "",
        "\n".join(summary), "",
        f"Full table with 95% confidence intervals: [`benchmarks/results/{NAME}.md`](benchmarks/results/{NAME}.md).",
        "", f"![user-cold curve](benchmarks/results/{NAME}/curve_user_cold.png)", "", footer,
    ])
    update_readme(NAME, readme_block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
