"""Every learner option of the zoo, with the base model it needs (shared by the zoo and serving tests)."""

from __future__ import annotations

import yaml

from metarec.config import config_dir
from metarec.learners import LEARNERS

LORA_MODEL = ["model=transformer", "model.d_model=16", "model.heads=2", "model.ffn=32", "model.lora_rank=2"]


def learner_options() -> dict[str, list[str]]:
    """``{option: overrides}`` for every YAML in ``metarec/configs/learner``: LoRA-scoped options on a LoRA
    Transformer, learners written for one base model (``needs_model``) on that model, options with the
    interval likelihood on whole-star ratings."""
    out = {}
    for path in sorted((config_dir() / "learner").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        model = []
        if spec.get("scope") == "lora":
            model = LORA_MODEL
        needs = getattr(LEARNERS.get(spec["name"]).factory, "needs_model", None)
        if needs:
            model = [f"model={needs}"]
        if spec.get("likelihood") == "interval":  # ratings on a grid: whole stars, predicted as such
            model = [*model, "data.params.round_ratings=true", "data.rating_grid=true"]
        out[path.stem] = [f"learner={path.stem}", *model]
    return out
