"""``NodeRegistry``: node type name -> node class.

Types come from three places, loaded once, lazily, on first lookup:
1. classes decorated with ``@NodeRegistry.register("type")`` in imported code;
2. modules in the ``flowcore.nodes`` entry-point group (Flowcore's own built-ins are
   one such plugin, so the engine never imports them directly);
3. modules named, comma-separated, in the ``FLOWCORE_PLUGINS`` environment variable.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TypeVar

from app.engine.errors import PluginLoadError, UnknownNodeTypeError
from app.engine.node import BaseNode

N = TypeVar("N", bound=type[BaseNode])

ENTRY_POINT_GROUP = "flowcore.nodes"
PLUGINS_ENV = "FLOWCORE_PLUGINS"


class NodeRegistry:
    """The process-wide registry of node types."""

    _types: dict[str, type[BaseNode]] = {}
    _loaded = False
    _lock = threading.Lock()

    @classmethod
    def register(cls, name: str, *, replace: bool = False) -> Callable[[N], N]:
        """Class decorator: ``@NodeRegistry.register("my_type")``."""

        def decorator(node_cls: N) -> N:
            if not (isinstance(node_cls, type) and issubclass(node_cls, BaseNode)):
                raise TypeError(f"{node_cls!r} must be a subclass of BaseNode")
            existing = cls._types.get(name)
            if existing is not None and existing is not node_cls and not replace:
                same = (existing.__module__, existing.__qualname__) == (
                    node_cls.__module__,
                    node_cls.__qualname__,
                )
                if not same:  # re-importing the same module is harmless
                    raise ValueError(
                        f"node type {name!r} is already registered by "
                        f"{existing.__module__}.{existing.__qualname__}"
                    )
            node_cls.type_name = name
            cls._types[name] = node_cls
            return node_cls

        return decorator

    @classmethod
    def unregister(cls, name: str) -> None:
        cls._types.pop(name, None)

    @classmethod
    def get(cls, name: str) -> type[BaseNode]:
        cls.load_plugins()
        try:
            return cls._types[name]
        except KeyError:
            raise UnknownNodeTypeError(
                f"unknown node type {name!r}; known types: {', '.join(cls.types())}"
            ) from None

    @classmethod
    def has(cls, name: str) -> bool:
        cls.load_plugins()
        return name in cls._types

    @classmethod
    def types(cls) -> list[str]:
        cls.load_plugins()
        return sorted(cls._types)

    @classmethod
    def load_plugins(cls, *, force: bool = False) -> None:
        """Import entry-point plugins and ``FLOWCORE_PLUGINS`` modules (once)."""
        if cls._loaded and not force:
            return
        with cls._lock:
            if cls._loaded and not force:
                return
            cls._loaded = True  # set first: plugin modules may look types up
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                try:
                    ep.load()
                except Exception as exc:
                    raise PluginLoadError(
                        f"entry point {ep.name!r} ({ep.value}) of group "
                        f"{ENTRY_POINT_GROUP!r} failed to load: {exc}"
                    ) from exc
            for module in filter(
                None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))
            ):
                try:
                    importlib.import_module(module)
                except Exception as exc:
                    raise PluginLoadError(
                        f"plugin module {module!r} from {PLUGINS_ENV} failed to import: {exc}"
                    ) from exc
