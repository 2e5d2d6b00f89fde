"""CEL expressions and ``{{ expr }}`` string templates.

Expressions are compiled once per source text (an LRU keyed by the text) and evaluated
over a scope of plain JSON-like values: ``input``, ``vars``, ``nodes.<id>.output``,
``run`` and, inside bodies, ``item``/``index``/``iteration``/``last``. Nothing else is
visible, and the CEL runtime refuses Python objects outright, so no expression can
reach an attribute of a Python object.

The runtime is cel-expr-python (the CEL project's C++ implementation); see
docs/expressions.md for why. Speed: the runtime converts each top-level variable an
expression reads on every call, so an
expression is evaluated over a *pruned* ``nodes`` map holding only the node ids it names
(found statically when it is compiled). A workflow with 10,000 completed nodes costs
an expression that reads one of them the same as a workflow with one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from app.engine.errors import ExpressionCompileError, ExpressionEvaluationError

_POSITION = re.compile(r"<input>:(\d+):(\d+):\s*(.*)")
# `nodes.<id>` or `nodes["<id>"]`, but not a method call on the map (`nodes.size()`)
_NODE_REF = re.compile(
    r"""\bnodes\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()|\[\s*(?:"([^"]+)"|'([^']+)')\s*\])"""
)
_NODES_WORD = re.compile(r"\bnodes\b")

SCOPE_NAMES = frozenset({"input", "vars", "nodes", "run", "item", "index", "iteration", "last"})

#: a secret's name, as ``{{ secrets.NAME }}`` references it (``app.engine.secrets``)
SECRET_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
_SECRET_REFERENCE = re.compile(r"secrets\.([A-Za-z_][A-Za-z0-9_]{0,127})")
SECRETS_HINT = (
    "secrets are not values expressions can read: reference one as the template "
    "{{ secrets.NAME }} in a config field that takes secrets (an http node's headers)"
)

# One environment for every expression: the scope names are declared (as dynamic values),
# so a reference to anything else is a compile error, not a runtime surprise. Made with
# the first expression compiled (see ``_environment``), and the runtime's error type with it.
_ENV: Any = None
_ERROR: Any = None
_NOT_FOUND = re.compile(r'Key not found in map : "(.*)"')


@dataclass(frozen=True, slots=True)
class Expression:
    """A compiled CEL expression and the node ids it reads (``None``: it may read any)."""

    source: str
    program: Any
    node_refs: frozenset[str] | None

    def evaluate(self, scope: Scope) -> Any:
        try:
            value = self.program.eval(data=scope.activation(self.node_refs))
        except Exception as exc:  # defensive: the runtime reports errors as values
            raise ExpressionEvaluationError(self.source, str(exc)) from None
        if value.type() == _ERROR:
            raise ExpressionEvaluationError(self.source, _describe(str(value.value())))
        return value.plain_value()


def _describe(message: str) -> str:
    """The runtime's error text, without its status-code prefix."""
    status, _, detail = message.partition(": ")
    if not detail:
        return message
    missing = _NOT_FOUND.search(detail)
    if missing:
        return f"no such key: {missing.group(1)!r}"
    if status == "UNKNOWN" and "No value with name" in detail:
        return detail.replace("in Activation", "in this scope")
    return detail


def _node_refs(source: str) -> frozenset[str] | None:
    named = {m.group(1) or m.group(2) or m.group(3) for m in _NODE_REF.finditer(source)}
    # Every mention of `nodes` must be one of the static forms, or we cannot prune.
    if len(_NODES_WORD.findall(source)) != len(_NODE_REF.findall(source)):
        return None
    return frozenset(named)


def _environment() -> Any:
    """The CEL environment. The library is loaded here, not on import: it is a third
    of the engine's memory (a 14 MB extension, 6-7 MB of a process's RSS), and a run of
    a workflow without expressions or templates never needs it."""
    global _ENV, _ERROR
    if _ENV is None:
        from cel_expr_python import cel

        _ERROR = cel.Type.ERROR
        _ENV = cel.NewEnv(variables=dict.fromkeys(SCOPE_NAMES, cel.Type.DYN))
    return _ENV


