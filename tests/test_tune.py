"""``metarec tune``: search spaces, studies on the validation users only, resuming after a kill, and
``metarec compare --tuned``.

Tiny synthetic data, one or two epochs, two or three trials per study.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from cli_helpers import cli_env
from zoo_helpers import learner_options

from metarec.cli import main
from metarec.config import builtin_config_dir
from metarec.data.datamodule import ColdStartDataModule
from metarec.data.scenarios import VAL
from metarec.errors import ConfigError
from metarec.learners import MetaLearner
from metarec.tune import make_tune_spec, plan_study, tune
from metarec.tune_outputs import load_tuned, write_best
from metarec.tune_space import parse_param

TINY = ["experiment=quickstart", "data.params.n_users=200", "trainer.max_epochs=1"]


def states(out: Path, learner: str) -> list[tuple[int, str, dict]]:
    study = optuna.load_study(study_name=learner, storage=f"sqlite:///{out / 'study.db'}")
    return [(t.number, t.state.name, t.params) for t in study.trials]


# ----------------------------------------------------------------------------------------- search spaces
def test_every_learner_option_has_a_valid_search_space(tmp_path: Path) -> None:
    """Every learner option has a space, and every value it allows composes into a valid config of that
    learner; learners that are not trained have an empty one, except ``bias``, whose two shrinkages are
    chosen on the validation users (each trial one validation pass)."""
    from metarec.learners import LEARNERS

    for option, overrides in learner_options().items():
        model = [o for o in overrides if not o.startswith("learner=")]
        study = plan_study(make_tune_spec(tmp_path / "t", [option], 2, [*TINY, *model]), option)
        trained = LEARNERS.get(study.base.learner.name).factory.needs_training
        searched = trained or option == "bias"
        assert bool(study.params) == searched, f"{option}: trained learners (and bias) have a space, the others none"
        assert study.metric == "val/user_cold/mae"


def test_a_ranking_monitor_is_maximised_and_its_best_trial_is_the_highest(tmp_path: Path) -> None:
    """trainer.monitor=full_recall@10: the study maximises it and the best file names the highest trial."""
    out = tmp_path / "t"
    spec = make_tune_spec(out, ["global"], 2, [*TINY, "trainer.monitor=full_recall@10", "data.split.scenarios=[user_cold]"])
    study = plan_study(spec, "global")
    assert (study.metric, study.direction) == ("val/user_cold/full_recall@10", "maximize")
    tune(spec, echo=lambda line: None)
    values = {t.number: t.value for t in optuna.load_study(study_name="global", storage=f"sqlite:///{out / 'study.db'}").trials}
    best = yaml.safe_load((out / "best" / "global.yaml").read_text())
    assert best["metric"] == "val/user_cold/full_recall@10" and best["value"] == pytest.approx(max(values.values()))


@pytest.mark.parametrize("key, spec, fragment", [
    ("data.split.seed", {"type": "int", "low": 0, "high": 3}, "cannot be searched"),
    ("seed", {"type": "int", "low": 0, "high": 3}, "cannot be searched"),
    ("learner.lr", {"type": "float", "low": 0.0, "high": 1.0, "log": True}, "low > 0"),
    ("learner.lr", {"type": "float", "low": 1.0, "high": 0.1}, "low <= high"),
    ("learner.lr", {"type": "uniform", "low": 0.1, "high": 1.0}, "type one of"),
    ("learner.scope", {"type": "categorical", "choices": []}, "non-empty list"),
    ("learner.inner_steps", {"type": "int", "low": 1.5, "high": 3}, "an integer"),
    ("learner.lr", {"type": "float", "low": 0.1, "high": 1.0, "lg": True}, "unknown field 'lg'"),
])
def test_bad_search_space_entries_are_refused(key, spec, fragment) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_param("search/x.yaml", key, spec)


def test_a_config_path_folder_replaces_a_search_space_and_bad_values_are_caught_before_training(tmp_path) -> None:
    extra = tmp_path / "extra" / "search"
    extra.mkdir(parents=True)
    (extra / "global.yaml").write_text("params:\n  model.embed_dim: {type: categorical, choices: [8, nope]}\n")
    spec = make_tune_spec(tmp_path / "t", ["global"], 2, TINY, config_path=[str(tmp_path / "extra")])
    with pytest.raises(ConfigError, match=r"global.yaml: model.embed_dim=nope gives no valid config"):
        tune(spec)
    assert not (tmp_path / "t").exists(), "a refused call creates nothing"


def test_a_learner_without_a_validation_metric_cannot_be_tuned(tmp_path: Path) -> None:
    """itemknn ranks only (no validation MAE): a space for it is refused with one clear message."""
    extra = tmp_path / "extra" / "search"
    extra.mkdir(parents=True)
    (extra / "itemknn.yaml").write_text("params:\n  learner.neighbours: {type: int, low: 5, high: 50}\n")
    spec = make_tune_spec(tmp_path / "t", ["itemknn"], 1, TINY, config_path=[str(tmp_path / "extra")])
    with pytest.raises(ConfigError, match="logs no validation val/user_cold/mae, so it cannot be tuned"):
        tune(spec)
    assert [s for _, s, _ in states(tmp_path / "t", "itemknn")] == ["FAIL"]
    assert not (tmp_path / "t" / "best").exists()


def test_a_diverging_trial_is_pruned_and_counted(tmp_path: Path) -> None:
    extra = tmp_path / "extra" / "search"
    extra.mkdir(parents=True)
    (extra / "global.yaml").write_text("params:\n  learner.lr: {type: float, low: 1.0e+8, high: 1.0e+9, log: true}\n")
    out = tmp_path / "t"
    spec = make_tune_spec(out, ["global"], 1, [*TINY, "trainer.nonfinite=fail"], config_path=[str(tmp_path / "extra")])
    tune(spec)
    assert [s for _, s, _ in states(out, "global")] == ["PRUNED"]
    assert "non-finite training" in (out / "trials.csv").read_text()
    assert yaml.safe_load((out / "best" / "global.yaml").read_text())["overrides"] == []


def test_a_trials_data_module_holds_no_test_episodes(tmp_path: Path) -> None:
    from metarec.config import data_config
    from metarec.tune_trial import TestUsersRead, validation_only

    study = plan_study(make_tune_spec(tmp_path / "t", ["global"], 1, TINY), "global")
    dc = data_config(study.base.data)
    dc.manifest = None
    dm = ColdStartDataModule(dc)
    dm.setup()
    assert len(dm.split.episodes) > 1
    val = dm.split.episodes[VAL]
    validation_only(dm)
    assert list(dm.split.episodes) == [VAL] and dm.split.episodes[VAL] is val
    for ask in (dm.test_dataloader, lambda: dm.test_tasks("user_cold"), lambda: dm.for_support_size(1)):
        with pytest.raises(TestUsersRead):
            ask()
    assert len(dm.val_dataloader().dataset) == len(val)


def test_tune_refuses_ddp(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tune runs every trial in this one process"):
        plan_study(make_tune_spec(tmp_path / "t", ["global"], 1, [*TINY, "trainer=ddp_cpu"]), "global")


# ----------------------------------------------------------------------------------------- studies
def test_tune_scores_validation_users_only_and_extends_its_budget(tmp_path: Path, monkeypatch) -> None:
    """No trial ever builds a test loader, runs a test step or reads a test episode; only the validation
    episodes are evaluated. A second call with a larger budget runs only the missing trials."""
    built: list[str] = []
    tested: list[int] = []
    original = ColdStartDataModule.eval_dataset
    monkeypatch.setattr(ColdStartDataModule, "eval_dataset",
                        lambda self, scenario, tasks: built.append(scenario) or original(self, scenario, tasks))
    monkeypatch.setattr(ColdStartDataModule, "test_dataloader", lambda self: tested.append(1))
    monkeypatch.setattr(MetaLearner, "test_step", lambda self, *a, **k: tested.append(2))
    out = tmp_path / "t"
    lines: list[str] = []
    spec = make_tune_spec(out, ["global", "user_mean"], 2, [*TINY, "model.embed_dim=16"])
    tune(spec, echo=lines.append)
    assert built and set(built) == {VAL}, f"evaluated scenarios: {sorted(set(built))}"
    assert not tested, "a tuning trial tested"

    trials = states(out, "global")
    assert [(n, s) for n, s, _ in trials] == [(0, "COMPLETE"), (1, "COMPLETE")]
    assert all("model.embed_dim" not in p and "learner.lr" in p for _, _, p in trials), "an override fixes a key"
    for n, _, params in trials:
        cfg = yaml.safe_load((out / "trials" / "global" / f"trial-{n:03d}" / "config.yaml").read_text())
        assert cfg["model"]["embed_dim"] == 16 and cfg["learner"]["lr"] == pytest.approx(params["learner.lr"])
        assert not (out / "trials" / "global" / f"trial-{n:03d}" / "checkpoints").exists()
    assert not (tmp_path / "runs").exists() and not Path("runs").joinpath("trials").exists()

    best = yaml.safe_load((out / "best" / "global.yaml").read_text())
    values = {t.number: t.value for t in optuna.load_study(study_name="global", storage=f"sqlite:///{out / 'study.db'}").trials}
    assert best["trial"] == min(values, key=values.get) and best["value"] == pytest.approx(min(values.values()))
    assert best["metric"] == "val/user_cold/mae" and best["trials"] == 2 and best["seed"] == 0
    assert sorted(best["overrides"]) == sorted(f"{k}={v!r}" for k, v in trials[best["trial"]][2].items())
    user_mean = yaml.safe_load((out / "best" / "user_mean.yaml").read_text())
    assert user_mean["trials"] == 0 and user_mean["overrides"] == []
    rows = (out / "trials.csv").read_text().splitlines()
    assert rows[0].startswith("learner,trial,state,value,metric,duration_s,params") and len(rows) == 3
    assert "| global | 1 | complete |" in (out / "trials.md").read_text()
    assert sum(line.startswith("[") for line in lines) == 2

    lines.clear()  # the same call again: nothing to do; a larger budget: only the missing trial
    tune(make_tune_spec(out, ["global"], 2, [*TINY, "model.embed_dim=16"]), echo=lines.append)
    assert lines == ["global: 2 trials done before"]
    tune(make_tune_spec(out, ["global"], 3, [*TINY, "model.embed_dim=16"]), echo=lines.append)
    assert [s for _, s, _ in states(out, "global")] == ["COMPLETE"] * 3
    assert yaml.safe_load((out / "best" / "global.yaml").read_text())["trials"] == 3
    with pytest.raises(ConfigError, match="were made with model.embed_dim=16"):
        tune(make_tune_spec(out, ["global"], 3, [*TINY, "model.embed_dim=32"]))


def test_pruned_trials_count_in_the_budget(tmp_path: Path) -> None:
    """A pruner that stops every trial after its first epoch: the trial is PRUNED and counts towards
    --trials (the budget is spent, so the tuned file is written), which falls back to the defaults."""
    out = tmp_path / "t"
    spec = make_tune_spec(out, ["global"], 1, [*TINY, "trainer.max_epochs=2", "trainer.patience=0"])
    tune(spec, pruner=optuna.pruners.ThresholdPruner(upper=0.0))
    assert [s for _, s, _ in states(out, "global")] == ["PRUNED"]
    assert "pruned after epoch 0" in (out / "trials.csv").read_text()
    best = yaml.safe_load((out / "best" / "global.yaml").read_text())
    assert best["trials"] == 1 and best["value"] is None and best["overrides"] == []
    assert "none of the 1 trials" in (out / "best" / "global.yaml").read_text()


def test_implicit_feedback_is_tuned_on_the_validation_loss(tmp_path: Path) -> None:
    out = tmp_path / "t"
    tune(make_tune_spec(out, ["global"], 1, [*TINY, "data.negatives.per_positive=2"]))
    best = yaml.safe_load((out / "best" / "global.yaml").read_text())
    assert best["metric"] == "val/user_cold/loss" and 0 < best["value"] < 10
    assert (out / "trials" / "global" / "trial-000" / "logs" / "metrics.csv").is_file()


@pytest.mark.slow
def test_a_killed_tune_resumes_and_reruns_the_interrupted_trial(tmp_path: Path) -> None:
    """SIGKILL during the second trial; the same command again finishes the budget: the interrupted
    trial is marked failed and re-run with the same settings, finished trials are kept."""
    out = tmp_path / "t"
    empty = tmp_path / "no-data"
    empty.mkdir()
    env = cli_env(empty)
    cmd = [sys.executable, "-m", "metarec.cli", "tune", "--out", str(out), "--learners", "global", "--trials", "2",
           *TINY, "trainer.max_epochs=2", "trainer.patience=0"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if any(n == 1 and s == "RUNNING" and len(p) == 3 for n, s, p in states(out, "global")):
                    break  # the second trial has its settings and is training
            except Exception:  # the study does not exist yet
                pass
            time.sleep(0.05)
        assert proc.poll() is None, f"tune ended before it could be killed:\n{proc.communicate()}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.communicate(timeout=60)
    killed = states(out, "global")
    assert [(n, s) for n, s, _ in killed] == [(0, "COMPLETE"), (1, "RUNNING")]
    assert not (out / "best" / "global.yaml").exists(), "no tuned file before the budget is spent"

    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    after = states(out, "global")
    assert [s for _, s, _ in after] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert after[0][2] == killed[0][2], "the finished trial is kept"
    assert after[2][2] == killed[1][2], "the interrupted trial is re-run first, with its settings"
    assert "re-run of interrupted trial 1" in (out / "trials.md").read_text()
    assert yaml.safe_load((out / "best" / "global.yaml").read_text())["trials"] == 2


# ----------------------------------------------------------------------------------------- compare --tuned
def test_compare_tuned_runs_each_learner_with_its_best_settings(tmp_path: Path, capsys) -> None:
    tuned = tmp_path / "t"
    record = {"learner": "global", "metric": "val/user_cold/mae", "value": 0.8, "trial": 0, "trials": 1, "seed": 0,
              "split_hash": "x", "base_overrides": [], "overrides": ["learner.lr=0.0123", "model.embed_dim=8"]}
    write_best(tuned, "global", record)
    assert load_tuned(tuned, ["global"]) == {"global": record["overrides"]}
    out = tmp_path / "c"
    args = ["compare", "--out", str(out), "--tuned", str(tuned), "--seeds", "0", "--support-sizes", "1", *TINY,
            "trainer.enable_progress_bar=false"]
    assert main(args) == 0  # the learners default to the tuned ones
    cfg = yaml.safe_load((out / "runs" / "global-s0" / "config.yaml").read_text())
    assert cfg["learner"]["lr"] == 0.0123 and cfg["model"]["embed_dim"] == 8
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["global-s0"]
    # a variant starts from its learner's tuned settings; its own settings win
    assert main([*args, "--learners", "global@lr=0.5"]) == 0
    cfg = yaml.safe_load((out / "runs" / "global@lr=0.5-s0" / "config.yaml").read_text())
    assert cfg["learner"]["lr"] == 0.5 and cfg["model"]["embed_dim"] == 8
    capsys.readouterr()
    assert main([*args[:4], str(tuned), "--learners", "global", "user_mean", *args[5:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no tuned config for learner 'user_mean'" in err[0]


def test_tune_user_errors_are_one_line_and_create_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "t"
    for args, fragment in [
        (["--learners", "global", "learner.lr=0.1"], "tune sets learner itself"),
        (["--learners", "nope"], "unknown learner 'nope'"),
        (["--learners", "global", "--trials", "0"], "--trials must be an integer >= 1"),
        (["--learners", "global", "seed=x"], "seed must be an integer"),
    ]:
        assert main(["tune", "--out", str(out), *args, *TINY]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("metarec: error: ") and fragment in err[0], err
    assert not out.exists()


def test_search_files_ship_with_the_package() -> None:
    learners = {p.stem for p in (builtin_config_dir() / "learner").glob("*.yaml")}
    assert {p.stem for p in (builtin_config_dir() / "search").glob("*.yaml")} == learners
