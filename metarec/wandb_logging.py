"""Weights & Biases: where each run lands in W&B and what it records (``logger=wandb``, offline by default).

- group: ``logger.group``, else ``run.experiment`` for ``metarec fit``; ``metarec compare`` sets its ``--out``
  folder's name, so one comparison is one group: its training runs and its summary run.
- job_type: ``logger.job_type``, else the learner option; compare sets the learner or variant label
  (``maml@inner_steps=5``); the summary run of compare is ``compare``.
- tags: ``learner:<option>``, ``data:<source>``, ``model:<name>``, ``scenario:<name>`` per test scenario, then
  ``logger.tags`` (compare adds ``variant:<label>`` for a variant).
- summaries: a validation metric's summary holds its best value over the run (``min`` for mae, rmse and
  loss; ``max`` for ndcg, recall and hitrate), set with ``define_metric`` when it is first logged; other
  metrics keep W&B's default, the last value (test metrics are logged once).
- artifacts (``logger.artifacts=true``): the run's split manifest (type ``split``, named after its content
  hash, so the runs of one split share it) and its best checkpoint (type ``model``, aliases ``best``).

Lightning and wandb are imported by this module: import it where a W&B run is made, not at start-up.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

MANIFEST = "split_manifest.json"
MAX_TAG = 64  # W&B refuses a longer tag
STEP = "trainer/global_step"  # Lightning's x-axis for every metric
_LOWER = ("mae", "rmse", "loss", "mse", "bce")  # lower is better
_HIGHER = ("ndcg", "recall", "hitrate", "precision", "auc", "mrr")  # higher is better


def use_wandb_env(logger_cfg) -> None:
    """W&B's mode from ``logger.mode`` (an explicit ``WANDB_MODE`` wins) and no W&B chatter on the console."""
    os.environ.setdefault("WANDB_MODE", str(logger_cfg.mode))
    os.environ.setdefault("WANDB_SILENT", "true")


def summary_op(key: str) -> Optional[str]:
    """``"min"`` or ``"max"``: how a validation metric's W&B summary keeps its best value; ``None`` for any
    other metric (W&B keeps the last value). ``val/user_cold/mae`` -> min, ``val/user_cold/ndcg@3`` -> max."""
    parts = key.split("/")
    if parts[0] != "val" or len(parts) < 2:
        return None
    metric = parts[-1].split("@")[0].removeprefix("full_")
    if metric in _LOWER:
        return "min"
    if metric in _HIGHER:
        return "max"
    return None


