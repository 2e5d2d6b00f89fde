"""Secrets: values a definition references by name, ``{{ secrets.NAME }}``, and never holds.

A node type lists the config fields that take secrets (``BaseNode.secret_fields``: the
``http`` node's ``headers``); anywhere else a reference is refused when the definition is
validated. The engine passes those references through its templates untouched, and the
node fills them in itself at the last moment from the run's :class:`SecretResolver`
(``NodeContext.resolve_secrets``), so a value is never part of a resolved config, a
cache key or an expression's scope.

A resolver also *masks*: whatever a run writes out may echo a value it resolved (a
server that returns the request's ``Authorization`` header), so everything a run's
results are written to passes through :meth:`SecretResolver.mask` first. The engine
masks what it writes itself (``verbose_logging`` and the DEBUG trace); a service masks
what it stores and publishes with the same resolver. :class:`SecretMask` is the masking,
for any implementation to use; :class:`InMemorySecrets` the in-process resolver.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Iterable, Mapping
from typing import Any, Protocol

from app.engine.checkpoint import CheckpointRecord
from app.engine.errors import SecretUnavailableError
from app.engine.events import Event

__all__ = ["MASK", "InMemorySecrets", "SecretMask", "SecretResolver"]

#: what a secret's value is replaced by wherever a run's results are written
MASK = "***"


class SecretResolver(Protocol):
    """The secrets one run may use, and the masking of what it resolved."""

    async def resolve(self, names: Collection[str]) -> Mapping[str, str]:
        """The value of each of ``names``; :class:`SecretUnavailableError` naming a
        secret that is not set (or cannot be read). Never logs a value."""
        ...

    def mask(self, value: Any) -> Any:
        """``value`` (any JSON-like value) with every secret value this resolver handed
        out replaced by :data:`MASK`; ``value`` itself when it handed out none."""
        ...


class SecretMask:
    """The values to hide, and hiding them in JSON-like values, events and checkpoint
    records. Empty (``bool(mask)`` is False), it costs nothing: callers test it first.

    A value is found as it was resolved and as JSON escapes it (a response read as text
    may quote it); a value that a node transforms (encodes, hashes, slices) is not
    recognisable, as with any masking of logs."""

    __slots__ = ("_needles",)

    def __init__(self, values: Iterable[str] = ()) -> None:
        #: every form of every value, longest first (a value that contains another
        #: is replaced whole)
        self._needles: tuple[str, ...] = ()
        self.add(values)

    def __bool__(self) -> bool:
        return bool(self._needles)

    def add(self, values: Iterable[str]) -> None:
        """Hide ``values`` too, from now on."""
        needles = set(self._needles)
        for value in values:
            if not value:
                continue
            needles.add(value)
            for ascii_only in (True, False):
                escaped = json.dumps(value, ensure_ascii=ascii_only)[1:-1]
                if escaped:
                    needles.add(escaped)
        if len(needles) != len(self._needles):
            self._needles = tuple(sorted(needles, key=lambda n: (-len(n), n)))

    def apply(self, value: Any) -> Any:
        """``value`` with every secret in its strings (keys included) masked: a new
        value where something was masked, the same objects elsewhere."""
        if not self._needles:
            return value
        return self._apply(value)

    def _apply(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {
                self.text(k) if isinstance(k, str) else k: self._apply(v) for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self._apply(item) for item in value]
        return value

    def text(self, text: str) -> str:
        for needle in self._needles:
            if needle in text:
                text = text.replace(needle, MASK)
        return text

    def event(self, event: Event) -> Event:
        """``event`` with its data masked."""
        if not self._needles or not event.data:
            return event
        return dataclasses.replace(event, data=self._apply(event.data))

    def record(self, record: CheckpointRecord) -> CheckpointRecord:
        """A checkpoint record with what its run produced masked: node outputs and
        errors, variables, pending items, signals, the input and the run's error."""
        if not self._needles:
            return record
        completed = {
            node_id: dataclasses.replace(
                node,
                output=self._apply(node.output),
                error=None if node.error is None else self.text(node.error),
            )
            for node_id, node in record.completed.items()
        }
        return dataclasses.replace(
            record,
            completed=completed,
            variables=self._apply(record.variables),
            pending=self._apply(record.pending),
            input=self._apply(record.input),
            error=self._apply(record.error),
            signals=self._apply(record.signals),
        )


class InMemorySecrets:
    """Secrets from a mapping (a library user's, a test's): ``resolve`` hands them out
    and ``mask`` hides every value handed out so far."""

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self._values = dict(values or {})
        self._mask = SecretMask()

    def set(self, name: str, value: str) -> None:
        self._values[name] = value

    async def resolve(self, names: Collection[str]) -> Mapping[str, str]:
        found: dict[str, str] = {}
        for name in sorted(names):
            if name not in self._values:
                raise SecretUnavailableError(f"secret {name!r} is not set")
            found[name] = self._values[name]
        self._mask.add(found.values())
        return found

    def mask(self, value: Any) -> Any:
        return self._mask.apply(value)
