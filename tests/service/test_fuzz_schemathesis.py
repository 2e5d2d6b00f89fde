"""Schemathesis against the app's own ``/openapi.json``, served by the real server
(uvicorn, on SQLite and on Postgres), with every check enabled (``--checks all``).

How it works:

- The server is the real CLI, ``python -m app.cli serve`` (uvicorn, uvloop, JSON logs),
  as a process of its own on a free port (``serve_process``, configured through
  ``FLOWCORE_*`` from ``make_settings``): schemathesis' synchronous ``requests`` reach it
  over a real socket, and nothing of the server shares this process (in-process, the
  server's traceback formatting and Hypothesis' recursion-limit changes race on
  CPython 3.11's AST recursion counter: SystemError "AST constructor recursion depth
  mismatch" in the engine). What the server logs at level error is collected from its
  log: an error logged by request handling (a handler's crash, a stream that broke after
  its headers went out) fails the test too.
- The database is seeded first: a workflow whose runs succeed, one that fails after a
  checkpoint, one that waits for a signal, and a run of each; their ids go into
  schemathesis *dictionaries* bound to the ``run_id``, ``workflow_id`` and
  ``checkpoint_id`` parameters (half of the generated values), so path parameters hit
  real resources too. The stateful phase adds its own chains (links inferred from
  responses and ``Location`` headers: POST /v1/runs -> GET /v1/runs/{run_id}, ...).
- The engine is the one ``schemathesis run`` drives: every phase (examples, coverage,
  fuzzing, stateful) with ``checks.update(included_check_names=["all"])``, which is
  exactly what ``--checks all`` does, a fixed seed, ``deterministic`` generation (Hypothesis'
  ``derandomize``), no example database and no request cache, ``continue-on-failure``
  (every distinct failure, not the first of each operation), ``MAX_EXAMPLES`` per
  operation in the fuzzing phase and ``STATEFUL_EXAMPLES`` scenarios in the stateful one.
  Failures are deduplicated by operation, check, failure and status code, with the first
  few reproductions (curl) of each.
- Two checks of this API are added to the built-in ones: every 4xx/5xx is an RFC 9457
  problem (docs/api.md, "Errors"), and the event stream of a run that had finished
  before the request ends by itself (see below).

The event stream: ``GET /v1/runs/{run_id}/events`` streams until the run ends, so a run
that waits for a signal streams forever. Schemathesis reads an event stream until it
ends, until ``max-stream-events`` events, or until the request timeout has passed; that
operation gets a short request timeout (``SSE_TIMEOUT``) and a very large
``max-stream-events``, so the fuzzer never hangs and a stream is never cut by the event
count. We do *not* send ``Accept: application/json`` instead: the stream and its
``Last-Event-ID`` handling are where bugs hide, so the header also gets a dictionary of
resume points that ``int()`` takes or nearly does (``EVENT_IDS``: negative, past the log,
past 64 bits, ...). A stream cut short is a failure when the run had finished before the
request was sent (``finished_run_stream_ends``): such a stream must replay the log, send
the terminal event and end. To tell a hang from a slow machine, the check sends the same
request again and fails only if that stream does not end within ``STREAM_END_SECONDS``
either. The run ids of that operation's dictionary are finished runs only, so its
examples rarely wait on the run that waits for a signal.

Determinism: the examples, coverage and fuzzing phases send the same requests on every
run (up to the seeded ids); the stateful phase follows ids and states that the server
makes at run time, so its few findings may vary a little between runs.

Checks that cannot fail on this API and are still on, deliberately: ``ignored_auth``
and ``object_level_authorization`` (the API declares no security scheme, so there is no
auth to ignore and no identities to swap); ``missing_required_header`` (no operation
requires a header). They stay enabled so that adding auth or a required header later
gets them checked without touching this file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from cryptography.fernet import Fernet
from schemathesis.checks import CHECKS
from schemathesis.engine import Status, events, from_schema
from schemathesis.engine.recorder import ScenarioRecorder

from app.config import Settings
from tests.service.conftest import ServerProcess
from tests.service.support import PROBLEM, TERMINAL, MakeSettings, chain, transform

ServeProcess = Callable[[Settings], AbstractContextManager[ServerProcess]]

SEED = 20250101
#: per operation in the fuzzing phase (the coverage phase's cases follow from the schema)
MAX_EXAMPLES = 100
#: scenarios of the stateful phase (chains of calls along the inferred links)
STATEFUL_EXAMPLES = 50
#: every other request's timeout: a request still unanswered then is a failure
REQUEST_TIMEOUT = 10.0
#: the event stream's read timeout (the stream of a waiting run never ends)
SSE_TIMEOUT = 0.25
#: how long the stream of a finished run may take to end when it is sent again
STREAM_END_SECONDS = 10.0
EVENTS_PATH = "/v1/runs/{run_id}/events"
EVENT_IDS = ["-1", "0", "1", "3", "-99", "1.5", "٣", " 7 ", "1_0", "+2", "2147483648"]
EVENT_IDS += ["9223372036854775808", "-9223372036854775809", "9" * 30, "1e3", "0x10", ""]
#: reproductions shown per distinct failure
MAX_SHOWN = 3


# ------------------------------------------------------------------------ seeding


@dataclass(slots=True)
class Seeded:
    """Real resources for the path parameters."""

    workflow_ids: list[str] = field(default_factory=list)
    finished_runs: list[str] = field(default_factory=list)
    waiting_runs: list[str] = field(default_factory=list)
    checkpoint_ids: list[str] = field(default_factory=list)


def _definitions() -> list[dict[str, Any]]:
    return [
        chain(
            "fuzz-echo",
            transform("echo", value="input"),
            transform("size", n="string(input).size()"),
        ),
        chain(
            "fuzz-fails",
            transform("before", v="1"),
            {"id": "boom", "type": "fail", "config": {"message": "on purpose"}},
        ),
        chain(
            "fuzz-approval",
            transform("prepare", amount="1"),
            {"id": "approve", "type": "wait", "config": {"signal": "approval"}},
            transform("act", ok="nodes.approve.output"),
        ),
    ]


def _wait_for(client: httpx.Client, run_id: str, statuses: tuple[str, ...]) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        response = client.get(f"/v1/runs/{run_id}")
        assert response.status_code == 200, response.text
        run: dict[str, Any] = response.json()
        if run["status"] in statuses:
            return run
        assert time.monotonic() < deadline, f"run {run_id} never got to {statuses}: {run}"
        time.sleep(0.05)


def seed(base_url: str) -> Seeded:
    seeded = Seeded()
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for definition in _definitions():
            response = client.post("/v1/workflows", json=definition)
            assert response.status_code == 201, response.text
            seeded.workflow_ids.append(definition["id"])
        runs: dict[str, str] = {}
        for workflow_id, run_input in (
            ("fuzz-echo", {"name": "ada"}),
            ("fuzz-echo", [1, "two", None]),
            ("fuzz-fails", {}),
            ("fuzz-approval", {}),
        ):
            response = client.post(
                "/v1/runs", json={"workflow_id": workflow_id, "input": run_input}
            )
            assert response.status_code in (200, 202), response.text
            runs[response.json()["run_id"]] = workflow_id
        for run_id, workflow_id in runs.items():
            if workflow_id == "fuzz-approval":
                _wait_for(client, run_id, ("waiting",))
                seeded.waiting_runs.append(run_id)
            else:
                _wait_for(client, run_id, TERMINAL)
                seeded.finished_runs.append(run_id)
            response = client.get(f"/v1/runs/{run_id}/checkpoints")
            assert response.status_code == 200, response.text
            body = response.json()  # a list, or a page of one
            items = body["items"] if isinstance(body, dict) else body
            seeded.checkpoint_ids.extend(c["id"] for c in items)
    assert seeded.checkpoint_ids, "the seeded runs made no checkpoint"
    return seeded


# ------------------------------------------------------------- checks of this API


def errors_are_problem_details(ctx: Any, response: schemathesis.Response, case: Any) -> None:
    """docs/api.md: every error is ``application/problem+json`` (RFC 9457) whose
    ``status`` is the response's."""
    if response.status_code < 400:
        return
    content_type = (response.headers.get("content-type") or [""])[0]
    assert content_type.startswith(PROBLEM), (
        f"a {response.status_code} answered {content_type or 'without a Content-Type'}, "
        f"not {PROBLEM}: {response.content[:300]!r}"
    )
    try:
        body = response.json()
    except ValueError as exc:
        raise AssertionError(f"a problem that is not JSON: {response.content[:300]!r}") from exc
    assert isinstance(body, dict), f"a problem is an object: {body!r}"
    assert body.get("status") == response.status_code, f"problem status mismatch: {body!r}"
    assert body.get("type"), f"a problem has a type: {body!r}"
    assert body.get("title"), f"a problem has a title: {body!r}"


