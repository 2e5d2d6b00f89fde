"""The event bus contract, run against every backend: the in-process bus and the Redis
bus (on the machine's Redis, a key prefix of its own per test).

Then what only the Redis bus does: two replicas (two links, two buses, one Redis) see
each other's events live, in order, once; dispatcher wake-ups cross between them; and a
Redis that dies or hangs degrades delivery to local only without raising or blocking,
until it comes back and cross-replica delivery resumes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from app.api.events import SSE
from app.bus import EventBus, LocalEventBus, RedisEventBus, RedisWakeups, Subscription
from app.config import Settings
from app.engine import Event, EventType
from app.redis_link import RedisLink
from app.runtime import streams
from app.runtime.access import ANONYMOUS
from app.runtime.streams import EventStreams
from app.store.models import EventRow, Run
from app.store.notifications import (
    Notification,
    Notifier,
    RunControl,
    RunFinished,
    RunQueued,
)
from app.store.records import DEFAULT_NAMESPACE
from tests.redis_support import RedisServer, require_redis, unique_prefix

#: generous: a deadline for things that normally take milliseconds
DEADLINE = 10.0

MakeBus = Callable[..., Awaitable[EventBus]]


def event(run_id: str, seq: int, **data: Any) -> Event:
    return Event(seq, EventType.NODE_CUSTOM, run_id, f"n{seq}", dict(data), 1_700_000_000.0 + seq)


async def until(check: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Poll ``check`` until it holds; fails after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(0.01)


async def collect(subscription: Subscription, last_seq: int) -> list[Event]:
    """Every event up to and including the one numbered ``last_seq``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    got: list[Event] = []
    while not got or got[-1].seq != last_seq:
        if loop.time() > deadline:
            raise AssertionError(f"only got {[e.seq for e in got]}, waiting for {last_seq}")
        received = await subscription.get(0.05)
        if received is not None:
            got.append(received)
    return got


async def bounded(call: Awaitable[Any]) -> Any:
    """A call that must return while Redis is down or hung: well over the link's timeout,
    so it only fails when something waits on Redis without one."""
    async with asyncio.timeout(3.0):
        return await call


def seqs(events: list[Event]) -> list[int]:
    return [e.seq for e in events]


# ------------------------------------------------------------------- backends


@pytest.fixture(params=["local", "redis"])
async def make_bus(request: pytest.FixtureRequest) -> AsyncIterator[MakeBus]:
    """``await make_bus(queue_size=...)``: a started bus of the parametrised backend."""
    buses: list[EventBus] = []
    links: list[RedisLink] = []
    prefix = unique_prefix()

    async def make(queue_size: int = 1000) -> EventBus:
        bus: EventBus
        if request.param == "local":
            bus = LocalEventBus(queue_size)
        else:
            link = RedisLink(require_redis(), prefix=prefix)
            links.append(link)
            bus = RedisEventBus(link, f"replica-{len(links)}", queue_size)
        await bus.start()
        buses.append(bus)
        return bus

    try:
        yield make
    finally:
        for bus in buses:
            await bus.close()
        for link in links:
            await link.close()


async def test_a_subscriber_gets_its_runs_events_in_order(make_bus: MakeBus) -> None:
    bus = await make_bus()
    subscription = await bus.open("r1")
    for seq in range(1, 201):
        bus.publish("r1", event("r1", seq, n=seq))
    got = await collect(subscription, 200)
    assert seqs(got) == list(range(1, 201))
    assert got[41] == event("r1", 42, n=42)
    assert subscription.get_nowait() is None
    subscription.close()


async def test_every_subscriber_of_a_run_gets_every_event(make_bus: MakeBus) -> None:
    bus = await make_bus()
    first, second = await bus.open("r1"), await bus.open("r1")
    assert bus.subscriber_count() == 2
    for seq in (1, 2, 3):
        bus.publish("r1", event("r1", seq))
    assert seqs(await collect(first, 3)) == [1, 2, 3]
    assert seqs(await collect(second, 3)) == [1, 2, 3]


