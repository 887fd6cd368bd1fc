"""What each numeric or choice option allows, as one table checked when a config is built.

:data:`RULES` maps an option's dotted path to a :class:`Rule` (kind, range, whether ``null`` is
allowed, whether it is a list of such values). A rule applies when the composed config has that key,
so one line covers every learner, model or source with an option of that name; ``learner[reptile].x``
or ``data.params[synthetic].x`` gives one option of one component its own rule (checked instead of
``learner.x``). Every other real number anywhere in the config must still be finite: NaN and
infinity are never a meaningful setting. :func:`check_config` raises a one-line ``ConfigError``
naming the option and what it allows before anything is created.
"""

from __future__ import annotations

import functools
import math
import typing
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from metarec.errors import ConfigError


@functools.lru_cache(maxsize=1)
def _lightning_precisions() -> tuple[str, ...]:
    """The precision names Lightning accepts (its own list; a fixed copy if its layout changes). Imports
    Lightning, so it is called when ``trainer.precision`` is checked, not when this module is imported."""
    try:
        from lightning_fabric.plugins.precision import precision as p

        names = typing.get_args(p._PRECISION_INPUT_STR) + tuple(p._PRECISION_INPUT_STR_ALIAS_CONVERSION)
        if names:
            return tuple(dict.fromkeys(str(n) for n in names))
    except (ImportError, AttributeError):  # pragma: no cover - depends on the Lightning release
        pass
    return ("16-true", "16-mixed", "bf16-true", "bf16-mixed", "32-true", "64-true", "16", "bf16", "32", "64")


@dataclass(frozen=True)
class Rule:
    """``kind``: ``int`` | ``number`` (a finite real) | ``choice``. ``low``/``high``: bounds, inclusive
    unless ``open_low``/``open_high``. ``null``: ``None`` is allowed. ``each``: the value is a list and
    every element must satisfy the rule. ``also``: values allowed besides the range (e.g. -1)."""

    kind: str = "number"
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    null: bool = False
    each: bool = False
    also: tuple = ()
    choices: tuple = ()

    def describe(self) -> str:
        if self.kind == "choice":
            what = f"one of {', '.join(map(str, self.choices))}"
        else:
            what = "an integer" if self.kind == "int" else "a finite number"
            if self.low is not None and self.high is not None:
                what += f" in {'(' if self.open_low else '['}{_num(self.low)}, {_num(self.high)}{')' if self.open_high else ']'}"
            elif self.low is not None:
                what += f" {'>' if self.open_low else '>='} {_num(self.low)}"
            elif self.high is not None:
                what += f" {'<' if self.open_high else '<='} {_num(self.high)}"
        if self.also:
            what = f"{' or '.join(map(str, self.also))} or {what}"
        if self.each:
            what = f"a list of {what.replace('an integer', 'integers').replace('a finite number', 'finite numbers')}"
        return f"null or {what}" if self.null else what

    def allows_one(self, v: Any) -> bool:
        if v in self.also and not isinstance(v, bool):
            return True
        if self.kind == "choice":
            return str(v) in self.choices
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        if self.kind == "int" and not isinstance(v, int):
            return False
        if not math.isfinite(v):
            return False
        if self.low is not None and (v <= self.low if self.open_low else v < self.low):
            return False
        return self.high is None or (v < self.high if self.open_high else v <= self.high)

    def allows(self, v: Any) -> bool:
        if v is None:
            return self.null
        if self.each:
            return isinstance(v, (list, tuple)) and all(self.allows_one(x) for x in v)
        return self.allows_one(v)


INT_1 = Rule("int", low=1)  # a count or size: at least one
INT_0 = Rule("int", low=0)  # a count that may be zero
POSITIVE = Rule(low=0, open_low=True)  # a finite number > 0
NON_NEGATIVE = Rule(low=0)
FRACTION = Rule(low=0, high=1)
SIZES = Rule("int", low=1, each=True)  # a list of sizes, each >= 1
SEED = Rule("int", low=0, high=2**32 - 1)  # Lightning's seed_everything range (outside it picks a random seed)

