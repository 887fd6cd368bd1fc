"""Where W&B runs land and what they hold (``metarec.wandb_logging``), read back from the offline run files.

W&B 0.31 writes no ``config.yaml`` or ``wandb-summary.json`` offline: everything is in the run's
``run-<id>.wandb`` log of protobuf records, read here with ``wandb.proto``. One tiny comparison (two runs,
one a variant) is run once for the module; the rest runs in-process without training.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from cli_helpers import cli_env, run_cli, wandb_offline_env

from metarec.errors import ConfigError
from metarec.wandb_records import offline_records as wandb_records

LEARNERS = ("item_mean", "global@lr=0.01")  # a baseline (not trained) and a trained variant
TINY = ["data.params.n_users=200", "trainer.max_epochs=2", "trainer.enable_progress_bar=false"]


# ------------------------------------------------------------------------------- offline run files
class OfflineRun:
    """What one offline W&B run folder recorded: the run (group, job_type, tags), its metric definitions,
    history, final summary, config and artifacts."""

    def __init__(self, folder: Path) -> None:
        (log,) = folder.glob("run-*.wandb")
        self.folder = folder
        self.run = None
        self.metrics: dict[str, object] = {}
        self.history: dict[str, list] = {}
        self.summary: dict[str, object] = {}
        self.config: dict[tuple, object] = {}
        self.artifacts: list = []
        for r in wandb_records(log):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                self.run = r.run
            elif kind == "metric" and r.metric.name:
                self.metrics[r.metric.name] = r.metric
            elif kind == "history":
                for item in r.history.item:
                    self.history.setdefault("/".join(item.nested_key) or item.key, []).append(json.loads(item.value_json))
            elif kind == "summary":
                for item in r.summary.update:
                    self.summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
            elif kind == "config":
                for item in r.config.update:
                    self.config[tuple(item.nested_key) or (item.key,)] = json.loads(item.value_json)
            elif kind == "artifact":
                self.artifacts.append(r.artifact)
        assert self.run is not None, folder

    @property
    def tags(self) -> list[str]:
        return list(self.run.tags)

    def artifact(self, type_: str):
        found = [a for a in self.artifacts if a.type == type_]
        assert len(found) == 1, [(a.type, a.name) for a in self.artifacts]
        return found[0]


def offline_run(folder: Path) -> OfflineRun:
    runs = sorted((folder / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    return OfflineRun(runs[0])


def finished_offline_run(folder: Path, polls: int = 120) -> OfflineRun:
    """The offline run of ``folder`` once W&B's service has written its last record (``exit``): in this
    process, ``wandb.finish()`` may return before the service has flushed the file."""
    import time

    for _ in range(polls):
        (log,) = (p for f in (folder / "wandb").glob("offline-run-*") for p in f.glob("run-*.wandb"))
        if any(r.WhichOneof("record_type") == "exit" for r in wandb_records(log)):
            break
        time.sleep(0.5)
    return offline_run(folder)


# ------------------------------------------------------------------------------------ the comparison
@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wandb")
    (tmp / "no-data").mkdir()
    env = cli_env(tmp / "no-data", MPLCONFIGDIR=str(tmp / "mpl"), **wandb_offline_env(tmp / "wandb-home"))
    env.pop("WANDB_API_KEY", None)
    out = tmp / "paper-grid"
    proc = run_cli("compare", "--out", str(out), "--learners", *LEARNERS, "--seeds", "0", "--support-sizes", "1", "3",
                   "logger=wandb", "logger.artifacts=true", "logger.tags=[mine]", *TINY, cwd=tmp, env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    runs = {l: offline_run(out / "runs" / f"{l}-s0") for l in LEARNERS}
    records = {l: json.loads((out / "runs" / f"{l}-s0" / "metrics.json").read_text()) for l in LEARNERS}
    (summary,) = [OfflineRun(p) for p in sorted((out / "wandb").glob("offline-run-*"))]
    return out, proc, runs, records, summary


def test_one_group_job_types_and_tags(comparison) -> None:
    out, _, runs, _, summary = comparison
    assert {r.run.run_group for r in [*runs.values(), summary]} == {out.name}  # the --out folder names the group
    assert {l: r.run.job_type for l, r in runs.items()} == {l: l for l in LEARNERS}
    assert summary.run.job_type == "compare"
    scenarios = [f"scenario:{s}" for s in ("warm", "user_cold", "item_cold", "user_item_cold")]
    for label, r in runs.items():
        option = label.split("@")[0]
        assert r.tags[:3] == [f"learner:{option}", "data:synthetic", "model:melu"], r.tags
        assert set(scenarios) <= set(r.tags) and "mine" in r.tags, r.tags
        assert (f"variant:{label}" in r.tags) == ("@" in label), r.tags
    assert {"compare", "learner:item_mean", "learner:global", "variant:global@lr=0.01", "mine", *scenarios} <= set(summary.tags)
    assert summary.run.display_name == f"compare-{out.name}"


def test_validation_summaries_hold_the_best_value(comparison) -> None:
    _, _, runs, records, _ = comparison
    r, record = runs["global@lr=0.01"], records["global@lr=0.01"]
    monitor = json.loads(r.artifact("model").metadata)["monitor"]
    for key, op, pick in ((monitor, "min", min), ("val/user_cold/ndcg@3", "max", max)):
        assert r.metrics[key].summary.min == (op == "min") and r.metrics[key].summary.max == (op == "max"), key
        assert r.metrics[key].step_metric == "trainer/global_step"  # still plotted against Lightning's step
        values = r.history[key]
        assert len(values) == 2  # one per epoch
        assert r.summary[key] == {op: pytest.approx(pick(values))}, (key, r.summary[key], values)
    assert r.summary[monitor]["min"] == pytest.approx(record["metrics"][monitor])  # the best checkpoint's score
    assert "train/loss" not in r.metrics  # other metrics keep W&B's last value
    assert r.summary["test/user_cold/mae"] == pytest.approx(record["metrics"]["test/user_cold/mae"])


def test_artifacts(comparison) -> None:
    out, _, runs, records, summary = comparison
    manifest = json.loads((out / "split_manifest.json").read_text())
    splits = {r.artifact("split").name for r in [*runs.values(), summary]}
    assert splits == {f"split-{manifest['content_hash'][:16]}"}  # one split, shared by every run
    trained = runs["global@lr=0.01"].artifact("model")
    meta = json.loads(trained.metadata)
    record = records["global@lr=0.01"]
    assert "best" in trained.aliases and meta["file"] == record["best_checkpoint"]
    assert meta["score"] == pytest.approx(record["metrics"][meta["monitor"]])
    assert [c.path for c in trained.manifest.contents] == [Path(record["best_checkpoint"]).name]
    assert not [a for a in runs["item_mean"].artifacts if a.type == "model"]  # not trained: no checkpoint
    results = summary.artifact("results")
    assert sorted(c.path for c in results.manifest.contents) == ["results.csv", "results.md"]


def test_support_size_curves_are_wandb_line_plots(comparison) -> None:
    out, _, _, _, summary = comparison
    charts = {key[2]: value for key, value in summary.config.items() if key[:2] == ("_wandb", "visualize")}
    assert "curves/mae/user_cold" in charts, sorted(charts)
    chart = charts["curves/mae/user_cold"]
    assert chart["panel_config"]["panelDefId"] == "wandb/line/v0"
    assert chart["panel_config"]["fieldSettings"] == {"x": "support_size", "y": "mae", "stroke": "learner"}
    tables = list((summary.folder / "files" / "media" / "table" / "curves" / "mae").glob("user_cold_table_*.table.json"))
    assert len(tables) == 1, list((summary.folder / "files" / "media").rglob("*"))
    table = json.loads(tables[0].read_text())
    rows = {(row[0], row[1]): row[2] for row in table["data"]}
    csv_rows = (out / "results.csv").read_text().splitlines()
    for (learner, k), mae in rows.items():  # one seed: the curve's value is the run's own
        line = f"{learner},0,{k},user_cold,mae,"
        (match,) = [r for r in csv_rows if r.startswith(line)]
        assert float(match[len(line):].split(",")[0]) == pytest.approx(mae)
    assert {k for _, k in rows} <= {1, 3} and {l for l, _ in rows} == set(LEARNERS)
    assert list((summary.folder / "files" / "media" / "images").glob("curve_user_cold_*.png"))  # the static plots too


def test_plain_progress_lines_carry_an_eta(comparison) -> None:
    _, proc, _, _, _ = comparison
    lines = re.findall(r"^\[(\d)/2\] (\S+)\s+seed 0: (.+)$", proc.stdout, re.M)
    assert [(i, l) for i, l, _ in lines] == [("1", LEARNERS[0]), ("2", LEARNERS[1])], proc.stdout
    assert re.fullmatch(r"\d+\.\d s; ETA \d+:\d\d:\d\d", lines[0][2]), lines  # one run left
    assert re.fullmatch(r"\d+\.\d s", lines[1][2]), lines  # the last run: nothing left


# --------------------------------------------------------------------------------- without training
def test_lone_fit_layout_and_group_override() -> None:
    from metarec.compare import make_spec, run_config
    from metarec.config import compose
    from metarec.wandb_logging import run_layout

    cfg = compose(["logger=wandb", "learner=fomaml", "run.experiment=ablation", "data.split.scenarios=[user_cold]"])
    assert run_layout(cfg, "fomaml") == {"group": "ablation", "job_type": "fomaml",
                                         "tags": ["learner:fomaml", "data:synthetic", "model:melu", "scenario:user_cold"]}
    spec = make_spec("/tmp/some/cmp-dir", ["maml@inner_steps=5"], ["0"], ["1"], ["logger=wandb", "logger.group=paper"])
    cfg = run_config(spec, "maml@inner_steps=5", 0)
    layout = run_layout(cfg, "maml")
    assert layout["group"] == "paper" and layout["job_type"] == "maml@inner_steps=5"
    assert "variant:maml@inner_steps=5" in layout["tags"]
    assert run_layout(run_config(make_spec("/tmp/some/cmp-dir", ["maml"], ["0"], ["1"], ["logger=wandb"]), "maml", 0),
                      "maml")["group"] == "cmp-dir"


def test_logger_summaries_in_process(tmp_path: Path, monkeypatch) -> None:
    """The logger's own rule, logged directly: best value for validation metrics, last for the others."""
    for k, v in wandb_offline_env(tmp_path / "home").items():
        monkeypatch.setenv(k, v)
    from metarec.config import compose
    from metarec.wandb_logging import finish_run, lightning_logger

    cfg = compose(["logger=wandb", "learner=global"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    logger = lightning_logger(cfg, run_dir, "global")
    for step, (mae, ndcg, loss) in enumerate([(0.9, 0.1, 3.0), (0.7, 0.3, 2.0), (0.8, 0.2, 1.0)]):
        logger.log_metrics({"val/user_cold/mae": mae, "val/user_cold/full_recall@10": ndcg, "train/loss": loss}, step)
    finish_run()
    r = finished_offline_run(run_dir)
    assert r.summary["val/user_cold/mae"] == {"min": pytest.approx(0.7)}
    assert r.summary["val/user_cold/full_recall@10"] == {"max": pytest.approx(0.3)}
    assert r.summary["train/loss"] == pytest.approx(1.0)


@pytest.mark.parametrize("args, fragment", [
    (["logger.artifacts=true"], "logger.artifacts is an option of the W&B logger"),
    (["logger.group=x"], "logger.group is an option of the W&B logger"),
    (["logger=wandb", "logger.mode=online-ish"], "logger.mode must be one of offline, online, disabled"),
    (["logger=wandb", f"logger.tags=[{'x' * 65}]"], "logger.tags: each tag must have 1 to 64 characters"),
    (["logger=wandb", "logger.artifacts=perhaps"], "logger.artifacts"),
])
def test_bad_logger_options(args, fragment) -> None:
    from metarec.config import compose

    with pytest.raises(ConfigError, match=re.escape(fragment)):
        compose(args)


# ----------------------------------------------------------------------------------- grid progress
def test_grid_progress_plain_lines() -> None:
    from metarec.compare_progress import GridProgress

    lines: list[str] = []
    with GridProgress(total=5, done=1, echo=lines.append, bar=False) as grid:
        assert not grid.shows_bar
        grid.reused("[1/5] a seed 0: done before")
        for i, seconds in enumerate((10.0, 30.0, 20.0, 20.0), 2):
            grid.finished(f"[{i}/5] b seed {i}: {seconds:.1f} s", seconds)
    # ETA = mean seconds of the runs trained so far x runs left to train (the reused run takes none)
    assert lines == ["[1/5] a seed 0: done before", "[2/5] b seed 2: 10.0 s; ETA 0:00:30",
                     "[3/5] b seed 3: 30.0 s; ETA 0:00:40", "[4/5] b seed 4: 20.0 s; ETA 0:00:20",
                     "[5/5] b seed 5: 20.0 s"]


def test_grid_progress_bar_on_a_terminal() -> None:
    from rich.console import Console

    from metarec.compare_progress import GridProgress

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    echoed: list[str] = []
    with GridProgress(total=3, done=1, echo=echoed.append, console=console) as grid:  # bar: the console is a terminal
        assert grid.shows_bar
        grid.starting("maml seed 1")
        grid.finished("[2/3] maml seed 1: 4.0 s", 4.0)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())
    assert not echoed  # lines go above the bar, through its console
    assert "[2/3] maml seed 1: 4.0 s" in text
    assert re.search(r"2/3 runs .*ETA 0:00:0[34]", text), text
    assert "1/3 runs" in text  # the runs done before count from the start
    plain = GridProgress(total=3, done=0, console=Console(file=io.StringIO()))  # not a terminal: no bar
    assert not plain.shows_bar
