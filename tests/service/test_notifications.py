"""Typed notifications: their wire form, and the in-process hub."""

from __future__ import annotations

import pytest

from app.store.notifications import (
    RELEASED,
    Notification,
    Notifier,
    RunControl,
    RunFinished,
    RunQueued,
    decode,
    encode,
)


@pytest.mark.parametrize(
    "notification",
    [RunQueued("r1"), RunQueued(RELEASED), RunControl("r-2"), RunFinished("abc.def")],
)
def test_every_notification_survives_the_wire(notification: Notification) -> None:
    assert decode(encode(notification)) == notification


@pytest.mark.parametrize("text", ["", "run:", "nope:r1", "r1", "done", ":r1"])
def test_text_that_is_no_notification_is_ignored(text: str) -> None:
    assert decode(text) is None


def test_the_hub_tells_listeners_objects_and_relays_text() -> None:
    hub = Notifier()
    heard: list[Notification] = []
    relayed: list[str] = []
    hub.subscribe(heard.append)
    hub.add_relay(relayed.append)
    hub.announce(RunFinished("r1"))
    hub.deliver("ctl:r2")  # from another replica: not relayed back
    hub.deliver("garbage")
    assert heard == [RunFinished("r1"), RunControl("r2")]
    assert relayed == [encode(RunFinished("r1"))]
    hub.unsubscribe(heard.append)
    hub.remove_relay(relayed.append)
    hub.announce(RunQueued("r3"))
    assert len(heard) == 2
    assert len(relayed) == 1
