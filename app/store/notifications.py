"""Typed notifications: what a change in the store tells dispatchers and waiting callers,
in this process and on every replica.

==================  =========================================================  ========
notification        when                                                        wire
==================  =========================================================  ========
``RunQueued``       a run can be claimed (created, resumed, woken, released)   ``run:``
``RunControl``      a run was signalled, cancelled or resumed elsewhere        ``ctl:``
``RunFinished``     a run ended, waits or parked: a slot is free, ``?wait``    ``done:``
                    callers look
``KeyRevoked``      an API key was revoked: replicas forget it at once         ``key:``
==================  =========================================================  ========

In this process a :class:`Notifier` hands them to its listeners as objects. Between
replicas they travel as short text (``encode``/``decode``): Postgres ``NOTIFY`` sent in
the transaction of the change, and, where configured, a Redis channel. The wire form is
written in this module only (the Postgres statements take it from here).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger("flowcore.store")

#: the wire prefixes (the Postgres statements build their payloads from these)
QUEUED_PREFIX = "run:"
CONTROL_PREFIX = "ctl:"
FINISHED_PREFIX = "done:"
KEY_REVOKED_PREFIX = "key:"
#: the run id of a RunQueued that stands for several runs (released at shutdown)
RELEASED = "released"


@dataclass(frozen=True, slots=True)
class RunQueued:
    """A run can be claimed: idle dispatchers look. ``run_id`` is ``RELEASED`` when a
    replica gave several back."""

    run_id: str


@dataclass(frozen=True, slots=True)
class RunControl:
    """A run was signalled, cancelled or resumed elsewhere: the replica executing it
    looks at it now rather than at its next heartbeat."""

    run_id: str


@dataclass(frozen=True, slots=True)
class RunFinished:
    """A run ended, waits or parked: a slot may be free; callers waiting for it look."""

    run_id: str


@dataclass(frozen=True, slots=True)
class KeyRevoked:
    """An API key was revoked: every replica drops it from its cache of keys."""

    key_id: str


Notification = RunQueued | RunControl | RunFinished | KeyRevoked
_PREFIXES: dict[type[Notification], str] = {
    RunQueued: QUEUED_PREFIX,
    RunControl: CONTROL_PREFIX,
    RunFinished: FINISHED_PREFIX,
    KeyRevoked: KEY_REVOKED_PREFIX,
}
_KINDS = {prefix: kind for kind, prefix in _PREFIXES.items()}


def encode(notification: Notification) -> str:
    if isinstance(notification, KeyRevoked):
        return KEY_REVOKED_PREFIX + notification.key_id
    return _PREFIXES[type(notification)] + notification.run_id


def decode(text: str) -> Notification | None:
    """The notification ``text`` carries (None: not one of ours)."""
    prefix, sep, subject = text.partition(":")
    kind = _KINDS.get(prefix + sep)
    return kind(subject) if kind is not None and subject else None


class Notifier:
    """This process's notification hub: listeners get typed notifications; relays
    (another channel to the other replicas, e.g. Redis) get their wire text."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[Notification], None]] = []
        self._relays: list[Callable[[str], None]] = []

    def subscribe(self, listener: Callable[[Notification], None]) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[Notification], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def add_relay(self, relay: Callable[[str], None]) -> None:
        self._relays.append(relay)

    def remove_relay(self, relay: Callable[[str], None]) -> None:
        if relay in self._relays:
            self._relays.remove(relay)

    def announce(self, notification: Notification) -> None:
        """After a commit of this process: its listeners, then the relays."""
        self.local(notification)
        if self._relays:
            text = encode(notification)
            for relay in self._relays:
                relay(text)

    def deliver(self, text: str) -> None:
        """A notification from another replica (Postgres LISTEN, a relay channel)."""
        notification = decode(text)
        if notification is None:
            logger.debug("ignoring the notification %r", text)
            return
        self.local(notification)

    def local(self, notification: Notification) -> None:
        for listener in list(self._listeners):
            listener(notification)
