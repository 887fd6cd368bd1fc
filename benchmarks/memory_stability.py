"""Memory stability of validation: does the resident set size plateau over 1,000 validation batches?

Validation adapts every user with gradients enabled (``torch.enable_grad`` inside a
``Trainer(inference_mode=False)`` loop) and must keep no graph, tensor or Python object beyond each
step. This benchmark runs the real Lightning validation loop, ``pl.Trainer(inference_mode=False,
limit_val_batches=N).validate(learner, dataloaders=...)``, on the synthetic data set with MAML
(``scope=all``, ``inner_steps=5``), once per executor (``vmap`` and ``learn2learn``), each in a fresh
subprocess. The validation loader is the data module's own (same dataset class, collate function,
batch size and workers) over the validation episodes repeated until it holds N batches.

A callback reads the RSS from ``/proc/self/statm`` after every batch (microseconds each). Reported:
RSS after batch 1, 100, N/2 and N, the growth from N/2 to N, the least-squares slope over the second
half in MB per 100 batches, and a table of the RSS every 50 batches. Verdict: PLATEAU when the growth
over the last half is below max(1% of RSS, 5 MB), measured robustly (median RSS of the last 50
batches against the 50 up to N/2, and the second half's trend extrapolated over the half; see
``summarise``), GROWS otherwise.

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
import statistics
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
WINDOW = 50  # batches per median window
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
    from metarec.assembly import build, quiet_lightning

    quiet_lightning()
    cfg = compose([*LEARNER_ARGS, f"learner.executor={executor}", *extra])
    dm, learner = build(cfg)
    tasks = dm.split.episodes["val"]
    bs = dm.cfg.eval_batch_size
    reps = math.ceil(n_batches * bs / len(tasks))
    # the data module's own loader (collate, batch size, workers), over the val episodes repeated
    loader = dm.loader(ListDataset(list(tasks) * reps), bs)
    assert len(loader) >= n_batches, (len(loader), n_batches)

    trace: list[float] = []  # RSS after every batch: reading statm costs microseconds

    class RssProbe(pl.Callback):
        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            trace.append(rss_mb())

    trainer = pl.Trainer(
        accelerator="cpu", devices=1, inference_mode=False, limit_val_batches=n_batches,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[RssProbe()],
    )
    rss_before = rss_mb()
    t0 = time.perf_counter()
    results = trainer.validate(learner, dataloaders=loader, verbose=False)
    wall = time.perf_counter() - t0
    assert len(trace) == n_batches, (len(trace), n_batches)
    samples = [(b, trace[b - 1]) for b in range(1, n_batches + 1) if b == 1 or b % EVERY == 0 or b == n_batches]
    return {
        "executor": executor,
        "config": [*LEARNER_ARGS, f"learner.executor={executor}", *extra],
        "n_batches": n_batches,
        "tasks_per_batch": bs,
        "val_tasks": len(tasks),
        "rss_before_validate_mb": rss_before,
        "rss_after_validate_mb": rss_mb(),
        "samples": samples,
        "trace": trace,
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
    """Endpoint figures from the every-50 samples, and robust ones from the every-batch trace.

    With the vmap executor the RSS swings by tens of MB from one batch to the next (large temporary
    buffers that the allocator returns to the system or keeps, depending on the moment), so two
    single samples can differ by that much without any leak. The verdict uses what such noise
    cannot fake: the median RSS of the last WINDOW batches against that of the WINDOW batches up to
    the half-way point, and the trend of every batch's RSS over the second half (least squares),
    extrapolated over the half; both must stay below max(1% of RSS, 5 MB).
    """
    n = run["n_batches"]
    trace = run["trace"]
    half = n // 2
    w = max(1, min(WINDOW, half))
    rss = dict(run["samples"])

    def at(b: int) -> float:  # RSS after batch b (1-based)
        return trace[max(1, min(b, n)) - 1]

    final = at(n)
    growth = final - at(half)
    second = [(i + 1, v) for i, v in enumerate(trace) if i + 1 > half]
    slope = slope_per_100(second)
    med_half = statistics.median(trace[half - w : half])
    med_end = statistics.median(trace[n - w :])
    med_growth = med_end - med_half
    trend_growth = slope * (n - half) / 100
    limit = max(REL_LIMIT * med_end, ABS_LIMIT_MB)
    return {
        "executor": run["executor"],
        "batches": n,
        "rss_first_mb": rss[1],
        "rss_100_mb": at(100),
        "rss_half_mb": at(half),
        "rss_final_mb": final,
        "growth_100_to_final_mb": final - at(100),
        "growth_last_half_mb": growth,
        "growth_last_half_pct": 100 * growth / final,
        "slope_second_half_mb_per_100": slope,
        "window": w,
        "median_half_mb": med_half,
        "median_final_mb": med_end,
        "median_growth_last_half_mb": med_growth,
        "median_growth_last_half_pct": 100 * med_growth / med_end,
        "trend_growth_last_half_mb": trend_growth,
        "band_second_half_mb": [min(v for _, v in second), max(v for _, v in second)],
        "limit_mb": limit,
        "endpoint_below_1pct_rss": growth < REL_LIMIT * final,
        "endpoint_below_5mb": growth < ABS_LIMIT_MB,
        "below_1pct_rss": max(med_growth, trend_growth) < REL_LIMIT * med_end,
        "below_5mb": max(med_growth, trend_growth) < ABS_LIMIT_MB,
        "plateau": max(med_growth, trend_growth) < limit,
        "seconds": run["seconds"],
        "ms_per_batch": 1000 * run["seconds"] / n,
    }


def run_child(executor: str, n_batches: int, extra: list[str]) -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.setdefault("METAREC_CONFIG_DIR", str(REPO / "metarec" / "configs"))
    out = subprocess.run(
        [sys.executable, __file__, "--_child", executor, "--batches", str(n_batches), *extra],
        check=False, capture_output=True, text=True, env=env, cwd=str(REPO),
    )
    if out.returncode != 0:
        raise SystemExit(f"child {executor} failed (rc={out.returncode}):\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    """Endpoint figures: RSS at batches 1, 100, N/2 and N (single samples)."""
    n = rows[0]["batches"]
    half = n // 2
    lines = [
        (f"| executor | RSS @1 MB | RSS @100 MB | RSS @{half} MB | RSS @{n} MB | growth 100->{n} MB "
         f"| growth {half}->{n} MB (% RSS) | < 1% RSS | < 5 MB | slope {half}..{n} MB/100 batches | ms/batch |"),
        "|" + "---|" * 11,
    ]
    yn = {True: "yes", False: "no"}
    for r in rows:
        lines.append(
            f"| {r['executor']} | {r['rss_first_mb']:.1f} | {r['rss_100_mb']:.1f} | {r['rss_half_mb']:.1f} "
            f"| {r['rss_final_mb']:.1f} | {r['growth_100_to_final_mb']:+.2f} "
            f"| {r['growth_last_half_mb']:+.2f} ({r['growth_last_half_pct']:+.2f}%) "
            f"| {yn[r['endpoint_below_1pct_rss']]} | {yn[r['endpoint_below_5mb']]} "
            f"| {r['slope_second_half_mb_per_100']:+.3f} | {r['ms_per_batch']:.0f} |"
        )
    return "\n".join(lines)


def robust_table(rows: list[dict]) -> str:
    """The verdict: window medians and the second half's trend, from every batch's RSS."""
    n = rows[0]["batches"]
    half, w = n // 2, rows[0]["window"]
    lines = [
        (f"| executor | median RSS, batches {half - w + 1}-{half} MB | median RSS, batches {n - w + 1}-{n} MB "
         f"| median growth MB (% RSS) | trend x {n - half} batches MB | RSS band {half + 1}..{n} MB "
         "| < 1% RSS | < 5 MB | verdict |"),
        "|" + "---|" * 9,
    ]
    yn = {True: "yes", False: "no"}
    for r in rows:
        lo, hi = r["band_second_half_mb"]
        lines.append(
            f"| {r['executor']} | {r['median_half_mb']:.1f} | {r['median_final_mb']:.1f} "
            f"| {r['median_growth_last_half_mb']:+.2f} ({r['median_growth_last_half_pct']:+.2f}%) "
            f"| {r['trend_growth_last_half_mb']:+.2f} | {lo:.1f}-{hi:.1f} "
            f"| {yn[r['below_1pct_rss']]} | {yn[r['below_5mb']]} | **{'PLATEAU' if r['plateau'] else 'GROWS'}** |"
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
    print()
    print(robust_table(rows))
    ok = all(r["plateau"] for r in rows)
    same_metrics = all(r["val_metrics"] == runs[0]["val_metrics"] for r in runs)
    verdict = (f"{'PLATEAU' if ok else 'GROWS'}: growth over the last {n - n // 2} batches (window medians "
               f"and trend) is "
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
                    "all_plateau": ok, "executors_agree_on_metrics": same_metrics, "summary": rows, "runs": runs}, indent=2) + "\n"
    )
    cfg = " ".join([*LEARNER_ARGS, *args.overrides])
    md = [
        "# Memory stability of validation",
        "",
        (f"_Produced by `python benchmarks/memory_stability.py` on {meta['machine']}, torch {meta['torch']}, "
         f"pytorch-lightning {meta['pytorch_lightning']}, {meta['torch_threads']} thread(s), {meta['date']}._"),
        "",
        (f"Synthetic data, `{cfg}`; {n} batches of {runs[0]['tasks_per_batch']} validation tasks "
         f"(the {runs[0]['val_tasks']} validation episodes, repeated) through the real Lightning loop, "
         f"`pl.Trainer(inference_mode=False, limit_val_batches={n}).validate(...)`; each executor in a fresh "
         "process. RSS from `/proc/self/statm` after every batch. Both executors must report the same "
         f"validation metrics: {'they do' if same_metrics else 'THEY DO NOT'}."),
        "",
        "## Endpoints (single samples)",
        "",
        table(rows),
        "",
        "## Verdict (every batch's RSS)",
        "",
        robust_table(rows),
        "",
        (f"**{verdict}** Criterion: both the growth of the median RSS (last {rows[0]['window']} batches "
         f"against the {rows[0]['window']} batches up to batch {n // 2}) and the least-squares trend of every "
         f"batch's RSS over batches {n // 2 + 1}..{n}, extrapolated over those {n - n // 2} batches, are below "
         f"max(1% of RSS, {ABS_LIMIT_MB:.0f} MB). Single samples are not used for the verdict: the RSS "
         "swings from batch to batch by the band shown (temporary buffers returned to the system or kept "
         "by the allocator), which two endpoints cannot tell from a leak."),
        "",
        ("Most of the RSS is the imported libraries (torch alone maps about 700 MB, Lightning about 300 MB "
         "more), so 1% of RSS is about 11 MB; the tables also show the stricter 5 MB test on its own."),
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
