"""The in-process live bus: bounded per subscriber, so a slow or vanished client never
slows a run or grows memory without bound."""

from __future__ import annotations

from app.bus import LocalEventBus
from app.engine import Event, EventType


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
