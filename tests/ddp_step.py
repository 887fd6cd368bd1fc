"""One meta-step (then one validation pass) of a tiny float64 run, single-process or DDP on CPU (gloo);
rank 0 saves the parameters before and after the step and the validation metrics. Run by tests/test_distributed.py:

    python tests/ddp_step.py OUT DEVICES [override ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from metarec.config import compose
from metarec.assembly import build, quiet_lightning
from metarec.train import make_trainer


def main() -> None:
    out, devices, overrides = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    cfg = compose([
        "data.params.n_users=200", "data.meta_batch_size=8", "data.eval_batch_size=7", f"trainer.devices={devices}",
        f"trainer.strategy={'ddp' if devices > 1 else 'auto'}", "trainer.max_steps=1", "trainer.precision=64-true",
        "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false", f"run.root={out}", *overrides,
    ])
    quiet_lightning()
    dm, learner = build(cfg)
    trainer, _ = make_trainer(cfg, out / f"run{devices}", False)
    init = {n: p.detach().double().clone() for n, p in learner.named_parameters()}
    trainer.fit(learner, datamodule=dm)
    trainer.limit_val_batches = 1.0  # off during the step, all of it now
    metrics = trainer.validate(learner, datamodule=dm, verbose=False)[0]
    if trainer.global_rank == 0:
        params = {n: p.detach().double().clone() for n, p in learner.named_parameters()}
        torch.save(params, out / f"params_{devices}.pt")
        torch.save(init, out / f"init_{devices}.pt")
        (out / f"val_{devices}.json").write_text(json.dumps({k: float(v) for k, v in metrics.items()}))


if __name__ == "__main__":
    main()
