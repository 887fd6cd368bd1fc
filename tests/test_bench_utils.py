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
