"""``trainer.monitor``: what checkpoint selection, early stopping and tuning watch on the validation users."""

from __future__ import annotations

import csv

import pytest
import torch

from metarec.config import compose
from metarec.errors import ConfigError
from metarec.monitor import monitor_for
from metarec.runs import finished_runs
from metarec.train import fit


def test_names_and_directions() -> None:
    assert monitor_for("auto", "mse").key == "val/user_cold/mae"
    assert monitor_for("auto", "bce").key == "val/user_cold/loss"
    assert monitor_for("rmse", "mse").mode == "min" and not monitor_for("rmse", "mse").ranking
    m = monitor_for("full_ndcg@10", "softmax", [5, 10])
    assert (m.key, m.mode, m.ranking, m.direction) == ("val/user_cold/full_ndcg@10", "max", True, "maximize")


@pytest.mark.parametrize("setting,loss,match", [
    ("mae", "bce", "rating error"),
    ("full_recall@7", "mse", "K=7 is not in data.ranking_ks"),
    ("recall@10", "mse", "must be one of"),
    ("full_recall@", "mse", "must be one of"),
])
def test_a_name_it_cannot_be_is_one_line(setting, loss, match) -> None:
    with pytest.raises(ConfigError, match=match):
        monitor_for(setting, loss, [5, 10])


def test_the_config_refuses_a_bad_monitor() -> None:
    with pytest.raises(ConfigError, match="trainer.monitor=full_recall@3: K=3"):
        compose(["trainer.monitor=full_recall@3"])


def test_fit_selects_the_checkpoint_on_validation_recall(tmp_path) -> None:
    """With a full-ranking monitor every validation pass ranks the catalogue, and the kept checkpoint is
    the epoch with the highest validation recall (not the lowest)."""
    torch.manual_seed(0)
    cfg = compose(["data.params.n_users=150", "trainer.max_epochs=3", "trainer.patience=0", "trainer.limit_train_batches=2",
                   "trainer.monitor=full_recall@10", "data.split.scenarios=[user_cold]", "learner.lr=0.05",
                   "trainer.enable_progress_bar=false", f"run.root={tmp_path}"])
    run = fit(cfg)
    (record,) = finished_runs(run)
    with open(run / "logs" / "metrics.csv") as f:
        per_epoch = [float(r["val/user_cold/full_recall@10"]) for r in csv.DictReader(f) if r.get("val/user_cold/full_recall@10")]
    assert len(per_epoch) == 3 and max(per_epoch) > min(per_epoch), per_epoch  # else the choice says nothing
    assert record["metrics"]["val/user_cold/full_recall@10"] == pytest.approx(max(per_epoch))
    best_epoch = per_epoch.index(max(per_epoch))
    assert f"best-epoch={best_epoch}" in record["best_checkpoint"]
