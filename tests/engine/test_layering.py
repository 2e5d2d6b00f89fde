"""The engine is pure: ``app/engine`` imports only the standard library, pydantic,
typing_extensions, the CEL expression library and itself. Everything else (node types,
HTTP, SQL, Redis, YAML) plugs in from outside, through entry points and ports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ENGINE_DIR = Path(__file__).resolve().parents[2] / "app" / "engine"
ENGINE_PACKAGE = "app.engine"

#: third-party distributions the engine may import, by top-level module
ALLOWED_THIRD_PARTY = frozenset(
    {
        "pydantic",
        "pydantic_core",
        "typing_extensions",
        # the CEL expression library: `cel` (common-expression-language), or the CEL
        # project's own `cel_expr_python`, the runtime the engine uses today
        "cel",
        "cel_expr_python",
    }
)
ALLOWED_TOP_LEVEL = frozenset(sys.stdlib_module_names) | ALLOWED_THIRD_PARTY


def _allowed(module: str) -> bool:
    if module == ENGINE_PACKAGE or module.startswith(ENGINE_PACKAGE + "."):
        return True
    return module.split(".")[0] in ALLOWED_TOP_LEVEL


def _resolve_relative(package: str, level: int, module: str | None) -> str:
    parts = package.split(".")
    if level - 1 >= len(parts):
        return "." * level + (module or "")  # beyond the top: never allowed
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{module}" if module else base


def _dynamic_import_target(call: ast.Call) -> str | None:
    """The module named by ``importlib.import_module("x")`` / ``__import__("x")``."""
    func = call.func
    name = (
        func.attr
        if isinstance(func, ast.Attribute)
        else func.id
        if isinstance(func, ast.Name)
        else None
    )
    if name not in ("import_module", "__import__") or not call.args:
        return None
    first = call.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return None


def forbidden_imports(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """``"line: module"`` for every import in ``source`` the engine may not make.

    ``module`` is the dotted name of the module ``source`` belongs to (for relative
    imports). Imports anywhere count: module level, inside functions, under
    ``TYPE_CHECKING``, and ``importlib.import_module`` with a literal name.
    """
    package = module if is_package else module.rpartition(".")[0]
    bad: list[str] = []
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (
                _resolve_relative(package, node.level, node.module)
                if node.level
                else node.module or ""
            )
            if ENGINE_PACKAGE.startswith(base + "."):
                # `from app import engine` is fine, `from app import nodes` is not
                targets = [f"{base}.{alias.name}" for alias in node.names]
            else:
                targets = [base]
        elif isinstance(node, ast.Call):
            target = _dynamic_import_target(node)
            targets = [target] if target is not None else []
        line = getattr(node, "lineno", 0)
        bad += [f"{line}: {t}" for t in targets if not _allowed(t)]
    return bad


def _engine_modules() -> list[tuple[Path, str, bool]]:
    modules = []
    for path in sorted(ENGINE_DIR.rglob("*.py")):
        relative = path.relative_to(ENGINE_DIR.parents[1]).with_suffix("")
        is_package = relative.name == "__init__"
        parts = relative.parts[:-1] if is_package else relative.parts
        modules.append((path, ".".join(parts), is_package))
    return modules


def test_the_engine_imports_only_what_it_may() -> None:
    modules = _engine_modules()
    names = {name for _, name, _ in modules}
    assert {"app.engine", "app.engine.validation", "app.engine.expressions"} <= names
    offenders = {
        name: bad
        for path, name, is_package in modules
        if (bad := forbidden_imports(path.read_text(encoding="utf-8"), name, is_package=is_package))
    }
    assert offenders == {}


SAMPLE = """
from __future__ import annotations
import json, os.path
import httpx
from typing import TYPE_CHECKING
from pydantic import BaseModel
from cel_expr_python import cel
from app.engine.errors import FlowcoreError
from app.engine import dsl
from app import engine
from app import nodes
from . import graph
from .errors import FlowcoreError as E
from .. import store
from ..formats import load_yaml
import importlib
if TYPE_CHECKING:
    from sqlalchemy import Engine

def lazy() -> None:
    import yaml
    from fastapi import FastAPI
    importlib.import_module("app.nodes.http")
    importlib.import_module("app.engine.graph")
    __import__("redis")
"""


def test_the_checker_catches_forbidden_imports() -> None:
    found = forbidden_imports(SAMPLE, "app.engine.sample")
    assert sorted(found, key=lambda line: int(line.split(":")[0])) == [
        "4: httpx",
        "11: app.nodes",
        "14: app.store",
        "15: app.formats",
        "18: sqlalchemy",
        "21: yaml",
        "22: fastapi",
        "23: app.nodes.http",
        "25: redis",
    ]


ALLOWED_SAMPLE = """
from __future__ import annotations
import asyncio, json, os.path
from typing import TYPE_CHECKING
import pydantic_core
from typing_extensions import Self
from pydantic import BaseModel
from cel_expr_python import cel
from app.engine.errors import FlowcoreError
from app.engine import dsl
from app import engine
from . import graph
from .errors import FlowcoreError as E
if TYPE_CHECKING:
    from app.engine.scheduler import RunHandle

