"""Meta-learners and baselines, registered by name; each pairs a LightningModule with its config.

Adding a learner: a module with a config dataclass and a ``MetaLearner`` subclass (the contract is in
``base.py``), one ``register`` line below (or, from another package, an entry point in the group
``metarec.learners``: ``docs/EXTENDING.md``), one YAML file in ``metarec/configs/learner/``. Presets of a
registered learner are YAML only.
"""

from __future__ import annotations

from typing import Any

from metarec.learners.amortised import Amortised, AmortisedConfig
from metarec.learners.base import LearnerContext, MetaLearner
from metarec.learners.baselines import (
    FineTune, FineTuneConfig, GlobalConfig, GlobalModel, ItemMean, ItemMeanConfig, UserMean, UserMeanConfig,
)
from metarec.learners.bias import Bias, BiasConfig
from metarec.learners.ease import EASE, EASEConfig
from metarec.learners.itemknn import ItemKNN, ItemKNNConfig
from metarec.learners.fism import FISM, FISMConfig
from metarec.learners.maml import MAML, MAMLConfig
from metarec.learners.metasgd import MetaSGD, MetaSGDConfig
from metarec.learners.popularity import Popularity, PopularityConfig
from metarec.learners.reptile import Reptile, ReptileConfig
from metarec.learners.ridge import Ridge, RidgeConfig
from metarec.models.base import BaseRecommender
from metarec.registry import Registry

LEARNERS: Registry[MetaLearner] = Registry("learner")
LEARNERS.register("maml", MAMLConfig, help="MAML / FOMAML / ANIL / MeLU via learn2learn MAML")(MAML)
LEARNERS.register("metasgd", MetaSGDConfig, help="Meta-SGD: learned per-parameter inner rates")(MetaSGD)
LEARNERS.register("reptile", ReptileConfig, help="Reptile: first-order, theta += eps * (phi - theta)")(Reptile)
LEARNERS.register("amortised", AmortisedConfig,
                  help="TaNP-style: a set/attention encoder of the support conditions the model, no inner steps")(Amortised)
LEARNERS.register("global", GlobalConfig, help="base model trained on all warm ratings, no adaptation")(GlobalModel)
LEARNERS.register("finetune", FineTuneConfig, help="global model + SGD on the user's support at test")(FineTune)
LEARNERS.register("item_mean", ItemMeanConfig, help="each item's mean training rating")(ItemMean)
LEARNERS.register("popularity", PopularityConfig, help="items ranked by training interactions")(Popularity)
LEARNERS.register("user_mean", UserMeanConfig, help="the user's support mean")(UserMean)
LEARNERS.register("bias", BiasConfig,
                  help="mu + item bias + the user's bias folded in from the support (Koren's baseline predictor)")(Bias)
LEARNERS.register("fism", FISMConfig,
                  help="two-tower user vector folded in from the support's item vectors, meta-trained")(FISM)
LEARNERS.register("ridge", RidgeConfig,
                  help="two-tower user vector solved in closed form from the support (Bayesian prior), meta-trained")(Ridge)
LEARNERS.register("itemknn", ItemKNNConfig, help="item-item cosine CF, new user folded in from the support")(ItemKNN)
LEARNERS.register("ease", EASEConfig, help="EASE closed-form item-item model, new user folded in")(EASE)


def build_learner(name: str, model: BaseRecommender, ctx: LearnerContext, cfg: Any) -> MetaLearner:
    return LEARNERS.get(name).factory(model, ctx, cfg)


__all__ = ["LEARNERS", "LearnerContext", "MetaLearner", "build_learner"]
