"""A validated definition compiled for execution: node instances, index-based edges,
compiled conditions and config templates. Built once per definition and cached on it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from app.engine.dsl import NodeSpec, WorkflowDefinition
from app.engine.expressions import Expression, ValueTemplate, compile_expression
from app.engine.node import BaseNode
from app.engine.registry import NodeRegistry


@dataclass(slots=True, eq=False)
class CompiledEdge:
    source: int
    target: int
    condition: Expression | None
    label: str


@dataclass(slots=True, eq=False)
class CompiledNode:
    index: int
    id: str
    spec: NodeSpec
    node: BaseNode
    config: ValueTemplate
    parents: tuple[int, ...]
    out_edges: tuple[CompiledEdge, ...]
    in_degree: int
    join_any: bool
    fallback: int | None
    #: only ever runs as another node's fallback (no edges of its own)
    standby: bool
    #: the node has raw CEL in its config (which a cache key must account for)
    has_expressions: bool = False
    #: node ids its raw CEL reads (None: any node)
    expression_reads: frozenset[str] | None = frozenset()


@dataclass(slots=True, eq=False)
class CompiledWorkflow:
    definition: WorkflowDefinition
    nodes: list[CompiledNode]
    by_id: dict[str, int]
    roots: list[int]
    leaves: list[int]
    output: dict[str, Expression] | None


#: the validated empty config of each config model, shared by every node that has one
_EMPTY_CONFIGS: dict[type[BaseModel], BaseModel] = {}


def instantiate(spec: NodeSpec) -> BaseNode:
    """A node instance for ``spec`` with its validated config model (raises pydantic's
    ValidationError or UnknownNodeTypeError)."""
    node_cls = NodeRegistry.get(spec.type)
    node = node_cls()
    node.id = spec.id
    node.spec = spec
    model = node_cls.config_model
    if model is not None:
        if spec.config:
            node.config = model.model_validate(spec.config)
        else:  # most nodes of a big graph have no config: share one validated instance
            empty = _EMPTY_CONFIGS.get(model)
            if empty is None:
                empty = _EMPTY_CONFIGS[model] = model.model_validate({})
            node.config = empty
    return node


def compile_workflow(
    definition: WorkflowDefinition, instances: Mapping[str, BaseNode] | None = None
) -> CompiledWorkflow:
    """Compile (once) a definition that ``create_workflow`` has validated; ``instances``
    are node instances validation already built, by node id."""
    cached: CompiledWorkflow | None = definition._compiled
    if cached is not None:
        return cached
    by_id = {spec.id: i for i, spec in enumerate(definition.nodes)}
    incoming: list[list[int]] = [[] for _ in definition.nodes]
    outgoing: list[list[CompiledEdge]] = [[] for _ in definition.nodes]
    for edge in definition.edges:
        s, t = by_id[edge.source], by_id[edge.target]
        condition = compile_expression(edge.condition) if edge.condition is not None else None
        outgoing[s].append(CompiledEdge(s, t, condition, edge.label))
        incoming[t].append(s)
    fallback_targets = {spec.fallback for spec in definition.nodes if spec.fallback}
    nodes: list[CompiledNode] = []
    for i, spec in enumerate(definition.nodes):
        node = instances.get(spec.id) if instances is not None else None
        if node is None or node.spec is not spec:
            node = instantiate(spec)
        node_cls = type(node)
        standby = spec.id in fallback_targets and not incoming[i] and not outgoing[i]
        sources = [source for _, source in node.expressions()]
        reads: frozenset[str] | None = frozenset()
        for source in sources:
            refs = compile_expression(source).node_refs
            reads = None if refs is None or reads is None else reads | refs
        nodes.append(
            CompiledNode(
                index=i,
                id=spec.id,
                spec=spec,
                node=node,
                config=ValueTemplate(spec.config, node_cls.expression_fields),
                parents=tuple(incoming[i]),
                out_edges=tuple(outgoing[i]),
                in_degree=len(incoming[i]),
                join_any=spec.join == "any",
                fallback=by_id[spec.fallback] if spec.fallback else None,
                standby=standby,
                has_expressions=bool(sources),
                expression_reads=reads,
            )
        )
    output: dict[str, Any] | None = None
    if definition.output is not None:
        output = {name: compile_expression(src) for name, src in definition.output.items()}
    compiled = CompiledWorkflow(
        definition=definition,
        nodes=nodes,
        by_id=by_id,
        roots=[n.index for n in nodes if n.in_degree == 0 and not n.standby],
        leaves=[n.index for n in nodes if not n.out_edges and not n.standby],
        output=output,
    )
    definition._compiled = compiled
    return compiled
