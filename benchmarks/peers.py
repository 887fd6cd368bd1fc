"""Meta-training speed of metarec against every peer a user could pick, in one process.

The MeLU workload of ``speed.py`` section 1 (8 fields x 32 dims, 64-64 head, meta-batch 32, query 10,
support 10/36/90, inner steps 1/5, inner rate 0.01, second-order MAML, mean query MSE over tasks, Adam
outer step) written six ways:

- ``learn2learn plain``: ``l2l.algorithms.MAML`` ``clone()``/``adapt()`` per task, as learn2learn's
  MAML examples (whole model) and its ANIL example (``head``: the body runs per task, only the head is
  wrapped), one ``backward`` per task;
- ``higher``: ``higher.innerloop_ctx(model, SGD, copy_initial_weights=False)`` per task, as its MAML
  example (``head``: the context wraps ``model.head``), one ``backward`` per task;
- ``TorchOpt``: ``torchopt.MetaSGD`` on the model with ``extract_state_dict``/``recover_state_dict``
  around each task, as its MAML example (``head``: on ``model.head``), one ``backward`` per task;
- ``torch.func plain``: ``grad`` inside ``vmap`` over tasks on the whole model with ``functional_call``,
  as PyTorch's functorch MAML example (``head``: the body runs once on the batch, the vmapped inner loop
  adapts the head's parameters);
- ``metarec learn2learn`` and ``metarec vmap``: metarec's two executors (``learner.executor``).

Before any timing, every variant's meta-gradient on one float64 batch of each configuration must equal
that of metarec's reference (the learn2learn executor) within rtol 1e-6: a variant that differs is a bug
in this benchmark, and the script stops. A peer that is not installed or does not run on this torch is
kept in the table with the reason. Throughput: all variants built in this process, interleaved repeats
(the order rotates each repeat), median tasks/s. Peak memory: each variant in a fresh subprocess
(``speed.rss_growth_during``: RSS growth over three training steps on the CPU; the allocator's peak on a
GPU); ``--no-memory`` skips it.

    .venv/bin/python benchmarks/peers.py            # full grid (about 15-30 minutes on 2 quiet CPU cores)
    .venv/bin/python benchmarks/peers.py --smoke    # seconds; writes nothing
    .venv/bin/python benchmarks/peers.py --supports 36 --steps 5 --scopes all   # one cell; writes nothing
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from bench_utils import fmt_table, machine_info, update_readme
from speed import RESULTS, T, device, make_batch, make_learner, make_model, peak_memory_of, sync

from metarec.data.episodes import EpisodeBatch
from metarec.data.features import Features

LR = 0.01  # inner learning rate, as speed.make_learner's MAMLConfig
SUPPORTS, STEPS, SCOPES = (10, 36, 90), (1, 5), ("head", "all")
# name -> (label, module a user installs for it; None: in metarec's own dependencies)
VARIANTS = {
    "l2l_plain": ("learn2learn plain", "learn2learn"),
    "higher": ("higher", "higher"),
    "torchopt": ("TorchOpt", "torchopt"),
    "torchfunc": ("torch.func plain", None),
    "metarec_l2l": ("metarec learn2learn", None),
    "metarec_vmap": ("metarec vmap", None),
}
PEERS = ("l2l_plain", "higher", "torchopt", "torchfunc")
REFERENCE = "metarec_l2l"
RTOL, ATOL = 1e-6, 1e-9


@dataclass
class Variant:
    """One way of writing the meta-training step: ``meta_backward(batch)`` accumulates the meta-gradient
    of the mean query loss into ``model``'s ``.grad``; ``trainable`` holds everything the outer
    optimiser steps."""

    model: nn.Module
    trainable: nn.Module
    meta_backward: Callable[[EpisodeBatch], None]


def _split(batch: EpisodeBatch):
    s = batch.n_support
    i_s = batch.item.index((slice(None), slice(0, s)))
    i_q = batch.item.index((slice(None), slice(s, None)))
    return batch.user, i_s, batch.ratings[:, :s], i_q, batch.ratings[:, s:]


def _per_task_inputs(model, scope: str, batch: EpisodeBatch, t: int):
    """Task ``t``'s support and query inputs of the adapted module: ``(user, items)`` under ``all``; the
    body's output, computed for this task (as learn2learn's ANIL example does), under ``head``."""
    s = batch.n_support
    user = batch.user.index(t)
    if scope == "all":
        return (user, batch.item.index((t, slice(0, s)))), (user, batch.item.index((t, slice(s, None))))
    x = model.body(user, batch.item.index(t))
    return (x[:s],), (x[s:],)


def _out(module, scope: str, inputs: tuple) -> torch.Tensor:
    out = module(*inputs)
    return out if scope == "all" else out.squeeze(-1)


def l2l_plain(model, scope: str, steps: int) -> Variant:
    from metarec._l2l import l2l

    maml = l2l.algorithms.MAML(model if scope == "all" else model.head, lr=LR, first_order=False)

    def meta_backward(batch: EpisodeBatch) -> None:
        y_s, y_q = batch.ratings[:, :batch.n_support], batch.ratings[:, batch.n_support:]
        for t in range(batch.n_tasks):
            learner = maml.clone()
            sup, qry = _per_task_inputs(model, scope, batch, t)
            for _ in range(steps):
                learner.adapt(F.mse_loss(_out(learner, scope, sup), y_s[t]))
            (F.mse_loss(_out(learner, scope, qry), y_q[t]) / batch.n_tasks).backward()

    return Variant(model, model, meta_backward)


def higher_peer(model, scope: str, steps: int) -> Variant:
    import higher

    adapted = model if scope == "all" else model.head
    inner_opt = torch.optim.SGD(adapted.parameters(), lr=LR)

    def meta_backward(batch: EpisodeBatch) -> None:
        y_s, y_q = batch.ratings[:, :batch.n_support], batch.ratings[:, batch.n_support:]
        for t in range(batch.n_tasks):
            sup, qry = _per_task_inputs(model, scope, batch, t)
            with higher.innerloop_ctx(adapted, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(steps):
                    diffopt.step(F.mse_loss(_out(fmodel, scope, sup), y_s[t]))
                (F.mse_loss(_out(fmodel, scope, qry), y_q[t]) / batch.n_tasks).backward()

    return Variant(model, model, meta_backward)


def torchopt_peer(model, scope: str, steps: int) -> Variant:
    import torchopt

    adapted = model if scope == "all" else model.head
    inner_opt = torchopt.MetaSGD(adapted, lr=LR)

    def meta_backward(batch: EpisodeBatch) -> None:
        y_s, y_q = batch.ratings[:, :batch.n_support], batch.ratings[:, batch.n_support:]
        net_state = torchopt.extract_state_dict(adapted, by="reference", detach_buffers=True)
        optim_state = torchopt.extract_state_dict(inner_opt, by="reference")
        for t in range(batch.n_tasks):
            sup, qry = _per_task_inputs(model, scope, batch, t)
            for _ in range(steps):
                inner_opt.step(F.mse_loss(_out(adapted, scope, sup), y_s[t]))
            (F.mse_loss(_out(adapted, scope, qry), y_q[t]) / batch.n_tasks).backward()
            torchopt.recover_state_dict(adapted, net_state)
            torchopt.recover_state_dict(inner_opt, optim_state)

    return Variant(model, model, meta_backward)


def torchfunc_peer(model, scope: str, steps: int) -> Variant:
    from torch.func import functional_call, grad, vmap

    adapted = model if scope == "all" else model.head

    def meta_backward(batch: EpisodeBatch) -> None:
        user, i_s, y_s, i_q, y_q = _split(batch)
        params = dict(adapted.named_parameters())
        if scope == "all":
            in_s, in_q = (user, i_s), (user, i_q)
        else:
            x = model.body(user, batch.item)
            xs, xq = x[:, :batch.n_support], x[:, batch.n_support:]
            in_s, in_q = (xs,), (xq,)

        def loss_for_task(in_s, y_s, in_q, y_q):
            def compute_loss(new_params, inputs, y):
                return F.mse_loss(_out(lambda *a: functional_call(adapted, new_params, a), scope, inputs), y)

            new_params = params
            for _ in range(steps):
                grads = grad(compute_loss)(new_params, in_s, y_s)
                new_params = {k: new_params[k] - LR * g for k, g in grads.items()}
            return compute_loss(new_params, in_q, y_q)

        vmap(loss_for_task)(in_s, y_s, in_q, y_q).mean().backward()

    return Variant(model, model, meta_backward)


def metarec_variant(executor: str) -> Callable:
    def build(model, scope: str, steps: int) -> Variant:
        learner = make_learner(executor, scope, steps, model=model)

        def meta_backward(batch: EpisodeBatch) -> None:
            learner.meta_step(batch, train=True)[0].backward()

        return Variant(learner.model, learner, meta_backward)

    return build


BUILDERS = {"l2l_plain": l2l_plain, "higher": higher_peer, "torchopt": torchopt_peer, "torchfunc": torchfunc_peer,
            "metarec_l2l": metarec_variant("learn2learn"), "metarec_vmap": metarec_variant("vmap")}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:160]


def missing_reason(name: str) -> str | None:
    """Why variant ``name`` cannot be built here (its library does not import), or None."""
    module = VARIANTS[name][1]
    if module is None or module == "learn2learn":  # learn2learn: a metarec dependency (scripts/install_learn2learn.sh)
        return None
    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any import failure is a reason to show in the table
        return f"`import {module}` fails ({_first_line(e)}); `pip install -e '.[bench]'` installs it"
    return None


def library_versions(names: list[str]) -> dict[str, str]:
    """Installed versions of the peer libraries measured (TorchOpt: and whether its C++ ops load)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for module in dict.fromkeys(VARIANTS[n][1] for n in names if VARIANTS[n][1]):
        try:
            out[module] = version(module)
        except PackageNotFoundError:
            out[module] = "?"
    if "torchopt" in out:
        import torchopt

        out["torchopt"] += " (C++ ops " + ("loaded" if torchopt.accelerated_op_available() else
                                          "not loadable here: pure-Python path") + ")"
    return out


