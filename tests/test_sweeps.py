"""W&B sweep files (``metarec/configs/sweep/*.yaml``): every run an agent could start is a valid ``metarec fit``
command line, and the metric the sweep optimises is one that fit logs."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest
import yaml

from metarec.config import compose
from metarec.train import fit

SWEEPS = sorted((Path(__file__).resolve().parent.parent / "metarec" / "configs" / "sweep").glob("*.yaml"))


def _values(spec: dict) -> list:
    """The values an agent may draw for one parameter (a distribution's end points)."""
    if "values" in spec:
        return list(spec["values"])
    if "value" in spec:
        return [spec["value"]]
    return [spec["min"], spec["max"]]


def _command_lines(sweep: dict) -> list[list[str]]:
    """Every command line the agent could run: ``command`` with ${args_no_hyphens} expanded."""
    names = sorted(sweep["parameters"])
    lines = []
    for combo in itertools.product(*(_values(sweep["parameters"][n]) for n in names)):
        args = [f"{n}={v}" for n, v in zip(names, combo)]
        line = []
        for part in sweep["command"]:
            if part == "${args_no_hyphens}":
                line += args
            elif part not in ("${env}", "${interpreter}", "${program}"):
                line.append(part)
        lines.append(line)
    return lines


def test_there_are_sweeps() -> None:
    assert len(SWEEPS) >= 2


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_sweep_run_is_a_valid_fit_command(path: Path) -> None:
    sweep = yaml.safe_load(path.read_text())
    assert sweep["method"] in ("grid", "random", "bayes")
    assert sweep["metric"]["goal"] in ("minimize", "maximize")
    assert "${args_no_hyphens}" in sweep["command"]
    lines = _command_lines(sweep)
    assert len(lines) > 1
    for line in lines:
        program, command, *overrides = line
        assert program.endswith("metarec") and command == "fit"
        cfg = compose(overrides)  # raises ConfigError on any unknown key, option or bad value
        assert cfg.logger.name == "wandb"
        for arg in overrides:
            key, value = arg.split("=", 1)
            if "." in key:
                assert str(cfg[key.split(".")[0]][key.split(".", 1)[1]]) == str(yaml.safe_load(value)), arg


def test_sweep_metrics_are_logged_by_fit(tmp_path: Path) -> None:
    run = fit(compose(["data.params.n_users=200", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                       f"run.root={tmp_path}"]))
    with open(run / "logs" / "metrics.csv", newline="") as f:
        logged = set(csv.DictReader(f).fieldnames or [])
    for path in SWEEPS:
        assert yaml.safe_load(path.read_text())["metric"]["name"] in logged, path.name
