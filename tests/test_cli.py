"""End-to-end tests of the ``metarec`` command line, run in a subprocess like a user would.

Every run uses a tiny budget. Bad input must give exit code 2 and exactly one stderr line
``metarec: error: ...`` without a traceback, and must never leave a finished-looking run
(``metrics.json``) behind.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_helpers import cli_env, run_cli, wandb_offline_env

from metarec.wandb_records import offline_records as _wandb_records

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "metarec" / "configs"
SCENARIOS = ("warm", "user_cold", "item_cold", "user_item_cold")
METRICS = ("mae", "rmse", "ndcg@1", "ndcg@3")
TINY = ["data.params.n_users=200", "trainer.max_epochs=2", "trainer.enable_progress_bar=false"]
TIMEOUT_S = 300


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    return cli_env(data_dir, **extra)


def metarec(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m metarec.cli ARGS`` in ``cwd``; ``METAREC_DATA_DIR`` defaults to an empty folder."""
    if env is None:
        empty = cwd / "no-data"
        empty.mkdir(exist_ok=True)
        env = _env(empty)
    return run_cli(*args, cwd=cwd, env=env)


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, one stderr line ``metarec: error: ...`` containing ``fragments``, no traceback."""
    detail = f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 2, detail
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, detail
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, detail
    line = lines[0]
    assert line.startswith("metarec: error: "), detail
    for f in fragments:
        assert f in line, f"{f!r} not in {line!r}"
    return line


def assert_no_finished_run(root: Path) -> None:
    finished = list(root.rglob("metrics.json")) if root.exists() else []
    assert finished == [], f"a failed run left {finished}"


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("config.yaml"))


# ---------------------------------------------------------------------------------------------
# Help and printing the config


def test_fit_help_lists_every_group_and_option(tmp_path: Path) -> None:
    proc = metarec("fit", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for group in ("data", "model", "learner", "trainer", "logger", "experiment"):
        options = sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))
        assert options, group
        row = [line for line in lines if line.split()[:1] == [group]]
        assert len(row) == 1, f"no line for group {group!r} in:\n{proc.stdout}"
        listed = [o.strip() for o in row[0].split(None, 1)[1].split(",")]
        assert listed == options, (group, row[0])
    assert "--print-config" in proc.stdout


def test_print_config_is_typed_yaml(tmp_path: Path) -> None:
    proc = metarec("fit", "--print-config", "learner.inner_lr=0.05", "data.split.support_size=null",
                   "learner=maml", "seed=4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["learner"]["inner_lr"] == 0.05 and cfg["learner"]["name"] == "maml"
    assert cfg["data"]["split"]["support_size"] is None
    assert cfg["seed"] == 4
    assert not any(tmp_path.rglob("config.yaml"))  # printing runs nothing


# ---------------------------------------------------------------------------------------------
# Bad input: exit 2, one line, no traceback, no finished run


def test_unknown_config_key(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    proc = metarec("fit", "trainer.max_epoch=2", f"run.root={root}", cwd=tmp_path)
    assert_user_error(proc, "trainer.max_epoch", "max_epochs")
    assert_no_finished_run(root)
    proc = metarec("fit", "learner.nope=1", f"run.root={root}", cwd=tmp_path)
    assert_user_error(proc, "learner.nope")
    assert not root.exists()  # config errors are found before any run folder is made


def test_unknown_group_option(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    proc = metarec("fit", "learner=no_such_learner", f"run.root={root}", cwd=tmp_path)
    available = ", ".join(sorted(p.stem for p in (CONFIGS / "learner").glob("*.yaml")))
    assert_user_error(proc, "learner", "'no_such_learner'", available)
    assert not root.exists()


def test_malformed_argument(tmp_path: Path) -> None:
    proc = metarec("fit", "learner", cwd=tmp_path)
    assert_user_error(proc, "'learner'", "key=value")


def test_unparsable_value(tmp_path: Path) -> None:
    proc = metarec("fit", "learner.inner_lr=[1,2", cwd=tmp_path)
    assert_user_error(proc, "learner.inner_lr")


def test_missing_ml100k_files_without_download(tmp_path: Path) -> None:
    data = tmp_path / "empty"
    data.mkdir()
    root = tmp_path / "runs"
    proc = metarec("fit", "data=movielens100k", f"data.root={data}", "data.params.download=false",
                   f"run.root={root}", cwd=tmp_path)
    line = assert_user_error(proc, str(data / "ml-100k"), "u.data", "u.user", "u.item")
    assert "download" in line
    assert_no_finished_run(root)
    assert not (data / "ml-100k" / "u.data").exists()


def _copy_ml100k(src_root: Path, dst_root: Path) -> Path:
    dst = dst_root / "ml-100k"
    dst.mkdir(parents=True)
    for name in ("u.data", "u.user", "u.item", "u.genre", "u.occupation"):
        if (src_root / "ml-100k" / name).is_file():
            shutil.copyfile(src_root / "ml-100k" / name, dst / name)
    return dst


def _replace_line(path: Path, lineno: int, edit) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[lineno - 1] = edit(lines[lineno - 1])
    path.write_bytes(b"\n".join(lines))


@pytest.mark.realdata
def test_malformed_u_data_line(ml100k_root: Path, tmp_path: Path) -> None:
    folder = _copy_ml100k(ml100k_root, tmp_path / "data")
    # line 1234: the item id is not a number
    _replace_line(folder / "u.data", 1234, lambda line: b"\t".join([line.split(b"\t")[0], b"x7", *line.split(b"\t")[2:]]))
    root = tmp_path / "runs"
    proc = metarec("fit", "data=movielens100k", f"data.root={folder.parent}", "data.params.download=false",
                   "trainer.max_epochs=1", f"run.root={root}", cwd=tmp_path)
    assert_user_error(proc, str(folder / "u.data"), "line 1234")
    assert_no_finished_run(root)


@pytest.mark.realdata
def test_u_data_line_with_too_few_fields(ml100k_root: Path, tmp_path: Path) -> None:
    folder = _copy_ml100k(ml100k_root, tmp_path / "data")
    _replace_line(folder / "u.data", 77, lambda line: b"196 242 3 881250949")  # spaces, not tabs
    root = tmp_path / "runs"
    proc = metarec("fit", "data=movielens100k", f"data.root={folder.parent}", "data.params.download=false",
                   f"run.root={root}", cwd=tmp_path)
    assert_user_error(proc, "u.data", "line 77")
    assert_no_finished_run(root)


@pytest.mark.realdata
def test_rating_out_of_range(ml100k_root: Path, tmp_path: Path) -> None:
    folder = _copy_ml100k(ml100k_root, tmp_path / "data")

    def seven(line: bytes) -> bytes:
        f = line.split(b"\t")
        f[2] = b"7"
        return b"\t".join(f)

    _replace_line(folder / "u.data", 500, seven)
    root = tmp_path / "runs"
    proc = metarec("fit", "data=movielens100k", f"data.root={folder.parent}", "data.params.download=false",
                   f"run.root={root}", cwd=tmp_path)
    assert_user_error(proc, str(folder / "u.data"), "line 500", "7", "1..5")
    assert_no_finished_run(root)


def test_min_ratings_below_query_plus_support(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    proc = metarec("fit", *TINY, "data.split.min_ratings=5", "data.split.query_size=10", f"run.root={root}",
                   cwd=tmp_path)
    assert_user_error(proc, "data.split.min_ratings", "query_size")
    assert_no_finished_run(root)


def test_empty_scenario(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    proc = metarec("fit", *TINY, "data.split.new_item_fraction=0.0", f"run.root={root}", cwd=tmp_path)
    assert_user_error(proc, "'item_cold'", "empty")
    assert not root.exists()  # data errors too are found before any run folder is made


def test_trainer_settings_lightning_rejects(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    proc = metarec("fit", *TINY, "trainer.limit_val_batches=0.001", f"run.root={root}", cwd=tmp_path)
    assert_user_error(proc, "Lightning rejected the trainer settings", "limit_val_batches")
    assert run_dirs(root) == [] and not any(root.rglob(".lock"))  # the folder made for it is removed again


def test_bad_negative_sampling_option(tmp_path: Path) -> None:
    proc = metarec("fit", *TINY, "data.negatives.sampler=zipf", cwd=tmp_path)
    assert_user_error(proc, "data.negatives.sampler must be one of uniform, popularity")


# In-process (no interpreter start-up): the command line's own checks


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("metarec: error: "), err
    return err.strip()


def test_recommend_says_what_is_wrong_with_its_paths(tmp_path: Path, capsys) -> None:
    from metarec.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "metrics.json").write_text("{}")
    ratings = tmp_path / "r.csv"
    ratings.write_text("item,rating\n1,5\n")
    assert main(["recommend", "--run", str(run / "metrics.json"), "--ratings", str(ratings)]) == 2
    assert _one_error_line(capsys) == (f"metarec: error: --run {run / 'metrics.json'} is a file, not a run folder; "
                                       f"give the folder holding metrics.json ({run})")
    assert main(["recommend", "--run", str(run), "--ratings", str(tmp_path)]) == 2
    assert _one_error_line(capsys) == (f"metarec: error: ratings file {tmp_path} is a directory; give the CSV "
                                       "file of the user's ratings")


def test_warnings_never_come_before_the_one_error_line(monkeypatch, capsys) -> None:
    """Library warnings (pandas, torch) raised on the way to a user error are dropped; on success they
    are shown when the command ends."""
    import warnings

    import metarec.config
    from metarec.cli import main
    from metarec.errors import ConfigError

    compose = metarec.config.compose

    def noisy(overrides, *args, **kwargs):
        warnings.warn("DtypeWarning: Columns (3) have mixed types", UserWarning)
        if "seed=bad" in overrides:
            raise ConfigError("bad value for seed")
        return compose(overrides, *args, **kwargs)

    monkeypatch.setattr(metarec.config, "compose", noisy)
    with warnings.catch_warnings(record=True) as shown:  # what reaches the user (stderr outside pytest)
        warnings.simplefilter("always")
        assert main(["fit", "seed=bad"]) == 2
    assert _one_error_line(capsys) == "metarec: error: bad value for seed"
    assert shown == []
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        assert main(["fit", "--print-config", "seed=1"]) == 0
    assert [str(w.message) for w in shown] == ["DtypeWarning: Columns (3) have mixed types"]


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_the_run_resumable(tmp_path: Path, monkeypatch,
                                                                               capsys) -> None:
    """``metrics.json`` cannot be written (ENOSPC): one line naming it, the run stays unfinished (no
    half-written file, no temp file), its lock is released and ``resume=last`` finishes it."""
    import builtins
    import errno
    import os

    import metarec.runs
    from metarec.cli import main

    root = tmp_path / "runs"
    args = ["fit", *TINY, f"run.root={root}", "run.name=full"]
    run = root / "default" / "full"

    def open_on_a_full_disk(file, mode="r", *a, **k):
        f = builtins.open(file, mode, *a, **k)
        if ".metrics.json." in str(file) and "w" in mode:
            f.write('{"half": ')
            f.flush()

            def write(_text):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            f.write = write
        return f

    monkeypatch.setattr(metarec.runs, "open", open_on_a_full_disk, raising=False)
    assert main(args) == 2
    assert _one_error_line(capsys) == f"metarec: error: cannot write {run / 'metrics.json'}: No space left on device"
    assert not (run / "metrics.json").exists() and not list(run.glob(".*.tmp"))
    monkeypatch.undo()
    assert main([*args, "resume=last"]) == 0
    assert (run / "metrics.json").is_file()


def test_report_without_finished_runs(tmp_path: Path) -> None:
    (tmp_path / "runs" / "default" / "half-done").mkdir(parents=True)
    assert_user_error(metarec("report", str(tmp_path / "runs"), cwd=tmp_path), "no finished run")
    assert_user_error(metarec("report", str(tmp_path / "missing"), cwd=tmp_path), "does not exist")


# ---------------------------------------------------------------------------------------------
# End to end on synthetic data


LEARNERS = ("maml", "global", "item_mean")
TRAINED = {"maml": True, "global": True, "item_mean": False}


@pytest.fixture(scope="module")
def synthetic_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """One tiny ``metarec fit`` per learner, run side by side, all under the same run root."""
    cwd = tmp_path_factory.mktemp("e2e")
    root = cwd / "runs"
    (cwd / "no-data").mkdir()
    procs = {
        learner: subprocess.Popen(
            [sys.executable, "-m", "metarec.cli", "fit", f"learner={learner}", *TINY, f"run.root={root}"],
            cwd=cwd, env=_env(cwd / "no-data"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for learner in LEARNERS
    }
    out = {}
    for learner, p in procs.items():
        stdout, stderr = p.communicate(timeout=TIMEOUT_S)
        assert p.returncode == 0, f"{learner}: rc={p.returncode}\n{stdout}\n{stderr}"
        assert "Traceback" not in stderr, stderr
        assert "run finished:" in stdout
        out[learner] = stdout
    dirs = {}
    for d in run_dirs(root):
        learner = yaml.safe_load((d / "config.yaml").read_text())["learner"]["name"]
        assert learner not in dirs
        dirs[learner] = d
    assert set(dirs) == set(LEARNERS)
    for learner, stdout in out.items():
        assert f"| {learner} | 1 |" in stdout  # fit prints the run's table
    return root, dirs


def _check_metrics(metrics: dict[str, Any]) -> None:
    for s in SCENARIOS:
        for m in METRICS:
            key = f"test/{s}/{m}"
            assert key in metrics, key
            assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), (key, metrics[key])
    for s in SCENARIOS:
        assert metrics[f"test/{s}/rmse"] >= metrics[f"test/{s}/mae"] >= 0
        assert 0 <= metrics[f"test/{s}/ndcg@1"] <= 1 and 0 <= metrics[f"test/{s}/ndcg@3"] <= 1


@pytest.mark.parametrize("learner", LEARNERS)
def test_fit_run_folder(synthetic_runs, learner: str) -> None:
    root, dirs = synthetic_runs
    d = dirs[learner]
    assert d.parent == root / "default"
    for name in ("config.yaml", "split_manifest.json", "metrics.json", "metrics.csv"):
        assert (d / name).is_file(), name
    assert not list(d.glob(".*.tmp"))  # atomic writes leave no temporary files

    cfg = yaml.safe_load((d / "config.yaml").read_text())
    assert cfg["learner"]["name"] == learner
    assert cfg["data"]["params"]["n_users"] == 200 and cfg["trainer"]["max_epochs"] == 2
    assert cfg["run"]["root"] == str(root)

    record = json.loads((d / "metrics.json").read_text())
    assert record["learner"] == learner and record["data"] == "synthetic" and record["seed"] == 0
    assert record["non_finite_metrics"] == []
    _check_metrics(record["metrics"])
    manifest = json.loads((d / "split_manifest.json").read_text())
    assert record["split_hash"] == manifest["content_hash"]

    with open(d / "metrics.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["metric", "value"]
    assert {k: float(v) for k, v in rows[1:]} == pytest.approx(record["metrics"])

    ckpts = sorted(p.name for p in (d / "checkpoints").glob("*.ckpt")) if (d / "checkpoints").exists() else []
    if TRAINED[learner]:
        assert "last.ckpt" in ckpts and any(c.startswith("best-") for c in ckpts), ckpts
        assert record["best_checkpoint"] and (d / record["best_checkpoint"]).is_file()
        assert 1 <= record["epochs"] <= 2
        assert math.isfinite(record["metrics"]["val/user_cold/mae"])
    else:
        assert ckpts == [] and record["best_checkpoint"] is None and record["epochs"] == 0


def test_runs_share_the_split(synthetic_runs) -> None:
    _, dirs = synthetic_runs
    hashes = {json.loads((d / "split_manifest.json").read_text())["content_hash"] for d in dirs.values()}
    assert len(hashes) == 1
    manifests = [json.loads((d / "split_manifest.json").read_text()) for d in dirs.values()]
    assert all(m["episodes"] == manifests[0]["episodes"] for m in manifests)


def test_report_table(synthetic_runs, tmp_path: Path) -> None:
    root, dirs = synthetic_runs
    proc = metarec("report", str(root), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    header = lines[0]
    for s in SCENARIOS:
        assert f"{s} MAE" in header and f"{s} RMSE" in header and f"{s} ndcg@3" in header
    rows = {line.split("|")[1].strip(): line for line in lines[2:]}
    assert set(rows) == set(LEARNERS)
    for learner, d in dirs.items():
        mae = json.loads((d / "metrics.json").read_text())["metrics"]["test/warm/mae"]
        cells = [c.strip() for c in rows[learner].strip("|").split("|")]
        assert cells[1] == "1"  # one run each
        assert cells[header.strip("|").split("|").index(" warm MAE ")] == f"{mae:.4f}"
    # a single run folder works too
    proc = metarec("report", str(dirs["maml"]), cwd=tmp_path)
    assert proc.returncode == 0 and "| maml | 1 |" in proc.stdout and "global" not in proc.stdout


# ---------------------------------------------------------------------------------------------
# End to end on the real MovieLens 100K


@pytest.mark.realdata
def test_fit_movielens100k(ml100k_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    proc = metarec(
        "fit", "data=movielens100k", "learner=maml", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "data.params.download=false", f"run.root={root}", cwd=tmp_path, env=_env(ml100k_root),
    )
    assert proc.returncode == 0, proc.stderr
    (d,) = run_dirs(root)
    record = json.loads((d / "metrics.json").read_text())
    assert record["data"] == "movielens100k" and record["learner"] == "maml" and record["epochs"] == 1
    assert record["non_finite_metrics"] == []
    _check_metrics(record["metrics"])
    assert record["split_stats"]["items"] == 1682


# ---------------------------------------------------------------------------------------------
# Weights & Biases, offline, without an account


def _logged_values(run_dir: Path) -> dict[str, float]:
    """Every scalar in the offline run's history and summary (``wandb-summary.json`` when written)."""
    values: dict[str, float] = {}
    summary_json = run_dir / "files" / "wandb-summary.json"
    if summary_json.is_file():
        values.update({k: v for k, v in json.loads(summary_json.read_text()).items() if isinstance(v, float)})
    (log,) = run_dir.glob("run-*.wandb")
    for record in _wandb_records(log):
        kind = record.WhichOneof("record_type")
        items = record.history.item if kind == "history" else record.summary.update if kind == "summary" else []
        for item in items:
            key = item.key or "/".join(item.nested_key)
            try:
                value = json.loads(item.value_json)
            except ValueError:
                continue
            if isinstance(value, (int, float)):
                values[key] = float(value)
    return values


