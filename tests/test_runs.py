"""Run folders: unique, never clobbered, finished only when metrics.json exists."""

from __future__ import annotations

import json
import threading

import pytest

from metarec.errors import ConfigError, MetarecError
from metarec.runs import (
    LOCK_FILE, RunLock, atomic_write_text, check_run_location, finished_runs, is_finished, named_run_dir,
    new_run_dir, resume_target, write_final_metrics,
)


def test_concurrent_runs_with_the_same_label_get_distinct_folders(tmp_path):
    made: list = []
    lock = threading.Lock()

    def make():
        for _ in range(25):
            path, run_lock = new_run_dir(tmp_path, "exp", "maml-s0")
            run_lock.release()
            with lock:
                made.append(path)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 100 and len(set(made)) == 100
    assert all(p.is_dir() and p.parent == tmp_path / "exp" for p in made)


def test_a_run_is_finished_exactly_when_its_metrics_file_exists(tmp_path):
    run, lock = new_run_dir(tmp_path, "exp", "x")
    lock.release()
    (run / "metrics.csv").write_text("half-written")
    assert not is_finished(run) and finished_runs(tmp_path) == []
    write_final_metrics(run, {"learner": "x", "metrics": {"test/warm/mae": 0.5}})
    assert is_finished(run)
    assert json.loads((run / "metrics.json").read_text())["metrics"] == {"test/warm/mae": 0.5}
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


def test_named_runs_are_never_overwritten_once_finished_and_restart_when_not(tmp_path):
    run, lock = named_run_dir(tmp_path, "exp", "maml-s0")
    (run / "config.yaml").write_text("a: 1")
    (run / "partial").write_text("left by an interrupted run")
    lock.release()
    again, lock = named_run_dir(tmp_path, "exp", "maml-s0")  # unfinished: cleared and reused
    assert again == run and [p.name for p in again.iterdir()] == [LOCK_FILE]
    (again / "config.yaml").write_text("a: 1")
    write_final_metrics(again, {"learner": "maml", "metrics": {}})
    lock.release()
    with pytest.raises(MetarecError, match="already finished"):
        named_run_dir(tmp_path, "exp", "maml-s0")
    assert is_finished(run)


def test_a_folder_that_is_not_a_run_is_never_cleared(tmp_path):
    precious = tmp_path / "exp" / "notes"
    precious.mkdir(parents=True)
    (precious / "thesis.tex").write_text("keep me")
    with pytest.raises(MetarecError, match="not a metarec run folder"):
        named_run_dir(tmp_path, "exp", "notes")
    assert (precious / "thesis.tex").read_text() == "keep me"
    with pytest.raises(ConfigError, match="plain folder name"):
        named_run_dir(tmp_path, "exp", "../escape")


def test_processes_of_one_job_agree_on_the_run_folder(tmp_path, monkeypatch) -> None:
    """srun / torchrun start every process with the same command: rank 0 prepares the folder named
    after the job, the others find it and never create or clear one."""
    from metarec.config import compose
    from metarec.errors import MetarecError
    from metarec.runs import is_rank_zero, job_run_name, wait_for_run_dir
    from metarec.train import _run_dir

    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID",
                "SLURM_ARRAY_TASK_ID", "SLURM_NTASKS", "WORLD_SIZE", "METAREC_RUN_DIR"):
        monkeypatch.delenv(var, raising=False)
    assert is_rank_zero() and job_run_name("maml", 0) is None
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert job_run_name("maml", 2) is None  # a single-task job: fresh unique folders as usual
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert not is_rank_zero() and job_run_name("maml", 2) == "maml-s2-job77"
    cfg = compose(["seed=2", f"run.root={tmp_path}"])
    folder = tmp_path / "default" / "maml-s2-job77"
    with pytest.raises(MetarecError, match="did not prepare the run folder"):
        wait_for_run_dir(folder, timeout_s=0.3)
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("seed: 2\n")
    (folder / "checkpoints").mkdir()
    assert _run_dir(cfg, "maml", rank_zero=False) == (folder, None)  # found, never locked by rank 1
    assert (folder / "checkpoints").is_dir()  # found, not cleared
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    assert is_rank_zero() and job_run_name("maml", 2) == "maml-s2-job77-4"


