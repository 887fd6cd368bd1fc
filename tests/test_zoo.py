"""The learner zoo: closed forms (Reptile, first vs second order), Meta-SGD rates, scopes, and a
``fast_dev_run`` fit of every learner config."""

from __future__ import annotations

import math

import pytest
import torch

from metarec.config import compose
from metarec.errors import ConfigError
from metarec.learners import build_learner
from metarec.learners.maml import MAMLConfig
from metarec.learners.metasgd import MetaSGDConfig
from metarec.learners.reptile import ReptileConfig
from metarec.models import MeLU, MeLUConfig
from metarec.runs import finished_runs
from metarec.train import fit
from zoo_helpers import LORA_MODEL, learner_options
from test_learners import closed_form, ctx, linear_head_model, tiny_batch, tiny_dataset



def test_reptile_update_matches_closed_form_on_linear_regression_tasks():
    """Tasks are least-squares problems in the head's (w, b): k SGD steps have a closed form.

    With X the augmented features of a task's support and y its ratings, one step is
    theta <- A theta + c with A = I - alpha 2/n X^T X, c = alpha 2/n X^T y; Reptile with plain SGD of
    step epsilon then moves theta to theta + epsilon * mean_tasks(phi_task - theta).
    """
    ds = tiny_dataset()
    batch = tiny_batch(ds)
    model = linear_head_model(ds)
    alpha, eps, k = 0.05, 0.5, 3
    learner = build_learner("reptile", model, ctx(ds), ReptileConfig(inner_lr=alpha, inner_steps=k, lr=eps, scope="head"))
    lin = model.head[0]
    theta = torch.cat([lin.weight.detach()[0], lin.bias.detach()]).clone()
    with torch.no_grad():
        h = model.body(batch.user, batch.item)
    s = batch.n_support
    phis = []
    for t in range(batch.n_tasks):
        m = batch.support_mask[t, :s]
        x = torch.cat([h[t, :s][m], torch.ones(int(m.sum()), 1, dtype=h.dtype)], 1)
        y = batch.ratings[t, :s][m]
        a = torch.eye(len(theta), dtype=h.dtype) - alpha * 2 / len(y) * x.T @ x
        c = alpha * 2 / len(y) * x.T @ y
        phi = theta.clone()
        for _ in range(k):
            phi = a @ phi + c
        phis.append(phi)
    want = theta + eps * (torch.stack(phis).mean(0) - theta)

    opt = learner.configure_optimizers()
    learner.optimizers = lambda: opt  # no Trainer here: hand the optimiser to the manual step
    learner.log = lambda *a, **kw: None
    body_before = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("head")}
    learner.training_step(batch, 0)
    got = torch.cat([lin.weight.detach()[0], lin.bias.detach()])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for n, p in model.named_parameters():  # outside the adapted scope nothing moves
        if n in body_before:
            assert torch.equal(p, body_before[n])


def test_metasgd_learning_rates_receive_gradients_and_move():
    ds = tiny_dataset()
    batch = tiny_batch(ds)
    model = linear_head_model(ds)
    learner = build_learner("metasgd", model, ctx(ds), MetaSGDConfig(inner_lr=0.05, scope="head", lr=0.01))
    lrs = list(learner.maml.lrs)
    start = [p.detach().clone() for p in lrs]
    opt = learner.configure_optimizers()
    assert {id(p) for p in lrs} <= {id(p) for g in opt.param_groups for p in g["params"]}
    for _ in range(3):
        opt.zero_grad()
        learner.meta_step(batch, train=True)[0].backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lrs)
        opt.step()
    assert all(not torch.allclose(p, s) for p, s in zip(lrs, start))


def test_second_and_first_order_coincide_where_the_hessian_term_vanishes():
    """Support inputs all zero (unknown user and item codes -> zero embeddings): the support loss is
    flat in the head's weights (H_ww = 0, H_wb = 0), so weight meta-gradients coincide; its bias
    Hessian is 2, so bias meta-gradients still differ."""
    ds = tiny_dataset()
    batch = tiny_batch(ds)
    batch.item.categorical[:, : batch.n_support] = 0
    batch.user.categorical[:] = 0
    grads = {}
    for fo in (False, True):
        model = linear_head_model(ds)
        learner = build_learner("maml", model, ctx(ds), MAMLConfig(inner_lr=0.1, first_order=fo, scope="head"))
        learner.meta_step(batch, train=True)[0].backward()
        lin = model.head[0]
        grads[fo] = (lin.weight.grad.clone(), lin.bias.grad.clone())
        torch.testing.assert_close(
            torch.cat([lin.weight.grad[0], lin.bias.grad]), closed_form(model, batch, 0.1, fo)[1]
        )
    torch.testing.assert_close(grads[False][0], grads[True][0], rtol=1e-12, atol=1e-14)
    assert not torch.allclose(grads[False][1], grads[True][1])


