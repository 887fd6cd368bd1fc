"""Distributed training on CPU (DDP, 2 gloo processes): one meta-step at per-process meta-batch B/2
equals the single-process step at B (float64), for both executors and Reptile's manual step;
validation metrics are exact per-user averages over all processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from metarec.data.datamodule import EpochShuffleSampler, ShardSampler

HERE = Path(__file__).resolve().parent


def test_epoch_sampler_shares_each_meta_batch_between_ranks() -> None:
    n, b, world = 23, 6, 2
    single = [i for _, i in EpochShuffleSampler(n, seed=3, batch_size=b)]
    ranks = [[i for _, i in EpochShuffleSampler(n, seed=3, rank=r, world=world, batch_size=b)] for r in range(world)]
    assert len(ranks[0]) == len(ranks[1]) == n // world
    usable = single[: n - n % world]
    for k, start in enumerate(range(0, len(usable), b)):  # the k-th global meta-batch, split between ranks
        block = usable[start : start + b]
        share = len(block) // world
        assert ranks[0][k * (b // world) : k * (b // world) + share] == block[:share]
        assert ranks[1][k * (b // world) : k * (b // world) + share] == block[share:]
    assert not set(ranks[0]) & set(ranks[1])


def test_shard_sampler_covers_every_task_once() -> None:
    shards = [list(ShardSampler(11, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))


def _run(out: Path, devices: int, overrides: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH", "")])),
           "METAREC_CONFIG_DIR": str(HERE.parent / "metarec" / "configs")}
    env.pop("WANDB_MODE", None)
    proc = subprocess.run([sys.executable, str(HERE / "ddp_step.py"), str(out), str(devices), *overrides],
                          cwd=out, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


CASES = {
    "maml-vmap": ["learner.executor=vmap"],
    "maml-learn2learn": ["learner.executor=learn2learn"],
    "metasgd-head": ["learner=metasgd", "learner.scope=head"],
    "reptile": ["learner=reptile", "learner.inner_steps=2"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ddp_step_equals_the_single_process_step(case: str, tmp_path: Path) -> None:
    overrides = CASES[case]
    _run(tmp_path, 1, overrides)
    _run(tmp_path, 2, overrides)
    one, two = torch.load(tmp_path / "params_1.pt"), torch.load(tmp_path / "params_2.pt")
    assert one.keys() == two.keys()
    assert all(v.dtype == torch.float64 for v in one.values())
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-6, atol=1e-12)
    init = torch.load(tmp_path / "init_1.pt")
    moved = max((one[k] - init[k]).abs().max().item() for k in one)
    assert moved > 1e-6, "the meta-step did not change the parameters"
    v1 = json.loads((tmp_path / "val_1.json").read_text())
    v2 = json.loads((tmp_path / "val_2.json").read_text())
    for key in ("val/user_cold/mae", "val/user_cold/rmse", "val/user_cold/ndcg@3"):
        assert v2[key] == pytest.approx(v1[key], rel=1e-6), key  # float32 metric states, other summation order
    assert np.isfinite(list(v1.values())).all()


def test_cli_fit_with_ddp_cpu_makes_one_run(tmp_path: Path) -> None:
    """Lightning's DDP launcher starts a second process that runs ``fit`` too: it must use rank 0's run
    folder (not make or clear one) and stay quiet."""
    from cli_helpers import cli_env, run_cli

    proc = run_cli("fit", "trainer=ddp_cpu", "data.params.n_users=300", "trainer.max_epochs=2",
                   "trainer.enable_progress_bar=false", f"run.root={tmp_path / 'runs'}", cwd=tmp_path,
                   env=cli_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [p.parent for p in (tmp_path / "runs").rglob("config.yaml")]
    assert len(runs) == 1 and (runs[0] / "metrics.json").is_file(), runs
    assert proc.stdout.count("run finished:") == 1
    record = json.loads((runs[0] / "metrics.json").read_text())
    assert record["epochs"] == 2 and all(np.isfinite(v) for v in record["metrics"].values())


def test_meta_batch_must_split_evenly_between_processes() -> None:
    from metarec.data.datamodule import ColdStartDataModule, DataConfig
    from metarec.errors import ConfigError

    dm = ColdStartDataModule(DataConfig(meta_batch_size=8))
    assert dm.per_rank_batch(1) == 8 and dm.per_rank_batch(4) == 2
    with pytest.raises(ConfigError, match=r"data.meta_batch_size=8 must be a multiple of the number of processes \(3\)"):
        dm.per_rank_batch(3)
