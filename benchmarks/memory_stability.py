"""Memory stability of validation: does the resident set size plateau over 1,000 validation batches?

Validation adapts every user with gradients enabled (``torch.enable_grad`` inside a
``Trainer(inference_mode=False)`` loop) and must keep no graph, tensor or Python object beyond each
step. This benchmark runs the real Lightning validation loop, ``pl.Trainer(inference_mode=False,
limit_val_batches=N).validate(learner, dataloaders=...)``, on the synthetic data set with MAML
(``scope=all``, ``inner_steps=5``), once per executor (``vmap`` and ``learn2learn``), each in a fresh
subprocess. The validation loader is the data module's own (same dataset class, collate function,
batch size and workers) over the validation episodes repeated until it holds N batches.

A callback reads the RSS from ``/proc/self/statm`` after batch 1 and after every 50th batch. Reported:
RSS at batch 100 and at batch N, the growth over the last half (batch N/2 to N), and the least-squares
slope over the second half in MB per 100 batches. Verdict: PLATEAU when the growth over the last half
is below 1% of the final RSS or below 5 MB; GROWS otherwise.

    .venv/bin/python benchmarks/memory_stability.py           # 1,000 batches per executor; writes
                                                               # benchmarks/results/memory_stability.{md,json}
    .venv/bin/python benchmarks/memory_stability.py --smoke   # 50 batches, writes nothing
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
EXECUTORS = ("vmap", "learn2learn")
LEARNER_ARGS = ["learner=maml", "learner.scope=all", "learner.inner_steps=5"]
EVERY = 50
REL_LIMIT, ABS_LIMIT_MB = 0.01, 5.0


def rss_mb() -> float:
    """Resident set size of this process (MB), from ``/proc/self/statm``."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


# --------------------------------------------------------------------------------------- child


def child(executor: str, n_batches: int, extra: list[str]) -> dict:
    """One executor in this (fresh) process: N validation batches through ``Trainer.validate``."""
    import pytorch_lightning as pl
    import torch

    from metarec.config import compose
    from metarec.data.datamodule import ListDataset
    from metarec.train import _quiet_lightning, build

    _quiet_lightning()
    cfg = compose([*LEARNER_ARGS, f"learner.executor={executor}", *extra])
    dm, learner = build(cfg)
    tasks = dm.split.episodes["val"]
    bs = dm.cfg.eval_batch_size
    reps = math.ceil(n_batches * bs / len(tasks))
    # the data module's own loader (collate, batch size, workers), over the val episodes repeated
    loader = dm._loader(ListDataset(list(tasks) * reps), bs)
    assert len(loader) >= n_batches, (len(loader), n_batches)

    samples: list[tuple[int, float]] = []
    times: list[float] = []

    class RssProbe(pl.Callback):
        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            n = batch_idx + 1
            if n == 1 or n % EVERY == 0 or n == n_batches:
                samples.append((n, rss_mb()))
                times.append(time.perf_counter())

    trainer = pl.Trainer(
        accelerator="cpu", devices=1, inference_mode=False, limit_val_batches=n_batches,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[RssProbe()],
    )
    rss_before = rss_mb()
    t0 = time.perf_counter()
    results = trainer.validate(learner, dataloaders=loader, verbose=False)
    wall = time.perf_counter() - t0
    assert samples and samples[-1][0] == n_batches, samples[-3:]
    return {
        "executor": executor,
        "config": [*LEARNER_ARGS, f"learner.executor={executor}", *extra],
        "n_batches": n_batches,
        "tasks_per_batch": bs,
        "val_tasks": len(tasks),
        "rss_before_validate_mb": rss_before,
        "rss_after_validate_mb": rss_mb(),
        "samples": samples,
        "seconds": wall,
        "grad_enabled_after": torch.is_grad_enabled(),
        "val_metrics": {k: float(v) for k, v in results[0].items()} if results else {},
        "torch_threads": torch.get_num_threads(),
    }


# -------------------------------------------------------------------------------------- parent