async def test_subscribers_see_only_their_run(make_bus: MakeBus) -> None:
    bus = await make_bus()
    mine, other = await bus.open("r1"), await bus.open("r2")
    bus.publish("r1", event("r1", 1))
    bus.publish("r3", event("r3", 1))  # nobody listens: dropped
    bus.publish("r2", event("r2", 7))
    assert [(e.run_id, e.seq) for e in await collect(other, 7)] == [("r2", 7)]
    assert [(e.run_id, e.seq) for e in await collect(mine, 1)] == [("r1", 1)]
    assert mine.get_nowait() is None


async def test_a_subscriber_that_does_not_read_overflows_instead_of_growing(
    make_bus: MakeBus,
) -> None:
    bus = await make_bus(queue_size=5)
    stalled = await bus.open("r1")
    for seq in range(1, 1001):
        bus.publish("r1", event("r1", seq))  # never blocks, whatever the subscriber does
    assert stalled.queue.qsize() == 5
    assert stalled.overflowed
    assert seqs(await collect(stalled, 5)) == [1, 2, 3, 4, 5]
    assert stalled.get_nowait() is None


async def test_closing_leaves_nothing_behind(make_bus: MakeBus) -> None:
    bus = await make_bus()
    first, second = await bus.open("r1"), await bus.open("r2")
    first.close()
    first.close()  # idempotent
    second.close()
    assert bus.subscriber_count() == 0
    bus.publish("r1", event("r1", 1))  # no subscribers: dropped, nothing kept
    if isinstance(bus, RedisEventBus):  # and the channels are given up
        await until(lambda: not bus.live_channels(), "the UNSUBSCRIBE")
        assert await bus.link.client.pubsub_numsub(bus.link.key("events", "r1")) == [
            (bus.link.key("events", "r1").encode(), 0)
        ]
    again = await bus.open("r1")  # and a run can be followed again
    bus.publish("r1", event("r1", 2))
    assert seqs(await collect(again, 2)) == [2]


# ---------------------------------------------------- two replicas, one Redis


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[RedisEventBus, RedisEventBus]]:
    """Two replicas' buses: two links to the machine's Redis, one prefix."""
    url, prefix = require_redis(), unique_prefix()
    links = [RedisLink(url, prefix=prefix) for _ in range(2)]
    buses = (RedisEventBus(links[0], "replica-a"), RedisEventBus(links[1], "replica-b"))
    for bus in buses:
        await bus.start()
    try:
        yield buses
    finally:
        for bus in buses:
            await bus.close()
        for link in links:
            await link.close()


async def test_a_subscriber_on_one_replica_gets_every_event_published_on_another(
    replicas: tuple[RedisEventBus, RedisEventBus],
) -> None:
    a, b = replicas
    remote = await b.open("r1")  # live once open() returns: nothing published after is lost
    for seq in range(1, 501):
        a.publish("r1", event("r1", seq, text="x" * (seq % 7)))
    got = await collect(remote, 500)
    assert got == [event("r1", seq, text="x" * (seq % 7)) for seq in range(1, 501)]
    # no duplicate trails behind: B's own next event comes right after A's last
    b.publish("r1", event("r1", 501))
    assert seqs(await collect(remote, 501)) == [501]


async def test_a_replica_does_not_deliver_its_own_events_twice(
    replicas: tuple[RedisEventBus, RedisEventBus],
) -> None:
    a, b = replicas
    local, remote = await a.open("r1"), await b.open("r1")
    for seq in range(1, 51):
        a.publish("r1", event("r1", seq))
    assert seqs(await collect(remote, 50)) == list(range(1, 51))
    # A's own copies came back from Redis before B's event did (one server, in order)
    b.publish("r1", event("r1", 51))
    assert seqs(await collect(local, 51)) == list(range(1, 52))
    assert seqs(await collect(remote, 51)) == [51]


