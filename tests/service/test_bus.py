"""The in-process live bus: bounded per subscriber, so a slow or vanished client never
slows a run or grows memory without bound. (Every backend's shared contract is in
``test_bus_contract.py``.)"""

from __future__ import annotations

import pytest

from app.bus import EventBus, LocalEventBus, RedisEventBus
from app.bus.redis_bus import decode_event, encode_event
from app.engine import Event, EventType
from app.redis_link import RedisLink


def event(seq: int) -> Event:
    return Event(seq, EventType.NODE_STARTED, "r1", f"n{seq}", {})


async def test_a_subscriber_that_does_not_read_overflows_instead_of_growing() -> None:
    bus = LocalEventBus(queue_size=5)
    stalled = bus.subscribe("r1")
    for seq in range(1, 1001):
        bus.publish("r1", event(seq))  # never blocks, whatever the subscriber does
    assert stalled.queue.qsize() == 5
    assert stalled.overflowed
    got = [await stalled.get(0.1) for _ in range(5)]
    assert [e.seq for e in got if e is not None] == [1, 2, 3, 4, 5]


async def test_subscribers_see_only_their_run_and_leave_nothing_behind() -> None:
    bus = LocalEventBus()
    mine, other = bus.subscribe("r1"), bus.subscribe("r2")
    bus.publish("r1", event(1))
    first = await mine.get(0.1)
    assert first is not None
    assert first.seq == 1
    assert await other.get(0.01) is None
    mine.close()
    other.close()
    assert bus.subscriber_count() == 0
    bus.publish("r1", event(2))  # no subscribers: dropped, nothing kept


async def test_open_is_subscribe_and_a_subscription_can_be_drained_without_waiting() -> None:
    bus = LocalEventBus()
    await bus.start()
    subscription = await bus.open("r1")
    assert subscription.get_nowait() is None
    bus.publish("r1", event(1))
    bus.publish("r1", event(2))
    drained = [subscription.get_nowait(), subscription.get_nowait(), subscription.get_nowait()]
    assert [e.seq if e is not None else None for e in drained] == [1, 2, None]
    subscription.close()
    subscription.close()  # idempotent
    assert bus.subscriber_count() == 0
    await bus.close()


async def test_the_first_and_last_subscriber_of_a_run_are_announced() -> None:
    changes: list[tuple[str, str]] = []
    bus = LocalEventBus(
        on_first=lambda run: changes.append(("first", run)),
        on_last=lambda run: changes.append(("last", run)),
    )
    one, two = bus.subscribe("r1"), bus.subscribe("r1")
    one.close()
    assert changes == [("first", "r1")]
    two.close()
    assert changes == [("first", "r1"), ("last", "r1")]
    assert bus.run_ids() == []


async def test_mark_overflowed_tells_every_subscriber_to_reread_the_log() -> None:
    bus = LocalEventBus()
    subscriptions = [bus.subscribe("r1"), bus.subscribe("r2")]
    bus.mark_overflowed()
    assert all(s.overflowed for s in subscriptions)


def test_events_cross_the_wire_unchanged() -> None:
    original = Event(7, EventType.NODE_COMPLETED, "r1", "n7", {"output": {"a": [1, "b"]}}, 12.5)
    assert decode_event(encode_event(original)) == original
    assert decode_event(encode_event(original).encode()) == original


def test_both_buses_are_event_buses() -> None:
    link = RedisLink("redis://127.0.0.1:1/0")  # never connected: construction is inert
    buses: list[EventBus] = [LocalEventBus(), RedisEventBus(link, "replica-a")]
    assert [b.subscriber_count() for b in buses] == [0, 0]
    with pytest.raises(ValueError, match="newline"):
        RedisEventBus(link, "bad\nid")