def build(name: str, scope: str, steps: int, dtype=torch.float32, seed: int = 0) -> Variant:
    """Variant ``name`` on a fresh MeLU model of the workload (the same initial weights for every variant)."""
    model = make_model(seed).to(device=device(), dtype=dtype)
    return BUILDERS[name](model, scope, steps)


def as_dtype(batch: EpisodeBatch, dtype) -> EpisodeBatch:
    f = lambda x: x.to(dtype)  # noqa: E731
    return EpisodeBatch(batch.user_ids, Features(batch.user.categorical, f(batch.user.multihot)), batch.item_ids,
                        Features(batch.item.categorical, f(batch.item.multihot)), f(batch.ratings),
                        batch.support_mask, batch.query_mask, batch.n_support)


def meta_gradient(v: Variant, batch: EpisodeBatch) -> dict[str, torch.Tensor]:
    v.trainable.zero_grad(set_to_none=True)
    v.meta_backward(batch)
    return {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in v.model.named_parameters()}


def check(names: list[str], support: int, scope: str, steps: int,
          n_tasks: int = 4) -> tuple[dict[str, float], dict[str, str]]:
    """Every variant's meta-gradient on one float64 batch vs the reference's: the largest
    ``|g - g_ref| / (ATOL + RTOL |g_ref|)`` over all parameters (<= 1 passes), and the peers that raise
    when run here (name -> why). Raises on a difference (a bug in this benchmark)."""
    batch = as_dtype(make_batch(support, n_tasks=n_tasks, seed=1), torch.float64)
    ref = meta_gradient(build(REFERENCE, scope, steps, torch.float64), batch)
    assert any(bool(g.abs().sum() > 0) for g in ref.values()), "reference meta-gradient is zero"
    out, failed = {}, {}
    for name in names:
        try:
            got = meta_gradient(build(name, scope, steps, torch.float64), batch)
        except Exception as e:  # noqa: BLE001 - a peer that does not run here is reported, not dropped
            if name not in PEERS:
                raise
            failed[name] = f"fails on torch {torch.__version__} ({_first_line(e)})"
            continue
        if got.keys() != ref.keys():
            raise AssertionError(f"{name}: parameters {sorted(got)} differ from the reference's")
        out[name] = max(float(((got[k] - ref[k]).abs() / (ATOL + RTOL * ref[k].abs())).max()) for k in ref)
        if out[name] > 1.0:
            worst = max(ref, key=lambda k: float((got[k] - ref[k]).abs().max()))
            raise AssertionError(
                f"{VARIANTS[name][0]} ({scope}, {steps} steps, support {support}): meta-gradient differs from "
                f"metarec's reference (worst parameter {worst}, max |diff| "
                f"{float((got[worst] - ref[worst]).abs().max()):.3g}); the benchmark's code for it is wrong")
    return out, failed


