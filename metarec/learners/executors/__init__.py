"""Executors: how the per-task inner loop runs. The algorithm is the same for both:

    for each task:  theta_t = theta;  repeat k times: theta_t -= lr * grad L_support(theta_t)
                    loss_t = L_query(theta_t)

where theta are the parameters of the adapted scope (see ``BaseRecommender.scope_split``; under
``lora`` only the adapters and the head of the adapted module, ``BaseRecommender.adapts``, the rest of
it being used as is) and ``lr`` is a float (MAML) or a tensor per parameter (Meta-SGD). The
non-adapted prefix of the model runs once per meta-batch in both executors.

- ``learn2learn``: the reference. ``l2l.algorithms.MAML`` / ``MetaSGD`` ``clone()`` + ``adapt()``,
  one task at a time.
- ``vmap``: the same loop as a pure function of (parameters, support) with
  ``torch.func.functional_call`` + ``grad``, ``vmap``-ed over the padded meta-batch (masks handle
  ragged support/query lengths; ``chunk_size`` bounds memory). One backward gives the full
  second-order meta-gradient. The first linear layer of the head (a plain ``nn.Linear``, adapted
  with a scalar rate: not Meta-SGD) is kept in factored form, W - sum_j A_j^T X_j, instead of as a
  per-task copy (``factored.py``): the same numbers, without the per-task copies of the largest
  weight that otherwise dominate the time on a CPU. Under ``all`` the body's linear fields (embedding
  tables, multi-hot maps) are kept factored the same way (``factored_fields.py``).

Modules: ``rules`` (the inner update rule object), ``base`` (settings, shared set-up, ``adapt`` and
``score``), ``reference`` (learn2learn), ``vmap``, ``factored``, ``factored_fields``.
"""


from __future__ import annotations

from metarec.errors import ConfigError
from metarec.learners.executors.base import Executor, ExecutorSettings, clip_by_global_norm, clip_scale
from metarec.learners.executors.reference import L2LExecutor
from metarec.learners.executors.rules import InnerRule, LearnedRates, ScalarRate
from metarec.learners.executors.vmap import VmapExecutor
from metarec.models.base import BaseRecommender

EXECUTORS = {"vmap": VmapExecutor, "learn2learn": L2LExecutor}


def make_executor(name: str, model: BaseRecommender, settings: ExecutorSettings) -> Executor:
    """The executor called ``name`` (``vmap`` | ``learn2learn``) for ``model`` with ``settings``."""
    try:
        cls = EXECUTORS[name]
    except KeyError:
        raise ConfigError(f"learner.executor must be one of {', '.join(EXECUTORS)}, got {name!r}") from None
    return cls(model, settings)


__all__ = [
    "EXECUTORS", "Executor", "ExecutorSettings", "InnerRule", "L2LExecutor", "LearnedRates", "ScalarRate",
    "VmapExecutor", "clip_by_global_norm", "clip_scale", "make_executor",
]
