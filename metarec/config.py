"""Configuration: OmegaConf YAML groups composed into one validated config.

``defaults.yaml`` picks one option per group (``data``, ``model``, ``learner``, ``trainer``,
``logger``); an ``experiment`` file may change those picks (its ``defaults:``) and override any key.
Command-line arguments are ``group=option`` or ``dotted.key=value``, applied last. Every section is
checked against a dataclass: an unknown key, group or option, or a value of the wrong type is a
``ConfigError`` naming it. Values are parsed as YAML scalars; nothing is ever evaluated, and
``${...}`` is kept as text (OmegaConf interpolation is off for config files and overrides).

Files are looked up on a search path of folders (:func:`search_path`): the ``--config-path`` folders,
then those of ``METAREC_CONFIG_PATH``, then the built-in ``metarec/configs`` shipped in the package
(or ``METAREC_CONFIG_DIR``, which replaces it). Each file (``defaults.yaml`` or
``<group>/<option>.yaml``) is read from the first folder that has it, so an added folder may both add
options and override built-in ones of the same name; a group's options are the union over the path.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from metarec.config_checks import check_config, check_logger
from metarec.errors import ConfigError

GROUPS = ("data", "model", "learner", "trainer", "logger")
CONFIG_PATH_ENV = "METAREC_CONFIG_PATH"  # extra folders (os.pathsep-separated), searched before the base one
CONFIG_DIR_ENV = "METAREC_CONFIG_DIR"  # a folder that replaces the built-in configs as the base one

Roots = Union[Path, Sequence[Path], None]


@dataclass
class TrainerConfig:
    max_epochs: int = 100  # a cap: early stopping (patience) ends runs first (benchmarks/convergence.py)
    max_steps: int = -1  # stop after this many meta-steps (-1: no limit)
    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn | ...: Lightning's strategies (ddp: one process per device)
    precision: str = "32-true"
    patience: int = 5  # early stopping (epochs without a better trainer.monitor); 0 disables it
    # what checkpoint selection, early stopping and tune watch, on the validation users (metarec.monitor):
    # auto (MAE; the loss for binary labels) | mae | rmse | loss | full_recall@K | full_ndcg@K | full_hitrate@K
    monitor: str = "auto"
    gradient_clip_val: Optional[float] = None
    deterministic: bool = False
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True
    limit_train_batches: Optional[float] = None
    limit_val_batches: Optional[float] = None
    limit_test_batches: Optional[float] = None
    fast_dev_run: bool = False
    nonfinite: str = "skip"  # skip | fail: a meta-step with a non-finite loss or meta-gradient
    max_nonfinite: int = 10  # with skip: stop (NonFiniteError) once more steps than this were skipped


@dataclass
class LoggerConfig:
    name: str = "csv"  # csv | wandb
    project: str = "metarec"
    entity: Optional[str] = None
    mode: str = "offline"  # wandb: offline | online | disabled
    # wandb: where a run lands (see metarec.wandb_logging); compare sets group and job_type itself
    group: Optional[str] = None  # default: run.experiment (compare: its --out folder name)
    job_type: Optional[str] = None  # default: the learner option (compare: the learner or variant label)
    tags: list[str] = dataclasses.field(default_factory=list)  # added to the learner/data/model/scenario tags
    artifacts: bool = False  # wandb: log the split manifest and the best checkpoint as W&B artifacts


@dataclass
class RunConfig:
    root: str = "runs"
    experiment: str = "default"
    name: Optional[str] = None
    resume: Optional[str] = None  # continue a killed run: its folder, a checkpoint in it, or "last"


def builtin_config_dir() -> Path:
    """The ``configs/`` folder shipped inside the metarec package."""
    return Path(__file__).resolve().parent / "configs"


def config_dir() -> Path:
    """The base config folder, last on the search path: ``METAREC_CONFIG_DIR`` (replacing the built-in
    configs) if set, else the package's own ``configs/``."""
    env = os.environ.get(CONFIG_DIR_ENV)
    path = Path(env).expanduser() if env else builtin_config_dir()
    if not (path / "defaults.yaml").is_file():
        if env:
            raise ConfigError(f"{CONFIG_DIR_ENV}={env}: no defaults.yaml in that folder ({CONFIG_DIR_ENV} replaces "
                              f"the built-in configs; to add configs to them, use {CONFIG_PATH_ENV} or --config-path)")
        raise ConfigError(f"the built-in configs are missing: no defaults.yaml under {path} (broken install?)")
    return path


