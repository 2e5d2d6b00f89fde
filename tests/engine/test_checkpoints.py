"""Checkpoints: the in-memory and file stores, enable_checkpoints and
checkpoint_interval, what a checkpoint holds, incremental records, and resuming
(resume_from_checkpoint / continue_execution) so that no completed node runs again,
delays sleep only what is left, waits wait again, failed runs can be patched and
resumed, and idempotency keys stay stable."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from app.engine import (
    BaseNode,
    EventType,
    ExecutionConfig,
    NodeContext,
    NodeExecutionError,
    NodeRegistry,
    NodeResult,
    RunStatus,
    WorkflowContext,
    WorkflowDefinition,
    WorkflowExecutor,
)
from app.engine.checkpoint import (
    Checkpoint,
    CheckpointNotFoundError,
    CheckpointStore,
    FileCheckpointStore,
    InMemoryCheckpointStore,
    NodeCheckpoint,
)
from tests.engine.conftest import HANG_GUARD, RecordingSink, make_workflow, node

# ------------------------------------------------------------------------ ledger node


class Ledger:
    """What the ``ck_ledger`` nodes did, outside the engine (a side-effect ledger)."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.completed: list[str] = []
        #: node id -> the idempotency keys it was given, one per execution
        self.keys: dict[str, list[str]] = {}
        self._gates: dict[str, asyncio.Event] = {}
        self._entered: dict[str, asyncio.Event] = {}

    def gate(self, node_id: str) -> asyncio.Event:
        return self._gates.setdefault(node_id, asyncio.Event())

    def entered(self, node_id: str) -> asyncio.Event:
        return self._entered.setdefault(node_id, asyncio.Event())

    async def wait_entered(self, node_id: str) -> None:
        await asyncio.wait_for(self.entered(node_id).wait(), HANG_GUARD)

    def runs(self) -> Counter[str]:
        return Counter(self.completed)


_ledger = Ledger()


class LedgerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: wait for ``ledger.gate(node_id)`` before completing
    block: bool = False
    #: a CEL expression; the node fails while it holds
    fail_if: str | None = None
    output: Any = None


class LedgerNode(BaseNode):
    config_model = LedgerConfig
    config: LedgerConfig

    async def execute(
        self, node_context: NodeContext, workflow_context: WorkflowContext
    ) -> NodeResult:
        node_id = node_context.node_id
        _ledger.started.append(node_id)
        _ledger.keys.setdefault(node_id, []).append(node_context.idempotency_key)
        _ledger.entered(node_id).set()
        if self.config.block:
            await _ledger.gate(node_id).wait()
        if self.config.fail_if is not None and node_context.evaluate(self.config.fail_if):
            raise NodeExecutionError(f"{node_id} refused: {self.config.fail_if}")
        _ledger.completed.append(node_id)
        output = node_context.config.get("output")
        return NodeResult(output=output if output is not None else {"id": node_id})


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    global _ledger
    _ledger = Ledger()
    NodeRegistry.register("ck_ledger")(LedgerNode)
    try:
        yield _ledger
    finally:
        NodeRegistry.unregister("ck_ledger")


def led(node_id: str, /, **config: Any) -> dict[str, Any]:
    return node(node_id, "ck_ledger", config=config)


def chain(
    ids: list[str], specs: dict[str, dict[str, Any]] | None = None, **top: Any
) -> WorkflowDefinition:
    specs = specs or {}
    return make_workflow([specs.get(i, led(i)) for i in ids], list(itertools.pairwise(ids)), **top)


# ------------------------------------------------------------------------ stores, clock


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStore:
    if request.param == "memory":
        return InMemoryCheckpointStore()
    return FileCheckpointStore(tmp_path / "checkpoints")


CHECKPOINTS = ExecutionConfig(enable_checkpoints=True)


