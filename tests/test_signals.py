"""One writer per run folder, and SIGTERM / SIGINT: a clear refusal for a second writer, exit 143 / 130
with one line saying how to continue, and a run that ``resume=last`` finishes."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import cli_env

from metarec.cli import main
from metarec.runs import RunLock

RUN = ["experiment=quickstart", "data.params.n_users=200", "trainer.enable_progress_bar=false", "trainer.patience=0"]
LONG = "trainer.max_epochs=1000"  # never reached: the run is stopped first


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, f"the run ended early (rc {proc.returncode}): {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def _signal_when(path: Path, signum: int) -> tuple[threading.Thread, threading.Event]:
    """Send ``signum`` to this process once ``path`` exists (unless the returned event is set first)."""
    done = threading.Event()

    def watch() -> None:
        while not done.is_set() and not path.exists():
            time.sleep(0.05)
        if not done.is_set():
            signal.pthread_kill(threading.main_thread().ident, signum)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, done


def test_one_writer_per_run_folder_and_sigterm_leaves_a_resumable_run(tmp_path: Path, capsys) -> None:
    root = tmp_path / "runs"
    run = root / "quickstart" / "same"
    args = [*RUN, f"run.root={root}", "run.name=same"]
    first_args = [*args, "seed=1", LONG]
    first = subprocess.Popen([sys.executable, "-m", "metarec", "fit", *first_args], cwd=tmp_path,
                             env=cli_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(run / "checkpoints" / "last.ckpt", first)
        # a second fit with the same run.name is refused at once; so is resuming the run while it runs
        assert main(["fit", *args, "seed=2", "trainer.max_epochs=1"]) == 2
        busy = f"metarec: error: run {run} is in use by another metarec process (pid {first.pid} on "
        assert _one_line(capsys).startswith(busy)
        assert main(["fit", *first_args, "resume=last"]) == 2
        assert _one_line(capsys).startswith(busy)
        assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == 1  # untouched
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 143, err
    again = shlex.join(["metarec", "fit", *first_args, "resume=last"])
    assert err.splitlines() == [f"metarec: interrupted by SIGTERM; run {run} is resumable: {again}"]
    assert not (run / "metrics.json").exists()
    # resumed (with a smaller budget, which resume allows): it ends in its own folder
    epoch = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    assert main(["fit", *args, "seed=1", f"trainer.max_epochs={epoch + 2}", "resume=last"]) == 0
    assert (run / "metrics.json").is_file()
    RunLock.acquire(run).release()  # released on return


def test_ctrl_c_exits_130_with_one_line_and_a_resumable_run(tmp_path: Path, capsys) -> None:
    root = tmp_path / "runs"
    run = root / "quickstart" / "cc"
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under a background shell
    thread, done = _signal_when(run / "checkpoints" / "last.ckpt", signal.SIGINT)
    try:
        code = main(["fit", *RUN, f"run.root={root}", "run.name=cc", LONG])
    finally:
        done.set()
        thread.join()
    assert code == 130
    line = _one_line(capsys)
    assert line.startswith(f"metarec: interrupted by SIGINT; run {run} is resumable: metarec fit ")
    assert line.endswith(" resume=last")
    assert not (run / "metrics.json").exists() and (run / "checkpoints" / "last.ckpt").is_file()
    RunLock.acquire(run).release()  # the lock went with the interrupted call
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_sigterm_during_compare_exits_143_and_says_to_rerun_it(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", "--out", str(out), "--learners", "maml", "--seeds", "0", *RUN, LONG]
    thread, done = _signal_when(out / "runs" / "maml-s0" / "checkpoints" / "last.ckpt", signal.SIGTERM)
    try:
        code = main(argv)
    finally:
        done.set()
        thread.join()
    assert code == 143
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == ("metarec: interrupted by SIGTERM; finished runs are kept; to continue, run the same "
                       f"command again: {shlex.join(['metarec', *argv])}"), err
    assert "Traceback" not in "\n".join(err)
    assert not (out / "results.csv").exists()


@pytest.mark.parametrize("experiment", ["../outside", "/tmp/elsewhere", "a/../../b"])
def test_run_experiment_outside_run_root_is_refused(tmp_path: Path, capsys, experiment: str) -> None:
    root = tmp_path / "runs"
    assert main(["fit", *RUN, f"run.root={root}", f"run.experiment={experiment}"]) == 2
    assert "must be a relative folder inside run.root" in _one_line(capsys)
    assert not root.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
