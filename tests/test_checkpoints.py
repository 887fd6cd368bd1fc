"""Checkpoints are read with ``weights_only=True``: a pickled payload or a corrupt file is refused."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from metarec.config import compose
from metarec.errors import MetarecError
from metarec.runs import finished_runs
from metarec.train import check_checkpoint, fit



class Payload:
    """Unpickling this runs code: it creates a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cfg = compose(["data.params.n_users=200", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                   f"run.root={root}"])
    run = fit(cfg)
    (record,) = finished_runs(run)
    return run, run / record["best_checkpoint"]


def test_a_real_checkpoint_passes_and_loads_weights_only(trained_run):
    _, ckpt = trained_run
    check_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=True)
    assert "state_dict" in state


def test_a_checkpoint_carrying_a_pickled_payload_is_refused_and_not_run(trained_run, tmp_path):
    _, ckpt = trained_run
    state = torch.load(ckpt, weights_only=True)
    marker = tmp_path / "pwned"
    state["extra"] = Payload(str(marker))
    evil = tmp_path / "evil.ckpt"
    torch.save(state, evil)
    with pytest.raises(MetarecError, match="other than tensors and plain data") as err:
        check_checkpoint(evil)
    assert "\n" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "missing"])
def test_a_truncated_or_corrupt_checkpoint_gives_a_clear_error(trained_run, tmp_path, damage):
    _, ckpt = trained_run
    bad = tmp_path / "bad.ckpt"
    data = ckpt.read_bytes()
    if damage == "truncate":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        bad.write_bytes(pickle.dumps("not a checkpoint")[:3] + b"\x00" * 100)
    elif damage == "empty":
        bad.write_bytes(b"")
    with pytest.raises(MetarecError) as err:
        check_checkpoint(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