async def wait_checkpoint(
    store: CheckpointStore, run_id: str, ready: Callable[[Checkpoint], bool]
) -> Checkpoint:
    """Poll until the run's latest checkpoint satisfies ``ready`` (the writer is async)."""
    async with asyncio.timeout(HANG_GUARD):
        while True:
            latest = await store.latest(run_id)
            if latest is not None and ready(latest):
                return latest
            await asyncio.sleep(0.001)


def completed_ids(checkpoint: Checkpoint) -> set[str]:
    return {k for k, v in checkpoint.completed.items() if v.status == "succeeded"}


class HeldClock:
    """Virtual time whose sleeps last until ``advance`` moves time past their wake time."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.current = start
        self.sleeps: list[float] = []
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self._slept = asyncio.Event()

    def now(self) -> float:
        return self.current

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self._slept.set()
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self.current + seconds, future)
        self._sleepers.append(entry)
        try:
            await future
        finally:
            self._sleepers.remove(entry)

    def advance(self, seconds: float) -> None:
        self.current += seconds
        for wake_at, future in self._sleepers:
            if wake_at <= self.current and not future.done():
                future.set_result(None)

    async def wait_sleeping(self, count: int) -> None:
        """Until ``count`` sleeps have been requested."""
        async with asyncio.timeout(HANG_GUARD):
            while len(self.sleeps) < count:
                self._slept.clear()
                await self._slept.wait()


# -------------------------------------------------------------------- writing checkpoints


async def test_no_checkpoints_unless_enabled(store: CheckpointStore, ledger: Ledger) -> None:
    result = await WorkflowExecutor(checkpoint_store=store).execute(chain(["a", "b"]))
    assert result.status is RunStatus.SUCCEEDED
    assert await store.list(result.run_id) == []
    assert await store.latest(result.run_id) is None


async def test_enable_checkpoints_without_a_store_uses_an_in_memory_one(ledger: Ledger) -> None:
    executor = WorkflowExecutor(CHECKPOINTS)
    result = await executor.execute(chain(["a", "b"]))
    assert isinstance(executor.checkpoint_store, InMemoryCheckpointStore)
    latest = await executor.checkpoint_store.latest(result.run_id)
    assert latest is not None
    assert latest.status == "succeeded"


async def test_one_incremental_record_per_completed_node(
    store: CheckpointStore, ledger: Ledger
) -> None:
    ids = [f"n{i}" for i in range(5)]
    result = await WorkflowExecutor(CHECKPOINTS, checkpoint_store=store).execute(
        chain(ids), run_id="inc"
    )
    infos = await store.list("inc")
    assert [i.sequence for i in infos] == list(range(1, 8))
    assert [i.id for i in infos] == [f"inc:{n}" for n in range(1, 8)]
    assert [i.status for i in infos] == ["running"] * 6 + ["succeeded"]
    # each record holds only what finished since the previous one
    assert [i.completed for i in infos] == [0, 1, 1, 1, 1, 1, 0]
    for k in range(len(ids)):
        checkpoint = await store.load(f"inc:{k + 2}")
        assert set(checkpoint.completed) == set(ids[: k + 1])  # loading folds the chain
    final = await store.latest("inc")
    assert final is not None
    assert final.status == "succeeded"
    assert final.completed == {
        i: NodeCheckpoint("succeeded", {"id": i}, None, None, 1) for i in ids
    }
    assert result.status is RunStatus.SUCCEEDED


@pytest.mark.parametrize(
    ("interval", "counts"),
    [(1, [0] + [1] * 10 + [0]), (3, [0, 3, 3, 3, 1]), (5, [0, 5, 5, 0]), (20, [0, 10])],
)
async def test_checkpoint_interval_records_every_n_completed_nodes(
    interval: int, counts: list[int], store: CheckpointStore, ledger: Ledger
) -> None:
    config = ExecutionConfig(enable_checkpoints=True, checkpoint_interval=interval)
    ids = [f"n{i}" for i in range(10)]
    await WorkflowExecutor(config, checkpoint_store=store).execute(chain(ids), run_id="iv")
    infos = await store.list("iv")
    assert [i.completed for i in infos] == counts
    assert infos[-1].status == "succeeded"  # the end of the run flushes the remainder
    final = await store.latest("iv")
    assert final is not None
    assert set(final.completed) == set(ids)


async def test_a_checkpoint_holds_the_runs_state(store: CheckpointStore, ledger: Ledger) -> None:
    workflow = make_workflow(
        [
            led("a", output={"n": 1}),
            node("b", "engine_vars", config={"variables": {"from_b": 2}}),
            node("w", "wait", config={"signal": "go"}),
            node("z", "noop"),
        ],
        [("a", "b"), ("b", "w"), ("w", "z")],
        id="state",
        vars={"preset": "v"},
    )
    sink = RecordingSink()
    executor = WorkflowExecutor(CHECKPOINTS, checkpoint_store=store, event_sinks=[sink])
    task = asyncio.create_task(executor.execute(workflow, {"in": 1}, run_id="st"))
    await sink.wait_for(EventType.RUN_WAITING)
    checkpoint = await wait_checkpoint(store, "st", lambda c: c.status == "waiting")

    assert (checkpoint.id, checkpoint.run_id, checkpoint.workflow_id) == ("st:4", "st", "state")
    assert checkpoint.sequence == 4
    assert checkpoint.completed == {
        "a": NodeCheckpoint("succeeded", {"n": 1}, None, None, 1),
        "b": NodeCheckpoint("succeeded", {"set": ["from_b"]}, None, None, 1),
    }
    assert checkpoint.variables == {"preset": "v", "from_b": 2}
    assert checkpoint.pending == {"w": {"kind": "wait", "signal": "go"}}
    assert checkpoint.frontier == ["w"]
    assert checkpoint.input == {"in": 1}
    assert checkpoint.definition == workflow.model_dump(mode="json", exclude_none=True)
    assert checkpoint.event_seq == sink.events[-1].seq
    assert checkpoint.to_dict()["pending"] == checkpoint.pending

    executor.signal("st", "go", {"ok": True})
    assert (await task).status is RunStatus.SUCCEEDED
    final = await store.latest("st")
    assert final is not None
    assert (final.status, final.pending, final.frontier) == ("succeeded", {}, [])
    assert final.completed["w"].output == {"ok": True}


async def test_a_sleeping_delay_is_checkpointed_with_its_wake_time(
    store: CheckpointStore, ledger: Ledger
) -> None:
    clock = HeldClock()
    workflow = make_workflow([led("a"), node("d", "delay", config={"seconds": 10})], [("a", "d")])
    executor = WorkflowExecutor(CHECKPOINTS, checkpoint_store=store, clock=clock)
    task = asyncio.create_task(executor.execute(workflow, run_id="dl"))
    await clock.wait_sleeping(1)
    checkpoint = await wait_checkpoint(store, "dl", lambda c: bool(c.pending))
    assert checkpoint.pending == {"d": {"kind": "delay", "wake_at": clock.now() + 10}}
    assert checkpoint.frontier == ["d"]
    assert completed_ids(checkpoint) == {"a"}
    clock.advance(10)
    assert (await task).status is RunStatus.SUCCEEDED


async def test_failed_and_cancelled_runs_end_with_a_checkpoint_saying_so(
    store: CheckpointStore, ledger: Ledger
) -> None:
    executor = WorkflowExecutor(CHECKPOINTS, checkpoint_store=store)
    failed = await executor.execute(chain(["a", "b"], {"b": led("b", fail_if="true")}), run_id="f")
    assert failed.status is RunStatus.FAILED
    checkpoint = await store.latest("f")
    assert checkpoint is not None
    assert checkpoint.status == "failed"
    assert checkpoint.error == {"message": "b refused: true", "kind": "execution", "node_id": "b"}
    assert completed_ids(checkpoint) == {"a"}

    task = asyncio.create_task(
        executor.execute(chain(["a", "b"], {"b": led("b", block=True)}), run_id="c")
    )
    await ledger.wait_entered("b")
    executor.cancel("c")
    assert (await task).status is RunStatus.CANCELLED
    checkpoint = await store.latest("c")
    assert checkpoint is not None
    assert checkpoint.status == "cancelled"
    assert checkpoint.error is not None
    assert checkpoint.error["kind"] == "cancelled"


async def test_file_records_do_not_grow_with_the_run(tmp_path: Path, ledger: Ledger) -> None:
    store = FileCheckpointStore(tmp_path / "ckpt")
    ids = [f"n{i:03d}" for i in range(220)]  # same-length ids, constant outputs
    specs = {i: led(i, output={"v": 1}) for i in ids}
    await WorkflowExecutor(CHECKPOINTS, checkpoint_store=store).execute(
        chain(ids, specs), run_id="big"
    )
    lines = (tmp_path / "ckpt" / "big.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 222  # start, one per node, end
    at_10, at_200 = lines[10], lines[200]
    assert '"n009"' in at_10
    assert '"n199"' in at_200
    assert '"n000"' not in at_200  # nothing from earlier records is copied forward
    # only the digits of the sequence and event counters differ
    assert abs(len(at_200) - len(at_10)) <= 4
    # the definition and input ride in the first record only
    assert '"definition":{' in lines[0]
    assert all('"definition":null' in line for line in lines[1:])


# -------------------------------------------------------------------------------- resume


async def interrupt_chain(
    store: CheckpointStore, ledger: Ledger, run_id: str, **top: Any
) -> tuple[WorkflowDefinition, Checkpoint]:
    """Run n0..n5 with n3 blocking; cancel while n3 runs; return the final checkpoint."""
    ids = [f"n{i}" for i in range(6)]
    workflow = chain(ids, {"n3": led("n3", block=True)}, **top)
    executor = WorkflowExecutor(CHECKPOINTS, checkpoint_store=store)
    task = asyncio.create_task(executor.execute(workflow, {"x": 1}, run_id=run_id))
    await ledger.wait_entered("n3")
    await wait_checkpoint(store, run_id, lambda c: completed_ids(c) == {"n0", "n1", "n2"})
    executor.cancel(run_id)
    assert (await task).status is RunStatus.CANCELLED
    checkpoint = await store.latest(run_id)
    assert checkpoint is not None
    assert checkpoint.status == "cancelled"
    return workflow, checkpoint


@pytest.mark.parametrize("how", ["resume_from_checkpoint", "continue_execution"])
async def test_resuming_runs_no_completed_node_again(
    how: str, store: CheckpointStore, ledger: Ledger
) -> None:
    _, checkpoint = await interrupt_chain(store, ledger, "res")
    assert completed_ids(checkpoint) == {"n0", "n1", "n2"}
    ledger.gate("n3").set()

    sink = RecordingSink()
    executor = WorkflowExecutor(CHECKPOINTS, checkpoint_store=store)  # a new executor
    if how == "resume_from_checkpoint":
        result = await executor.resume_from_checkpoint(checkpoint.id, event_sinks=[sink])
    else:
        result = await executor.continue_execution(checkpoint, event_sinks=[sink])

    assert result.status is RunStatus.SUCCEEDED
    assert result.run_id == "res"
    assert ledger.runs() == Counter({f"n{i}": 1 for i in range(6)})  # each completed once
    assert Counter(ledger.started)["n3"] == 2  # interrupted mid-flight: at least once
    assert result.output == {"n5": {"id": "n5"}}
    for node_id in ("n0", "n1", "n2"):
        record = result.node_results[node_id]
        assert record.status.value == "succeeded"
        assert record.output == {"id": node_id}
        assert record.metadata == {"restored": True}
    assert result.node_results["n3"].metadata is None
    # the resumed run's events continue the run's sequence
    first = sink.events[0]
    assert first.type is EventType.RUN_RESUMED
    assert first.data == {"checkpoint_id": checkpoint.id}
    assert first.seq == checkpoint.event_seq + 1
    assert [e.node_id for e in sink.of(EventType.NODE_STARTED)] == ["n3", "n4", "n5"]
    final = await store.latest("res")
    assert final is not None
    assert final.status == "succeeded"
    assert completed_ids(final) == {f"n{i}" for i in range(6)}


async def test_restored_outputs_feed_expressions_downstream(
    store: CheckpointStore, ledger: Ledger
) -> None:
    workflow = make_workflow(
        [
            led("a", output={"v": 20}),
            led("gate", block=True),
            node("sum", "transform", config={"output": {"v": "nodes.a.output.v + input.x"}}),
        ],
        [("a", "gate"), ("gate", "sum")],
        output={"total": "nodes.sum.output.v", "a": "nodes.a.output.v"},
    )
    executor = WorkflowExecutor(CHECKPOINTS, checkpoint_store=store)
    task = asyncio.create_task(executor.execute(workflow, {"x": 3}, run_id="feed"))
    await ledger.wait_entered("gate")
    await wait_checkpoint(store, "feed", lambda c: "a" in c.completed)
    executor.cancel("feed")
    await task
    ledger.gate("gate").set()
    checkpoint = await store.latest("feed")
    assert checkpoint is not None
    result = await WorkflowExecutor(CHECKPOINTS, checkpoint_store=store).continue_execution(
        checkpoint
    )
    assert result.output == {"total": 23, "a": 20}
    assert ledger.runs()["a"] == 1


async def test_resuming_from_an_earlier_checkpoint_reruns_only_later_nodes(
    store: CheckpointStore, ledger: Ledger
) -> None:
    await interrupt_chain(store, ledger, "early")
    ledger.gate("n3").set()
    infos = await store.list("early")
    # the record after n0 completed: n0 is done, n1 and n2 are not
    after_n0 = next(i for i in infos if i.completed == 1)
    result = await WorkflowExecutor(CHECKPOINTS, checkpoint_store=store).resume_from_checkpoint(
        after_n0.id
    )
    assert result.status is RunStatus.SUCCEEDED
    runs = ledger.runs()
    assert runs["n0"] == 1
    assert (runs["n1"], runs["n2"]) == (2, 2)  # completed after that checkpoint: run again
    assert all(runs[f"n{i}"] == 1 for i in (3, 4, 5))


async def test_checkpoint_ids_stay_unique_after_resuming_from_an_earlier_one(
    store: CheckpointStore, ledger: Ledger
) -> None:
    await interrupt_chain(store, ledger, "uniq")
    ledger.gate("n3").set()
    infos = await store.list("uniq")
    before = {i.id: await store.load(i.id) for i in infos}
    await WorkflowExecutor(CHECKPOINTS, checkpoint_store=store).resume_from_checkpoint(infos[1].id)
    after = await store.list("uniq")
    assert len({i.id for i in after}) == len(after)
    for checkpoint_id, checkpoint in before.items():
        assert await store.load(checkpoint_id) == checkpoint


async def test_a_delay_resumes_with_only_its_remaining_time(
    store: CheckpointStore, ledger: Ledger
) -> None:
    clock = HeldClock()
    workflow = make_workflow(
        [led("a"), node("d", "delay", config={"seconds": 10}), led("z")], [("a", "d"), ("d", "z")]
    )
    executor = WorkflowExecutor(CHECKPOINTS, checkpoint_store=store, clock=clock)
    task = asyncio.create_task(executor.execute(workflow, run_id="dr"))
    await clock.wait_sleeping(1)
    sleeping = await wait_checkpoint(store, "dr", lambda c: "d" in c.pending)
    executor.cancel("dr")
    assert (await task).status is RunStatus.CANCELLED

    clock.advance(4)  # the process was down for 4 s
    resumed = asyncio.create_task(
        WorkflowExecutor(CHECKPOINTS, checkpoint_store=store, clock=clock).resume_from_checkpoint(
            sleeping.id
        )
    )
    await clock.wait_sleeping(2)
    assert clock.sleeps == [10.0, 6.0]
    clock.advance(6)
    result = await resumed
    assert result.status is RunStatus.SUCCEEDED
    assert result.node_results["d"].output == {"slept": 10}
    assert ledger.runs() == Counter({"a": 1, "z": 1})


async def test_a_delay_past_its_wake_time_does_not_sleep_on_resume(
    store: CheckpointStore, ledger: Ledger
) -> None:
    clock = HeldClock()
    workflow = make_workflow([node("d", "delay", config={"seconds": 10}), led("z")], [("d", "z")])
    executor = WorkflowExecutor(CHECKPOINTS, checkpoint_store=store, clock=clock)
    task = asyncio.create_task(executor.execute(workflow, run_id="late"))
    await clock.wait_sleeping(1)
    sleeping = await wait_checkpoint(store, "late", lambda c: "d" in c.pending)
    executor.cancel("late")
    await task
    clock.advance(60)
    result = await WorkflowExecutor(
        CHECKPOINTS, checkpoint_store=store, clock=clock
    ).continue_execution(sleeping)
    assert result.status is RunStatus.SUCCEEDED
    assert clock.sleeps == [10.0, 0.0]


async def test_a_delay_resumed_from_the_cancelled_checkpoint_sleeps_only_what_is_left(
    store: CheckpointStore, ledger: Ledger
) -> None:
    clock = HeldClock()
    workflow = make_workflow([node("d", "delay", config={"seconds": 10}), led("z")], [("d", "z")])
    executor = WorkflowExecutor(CHECKPOINTS, checkpoint_store=store, clock=clock)
    task = asyncio.create_task(executor.execute(workflow, run_id="dc"))
    await clock.wait_sleeping(1)
    await wait_checkpoint(store, "dc", lambda c: "d" in c.pending)
    executor.cancel("dc")
    await task
    latest = await store.latest("dc")
    assert latest is not None
    clock.advance(4)
    resumed = asyncio.create_task(
        WorkflowExecutor(CHECKPOINTS, checkpoint_store=store, clock=clock).continue_execution(
            latest
        )
    )
    await clock.wait_sleeping(2)
    clock.advance(10)
    await resumed
    assert clock.sleeps == [10.0, 6.0]


async def test_a_wait_resumes_waiting_and_completes_on_its_signal(
    store: CheckpointStore, ledger: Ledger
) -> None:
    workflow = make_workflow(
        [led("before"), node("w", "wait", config={"signal": "approve"}), led("after")],
        [("before", "w"), ("w", "after")],
        output={"approved_by": "nodes.w.output.by"},
    )
    sink = RecordingSink()
    executor = WorkflowExecutor(CHECKPOINTS, checkpoint_store=store, event_sinks=[sink])
    task = asyncio.create_task(executor.execute(workflow, run_id="wr"))
    await sink.wait_for(EventType.RUN_WAITING)
    waiting = await wait_checkpoint(store, "wr", lambda c: c.status == "waiting")
    assert waiting.pending == {"w": {"kind": "wait", "signal": "approve"}}
    executor.cancel("wr")  # the process goes away while the run waits
    await task

    resumed_sink = RecordingSink()
    executor2 = WorkflowExecutor(CHECKPOINTS, checkpoint_store=store)
    resumed = asyncio.create_task(
        executor2.resume_from_checkpoint(waiting.id, event_sinks=[resumed_sink])
    )
    event = await resumed_sink.wait_for(EventType.RUN_WAITING)
    assert event.data == {"signal": "approve"}
    assert executor2.status("wr") is RunStatus.WAITING
    executor2.signal("wr", "approve", {"by": "ann"})
    result = await resumed
    assert result.status is RunStatus.SUCCEEDED
    assert result.output == {"approved_by": "ann"}
    assert ledger.runs() == Counter({"before": 1, "after": 1})


@pytest.mark.parametrize("checkpoints", ["all", "interval"])
async def test_a_failed_run_resumes_with_a_variables_patch(
    checkpoints: str, store: CheckpointStore, ledger: Ledger
) -> None:
    config = ExecutionConfig(
        enable_checkpoints=True, checkpoint_interval=1 if checkpoints == "all" else 2
    )
    ids = ["n0", "n1", "n2", "n3"]
    workflow = chain(ids, {"n2": led("n2", fail_if="vars.broken")}, vars={"broken": True})
    executor = WorkflowExecutor(config, checkpoint_store=store)
    failed = await executor.execute(workflow, run_id="patch")
    assert failed.status is RunStatus.FAILED
    checkpoint = await store.latest("patch")
    assert checkpoint is not None
    assert checkpoint.status == "failed"
    assert completed_ids(checkpoint) == {"n0", "n1"}  # the end of the run flushed them

    # without a fix it fails the same way, running only the failed node again
    again = await executor.continue_execution(checkpoint)
    assert again.status is RunStatus.FAILED
    assert ledger.runs() == Counter({"n0": 1, "n1": 1})

    fixed = await executor.continue_execution(checkpoint, variables={"broken": False})
    assert fixed.status is RunStatus.SUCCEEDED
    assert fixed.variables["broken"] is False
    assert ledger.runs() == Counter({"n0": 1, "n1": 1, "n2": 1, "n3": 1})
    assert Counter(ledger.started)["n2"] == 3


async def test_a_continued_failure_is_not_run_again_on_resume(
    store: CheckpointStore, ledger: Ledger
) -> None:
    workflow = make_workflow(
        [
            node("soft", "fail", on_error="continue"),
            led("soft_child"),
            led("main"),
            led("blocker", block=True),
        ],
        [("soft", "soft_child"), ("main", "blocker")],
    )
    sink = RecordingSink()
    executor = WorkflowExecutor(CHECKPOINTS, checkpoint_store=store)
    task = asyncio.create_task(executor.execute(workflow, run_id="soft"))
    await ledger.wait_entered("blocker")
    checkpoint = await wait_checkpoint(store, "soft", lambda c: "soft" in c.completed)
    assert checkpoint.completed["soft"].status == "failed"
    assert checkpoint.completed["soft"].error_kind == "deliberate"
    executor.cancel("soft")
    await task
    ledger.gate("blocker").set()
    latest = await store.latest("soft")
    assert latest is not None
    result = await WorkflowExecutor(CHECKPOINTS, checkpoint_store=store).continue_execution(
        latest, event_sinks=[sink]
    )
    assert result.status is RunStatus.SUCCEEDED
    assert "soft" not in [e.node_id for e in sink.of(EventType.NODE_STARTED)]
    assert result.node_results["soft"].status.value == "failed"
    assert result.node_results["soft_child"].status.value == "skipped"
    assert [e.node_id for e in result.errors] == ["soft"]
    assert ledger.runs() == Counter({"main": 1, "blocker": 1})


async def test_idempotency_keys_are_stable_across_a_resume(
    store: CheckpointStore, ledger: Ledger
) -> None:
    await interrupt_chain(store, ledger, "idem")
    ledger.gate("n3").set()
    latest = await store.latest("idem")
    assert latest is not None
    await WorkflowExecutor(CHECKPOINTS, checkpoint_store=store).continue_execution(latest)
    assert ledger.keys["n3"] == ["idem:n3:0", "idem:n3:0"]  # interrupted, then resumed
    assert ledger.keys["n0"] == ["idem:n0:0"]
    assert ledger.keys["n5"] == ["idem:n5:0"]


async def test_idempotency_keys_are_stable_across_retries(ledger: Ledger) -> None:
    workflow = make_workflow(
        [{**led("r", fail_if="true"), "retry": {"max_retries": 2, "delay": 0}}]
    )
    result = await WorkflowExecutor().execute(workflow, run_id="retry-run")
    assert result.status is RunStatus.FAILED
    assert ledger.keys["r"] == ["retry-run:r:0"] * 3


async def test_the_frontier_names_the_nodes_ready_or_running(
    store: CheckpointStore, ledger: Ledger
) -> None:
    ids = ["a", "b", "c"]
    await WorkflowExecutor(CHECKPOINTS, checkpoint_store=store).execute(chain(ids), run_id="fr")
    frontiers = [(await store.load(i.id)).frontier for i in await store.list("fr")]
    assert frontiers == [["a"], ["b"], ["c"], [], []]


# ---------------------------------------------------------------------------- the stores


async def test_unknown_checkpoints(store: CheckpointStore) -> None:
    with pytest.raises(CheckpointNotFoundError):
        await store.load("nope:1")
    with pytest.raises(CheckpointNotFoundError):
        await store.load("not-a-checkpoint-id")
    assert await store.latest("nope") is None
    assert await store.list("nope") == []
    with pytest.raises(CheckpointNotFoundError) as missing:
        await WorkflowExecutor(checkpoint_store=store).resume_from_checkpoint("nope:1")
    assert missing.value.kind == "checkpoint_not_found"


async def test_run_ids_that_need_quoting_are_stored_safely(tmp_path: Path, ledger: Ledger) -> None:
    store = FileCheckpointStore(tmp_path / "q")
    run_id = "../weird run/:id"
    await WorkflowExecutor(CHECKPOINTS, checkpoint_store=store).execute(chain(["a"]), run_id=run_id)
    assert [p.parent for p in (tmp_path / "q").iterdir()] == [tmp_path / "q"]
    latest = await store.latest(run_id)
    assert latest is not None
    assert latest.run_id == run_id
    assert (await store.load(latest.id)).status == "succeeded"


async def run_and_tear(tmp_path: Path, ledger: Ledger) -> tuple[FileCheckpointStore, Path]:
    """A run cancelled while n3 runs, then a torn half-record appended to its file."""
    store = FileCheckpointStore(tmp_path / "torn")
    await interrupt_chain(store, ledger, "torn")
    path = tmp_path / "torn" / "torn.jsonl"
    whole = path.read_text(encoding="utf-8").splitlines()[-1]
    with path.open("a", encoding="utf-8") as handle:
        handle.write(whole[: len(whole) // 2])  # a crash mid-write: no newline
    return store, path


async def test_a_torn_last_line_is_ignored(tmp_path: Path, ledger: Ledger) -> None:
    store, _ = await run_and_tear(tmp_path, ledger)
    infos = await store.list("torn")
    latest = await store.latest("torn")
    assert latest is not None
    assert latest.sequence == infos[-1].sequence
    assert latest.status == "cancelled"
    assert completed_ids(latest) == {"n0", "n1", "n2"}
    assert (await store.load(latest.id)) == latest


async def test_checkpoints_written_after_a_torn_line_are_visible(
    tmp_path: Path, ledger: Ledger
) -> None:
    store, _ = await run_and_tear(tmp_path, ledger)
    ledger.gate("n3").set()
    latest = await store.latest("torn")
    assert latest is not None
    result = await WorkflowExecutor(CHECKPOINTS, checkpoint_store=store).continue_execution(latest)
    assert result.status is RunStatus.SUCCEEDED
    final = await store.latest("torn")
    assert final is not None
    assert final.status == "succeeded"
