"""Shared by the benchmark scripts: markdown tables of ``metarec compare`` result rows, and writing a
generated block into the README between its ``<!-- BEGIN name -->`` / ``<!-- END name -->`` markers."""

from __future__ import annotations

import csv
import os
import re
import shutil
import sys
from pathlib import Path

from metarec.compare import ALL, compare, make_spec, result_rows, run_name, summarize
from metarec.compare_help import RUNS
from metarec.runs import METRICS_FILE, is_finished


FOLDER_OPTIONS = ("--work", "--tuned", "--out")  # their values are this machine's paths: footers say DIR


def command_line(script: str, argv: list[str] | None = None) -> str:
    """``python benchmarks/<script> <arguments>`` as a footer names it, folder arguments written ``DIR``."""
    args = list(sys.argv[1:] if argv is None else argv)
    out = []
    for i, a in enumerate(args):
        if i > 0 and args[i - 1] in FOLDER_OPTIONS:
            out.append("DIR")
        elif a.split("=", 1)[0] in FOLDER_OPTIONS and "=" in a:
            out.append(a.split("=", 1)[0] + "=DIR")
        else:
            out.append(a)
    return " ".join([f"python benchmarks/{script}", *out])


def read_rows(path: Path) -> list[dict]:
    """The rows of a compare ``results.csv``, values as floats and support sizes as ints (or ``ALL``)."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            r["value"] = float(r["value"])
            r["support_size"] = r["support_size"] if r["support_size"] == ALL else int(r["support_size"])
            rows.append(r)
    return rows


def cell(st) -> str:
    """``mean ± 95% CI half-width`` of a summary stat; the mean alone for one seed; ``–`` for none."""
    if st is None or st.n == 0:
        return "–"
    return f"{st.mean:.4f} ± {st.half_width:.4f}" if st.n > 1 else f"{st.mean:.4f}"  # one seed: no interval


def _bold_best(cells: list[str], means: list[float | None]) -> list[str]:
    known = [m for m in means if m is not None]
    best = max(known) if known else None
    return [f"**{c}**" if m is not None and m == best else c for c, m in zip(cells, means)]


def scenario_table(stats: dict, learners: list[str], scenarios: list[str], metrics: list[str]) -> list[str]:
    """One row per learner, one column per (scenario, metric), full support; best per column in bold."""
    header = ["learner"] + [f"{s} {m.replace('full_', '')}" for s in scenarios for m in metrics]
    columns = [[stats.get((l, ALL, s, m)) for l in learners] for s in scenarios for m in metrics]
    rendered = [_bold_best([cell(st) for st in col], [st.mean if st and st.n else None for st in col]) for col in columns]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for i, learner in enumerate(learners):
        lines.append(f"| {learner} | " + " | ".join(col[i] for col in rendered) + " |")
    return lines


def curve_table(stats: dict, learners: list[str], scenario: str, metric: str, sizes: list[int]) -> list[str]:
    """``metric`` in ``scenario`` by support size K (and the full support), one row per learner."""
    keys = [*sizes, ALL]
    header = ["learner"] + [f"K={k}" if k != ALL else "full support" for k in keys]
    columns = [[stats.get((l, k, scenario, metric)) for l in learners] for k in keys]
    rendered = [_bold_best([cell(st) for st in col], [st.mean if st and st.n else None for st in col]) for col in columns]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for i, learner in enumerate(learners):
        lines.append(f"| {learner} | " + " | ".join(col[i] for col in rendered) + " |")
    return lines


README = Path(__file__).resolve().parent.parent / "README.md"


def _block_pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- BEGIN {re.escape(name)} -->\n)(.*?)(<!-- END {re.escape(name)} -->)", re.S)


def read_block(text: str, name: str) -> str | None:
    """The text between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` in ``text`` (None: no markers)."""
    m = _block_pattern(name).search(text)
    return m.group(2).removesuffix("\n") if m else None


def replace_block(text: str, name: str, block: str) -> str | None:
    """``text`` with the block ``name`` replaced by ``block`` (None: ``text`` has no such markers)."""
    pattern = _block_pattern(name)
    if not pattern.search(text):
        return None
    return pattern.sub(lambda m: m.group(1) + block + "\n" + m.group(3), text, count=1)


def update_readme(name: str, block: str) -> None:
    """Replace the README text between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` with ``block``."""
    new = replace_block(README.read_text(), name, block)
    if new is None:
        print(f"README has no {name} markers; not updated", file=sys.stderr)
    else:
        README.write_text(new)


def merge_blocks(old: str | None, blocks: dict[str, str], order: list[str], placeholder) -> str:
    """One ``<!-- BEGIN key -->`` block per key of ``order``: the new ``blocks``, else the block of ``old``
    (text holding earlier results), else ``placeholder(key)`` — so a benchmark run on one part (one data set)
    keeps the parts it did not run."""
    out = []
    for key in order:
        body = blocks.get(key)
        if body is None and old is not None:
            body = read_block(old, key)
        out += [f"<!-- BEGIN {key} -->", body if body is not None else placeholder(key), f"<!-- END {key} -->", ""]
    return "\n".join(out).rstrip("\n")


KEPT_FILES = ("config.yaml", METRICS_FILE)  # what compare needs to reuse a finished run (no checkpoints)
MANIFEST = "split_manifest.json"


def _copy_missing(pairs, folder: Path | None = None) -> int:
    """Copy each ``(src, dst)`` where ``dst`` is absent; ``folder``: its path in the files' text is written
    ``DIR`` (a run's config.yaml names the folder it was made in, a path of that machine only)."""
    n = 0
    for src, dst in pairs:
        if src.is_file() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f"{dst.name}.{os.getpid()}.tmp")  # calls running side by side may share a store
            if folder is None:
                shutil.copyfile(src, tmp)
            else:
                tmp.write_text(src.read_text().replace(str(folder.resolve()), "DIR").replace(str(folder), "DIR"))
            tmp.replace(dst)
            n += 1
    return n


