"""Chaos check of run folders: concurrent writers, signals and kills, end to end on real processes.

Every case starts real ``python -m metarec`` processes on tiny synthetic data (``experiment=quickstart``)
and checks what the user sees (exit code, the one stderr line) and what is left on disk:

- a second ``fit`` with the same ``run.name`` while the first runs, and ``resume=last`` of the running
  run: refused with one line naming the holder (exit 2), the folder untouched;
- SIGTERM and SIGINT during training: exit 143 / 130, one line with the command that continues the run;
  that printed command (with a smaller budget) finishes it, in the same folder, with the first call's config;
- SIGKILL during training: the lock file stays but the OS released the lock; ``resume=last`` finishes it;
- SIGTERM during start-up (before any run folder): exit 143, nothing written;
- a config error: exit 2, nothing created;
- SIGTERM during ``metarec compare``: exit 143, one line; the same command again reuses the finished run.

    .venv/bin/python benchmarks/chaos.py           # every case; writes benchmarks/results/chaos.md
    .venv/bin/python benchmarks/chaos.py --smoke   # the concurrency and SIGTERM cases; writes nothing
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
TINY = ["experiment=quickstart", "data.params.n_users=200", "trainer.enable_progress_bar=false", "trainer.patience=0"]
LONG = "trainer.max_epochs=1000"  # never reached: the run is stopped first
TIMEOUT_S = 600


@dataclass
class Row:
    case: str
    expected: str
    observed: str
    ok: bool


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "METAREC_"))}
    out.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return out


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "metarec", *args], cwd=cwd, env=env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metarec", *args], cwd=cwd, env=env(), text=True,
                          capture_output=True, timeout=TIMEOUT_S)


def wait_for(path: Path, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + TIMEOUT_S
    while not path.exists():
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop(proc: subprocess.Popen, signum: int) -> tuple[int, list[str]]:
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=TIMEOUT_S)
    return proc.returncode, err.splitlines()


def seen(code: int, lines: list[str]) -> str:
    last = lines[-1] if lines else ""
    return f"exit {code}, {len(lines)} stderr line(s): `{last[:150]}{'…' if len(last) > 150 else ''}`"


def resume_command(line: str, epochs: int) -> list[str]:
    """The command an interrupt line prints, as arguments of ``python -m metarec``, with a smaller budget."""
    words = shlex.split(line.split("resumable: ", 1)[1])[1:]
    return [w if not w.startswith("trainer.max_epochs=") else f"trainer.max_epochs={epochs}" for w in words]


def checkpoint_epoch(run_dir: Path) -> int:
    import torch

    return int(torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"])


def seed_of(run_dir: Path) -> int:
    import yaml

    return int(yaml.safe_load((run_dir / "config.yaml").read_text())["seed"])


# ------------------------------------------------------------------------------------------- cases
def writers_and_sigterm(work: Path) -> list[Row]:
    """Two writers of one folder, then SIGTERM of the first and its resume with the printed command."""
    rows = []
    root = work / "runs"
    folder = root / "quickstart" / "same"
    args = [*TINY, f"run.root={root}", "run.name=same"]
    first = start(["fit", *args, "seed=1", LONG], work)
    try:
        if not wait_for(folder / "checkpoints" / "last.ckpt", first):
            return [Row("first run starts", "a checkpoint", f"ended early: {first.communicate()[1][-300:]}", False)]
        busy = f"is in use by another metarec process (pid {first.pid} on"
        for case, extra in (("second fit, same run.name, while the first runs", ["seed=2", "trainer.max_epochs=1"]),
                            ("resume=last of the run while it runs", ["seed=1", LONG, "resume=last"])):
            p = run(["fit", *args, *extra], work)
            lines = p.stderr.splitlines()
            ok = p.returncode == 2 and len(lines) == 1 and busy in lines[0] and seed_of(folder) == 1
            rows.append(Row(case, "exit 2, one line naming the holder's pid; folder untouched",
                            seen(p.returncode, lines), ok))
        code, lines = stop(first, signal.SIGTERM)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    ok = code == 143 and len(lines) == 1 and "is resumable: metarec fit " in lines[0]
    ok = ok and lines[0].endswith("resume=last") and not (folder / "metrics.json").exists()
    rows.append(Row("SIGTERM during training", "exit 143, one line with the command that resumes it; unfinished",
                    seen(code, lines), ok))
    if not ok:
        return rows
    p = run(resume_command(lines[0], checkpoint_epoch(folder) + 2), work)
    done = (folder / "metrics.json").is_file()
    ok = p.returncode == 0 and done and seed_of(folder) == 1
    rows.append(Row("the printed command, budget cut to 2 more epochs", "exit 0; finished in the same folder, "
                    "config of the first call", f"exit {p.returncode}, metrics.json: {done}, "
                    f"config seed {seed_of(folder)}", ok))
    return rows


def sigint(work: Path) -> list[Row]:
    root = work / "runs"
    folder = root / "quickstart" / "ctrl-c"
    proc = start(["fit", *TINY, f"run.root={root}", "run.name=ctrl-c", LONG], work)
    try:
        wait_for(folder / "checkpoints" / "last.ckpt", proc)
        code, lines = stop(proc, signal.SIGINT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ok = code == 130 and len(lines) == 1 and "interrupted by SIGINT; run" in lines[0] and "is resumable" in lines[0]
    return [Row("SIGINT (Ctrl-C) during training", "exit 130, one line with the command that resumes it",
                seen(code, lines), ok)]


def sigkill(work: Path) -> list[Row]:
    from metarec.runs import LOCK_FILE

    root = work / "runs"
    folder = root / "quickstart" / "killed"
    args = [*TINY, f"run.root={root}", "run.name=killed"]
    proc = start(["fit", *args, LONG], work)
    try:
        wait_for(folder / "checkpoints" / "last.ckpt", proc)
        code, _ = stop(proc, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stale = (folder / LOCK_FILE).read_text().split()[:1] == [str(proc.pid)]
    p = run(["fit", *args, f"trainer.max_epochs={checkpoint_epoch(folder) + 2}", "resume=last"], work)
    ok = code == -signal.SIGKILL and stale and p.returncode == 0 and (folder / "metrics.json").is_file()
    return [Row("SIGKILL during training, then resume=last", "the dead process's lock file does not block; "
                "exit 0, finished", f"killed: {code == -signal.SIGKILL}, lock file names it: {stale}, "
                f"resume exit {p.returncode}", ok)]


def early_sigterm(work: Path) -> list[Row]:
    root = work / "early"
    proc = start(["fit", *TINY, f"run.root={root}", LONG], work)
    time.sleep(2.0)  # importing or loading: no run folder yet
    code, lines = stop(proc, signal.SIGTERM)
    ok = code == 143 and len(lines) == 1 and "nothing was written; to start again: metarec fit" in lines[0]
    ok = ok and not root.exists()
    return [Row("SIGTERM during start-up", "exit 143, one line; nothing written", seen(code, lines)
                + f", run root exists: {root.exists()}", ok)]


def config_error(work: Path) -> list[Row]:
    root = work / "bad"
    p = run(["fit", *TINY, f"run.root={root}", "data.split.new_item_fraction=0.0"], work)
    lines = p.stderr.splitlines()
    ok = p.returncode == 2 and len(lines) == 1 and lines[0].startswith("metarec: error: ") and not root.exists()
    return [Row("config error found while building (empty scenario)", "exit 2, one line; nothing created",
                seen(p.returncode, lines) + f", run root exists: {root.exists()}", ok)]


def compare_sigterm(work: Path) -> list[Row]:
    out = work / "cmp"
    argv = ["compare", "--out", str(out), "--learners", "maml", "--seeds", "0", "1", *TINY, "trainer.max_epochs=3",
            "--support-sizes", "5"]
    proc = start(argv, work)
    try:
        wait_for(out / "runs" / "maml-s1" / "config.yaml", proc)  # seed 0 finished, seed 1 under way
        code, lines = stop(proc, signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    want = f"to continue, run the same command again: {shlex.join(['metarec', *argv])}"
    ok = code == 143 and lines and lines[-1].endswith(want) and "Traceback" not in "\n".join(lines)
    rows = [Row("SIGTERM during compare (second of two runs)", "exit 143, one line: run the same command again",
                seen(code, lines), ok)]
    p = run(argv, work)
    ok = p.returncode == 0 and "done before" in p.stdout and (out / "results.csv").is_file()
    rows.append(Row("the same compare again", "exit 0; the finished run reused, the other one rerun",
                    f"exit {p.returncode}, 'done before' shown: {'done before' in p.stdout}", ok))
    return rows


SMOKE = (writers_and_sigterm,)
ALL = (writers_and_sigterm, sigint, sigkill, early_sigterm, config_error, compare_sigterm)


def table(rows: list[Row], tmp: str = "") -> list[str]:
    """Markdown rows; the temporary folder ``tmp`` is shown as ``$TMP``."""
    lines = ["| case | expected | observed | ok |", "|---|---|---|---|"]
    for r in rows:
        observed = (r.observed.replace(tmp, "$TMP") if tmp else r.observed).replace("|", "/")
        lines.append(f"| {r.case} | {r.expected} | {observed} | {'yes' if r.ok else '**NO**'} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the concurrency and SIGTERM cases only; writes nothing")
    args = parser.parse_args()
    rows: list[Row] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="metarec-chaos-") as tmp:
        for case in SMOKE if args.smoke else ALL:
            work = Path(tmp) / case.__name__
            work.mkdir()
            rows += case(work)
            print("\n".join(table(rows, tmp)[-1:]), flush=True)
        lines = table(rows, tmp)
    print("\n".join(lines))
    passed = sum(r.ok for r in rows)
    summary = f"{passed}/{len(rows)} cases as expected in {time.perf_counter() - t0:.0f} s"
    print(summary)
    if not args.smoke:
        RESULTS.mkdir(exist_ok=True)
        head = ["# Chaos check: run folders under concurrency, signals and kills", "",
                "`benchmarks/chaos.py`: real `python -m metarec` processes on tiny synthetic data "
                f"(`{' '.join(TINY)}`).", "",
                f"Python {platform.python_version()}, {platform.system()} {platform.machine()}, "
                f"{os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d')}. {summary}.", ""]
        (RESULTS / "chaos.md").write_text("\n".join(head + lines) + "\n")
        print(f"wrote {RESULTS / 'chaos.md'}")
    return 0 if passed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
