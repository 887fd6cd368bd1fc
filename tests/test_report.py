"""``metarec report``: runs on other data, loss or settings are never averaged together; filters, stages,
the confidence-interval label and corrupt run records.

Three tiny ``maml`` fits (explicit ratings, explicit ratings of other data, implicit feedback) are made
once for the module; the other cases copy one of them and edit its ``config.yaml`` or ``metrics.json``.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from cli_helpers import cli_env, run_cli

from metarec.cli import main
from metarec.errors import DataError
from metarec.report import read_record

SCENARIOS = ("warm", "user_cold", "item_cold", "user_item_cold")
TINY = ["learner=maml", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]
RUNS = {  # the scenario, tiny: one data set, another one, and implicit feedback
    "explicit": ["data.params.n_users=200"],
    "other": ["data.params.n_users=160", "data.params.n_items=200"],
    "implicit": ["data.params.n_users=200", "data.negatives.per_positive=2"],
}
T975_1 = 12.706204736174694  # scipy.stats.t.ppf(0.975, 1)


def report(capsys, *args: str) -> subprocess.CompletedProcess:
    """``metarec report ARGS`` in this process (the command line's own entry point, exit code and output)."""
    capsys.readouterr()
    try:
        rc = main(["report", *args])
    except SystemExit as e:  # --help, usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["metarec", "report", *args], rc, out, err)


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    detail = f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 2, detail
    assert "Traceback" not in proc.stderr + proc.stdout, detail
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("metarec: error: "), detail
    for f in fragments:
        assert f in lines[0], f"{f!r} not in {lines[0]!r}"
    return lines[0]


def tables(stdout: str) -> dict[str, list[dict[str, str]]]:
    """``{table title: [{column: cell}]}`` from the report's markdown."""
    out: dict[str, list[dict[str, str]]] = {}
    title = None
    header: list[str] = []
    for line in stdout.splitlines():
        if line.startswith("## "):
            title, header = line[3:], []
            out[title] = []
        elif line.startswith("|") and title is not None:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not header:
                header = cells
            elif not set(line) <= set("|-"):
                out[title].append(dict(zip(header, cells)))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The three run folders, by the keys of ``RUNS``."""
    from metarec.config import compose
    from metarec.train import fit

    root = tmp_path_factory.mktemp("report") / "runs"
    return {name: fit(compose([*TINY, *extra, f"run.root={root}", f"run.experiment={name}"]))
            for name, extra in RUNS.items()}


def metrics(run: Path) -> dict[str, float]:
    return json.loads((run / "metrics.json").read_text())["metrics"]


def copy_run(run: Path, dest: Path, config=None, record=None) -> Path:
    """A copy of ``run`` at ``dest``, its config.yaml and metrics.json passed through the given edits."""
    shutil.copytree(run, dest)
    if config is not None:
        cfg = yaml.safe_load((dest / "config.yaml").read_text())
        config(cfg)
        (dest / "config.yaml").write_text(yaml.safe_dump(cfg))
    if record is not None:
        rec = json.loads((dest / "metrics.json").read_text())
        record(rec)
        (dest / "metrics.json").write_text(json.dumps(rec))
    return dest


# --------------------------------------------------------------------------------------- grouping
def test_other_data_and_implicit_feedback_are_never_averaged(runs, tmp_path: Path, capsys) -> None:
    root = next(iter(runs.values())).parent.parent
    proc = report(capsys, str(root))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "3 different data sets or losses: one table each" in proc.stdout
    # the installed command line prints the same
    cli = run_cli("report", str(root), cwd=tmp_path, env=cli_env(tmp_path))
    assert (cli.returncode, cli.stdout, cli.stderr) == (0, proc.stdout, ""), cli.stderr
    got = tables(proc.stdout)
    assert len(got) == 3, list(got)
    for rows in got.values():  # every run alone in its row
        assert [(r["learner"], r["runs"], r["seeds"]) for r in rows] == [("maml", "1", "0")]
    implicit = [t for t in got if "implicit feedback" in t]
    explicit = [t for t in got if "explicit ratings" in t]
    assert len(implicit) == 1 and len(explicit) == 2
    assert "2 sampled negatives per positive" in implicit[0]
    # the two explicit tables are told apart by the data setting that differs
    assert sorted(explicit) == sorted(f"synthetic, explicit ratings, loss mse (data.params.n_items={n})"
                                      for n in (200, 300))
    # cells are each run's own values; no MAE of probabilities for implicit feedback
    (row,) = got[implicit[0]]
    assert not any("MAE" in c or "RMSE" in c for c in row)
    assert row["user_cold full_recall@10"] == f"{metrics(runs['implicit'])['test/user_cold/full_recall@10']:.4f}"
    # a run on another data source (ml-100k) is a table of its own, titled by the source
    ml = copy_run(runs["explicit"], tmp_path / "ml", config=lambda c: c["data"].update(source="movielens100k", params={}),
                  record=lambda r: r.update(data="movielens100k"))
    got4 = tables(report(capsys, str(root), str(ml)).stdout)
    assert len(got4) == 4 and [r["learner"] for r in got4["movielens100k, explicit ratings, loss mse"]] == ["maml"]
    assert tables(report(capsys, str(root), str(ml), "--data", "movielens100k").stdout).keys() == {
        "movielens100k, explicit ratings, loss mse"}
    for name, n_items in (("explicit", 300), ("other", 200)):
        (row,) = got[f"synthetic, explicit ratings, loss mse (data.params.n_items={n_items})"]
        m = metrics(runs[name])
        for s in SCENARIOS:
            assert row[f"{s} MAE"] == f"{m[f'test/{s}/mae']:.4f}"
            assert row[f"{s} full_ndcg@10"] == f"{m[f'test/{s}/full_ndcg@10']:.4f}"  # ranking metrics too


def test_seeds_share_a_row_with_a_labelled_confidence_interval(runs, tmp_path: Path, capsys) -> None:
    base = runs["explicit"]
    other = copy_run(base, tmp_path / "runs" / "s1",
                     config=lambda c: c.update(seed=1),
                     record=lambda r: (r.update(seed=1), r["metrics"].update({"test/warm/mae": 0.5})))
    first = copy_run(base, tmp_path / "runs" / "s0", record=lambda r: r["metrics"].update({"test/warm/mae": 0.7}))
    proc = report(capsys, str(first), str(other))
    assert proc.returncode == 0, proc.stderr
    assert "95% confidence interval of the mean (Student t" in proc.stdout
    (rows,) = tables(proc.stdout).values()
    (row,) = rows
    assert (row["runs"], row["seeds"]) == ("2", "0, 1")
    h = T975_1 * math.sqrt(0.02) / math.sqrt(2)
    assert row["warm MAE"] == f"0.6000 ± {h:.4f}"
    # a run with another setting than the seed is a row of its own, labelled by that setting
    copy_run(base, tmp_path / "runs" / "steps5", config=lambda c: c["learner"].update(inner_steps=5))
    proc = report(capsys, str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr
    (rows,) = tables(proc.stdout).values()
    steps = yaml.safe_load((base / "config.yaml").read_text())["learner"]["inner_steps"]
    assert {(r["learner"], r["runs"]) for r in rows} == {
        (f"maml (learner.inner_steps={steps})", "2"), ("maml (learner.inner_steps=5)", "1")}


# ------------------------------------------------------------------------------ options and errors
def test_filters_and_stages(runs, tmp_path: Path, capsys) -> None:
    root = runs["explicit"].parent.parent
    proc = report(capsys, str(root), "--learner", "maml", "--data", "synthetic", "--stage", "val")
    assert proc.returncode == 0, proc.stderr
    assert len(tables(proc.stdout)) == 3 and "user_cold MAE" in proc.stdout
    proc = report(capsys, str(runs["implicit"]), str(runs["explicit"]))
    assert len(tables(proc.stdout)) == 2
    assert_user_error(report(capsys, str(root), "--learner", "global"),
                      "no finished run matches --learner global", "maml")
    assert_user_error(report(capsys, str(root), "--data", "movielens100k"),
                      "--data movielens100k", "synthetic")
    line = assert_user_error(report(capsys, str(root), "--stage", "bogus"),
                             "--stage 'bogus'", "stages available")
    assert re.search(r"test, val\)$", line), line


def test_help_explains_stage_and_grouping(tmp_path: Path, capsys) -> None:
    proc = report(capsys, "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for fragment in ("--stage", "test_k<K>", "--data", "--learner", "one table per data set and loss",
                     "95% Student-t confidence interval"):
        assert fragment in text, fragment


@pytest.mark.parametrize("content", ["{bad", "[]", '{"learner": "maml", "metrics": {"test/warm/mae": "x"}}'])
def test_a_corrupt_metrics_file_is_skipped_with_one_warning(runs, tmp_path: Path, capsys, content: str) -> None:
    good = copy_run(runs["explicit"], tmp_path / "runs" / "good")
    bad = copy_run(runs["explicit"], tmp_path / "runs" / "bad")
    (bad / "metrics.json").write_text(content)
    proc = report(capsys, str(tmp_path / "runs"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    (warning,) = proc.stderr.splitlines()
    assert warning.startswith("metarec: warning: skipped ") and str(bad / "metrics.json") in warning
    (rows,) = tables(proc.stdout).values()
    assert [r["runs"] for r in rows] == ["1"]  # the good run only
    assert rows[0]["warm MAE"] == f"{metrics(good)['test/warm/mae']:.4f}"
    # nothing readable left: the warning, then one error line
    shutil.rmtree(good)
    proc = report(capsys, str(tmp_path / "runs"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert [line.split(":")[1].strip() for line in proc.stderr.splitlines()] == ["warning", "error"]


def test_read_record_refuses_what_is_not_a_run_record(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    for content, message in [("{bad", "not valid JSON"), ("[]", "JSON list"), ('{"learner": "m"}', "metrics"),
                             ('{"metrics": {}}', "learner")]:
        path.write_text(content)
        with pytest.raises(DataError, match=message):
            read_record(path)
    path.write_text('{"learner": "m", "metrics": {"test/warm/mae": 0.5}}')
    assert read_record(path)["metrics"] == {"test/warm/mae": 0.5}