def _checked_folder(entry: str | Path, origin: str) -> Path:
    path = Path(entry).expanduser()
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise ConfigError(f"config folder {entry} ({origin}) {what}")
    return path.resolve()


def search_path(extra: Iterable[str | Path] = ()) -> list[Path]:
    """The folders config files are looked up in, first match first: ``extra`` (``--config-path``, in
    order), the entries of ``METAREC_CONFIG_PATH`` (in order; empty entries skipped), then
    :func:`config_dir`. A folder that does not exist is a ``ConfigError``."""
    folders = [_checked_folder(p, "--config-path") for p in extra]
    env = os.environ.get(CONFIG_PATH_ENV, "")
    folders += [_checked_folder(p, CONFIG_PATH_ENV) for p in env.split(os.pathsep) if p.strip()]
    folders.append(config_dir())
    out: list[Path] = []
    for f in folders:
        if f not in out:
            out.append(f)
    return out


def _roots(root: Roots) -> list[Path]:
    if root is None:
        return search_path()
    if isinstance(root, (str, Path)):
        return [Path(root)]
    return [Path(r) for r in root]


def group_options(group: str, root: Roots = None) -> list[str]:
    """The options of ``group``: the union of ``<folder>/<group>/*.yaml`` over the search path ``root``."""
    return sorted({p.stem for r in _roots(root) for p in (r / group).glob("*.yaml")})


def find_config(relpath: str, root: Roots = None) -> Path | None:
    """``<folder>/relpath`` of the first folder of the search path ``root`` that has it."""
    for r in _roots(root):
        if (r / relpath).is_file():
            return r / relpath
    return None


