"""Meta-SGD (Li et al., 2017): MAML with a learned inner learning rate per parameter entry
(learn2learn's ``MetaSGD``); the rates start at ``inner_lr`` and are meta-trained with the model."""

from __future__ import annotations

from dataclasses import dataclass

from metarec.learners.executors import LearnedRates
from metarec.learners.maml import MAML, MAMLConfig


@dataclass
class MetaSGDConfig(MAMLConfig):
    pass


class MetaSGD(MAML):
    rule = LearnedRates
