"""``metarec compare``: a learners x seeds grid on one split, its summaries, resuming, and bad input.

End-to-end tests run the command line in a subprocess on a tiny synthetic grid (baselines only, one
epoch); the aggregation is unit-tested in-process on hand-made records.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_helpers import cli_env, run_cli, wandb_offline_env
import yaml

from metarec.compare import (
    ALL, Stat, finished_record, make_spec, parse_metric, render_markdown, result_rows, run_config, summarize,
    users_per_size,
)
from metarec.compare_plots import bars_figure, curve_figure
from metarec.compare_variants import parse_variant
from metarec.errors import ConfigError, DataError
from metarec.report import mean_ci

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "metarec" / "configs"
SCENARIOS = ("warm", "user_cold", "item_cold", "user_item_cold")
TINY = ["data.params.n_users=200", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]
LEARNERS = ("global", "item_mean", "user_mean")
SEEDS = (0, 1)
SIZES = (1, 3)


def metrics_per_scenario(learner: str) -> int:
    """Query-set mae, rmse, ndcg@1, ndcg@3, plus full-ranking recall/ndcg/hitrate at k = 5, 10, 20 for
    learners that can rank items (user_mean gives every item the same score: no full ranking)."""
    return 4 + (0 if learner == "user_mean" else 3 * 3)


RUN_METRICS = sum(metrics_per_scenario(learner) for learner in LEARNERS)  # one seed of every learner
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# scipy.stats.t.ppf(0.975, df): written out so that the arithmetic is checked against fixed numbers
T975 = {1: 12.706204736174694, 2: 4.302652729749462, 3: 3.1824463052837078}


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    empty = tmp / "no-data"
    empty.mkdir(exist_ok=True)
    return cli_env(empty, MPLCONFIGDIR=str(tmp / "mpl"), **extra)


def metarec(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, env=env or _env(cwd))


def grid_args(out: Path, *extra: str) -> list[str]:
    # the overrides follow --support-sizes on purpose: argparse hands them to that option first
    return ["compare", "--out", str(out), "--learners", *LEARNERS, "--seeds", *map(str, SEEDS),
            "--support-sizes", *map(str, SIZES), *TINY, *extra]


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    detail = f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 2, detail
    assert "Traceback" not in proc.stderr + proc.stdout, detail
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("metarec: error: "), detail
    for f in fragments:
        assert f in lines[0], f"{f!r} not in {lines[0]!r}"
    return lines[0]


def progress(stdout: str) -> dict[tuple[str, int], str]:
    """``{(learner, seed): "done before" | "<seconds> s"}`` from the progress lines (without the ETA that
    ends a trained run's line while runs are left)."""
    out = {}
    for m in re.finditer(r"^\[\s*\d+/\d+\] (\S+)\s+seed (\d+): (.+?)(?:; ETA \d+:\d\d:\d\d)?$", stdout, re.M):
        out[(m.group(1), int(m.group(2)))] = m.group(3).strip()
    return out


def metrics_mtimes(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*/metrics.json")}


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The tiny grid, run once for the module: 3 learners x 2 seeds, support sizes 1 and 3."""
    tmp = tmp_path_factory.mktemp("compare")
    out = tmp / "cmp"
    proc = metarec(*grid_args(out), cwd=tmp)
    assert_ok(proc)
    return out, proc


# ------------------------------------------------------------------------------------- end to end
def test_outputs_are_complete_and_consistent(grid) -> None:
    out, proc = grid
    runs = {(l, s): out / "runs" / f"{l}-s{s}" for l in LEARNERS for s in SEEDS}
    lines = progress(proc.stdout)
    assert set(lines) == set(runs), proc.stdout
    assert all(re.fullmatch(r"\d+\.\d s", v) for v in lines.values()), lines

    # results.csv: one row per run and test metric, values equal to the runs' metrics.json
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["learner", "seed", "support_size", "scenario", "metric", "value", "run_dir"]
    records = {k: json.loads((d / "metrics.json").read_text()) for k, d in runs.items()}
    expected = 0
    for (learner, seed), record in records.items():
        test_metrics = {k: v for k, v in record["metrics"].items() if k.split("/")[0].startswith("test")}
        expected += len(test_metrics)
        mine = [r for r in rows if r["learner"] == learner and r["seed"] == str(seed)]
        assert len(mine) == len(test_metrics) == (1 + len(SIZES)) * len(SCENARIOS) * metrics_per_scenario(learner)
        for r in mine:
            stage = "test" if r["support_size"] == "all" else f"test_k{r['support_size']}"
            value = test_metrics[f"{stage}/{r['scenario']}/{r['metric']}"]
            assert (math.isnan(value) and r["value"] == "nan") or float(r["value"]) == pytest.approx(value, rel=1e-12)
            assert (out / r["run_dir"]).resolve() == runs[(learner, seed)].resolve()
    assert len(rows) == expected == len(SEEDS) * (1 + len(SIZES)) * len(SCENARIOS) * RUN_METRICS
    assert {r["support_size"] for r in rows} == {"all", *map(str, SIZES)}
    assert {r["scenario"] for r in rows} == set(SCENARIOS)

    # results.md: main table, bold bests, the curve tables, the split/seeds/runs line
    md = (out / "results.md").read_text()
    split_hash = json.loads((out / "split_manifest.json").read_text())["content_hash"]
    assert split_hash in md and "seeds 0, 1" in md and "6 runs" in md
    assert re.search(r"\*\*\d\.\d{4} ± \d\.\d{4}\*\*", md), md
    for learner in LEARNERS:
        assert re.search(rf"^\| {learner} \| ", md, re.M)
    assert "user_cold MAE" in md and "user_cold RMSE" in md and "user_cold nDCG@3" in md
    assert "### user_cold" in md and "| learner | K=1 | K=3 | all |" in md
    # the md's means are the csv's means
    gm = [float(r["value"]) for r in rows
          if (r["learner"], r["support_size"], r["scenario"], r["metric"]) == ("global", "all", "user_cold", "mae")]
    assert f"{sum(gm) / len(gm):.4f}" in md
    # the ranking metrics are in results.md too, equal to the csv's means
    assert "## Full ranking, full support" in md and "user_cold Recall@10" in md and "user_cold nDCG@10" in md
    gr = [float(r["value"]) for r in rows if (r["learner"], r["support_size"], r["scenario"], r["metric"])
          == ("item_mean", "all", "user_cold", "full_recall@10")]
    ranking = md.split("## Full ranking, full support")[1].split("##")[0]
    assert re.search(rf"^\| item_mean \| .*{sum(gr) / len(gr):.4f}", ranking, re.M), ranking
    # every curve table counts its test users per K: those with at least K support ratings in the split
    episodes = json.loads((out / "split_manifest.json").read_text())["episodes"]
    for s in SCENARIOS:
        counts = [sum(len(e["support"]) >= k for e in episodes[s]) for k in SIZES] + [len(episodes[s])]
        curve = md.split(f"### {s}\n")[1].split("###")[0]
        assert f"| test users | {' | '.join(map(str, counts))} |" in curve, curve

    # the plots: valid, non-empty PNG files
    for name in [*(f"curve_{s}.png" for s in SCENARIOS), "bars_mae.png"]:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000, name
    assert not list(out.glob(".*.tmp")), "a temp file was left behind"
    assert not (out / "wandb").exists()  # csv logger: no W&B run


def test_every_run_used_the_one_split(grid) -> None:
    out, _ = grid
    manifest = json.loads((out / "split_manifest.json").read_text())
    run_dirs = sorted((out / "runs").iterdir())
    assert len(run_dirs) == len(LEARNERS) * len(SEEDS)
    for d in run_dirs:
        record = json.loads((d / "metrics.json").read_text())
        assert record["split_hash"] == manifest["content_hash"], d
        assert json.loads((d / "split_manifest.json").read_text())["content_hash"] == manifest["content_hash"]
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        assert Path(cfg["data"]["manifest"]) == (out / "split_manifest.json").resolve()
        assert cfg["data"]["eval_support_sizes"] == list(SIZES)
        assert record["learner"] == d.name.rsplit("-s", 1)[0] and record["seed"] == int(d.name.rsplit("-s", 1)[1])


def test_resume_recomputes_only_missing_runs(grid, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    shutil.copytree(grid[0], out)
    before = metrics_mtimes(out)
    assert len(before) == 6

    # runs made before an option existed (no data.negatives in their config.yaml) still count as done
    for cfg_path in (out / "runs").glob("*/config.yaml"):
        old = yaml.safe_load(cfg_path.read_text())
        del old["data"]["negatives"]
        cfg_path.write_text(yaml.safe_dump(old))

    proc = metarec(*grid_args(out), cwd=tmp_path)
    assert_ok(proc)
    assert set(progress(proc.stdout).values()) == {"done before"}, proc.stdout
    assert metrics_mtimes(out) == before

    (out / "runs" / "global-s1" / "metrics.json").unlink()
    proc = metarec(*grid_args(out), cwd=tmp_path)
    assert_ok(proc)
    lines = progress(proc.stdout)
    assert re.fullmatch(r"\d+\.\d s", lines.pop(("global", 1))), proc.stdout
    assert set(lines.values()) == {"done before"}, proc.stdout
    after = metrics_mtimes(out)
    assert set(after) == set(before)
    assert {k for k in after if after[k] != before[k]} == {"global-s1"}
    with open(out / "results.csv", newline="") as f:
        assert sum(1 for _ in csv.DictReader(f)) == len(SEEDS) * (1 + len(SIZES)) * len(SCENARIOS) * RUN_METRICS


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--learners", "global", "nosuch"], ["unknown learner 'nosuch'", "--learners"]),
        (["--learners", "global", "--seeds", "zero"], ["--seeds", "'zero' is not an integer"]),
        (["--learners", "global", "--support-sizes", "0"], ["--support-sizes"]),
        (["--learners", "global", "seed=3"], ["compare sets seed itself", "--seeds"]),
        (["--learners", "global", "learner=maml"], ["compare sets learner itself", "--learners"]),
        (["--learners", "global", "learner.lr=0.1"],
         ["compare sets learner itself", "LEARNER@lr=0.1", "learner/<option>.yaml", "--config-path"]),
        (["--learners", "global", "global@data.split.query_size=5"], ["global@data.split.query_size=5", "cannot differ"]),
        (["--learners", "global", "run.root=/tmp/x"], ["compare sets run itself"]),
        (["--learners", "global", "data.manifest=m.json"], ["compare sets data.manifest itself"]),
        (["--learners", "global", "data.eval_support_sizes=[1]"], ["compare sets data.eval_support_sizes itself"]),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    out = tmp_path / "cmp"
    proc = metarec("compare", "--out", str(out), *args, *TINY, cwd=tmp_path)
    assert_user_error(proc, *fragments)
    assert not out.exists()


def test_settings_that_do_not_match_the_existing_grid_are_refused(grid, tmp_path: Path) -> None:
    out = grid[0]
    before = metrics_mtimes(out)
    manifest_before = (out / "split_manifest.json").read_bytes()
    # a split setting against the saved manifest
    proc = metarec(*grid_args(out, "data.split.query_size=5"), cwd=tmp_path)
    assert_user_error(proc, "split_manifest.json", "data.split.query_size=10", "5")
    # a training setting against the finished runs
    proc = metarec(*grid_args(out, "trainer.max_epochs=2"), cwd=tmp_path)
    assert_user_error(proc, "finished run", "trainer.max_epochs=1")
    # other support sizes than the finished runs were tested with
    proc = metarec("compare", "--out", str(out), "--learners", *LEARNERS, "--seeds", "0", "1",
                   "--support-sizes", "1", "5", *TINY, cwd=tmp_path)
    assert_user_error(proc, "data.eval_support_sizes", "--support-sizes")
    assert metrics_mtimes(out) == before
    assert (out / "split_manifest.json").read_bytes() == manifest_before

    # other data (synthetic data options) against a manifest with no finished run yet
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(out / "split_manifest.json", fresh / "split_manifest.json")
    proc = metarec("compare", "--out", str(fresh), "--learners", "item_mean", "--seeds", "0", "--support-sizes", "1",
                   "data.params.n_users=300", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                   cwd=tmp_path)
    assert_user_error(proc, "split_manifest.json", "other data")
    assert not (fresh / "runs").exists()


def test_wandb_offline(tmp_path: Path) -> None:
    home = tmp_path / "wandb-home"
    env = _env(tmp_path, **wandb_offline_env(home))
    env.pop("WANDB_API_KEY", None)
    out = tmp_path / "cmp"
    proc = metarec("compare", "--out", str(out), "--learners", "item_mean", "user_mean", "--seeds", "0",
                   "--support-sizes", "1", "logger=wandb", *TINY, cwd=tmp_path, env=env)
    assert_ok(proc)
    (offline,) = sorted((out / "wandb").glob("offline-run-*"))
    assert list(offline.glob("run-*.wandb")), list(offline.iterdir())
    media = offline / "files" / "media"
    assert list(media.glob("table/results_*.table.json")), list(media.rglob("*"))
    assert list(media.glob("images/bars_mae_*.png")), list(media.rglob("*"))
    for learner in ("item_mean", "user_mean"):  # every training run got its own W&B run
        assert len(list((out / "runs" / f"{learner}-s0" / "wandb").glob("offline-run-*"))) == 1
    assert "One seed (0)" in (out / "results.md").read_text()


def test_help_explains_the_command(tmp_path: Path) -> None:
    proc = metarec("compare", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for fragment in ("--learners", "--seeds", "--support-sizes", "split_manifest.json", "results.csv", "results.md",
                     "curve_<scenario>.png", "bars_mae.png", "logger=wandb", "resum", "LEARNER@key=value",
                     "maml@inner_steps=5"):
        assert fragment in proc.stdout, fragment


# ------------------------------------------------------------------------------------ aggregation
def _record(learner: str, seed: int, metrics: dict[str, float]) -> dict:
    return {"learner": learner, "seed": seed, "split_hash": "h", "metrics": metrics,
            "run_dir": f"/x/runs/{learner}-s{seed}"}


def test_mean_ci_arithmetic() -> None:
    mean, h = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert h == pytest.approx(T975[2] * 1.0 / math.sqrt(3), rel=1e-12)
    mean, h = mean_ci([0.5, 0.7])
    assert mean == pytest.approx(0.6)
    assert h == pytest.approx(T975[1] * math.sqrt(0.02) / math.sqrt(2), rel=1e-12)
    mean, h = mean_ci([0.8])
    assert mean == 0.8 and math.isnan(h)
    assert all(math.isnan(v) for v in mean_ci([]))


def test_summarize_ci_over_seeds() -> None:
    values = {"a": [0.9, 1.0, 1.2, 0.95], "b": [0.7, 0.8, 0.75, math.nan]}
    records = [
        _record(l, s, {"test/user_cold/mae": v, "test_k5/user_cold/mae": v + 0.1, "val/user_cold/mae": 0.0})
        for l, vs in values.items() for s, v in enumerate(vs)
    ]
    rows = result_rows(records, out=Path("/x"))
    assert {r["run_dir"] for r in rows} == {f"runs/{l}-s{s}" for l in values for s in range(4)}
    assert {r["support_size"] for r in rows} == {ALL, 5}  # val/... is not a test metric
    stats = summarize(rows)

    a = stats[("a", ALL, "user_cold", "mae")]
    xs = values["a"]
    m = sum(xs) / 4
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / 3)
    assert (a.n, a.mean) == (4, pytest.approx(m))
    assert a.std == pytest.approx(s)
    assert a.half_width == pytest.approx(T975[3] * s / 2.0, rel=1e-10)
    assert stats[("a", 5, "user_cold", "mae")].mean == pytest.approx(m + 0.1)
    b = stats[("b", ALL, "user_cold", "mae")]  # the NaN run is left out: n = 3
    assert b.n == 3 and b.mean == pytest.approx(0.75)
    assert b.half_width == pytest.approx(T975[2] * 0.05 / math.sqrt(3), rel=1e-10)


def test_parse_metric() -> None:
    assert parse_metric("test/user_cold/mae") == (ALL, "user_cold", "mae")
    assert parse_metric("test_k10/warm/ndcg@3") == (10, "warm", "ndcg@3")
    assert parse_metric("val/user_cold/mae") is None
    assert parse_metric("test_kx/warm/mae") is None


def test_markdown_bold_and_single_seed() -> None:
    stats = {
        ("a", ALL, "warm", "mae"): Stat(3, 0.9, 0.1, 0.25),
        ("b", ALL, "warm", "mae"): Stat(3, 0.8, 0.1, 0.25),
        ("a", ALL, "warm", "ndcg@3"): Stat(3, 0.7, 0.1, 0.25),
        ("b", ALL, "warm", "ndcg@3"): Stat(2, 0.6, 0.1, 1.0),
        ("a", 1, "warm", "mae"): Stat(0, math.nan, math.nan, math.nan),
        ("b", 1, "warm", "mae"): Stat(3, 1.1, 0.1, 0.2),
    }
    md = render_markdown(stats, ["a", "b"], [0, 1, 2], [1], "abc123", 6)
    main, curves = md.split("### warm")
    assert "| a | 0.9000 ± 0.2500 | – | **0.7000 ± 0.2500** |" in main  # highest nDCG in bold; no RMSE: –
    assert "| b | **0.8000 ± 0.2500** | – | 0.6000 ± 1.0000 (n=2) |" in main  # lowest MAE in bold
    assert "| a | – | 0.9000 ± 0.2500 |" in curves
    assert "| b | **1.1000 ± 0.2000** | **0.8000 ± 0.2500** |" in curves
    assert "abc123" in md and "6 runs" in md and "seeds 0, 1, 2" in md

    one = {k: Stat(1, v.mean, math.nan, math.nan) for k, v in stats.items() if v.n}
    md1 = render_markdown(one, ["a", "b"], [7], [1], "abc123", 2)
    assert "One seed (7)" in md1 and "±" not in md1.split("## Test metrics")[1]
    assert "| b | **0.8000** |" in md1


def test_make_spec_checks_in_process(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("METAREC_CONFIG_DIR", str(CONFIGS))
    spec = make_spec(tmp_path / "o", None, ["2", "0", "2"], ["10", "1", "3"], ["data=synthetic"])
    # every option but those written for another base model than the default melu (fism, fism_ease, ridge and
    # its preset ridge_interval) or adapting a scope it lacks (maml_lora: LoRA adapters)
    assert spec.learners == sorted(p.stem for p in (CONFIGS / "learner").glob("*.yaml")
                                   if p.stem not in ("fism", "fism_ease", "ridge", "ridge_interval", "maml_lora"))
    assert spec.seeds == [2, 0] and spec.support_sizes == [1, 3, 10]
    assert spec.out.is_absolute()
    with pytest.raises(ConfigError, match="run.name"):
        make_spec(tmp_path / "o", ["global"], None, None, ["run.name=x"])
    with pytest.raises(ConfigError, match="unknown learner"):
        make_spec(tmp_path / "o", ["maml", "MAML"], None, None, [])


# ---------------------------------------------------------------------------------------- variants
def test_variants_are_rows_of_their_own_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--out", str(out), "--learners", "global", "global@lr=0.01", "--seeds", "0",
            "--support-sizes", "1", *TINY]
    proc = metarec(*args, cwd=tmp_path)
    assert_ok(proc)
    assert set(progress(proc.stdout)) == {("global", 0), ("global@lr=0.01", 0)}, proc.stdout
    variant = out / "runs" / "global@lr=0.01-s0"
    assert yaml.safe_load((variant / "config.yaml").read_text())["learner"]["lr"] == 0.01
    assert yaml.safe_load((out / "runs" / "global-s0" / "config.yaml").read_text())["learner"]["lr"] == 0.001
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["learner"] for r in rows} == {"global", "global@lr=0.01"}
    value = next(r["value"] for r in rows if (r["learner"], r["support_size"], r["scenario"], r["metric"])
                 == ("global@lr=0.01", "all", "user_cold", "mae"))
    assert float(value) == json.loads((variant / "metrics.json").read_text())["metrics"]["test/user_cold/mae"]
    md = (out / "results.md").read_text()
    assert re.search(r"^\| global@lr=0.01 \| ", md, re.M) and re.search(r"^\| global \| ", md, re.M)
    # repeated: nothing is recomputed
    before = metrics_mtimes(out)
    proc = metarec(*args, cwd=tmp_path)
    assert_ok(proc)
    assert set(progress(proc.stdout).values()) == {"done before"}, proc.stdout
    assert metrics_mtimes(out) == before


def test_variant_syntax(monkeypatch, tmp_path: Path) -> None:
    assert parse_variant("maml") == ("maml", [])
    assert parse_variant("maml@inner_steps=5,model.embed_dim=16,trainer.max_epochs=2") == (
        "maml", ["learner.inner_steps=5", "model.embed_dim=16", "trainer.max_epochs=2"])
    assert parse_variant("maml@model.hidden=[64,32],inner_lr=0.1") == ("maml", ["model.hidden=[64,32]", "learner.inner_lr=0.1"])
    # data settings that shape only the training episodes may vary; the split's may not
    assert parse_variant("fism@data.train_support=loguniform") == ("fism", ["data.train_support=loguniform"])
    assert parse_variant("maml@data.rating_grid=true") == ("maml", ["data.rating_grid=true"])  # predictions only
    for bad, message in [("maml@", "not key=value"), ("maml@steps", "not key=value"), ("@lr=1", "no learner"),
                         ("maml@data.params.n_users=9", "cannot differ"),
                         ("maml@data.split.query_size=5", "cannot differ"), ("maml@data.eval_support_sizes=[1]", "cannot differ"),
                         ("maml@run.name=x", "cannot differ"), ("maml@name=anil", "learner.name"),
                         ("maml@lr=1,learner.lr=2", "set twice"), ("maml@lr=a/b", "run folders")]:
        with pytest.raises(ConfigError, match=message):
            parse_variant(bad)
    monkeypatch.setenv("METAREC_CONFIG_DIR", str(CONFIGS))
    spec = make_spec(tmp_path / "o", ["maml", "maml@inner_steps=2", "maml"], ["0"], ["1"], ["maml@inner_steps=3"])
    assert spec.learners == ["maml", "maml@inner_steps=2", "maml@inner_steps=3"] and spec.overrides == []
    assert run_config(spec, "maml@inner_steps=2", 0).learner.inner_steps == 2
    assert run_config(spec, "maml@inner_steps=2", 0).run.name == "maml@inner_steps=2-s0"
    spec = make_spec(tmp_path / "o2", ["maml@data.train_support=loguniform"], ["0"], ["1"], [])
    assert run_config(spec, "maml@data.train_support=loguniform", 0).data.train_support == "loguniform"
    with pytest.raises(ConfigError, match="unknown learner 'nosuch'"):
        make_spec(tmp_path / "o", ["nosuch@lr=1"], None, None, [])
    with pytest.raises(ConfigError, match="in the config of learner 'maml@nokey=1'"):
        run_config(make_spec(tmp_path / "o", ["maml@nokey=1"], None, None, []), "maml@nokey=1", 0)


# ------------------------------------------------------------------------------ corrupt run records
def test_a_corrupt_metrics_file_is_refused_in_one_line(grid, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    shutil.copytree(grid[0], out)
    bad = out / "runs" / "global-s1" / "metrics.json"
    bad.write_text("{bad")
    results = (out / "results.md").read_bytes()
    before = metrics_mtimes(out)
    proc = metarec(*grid_args(out), cwd=tmp_path)
    assert_user_error(proc, str(bad.parent), "metrics.json is not valid JSON", "delete that file")
    assert metrics_mtimes(out) == before and (out / "results.md").read_bytes() == results
    assert "[" not in proc.stdout  # refused before any run
    bad.write_text("[]")
    with pytest.raises(DataError, match="JSON list"):
        finished_record(bad.parent)


# ----------------------------------------------------------------------------- test users, plots
def test_users_per_size_and_their_table_row() -> None:
    manifest = {"episodes": {"user_cold": [{"support": [1, 2, 3]}, {"support": [4]}, {"support": list(range(9))}],
                             "warm": [{"support": [1, 2]}]}}
    users = users_per_size(manifest, [1, 3, 5])
    assert users == {("user_cold", ALL): 3, ("user_cold", 1): 3, ("user_cold", 3): 2, ("user_cold", 5): 1,
                     ("warm", ALL): 1, ("warm", 1): 1, ("warm", 3): 0, ("warm", 5): 0}
    stats = {("a", k, "user_cold", "mae"): Stat(1, 0.9, math.nan, math.nan) for k in (1, 3, 5, ALL)}
    md = render_markdown(stats, ["a"], [0], [1, 3, 5], "h", 1, users=users)
    assert "| test users | 3 | 2 | 1 | 3 |" in md.split("### user_cold")[1]
    assert "test users" not in render_markdown(stats, ["a"], [0], [1, 3, 5], "h", 1)


def _caps(ax) -> int:
    """Error-bar caps drawn in ``ax`` (bar charts and line plots)."""
    from matplotlib.container import BarContainer, ErrorbarContainer

    n = 0
    for c in ax.containers:
        eb = c.errorbar if isinstance(c, BarContainer) else c if isinstance(c, ErrorbarContainer) else None
        if eb is not None:
            n += sum(len(cap.get_xdata()) for cap in eb.lines[1])
    return n


@pytest.mark.parametrize("seeds", [1, 3])
def test_error_bars_only_with_several_seeds(seeds: int) -> None:
    stats = {(l, k, s, "mae"): Stat(seeds, 0.9 + 0.01 * i, 0.05 if seeds > 1 else math.nan,
                                     0.1 if seeds > 1 else math.nan)
             for i, l in enumerate(["a", "b"]) for k in (1, 3, ALL) for s in ("warm", "user_cold")}
    users = users_per_size({"episodes": {"user_cold": [{"support": [1, 2, 3]}, {"support": [4]}]}}, [1, 3])
    bars = bars_figure(stats, ["a", "b"], seeds).axes[0]
    curve = curve_figure(stats, ["a", "b"], [1, 3], seeds, "user_cold", users).axes[0]
    if seeds == 1:  # one seed: no error bars, so no zero-width caps
        assert _caps(bars) == 0 and _caps(curve) == 0
        assert "one seed: no error bars" in bars.get_title()
    else:
        assert _caps(bars) > 0 and _caps(curve) > 0
    labels = [t.get_text() for t in curve.get_xticklabels()]
    assert labels == ["1\nn=2", "3\nn=1", "all\nn=2"]


def test_default_learners_are_those_that_run_on_the_chosen_model(tmp_path):
    """Without --learners: every option, except those written for another base model (fism and ridge
    need model=twotower) or adapting a scope the model lacks (maml_lora needs LoRA adapters: a Transformer
    with model.lora_rank > 0); named explicitly they are still taken."""
    on_melu = make_spec(tmp_path / "a", None, ["0"], None, []).learners
    on_twotower = make_spec(tmp_path / "b", None, ["0"], None, ["model=twotower"]).learners
    assert "fism" not in on_melu and "ridge" not in on_melu and "maml" in on_melu
    assert {"fism", "ridge", "maml", "global"} <= set(on_twotower)
    assert make_spec(tmp_path / "c", ["ridge"], ["0"], None, []).learners == ["ridge"]
    assert "maml_lora" not in on_melu and "maml_lora" not in on_twotower
    assert "maml_lora" not in make_spec(tmp_path / "d", None, ["0"], None, ["model=transformer"]).learners
    with_lora = make_spec(tmp_path / "e", None, ["0"], None, ["model=transformer", "model.lora_rank=4"]).learners
    assert {"maml_lora", "maml", "global"} <= set(with_lora)
    assert make_spec(tmp_path / "f", ["maml_lora"], ["0"], None, []).learners == ["maml_lora"]
