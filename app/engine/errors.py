"""The engine's error hierarchy.

FlowcoreError
├── WorkflowValidationError      a definition was rejected (carries every issue found)
├── ExpressionError
│   ├── ExpressionCompileError   a CEL expression does not parse (carries the position)
│   └── ExpressionEvaluationError
├── NodeError                    raised by or for one node
│   ├── NodeConfigError          a resolved config failed its model at run time
│   │   └── SecretUnavailableError   a secret a node references is not set (or unreadable)
│   ├── NodeExecutionError       a node reported or raised a failure
│   ├── NodeTimeoutError         a node ran past its timeout
│   └── DeliberateFailure        the `fail` node
├── PluginLoadError              a plugin module or entry point could not be loaded
├── UnknownNodeTypeError
├── InputValidationError         run input does not match the workflow's input_schema
│                                or cannot be stored (too deep, a NUL, a NaN)
├── ValueProblem                 (values) where a value cannot be stored, and why
├── UnstorableValueError         (values) a node produced such a value: kind ``output``
├── BudgetExceededError          (budget) a run crossed a budget: kind ``budget``
├── RunNotFoundError             no live run with that id in this executor
└── WorkflowNotFoundError        a subworkflow reference that no resolver knows
"""

from __future__ import annotations

from dataclasses import dataclass


class FlowcoreError(Exception):
    """Base class of every error the engine raises on purpose."""

    kind: str = "error"


@dataclass(frozen=True, slots=True)
class ValidationIssue:
    """One reason a definition was rejected: where (node/edge/field) and why."""

    message: str
    node: str | None = None
    edge: str | None = None
    field: str | None = None
    code: str = "invalid"

    def __str__(self) -> str:
        where = []
        if self.node is not None:
            where.append(f"node {self.node!r}")
        if self.edge is not None:
            where.append(f"edge {self.edge}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message

    def to_dict(self) -> dict[str, str | None]:
        return {
            "code": self.code,
            "node": self.node,
            "edge": self.edge,
            "field": self.field,
            "message": self.message,
        }


class WorkflowValidationError(FlowcoreError):
    """A workflow definition was rejected; ``issues`` lists every problem found."""

    kind = "validation"

    def __init__(self, issues: list[ValidationIssue]) -> None:
        self.issues = list(issues)
        shown = self.issues[: self.SHOWN]
        lines = "\n".join(f"  - {issue}" for issue in shown)
        more = len(self.issues) - len(shown)
        if more:
            lines += f"\n  ... and {more} more"
        super().__init__(f"invalid workflow definition ({len(self.issues)} issue(s)):\n{lines}")

    #: issues printed in the message (``issues`` always holds all of them)
    SHOWN = 20


class ExpressionError(FlowcoreError):
    """Base of CEL expression errors."""

    kind = "expression"


class ExpressionCompileError(ExpressionError):
    """A CEL expression does not compile; ``line`` and ``column`` are 1-based."""

    def __init__(self, source: str, reason: str, line: int | None, column: int | None) -> None:
        self.source = source
        self.reason = reason
        self.line = line
        self.column = column
        at = f" at line {line}, column {column}" if line is not None else ""
        super().__init__(f"expression {source!r} does not compile{at}: {reason}")


class ExpressionEvaluationError(ExpressionError):
    """A compiled CEL expression failed while it was evaluated."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"expression {source!r} failed: {reason}")


class NodeError(FlowcoreError):
    """Base of errors that belong to one node."""

    kind = "node"


class NodeConfigError(NodeError):
    kind = "config"


class SecretUnavailableError(NodeConfigError):
    """A secret a node references (``{{ secrets.NAME }}``) is not set, or cannot be read;
    the message names the secret, never a value."""


class NodeExecutionError(NodeError):
    kind = "execution"


class NodeTimeoutError(NodeError):
    kind = "timeout"


class DeliberateFailure(NodeError):
    kind = "deliberate"


class PluginLoadError(FlowcoreError):
    kind = "plugin"


class UnknownNodeTypeError(FlowcoreError):
    kind = "unknown_node_type"


class RunNotFoundError(FlowcoreError):
    kind = "run_not_found"


class WorkflowNotFoundError(FlowcoreError):
    kind = "workflow_not_found"


class InputValidationError(FlowcoreError):
    """Run input failed the workflow's ``input_schema``; ``problems`` lists why."""

    kind = "input"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid run input: " + "; ".join(problems))
