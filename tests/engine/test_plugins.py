"""``NodeRegistry``: the register decorator, lookups, and plugin discovery through
``FLOWCORE_PLUGINS`` and the ``flowcore.nodes`` entry-point group."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import pytest

import app.engine.registry as registry_module
from app.engine import (
    BaseNode,
    NodeContext,
    NodeRegistry,
    NodeResult,
    PluginLoadError,
    RunStatus,
    UnknownNodeTypeError,
    WorkflowContext,
    WorkflowExecutor,
    create_workflow,
    validate_workflow,
)

BUILTIN_TYPES = ["delay", "fail", "loop", "map", "noop", "subworkflow", "transform", "wait"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def type_names() -> Iterator[list[str]]:
    """Node type names a test registers; each is unregistered afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        NodeRegistry.unregister(name)


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


class _Echo(BaseNode):
    async def execute(
        self, node_context: NodeContext, workflow_context: WorkflowContext
    ) -> NodeResult:
        return NodeResult(output=dict(node_context.input))


class _Other(BaseNode):
    pass


def _same_named_class() -> type[BaseNode]:
    """A fresh class object with the same module and qualname on every call, as
    re-importing (reloading) a plugin module produces."""

    class Reloaded(BaseNode):
        pass

    return Reloaded


# --------------------------------------------------------------------------- register


def test_register_decorates_and_returns_the_class(type_names: list[str]) -> None:
    name = _unique("test_echo")
    type_names.append(name)
    decorated = NodeRegistry.register(name)(_Echo)
    assert decorated is _Echo
    assert _Echo.type_name == name
    assert NodeRegistry.get(name) is _Echo
    assert NodeRegistry.has(name)
    assert name in NodeRegistry.types()


def test_a_registered_type_is_usable_in_a_workflow(type_names: list[str]) -> None:
    name = _unique("test_echo")
    type_names.append(name)
    NodeRegistry.register(name)(_Echo)
    definition = create_workflow({"nodes": [{"id": "a", "type": name}]})
    assert definition.nodes[0].type == name


def test_a_second_class_under_a_taken_name_is_refused(type_names: list[str]) -> None:
    name = _unique("test_taken")
    type_names.append(name)
    NodeRegistry.register(name)(_Echo)
    with pytest.raises(ValueError, match="already registered") as caught:
        NodeRegistry.register(name)(_Other)
    assert "_Echo" in str(caught.value)
    assert NodeRegistry.get(name) is _Echo


def test_registering_the_same_class_again_is_harmless(type_names: list[str]) -> None:
    name = _unique("test_again")
    type_names.append(name)
    NodeRegistry.register(name)(_Echo)
    assert NodeRegistry.register(name)(_Echo) is _Echo
    assert NodeRegistry.get(name) is _Echo


def test_reimporting_a_plugin_module_is_harmless(type_names: list[str]) -> None:
    name = _unique("test_reloaded")
    type_names.append(name)
    first, second = _same_named_class(), _same_named_class()
    assert first is not second
    NodeRegistry.register(name)(first)
    NodeRegistry.register(name)(second)
    assert NodeRegistry.get(name) is second


def test_replace_allows_a_different_class(type_names: list[str]) -> None:
    name = _unique("test_replace")
    type_names.append(name)
    NodeRegistry.register(name)(_Echo)
    NodeRegistry.register(name, replace=True)(_Other)
    assert NodeRegistry.get(name) is _Other


def test_only_base_node_subclasses_can_be_registered(type_names: list[str]) -> None:
    name = _unique("test_not_a_node")
    type_names.append(name)
    not_a_node: Any = dict
    with pytest.raises(TypeError, match="BaseNode"):
        NodeRegistry.register(name)(not_a_node)
    assert not NodeRegistry.has(name)


def test_an_unknown_type_lists_the_known_types() -> None:
    with pytest.raises(UnknownNodeTypeError) as caught:
        NodeRegistry.get("no_such_type")
    message = str(caught.value)
    assert "'no_such_type'" in message
    known = message.split("known types: ", 1)[1].split(", ")
    assert set(BUILTIN_TYPES) <= set(known)
    assert known == sorted(known)


# ---------------------------------------------------------------------------- plugins

PLUGIN_SOURCE = """
from pydantic import BaseModel, ConfigDict

from app.engine import BaseNode, NodeContext, NodeRegistry, NodeResult, WorkflowContext


class ShoutConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str


@NodeRegistry.register({type_name!r})
class ShoutNode(BaseNode):
    config_model = ShoutConfig

    async def execute(
        self, node_context: NodeContext, workflow_context: WorkflowContext
    ) -> NodeResult:
        return NodeResult(output={{"shout": str(node_context.config["text"]).upper()}})
"""