async def test_runs_stay_apart_across_replicas(
    replicas: tuple[RedisEventBus, RedisEventBus],
) -> None:
    a, b = replicas
    mine, other = await b.open("r1"), await b.open("r2")
    a.publish("r1", event("r1", 1))
    a.publish("r2", event("r2", 9))
    assert [(e.run_id, e.seq) for e in await collect(other, 9)] == [("r2", 9)]
    assert [(e.run_id, e.seq) for e in await collect(mine, 1)] == [("r1", 1)]


async def test_a_stream_that_goes_away_while_opening_leaves_nothing_behind(
    replicas: tuple[RedisEventBus, RedisEventBus],
) -> None:
    a, _ = replicas
    opening = asyncio.get_running_loop().create_task(a.open("r1"))
    await asyncio.sleep(0)  # one turn of the loop: subscribed locally, SUBSCRIBE not sent yet
    assert a.subscriber_count() == 1
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    assert a.subscriber_count() == 0
    await until(lambda: not a.live_channels(), "the UNSUBSCRIBE")


async def numsub(bus: RedisEventBus, run_id: str) -> int:
    """How many pub/sub connections (replicas) Redis has SUBSCRIBEd to ``run_id``."""
    channel = bus.link.key("events", run_id)
    [(_name, count)] = await bus.link.client.pubsub_numsub(channel)
    return int(count)


async def test_a_run_executing_here_needs_no_channel_here(
    replicas: tuple[RedisEventBus, RedisEventBus],
) -> None:
    a, b = replicas
    a.claimed("r1")
    local = await bounded(a.open("r1"))
    remote = await b.open("r1")
    assert await numsub(a, "r1") == 1  # B's
    for seq in range(1, 21):
        a.publish("r1", event("r1", seq))
    assert seqs(await collect(local, 20)) == list(range(1, 21))
    assert seqs(await collect(remote, 20)) == list(range(1, 21))
    assert local.get_nowait() is None
    assert a.link.key("events", "r1") not in a.live_channels()


async def test_a_stream_opened_before_its_run_is_claimed_here_drops_the_channel(
    replicas: tuple[RedisEventBus, RedisEventBus],
) -> None:
    a, _ = replicas
    waiting = await a.open("r1")  # queued, could execute anywhere: SUBSCRIBEd
    assert await numsub(a, "r1") == 1
    opening = asyncio.get_running_loop().create_task(a.open("r2"))
    await asyncio.sleep(0)  # subscribed locally, waiting for its SUBSCRIBE to be answered
    a.claimed("r1")
    a.claimed("r2")
    async with asyncio.timeout(DEADLINE):
        opened = await opening
    await until(lambda: not a.live_channels(), "the UNSUBSCRIBEs")
    assert await numsub(a, "r1") == 0
    for run_id, subscription in (("r1", waiting), ("r2", opened)):
        a.publish(run_id, event(run_id, 1))
        assert seqs(await collect(subscription, 1)) == [1]
        assert subscription.get_nowait() is None


async def test_a_run_released_unfinished_gets_its_channel_back(
    replicas: tuple[RedisEventBus, RedisEventBus],
) -> None:
    a, b = replicas
    a.claimed("r1")
    local = await a.open("r1")
    for seq in (1, 2, 3):
        a.publish("r1", event("r1", seq))
    assert seqs(await collect(local, 3)) == [1, 2, 3]
    a.released("r1")  # taken over, say: its next events come from B
    assert local.overflowed  # the stream re-reads the log for what B sent before...
    await until(lambda: a.link.key("events", "r1") in a.live_channels(), "the SUBSCRIBE")
    for seq in (4, 5, 6):  # ...the channel was live again, and from then on gets it live
        b.publish("r1", event("r1", seq))
    assert seqs(await collect(local, 6)) == [4, 5, 6]


