"""Meta-learners and baselines, registered by name; each pairs a LightningModule with its config."""

from __future__ import annotations

from typing import Any

from metarec.learners.base import LearnerContext, MetaLearner
from metarec.learners.baselines import GlobalConfig, GlobalModel, ItemMean, ItemMeanConfig
from metarec.learners.maml import MAML, MAMLConfig
from metarec.models.base import BaseRecommender
from metarec.registry import Registry

LEARNERS: Registry[MetaLearner] = Registry("learner")
LEARNERS.register("maml", MAMLConfig, help="MAML / FOMAML via learn2learn clone/adapt")(MAML)
LEARNERS.register("global", GlobalConfig, help="base model trained on all warm ratings, no adaptation")(GlobalModel)
LEARNERS.register("item_mean", ItemMeanConfig, help="each item's mean training rating")(ItemMean)


def build_learner(name: str, model: BaseRecommender, ctx: LearnerContext, cfg: Any) -> MetaLearner:
    return LEARNERS.get(name).factory(model, ctx, cfg)


__all__ = ["LEARNERS", "LearnerContext", "MetaLearner", "build_learner"]
