"""Inner update rules: how one inner step moves the adapted parameters, p <- p - rate(p) * g.

A rule is an object that both executors consult (and so everything that adapts through them: training,
evaluation, serving) instead of code that asks which learn2learn class it holds. The rates live in a
learn2learn algorithm module (``wrap``) registered with the learner, so the reference and the vmap
executor train the very same parameters (Meta-SGD's learned rates are meta-parameters).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from metarec._l2l import l2l


class InnerRule:
    """Base rule: ``lr`` is the (starting) inner learning rate."""

    scalar = True  # one float for every parameter (the vmap executor's factored first layer needs it)

    def __init__(self, lr: float) -> None:
        self.lr = float(lr)

    def wrap(self, module: nn.Module, first_order: bool) -> nn.Module:
        """The learn2learn algorithm around the adapted module (it owns any learned rates)."""
        raise NotImplementedError

    def rates(self, wrapper: nn.Module, all_names: list[str], names: list[str]) -> dict[str, Any]:
        """The rate of each adapted parameter in ``names`` (a float, or a tensor shaped like it)."""
        raise NotImplementedError

    def l2l_adapt(self, clone: nn.Module, loss, first_order: bool) -> None:
        """One step of learn2learn's own ``adapt`` on a ``clone()`` of the wrapper."""
        raise NotImplementedError

    def l2l_update(self, clone: nn.Module, grads: list) -> nn.Module:
        """learn2learn's update of the clone's module with given (e.g. clipped) gradients, one per
        parameter (``None``: unchanged)."""
        raise NotImplementedError


class ScalarRate(InnerRule):
    """MAML and its presets, Reptile, ``finetune``: one fixed rate for every parameter."""

    def wrap(self, module: nn.Module, first_order: bool) -> nn.Module:
        return l2l.algorithms.MAML(module, lr=self.lr, first_order=first_order)

    def rates(self, wrapper: nn.Module, all_names: list[str], names: list[str]) -> dict[str, Any]:
        return {n: self.lr for n in names}

    def l2l_adapt(self, clone: nn.Module, loss, first_order: bool) -> None:
        clone.adapt(loss, first_order=first_order, allow_unused=True)

    def l2l_update(self, clone: nn.Module, grads: list) -> nn.Module:
        return l2l.algorithms.maml_update(clone.module, clone.lr, grads)


class LearnedRates(InnerRule):
    """Meta-SGD (Li et al., 2017): a learned rate per parameter entry, starting at ``lr``."""

    scalar = False

    def wrap(self, module: nn.Module, first_order: bool) -> nn.Module:
        return l2l.algorithms.MetaSGD(module, lr=self.lr, first_order=first_order)

    def rates(self, wrapper: nn.Module, all_names: list[str], names: list[str]) -> dict[str, Any]:
        by_name = dict(zip(all_names, wrapper.lrs))  # one rate tensor per module parameter
        return {n: by_name[n] for n in names}

    def l2l_adapt(self, clone: nn.Module, loss, first_order: bool) -> None:
        clone.adapt(loss, first_order=first_order)

    def l2l_update(self, clone: nn.Module, grads: list) -> nn.Module:
        return l2l.algorithms.meta_sgd_update(clone.module, clone.lrs, grads)
