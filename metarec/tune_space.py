"""Search spaces of ``metarec tune``: data, one YAML file per learner option.

``search/<learner>.yaml`` on the config search path (the ``--config-path`` folders, then
``METAREC_CONFIG_PATH``, then the built-in ``metarec/configs``; the first folder holding the file wins)
maps full config keys to distributions::

    params:
      learner.inner_lr: {type: float, low: 1.0e-4, high: 0.1, log: true}
      learner.inner_steps: {type: int, low: 1, high: 5}
      learner.scope: {type: categorical, choices: [all, head, output]}

``params: {}`` declares an empty space (learners with nothing to tune). Only settings that shape what a
learner learns may be searched (:data:`SEARCHABLE`); the data, the split, the seed and the run folders
are the same for every trial and every learner.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metarec.errors import ConfigError

SEARCH_GROUP = "search"
# keys a search space may name: exactly these, or keys under those ending in "."
SEARCHABLE = ("learner.", "model.", "trainer.max_epochs", "trainer.patience", "trainer.gradient_clip_val",
              "data.meta_batch_size", "data.item_id_dropout", "data.train_support", "data.rating_grid",
              "data.rating_loss")
TYPES = ("float", "int", "categorical")


@dataclass(frozen=True)
class Param:
    """One searched setting: ``key`` (a full config key) and its distribution."""

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        """The value an Optuna trial picks for this setting."""
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.key, list(self.choices))

    def sample_values(self) -> list[Any]:
        """Values that must compose into a valid config (checked before any trial runs)."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]

    def describe(self) -> dict[str, Any]:
        """A plain mapping (recorded with the study so that a resumed study can check its space)."""
        d: dict[str, Any] = {"type": self.type}
        if self.type == "categorical":
            d["choices"] = list(self.choices)
        else:
            d.update(low=self.low, high=self.high, log=self.log, step=self.step)
        return d


def searchable(key: str) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p) and len(key) > len(p)) for p in SEARCHABLE)


def _number(where: str, name: str, value: Any, integer: bool) -> float | int:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        raise ConfigError(f"{where}: {name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    return int(value) if integer else float(value)


def parse_param(where: str, key: str, spec: Any) -> Param:
    """One ``key: {type: ..., ...}`` entry of a search file; ``ConfigError`` naming the file and key."""
    where = f"{where}: {key}"
    if not isinstance(key, str) or not searchable(key):
        raise ConfigError(f"{where}: cannot be searched (searchable: {', '.join(SEARCHABLE)}; keys ending "
                          "in '.' mean any key under them)")
    if not isinstance(spec, dict) or spec.get("type") not in TYPES:
        raise ConfigError(f"{where}: expected a mapping with type one of {', '.join(TYPES)}, got {spec!r}")
    kind = spec["type"]
    allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log", "step"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} for type {kind} (known: {', '.join(sorted(allowed))})")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: categorical needs a non-empty list of choices")
        if any(isinstance(c, (dict, list)) for c in choices):
            raise ConfigError(f"{where}: choices must be plain values (numbers, strings, booleans or null)")
        return Param(key, kind, choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: {kind} needs low and high")
    integer = kind == "int"
    low, high = (_number(where, n, spec[n], integer) for n in ("low", "high"))
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    step = spec.get("step")
    if step is not None:
        step = _number(where, "step", step, integer)
    if low > high or (log and low <= 0) or (step is not None and (step <= 0 or log)):
        raise ConfigError(f"{where}: needs low <= high, low > 0 with log: true, and a positive step (not with log)")
    return Param(key, kind, low, high, log, step)


def space_file(learner: str, roots: list[Path]) -> Path | None:
    from metarec.config import find_config

    return find_config(f"{SEARCH_GROUP}/{learner}.yaml", roots)


def load_space(learner: str, roots: list[Path]) -> tuple[Path, list[Param]]:
    """The search space of learner option ``learner``: its file and its parameters (in file order)."""
    import yaml

    path = space_file(learner, roots)
    if path is None:
        raise ConfigError(f"learner {learner!r} has no search space: add {SEARCH_GROUP}/{learner}.yaml (with "
                          f"`params: {{}}` for nothing to tune) to a folder given with --config-path")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: not readable YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or set(data) != {"params"} or not isinstance(data["params"] or {}, dict):
        raise ConfigError(f"{path}: expected one top-level key `params`, a mapping of config keys to distributions")
    return path, [parse_param(str(path), k, v) for k, v in (data["params"] or {}).items()]


def format_value(value: Any) -> str:
    """A value as an override's right-hand side that parses back to the same value."""
    import json

    import yaml

    if isinstance(value, str):  # quoted when it would read back as something else ("1", "null", " x")
        plain = yaml.safe_load(value) == value if value.strip() == value and "\n" not in value else False
        return value if plain else json.dumps(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def as_overrides(values: dict[str, Any]) -> list[str]:
    """``key=value`` overrides (``metarec fit`` syntax) for a trial's chosen values."""
    return [f"{k}={format_value(v)}" for k, v in values.items()]
