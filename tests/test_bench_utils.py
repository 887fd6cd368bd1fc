"""``benchmarks/bench_utils.py``: the command line a benchmark's footer prints names folders ``DIR``."""

from __future__ import annotations

from pathlib import Path


def test_footer_command_names_folder_arguments_dir(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_utils import command_line

    assert (command_line("ranking_vs_cf.py", ["--data", "ml100k", "--work", "/tmp/rvc", "--seeds", "0", "1"])
            == "python benchmarks/ranking_vs_cf.py --data ml100k --work DIR --seeds 0 1")
    assert command_line("oracle_gap.py", ["--tuned=/home/me/t", "--out", "x"]) == "python benchmarks/oracle_gap.py --tuned=DIR --out DIR"
    assert command_line("convergence.py", []) == "python benchmarks/convergence.py"


def test_a_benchmark_run_on_one_part_keeps_the_other_parts(monkeypatch) -> None:
    """``merge_blocks``: the parts a call ran are replaced, the others kept from the earlier text, missing
    ones get a placeholder; ``replace_block`` touches only its own markers (also nested ones)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_utils import merge_blocks, read_block, replace_block

    first = merge_blocks(None, {"b_x": "x one"}, ["b_x", "b_y"], lambda k: f"({k} not run)")
    assert read_block(first, "b_x") == "x one" and read_block(first, "b_y") == "(b_y not run)"
    second = merge_blocks(first, {"b_y": "y one\n\nwith lines"}, ["b_x", "b_y"], lambda k: "never")
    assert read_block(second, "b_x") == "x one" and read_block(second, "b_y") == "y one\n\nwith lines"
    third = merge_blocks(second, {"b_x": "x two"}, ["b_x", "b_y"], lambda k: "never")
    assert third == second.replace("x one", "x two")
    outer = f"intro\n<!-- BEGIN b -->\n{third}\n<!-- END b -->\ntail\n"
    assert read_block(outer, "b") == third and read_block(outer, "b_y") == "y one\n\nwith lines"
    assert replace_block(outer, "b", "new") == "intro\n<!-- BEGIN b -->\nnew\n<!-- END b -->\ntail\n"
    assert replace_block(outer, "missing", "new") is None


def test_kept_run_records_let_a_fresh_work_folder_resume_without_refitting(monkeypatch, tmp_path) -> None:
    """``run_model_groups(store=...)``: each finished run's config.yaml and metrics.json (not its checkpoints)
    are kept in the store; a later call in an empty work folder restores them and fits nothing, with the
    same numbers. An unfinished run is never kept."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_utils

    import metarec.compare as compare

    overrides = ["data=synthetic", "data.params.n_users=120", "data.split.scenarios=[user_cold]",
                 "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.enable_progress_bar=false"]
    groups = [("melu", ["popularity", "global"], overrides)]
    store = tmp_path / "store"
    first = bench_utils.run_model_groups(tmp_path / "w1", groups, ["0"], ["3"], store=store)
    kept = sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file())
    assert kept == ["melu/runs/global-s0/config.yaml", "melu/runs/global-s0/metrics.json",
                    "melu/runs/popularity-s0/config.yaml", "melu/runs/popularity-s0/metrics.json",
                    "melu/split_manifest.json"]
    assert all(str(tmp_path) not in (store / f).read_text() for f in kept)  # the work folder is written DIR
    assert "DIR" in (store / "melu/runs/global-s0/config.yaml").read_text()
    (tmp_path / "w1" / "melu" / "runs" / "unfinished-s0").mkdir()
    (tmp_path / "w1" / "melu" / "runs" / "unfinished-s0" / "config.yaml").write_text("x: 1\n")
    assert bench_utils.keep_runs(tmp_path / "w1" / "melu", store / "melu") == 0

    def no_fit(cfg):
        raise AssertionError(f"{cfg.learner.name} was fitted again")

    monkeypatch.setattr(compare, "_fit_quietly", no_fit)
    again = bench_utils.run_model_groups(tmp_path / "w2", groups, ["0"], ["3"], store=store)
    assert again[1:] == first[1:]
    assert {k: v.mean for k, v in again[0].items()} == {k: v.mean for k, v in first[0].items()}


def test_kept_run_records_are_not_ignored_by_git() -> None:
    """The store lives under benchmarks/results/<name>_runs/<data>/<model>/runs/: the repository ignores
    folders named runs/ (work folders), which must not swallow the kept records that are meant to be committed."""
    import shutil
    import subprocess

    import pytest

    repo = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    kept = "benchmarks/results/ranking_vs_cf_runs/lastfm/melu/runs/ease-s0/metrics.json"
    work = "runs/ranking_vs_cf/lastfm/melu/runs/ease-s0/metrics.json"
    check = lambda p: subprocess.run(["git", "check-ignore", "-q", "--no-index", p], cwd=repo).returncode  # noqa: E731
    assert check(kept) == 1  # not ignored
    assert check(work) == 0  # a work folder still is