@pytest.fixture
def plugin_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, type_names: list[str]
) -> Iterator[tuple[str, str]]:
    """A plugin module on ``sys.path``, not imported yet: (module name, its type name)."""
    module, type_name = _unique("flowcore_test_plugin"), _unique("test_shout")
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(PLUGIN_SOURCE.format(type_name=type_name)), encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    type_names.append(type_name)
    yield module, type_name
    sys.modules.pop(module, None)


async def test_a_plugin_named_in_flowcore_plugins_is_loaded_and_usable(
    plugin_module: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    module, type_name = plugin_module
    assert not NodeRegistry.has(type_name)
    monkeypatch.setenv("FLOWCORE_PLUGINS", f" {module} , ")  # spaces and empty parts
    NodeRegistry.load_plugins(force=True)
    assert NodeRegistry.has(type_name)
    assert NodeRegistry.get(type_name).__module__ == module

    definition = create_workflow(
        {
            "id": "plugin-run",
            "nodes": [{"id": "s", "type": type_name, "config": {"text": "hi {{ input.name }}"}}],
            "output": {"said": "nodes.s.output.shout"},
        }
    )
    result = await WorkflowExecutor().execute(definition, {"name": "ada"})
    assert result.status is RunStatus.SUCCEEDED, result.error
    assert result.output == {"said": "HI ADA"}

    # the plugin's config model is enforced like a built-in's
    (issue,) = validate_workflow({"nodes": [{"id": "s", "type": type_name, "config": {}}]})
    assert (issue.code, issue.node, issue.field) == ("config", "s", "config.text")


def test_plugins_load_once_unless_forced(
    plugin_module: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    module, type_name = plugin_module
    NodeRegistry.types()  # loaded (lazily, on first lookup) before the variable is set
    monkeypatch.setenv("FLOWCORE_PLUGINS", module)
    NodeRegistry.load_plugins()
    assert not NodeRegistry.has(type_name)
    NodeRegistry.load_plugins(force=True)
    assert NodeRegistry.has(type_name)


def test_a_missing_plugin_module_raises_plugin_load_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = _unique("flowcore_no_such_plugin")
    monkeypatch.setenv("FLOWCORE_PLUGINS", missing)
    with pytest.raises(PluginLoadError) as caught:
        NodeRegistry.load_plugins(force=True)
    assert repr(missing) in str(caught.value)
    assert "FLOWCORE_PLUGINS" in str(caught.value)
    assert isinstance(caught.value.__cause__, ImportError)


def test_a_plugin_module_that_fails_on_import_raises_plugin_load_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _unique("flowcore_broken_plugin")
    (tmp_path / f"{module}.py").write_text("raise RuntimeError('boom')\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("FLOWCORE_PLUGINS", module)
    try:
        with pytest.raises(PluginLoadError, match="boom"):
            NodeRegistry.load_plugins(force=True)
    finally:
        sys.modules.pop(module, None)


def test_a_plugin_exposed_as_an_entry_point_is_loaded(
    plugin_module: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    module, type_name = plugin_module
    fake = EntryPoint(name="third-party", value=module, group="flowcore.nodes")
    monkeypatch.setattr(registry_module, "entry_points", lambda **_: [fake])
    monkeypatch.delenv("FLOWCORE_PLUGINS", raising=False)
    NodeRegistry.load_plugins(force=True)
    assert NodeRegistry.has(type_name)


def test_a_broken_entry_point_raises_plugin_load_error(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = _unique("flowcore_no_such_entry_point_module")
    fake = EntryPoint(name="broken", value=missing, group="flowcore.nodes")
    monkeypatch.setattr(registry_module, "entry_points", lambda **_: [fake])
    monkeypatch.delenv("FLOWCORE_PLUGINS", raising=False)
    with pytest.raises(PluginLoadError, match="'broken'"):
        NodeRegistry.load_plugins(force=True)


# -------------------------------------------------------------------------- built-ins


def test_the_builtins_are_declared_as_the_flowcore_nodes_entry_point() -> None:
    declared = {ep.name: ep.value for ep in entry_points(group="flowcore.nodes")}
    assert declared.get("builtin") == "app.nodes"


def test_the_builtin_types_are_registered() -> None:
    types = NodeRegistry.types()
    assert set(BUILTIN_TYPES) <= set(types)
    for name in BUILTIN_TYPES:
        node_cls = NodeRegistry.get(name)
        assert node_cls.__module__.startswith("app.nodes.")
        assert node_cls.type_name == name


@pytest.mark.slow
def test_the_builtins_arrive_through_the_entry_point_not_an_import() -> None:
    # In a fresh interpreter: the engine alone has not imported app.nodes; the first
    # lookup loads it through the entry point.
    code = textwrap.dedent(
        """
        import sys
        from app.engine import NodeRegistry
        before = "app.nodes" in sys.modules
        types = NodeRegistry.types()
        print(before, "app.nodes" in sys.modules, ",".join(types))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=30,
    ).stdout.split()
    before, after, types = out
    assert (before, after) == ("False", "True")
    assert set(BUILTIN_TYPES) <= set(types.split(","))
