"""Runs interrupted by a shutdown: the replica gives them back to the queue, and the next
one resumes each from the run's *last* checkpoint, so nodes committed before the
interruption do not run again (plain runs, runs resumed in place, forks). And a run
whose lease expired while its replica still executed it, claimed again by that same
replica: the stale execution stops, the new one finishes the run."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.service.support import (
    MakeSettings,
    Serve,
    chain,
    events_json,
    finished,
    get_run,
    post_workflow,
    start_run,
    transform,
    unique,
    wait_for_event,
)

NAP_SECONDS = 1.0


def interruptible(workflow_id: str, **extra: Any) -> dict[str, Any]:
    """``a -> b -> nap -> d``; ``b`` reads ``vars.fix``; the run is interrupted in ``nap``."""
    return chain(
        workflow_id,
        transform("a", v="input.n"),
        transform("b", v="nodes.a.output.v + vars.fix"),
        {"id": "nap", "type": "delay", "config": {"seconds": NAP_SECONDS}},
        transform("d", v="nodes.b.output.v"),
        output={"d": "nodes.d.output.v"},
        **extra,
    )


def started_after_last_resume(events: list[dict[str, Any]]) -> list[str]:
    last = max(i for i, e in enumerate(events) if e["type"] == "run.resumed")
    return [e["node_id"] for e in events[last:] if e["type"] == "node.started"]


async def interrupt_and_recover(
    serve: Serve, make_settings: MakeSettings, run_id: str
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """With the run asleep in ``nap`` on the current server (already stopped by the
    caller): check it was given back to the queue, start a server that resumes it, and
    return the finished run, the log before the restart and the log after it."""
    async with serve(make_settings(dispatcher_enabled=False)) as client:
        released = await get_run(client, run_id)
        assert released["status"] == "queued", "shutdown gives the run back to the queue"
        before = await events_json(client, run_id)
    async with serve(make_settings()) as client:
        run = await finished(client, run_id)
        after = await events_json(client, run_id)
    assert [e["seq"] for e in after] == list(range(1, len(after) + 1)), "no gap, no duplicate"
    assert after[: len(before)] == before, "the log is append-only"
    return run, before, after


async def test_a_run_interrupted_by_shutdown_resumes_from_its_last_checkpoint(
    serve: Serve, make_settings: MakeSettings
) -> None:
    async with serve(make_settings()) as client:
        workflow_id = unique("plain")
        await post_workflow(client, interruptible(workflow_id, vars={"fix": 10}))
        run_id = (await start_run(client, workflow_id, {"n": 1}))["run_id"]
        await wait_for_event(client, run_id, "node.started", "nap")

    run, before, after = await interrupt_and_recover(serve, make_settings, run_id)
    assert run["status"] == "succeeded", run
    assert run["output"] == {"d": 11}
    assert after[len(before)]["type"] == "run.resumed"
    # `a` and `b` were committed before the shutdown; `nap` was in flight
    assert started_after_last_resume(after) == ["nap", "d"]


async def test_readyz_and_runs_survive_a_restart(serve: Serve, make_settings: MakeSettings) -> None:
    async with serve(make_settings()) as client:
        workflow_id = unique("durable")
        await post_workflow(client, chain(workflow_id, transform("t", v="input.n * 2")))
        run = await start_run(client, workflow_id, {"n": 21}, wait=10)
    async with serve(make_settings()) as client:
        assert (await client.get("/readyz")).status_code == 200
        again = await get_run(client, run["run_id"])
        assert again["status"] == "succeeded"
        assert again["output"] == run["output"]
        assert (await client.get(f"/v1/workflows/{workflow_id}")).status_code == 200


async def test_a_resumed_run_interrupted_by_shutdown_does_not_rerun_committed_nodes(
    serve: Serve, make_settings: MakeSettings
) -> None:
    async with serve(make_settings()) as client:
        workflow_id = unique("inplace")
        await post_workflow(client, interruptible(workflow_id))
        failed = await start_run(client, workflow_id, {"n": 1}, wait=10)
        assert failed["status"] == "failed"
        run_id = failed["run_id"]
        checkpoints = (await client.get(f"/v1/runs/{run_id}/checkpoints")).json()
        response = await client.post(
            f"/v1/checkpoints/{checkpoints[-1]['id']}/resume", json={"vars": {"fix": 100}}
        )
        assert response.status_code == 202, response.text
        await wait_for_event(client, run_id, "node.started", "nap")

    run, before, after = await interrupt_and_recover(serve, make_settings, run_id)
    assert run["status"] == "succeeded", run
    assert run["output"] == {"d": 101}
    assert after[len(before)]["type"] == "run.resumed"
    assert started_after_last_resume(after) == ["nap", "d"], "b was committed after the resume"


async def test_a_fork_interrupted_by_shutdown_resumes_from_its_own_checkpoint(
    serve: Serve, make_settings: MakeSettings
) -> None:
    async with serve(make_settings()) as client:
        workflow_id = unique("fork")
        await post_workflow(client, interruptible(workflow_id))
        failed = await start_run(client, workflow_id, {"n": 1}, wait=10)
        checkpoints = (await client.get(f"/v1/runs/{failed['run_id']}/checkpoints")).json()
        response = await client.post(
            f"/v1/checkpoints/{checkpoints[-1]['id']}/resume",
            json={"fork": True, "vars": {"fix": 10}},
        )
        fork_id = response.json()["run_id"]
        await wait_for_event(client, fork_id, "node.started", "nap")

    run, before, after = await interrupt_and_recover(serve, make_settings, fork_id)
    assert run["status"] == "succeeded", run
    assert run["output"] == {"d": 11}
    assert len(after) > len(before), "the recovery appends to the fork's log"
    assert after[len(before)]["type"] == "run.resumed"
    assert started_after_last_resume(after) == ["nap", "d"]


async def test_a_run_claimed_again_by_its_own_replica_is_finished_by_the_new_claim(
    serve: Serve, make_settings: MakeSettings
) -> None:
    """The lease runs out under the run (as when the replica stalls past it), and the
    same replica claims it again while the first execution still sleeps in ``nap``. That
    one's next commit finds the lease moved and stops it, and only it: were the new
    execution stopped instead (in ``nap2``), the run would sit claimed by nobody until
    its 60 s lease ran out, far past the deadline."""
    settings = make_settings(lease_seconds=60, heartbeat_seconds=30, poll_seconds=0.05)
    workflow_id = unique("reclaim")
    definition = chain(
        workflow_id,
        transform("a", v="input.n"),
        {"id": "nap", "type": "delay", "config": {"seconds": NAP_SECONDS}},
        {"id": "nap2", "type": "delay", "config": {"seconds": NAP_SECONDS}},
        transform("d", v="nodes.a.output.v"),
        output={"d": "nodes.d.output.v"},
    )
    async with serve(settings) as client:
        await post_workflow(client, definition)
        run_id = (await start_run(client, workflow_id, {"n": 1}))["run_id"]
        await wait_for_event(client, run_id, "node.started", "nap")
        engine = create_async_engine(settings.database_url)
        try:
            async with engine.begin() as connection:
                await connection.execute(
                    text("UPDATE runs SET lease_until = 0 WHERE id = :id"), {"id": run_id}
                )
        finally:
            await engine.dispose()
        run = await finished(client, run_id, timeout=15)
        events = await events_json(client, run_id)
    assert run["status"] == "succeeded", run
    assert run["output"] == {"d": 1}
    assert sum(1 for e in events if e["type"] == "run.resumed") == 1
    assert started_after_last_resume(events) == ["nap", "nap2", "d"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