def _stream_ends(response: schemathesis.Response) -> bool:
    """Send the request of ``response`` again: does its stream end within
    ``STREAM_END_SECONDS``?"""
    request = response.request
    headers = {
        k: v if isinstance(v, str) else v.decode("latin-1") for k, v in request.headers.items()
    }
    deadline = time.monotonic() + STREAM_END_SECONDS
    with httpx.stream(
        "GET",
        str(request.url),
        headers=headers,
        timeout=httpx.Timeout(STREAM_END_SECONDS),
    ) as replay:
        try:
            for _ in replay.iter_raw():
                if time.monotonic() > deadline:
                    return False
        except httpx.ReadTimeout:
            return False
    return True


def _finished_run_stream_ends(base_url: str) -> Callable[..., None]:
    confirmed: list[str] = []

    def finished_run_stream_ends(ctx: Any, response: schemathesis.Response, case: Any) -> None:
        """The event stream of a run that had finished before the request ends by itself
        (after the terminal event): a client must never hang on it. A stream cut short
        by the short ``SSE_TIMEOUT`` is sent again with ``STREAM_END_SECONDS`` to confirm
        (the first few times: after that the test fails anyway)."""
        if case.operation.path != EVENTS_PATH or not response.stream_cut_short:
            return
        checked_at = time.time()
        run_id = str(case.path_parameters.get("run_id", ""))
        run = httpx.get(f"{base_url}/v1/runs/{quote(run_id, safe='')}", timeout=REQUEST_TIMEOUT)
        if run.status_code != 200:
            return
        body = run.json()
        finished_at = body.get("finished_at")
        # the request went out at most SSE_TIMEOUT (and a margin) before this check
        if body.get("status") not in TERMINAL or finished_at is None:
            return
        if finished_at > checked_at - SSE_TIMEOUT - 1.0:
            return
        if len(confirmed) < 3:
            if _stream_ends(response):
                return
            confirmed.append(run_id)
        raise AssertionError(
            f"the event stream of run {run_id} ({body['status']} before the request was "
            f"sent) did not end within {STREAM_END_SECONDS} s; read in the first "
            f"{SSE_TIMEOUT} s: {response.content[-300:]!r}"
        )

    return finished_run_stream_ends


