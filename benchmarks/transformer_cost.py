"""Cost of the Transformer base recommender in the meta-training loop: tasks/s and peak memory at three
sizes (about 1M, 10M and 60M parameters) x adaptation scopes (head, lora, all), MAML with 1 inner step
(second order), vmap executor, meta-batch 8, support 10, query 10, the MovieLens-like schema of
``speed.py``. Each configuration runs in a fresh process (peak RSS above its set-up; on a GPU the
allocator's peak). Writes ``benchmarks/results/transformer_cost.{json,md}``.

    .venv/bin/python benchmarks/transformer_cost.py [--smoke]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from speed import SCHEMA, make_batch, rss_growth_during, sync, train_step

from metarec.learners import LearnerContext, build_learner
from metarec.learners.maml import MAMLConfig
from metarec.models import TransformerConfig, TransformerRec

HERE = Path(__file__).resolve().parent
T = 8
SIZES = {  # name: (d_model, layers, heads, ffn)
    "~1M": (128, 4, 4, 512),
    "~10M": (320, 8, 8, 1280),
    "~60M": (640, 12, 8, 2560),
}
SCOPES = ("head", "lora", "all")


def make(size: str, scope: str):
    d, layers, heads, ffn = SIZES[size]
    torch.manual_seed(0)
    model = TransformerRec(SCHEMA, TransformerConfig(d_model=d, layers=layers, heads=heads, ffn=ffn, head_hidden=[64],
                                                     lora_rank=8 if scope == "lora" else 0))
    ctx = LearnerContext((1.0, 5.0), 3.5, ["warm"], ["user_cold"])
    learner = build_learner("maml", model, ctx, MAMLConfig(inner_lr=0.01, inner_steps=1, scope=scope, executor="vmap"))
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return learner.to(dev), sum(p.numel() for p in model.parameters())


def child(size: str, scope: str, steps: int) -> dict:
    learner, n_params = make(size, scope)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-4)
    batch = make_batch(10, n_tasks=T)
    train_step(learner, opt, batch)  # warm-up (also allocates Adam's state)
    sync()
    gpu = torch.cuda.is_available()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    timing = {}

    def timed() -> None:
        t0 = time.perf_counter()
        for _ in range(steps):
            train_step(learner, opt, batch)
        sync()
        timing["s"] = time.perf_counter() - t0

    rss = rss_growth_during(timed)
    elapsed = timing["s"]
    mem = torch.cuda.max_memory_allocated() / 2**20 if gpu else rss
    return {"size": size, "scope": scope, "params": n_params, "tasks_per_s": steps * T / elapsed,
            "s_per_step": elapsed / steps, "peak_mb": mem}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="the smallest size, one step, nothing written")
    p.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        print(json.dumps(child(args._child[0], args._child[1], int(args._child[2]))))
        return 0
    sizes = ["~1M"] if args.smoke else list(SIZES)
    rows = []
    for size in sizes:
        for scope in SCOPES:
            steps = 1 if args.smoke else (5 if size == "~1M" else 2)
            out = subprocess.run([sys.executable, __file__, "--_child", size, scope, str(steps)],
                                 capture_output=True, text=True, timeout=1800)
            if out.returncode != 0:
                row = {"size": size, "scope": scope, "error": out.stderr.strip().splitlines()[-1][:200]}
            else:
                row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(row, flush=True)
    if args.smoke:
        return 0 if all("error" not in r for r in rows) else 1
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    lines = [
        "# Transformer base recommender: meta-training cost", "",
        f"MAML, 1 inner step (second order), vmap executor, meta-batch {T}, support 10, query 10; "
        f"peak memory above the set-up ({'allocator peak' if torch.cuda.is_available() else 'RSS'}). {where}.", "",
        "| size | parameters | scope | tasks/s | s per meta-step | peak memory (MB) |", "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['size']} | – | {r['scope']} | failed: {r['error']} | | |")
        else:
            lines.append(f"| {r['size']} | {r['params'] / 1e6:.1f}M | {r['scope']} | {r['tasks_per_s']:.1f} | "
                         f"{r['s_per_step']:.2f} | {r['peak_mb']:.0f} |")
    lines += ["", f"_Produced by `python benchmarks/transformer_cost.py`, torch {torch.__version__}, "
                  f"Python {platform.python_version()}._"]
    (HERE / "results" / "transformer_cost.md").write_text("\n".join(lines) + "\n")
    (HERE / "results" / "transformer_cost.json").write_text(json.dumps(rows, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