def test_wandb_offline(tmp_path: Path) -> None:
    wandb_home = tmp_path / "wandb-home"
    (tmp_path / "no-data").mkdir()
    env = _env(tmp_path / "no-data", **wandb_offline_env(wandb_home))
    env.pop("WANDB_API_KEY", None)
    root = tmp_path / "runs"
    proc = metarec("fit", "logger=wandb", "learner=global", "data.params.n_users=200", "trainer.max_epochs=1",
                   "trainer.enable_progress_bar=false", f"run.root={root}", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    (d,) = run_dirs(root)
    record = json.loads((d / "metrics.json").read_text())
    offline = sorted((d / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, list((d / "wandb").iterdir()) if (d / "wandb").exists() else "no wandb folder"
    logged = _logged_values(offline[0])
    for key in ("test/warm/mae", "test/user_item_cold/ndcg@3"):
        assert key in logged, sorted(logged)
        assert logged[key] == pytest.approx(record["metrics"][key], rel=1e-6)
    assert not (d / "logs" / "metrics.csv").exists()  # the CSV logger was not used


def test_wandb_two_fits_in_one_process(tmp_path: Path) -> None:
    """Each fit() gets its own W&B run (WandbLogger would otherwise reuse the first, still-active one)."""
    wandb_home = tmp_path / "wandb-home"
    (tmp_path / "no-data").mkdir()
    env = _env(tmp_path / "no-data", **wandb_offline_env(wandb_home))
    root = tmp_path / "runs"
    common = ["fit", "logger=wandb", "learner=item_mean", "data.params.n_users=200",
              "trainer.enable_progress_bar=false", f"run.root={root}"]
    code = (
        "import sys\nfrom metarec.cli import main\n"
        f"sys.exit(main({[*common, 'seed=0']!r}) or main({[*common, 'seed=1']!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    dirs = run_dirs(root)
    assert len(dirs) == 2
    for d in dirs:
        offline = sorted((d / "wandb").glob("offline-run-*"))
        assert len(offline) == 1, d
        record = json.loads((d / "metrics.json").read_text())
        assert _logged_values(offline[0])["test/warm/mae"] == pytest.approx(record["metrics"]["test/warm/mae"])