async def test_a_run_finished_here_keeps_no_channel_while_its_streams_end(
    replicas: tuple[RedisEventBus, RedisEventBus],
) -> None:
    a, _ = replicas
    a.claimed("r1")
    local = await a.open("r1")
    a.publish("r1", event("r1", 1))
    a.publish("r1", Event(2, EventType.RUN_SUCCEEDED, "r1", None, {}, 1.0))
    a.released("r1")
    assert not local.overflowed
    await a.open("r2")  # a SUBSCRIBE answered: A has matched its channels to what it wants
    assert a.live_channels() == {a.link.key("events", "r2")}
    assert seqs(await collect(local, 2)) == [1, 2]
    local.close()
    again = await a.open("r1")  # after its streams ended, a run is anybody's again
    assert a.link.key("events", "r1") in a.live_channels()
    again.close()


@dataclass
class EventLog:
    """The store's event-log port as the SSE stream reads it: what was committed."""

    run_id: str
    rows: list[EventRow] = field(default_factory=list)
    status: str = "running"

    def commit(self, event: Event) -> None:
        self.rows.append(
            EventRow(
                run_id=event.run_id,
                seq=event.seq,
                type=event.type.value,
                node_id=event.node_id,
                data=event.data,
                created_at=event.timestamp,
            )
        )
        if event.terminal:
            self.status = "succeeded"

    async def events_after(self, run_id: str, after_seq: int, limit: int = 500) -> list[EventRow]:
        return [r for r in self.rows if r.run_id == run_id and r.seq > after_seq][:limit]

    async def get_run(self, run_id: str) -> Run | None:
        if run_id != self.run_id:
            return None
        return Run(id=run_id, status=self.status, namespace=DEFAULT_NAMESPACE)

    async def last_event_seq(self, run_id: str) -> int:
        return max((r.seq for r in self.rows if r.run_id == run_id), default=0)