def slope_per_100(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of RSS (MB) against batch number, per 100 batches."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return 100 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0


def summarise(run: dict) -> dict:
    n = run["n_batches"]
    rss = dict(run["samples"])
    half = n // 2
    at = lambda b: rss[max(k for k in rss if k <= b)]  # noqa: E731  last sample at or before b
    second_half = [(b, v) for b, v in run["samples"] if b >= half]
    growth = rss[n] - at(half)
    limit = max(REL_LIMIT * rss[n], ABS_LIMIT_MB)
    return {
        "executor": run["executor"],
        "batches": n,
        "rss_first_mb": rss[min(rss)],
        "rss_100_mb": at(100),
        "rss_half_mb": at(half),
        "rss_final_mb": rss[n],
        "growth_100_to_final_mb": rss[n] - at(100),
        "growth_last_half_mb": growth,
        "growth_last_half_pct": 100 * growth / rss[n],
        "slope_second_half_mb_per_100": slope_per_100(second_half),
        "limit_mb": limit,
        "below_1pct_rss": growth < REL_LIMIT * rss[n],
        "below_5mb": growth < ABS_LIMIT_MB,
        "plateau": growth < limit,
        "seconds": run["seconds"],
        "ms_per_batch": 1000 * run["seconds"] / n,
    }


def run_child(executor: str, n_batches: int, extra: list[str]) -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.setdefault("METAREC_CONFIG_DIR", str(REPO / "configs"))
    out = subprocess.run(
        [sys.executable, __file__, "--_child", executor, "--batches", str(n_batches), *extra],
        capture_output=True, text=True, env=env, cwd=str(REPO),
    )
    if out.returncode != 0:
        raise SystemExit(f"child {executor} failed (rc={out.returncode}):\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    n = rows[0]["batches"]
    half = n // 2
    head = (f"| executor | RSS @1 MB | RSS @100 MB | RSS @{half} MB | RSS @{n} MB | growth 100->{n} MB "
            f"| growth last {n - half} MB (% RSS) | slope 2nd half MB/100 batches | < 1% RSS | < 5 MB | ms/batch "
            "| verdict |")
    lines = [head, "|" + "---|" * 12]
    yn = {True: "yes", False: "no"}
    for r in rows:
        verdict = "PLATEAU" if r["plateau"] else "GROWS"
        lines.append(
            f"| {r['executor']} | {r['rss_first_mb']:.1f} | {r['rss_100_mb']:.1f} | {r['rss_half_mb']:.1f} "
            f"| {r['rss_final_mb']:.1f} | {r['growth_100_to_final_mb']:+.2f} "
            f"| {r['growth_last_half_mb']:+.2f} ({r['growth_last_half_pct']:+.2f}%) "
            f"| {r['slope_second_half_mb_per_100']:+.3f} | {yn[r['below_1pct_rss']]} | {yn[r['below_5mb']]} "
            f"| {r['ms_per_batch']:.0f} | **{verdict}** |"
        )
    return "\n".join(lines)


def samples_table(runs: list[dict]) -> str:
    batches = [b for b, _ in runs[0]["samples"]]
    lines = ["| batch | " + " | ".join(f"{r['executor']} RSS MB" for r in runs) + " |",
             "|" + "---|" * (len(runs) + 1)]
    for i, b in enumerate(batches):
        lines.append(f"| {b} | " + " | ".join(f"{r['samples'][i][1]:.1f}" for r in runs) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="50 batches per executor; writes nothing")
    p.add_argument("--batches", type=int, default=None, help="validation batches per executor (default 1000)")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="extra config overrides, e.g. data.params.n_users=400")
    args = p.parse_args()
    n = args.batches or (EVERY if args.smoke else 1000)
    if args._child:
        print(json.dumps(child(args._child, n, args.overrides)))
        return

    runs, rows = [], []
    for ex in EXECUTORS:
        print(f"[{ex}] {n} validation batches ...", flush=True)
        run = run_child(ex, n, args.overrides)
        runs.append(run)
        rows.append(summarise(run))
        r = rows[-1]
        print(f"[{ex}] done in {run['seconds']:.0f} s: RSS {r['rss_first_mb']:.1f} -> {r['rss_final_mb']:.1f} MB, "
              f"last-half growth {r['growth_last_half_mb']:+.2f} MB", flush=True)
    print()
    print(table(rows))
    ok = all(r["plateau"] for r in rows)
    verdict = (f"{'PLATEAU' if ok else 'GROWS'}: growth over the last {n - n // 2} batches is "
               f"{'below' if ok else 'NOT below'} 1% of RSS or {ABS_LIMIT_MB:.0f} MB for "
               f"{'every executor' if ok else ', '.join(r['executor'] for r in rows if not r['plateau'])}.")
    print("\n" + verdict)
    if args.smoke:
        print("(smoke run: nothing written)")
        return

    import pytorch_lightning
    import torch

    meta = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": runs[0]["torch_threads"],
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1 (set for the children)"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "memory_stability.json").write_text(
        json.dumps({"meta": meta, "criterion": {"relative": REL_LIMIT, "absolute_mb": ABS_LIMIT_MB},
                    "all_plateau": ok, "summary": rows, "runs": runs}, indent=2) + "\n"
    )
    cfg = " ".join([*LEARNER_ARGS, *args.overrides])
    md = [
        "# Memory stability of validation",
        "",
        f"_Produced by `python benchmarks/memory_stability.py` on {meta['machine']}, torch {meta['torch']}, "
        f"pytorch-lightning {meta['pytorch_lightning']}, {meta['torch_threads']} thread(s), {meta['date']}._",
        "",
        f"Synthetic data, `{cfg}`; {n} batches of {runs[0]['tasks_per_batch']} validation tasks "
        f"(the {runs[0]['val_tasks']} validation episodes, repeated) through the real Lightning loop, "
        f"`pl.Trainer(inference_mode=False, limit_val_batches={n}).validate(...)`; each executor in a fresh "
        "process. RSS from `/proc/self/statm` after batch 1 and every 50 batches.",
        "",
        table(rows),
        "",
        f"**{verdict}** (criterion: growth from batch {n // 2} to {n} < max(1% of final RSS, "
        f"{ABS_LIMIT_MB:.0f} MB); the slope is a least-squares fit over batches {n // 2}..{n}.)",
        "",
        "Most of the RSS is the imported libraries (torch alone maps about 700 MB, Lightning about 300 MB "
        "more), so 1% of RSS is about 11 MB; the table also shows the stricter 5 MB test on its own.",
        "",
        "## RSS samples",
        "",
        samples_table(runs),
        "",
    ]
    (RESULTS / "memory_stability.md").write_text("\n".join(md))
    print(f"wrote {RESULTS / 'memory_stability.md'} and {RESULTS / 'memory_stability.json'}")


if __name__ == "__main__":
    main()
