"""Checkpoint and resume: a run killed mid-epoch (SIGKILL, as a preempted cluster job) continues with
``run.resume`` and ends at exactly the metrics of the same run left alone."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import cli_env

from metarec.config import compose
from metarec.errors import ConfigError, MetarecError
from metarec.runs import LOCK_FILE, RunLock
from metarec.train import check_checkpoint, fit

# big enough that an epoch lasts seconds (the kill must land inside one), small enough for CI
RUN = ["data.params.n_users=1500", "data.meta_batch_size=16", "trainer.max_epochs=4", "trainer.patience=0",
       "trainer.deterministic=true", "trainer.enable_progress_bar=false", "seed=3"]


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_killed_run_resumes_to_the_same_metrics(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    reference = fit(compose([*RUN, f"run.root={root}", "run.name=reference"]))

    # the same run in a subprocess, SIGKILLed shortly after its first checkpoint (in epoch 2 of 4)
    victim = root / "default" / "victim"
    ckpt = victim / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "metarec.cli", "fit", *RUN, f"run.root={root}", "run.name=victim"],
        cwd=tmp_path, env=cli_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)  # into the next epoch
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended on its own before the kill: {proc.stderr.read()[-2000:]}"
    assert not (victim / "metrics.json").exists()
    for saved in (victim / "checkpoints").glob("*.ckpt"):  # a kill during a save never leaves a torn checkpoint
        check_checkpoint(saved)
    # the killed process's lock file stays, naming it, but the OS released its lock: no stale lock blocks
    assert (victim / LOCK_FILE).read_text().split()[0] == str(proc.pid)
    RunLock.acquire(victim).release()

    resumed = fit(compose([*RUN, f"run.root={root}", "run.name=victim", "resume=last"]))  # = run.resume=last
    assert resumed == victim
    got, want = _metrics(resumed), _metrics(reference)
    assert got["epochs"] == want["epochs"] == 4
    assert got["metrics"] == want["metrics"]  # bit for bit
    # it continued from the checkpoint rather than starting over: the resumed log has no epoch-0 rows
    assert (victim / "logs" / "metrics.csv").is_file()
    with open(victim / "logs" / "resume-1" / "metrics.csv", newline="") as f:
        epochs = {int(row["epoch"]) for row in csv.DictReader(f) if row.get("epoch")}
    assert epochs and min(epochs) >= 1, epochs


def test_resume_refuses_bad_targets(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    base = ["data.params.n_users=200", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", f"run.root={root}"]
    done = fit(compose([*base, "run.name=done"]))
    with pytest.raises(MetarecError, match="already finished"):
        fit(compose([*base, "run.name=done", "run.resume=last"]))
    with pytest.raises(MetarecError, match="no unfinished maml run with seed 0"):
        fit(compose([*base, "run.resume=last"]))
    with pytest.raises(MetarecError, match="not a metarec run folder"):
        fit(compose([*base, f"run.resume={tmp_path}"]))
    # an unfinished run, resumed with other settings
    (done / "metrics.json").unlink()
    with pytest.raises(ConfigError, match=r"run.resume: .* was made with learner.inner_lr=0.01, this call asks for 0.5"):
        fit(compose([*base, "learner.inner_lr=0.5", f"run.resume={done}"]))
    (done / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(MetarecError, match="stopped before its first checkpoint"):
        fit(compose([*base, f"run.resume={done}"]))
