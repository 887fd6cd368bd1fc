"""``data.rating_grid``: every learner's rating predictions snapped to the training ratings' grid, in
evaluation and in serving alike (``MetaLearner.to_prediction``)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_learners import ctx, tiny_batch, tiny_dataset

from metarec.cli import main
from metarec.config import compose, validate
from metarec.errors import ConfigError
from metarec.learners import build_learner
from metarec.learners.base import TIE_SHARE, rating_values, snap_to_grid
from metarec.learners.maml import MAMLConfig
from metarec.learners.ridge import RidgeConfig
from metarec.models import MeLU, MeLUConfig, TwoTower, TwoTowerConfig
from metarec.recommend import Recommender
from metarec.runs import config_difference
from metarec.train import fit

OUT = torch.tensor([-3.0, 1.2, 1.8, 2.2, 3.2, 3.3, 4.4, 7.0], dtype=torch.float64)
NEAREST = torch.tensor([1.0, 1.0, 2.5, 2.5, 2.5, 4.0, 4.0, 4.0], dtype=torch.float64)  # grid 1, 2.5, 4


def _learners(context):
    ds = tiny_dataset()
    torch.manual_seed(0)
    melu = MeLU(ds.schema, MeLUConfig(embed_dim=2, hidden=[4])).double()
    two = TwoTower(ds.schema, TwoTowerConfig(embed_dim=4, dim=4, user_hidden=[8], item_hidden=[8])).double()
    return {"maml": build_learner("maml", melu, context, MAMLConfig()).double(),
            "ridge": build_learner("ridge", two, context, RidgeConfig()).double()}


def test_every_learner_predicts_the_nearest_grid_value_keeping_the_order() -> None:
    """Each prediction is the nearest rating value of the training data (to the clipped prediction) up to
    ``TIE_SHARE`` times the distance; the predictions keep the real-valued ones' order; training (real-valued
    outputs) is unchanged, whichever learner."""
    ds = tiny_dataset()
    base = dataclasses.replace(ctx(ds), train_items=(None, np.array([4.0, 1.0, 2.5, 2.5, 1.0])))
    grid = rating_values(base.train_items[1])
    assert grid.tolist() == [1.0, 2.5, 4.0]
    plain, snapped = _learners(base), _learners(dataclasses.replace(base, rating_grid=grid))
    batch = tiny_batch(ds)
    for name in plain:
        real, pred = plain[name].to_prediction(OUT), snapped[name].to_prediction(OUT)
        torch.testing.assert_close(real, OUT.clamp(1.0, 5.0))
        assert ((pred - NEAREST).abs() <= TIE_SHARE * (real - NEAREST).abs() + 1e-12).all(), name
        assert ((pred[1:] > pred[:-1]) == (real[1:] > real[:-1])).all(), name
        torch.testing.assert_close(snapped[name].training_loss(batch)[0], plain[name].training_loss(batch)[0])
    torch.testing.assert_close(snap_to_grid(OUT.clamp(1, 5), grid), snapped["maml"].to_prediction(OUT))


def test_a_grid_needs_at_most_twenty_distinct_ratings() -> None:
    with pytest.raises(ConfigError, match="data.rating_grid=false"):
        rating_values(np.linspace(1, 5, 100))
    with pytest.raises(ConfigError, match="the training data have 0"):
        rating_values(np.array([]))
    assert rating_values(np.arange(1, 5.5, 0.5)).tolist() == [1.0 + 0.5 * i for i in range(9)]  # half stars


def test_fit_and_serve_on_the_grid(tmp_path: Path) -> None:
    """A run with ``data.rating_grid=true`` reports MAE on whole stars, and ``Recommender.predict`` serves
    the same snapped predictions (``clip=False``: the raw ratings); the same run without it does not snap. A
    run folder saved with the former ``learner.rating_grid`` loads and compares as ``data.rating_grid``."""
    common = ["data.params.n_users=120", "data.params.round_ratings=true", "trainer.max_epochs=1",
              "trainer.enable_progress_bar=false", f"run.root={tmp_path}"]
    runs = {g: fit(compose([*common, f"run.name={g}", f"data.rating_grid={g}"])) for g in ("true", "false")}
    recs = {g: Recommender.load(path) for g, path in runs.items()}
    rec = recs["true"]
    assert rec.learner.ctx.rating_grid.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert recs["false"].learner.ctx.rating_grid is None
    items = rec.item_ids[:50]
    support = list(zip(rec.item_ids[60:65].tolist(), [5.0, 4.0, 1.0, 3.0, 5.0]))
    for g, r in recs.items():
        user = r.adapt(support)
        pred, raw = user.predict(items), user.predict(items, clip=False)
        off = np.abs(pred - np.round(pred))
        if g == "true":
            assert (off <= TIE_SHARE * 0.5 + 1e-6).all()
            np.testing.assert_allclose(np.round(pred), np.clip(np.round(raw), 1, 5))
            shown = np.array([v for _, _, v in user.recommend(3)])  # recommend shows the served prediction
            assert (np.abs(shown - np.round(shown)) <= TIE_SHARE * 0.5 + 1e-6).all()
        else:
            assert off.max() > 0.01  # real-valued
            np.testing.assert_allclose(pred, np.clip(raw, 1, 5), rtol=1e-6)

    # a run folder saved before the option moved (ridge's `learner.rating_grid`) still loads, compares, reports
    old = tmp_path / "old"
    shutil.copytree(runs["true"], old)
    saved = yaml.safe_load((old / "config.yaml").read_text())
    del saved["data"]["rating_grid"]
    saved["learner"]["rating_grid"] = True
    (old / "config.yaml").write_text(yaml.safe_dump(saved))
    assert Recommender.load(old).learner.ctx.rating_grid.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert config_difference(old, validate(compose([*common, "run.name=true", "data.rating_grid=true"]))) is None
    assert config_difference(old, validate(compose([*common, "run.name=true"])))[0] == "data.rating_grid"


@pytest.mark.parametrize("extra, message", [
    (["data.params.round_ratings=false"], "needs ratings on a grid"),
    (["data.params.round_ratings=true", "data.negatives.per_positive=2"], "needs explicit ratings"),
])
def test_bad_grid_settings_exit_2_with_one_line(tmp_path: Path, capsys, extra, message) -> None:
    code = main(["fit", "data.params.n_users=60", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                 f"run.root={tmp_path}", "data.rating_grid=true", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0] and "data.rating_grid=false" in err[0], err
