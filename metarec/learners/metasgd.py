"""Meta-SGD (Li et al., 2017): MAML with a learned inner learning rate per parameter entry
(learn2learn's ``MetaSGD``); the rates start at ``inner_lr`` and are meta-trained with the model."""

from __future__ import annotations

from dataclasses import dataclass

from metarec._l2l import l2l
from metarec.learners.maml import MAML, MAMLConfig


@dataclass
class MetaSGDConfig(MAMLConfig):
    pass


class MetaSGD(MAML):
    wrapper_cls = l2l.algorithms.MetaSGD
