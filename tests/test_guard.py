"""Non-finite guard and inner-gradient clipping: divergence at a too-large inner learning rate."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from metarec.config import compose
from metarec.errors import NonFiniteError
from metarec.learners import build_learner
from metarec.learners.maml import MAMLConfig
from metarec.runs import finished_runs
from metarec.train import build, fit
from test_executors import dm, setup  # noqa: F401  (fixtures)

DIVERGING = ["data.params.n_users=200", "trainer.max_epochs=1", "learner.inner_lr=1e6", "learner.inner_steps=5",
             "trainer.enable_progress_bar=false"]


def test_fail_policy_stops_at_the_first_non_finite_step_with_a_useful_message(tmp_path):
    cfg = compose([*DIVERGING, "trainer.nonfinite=fail", f"run.root={tmp_path}"])
    with pytest.raises(NonFiniteError) as err:
        fit(cfg)
    msg = str(err.value)
    assert "maml" in msg and "meta-step 0" in msg and "learner.inner_lr" in msg and "\n" not in msg
    assert finished_runs(tmp_path) == []  # the failed run is not marked finished


def test_skip_policy_drops_steps_counts_them_and_fails_past_the_limit(tmp_path):
    cfg = compose([*DIVERGING, "trainer.nonfinite=skip", "trainer.max_nonfinite=2", f"run.root={tmp_path}"])
    with pytest.raises(NonFiniteError, match="3 meta-steps skipped, more than trainer.max_nonfinite=2"):
        fit(cfg)


def test_skipped_steps_leave_the_parameters_untouched(tmp_path):
    cfg = compose([*DIVERGING, "trainer.max_nonfinite=1000", f"run.root={tmp_path}", "trainer.limit_train_batches=3"])
    dm, learner = build(cfg)
    before = copy.deepcopy(learner.state_dict())
    import pytorch_lightning as pl

    trainer = pl.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, inference_mode=False)
    with pytest.raises(NonFiniteError, match="nothing was trained"):  # every step skipped
        trainer.fit(learner, train_dataloaders=dm.train_dataloader())
    assert learner.skipped_steps == 3
    after = learner.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_inner_gradient_clipping_keeps_the_same_setting_finite(tmp_path):
    cfg = compose([*DIVERGING, "learner.inner_lr=10", "learner.inner_grad_clip=0.1", "trainer.nonfinite=fail",
                   f"run.root={tmp_path}"])
    run = fit(cfg)
    (record,) = finished_runs(run)
    assert all(math.isfinite(v) for v in record["metrics"].values())


@pytest.mark.parametrize("scope", ["head", "all"])
def test_clipped_inner_steps_agree_between_executors(setup, scope):  # noqa: F811
    batch, ctx, model = setup
    results = []
    for executor in ("learn2learn", "vmap"):
        cfg = MAMLConfig(inner_lr=0.5, inner_steps=3, scope=scope, executor=executor, inner_grad_clip=0.05)
        learner = build_learner("maml", copy.deepcopy(model), ctx, cfg)
        loss, _ = learner.meta_step(batch, train=True)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}))
    (l1, g1), (l2, g2) = results
    torch.testing.assert_close(l1, l2, rtol=1e-6, atol=1e-9)
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], rtol=1e-6, atol=1e-9)
    # clipping is active: the unclipped loss differs
    plain = build_learner("maml", copy.deepcopy(model), ctx, MAMLConfig(inner_lr=0.5, inner_steps=3, scope=scope))
    assert not torch.allclose(plain.meta_step(batch, train=True)[0].detach(), l1)


def test_a_run_whose_every_step_was_skipped_is_never_marked_finished(tmp_path):
    """Fewer skips than trainer.max_nonfinite, but no step trained anything: an error, not a finished run."""
    cfg = compose([*DIVERGING, "trainer.max_nonfinite=1000", "trainer.limit_train_batches=3", f"run.root={tmp_path}"])
    with pytest.raises(NonFiniteError) as err:
        fit(cfg)
    msg = str(err.value)
    assert "all 3 meta-steps" in msg and "nothing was trained" in msg and "learner.inner_lr" in msg
    assert "\n" not in msg
    assert finished_runs(tmp_path) == []
