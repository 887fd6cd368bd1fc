"""``data.rating_loss=mae``: the training objective's loss on explicit ratings is the absolute error of the query
(every rating for a global model); inner loops keep the squared error of the support; both executors agree."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from metarec.config import compose, validate
from metarec.data.datamodule import ColdStartDataModule, DataConfig
from metarec.data.splits import SplitConfig
from metarec.errors import ConfigError
from metarec.learners import LearnerContext, build_learner
from metarec.learners.baselines import GlobalConfig
from metarec.learners.maml import MAMLConfig
from metarec.learners.reptile import ReptileConfig
from metarec.models import MeLU, MeLUConfig
from metarec.monitor import monitor_for


@pytest.fixture(scope="module")
def setup():
    dm = ColdStartDataModule(DataConfig(params={"n_users": 120}, split=SplitConfig(), meta_batch_size=5), seed=0)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    batch.ratings = batch.ratings.double()
    batch.item.multihot = batch.item.multihot.double()
    batch.user.multihot = batch.user.multihot.double()
    torch.manual_seed(0)
    model = MeLU(dm.dataset.schema, MeLUConfig(embed_dim=8, hidden=[16, 16])).double()
    return batch, model


def ctx(loss: str) -> LearnerContext:
    return LearnerContext((1.0, 5.0), 3.5, ["warm"], ["user_cold"], loss=loss)


def test_the_data_section_takes_mse_or_mae_and_names_them_otherwise() -> None:
    assert DataConfig(rating_loss="mae").rating_loss == "mae"
    with pytest.raises(ConfigError, match="data.rating_loss must be one of mse, mae"):
        DataConfig(rating_loss="l1")
    with pytest.raises(ConfigError, match="data.rating_loss"):
        validate(compose(["data.rating_loss=huber"]))


def test_mae_is_a_rating_loss_whose_monitor_is_the_mae() -> None:
    assert not ctx("mae").binary_labels and ctx("bce").binary_labels
    assert monitor_for("auto", "mae").key.endswith("/mae")
    assert monitor_for("rmse", "mae").key.endswith("/rmse")  # a rating error: allowed, as under mse


@pytest.mark.parametrize("executor", ["learn2learn", "vmap"])
def test_maml_takes_inner_steps_on_the_squared_error_and_scores_the_query_by_absolute_error(setup, executor) -> None:
    """Under mae the query loss is the mean absolute error of the adapted predictions, and the adaptation
    (hence those predictions) is the one squared error gives: equal to the mse learner's predictions."""
    batch, model = setup
    cfg = MAMLConfig(inner_lr=0.05, inner_steps=2, scope="all", executor=executor)
    by_loss = {loss: build_learner("maml", copy.deepcopy(model), ctx(loss), cfg) for loss in ("mse", "mae")}
    (l_mse, p_mse), (l_mae, p_mae) = (by_loss[k].meta_step(batch, train=True) for k in ("mse", "mae"))
    torch.testing.assert_close(p_mae, p_mse, rtol=1e-9, atol=1e-12)
    _, y, m = batch.part("query")
    mf = m.double()
    per_task = lambda e: ((e * mf).sum(1) / mf.sum(1).clamp_min(1)).mean()  # noqa: E731
    torch.testing.assert_close(l_mae, per_task((p_mae - y).abs()))
    torch.testing.assert_close(l_mse, per_task((p_mse - y) ** 2))
    assert not torch.allclose(l_mae, l_mse)


@pytest.mark.parametrize("scope", ["head", "all"])
def test_both_executors_give_the_same_mae_meta_gradient(setup, scope) -> None:
    batch, model = setup
    grads = []
    for executor in ("learn2learn", "vmap"):
        learner = build_learner("maml", copy.deepcopy(model), ctx("mae"),
                                MAMLConfig(inner_lr=0.05, inner_steps=3, scope=scope, executor=executor))
        learner.meta_step(batch, train=True)[0].backward()
        grads.append({n: p.grad for n, p in learner.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-6, atol=1e-9)


def test_a_global_model_trains_on_the_absolute_error_of_every_rating(setup) -> None:
    batch, model = setup
    learner = build_learner("global", copy.deepcopy(model), ctx("mae"), GlobalConfig())
    loss, _ = learner.meta_step(batch, train=True)
    every = (batch.support_mask | batch.query_mask).double()
    pred = learner.model(batch.user, batch.item)
    torch.testing.assert_close(loss, ((pred - batch.ratings).abs() * every).sum() / every.sum())


def test_reptile_refuses_mae_it_would_change_nothing(setup) -> None:
    _, model = setup
    with pytest.raises(ConfigError, match="reptile has no query objective.*data.rating_loss=mse"):
        build_learner("reptile", copy.deepcopy(model), ctx("mae"), ReptileConfig())


def test_fit_with_mae_trains_and_saves_the_setting(tmp_path) -> None:
    import yaml

    from metarec.runs import finished_runs
    from metarec.train import fit

    cfg = compose(["data=synthetic", "data.params.n_users=120", "trainer.fast_dev_run=true", f"run.root={tmp_path}",
                   "data.rating_loss=mae", "learner=maml"])
    (record,) = finished_runs(fit(cfg))
    saved = yaml.safe_load((Path(record["run_dir"]) / "config.yaml").read_text())
    assert saved["data"]["rating_loss"] == "mae"
    assert math.isfinite(record["metrics"]["test/user_cold/mae"])


def test_report_keeps_mse_and_mae_runs_in_tables_of_their_own() -> None:
    from omegaconf import OmegaConf

    from metarec.report import _feedback

    mae = OmegaConf.create({"data": {"negatives": {"per_positive": 0, "loss": "bce"}, "rating_loss": "mae"}})
    old = OmegaConf.create({"data": {"negatives": {"per_positive": 0, "loss": "bce"}}})  # saved before the option
    assert _feedback(mae) == (False, "explicit ratings, loss mae")
    assert _feedback(old) == (False, "explicit ratings, loss mse")