def lazy(name: str) -> None:
    import importlib
    importlib.import_module("app.engine.graph")
    importlib.import_module(name)  # a plugin named at run time: not a static dependency
"""


def test_the_checker_accepts_the_allowed_imports() -> None:
    assert forbidden_imports(ALLOWED_SAMPLE, "app.engine.sample") == []


def test_relative_imports_resolve_from_the_package_of_an_init_module() -> None:
    # in app/engine/__init__.py, `.` is app.engine itself and `..` is app
    assert forbidden_imports("from . import dsl", "app.engine", is_package=True) == []
    assert forbidden_imports("from .. import nodes", "app.engine", is_package=True) == [
        "1: app.nodes"
    ]
    assert forbidden_imports("from ... import x", "app.engine", is_package=True) == ["1: ..."]


def _printed_by_fresh_python(code: str) -> list[str]:
    """The lines ``code`` prints, run in a fresh interpreter at the repository's root."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ENGINE_DIR.parents[1],
        timeout=30,
    ).stdout.splitlines()


@pytest.mark.slow
def test_importing_the_engine_loads_no_other_part_of_the_app() -> None:
    # The registry finds node types lazily, through entry points: importing the engine
    # must not pull in app.nodes (and through it httpx) or the YAML format plugin.
    code = "import sys, app.engine\nprint('\\n'.join(sorted(m for m in sys.modules)))\n"
    loaded = _printed_by_fresh_python(code)
    app_modules = [m for m in loaded if m == "app" or m.startswith("app.")]
    assert all(m in ("app", ENGINE_PACKAGE) or m.startswith("app.engine.") for m in app_modules)
    for heavy in ("httpx", "yaml", "sqlalchemy", "fastapi", "redis"):
        assert heavy not in loaded


@pytest.mark.slow
def test_the_expression_library_loads_with_the_first_expression() -> None:
    # The CEL library is a third of the engine's memory: an executor and a run without
    # expressions must not load it (bench/features_memory.py measures the base RSS).
    code = """
import asyncio, sys
import app.engine
executor = app.engine.WorkflowExecutor()
plain = {"id": "w", "nodes": [{"id": "a", "type": "noop"}, {"id": "b", "type": "noop"}],
         "edges": [{"source": "a", "target": "b"}]}
asyncio.run(executor.execute(plain, {}))
print("cel_expr_python" in sys.modules)
result = asyncio.run(executor.execute({**plain, "output": {"v": "input.v + 1"}}, {"v": 1}))
print("cel_expr_python" in sys.modules, result.output)
"""
    assert _printed_by_fresh_python(code) == ["False", "True {'v': 2}"]


# ------------------------------------------------- the rest of the app: public names only

APP_DIR = ENGINE_DIR.parent


def private_engine_names(source: str, module: str, public: frozenset[str]) -> list[str]:
    """``"line: name"`` for every name ``source`` imports from ``app.engine`` that is not
    in ``public`` (its ``__all__``). Imports of ``app.engine.<module>`` are the business
    of the import-linter contract in pyproject.toml."""
    package = module.rpartition(".")[0]
    bad: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom):
            continue
        base = _resolve_relative(package, node.level, node.module) if node.level else node.module
        if base == ENGINE_PACKAGE:
            bad += [f"{node.lineno}: {a.name}" for a in node.names if a.name not in public]
    return bad


def test_the_app_imports_only_the_engines_public_names() -> None:
    import app.engine

    public = frozenset(app.engine.__all__) | {"*"}
    offenders: dict[str, list[str]] = {}
    for path in sorted(APP_DIR.rglob("*.py")):
        if ENGINE_DIR in path.parents:
            continue
        relative = path.relative_to(APP_DIR.parent).with_suffix("")
        module = ".".join(relative.parts)
        bad = private_engine_names(path.read_text(encoding="utf-8"), module, public)
        if bad:
            offenders[module] = bad
    assert offenders == {}


def test_the_public_name_checker_catches_private_names() -> None:
    sample = """
from app.engine import WorkflowExecutor, compile_workflow
from app.engine.graph import compile_workflow as cw
from .engine import RunHandle
from ..engine import Event
def lazy() -> None:
    from app.engine import _UNSET
"""
    found = private_engine_names(sample, "app.runtime.sample", frozenset({"WorkflowExecutor"}))
    assert found == ["2: compile_workflow", "5: Event", "7: _UNSET"]
