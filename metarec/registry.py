"""One registry per kind of component (data source, model, learner).

Each entry pairs a factory with the dataclass that types its options, so configs can be validated
before anything runs. Adding a component is: write the factory, decorate it, add one YAML file.

Installed packages add components without touching metarec, through entry points in the groups
``metarec.learners``, ``metarec.models`` and ``metarec.sources``. An entry point names either a
callable, called once with the registry (``mylearner = "mypkg.plugin:register"`` where
``def register(registry): registry.register("mylearner", MyConfig)(MyLearner)``), or a module, whose
import registers its components with the public ``register`` decorator (``mypkg.plugin``). The entry
point's own name only names the plugin in messages. Plugins are loaded once, on the first lookup
(``get``, ``names``, ``in``); a plugin that fails to load, or registers a name already taken, is a
``PluginError`` naming it (each later lookup raises it again).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import Any, Callable, Generic, Optional, TypeVar

from metarec.errors import ConfigError, PluginError

T = TypeVar("T")

# entry-point group of each registry, by the registry's kind
ENTRY_POINT_GROUPS = {"learner": "metarec.learners", "model": "metarec.models", "data source": "metarec.sources"}


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    factory: Callable[..., T]
    config_cls: type
    help: str


class Registry(Generic[T]):
    def __init__(self, kind: str, group: Optional[str] = None) -> None:
        self.kind = kind
        self.group = group or ENTRY_POINT_GROUPS.get(kind)  # None: no plugins
        self._entries: dict[str, Entry[T]] = {}
        self._plugins_loaded = False
        self._plugin_error: Optional[str] = None

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

    def _load_plugins(self) -> None:
        if not self._plugins_loaded:
            self._plugins_loaded = True  # first: a plugin may look entries up while it registers
            if self.group is not None:
                for ep in sorted(metadata.entry_points(group=self.group), key=lambda e: e.name):
                    try:
                        obj: Any = ep.load()
                        if not isinstance(obj, ModuleType):
                            if not callable(obj):
                                raise TypeError(f"{ep.value} is neither a module nor a callable")
                            obj(self)
                    except Exception as e:  # anything: a broken plugin must not look like a metarec bug
                        dist = getattr(ep, "dist", None)
                        origin = f" from {dist.name} {dist.version}" if dist is not None else ""
                        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
                        self._plugin_error = (
                            f"{self.kind} plugin {ep.name!r} ({self.group} entry point {ep.value!r}{origin}) "
                            f"failed to load: {type(e).__name__}{': ' + detail if detail else ''}"
                        )
                        break
        if self._plugin_error is not None:
            raise PluginError(self._plugin_error)

    def get(self, name: str) -> Entry[T]:
        self._load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise ConfigError(f"unknown {self.kind} {name!r} (known: {known})") from None

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return name in self._entries
