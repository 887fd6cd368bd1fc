"""Mixed precision: bf16-mixed meta-training on the CPU stays close to fp32 and keeps the second-order
meta-gradient finite; a whole run trains and tests under it."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from metarec.config import compose
from metarec.data.datamodule import ColdStartDataModule, DataConfig
from metarec.learners import LearnerContext, build_learner
from metarec.learners.maml import MAMLConfig
from metarec.models import MeLU, MeLUConfig
from metarec.runs import finished_runs
from metarec.train import fit


@pytest.fixture(scope="module")
def setup():
    dm = ColdStartDataModule(DataConfig(params={"n_users": 200}, meta_batch_size=16), seed=0)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    model = MeLU(dm.dataset.schema, MeLUConfig())
    model.set_output_bias(dm.train_rating_mean())
    ctx = LearnerContext((1.0, 5.0), dm.train_rating_mean(), ["warm"], ["user_cold"])
    return batch, model, ctx


@pytest.mark.parametrize("executor", ["vmap", "learn2learn"])
@pytest.mark.parametrize("scope, steps", [("all", 1), ("head", 5)])
def test_bf16_autocast_stays_close_to_fp32(setup, executor, scope, steps) -> None:
    batch, model, ctx = setup
    out = {}
    for mode in ("fp32", "bf16"):
        learner = build_learner("maml", copy.deepcopy(model), ctx,
                                MAMLConfig(inner_lr=0.01, inner_steps=steps, scope=scope, executor=executor))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            loss, preds = learner.meta_step(batch, train=True)
        loss.backward()
        grads = [p.grad for p in learner.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), f"{mode}: non-finite meta-gradient"
        out[mode] = (loss.detach().float(), preds.detach().float(), torch.cat([g.flatten().float() for g in grads]))
    (l32, p32, g32), (l16, p16, g16) = out["fp32"], out["bf16"]
    assert not torch.equal(p16, p32), "autocast changed nothing: bf16 was not in effect"
    assert l16 == pytest.approx(l32.item(), rel=2e-2)  # bf16 keeps ~3 significant digits
    assert (p16 - p32).abs().max() < 0.05 * p32.abs().max()
    cos = torch.nn.functional.cosine_similarity(g16, g32, dim=0)
    assert cos > 0.99, f"meta-gradient direction drifted under bf16 (cosine {cos:.4f})"


def test_a_bf16_mixed_run_trains_and_tests(tmp_path) -> None:
    cfg = compose(["data.params.n_users=200", "trainer.precision=bf16-mixed", "trainer.max_epochs=2",
                   "trainer.enable_progress_bar=false", f"run.root={tmp_path}"])
    (record,) = finished_runs(fit(cfg))
    assert record["epochs"] == 2
    assert all(math.isfinite(v) for v in record["metrics"].values())
    assert 0.3 < record["metrics"]["test/user_cold/mae"] < 2.0
