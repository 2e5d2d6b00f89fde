"""What a value must be to be kept: JSON that every store holds exactly as it was given.

Run inputs, variables, signal payloads and node outputs are written to checkpoints and
event logs. A value is *storable* when it is JSON-like (dicts with string keys, lists,
strings, numbers, booleans, null) and

- nests at most ``max_depth`` levels (a scalar is depth 0, ``{"a": 1}`` depth 1): deeper
  data costs the encoder its recursion limit and a reader its patience;
- holds no NUL character and no lone surrogate in any string or key: Postgres refuses
  both, SQLite would cut a string at the NUL, and no UTF-8 encoder writes a surrogate;
- holds no NaN or infinite number: JSON has no spelling for them, Postgres refuses
  them and other stores turn them into ``null``.

:func:`inspect_value` checks all of that in one iterative walk and returns the value's
size as JSON (an estimate within a few percent, used for the output and state budgets).
Objects of other types are counted by their text, as the stores write them.
"""

from __future__ import annotations

import math
from typing import Any

from app.engine.errors import FlowcoreError, InputValidationError

__all__ = ["UnstorableValueError", "ValueProblem", "clean_text", "inspect_value"]


class ValueProblem(FlowcoreError):
    """Where in a value (``path``, e.g. ``.items[3].name``; empty: the value itself)
    and what is wrong with it."""

    kind = "value"

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


class UnstorableValueError(FlowcoreError):
    """A node produced a value that cannot be stored (kind ``output``)."""

    kind = "output"


# (value, depth of the value, parent entry, key within the parent): the parent chain
# rebuilds a path only when something is wrong, so a clean walk builds no strings
_Entry = tuple[Any, int, "tuple[Any, ...] | None", "str | int | None"]


def inspect_value(value: Any, *, max_depth: int) -> int:
    """The JSON size of ``value`` in bytes (estimated); raises :class:`ValueProblem` for
    the first part of it that is not storable (see the module docstring)."""
    size = 0
    stack: list[_Entry] = [(value, 0, None, None)]
    pop = stack.pop
    push = stack.append
    while stack:
        entry = pop()
        item, depth, _parent, _key = entry
        kind = type(item)
        if kind is str:
            size += _text_size(item, entry)
        elif kind is dict:
            depth += 1
            if depth > max_depth:
                raise ValueProblem(_path(entry), f"nests deeper than {max_depth} levels")
            size += 2 + len(item)
            for key, child in item.items():
                if type(key) is not str:
                    key = str(key)  # what JSON makes of it
                size += _text_size(key, entry, key=True) + 1
                push((child, depth, entry, key))
        elif kind is list or kind is tuple:
            depth += 1
            if depth > max_depth:
                raise ValueProblem(_path(entry), f"nests deeper than {max_depth} levels")
            size += 2 + len(item)
            for index, child in enumerate(item):
                push((child, depth, entry, index))
        elif kind is bool or item is None:
            size += 5
        elif kind is int:
            size += item.bit_length() * 3 // 10 + 2
        elif kind is float:
            if not math.isfinite(item):
                spelled = "NaN" if item != item else "Infinity" if item > 0 else "-Infinity"
                raise ValueProblem(_path(entry), f"{spelled} is not a JSON number")
            size += len(repr(item))
        elif isinstance(item, str | dict | list | tuple | int | float):
            # a subclass (an enum, a named tuple...): checked as its plain type
            push((_plain(item), depth, _parent, _key))
        else:
            size += _text_size(str(item), entry)
    return size


def check_storable(value: Any, field: str, *, max_depth: int) -> None:
    """Refuse run input or variables no store can hold (too deep, a NUL, a NaN) with
    InputValidationError, before the run starts: the expression runtime would even cut
    a string at a NUL."""
    try:
        inspect_value(value, max_depth=max_depth)
    except ValueProblem as problem:
        raise InputValidationError([f"{field}{problem.path}: {problem.reason}"]) from None


def _plain(item: Any) -> Any:
    if isinstance(item, str):
        return str(item)
    if isinstance(item, dict):
        return dict(item)
    if isinstance(item, list | tuple):
        return list(item)
    if isinstance(item, int):
        return int(item)
    return float(item)


def _text_size(text: str, entry: _Entry, *, key: bool = False) -> int:
    if "\x00" in text:
        where = "a key" if key else "a string"
        raise ValueProblem(_path(entry), f"{where} holds a NUL character (\\u0000)")
    if text.isascii():
        return len(text) + 2
    try:
        return len(text.encode()) + 2
    except UnicodeEncodeError:
        where = "a key" if key else "a string"
        raise ValueProblem(_path(entry), f"{where} holds a lone surrogate") from None


def _path(entry: _Entry) -> str:
    parts: list[str] = []
    current: Any = entry
    while current is not None and current[2] is not None:
        key = current[3]
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
        current = current[2]
    path = "".join(reversed(parts))
    if len(path) > 120:  # a path 64 levels deep says no more than its ends do
        path = f"{path[:60]}...{path[-40:]}"
    return path


def clean_text(text: str) -> str:
    """``text`` with NUL characters and lone surrogates written as escapes: for the
    engine's own messages (which may quote user data), so they can always be stored."""
    if "\x00" in text:
        text = text.replace("\x00", "\\u0000")
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
