"""Run folders: unique, never clobbered, finished only when metrics.json exists."""

from __future__ import annotations

import json
import threading

import pytest

from metarec.errors import MetarecError
from metarec.runs import finished_runs, is_finished, named_run_dir, new_run_dir, write_final_metrics


def test_concurrent_runs_with_the_same_label_get_distinct_folders(tmp_path):
    made: list = []
    lock = threading.Lock()

    def make():
        for _ in range(25):
            path = new_run_dir(tmp_path, "exp", "maml-s0")
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
    run = new_run_dir(tmp_path, "exp", "x")
    (run / "metrics.csv").write_text("half-written")
    assert not is_finished(run) and finished_runs(tmp_path) == []
    write_final_metrics(run, {"learner": "x", "metrics": {"test/warm/mae": 0.5}})
    assert is_finished(run)
    assert json.loads((run / "metrics.json").read_text())["metrics"] == {"test/warm/mae": 0.5}
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


def test_named_runs_are_never_overwritten_once_finished_and_restart_when_not(tmp_path):
    run = named_run_dir(tmp_path, "exp", "maml-s0")
    (run / "config.yaml").write_text("a: 1")
    (run / "partial").write_text("left by an interrupted run")
    again = named_run_dir(tmp_path, "exp", "maml-s0")  # unfinished: cleared and reused
    assert again == run and list(again.iterdir()) == []
    (again / "config.yaml").write_text("a: 1")
    write_final_metrics(again, {"learner": "maml", "metrics": {}})
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
    with pytest.raises(MetarecError, match="plain folder name"):
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
    assert _run_dir(cfg, "maml", rank_zero=False) == folder
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
