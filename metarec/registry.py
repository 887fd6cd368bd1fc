"""One registry per kind of component (data source, model, learner).

Each entry pairs a factory with the dataclass that types its options, so configs can be validated
before anything runs. Adding a component is: write the factory, decorate it, add one YAML file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from metarec.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    factory: Callable[..., T]
    config_cls: type
    help: str


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, config_cls: type, help: str = "") -> Callable:
        if not dataclasses.is_dataclass(config_cls):
            raise TypeError(f"{self.kind} {name!r}: config_cls must be a dataclass")

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            doc = help or (factory.__doc__ or "").strip().splitlines()[0:1]
            self._entries[name] = Entry(name, factory, config_cls, doc if isinstance(doc, str) else "".join(doc))
            return factory

        return deco

    def get(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise ConfigError(f"unknown {self.kind} {name!r} (known: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def build(self, name: str, cfg: Any, *args: Any, **kwargs: Any) -> T:
        return self.get(name).factory(cfg, *args, **kwargs)