def _load_yaml(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # yaml.YAMLError and friends
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return literal(cfg)


_INTERPOLATION = re.compile(r"(\\*)\$\{")


def _escaped(value: Any) -> Any:
    if isinstance(value, str):  # OmegaConf reads `\${` as a literal `${` (and `\\` before it as one `\`)
        return _INTERPOLATION.sub(lambda m: m.group(1) * 2 + "\\${", value)
    if isinstance(value, dict):
        return {k: _escaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    return value


def as_text(value: str) -> str:
    """``value`` escaped for assignment into a config node (``cfg.x = as_text(path)``), so that a ``${``
    in it stays text instead of becoming an OmegaConf interpolation."""
    return _escaped(value)


def literal(cfg: DictConfig) -> DictConfig:
    """``cfg`` with every ``${...}`` kept as text: OmegaConf interpolations (``${oc.env:HOME}``,
    ``${learner.lr}``) in config files and overrides are never resolved, as no value is evaluated."""
    return OmegaConf.create(_escaped(OmegaConf.to_container(cfg, resolve=False)))


# settings that moved since run folders were saved: old key -> new key. A saved config.yaml is read with
# them moved, so that runs made by earlier versions still load, resume, report and compare.
MOVED = {"learner.rating_grid": "data.rating_grid"}  # ridge's own option became every learner's


def validate_saved(saved: DictConfig) -> DictConfig:
    """A run folder's saved config, validated against today's schema (options added since take their
    defaults): every ``${...}`` kept as text, the settings of ``MOVED`` carried to their new keys first."""
    return validate(upgrade_saved(literal(saved)))


def upgrade_saved(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the settings of ``MOVED`` carried to their new keys (an explicit new key wins)."""
    for old, new in MOVED.items():
        section, key = old.split(".", 1)
        sec = cfg.get(section)
        if isinstance(sec, DictConfig) and key in sec:
            value = sec[key]
            del sec[key]
            if OmegaConf.select(cfg, new) is None:
                OmegaConf.update(cfg, new, value, force_add=True)
    return cfg


def _option_file(roots: list[Path], group: str, option: str) -> Path:
    known = group_options(group, roots)
    if option not in known:  # also refuses names like ../defaults
        raise ConfigError(f"unknown {group} option {option!r} (available: {', '.join(known) or 'none'})")
    path = find_config(f"{group}/{option}.yaml", roots)
    assert path is not None
    return path


def parse_overrides(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split ``group=option`` choices (incl. ``experiment``) from ``dotted.key=value`` overrides."""
    choices: dict[str, str] = {}
    keys: list[str] = []
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"argument {arg!r} is not of the form key=value or group=option")
        key, value = arg.split("=", 1)
        if not key:
            raise ConfigError(f"argument {arg!r} has an empty key")
        if key in GROUPS or key == "experiment":
            choices[key] = value
        else:
            keys.append(arg)
    return choices, keys


def compose(args: list[str], root: Roots = None, light: bool = False) -> DictConfig:
    """Compose defaults, experiment, group options and overrides into one validated config.

    ``root``: a config folder or a search path of them (first match wins); default :func:`search_path`.
    ``light``: without importing torch or Lightning (``fit --print-config``; see :func:`validate`).
    """
    roots = _roots(root)
    choices_cli, overrides = parse_overrides(args)
    defaults = find_config("defaults.yaml", roots)
    if defaults is None:
        raise ConfigError(f"no defaults.yaml in the config folders {', '.join(map(str, roots))}")
    base = _load_yaml(defaults)
    choices = dict(OmegaConf.to_container(base.pop("defaults", OmegaConf.create({}))))
    experiment = None
    if "experiment" in choices_cli:
        experiment = _load_yaml(_option_file(roots, "experiment", choices_cli["experiment"]))
        exp_defaults = experiment.pop("defaults", None)
        if exp_defaults is not None:
            choices.update(OmegaConf.to_container(exp_defaults))
    choices.update({k: v for k, v in choices_cli.items() if k != "experiment"})
    for g in choices:
        if g not in GROUPS:
            raise ConfigError(f"unknown config group {g!r} (known: {', '.join(GROUPS)})")
    cfg = base
    for g in GROUPS:
        if g not in choices:
            raise ConfigError(f"no {g} option chosen; add `{g}=<option>` (available: {', '.join(group_options(g, roots))})")
        cfg[g] = _load_yaml(_option_file(roots, g, str(choices[g])))
    if experiment is not None:
        cfg = OmegaConf.merge(cfg, experiment)
        cfg.run.experiment = choices_cli["experiment"]
    for arg in overrides:
        try:
            cfg = OmegaConf.merge(cfg, literal(OmegaConf.from_dotlist([arg])))
        except (OmegaConfBaseException, yaml.YAMLError) as e:  # e.g. `k=[1,2` or a `!!python/...` tag
            raise ConfigError(f"bad override {arg!r}: {str(e).strip().splitlines()[0]}") from None
    cfg.choices = choices
    return validate(cfg, light=light)


def _check_section(path: str, section: Any, cls: type) -> DictConfig:
    """Merge ``section`` onto the dataclass schema; unknown keys and bad types become ConfigError."""
    if section is None:
        section = OmegaConf.create({})
    if not isinstance(section, DictConfig):
        raise ConfigError(f"{path} must be a mapping of options")
    schema = OmegaConf.structured(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key in section.keys():
        if key not in known:
            raise ConfigError(f"unknown config key {path}.{key} (known: {', '.join(known) or 'none'})")
    try:
        merged = OmegaConf.merge(schema, section)
        OmegaConf.to_container(merged, resolve=True)  # a `${...}` kept as text is type-checked here
        return merged
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        msg = str(e).splitlines()[0]
        if msg.startswith("While dereferencing interpolation"):
            msg = msg.split("': ", 1)[-1]
        if isinstance(e, ConfigKeyError) and key:
            raise ConfigError(f"unknown config key {path}.{key}") from None
        raise ConfigError(f"bad value for {path}.{key}: {msg}" if key else f"bad value in {path}: {msg}") from None


def validate(cfg: DictConfig, light: bool = False) -> DictConfig:
    """Validate every section; returns the typed config (with defaults filled in).

    ``light`` (``metarec fit --print-config``): import neither torch nor Lightning, so leave out the checks
    that need them: the ``model`` and ``learner`` sections are kept as composed (their options' ranges are
    checked, but not their names, keys and types against the component's dataclass, and their defaults are
    not filled in) and ``trainer.precision`` is not checked against Lightning's list. ``fit`` runs them all.
    """
    from metarec.data.data_config import DataConfig
    from metarec.data.sources import SOURCES

    allowed = {"seed", "run", "choices", "resume", *GROUPS}
    for key in cfg.keys():
        if key not in allowed:
            raise ConfigError(f"unknown config key {key!r} (known: {', '.join(sorted(allowed))})")
    if "resume" in cfg:  # `resume=last` is short for `run.resume=last`
        run = cfg.get("run") if isinstance(cfg.get("run"), DictConfig) else OmegaConf.create({})
        run.resume = OmegaConf.to_container(cfg, resolve=False)["resume"]  # as written (no `${` resolved)
        cfg.run = run
        del cfg["resume"]
    if isinstance(cfg.get("seed", 0), bool) or not isinstance(cfg.get("seed", 0), int):
        raise ConfigError(f"seed must be an integer, got {cfg.get('seed')!r}")
    raw = OmegaConf.to_container(cfg, resolve=False)
    out = OmegaConf.create({"seed": raw.get("seed", 0), "choices": raw.get("choices", {})})
    out.run = _check_section("run", cfg.get("run"), RunConfig)
    out.trainer = _check_section("trainer", cfg.get("trainer"), TrainerConfig)
    if out.trainer.max_epochs < 1 or out.trainer.patience < 0:
        raise ConfigError("trainer.max_epochs must be >= 1 and trainer.patience >= 0")
    if out.trainer.nonfinite not in ("skip", "fail") or out.trainer.max_nonfinite < 0:
        raise ConfigError("trainer.nonfinite must be skip or fail, and trainer.max_nonfinite >= 0")
    out.logger = _check_section("logger", cfg.get("logger"), LoggerConfig)
    if out.logger.name not in ("csv", "wandb"):
        raise ConfigError(f"logger.name must be csv or wandb, got {out.logger.name!r}")
    check_logger(out.logger)
    data = _check_section("data", cfg.get("data"), DataConfig)
    source = SOURCES.get(data.source)
    data.params = _check_section("data.params", data.params, source.config_cls)
    negatives = negative_config(data)
    negatives.check()
    out.data = data
    from metarec.monitor import monitor_for

    monitor_for(out.trainer.monitor, negatives.loss if negatives.enabled else "mse", data.ranking_ks)  # a name it can be
    for section in ("model", "learner"):
        sec = cfg.get(section)
        if light:
            if not isinstance(sec, DictConfig) or "name" not in sec:
                raise ConfigError(f"{section} needs a name")
            out[section] = sec
            continue
        registry = _component_registry(section)
        if not isinstance(sec, DictConfig) or "name" not in sec:
            raise ConfigError(f"{section} needs a name (one of: {', '.join(registry.names())})")
        entry = registry.get(str(sec.name))
        body = OmegaConf.masked_copy(sec, [k for k in sec.keys() if k != "name"])
        checked = _check_section(section, body, entry.config_cls)
        out[section] = OmegaConf.merge({"name": entry.name}, checked)
    check_config(out, light=light)  # ranges of numeric options, choices, no NaN/infinity anywhere
    return out


def _component_registry(section: str):
    """The registry of models or learners (imports torch, and Lightning for the learners)."""
    if section == "model":
        from metarec.models import MODELS

        return MODELS
    from metarec.learners import LEARNERS

    return LEARNERS


def to_object(section: DictConfig, cls: type) -> Any:
    """A dataclass instance from a validated section (dropping ``name``)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = OmegaConf.to_container(section, resolve=True)
    return cls(**{k: v for k, v in values.items() if k in names})


def split_config(data: DictConfig):
    from metarec.data.splits import SplitConfig

    return SplitConfig(**OmegaConf.to_container(data.split, resolve=True))


def data_config(data: DictConfig):
    from metarec.data.data_config import DataConfig

    values = OmegaConf.to_container(data, resolve=True)
    values["split"] = split_config(data)
    values["negatives"] = negative_config(data)
    values["text"] = text_config(data)
    return DataConfig(**values)


def text_config(data: DictConfig):
    from metarec.data.text import TextConfig

    return TextConfig(**OmegaConf.to_container(data.text, resolve=True))


def negative_config(data: DictConfig):
    from metarec.data.negatives import NegativeConfig

    return NegativeConfig(**OmegaConf.to_container(data.negatives, resolve=True))