async def test_an_sse_stream_on_one_replica_tails_a_run_on_another_live(
    replicas: tuple[RedisEventBus, RedisEventBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = replicas
    # were the stream fed by polling the log, it would wait 30 s per event and time out
    monkeypatch.setattr(streams, "POLL", 30.0)
    log = EventLog("r1")
    log.commit(event("r1", 1))
    events = EventStreams(Settings(), cast(Any, log), b)
    frames: list[bytes] = []

    async def read() -> None:
        async for frame in await events.open(ANONYMOUS, "r1", 0, SSE):
            frames.append(frame)

    reader = asyncio.get_running_loop().create_task(read())
    await until(lambda: len(frames) == 2, "the stream's opening and the logged event")
    for seq in range(2, 21):  # the run goes on on replica A: commit, then publish
        finished = seq == 20
        done = Event(seq, EventType.RUN_SUCCEEDED, "r1", None, {"output": 1}, 1.0)
        published = done if finished else event("r1", seq)
        log.commit(published)
        a.publish("r1", published)
    async with asyncio.timeout(DEADLINE):
        await reader  # the terminal event ends the stream
    # a chunk may carry several frames (what was ready is written in one go)
    split = [f for chunk in frames[1:] for f in chunk.split(b"\n\n") if f]
    ids = [int(f.split(b"\n")[0].removeprefix(b"id: ")) for f in split]
    assert ids == list(range(1, 21))
    last = json.loads(split[-1].split(b"data: ")[1])
    assert last["type"] == "run.succeeded"
    assert b.subscriber_count() == 0


async def test_wakeups_cross_between_replicas_and_not_back(
    replicas: tuple[RedisEventBus, RedisEventBus],
) -> None:
    a, b = replicas
    hub_a, hub_b = Notifier(), Notifier()
    got_a: list[Notification] = []
    got_b: list[Notification] = []
    hub_a.subscribe(got_a.append)
    hub_b.subscribe(got_b.append)
    wakeups = [RedisWakeups(a, hub_a), RedisWakeups(b, hub_b)]
    for wakeup in wakeups:
        await wakeup.start()
    hub_a.announce(RunQueued("r1"))
    hub_a.announce(RunControl("r1"))
    await until(lambda: len(got_b) == 2, "the wake-ups on B")
    assert got_b == [RunQueued("r1"), RunControl("r1")]
    hub_b.announce(RunFinished("r1"))
    await until(lambda: len(got_a) == 3, "the wake-up on A")
    # A heard its own two (in process) and B's one, not its own back over Redis
    assert got_a == [RunQueued("r1"), RunControl("r1"), RunFinished("r1")]
    assert got_b == [RunQueued("r1"), RunControl("r1"), RunFinished("r1")]
    for wakeup in wakeups:
        await wakeup.close()
    hub_a.announce(RunQueued("r2"))
    assert got_b[-1] == RunFinished("r1")  # closed: nothing crosses any more


# ------------------------------------------------------- a Redis that fails


@pytest.fixture
async def private_replicas(
    redis_server: RedisServer,
) -> AsyncIterator[tuple[RedisEventBus, RedisEventBus]]:
    """Two replicas' buses on the private server, with short timeouts."""
    links = [RedisLink(redis_server.url, timeout=0.2, retry_seconds=0.1) for _ in range(2)]
    buses = (
        RedisEventBus(links[0], "replica-a", health_seconds=0.3),
        RedisEventBus(links[1], "replica-b", health_seconds=0.3),
    )
    for bus in buses:
        await bus.start()
    try:
        yield buses
    finally:
        for bus in buses:
            await bounded(bus.close())
        for link in links:
            await bounded(link.close())


async def delivered_across(a: RedisEventBus, remote: Subscription, run_id: str) -> list[Event]:
    """Publish on ``a`` until ``remote`` (on another replica) gets one: right after a
    recovery the re-subscription may still be on its way. Returns what it got."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    seq = 1000
    while True:
        seq += 1
        a.publish(run_id, event(run_id, seq))
        received = await remote.get(0.05)
        if received is not None:
            return [received]
        if loop.time() > deadline:
            raise AssertionError("cross-replica delivery never resumed")


@pytest.mark.slow
@pytest.mark.parametrize("outage", ["stopped", "paused"])
async def test_a_failing_redis_degrades_to_local_delivery_then_recovers(
    redis_server: RedisServer,
    private_replicas: tuple[RedisEventBus, RedisEventBus],
    outage: str,
) -> None:
    a, b = private_replicas
    hub_a, hub_b = Notifier(), Notifier()
    got_a: list[Notification] = []
    hub_a.subscribe(got_a.append)
    wakeups = [RedisWakeups(a, hub_a), RedisWakeups(b, hub_b)]
    for wakeup in wakeups:
        await wakeup.start()
    local, remote = await a.open("r1"), await b.open("r1")
    a.publish("r1", event("r1", 1))
    assert seqs(await collect(remote, 1)) == [1]
    assert seqs(await collect(local, 1)) == [1]

    if outage == "stopped":
        redis_server.stop()
    else:
        redis_server.pause()
    try:
        # the run's replica keeps serving its own subscribers; nothing raises or waits
        for seq in range(2, 102):
            a.publish("r1", event("r1", seq))
            hub_a.announce(RunQueued(str(seq)))
        assert seqs(await collect(local, 101)) == list(range(2, 102))
        await until(lambda: not a.link.up, "A noticing the outage")
        await until(lambda: not b.link.up, "B noticing the outage")
        a.publish("r1", event("r1", 102))
        assert seqs(await collect(local, 102)) == [102]
        # a stream opened during the outage opens at once, on local delivery only
        late = await bounded(b.open("r2"))
        assert b.subscriber_count() == 2
    finally:
        if outage == "stopped":
            redis_server.start()  # same port, empty
        else:
            redis_server.resume()

    await until(lambda: a.link.up and b.link.up, "the links' recovery")
    # B may have missed events while Redis was out: its streams are told to re-read the log
    await until(lambda: remote.overflowed and late.overflowed, "the overflow flags")
    # every channel with subscribers is subscribed again, on a new connection
    assert (await delivered_across(a, remote, "r1"))[0].run_id == "r1"
    assert (await delivered_across(a, late, "r2"))[0].run_id == "r2"
    hub_b.announce(RunFinished("after"))
    await until(lambda: RunFinished("after") in got_a, "a wake-up after the recovery")
    for wakeup in wakeups:
        await wakeup.close()
