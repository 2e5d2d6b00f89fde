"""``create_workflow`` and ``validate_workflow``: parse a definition and report *every*
problem in it at once, each naming the node or edge, the field and the reason."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError

from app.engine.config import LIMIT_FIELDS, PROCESS_FIELDS, ExecutionConfig
from app.engine.dsl import EdgeSpec, NodeSpec, WorkflowDefinition
from app.engine.errors import (
    ExpressionCompileError,
    UnknownNodeTypeError,
    ValidationIssue,
    WorkflowValidationError,
)
from app.engine.expressions import compile_expression, secret_reference, template_expressions
from app.engine.graph import compile_workflow, instantiate
from app.engine.node import BaseNode
from app.engine.registry import NodeRegistry
from app.engine.values import ValueProblem, inspect_value

FORMATS_GROUP = "flowcore.formats"

Source = WorkflowDefinition | dict[str, Any] | str | bytes


def create_workflow(source: Source, *, limits: ExecutionConfig | None = None) -> WorkflowDefinition:
    """Parse and validate a definition given as a dict, JSON text or YAML text.

    Raises :class:`WorkflowValidationError` listing every problem found.
    """
    definition, issues = _check(source, limits or ExecutionConfig())
    if issues or definition is None:
        raise WorkflowValidationError(issues)
    return definition


def validate_workflow(
    source: Source, *, limits: ExecutionConfig | None = None
) -> list[ValidationIssue]:
    """Every problem in a definition (an empty list: it is valid)."""
    return _check(source, limits or ExecutionConfig())[1]


# ------------------------------------------------------------------------------ parsing


def _parse_text(text: str) -> Any:
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        return json.loads(text)
    for ep in entry_points(group=FORMATS_GROUP, name="yaml"):
        return ep.load()(text)
    raise ValueError(
        "the text is not JSON and no YAML loader is installed "
        f"(entry-point group {FORMATS_GROUP!r}, name 'yaml')"
    )


def _check(
    source: Source, limits: ExecutionConfig
) -> tuple[WorkflowDefinition | None, list[ValidationIssue]]:
    if isinstance(source, WorkflowDefinition):
        raw: Any = source.model_dump(mode="json", exclude_none=True)
    elif isinstance(source, str | bytes):
        text = source.decode() if isinstance(source, bytes) else source
        if len(text.encode()) > limits.max_definition_bytes:
            return None, [_too_big(len(text.encode()), limits)]
        try:
            raw = _parse_text(text)
        except Exception as exc:
            return None, [ValidationIssue(f"cannot parse the definition: {exc}", code="parse")]
    else:
        raw = source
    if not isinstance(raw, dict):
        return None, [ValidationIssue("a workflow definition must be an object", code="type")]
    try:
        # nesting, NUL characters, lone surrogates, NaN and infinities: refused here,
        # whatever field holds them, rather than when a run reads them
        inspect_value(raw, max_depth=limits.max_value_depth)
    except ValueProblem as problem:
        code = "limit" if "nests deeper" in problem.reason else "value"
        reason = problem.reason
        if code == "limit":
            reason += f" (max_value_depth={limits.max_value_depth})"
        return None, [ValidationIssue(reason, field=problem.path.lstrip(".") or None, code=code)]
    try:
        size = len(json.dumps(raw, separators=(",", ":"), default=str).encode())
    except (TypeError, ValueError) as exc:
        return None, [ValidationIssue(f"the definition is not JSON-like: {exc}", code="type")]
    if size > limits.max_definition_bytes:
        return None, [_too_big(size, limits)]
    checker = _Checker(limits)
    definition = checker.definition(raw, prefix="", depth=0)
    if definition is None or checker.issues:
        return None, checker.issues
    compile_workflow(definition, checker.instances)  # reuses the validated instances
    return definition, []


def _too_big(size: int, limits: ExecutionConfig) -> ValidationIssue:
    return ValidationIssue(
        f"the definition is {size} bytes; max_definition_bytes is {limits.max_definition_bytes}",
        code="limit",
    )


def _field_of(loc: Iterable[int | str]) -> str:
    return ".".join(str(part) for part in loc) or "(root)"


def _config_field(field: str | None) -> str:
    """``config.<field>``, or plain ``config`` for a check on the config as a whole."""
    return "config" if field in (None, "(root)") else f"config.{field}"


def _issues_from(exc: ValidationError, **where: str | None) -> list[ValidationIssue]:
    return [
        ValidationIssue(err["msg"], field=_field_of(err["loc"]), code="schema", **where)
        for err in exc.errors(include_url=False)
    ]


class _Checker:
    """Walks a raw definition (and its nested bodies), collecting issues."""

    def __init__(self, limits: ExecutionConfig) -> None:
        self.limits = limits
        self.issues: list[ValidationIssue] = []
        self.node_count = 0
        self.edge_count = 0
        #: node instances of the top-level graph, reused when it is compiled
        self.instances: dict[str, BaseNode] = {}

    def add(self, message: str, code: str, **where: str | None) -> None:
        self.issues.append(ValidationIssue(message, code=code, **where))

    # -- the definition, piece by piece so one bad node does not hide the others

    def definition(self, raw: dict[str, Any], prefix: str, depth: int) -> WorkflowDefinition | None:
        nodes_raw = raw.get("nodes", [])
        edges_raw = raw.get("edges", [])
        top = {k: v for k, v in raw.items() if k not in ("nodes", "edges")}
        ok = True
        try:
            WorkflowDefinition.model_validate(top)
        except ValidationError as exc:
            ok = False
            for issue in _issues_from(exc):
                self.issues.append(
                    ValidationIssue(
                        issue.message, field=prefix + (issue.field or ""), code="schema"
                    )
                )
        if depth == 0:
            self._config(raw.get("config"))
        parsed_nodes = self._nodes(nodes_raw, prefix)
        parsed_edges = self._edges(edges_raw, prefix)
        if parsed_nodes is None or parsed_edges is None:
            # not a list, or over a limit: checking further would only echo this
            return None
        nodes, node_ids, nodes_ok = parsed_nodes
        edges, edges_ok = parsed_edges
        if not node_ids and nodes_ok:
            self.add("a workflow needs at least one node", "schema", field=prefix + "nodes")
            nodes_ok = False
        ok = ok and nodes_ok and edges_ok
        self.node_count += len(node_ids)
        self.edge_count += len(edges_raw)
        if self.node_count > self.limits.max_nodes:
            self._limit_once("node count", self.node_count, "max_nodes", self.limits.max_nodes)
        if self.edge_count > self.limits.max_edges:
            self._limit_once("edge count", self.edge_count, "max_edges", self.limits.max_edges)
        # graph checks run on what parsed; ids of nodes that failed their schema still
        # count as known, so their edges are not reported a second time
        if not self._graph(nodes, edges, prefix, node_ids):
            ok = False
        if nodes and not self._node_types(nodes, prefix, depth):
            ok = False
        for name, source in (
            (raw.get("output") or {}).items() if isinstance(raw.get("output"), dict) else []
        ):
            if isinstance(source, str):
                self._expression(source, field=f"{prefix}output.{name}")
        if not ok or self.issues:
            return None
        return WorkflowDefinition.model_validate({**top, "nodes": nodes, "edges": edges})

    def _limit_once(self, what: str, value: int, knob: str, limit: int) -> None:
        message = f"the {what} {value} exceeds {knob}={limit}"
        if not any(i.code == "limit" and knob in i.message for i in self.issues):
            self.add(message, "limit")

    def _nodes(self, raw: Any, prefix: str) -> tuple[list[NodeSpec], list[str], bool] | None:
        """The nodes that parse, every node id given (for graph checks), and whether all
        parsed; None when the list itself is unusable."""
        if not isinstance(raw, list):
            self.add("must be a list of nodes", "schema", field=prefix + "nodes")
            return None
        if len(raw) > self.limits.max_nodes:
            self._limit_once("node count", len(raw), "max_nodes", self.limits.max_nodes)
            return None
        nodes: list[NodeSpec] = []
        ids: list[str] = []
        ok = True
        for index, item in enumerate(raw):
            has_id = isinstance(item, dict) and isinstance(item.get("id"), str)
            label: str = item["id"] if has_id else f"#{index}"
            if has_id:
                ids.append(label)
            try:
                nodes.append(NodeSpec.model_validate(item))
            except ValidationError as exc:
                ok = False
                for issue in _issues_from(exc):
                    self.add(issue.message, "schema", node=prefix + label, field=issue.field)
        return nodes, ids, ok

    def _edges(self, raw: Any, prefix: str) -> tuple[list[EdgeSpec], bool] | None:
        if not isinstance(raw, list):
            self.add("must be a list of edges", "schema", field=prefix + "edges")
            return None
        if len(raw) > self.limits.max_edges:
            self._limit_once("edge count", len(raw), "max_edges", self.limits.max_edges)
            return None
        edges: list[EdgeSpec] = []
        ok = True
        for index, item in enumerate(raw):
            try:
                edges.append(EdgeSpec.model_validate(item))
            except ValidationError as exc:
                ok = False
                label = (
                    f"{item.get('source')}->{item.get('target')}"
                    if isinstance(item, dict)
                    else f"#{index}"
                )
                for issue in _issues_from(exc):
                    self.add(issue.message, "schema", edge=prefix + label, field=issue.field)
        return edges, ok

    def _config(self, raw: Any) -> None:
        if raw is None:
            return
        if not isinstance(raw, dict):
            self.add("must be an object of ExecutionConfig knobs", "config", field="config")
            return
        known = set(ExecutionConfig.model_fields)
        for key in raw:
            if key in LIMIT_FIELDS:
                self.add(
                    f"{key} is a definition limit, set by whoever validates the definition",
                    "config",
                    field=f"config.{key}",
                )
            elif key in PROCESS_FIELDS:
                self.add(
                    f"{key} configures the process, not a run: it is the operator's setting",
                    "config",
                    field=f"config.{key}",
                )
            elif key not in known or key == "error_handler":
                self.add(f"unknown execution knob {key!r}", "config", field=f"config.{key}")
        try:
            ExecutionConfig.model_validate(
                {
                    k: v
                    for k, v in raw.items()
                    if k in known
                    and k not in LIMIT_FIELDS
                    and k not in PROCESS_FIELDS
                    and k != "error_handler"
                }
            )
        except ValidationError as exc:
            for issue in _issues_from(exc):
                self.add(issue.message, "config", field=_config_field(issue.field))

    def _expression(self, source: str, **where: str | None) -> None:
        if len(source) > self.limits.max_expression_length:
            self.add(
                f"the expression is {len(source)} characters; max_expression_length is "
                f"{self.limits.max_expression_length}",
                "limit",
                **where,
            )
            return
        try:
            compile_expression(source)
        except ExpressionCompileError as exc:
            self.add(str(exc), "expression", **where)

    def _templates(
        self,
        value: Any,
        node: str,
        field: str,
        takes_secrets: bool = False,
        secret_fields: frozenset[str] = frozenset(),
    ) -> None:
        """Compile the templates in ``value``, which may reference secrets if it is in
        one of ``secret_fields`` (the node type's: ``takes_secrets``)."""
        if isinstance(value, str):
            if "{{" in value:
                sources = template_expressions(value)
                secrets = [s for s in sources if secret_reference(s) is not None]
                if secrets and not takes_secrets:
                    where = ", ".join(sorted(secret_fields)) or "none"
                    self.add(
                        f"{{{{ {secrets[0]} }}}}: secrets may be referenced only in the "
                        f"config fields that take them (this node type's: {where})",
                        "secret",
                        node=node,
                        field=field,
                    )
                elif secrets and len(secrets) < len(sources):
                    self.add(
                        "a value that references a secret holds only text and "
                        "{{ secrets.NAME }} references, no other template",
                        "secret",
                        node=node,
                        field=field,
                    )
                for source in sources:
                    if secret_reference(source) is None:
                        self._expression(source, node=node, field=field)
        elif isinstance(value, dict):
            for key, item in value.items():
                self._templates(item, node, f"{field}.{key}", takes_secrets, secret_fields)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self._templates(item, node, f"{field}[{index}]", takes_secrets, secret_fields)

    # -- graph structure

    def _graph(
        self, nodes: list[NodeSpec], edges: list[EdgeSpec], prefix: str, node_ids: list[str]
    ) -> bool:
        ok = True
        ids: set[str] = set()
        for node_id in node_ids:
            if node_id in ids:
                self.add("duplicate node id", "duplicate_id", node=prefix + node_id, field="id")
                ok = False
            ids.add(node_id)
        seen_edges: set[tuple[str, str]] = set()
        good: list[EdgeSpec] = []
        for edge in edges:
            label = prefix + edge.label
            bad = False
            for end in ("source", "target"):
                if getattr(edge, end) not in ids:
                    self.add(
                        f"unknown node {getattr(edge, end)!r}",
                        "unknown_node",
                        edge=label,
                        field=end,
                    )
                    bad = True
            if (edge.source, edge.target) in seen_edges:
                self.add("duplicate edge", "duplicate_edge", edge=label)
                bad = True
            seen_edges.add((edge.source, edge.target))
            if edge.condition is not None:
                self._expression(edge.condition, edge=label, field="condition")
            if not bad:
                good.append(edge)
        ok = ok and len(good) == len(edges)
        for cycle in _find_cycles(sorted(ids), good):
            path = " -> ".join(prefix + n for n in cycle)
            self.add(f"the graph has a cycle: {path}", "cycle", node=prefix + cycle[0])
            ok = False
        # fallbacks: must exist, must not be the node itself, chains must not loop
        fallback = {s.id: s.fallback for s in nodes if s.fallback is not None}
        for node_id, target in fallback.items():
            if target not in ids:
                self.add(
                    f"unknown fallback node {target!r}",
                    "unknown_node",
                    node=prefix + node_id,
                    field="fallback",
                )
                ok = False
        for node_id in fallback:
            chain = [node_id]
            current = fallback.get(node_id)
            while current is not None and current in ids:
                if current in chain:
                    loop = " -> ".join(
                        prefix + n for n in [*chain[chain.index(current) :], current]
                    )
                    if chain[0] == current:  # report each loop once, from its first member
                        self.add(
                            f"fallback chain loops: {loop}",
                            "fallback_cycle",
                            node=prefix + node_id,
                            field="fallback",
                        )
                        ok = False
                    break
                chain.append(current)
                current = fallback.get(current)
        return ok

    def _node_types(self, nodes: list[NodeSpec], prefix: str, depth: int) -> bool:
        ok = True
        for spec in nodes:
            node = prefix + spec.id
            try:
                node_cls = NodeRegistry.get(spec.type)
            except UnknownNodeTypeError as exc:
                self.add(str(exc), "unknown_type", node=node, field="type")
                ok = False
                continue
            try:
                instance = instantiate(spec)
            except ValidationError as exc:
                ok = False
                for issue in _issues_from(exc):
                    self.add(issue.message, "config", node=node, field=_config_field(issue.field))
                continue
            if not prefix:
                self.instances[spec.id] = instance
            skip = node_cls.expression_fields
            for key, value in spec.config.items():
                if key not in skip:
                    takes = key in node_cls.secret_fields
                    self._templates(value, node, f"config.{key}", takes, node_cls.secret_fields)
            for field, source in instance.expressions():
                self._expression(source, node=node, field=f"config.{field}")
            for field, body in instance.bodies():
                if depth + 1 >= self.limits.max_nesting_depth:
                    self.add(
                        "body workflows nest too deeply",
                        "limit",
                        node=node,
                        field=f"config.{field}",
                    )
                    ok = False
                    continue
                self.definition(body, prefix=f"{node}.{field}/", depth=depth + 1)
        return ok


def _find_cycles(ids: list[str], edges: list[EdgeSpec]) -> list[list[str]]:
    """One closed path [a, b, ..., a] per strongly connected component that has a cycle
    (so disjoint cycles are each reported). Tarjan's algorithm, iteratively."""
    children: dict[str, list[str]] = {i: [] for i in ids}
    for edge in edges:
        children[edge.source].append(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in ids:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, child_pos = work.pop()
            if child_pos == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            kids = children[node]
            if child_pos < len(kids):
                work.append((node, child_pos + 1))
                child = kids[child_pos]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in children[node]:
                    components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return [_cycle_in(sorted(c), children) for c in sorted(components, key=min)]


def _cycle_in(component: list[str], children: dict[str, list[str]]) -> list[str]:
    """A closed path inside one strongly connected component, from its smallest id."""
    members = set(component)
    start = component[0]
    if start in children[start]:
        return [start, start]
    # breadth-first search from start back to start, within the component
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in children[node]:
            if child not in members:
                continue
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                path.reverse()
                return [*path, start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    return [start, start]  # unreachable for a real component
