"""Node result caching: the ``Cache`` port, an in-process LRU with TTL, and cache keys.

A cached result is looked up before a node runs; a hit skips the node entirely (its
``node.completed`` event and trace entry say ``cached``). The default key hashes the
node type, its resolved config and its inputs, so the same work on the same data hits
whichever run or workflow asked first.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from app.engine.ports import Clock, SystemClock


@dataclass(frozen=True, slots=True)
class CacheHit:
    """A cached value (``None`` is a valid cached output)."""

    value: Any


class Cache(Protocol):
    """Where node results are cached. Implementations must be safe to share between runs."""

    async def get(self, key: str) -> CacheHit | None: ...

    async def set(self, key: str, value: Any, ttl: float) -> None: ...


class InMemoryCache:
    """An LRU of at most ``max_size`` entries, each expiring ``ttl`` seconds after it was
    set (on the given clock)."""

    def __init__(self, max_size: int = 1000, clock: Clock | None = None) -> None:
        self.max_size = max_size
        self.clock = clock or SystemClock()
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    async def get(self, key: str) -> CacheHit | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        expires, value = entry
        if self.clock.now() >= expires:
            del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return CacheHit(value)

    async def set(self, key: str, value: Any, ttl: float) -> None:
        if self.max_size <= 0:
            return
        self._entries[key] = (self.clock.now() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()


# one encoder, built once: json.dumps with options builds a new one per call
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=repr)


def cache_key(node_type: str, config: Any, inputs: Any) -> str | None:
    """A stable key for running ``node_type`` with ``config`` on ``inputs``; None when the
    data cannot be encoded (nested too deeply, or cyclic): such a call is not cached.
    Keys are sorted, so the same data sent with its keys in another order hits."""
    try:
        canonical = _ENCODER.encode([node_type, config, inputs])
    except (RecursionError, ValueError):
        return None
    return f"{node_type}:{hashlib.sha256(canonical.encode()).hexdigest()}"