@contextmanager
def registered(*checks: Callable[..., None]) -> Iterator[None]:
    for check in checks:
        schemathesis.check(check)
    try:
        yield
    finally:
        for check in checks:
            CHECKS.unregister(check.__name__)


# ----------------------------------------------------------------- the engine run


def schemathesis_config(seeded: Seeded) -> schemathesis.Config:
    bind = {"probability": 0.5}
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            # no replay of requests cached on disk by earlier runs: every run is the same
            "cache": {"enabled": False},
            "generation": {
                "mode": "all",
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "phases": {"stateful": {"generation": {"max-examples": STATEFUL_EXAMPLES}}},
            "request-timeout": REQUEST_TIMEOUT,
            # go on after the first failure of an operation: every distinct failure is wanted
            "continue-on-failure": True,
            "dictionaries": {
                "workflows": {"values": seeded.workflow_ids},
                "runs": {"values": seeded.finished_runs + seeded.waiting_runs},
                "finished_runs": {"values": seeded.finished_runs},
                "checkpoints": {"values": seeded.checkpoint_ids},
                "signals": {"values": ["approval"]},
                # Last-Event-ID values that int() takes, or nearly: the resume point of a
                # stream that must still end (negative, past the log, past 64 bits, ...)
                "event_ids": {"values": EVENT_IDS},
            },
            "parameters": {
                "path.workflow_id": {"dictionary": "workflows", **bind},
                "query.workflow_id": {"dictionary": "workflows", **bind},
                "body.workflow_id": {"dictionary": "workflows", **bind},
                "path.run_id": {"dictionary": "runs", **bind},
                "path.checkpoint_id": {"dictionary": "checkpoints", **bind},
                "body.name": {"dictionary": "signals", **bind},
            },
            "operations": [
                {
                    # a definition's graph rules (edges name nodes, no cycles, CEL that
                    # compiles, known node types and their configs) are more than a JSON
                    # Schema can say: a definition the schema admits may still be refused,
                    # with the 422 invalid-workflow that lists why. The default expected
                    # statuses of the check plus that one, for this operation only.
                    "include-path": "/v1/workflows",
                    "include-method": "POST",
                    "checks": {
                        "positive_data_acceptance": {
                            "expected-statuses": [
                                "2xx",
                                "3xx",
                                "401",
                                "403",
                                "404",
                                "409",
                                "422",
                                "429",
                                "5xx",
                            ]
                        }
                    },
                },
                {
                    "include-path": EVENTS_PATH,
                    "request-timeout": SSE_TIMEOUT,
                    "max-stream-events": 1_000_000,
                    "parameters": {
                        "path.run_id": {"dictionary": "finished_runs", **bind},
                        "header.last-event-id": {"dictionary": "event_ids", **bind},
                    },
                },
            ],
        }
    )
    # exactly what `schemathesis run --checks all` does with the configuration
    config.projects.override.checks.update(included_check_names=["all"])
    return config


