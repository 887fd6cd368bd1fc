"""The data-source registry: :data:`SOURCES`, and building a dataset from a source's name and options.

A leaf module (it imports no source), so that every source module can register itself here while
:mod:`metarec.data.sources` imports the built-in sources.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from metarec.data.schema import RecDataset
from metarec.errors import ConfigError
from metarec.registry import Registry

SOURCES: Registry[RecDataset] = Registry("data source")


def load_dataset(name: str, params: Mapping[str, Any] | DictConfig | None, root: str | None) -> RecDataset:
    """Build and validate the dataset of source ``name`` with options ``params``.

    Raises ``ConfigError`` for an unknown source, option or ill-typed value, ``DataError`` for data problems.
    """
    entry = SOURCES.get(name)
    cfg = source_config(name, params)
    ds = entry.factory(cfg, root)
    ds.validate()
    return ds


def source_config(name: str, params: Mapping[str, Any] | DictConfig | None) -> Any:
    """``params`` merged over the defaults of source ``name``'s config dataclass, as that dataclass."""
    cfg_cls = SOURCES.get(name).config_cls
    given = _as_plain_dict(name, params)
    known = [f.name for f in dataclasses.fields(cfg_cls)]
    for key in given:
        if key not in known:
            raise ConfigError(
                f"data source {name!r}: unknown option {key!r} (known: {', '.join(known)})"
            )
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cfg_cls), given)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None) or "?"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"data source {name!r}: bad value for option {key!r}: {msg}") from None


def _as_plain_dict(name: str, params: Mapping[str, Any] | DictConfig | None) -> dict[str, Any]:
    if params is None:
        return {}
    if isinstance(params, DictConfig):
        try:
            params = OmegaConf.to_container(params, resolve=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"data source {name!r}: cannot resolve options: {str(e).splitlines()[0]}") from None
    if not isinstance(params, Mapping):
        raise ConfigError(f"data source {name!r}: options must be a mapping, got {type(params).__name__}")
    return {str(k): v for k, v in params.items()}