def test_options_of_a_switched_off_feature_do_not_count_as_differences(tmp_path) -> None:
    from omegaconf import OmegaConf

    from metarec.config import compose
    from metarec.runs import config_difference

    saved = compose(["data.negatives.sampler=popularity", 'data.text.template="{title}: {genre}"'])
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    assert config_difference(tmp_path, compose([])) is None  # both features off
    assert config_difference(tmp_path, compose(["data.negatives.per_positive=2"]))[0] == "data.negatives.per_positive"
    on = compose(["data.text.enabled=true", 'data.text.template="{title}: {genre}"'])
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(on))
    assert config_difference(tmp_path, compose(["data.text.enabled=true"]))[0] == "data.text.template"


def test_a_run_folder_has_one_writer_at_a_time(tmp_path) -> None:
    """The lock is held for the run's life; a second claim is refused naming the holder; a lock file left
    by a process that died (flock is released by the OS) does not block."""
    import os

    from metarec.runs import claim_named_run

    run, lock = named_run_dir(tmp_path, "exp", "r")
    (run / "config.yaml").write_text("a: 1")
    with pytest.raises(MetarecError, match=rf"in use by another metarec process \(pid {os.getpid()} on "):
        named_run_dir(tmp_path, "exp", "r")
    with pytest.raises(MetarecError, match="in use"):
        RunLock.acquire(run, busy="wait")
    assert (run / "config.yaml").is_file()  # the refused claim changed nothing
    lock.release()
    lock.release()  # twice is harmless
    path, again = claim_named_run(tmp_path, "exp", "r")  # free again: claimed, kept as it is until opened
    assert path == run and (run / "config.yaml").is_file()
    again.release()
    (run / LOCK_FILE).write_text("999999 gone-host\n")  # the file of a dead holder, not locked by anyone
    RunLock.acquire(run).release()


def test_run_location_stays_inside_run_root() -> None:
    for experiment in ("../x", "/abs/path", "a/../../b", ".", ""):
        with pytest.raises(ConfigError, match="relative folder inside run.root"):
            check_run_location(experiment, None)
    for name in ("..", "a/b", ""):
        with pytest.raises(ConfigError, match="plain folder name"):
            check_run_location("exp", name)
    check_run_location("ablation/lr", "run-1")  # nested experiment folders are fine


def test_resume_last_picks_the_newest_resumable_run(tmp_path) -> None:
    """A newer run folder without a checkpoint (stopped early, or made by an older version on a config
    error) is not what ``resume=last`` continues."""
    import os

    from omegaconf import OmegaConf

    from metarec.config import compose

    cfg = compose([f"run.root={tmp_path}", "run.resume=last"])
    base = tmp_path / "default"
    older, newer = base / "20260101-000000-maml-s0-aaaaaa", base / "20260102-000000-maml-s0-bbbbbb"
    for i, run in enumerate((older, newer)):
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        os.utime(run, (1000 + i, 1000 + i))
    (older / "checkpoints").mkdir()
    (older / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert resume_target(cfg, "maml") == (older, older / "checkpoints" / "last.ckpt")
    (older / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(MetarecError, match="no unfinished maml run with seed 0 and a checkpoint"):
        resume_target(cfg, "maml")


def test_a_full_disk_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch) -> None:
    import errno
    import os

    import metarec.runs

    target = tmp_path / "metrics.json"
    target.write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(metarec.runs.os, "fsync", full)
    with pytest.raises(MetarecError, match=rf"^cannot write {target}: No space left on device$"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