def _melu(ds):
    torch.manual_seed(0)
    return MeLU(ds.schema, MeLUConfig(embed_dim=4, hidden=[8, 8])).double()


def test_scopes_name_the_right_parameters():
    model = _melu(tiny_dataset())
    head = [n for n, _ in model.named_parameters() if n.startswith("head.")]
    assert model.adapted_parameter_names("head") == head  # MeLU: the decision layers
    assert model.adapted_parameter_names("output") == ["head.4.weight", "head.4.bias"]  # ANIL
    assert model.adapted_parameter_names("all") == [n for n, _ in model.named_parameters()]


@pytest.mark.parametrize("scope", ["output", "head"])
def test_inner_loop_leaves_everything_outside_the_scope_untouched(scope):
    ds = tiny_dataset()
    batch = tiny_batch(ds)
    model = _melu(ds)
    cfg = MAMLConfig(inner_lr=0.5, inner_steps=3, scope=scope, executor="learn2learn")  # inspect the clone
    learner = build_learner("maml", model, ctx(ds), cfg)
    adapter = learner.executor
    x = adapter.prefix_features(batch, detach=False)
    fast = adapter.adapt_task(batch, x, 0, steps=3, first_order=False)
    adapted = set(model.adapted_parameter_names(scope))
    named = dict(model.named_parameters())
    # the clone holds exactly the adapted parameters, and they moved
    assert len(list(fast.module.parameters())) == len(adapted)
    order = sorted(adapted, key=list(named).index)
    assert all(not torch.allclose(p, named[n]) for n, p in zip(order, fast.module.parameters()))
    # the vmap executor adapts exactly the same parameters to the same values
    vm = build_learner("maml", model, ctx(ds), MAMLConfig(inner_lr=0.5, inner_steps=3, scope=scope, executor="vmap"))
    phis, _ = vm.executor.adapted_parameters(batch, 3)
    assert len(phis) == len(adapted)
    for phi, p in zip(phis, fast.module.parameters()):
        torch.testing.assert_close(phi[0], p.detach())
    # the non-adapted computation is the same function before and after adaptation
    torch.testing.assert_close(adapter.prefix_features(batch, detach=True), x.detach())
    assert all(p.grad is None for p in model.parameters())


LEARNER_OPTIONS = learner_options()


def fast_dev_cfg(overrides: list[str], tmp_path):
    return compose([*overrides, "data.params.n_users=200", "trainer.fast_dev_run=true",
                    "trainer.enable_progress_bar=false", f"run.root={tmp_path}"])


def assert_fits(cfg, option: str) -> None:
    """The run finishes as learner ``option`` with finite metrics (ranking and, where predicted, rating)."""
    (record,) = finished_runs(fit(cfg))
    assert record["learner"] == option
    assert len(record["metrics"]) >= 16
    assert all(math.isfinite(v) for v in record["metrics"].values())


@pytest.mark.parametrize("option", sorted(LEARNER_OPTIONS))
def test_every_learner_config_passes_fast_dev_run(option, tmp_path):
    assert_fits(fast_dev_cfg(LEARNER_OPTIONS[option], tmp_path), option)


# every base model but the default one (``melu``, where the test above runs the learners that need no other)
OTHER_MODELS = {"twotower": ["model=twotower"], "transformer": [*LORA_MODEL]}


@pytest.mark.parametrize("model", sorted(OTHER_MODELS))
@pytest.mark.parametrize("option", sorted(LEARNER_OPTIONS))
def test_every_learner_runs_on_every_base_model_or_says_which_it_needs(option, model, tmp_path):
    """A learner written for any base model trains and evaluates on each of them; one written for a single
    model (``needs_model``, LoRA scopes) refuses the others in one line naming what to set."""
    learner = [o for o in LEARNER_OPTIONS[option] if not o.startswith("model")]
    cfg = fast_dev_cfg([*learner, *OTHER_MODELS[model]], tmp_path)
    needs = [o for o in LEARNER_OPTIONS[option] if o.startswith("model=")]
    if needs and needs[0] != f"model={model}":
        with pytest.raises(ConfigError, match=needs[0].replace("model=", "")) as e:
            fit(cfg)
        assert "\n" not in str(e.value)
        assert not any(tmp_path.rglob("metrics.json"))
        return
    assert_fits(cfg, option)