def _finished_runs(root: Path) -> list[Path]:
    return sorted(d for d in (root / RUNS).glob("*") if is_finished(d))


def restore_runs(store: Path, out: Path) -> int:
    """Copy the kept records of finished runs (``KEPT_FILES``, and the split manifest) from ``store`` into
    compare's folder ``out`` where absent: compare then reuses those runs instead of redoing them.
    Returns the number of runs restored."""
    runs = _finished_runs(store)
    _copy_missing([(store / MANIFEST, out / MANIFEST)])
    _copy_missing([(d / f, out / RUNS / d.name / f) for d in runs for f in KEPT_FILES])  # metrics.json last
    return len(runs)


def keep_runs(out: Path, store: Path) -> int:
    """Copy each finished run's ``KEPT_FILES`` (and the split manifest) from ``out`` into ``store`` — a few kB
    per run, small enough to commit, so a benchmark longer than one sitting resumes in the next. Returns the
    number of runs newly kept."""
    new = [d for d in _finished_runs(out) if not is_finished(store / RUNS / d.name)]
    _copy_missing([(out / MANIFEST, store / MANIFEST)])
    _copy_missing([(d / f, store / RUNS / d.name / f) for d in new for f in KEPT_FILES], out)  # metrics.json last
    return len(new)


def run_model_groups(work: Path, groups: list[tuple[str, list[str], list[str]]], seeds: list[str],
                     sizes: list[str], tuned: dict[str, dict] | None = None,
                     store: Path | None = None) -> tuple[dict, list[str], int, set]:
    """Each ``(base model, learners, overrides)`` group through ``compare`` in ``work/<model>`` (``tuned``:
    per model, the learners' tuned overrides); returns stats keyed by ``"learner (model)"``, those labels,
    the number of runs and the split hashes seen (one hash: every group ran on the same split).
    ``store``: a folder of kept run records (``keep_runs``), per model in ``store/<model>``: restored into
    ``work`` first, and each run is kept there as soon as it finishes."""
    stats, labels, n_runs, hashes = {}, [], 0, set()
    echo = lambda line: print(line, flush=True)  # noqa: E731
    for model, learners, overrides in groups:
        spec = make_spec(work / model, learners, seeds, sizes, overrides)
        if tuned:
            spec.tuned = tuned[model]
        if store is not None:
            restored = restore_runs(store / model, work / model)
            if restored:
                print(f"{model}: {restored} finished runs restored from {store / model}", flush=True)
            for learner in spec.learners:  # one run at a time: it is kept before the next starts
                for seed in seeds:
                    if is_finished(work / model / RUNS / run_name(learner, int(seed))):
                        continue  # the full call below reuses it
                    one = make_spec(work / model, [learner], [seed], sizes, overrides)
                    if tuned:
                        one.tuned = tuned[model]
                    compare(one, echo=echo)
                    keep_runs(work / model, store / model)
        result = compare(spec, echo=echo)
        n_runs += len(result["records"])
        hashes |= {r["split_hash"] for r in result["records"]}
        for key, st in summarize(result_rows(result["records"], spec.out)).items():
            learner, *rest = key
            stats[(f"{learner} ({model})", *rest)] = st
        labels += [f"{l} ({model})" for l in spec.learners]
    return stats, labels, n_runs, hashes


def fmt_table(header: list[str], rows: list[list]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere) and its logical core count."""
    import os
    import platform

    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{name or platform.processor() or platform.machine()}, {os.cpu_count()} logical cores"


def machine_info() -> dict:
    """What a timing depends on: device, CPU model with the vector instruction set torch's kernels use
    (``AVX2``, ``AVX512``: ratios between implementations move with it), torch's intra-op thread count,
    versions, and the 1-minute load average when the benchmark started (a busy machine slows every number)."""
    import os
    import platform

    import torch

    cuda = torch.cuda.is_available()
    return {"device": "cuda" if cuda else "cpu", "gpu": torch.cuda.get_device_name() if cuda else None,
            "cpu": f"{cpu_model()}, {torch.backends.cpu.get_cpu_capability()} kernels",
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "load_average_1min": os.getloadavg()[0]}