RULES: dict[str, Rule] = {
    "seed": SEED,
    # trainer
    "trainer.max_epochs": INT_1,
    "trainer.max_steps": Rule("int", low=1, also=(-1,)),
    "trainer.num_nodes": INT_1,
    "trainer.precision": Rule("choice"),  # choices: Lightning's own list (_precision_rule, read when checked)
    "trainer.patience": INT_0,
    "trainer.gradient_clip_val": Rule(low=0, open_low=True, null=True),
    "trainer.log_every_n_steps": INT_1,
    "trainer.limit_train_batches": Rule(low=0, null=True),
    "trainer.limit_val_batches": Rule(low=0, null=True),
    "trainer.limit_test_batches": Rule(low=0, null=True),
    "trainer.nonfinite": Rule("choice", choices=("skip", "fail")),
    "trainer.max_nonfinite": INT_0,
    # data
    "data.meta_batch_size": INT_1,
    "data.eval_batch_size": INT_1,
    "data.num_workers": INT_0,
    "data.eval_support_sizes": SIZES,
    "data.val_support_sizes": SIZES,
    "data.val_folds": INT_1,
    "data.ranking_ks": SIZES,
    "data.relevance_threshold": Rule(),
    "data.item_id_dropout": Rule(low=0, high=1, open_high=True),
    "data.train_support": Rule("choice", choices=("full", "loguniform", "mixed")),  # data_config.TRAIN_SUPPORT (a test checks)
    "data.rating_loss": Rule("choice", choices=("mse", "mae")),  # data_config.RATING_LOSSES (a test checks)
    "data.split.seed": Rule("int", low=0, high=2**63 - 1),
    "data.split.min_ratings": INT_1,
    "data.split.max_ratings": INT_1,
    "data.split.query_size": INT_1,
    "data.split.support_size": Rule("int", low=1, null=True),
    "data.split.min_support": INT_1,
    "data.split.new_user_fraction": Rule(low=0, high=1, open_high=True),
    "data.split.val_user_fraction": Rule(low=0, high=1, open_high=True),
    "data.split.new_item_fraction": Rule(low=0, high=1, open_high=True),
    "data.negatives.per_positive": INT_0,
    "data.negatives.power": NON_NEGATIVE,
    "data.text.batch_size": INT_1,
    # data sources (data.params): any source with the option
    "data.params.timeout_s": POSITIVE,
    "data.params.n_users": INT_1,
    "data.params.n_items": INT_1,
    "data.params.min_ratings": INT_1,
    "data.params.max_ratings": INT_1,
    "data.params.latent_dim": INT_1,
    "data.params.n_genres": INT_0,
    "data.params.user_spread": NON_NEGATIVE,
    "data.params.prior_strength": NON_NEGATIVE,
    "data.params.item_bias": NON_NEGATIVE,
    "data.params.noise": NON_NEGATIVE,
    "data.params.global_mean": Rule(),
    "data.params.popularity": NON_NEGATIVE,
    "data.params.seed": Rule("int", low=0, high=2**63 - 1),
    "data.params.top_tags": INT_0,
    "data.params.min_tag_count": INT_1,
    "data.params.max_countries": INT_1,
    "data.params.max_authors": INT_1,
    "data.params.max_publishers": INT_1,
    "data.params.n_buckets": INT_1,
    "data.params.max_tokens": INT_1,
    "data.params.max_seq_width": INT_1,
    "data.params.rating_range": Rule(each=True, null=True),
    # models
    "model.embed_dim": INT_1,
    "model.hidden": SIZES,
    "model.dim": INT_1,
    "model.user_hidden": SIZES,
    "model.item_hidden": SIZES,
    "model.d_model": INT_1,
    "model.layers": INT_1,
    "model.heads": INT_1,
    "model.ffn": INT_1,
    "model.head_hidden": SIZES,
    "model.lora_rank": INT_0,
    "model.lora_alpha": POSITIVE,
    # learners
    "learner.lr": POSITIVE,
    "learner.weight_decay": NON_NEGATIVE,
    "learner.inner_lr": NON_NEGATIVE,  # 0: no adaptation (the global model), a baseline
    "learner.inner_steps": INT_0,  # 0: MAML trains the unadapted model, a baseline
    "learner[reptile].inner_steps": INT_1,  # 0 would make Reptile's direction theta - phi zero: no training
    "learner.eval_inner_steps": Rule("int", low=0, null=True),
    "learner.chunk_size": Rule("int", low=1, null=True),
    "learner.inner_grad_clip": Rule(low=0, open_low=True, null=True),
    "learner.finetune_lr": NON_NEGATIVE,
    "learner.finetune_steps": INT_0,
    "learner.hidden": INT_1,
    "learner.heads": INT_1,
    "learner.latent_dim": INT_0,
    "learner.kl_weight": NON_NEGATIVE,
    "learner.alpha": FRACTION,
    "learner.rank_weight": NON_NEGATIVE,
    "learner.neighbours": INT_1,
    "learner.shrink": NON_NEGATIVE,
    "learner.content_weight": NON_NEGATIVE,
    "learner.l2": Rule(low=0, open_low=True, null=True),
    "learner.l2_grid": Rule(low=0, open_low=True, each=True),
    "learner.prior_precision": POSITIVE,
}


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def _component_rule(path: str, cfg: DictConfig) -> str:
    """``learner[<name>].key`` / ``model[<name>].key`` / ``data.params[<source>].key`` for ``path``."""
    head, _, key = path.rpartition(".")
    name = {"learner": cfg.get("learner", {}).get("name"), "model": cfg.get("model", {}).get("name"),
            "data.params": cfg.get("data", {}).get("source")}.get(head)
    return f"{head}[{name}].{key}" if name else ""