def _tags(values: Iterable[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        v = str(v)[:MAX_TAG]
        if v and v not in out:
            out.append(v)
    return out


def _setting_tags(cfg) -> list[str]:
    return [f"data:{cfg.data.source}", f"model:{cfg.model.name}",
            *(f"scenario:{s}" for s in cfg.data.split.get("scenarios") or [])]


def run_tags(cfg, label: str) -> list[str]:
    """The automatic tags of a training run (learner, data, model, test scenarios), then ``logger.tags``."""
    return _tags([f"learner:{label}", *_setting_tags(cfg), *cfg.logger.tags])


def summary_tags(cfg, options: Iterable[str], variants: Iterable[str] = ()) -> list[str]:
    """The tags of compare's summary run: ``compare``, each learner option and variant of the grid, the
    settings of ``cfg`` (a run config of the grid) and ``logger.tags``."""
    return _tags(["compare", *(f"learner:{o}" for o in options), *(f"variant:{v}" for v in variants),
                  *_setting_tags(cfg), *cfg.logger.tags])


def run_layout(cfg, label: str) -> dict[str, Any]:
    """``{"group", "job_type", "tags"}`` of a training run; ``label``: the learner option."""
    return {"group": cfg.logger.group or cfg.run.experiment, "job_type": (cfg.logger.job_type or label)[:MAX_TAG],
            "tags": run_tags(cfg, label)}


def artifact_name(text: str) -> str:
    """``text`` with every character W&B refuses in an artifact name replaced by ``-``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "artifact"


def manifest_artifact(path: Path):
    """The split manifest as a ``split`` artifact named after its content hash (one per split)."""
    import wandb

    manifest = json.loads(path.read_text())
    art = wandb.Artifact(f"split-{manifest['content_hash'][:16]}", type="split", metadata={
        "dataset": manifest.get("dataset"), "content_hash": manifest["content_hash"],
        "stats": manifest.get("stats"), "config": manifest.get("config"),
    })
    art.add_file(str(path), name=MANIFEST)
    return art


class MetarecWandbLogger(WandbLogger):
    """Lightning's W&B logger, plus best-value summaries of the validation metrics and, with
    ``artifacts``, the split manifest and the best checkpoint logged once training ends."""

    def __init__(self, *, run_dir: Path, artifacts: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._wandb_init.pop("anonymous", None)  # Lightning passes None; W&B 0.31 warns that it has no effect
        self._run_dir = Path(run_dir)
        self._artifacts = artifacts
        self._defined: set[str] = set()
        self._checkpoint: Optional[pl.callbacks.ModelCheckpoint] = None
        self._logged: set[str] = set()  # what was logged as an artifact

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        for key in metrics:
            if key in self._defined:
                continue
            self._defined.add(key)
            op = summary_op(key)
            if op is not None:  # keep Lightning's x-axis for the metric defined by name
                self.experiment.define_metric(key, step_metric=STEP, step_sync=True, summary=op)
        super().log_metrics(metrics, step)

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        self._checkpoint = checkpoint_callback
        super().after_save_checkpoint(checkpoint_callback)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Called when fit ends and after each test pass; a successful end logs what is not yet logged."""
        super().finalize(status)
        if status == "success" and self._artifacts:
            self.log_artifacts()

    def log_artifacts(self) -> None:
        run = self.experiment
        manifest = self._run_dir / MANIFEST
        if MANIFEST not in self._logged and manifest.is_file():
            run.log_artifact(manifest_artifact(manifest))
            self._logged.add(MANIFEST)
        cb = self._checkpoint
        best = Path(cb.best_model_path) if cb is not None and cb.best_model_path else None
        if best is None or str(best) in self._logged or not best.is_file():
            return
        import wandb

        score = cb.best_model_score
        art = wandb.Artifact(f"model-{run.id}", type="model", metadata={
            "run_dir": self._run_dir.name, "file": os.path.relpath(best, self._run_dir), "monitor": cb.monitor,
            "mode": cb.mode, "score": float(score) if score is not None else None,
        })
        art.add_file(str(best), name=best.name)
        run.log_artifact(art, aliases=["best", "latest"])
        self._logged.add(str(best))


def lightning_logger(cfg, run_dir: Path, label: str) -> MetarecWandbLogger:
    """The W&B logger of one training run; ``label``: the learner option (``learner_label``)."""
    from omegaconf import OmegaConf

    use_wandb_env(cfg.logger)
    return MetarecWandbLogger(
        run_dir=run_dir,
        artifacts=bool(cfg.logger.artifacts),
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        save_dir=str(run_dir),
        name=run_dir.name,
        config=OmegaConf.to_container(cfg, resolve=True),
        **run_layout(cfg, label),
    )


def finish_run() -> None:
    """End the active W&B run, if any (``fit`` leaves its run open), so that the next one gets its own."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


# ------------------------------------------------------------------------- the summary run of compare
def _plain(v):
    return v if not isinstance(v, float) or math.isfinite(v) else None


def curve_tables(stats: Mapping[tuple, Any], learners: list[str], support_sizes: list[int],
                 metrics: Iterable[str], users: Optional[Mapping] = None) -> dict[str, tuple[str, list, list]]:
    """``{"curves/<metric>/<scenario>": (metric, columns, rows)}``: one row per learner and support size K
    with a finite mean over seeds (columns learner, support_size, the metric, ci_low, ci_high, seeds,
    test_users)."""
    out: dict[str, tuple[str, list, list]] = {}
    for metric in metrics:
        scenarios = sorted({k[2] for k in stats if k[3] == metric and k[1] != "all"})
        for scenario in scenarios:
            rows = []
            for learner in learners:
                for k in support_sizes:
                    s = stats.get((learner, k, scenario, metric))
                    if s is None or s.n == 0 or not math.isfinite(s.mean):
                        continue
                    half = s.half_width if math.isfinite(s.half_width) else 0.0
                    rows.append([learner, int(k), s.mean, s.mean - half, s.mean + half, s.n,
                                 (users or {}).get((scenario, k))])
            if rows:
                columns = ["learner", "support_size", metric, "ci_low", "ci_high", "seeds", "test_users"]
                out[f"curves/{metric}/{scenario}"] = (metric, columns, rows)
    return out


def log_summary_run(logger_cfg, out: Path, layout: dict[str, Any], rows: list[dict], stats: Mapping[tuple, Any],
                    images: list[Path], config: dict, curves: Mapping[str, tuple[str, list, list]],
                    csv_columns: Iterable[str], files: Iterable[Path] = ()) -> Path:
    """One W&B run (under ``out/wandb``, in ``layout``'s group with job_type ``compare``) holding the results
    and summary tables, the support-size curves as native line plots, and the static plots; with
    ``logger.artifacts`` also the split manifest and ``files`` (results.csv, results.md) as artifacts.
    Returns the run's local folder."""
    use_wandb_env(logger_cfg)
    import wandb

    finish_run()
    run = wandb.init(project=logger_cfg.project, entity=logger_cfg.entity, dir=str(out),
                     name=f"compare-{out.name}", config=config, **layout)
    try:
        columns = list(csv_columns)
        results = wandb.Table(columns=columns, data=[[_plain(r[c]) if c != "support_size" else str(r[c])
                                                      for c in columns] for r in rows])
        order = sorted(stats.items(), key=lambda kv: (kv[0][0], (1, 0) if kv[0][1] == "all" else (0, int(kv[0][1])),
                                                      kv[0][2:]))
        summary = wandb.Table(
            columns=["learner", "support_size", "scenario", "metric", "n", "mean", "std", "ci95_half_width"],
            data=[[k[0], str(k[1]), k[2], k[3], s.n, _plain(s.mean), _plain(s.std), _plain(s.half_width)]
                  for k, s in order],
        )
        payload: dict[str, Any] = {"results": results, "summary": summary}
        for key, (metric, cols, data) in curves.items():
            scenario = key.rsplit("/", 1)[-1]
            payload[key] = wandb.plot.line(wandb.Table(columns=cols, data=data), "support_size", metric,
                                           stroke="learner", title=f"{metric} by support size K, {scenario}")
        for p in images:
            payload[p.stem] = wandb.Image(str(p), caption=p.stem)
        run.log(payload)
        if logger_cfg.artifacts:
            if (out / MANIFEST).is_file():
                run.log_artifact(manifest_artifact(out / MANIFEST))
            art = wandb.Artifact(artifact_name(f"results-{out.name}"), type="results", metadata=config)
            for f in files:
                art.add_file(str(f), name=Path(f).name)
            run.log_artifact(art)
        local = Path(run.dir).parent
    finally:
        run.finish()
    return local
