"""Flowcore's built-in node types. Importing this package registers them; the engine
finds it through the ``flowcore.nodes`` entry point, like any plugin."""

from app.nodes import basic, control, http, llm, memory

__all__ = ["basic", "control", "http", "llm", "memory"]