def train_step(v: Variant, opt, batch: EpisodeBatch) -> None:
    opt.zero_grad(set_to_none=True)
    v.meta_backward(batch)
    opt.step()


def throughput(names: list[str], support: int, scope: str, steps: int, reps: int, iters: int) -> dict[str, float]:
    """Median tasks/s of each variant: interleaved repeats of ``iters`` training steps, rotating order."""
    batch = make_batch(support)
    runs = {}
    for name in names:
        v = build(name, scope, steps)
        opt = torch.optim.Adam(v.trainable.parameters(), lr=1e-3)
        train_step(v, opt, batch)  # warm-up
        runs[name] = (v, opt, [])
    for rep in range(reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            v, opt, rates = runs[name]
            sync()
            t0 = time.perf_counter()
            for _ in range(iters):
                train_step(v, opt, batch)
            sync()
            rates.append(iters * T / (time.perf_counter() - t0))
    return {name: statistics.median(r[2]) for name, r in runs.items()}


def peak_memory_child(name: str, support: int, scope: str, steps: int) -> float:
    batch = make_batch(support)
    v = build(name, scope, steps)
    opt = torch.optim.Adam(v.trainable.parameters(), lr=1e-3)
    return peak_memory_of(lambda: train_step(v, opt, batch))


def peak_memory(name: str, support: int, scope: str, steps: int) -> float:
    cmd = [sys.executable, __file__, "--threads", str(torch.get_num_threads()),
           "--_child", name, str(support), scope, str(steps)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"memory child for {name} failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    return float(out.stdout.strip().splitlines()[-1])


def run_cell(names: list[str], support: int, scope: str, steps: int, reps: int, iters: int, memory: bool) -> dict:
    errs, failed = check(names, support, scope, steps)
    names = [n for n in names if n not in failed]
    rates = throughput(names, support, scope, steps, reps, iters)
    peers = {n: rates[n] for n in PEERS if n in rates}
    fastest = max(peers, key=peers.get) if peers else None
    cell = {"scope": scope, "steps": steps, "support": support, "tasks_per_s": rates, "check": errs, "failed": failed,
            "fastest_peer": fastest,
            "ratio_vmap_to_fastest_peer": rates["metarec_vmap"] / peers[fastest] if fastest else None}
    if memory:
        cell["peak_mb"] = {n: peak_memory(n, support, scope, steps) for n in names}
    return cell


def tables(cells: list[dict], names: list[str], skipped: dict[str, str]) -> list[str]:
    labels = [VARIANTS[n][0] for n in VARIANTS]
    head = ["scope", "steps", "support", *[f"{l} tasks/s" for l in labels], "fastest peer", "metarec vmap / fastest peer"]
    rows, mem_rows = [], []
    for c in cells:
        r = c["tasks_per_s"]
        cols = [f"{r[n]:.0f}" if n in r else "–" for n in VARIANTS]
        ratio = c["ratio_vmap_to_fastest_peer"]
        rows.append([c["scope"], c["steps"], c["support"], *cols,
                     VARIANTS[c["fastest_peer"]][0] if c["fastest_peer"] else "–",
                     f"**{ratio:.2f}x**" if ratio is not None else "–"])
        if "peak_mb" in c:
            m = c["peak_mb"]
            mem_rows.append([c["scope"], c["steps"], c["support"], *[f"{m[n]:.1f}" if n in m else "–" for n in VARIANTS]])
    out = ["## Throughput (tasks/s, median of interleaved repeats; higher is better)\n", fmt_table(head, rows)]
    if mem_rows:
        out += ["\n## Peak memory (MB above set-up, fresh process per variant; lower is better)\n",
                fmt_table(["scope", "steps", "support", *labels], mem_rows)]
    if skipped:
        out += ["\n## Not measured\n", *[f"- {VARIANTS[n][0]}: {why}" for n, why in skipped.items()]]
    return out


def readme_summary(result: dict) -> str:
    meta, cells = result["meta"], result["cells"]
    ratios = [c["ratio_vmap_to_fastest_peer"] for c in cells if c["ratio_vmap_to_fastest_peer"] is not None]
    lines = [f"Measured by `python benchmarks/peers.py` on {meta['cpu']} (torch threads: {meta['threads']}), "
             "MeLU workload, second-order MAML; full tables in "
             "[`benchmarks/results/peers.md`](benchmarks/results/peers.md).", ""]
    for scope in SCOPES:
        for steps in STEPS:
            cs = [c for c in cells if c["scope"] == scope and c["steps"] == steps]
            if cs:
                lines.append(f"- scope `{scope}`, {steps} inner step{'s' if steps > 1 else ''}, support "
                             f"{'/'.join(str(c['support']) for c in cs)}: metarec vmap at "
                             + ", ".join(f"{c['ratio_vmap_to_fastest_peer']:.2f}x" if c["fastest_peer"] else "–" for c in cs)
                             + " the fastest peer's tasks/s (fastest peer: "
                             + ", ".join(VARIANTS[c["fastest_peer"]][0] if c["fastest_peer"] else "none" for c in cs)
                             + ").")
    if ratios:
        lines.append(f"- metarec vmap is at least 1.5x the fastest peer in {sum(r >= 1.5 for r in ratios)} of "
                     f"{len(ratios)} cells and slower than it in {sum(r < 1 for r in ratios)}.")
    for n, why in result["skipped"].items():
        lines.append(f"- {VARIANTS[n][0]} not measured: {why}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="one tiny cell, seconds, nothing written")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--supports", type=int, nargs="+", default=list(SUPPORTS))
    p.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    p.add_argument("--scopes", nargs="+", default=list(SCOPES), choices=SCOPES)
    p.add_argument("--reps", type=int, default=5, help="interleaved repeats per cell (median)")
    p.add_argument("--iters", type=int, default=3, help="training steps per repeat")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's own choice, usually one per core)")
    p.add_argument("--_child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads is not None:
        if args.threads < 1:
            print("peers.py: --threads must be a positive integer", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    if args._child:
        name, support, scope, steps = args._child
        print(peak_memory_child(name, int(support), scope, int(steps)))
        return 0
    if any(s < 1 for s in args.supports) or any(k < 1 for k in args.steps) or args.reps < 1 or args.iters < 1:
        print("peers.py: --supports, --steps, --reps and --iters must be positive integers", file=sys.stderr)
        return 2

    skipped = {n: why for n in VARIANTS if (why := missing_reason(n))}
    names = [n for n in VARIANTS if n not in skipped]
    if args.smoke:
        for scope in SCOPES:  # the equivalence check of both scopes (cheap), timing of one tiny cell
            errs, failed = check(names, 10, scope, 2)
            print(f"check {scope} (max error / tolerance): " + ", ".join(f"{VARIANTS[n][0]} {e:.2g}" for n, e in errs.items())
                  + "".join(f"; {VARIANTS[n][0]} {why}" for n, why in failed.items()))
        grid, reps, iters = [("head", 1, 10)], 1, 1
    else:
        grid = [(sc, k, s) for sc in args.scopes for k in args.steps for s in args.supports]
        reps, iters = args.reps, args.iters
    full = not args.smoke and (args.supports, args.steps, args.scopes) == (list(SUPPORTS), list(STEPS), list(SCOPES))
    result = {"meta": {**machine_info(), "reps": reps, "iters": iters, "meta_batch": T,
                       "libraries": library_versions(names)},
              "skipped": skipped, "cells": []}
    for name, why in skipped.items():
        print(f"{VARIANTS[name][0]}: not measured: {why}", flush=True)
    for scope, steps, support in grid:
        t0 = time.perf_counter()
        cell = run_cell(names, support, scope, steps, reps, iters, memory=not (args.no_memory or args.smoke))
        result["cells"].append(cell)
        for n, why in cell["failed"].items():
            skipped.setdefault(n, f"{why} (first seen: scope {scope}, {steps} steps, support {support})")
        r = cell["tasks_per_s"]
        print(f"{scope} steps={steps} support={support}: "
              + ", ".join(f"{VARIANTS[n][0]} {r[n]:.0f}" for n in r)
              + (f"; vmap / fastest peer ({VARIANTS[cell['fastest_peer']][0]}) "
                 f"{cell['ratio_vmap_to_fastest_peer']:.2f}x" if cell["fastest_peer"] else "")
              + ("; peak MB " + ", ".join(f"{n} {m:.1f}" for n, m in cell["peak_mb"].items()) if "peak_mb" in cell else "")
              + f" [{time.perf_counter() - t0:.0f} s]", flush=True)
    if not full:
        print("(smoke or partial grid: nothing written)")
        return 0
    meta = result["meta"]
    sections = tables(result["cells"], names, skipped)
    head = (f"# Peers: metarec against the libraries a user could pick\n\n_Produced by `python benchmarks/peers.py` "
            f"on {meta['device']} ({meta['cpu']}; torch threads: {meta['threads']}), torch {meta['torch']}; "
            f"meta-batch {T}, query 10, inner rate {LR}, second-order MAML, {reps} interleaved repeats of "
            f"{iters} steps per cell; 1-minute load average at the start {meta['load_average_1min']:.2f}; "
            + ", ".join(f"{k} {v}" for k, v in meta["libraries"].items())
            + f". Every variant's meta-gradient matched metarec's reference (float64, rtol {RTOL}) before timing._\n\n")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "peers.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "peers.md").write_text(head + "\n\n".join(__doc__.split("\n\n")[1:4]) + "\n\n" + "\n".join(sections) + "\n")
    update_readme("peers", readme_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