def _leaves(node: Any, prefix: str):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, node


def _precision_rule() -> Rule:
    return Rule("choice", choices=_lightning_precisions())


def check_config(cfg: DictConfig, light: bool = False) -> None:
    """Raise a one-line ``ConfigError`` for the first option outside its rule, or any real number that
    is not finite (NaN, infinity). ``cfg``: the validated config (sections filled in). ``light``: skip the
    checks that import Lightning (``trainer.precision``; ``fit --print-config``, where ``fit`` checks it)."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    for path, rule in RULES.items():
        if "[" in path or (light and path == "trainer.precision"):
            continue
        if path == "trainer.precision":
            rule = _precision_rule()
        head, _, key = path.rpartition(".")
        node = OmegaConf.select(cfg, head) if head else cfg
        if not isinstance(node, DictConfig) or key not in node:
            continue
        rule = RULES.get(_component_rule(path, cfg), rule)
        value = node[key]
        if isinstance(value, ListConfig):
            value = OmegaConf.to_container(value)
        if not rule.allows(value):
            raise ConfigError(f"{path} must be {rule.describe()}, got {_show(value)}")
    for path, value in _leaves(plain, ""):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{path} must be a finite number, got {_show(value)}")


def _show(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # nan, inf, -inf
    return repr(value)


WANDB_MODES = ("offline", "online", "disabled")
WANDB_ONLY = ("group", "job_type", "tags", "artifacts")  # logger options only the W&B logger reads
MAX_TAG = 64  # W&B refuses a longer tag


def check_logger(logger: DictConfig) -> None:
    """The logger section's W&B options: a one-line ``ConfigError`` naming the option to fix."""
    if logger.name != "wandb":
        for key in WANDB_ONLY:
            if logger.get(key):
                raise ConfigError(f"logger.{key} is an option of the W&B logger; add logger=wandb or drop it")
        return
    if logger.mode not in WANDB_MODES:
        raise ConfigError(f"logger.mode must be one of {', '.join(WANDB_MODES)}, got {_show(logger.mode)}")
    for key in ("group", "job_type"):
        if logger.get(key) is not None and not str(logger[key]).strip():
            raise ConfigError(f"logger.{key} must be a non-empty name or null, got {_show(logger[key])}")
    for tag in logger.tags:
        if not str(tag).strip() or len(str(tag)) > MAX_TAG:
            raise ConfigError(f"logger.tags: each tag must have 1 to {MAX_TAG} characters, got {_show(tag)}")