@dataclass(slots=True)
class Finding:
    """One distinct failure: the operation, the check, what it saw, and the first few
    reproductions."""

    operation: str
    check: str
    title: str
    status: str
    message: str
    examples: list[str] = field(default_factory=list)
    phases: set[str] = field(default_factory=set)
    count: int = 0

    def render(self) -> str:
        message = self.message.strip()
        if len(message) > 800:
            message = message[:800] + " ..."
        phases = ", ".join(sorted(self.phases))
        head = f"--- {self.operation} [{self.check}] {self.title}"
        lines = [f"{head} -> {self.status} (x{self.count}; {phases})"]
        if message:
            lines.append(message)
        lines.extend(f"  * {example}" for example in self.examples)
        return "\n".join(lines)


@dataclass(slots=True)
class Findings:
    """Failures deduplicated by operation, check, failure title and status code."""

    items: dict[tuple[str, str, str, str], Finding] = field(default_factory=dict)

    def add(
        self,
        operation: str,
        check: str,
        title: str,
        status: str,
        message: str,
        example: str,
        phase: str,
    ) -> None:
        key = (operation, check, title, status)
        finding = self.items.get(key)
        if finding is None:
            finding = self.items[key] = Finding(operation, check, title, status, message)
        finding.count += 1
        finding.phases.add(phase)
        if example and example not in finding.examples and len(finding.examples) < MAX_SHOWN:
            finding.examples.append(example)

    def add_recorded(self, recorder: ScenarioRecorder, phase: str) -> None:
        for case_id, nodes in recorder.checks.items():
            node = recorder.cases.get(case_id)
            label = node.value.operation.label if node is not None else recorder.label
            for check in nodes:
                if check.status == Status.FAILURE and check.failure_info is not None:
                    failure = check.failure_info.failure
                    response = recorder.find_response(case_id=failure.case_id or case_id)
                    status = str(response.status_code) if response is not None else "-"
                    example = check.failure_info.code_sample
                    if response is not None:
                        example += f"\n    -> {response.status_code} {response.content[:300]!r}"
                    self.add(
                        failure.operation or label,
                        check.name,
                        failure.title,
                        status,
                        failure.message,
                        example,
                        phase,
                    )
                elif check.status == Status.ERROR:
                    self.add(label, check.name, "the check itself crashed", "-", "", "", phase)

    def report(self) -> str:
        ordered = sorted(self.items.values(), key=lambda f: (f.operation, f.check, f.title))
        return f"{len(ordered)} distinct failure(s):\n" + "\n".join(f.render() for f in ordered)


def run_schemathesis(base_url: str, seeded: Seeded) -> tuple[Findings, set[str]]:
    """Every phase of the engine against the live server; the findings and the labels of
    the operations that were tested."""
    schema = schemathesis.openapi.from_url(
        f"{base_url}/openapi.json", config=schemathesis_config(seeded)
    )
    findings = Findings()
    tested: set[str] = set()
    finished = False
    with registered(errors_are_problem_details, _finished_run_stream_ends(base_url)):
        for event in from_schema(schema).execute():
            if isinstance(event, events.ScenarioFinished):
                tested.add(event.recorder.label)
                findings.add_recorded(event.recorder, event.phase.value)
            elif isinstance(event, events.NonFatalError):
                findings.add(
                    event.label,
                    "(error)",
                    event.info.title,
                    type(event.value).__name__,
                    event.info.format(),
                    event.info.code_sample or "",
                    event.phase.value if event.phase is not None else "-",
                )
            elif isinstance(event, events.FatalError):
                raise AssertionError(f"schemathesis stopped: {event.exception!r}") from (
                    event.exception
                )
            elif isinstance(event, events.EngineFinished):
                finished = True
                for failure in event.failures:
                    operation = failure.operation or "(run)"
                    findings.add(
                        operation, "(after run)", failure.title, "-", failure.message, "", "-"
                    )
    assert finished, "the engine did not finish"
    return findings, tested


# Hypothesis warns (HypothesisWarning) before it builds the repr of a huge generated
# value; filterwarnings=error would turn that note into an error that aborts the fuzzing
# of the operation (schemathesis ignores it itself in its stateful phase).
@pytest.mark.filterwarnings(
    "ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning"
)
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_schemathesis_finds_no_failure(
    make_settings: MakeSettings, serve_process: ServeProcess
) -> None:
    # ?wait=N blocks at most this long: generated waits must not outlast the request timeout
    # a secret key, so that the secrets API is served (without one it is a 503)
    settings = make_settings(max_wait_seconds=2.0, secret_key=Fernet.generate_key().decode())
    with serve_process(settings) as server:
        seeded = seed(server.base_url)
        findings, tested = run_schemathesis(server.base_url, seeded)
        # the server is still healthy after the run
        assert httpx.get(f"{server.base_url}/healthz", timeout=10).status_code == 200
    request_failed, logged = server.error_report()
    assert len(tested) >= 15, f"too few operations were tested: {sorted(tested)}"
    if findings.items or request_failed:
        pytest.fail(f"{findings.report()}\n\n{logged}", pytrace=False)
