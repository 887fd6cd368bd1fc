"""One trial of ``metarec tune``: train a config as ``metarec fit`` does (``assembly.build`` and the
trainer of :mod:`metarec.train`, with its checkpointing and early stopping), report the validation
metric to Optuna after every epoch (pruning), never test. The trial's data module keeps only the
validation episodes; asking it for test episodes raises :class:`TestUsersRead`."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

from metarec.errors import ConfigError, NonFiniteError


class TestUsersRead(RuntimeError):
    """A tuning trial asked for test episodes (a bug: tuning sees the validation users only)."""

    __test__ = False  # not a pytest test class


def validation_only(dm) -> None:
    """Keep only the validation episodes in ``dm``'s split; asking it for test episodes is an error."""
    from metarec.data.scenarios import VAL

    dm.split = dataclasses.replace(dm.split, episodes={VAL: dm.split.episodes[VAL]})

    def refuse(*args, **kwargs):
        raise TestUsersRead("a tuning trial asked for test episodes; tuning sees the validation users only")

    dm.test_dataloader = refuse
    dm.test_tasks = refuse
    dm.for_support_size = refuse


def _report_callback(trial, monitor: str):
    """Reports ``monitor`` to the Optuna trial after every validation; raises ``TrialPruned`` when the
    pruner says so (or when the value is not finite)."""
    import optuna
    import pytorch_lightning as pl

    class ReportToTrial(pl.Callback):
        def on_validation_end(self, trainer, pl_module) -> None:
            value = trainer.callback_metrics.get(monitor)
            if value is None or trainer.sanity_checking:
                return
            value, epoch = float(value), int(trainer.current_epoch)
            if not math.isfinite(value):
                trial.set_user_attr("note", f"non-finite {monitor} after epoch {epoch}")
                raise optuna.TrialPruned()
            trial.report(value, epoch)
            if trial.should_prune():
                trial.set_user_attr("note", f"pruned after epoch {epoch} ({monitor} {value:.4f})")
                raise optuna.TrialPruned()

    return ReportToTrial()


def run_trial(cfg, trial_dir: Path, trial, metric: str) -> float:
    """Train one trial's config as ``fit`` does, without testing; its best validation ``metric`` (the key
    of ``metarec.train.run_monitor(cfg)``, which checkpointing and pruning watch)."""
    import optuna
    from lightning_fabric.utilities.exceptions import MisconfigurationException
    from omegaconf import OmegaConf

    from metarec.assembly import build, quiet_lightning
    from metarec.runs import atomic_write_text
    from metarec.train import make_trainer

    quiet_lightning()
    if trial_dir.exists():
        shutil.rmtree(trial_dir)
    trial_dir.mkdir(parents=True)
    atomic_write_text(trial_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    try:
        dm, learner = build(cfg)
        validation_only(dm)
        trainer, checkpoint = make_trainer(cfg, trial_dir, learner.needs_training)
        trainer.callbacks.append(_report_callback(trial, metric))
        if learner.needs_training:
            trainer.fit(learner, datamodule=dm, weights_only=True)
            if trainer.interrupted:
                raise KeyboardInterrupt
            score = checkpoint.best_model_score
        else:
            results = trainer.validate(learner, datamodule=dm, verbose=False)
            score = results[0].get(metric) if results else None
    except MisconfigurationException as e:
        raise ConfigError(f"Lightning rejected the trainer settings: {' '.join(str(e).split())}") from None
    except NonFiniteError as e:  # diverged: a bad setting, scored as a pruned trial (it spent its budget)
        trial.set_user_attr("note", f"non-finite training: {str(e).split(';')[0]}")
        raise optuna.TrialPruned() from None
    finally:
        shutil.rmtree(trial_dir / "checkpoints", ignore_errors=True)
        if cfg.logger.name == "wandb":  # one W&B run per trial (as fit ends its run)
            import wandb

            wandb.finish()
    if score is None:
        raise ConfigError(f"learner {cfg.choices.learner!r} logs no validation {metric}, so it cannot be tuned; "
                          f"give it an empty search space (params: {{}})")
    value = float(score)
    if not math.isfinite(value):
        trial.set_user_attr("note", f"non-finite {metric}")
        raise optuna.TrialPruned()
    return value