@lru_cache(maxsize=8192)
def compile_expression(source: str) -> Expression:
    """Compile ``source`` (cached); raise :class:`ExpressionCompileError` with its position."""
    if not source.strip():
        raise ExpressionCompileError(source, "the expression is empty", 1, 1)
    try:
        program = _environment().compile(source)
    except Exception as exc:
        text = str(exc)
        match = _POSITION.search(text)
        if match:
            reason = match.group(3).splitlines()[0].strip()
            if "undeclared reference to 'secrets" in reason:
                reason += f"; {SECRETS_HINT}"
            elif "undeclared reference" in reason:
                reason += f"; expressions can use {', '.join(sorted(SCOPE_NAMES))}"
            raise ExpressionCompileError(
                source, reason, int(match.group(1)), int(match.group(2))
            ) from None
        raise ExpressionCompileError(source, text.splitlines()[0], None, None) from None
    return Expression(source, program, _node_refs(source))


class Scope:
    """What expressions see while a run executes. Values are shared, never copied."""

    __slots__ = ("extra", "input", "nodes", "run", "vars")

    def __init__(
        self,
        input: Any,
        vars: dict[str, Any],
        nodes: dict[str, Any],
        run: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.input = input
        self.vars = vars
        #: node id -> output, for nodes that completed
        self.nodes = nodes
        self.run = run
        self.extra = extra

    def activation(self, node_refs: frozenset[str] | None) -> dict[str, Any]:
        outputs = self.nodes
        if node_refs is None:
            nodes = {nid: {"output": out} for nid, out in outputs.items()}
        else:
            nodes = {nid: {"output": outputs[nid]} for nid in node_refs if nid in outputs}
        act: dict[str, Any] = {
            "input": self.input,
            "vars": self.vars,
            "nodes": nodes,
            "run": self.run,
        }
        if self.extra:
            act.update(self.extra)
        return act

    def child(self, input: Any, extra: Mapping[str, Any] | None) -> Scope:
        """A scope for a body run: its own ``nodes`` and ``input``, the same vars and run."""
        merged = dict(self.extra or {})
        merged.update(extra or {})
        return Scope(input, self.vars, {}, self.run, merged or None)


# ---------------------------------------------------------------------------- templates


@dataclass(frozen=True, slots=True)
class Template:
    """A string with ``{{ expr }}`` parts. A string that is exactly one template keeps
    the expression's type; otherwise the parts are rendered and concatenated."""

    parts: tuple[str | Expression, ...]

    def render(self, scope: Scope) -> Any:
        if len(self.parts) == 1 and isinstance(self.parts[0], Expression):
            return self.parts[0].evaluate(scope)
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                out.append(_to_text(part.evaluate(scope)))
        return "".join(out)


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        import json

        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def _template_spans(text: str) -> list[tuple[int, int, str]]:
    """``(start, end, source)`` of every ``{{ expr }}`` in ``text``.

    A template ends at the first ``}}`` outside a string literal and outside braces
    opened inside it, so ``{{ {'a': {'b': 1}} }}`` and ``{{ 'a}}b' }}`` are one template
    each. An unterminated ``{{`` is left as text.
    """
    spans: list[tuple[int, int, str]] = []
    pos = 0
    while True:
        start = text.find("{{", pos)
        if start < 0:
            return spans
        end = _template_end(text, start + 2)
        if end < 0:
            return spans
        spans.append((start, end + 2, text[start + 2 : end].strip()))
        pos = end + 2


def _template_end(text: str, i: int) -> int:
    """Index of the ``}}`` closing a template whose body starts at ``i``, or -1."""
    depth = 0
    quote: str | None = None
    while i < len(text):
        char = text[i]
        if quote is not None:
            if char == "\\":
                i += 2
                continue
            if text.startswith(quote, i):
                i += len(quote)
                quote = None
                continue
        elif char in "'\"":
            triple = text[i : i + 3]
            quote = triple if triple in ("'''", '"""') else char
            i += len(quote)
            continue
        elif char == "{":
            depth += 1
        elif char == "}":
            if depth == 0 and text.startswith("}}", i):
                return i
            depth -= 1
        i += 1
    return -1


def template_expressions(text: str) -> list[str]:
    """The expression sources inside ``{{ }}`` in ``text`` (for validation)."""
    return [source for _, _, source in _template_spans(text)]


def secret_reference(source: str) -> str | None:
    """The name of the secret a template's expression references, when the expression
    is exactly ``secrets.NAME``."""
    match = _SECRET_REFERENCE.fullmatch(source)
    return match.group(1) if match else None


def compile_template(text: str) -> Template | str:
    """Compile ``text``; a string with no ``{{ }}`` is returned unchanged.

    A ``{{ secrets.NAME }}`` reference is not an expression: it stays in the text as
    written, for the node to fill in (validation allows it only where a node does)."""
    if "{{" not in text:
        return text
    spans = _template_spans(text)
    parts: list[str | Expression] = []
    pos = 0
    for start, end, source in spans:
        if secret_reference(source) is not None:
            continue
        if start > pos:
            parts.append(text[pos:start])
        parts.append(compile_expression(source))
        pos = end
    if not parts:
        return text
    if pos < len(text):
        parts.append(text[pos:])
    return Template(tuple(parts))


@dataclass(frozen=True, slots=True)
class SecretTemplate:
    """A string of a field that takes secrets, as the definition wrote it: literal
    text around ``{{ secrets.NAME }}`` references, and nothing else (validation refuses
    other templates beside a reference, so no run data can move or forge one).
    ``texts`` has one item more than ``names``: text, name, text, ..., text."""

    texts: tuple[str, ...]
    names: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> SecretTemplate | None:
        """``text``'s references, or None when it references no secret."""
        if "{{" not in text:
            return None
        texts: list[str] = []
        names: list[str] = []
        pos = 0
        for start, end, source in _template_spans(text):
            name = secret_reference(source)
            if name is None:
                continue
            texts.append(text[pos:start])
            names.append(name)
            pos = end
        if not names:
            return None
        texts.append(text[pos:])
        return cls(tuple(texts), tuple(names))

    def fill(self, values: Mapping[str, str]) -> str:
        """The text with each reference replaced by ``values[name]``."""
        out = [self.texts[0]]
        for name, text in zip(self.names, self.texts[1:], strict=True):
            out.append(values[name])
            out.append(text)
        return "".join(out)


class ValueTemplate:
    """A JSON-like value (e.g. a node's config) with templates compiled in place.

    ``render`` returns the value itself when it holds no template, so configs without
    templates cost nothing per execution.
    """

    __slots__ = ("_compiled", "is_static", "raw")

    def __init__(self, raw: Any, skip_keys: frozenset[str] = frozenset()) -> None:
        self.raw = raw
        compiled, dynamic = _compile_value(raw, skip_keys)
        self.is_static = not dynamic
        self._compiled = compiled

    def render(self, scope: Scope) -> Any:
        if self.is_static:
            return self.raw
        return _render(self._compiled, scope)


def _compile_value(value: Any, skip_keys: frozenset[str] = frozenset()) -> tuple[Any, bool]:
    if isinstance(value, str):
        compiled = compile_template(value)
        return compiled, isinstance(compiled, Template)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        dynamic = False
        for key, item in value.items():
            if key in skip_keys:
                out[key] = _Literal(item)
                continue
            out[key], d = _compile_value(item)
            dynamic = dynamic or d
        return out, dynamic
    if isinstance(value, list):
        items = []
        dynamic = False
        for item in value:
            c, d = _compile_value(item)
            items.append(c)
            dynamic = dynamic or d
        return items, dynamic
    return value, False


@dataclass(frozen=True, slots=True)
class _Literal:
    value: Any


def _render(compiled: Any, scope: Scope) -> Any:
    if isinstance(compiled, Template):
        return compiled.render(scope)
    if isinstance(compiled, _Literal):
        return compiled.value
    if isinstance(compiled, dict):
        return {k: _render(v, scope) for k, v in compiled.items()}
    if isinstance(compiled, list):
        return [_render(v, scope) for v in compiled]
    return compiled
