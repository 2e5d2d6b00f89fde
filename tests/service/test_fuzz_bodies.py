"""Arbitrary JSON, written by hand into the raw body text, into every body field of every
POST endpoint, through the real HTTP API on SQLite and on Postgres.

The invariant, for every request: the answer is a 2xx or a 4xx, never a 5xx, never a
timeout or a broken connection; a 4xx is ``application/problem+json`` carrying its
status; a 2xx body is strict JSON (UTF-8, no NaN/Infinity, no lone surrogate: what any
client can read back). Whatever was created stays readable: after a run is created
(POST /v1/runs, a resume or a fork) or touched (a signal), ``GET /v1/runs/{id}`` and the
listing ``GET /v1/runs`` answer 200 with strict JSON while it runs and once it settled
(so do its events, state, trace and checkpoints), and after a workflow is stored,
``GET /v1/workflows/{id}`` and ``GET /v1/workflows`` do. At the end a new run still
succeeds (the service still runs runs), both listings are paged through and every
created run is read again. An error the server logs while handling a request fails the
test too, even when its client saw nothing wrong.

The bodies: a valid body of the endpoint with one field (or the whole body) replaced by
a generated value: any JSON, nested up to ``MAX_DEPTH`` levels, any unicode including NUL,
and what ``json.dumps`` cannot write the way an attacker would: ``NaN``, ``Infinity``,
``-Infinity`` and ``1e999`` literals, lone surrogates as ``\\ud800`` escapes (in values
and in keys), integers past 32 and 64 bits and past Python's 4300-digit parsing limit.
Such pieces are ``Raw`` JSON text; ``encode`` writes the body text around them. Signals
go to runs that wait for one; a run a signal woke is replaced by a new waiting run.

The server is the real CLI as a process of its own (``serve_process``), so Hypothesis
drives a synchronous test in this process and nothing of the server shares it; every
request has a connection of its own, so a connection the server breaks is blamed on the
request that broke it. Violations are collected rather than raised, so one run reports
every distinct one (by target and kind, each with its shortest body) instead of the
first; the test fails at the end if there is any. Hypothesis runs derandomized (a fixed
seed), without example database or shrinking, ``MAX_EXAMPLES`` examples per backend.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from app.config import Settings
from tests.service.conftest import ServerProcess
from tests.service.support import PROBLEM, TERMINAL, MakeSettings, chain, transform

ServeProcess = Callable[[Settings], AbstractContextManager[ServerProcess]]

MAX_EXAMPLES = 1500
MAX_DEPTH = 300
#: a request unanswered after this long is a violation (nothing here should take long)
TIMEOUT = 15.0
#: how long a created run is followed until it settles
SETTLE_SECONDS = 3.0
SETTLED = (*TERMINAL, "waiting")
#: how long a new run of the seeded workflows may take to get where it goes
RUN_SECONDS = 20.0
WAITING_RUNS = 4


class Raw(str):
    """JSON text written into the body as it is."""

    __slots__ = ()


class Hole:
    """Where the generated value goes in a body template."""


HOLE = Hole()


def encode(value: Any) -> str:
    """The JSON text of ``value``, with ``Raw`` pieces (values and keys) written as they
    are; deep ``Raw`` nesting is built as text, so nothing here recurses deeply."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        items = (f"{_key(k)}:{encode(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode(v) for v in value) + "]"
    return json.dumps(value)


def _key(key: str) -> str:
    return str(key) if isinstance(key, Raw) else json.dumps(key)


def fill(template: Any, value: Any) -> Any:
    """``template`` with ``HOLE`` replaced by ``value``."""
    if template is HOLE:
        return value
    if isinstance(template, dict):
        return {k: fill(v, value) for k, v in template.items()}
    if isinstance(template, list):
        return [fill(v, value) for v in template]
    return template


# ---------------------------------------------------------------------- the values

SPECIAL = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e999",
    "1E400",
    "-0",
    "5e-324",
    "1.7976931348623157e308",
    '"\\ud800"',
    '"\\udfff"',
    '"a\\udc00b"',
    '"\\ud800\\u0000"',
    '"\\u0000"',
    '"nul\\u0000byte"',
    str(2**63),
    str(-(2**63) - 1),
    str(2**64),
    str(2**31),
    "9" * 400,
    "-" + "9" * 5000,  # past Python's int parsing limit (4300 digits)
    "1" + "0" * 5000,
]
SPECIAL_KEYS = ['"\\ud800"', '"\\u0000"', '"k\\udfffk"', '""', '"__proto__"']

special = st.sampled_from([Raw(text) for text in SPECIAL])
plain = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**31 - 2, max_value=2**31 + 2),
    st.integers(min_value=2**63 - 2, max_value=2**64 + 2),
    st.integers(min_value=-(2**63) - 2, max_value=-(2**63) + 2),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),  # any code point but surrogates, NUL included
    st.sampled_from(["\x00", "a\x00b", "\u2028", "\ufeff", "\U0010ffff", "'", '"', "\\"]),
)
leaves = st.one_of(special, plain)  # the hand-written literals half of the time
keys = st.one_of(st.text(max_size=12), st.sampled_from([Raw(k) for k in SPECIAL_KEYS]))
trees = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)
    ),
    max_leaves=16,
)


@st.composite
def deep(draw: st.DrawFn) -> Raw:
    """A value nested up to ``MAX_DEPTH`` levels (arrays, objects or both)."""
    depth = draw(st.integers(min_value=1, max_value=MAX_DEPTH))
    inner = encode(draw(leaves))
    kind = draw(st.sampled_from(["array", "object", "mixed"]))
    if kind == "array":
        return Raw("[" * depth + inner + "]" * depth)
    if kind == "object":
        return Raw('{"a":' * depth + inner + "}" * depth)
    opening = "".join('[{"a":' for _ in range(depth // 2))
    return Raw(opening + inner + "}]" * (depth // 2))


values = st.one_of(trees, st.dictionaries(keys, trees, max_size=5), deep())


# --------------------------------------------------------------------- the targets


@dataclass(frozen=True, slots=True)
class Target:
    """A body field of a POST endpoint: ``template`` is a valid body with ``HOLE`` there."""

    name: str
    path: str  # {run} and {checkpoint} are filled from the seeded resources
    template: Any
    creates: str | None = None  # "run" or "workflow": follow up on what a 2xx made
    touches_run: bool = False  # a 2xx changed the run in the path


DEFINITION = {
    "id": "bodies-wf",
    "nodes": [{"id": "n", "type": "transform", "config": {"output": {"v": "input"}}}],
    "output": {"v": "nodes.n.output.v"},
}
DEFINITION_FIELDS = (
    "id",
    "name",
    "description",
    "vars",
    "nodes",
    "edges",
    "output",
    "input_schema",
    "config",
    "nodes.0",
    "nodes.0.id",
    "nodes.0.type",
    "nodes.0.config",
    "nodes.0.config.output",
    "nodes.0.config.output.v",
    "nodes.0.retry",
    "nodes.0.timeout",
)


def with_hole(body: dict[str, Any], path: str) -> dict[str, Any]:
    """A copy of ``body`` with ``HOLE`` at ``path`` (dotted; digits index lists)."""
    copy: dict[str, Any] = json.loads(json.dumps(body))
    *parents, last = path.split(".")
    node: Any = copy
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if last.isdigit():
        node[int(last)] = HOLE
    else:
        node[last] = HOLE
    return copy


def _targets() -> list[Target]:
    targets: list[Target] = []
    for path, creates in (("/v1/workflows", "workflow"), ("/v1/workflows/validate", None)):
        targets.append(Target(f"POST {path} (whole body)", path, HOLE, creates))
        targets += [
            Target(f"POST {path} .{name}", path, with_hole(DEFINITION, name), creates)
            for name in DEFINITION_FIELDS
        ]
    run = {"workflow_id": "bodies-echo", "input": {"name": "x"}}
    targets.append(Target("POST /v1/runs (whole body)", "/v1/runs", HOLE, "run"))
    for name in ("workflow_id", "version", "input", "config"):
        targets.append(Target(f"POST /v1/runs .{name}", "/v1/runs", {**run, name: HOLE}, "run"))
    targets.append(
        Target(
            "POST /v1/runs .config.node_timeout",
            "/v1/runs",
            {**run, "config": {"node_timeout": HOLE}},
            "run",
        )
    )
    signal = "/v1/runs/{run}/signal"
    targets.append(Target(f"POST {signal} (whole body)", signal, HOLE, touches_run=True))
    targets.append(
        Target(f"POST {signal} .name", signal, {"name": HOLE, "payload": 1}, touches_run=True)
    )
    for name in ("other", "approval"):  # kept for later / delivered to the waiting node
        targets.append(
            Target(
                f"POST {signal} .payload (name {name})",
                signal,
                {"name": name, "payload": HOLE},
                touches_run=True,
            )
        )
    resume = "/v1/checkpoints/{checkpoint}/resume"
    targets += [
        Target(f"POST {resume} (whole body)", resume, HOLE, "run"),
        Target(f"POST {resume} .input (fork)", resume, {"fork": True, "input": HOLE}, "run"),
        Target(f"POST {resume} .vars (fork)", resume, {"fork": True, "vars": HOLE}, "run"),
        Target(f"POST {resume} .vars (in place)", resume, {"vars": HOLE}, "run"),
        Target(f"POST {resume} .fork", resume, {"fork": HOLE}, "run"),
    ]
    return targets


TARGETS = _targets()


# ---------------------------------------------------------------------- checking


class NotStrictJSON(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise NotStrictJSON(f"{name} is not JSON")


def strict_json(response: httpx.Response) -> Any:
    """The body as JSON any client can read: UTF-8, no NaN/Infinity, no lone surrogate."""
    try:
        text = response.content.decode("utf-8")
        value = json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise NotStrictJSON(f"{type(exc).__name__}: {str(exc)[:200]}") from exc
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in item):
            raise NotStrictJSON(f"a lone surrogate in {item[:80]!r}")
        elif isinstance(item, float) and not math.isfinite(item):
            raise NotStrictJSON(f"{item} is not JSON")
    return value


def _failed(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer in {TIMEOUT} s"
    return f"the connection failed ({type(exc).__name__}: {exc})"


@dataclass(slots=True)
class Violation:
    target: str
    kind: str
    example: str
    count: int = 0

    def render(self) -> str:
        return f"--- {self.target}: {self.kind} (x{self.count})\n  {self.example}"


@dataclass(slots=True)
class Violations:
    """Distinct violations by target and kind, each with its shortest example."""

    items: dict[tuple[str, str], Violation] = field(default_factory=dict)

    def add(self, target: str, kind: str, example: str) -> None:
        if len(example) > 600:
            example = example[:600] + f" ... ({len(example)} characters)"
        violation = self.items.get((target, kind))
        if violation is None:
            violation = self.items[(target, kind)] = Violation(target, kind, example)
        elif len(example) < len(violation.example):
            violation.example = example
        violation.count += 1

    def report(self) -> str:
        ordered = sorted(self.items.values(), key=lambda v: (v.target, v.kind))
        return f"{len(ordered)} distinct violation(s):\n" + "\n".join(v.render() for v in ordered)


@dataclass(slots=True)
class Seeded:
    waiting_runs: list[str]
    checkpoints: list[str]
    runs: set[str] = field(default_factory=set)  # every run created or touched
    workflows: set[str] = field(default_factory=set)  # every workflow stored


class Prober:
    """Sends the bodies and checks the invariant; collects what breaks it."""

    def __init__(self, client: httpx.Client, seeded: Seeded) -> None:
        self.client = client
        self.seeded = seeded
        self.violations = Violations()
        self.stalled = False

    def get(self, target: str, label: str, path: str, example: str, **kwargs: Any) -> Any:
        """GET ``path`` (``label`` names it in reports) that must answer 200 with strict
        JSON: the JSON, or None when it did not."""
        kind_path = label
        try:
            response = self.client.get(path, **kwargs)
        except httpx.TransportError as exc:
            self.violations.add(target, f"then GET {kind_path}: {_failed(exc)}", example)
            return None
        if response.status_code != 200:
            kind = f"then GET {kind_path}: {response.status_code}"
            self.violations.add(target, kind, f"{example}\n  -> {response.text[:300]}")
            return None
        try:
            return strict_json(response)
        except NotStrictJSON as exc:
            self.violations.add(target, f"then GET {kind_path}: not strict JSON ({exc})", example)
            return None

    def read_run(self, target: str, run_id: str, example: str, *, settle: bool) -> None:
        base = f"/v1/runs/{quote(run_id, safe='')}"
        deadline = time.monotonic() + (SETTLE_SECONDS if settle else 0)
        while True:
            run = self.get(target, "/v1/runs/{id}", base, example)
            if run is None or not settle or run.get("status") in SETTLED:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.get(target, "/v1/runs", "/v1/runs", example, params={"limit": 200})
        accept = {"Accept": "application/json"}
        self.get(target, "/v1/runs/{id}/events", f"{base}/events", example, headers=accept)
        for view in ("state", "trace", "checkpoints"):
            self.get(target, f"/v1/runs/{{id}}/{view}", f"{base}/{view}", example)

    def send(self, target: Target, value: Any, index: int) -> None:
        body = encode(fill(target.template, value))
        run_id = self.seeded.waiting_runs[index % len(self.seeded.waiting_runs)]
        checkpoint = self.seeded.checkpoints[index % len(self.seeded.checkpoints)]
        path = target.path.format(run=run_id, checkpoint=quote(checkpoint, safe=""))
        example = f"POST {target.path} {body}"
        try:
            response = self.client.post(
                path, content=body.encode("utf-8"), headers={"Content-Type": "application/json"}
            )
        except httpx.TransportError as exc:
            self.violations.add(target.name, _failed(exc), example)
            return
        status = response.status_code
        answer = f"{example}\n  -> {status} {response.text[:300]}"
        if not (200 <= status < 300 or 400 <= status < 500):
            self.violations.add(target.name, f"answered {status}", answer)
            return
        try:
            content = strict_json(response)
        except NotStrictJSON as exc:
            self.violations.add(target.name, f"{status} body is not strict JSON ({exc})", answer)
            return
        if status >= 400:
            if not response.headers.get("content-type", "").startswith(PROBLEM):
                kind = f"{status} is {response.headers.get('content-type')}, not {PROBLEM}"
                self.violations.add(target.name, kind, answer)
            elif not isinstance(content, dict) or content.get("status") != status:
                self.violations.add(target.name, f"{status} problem without its status", answer)
            return
        if target.creates == "run" and isinstance(content, dict) and "run_id" in content:
            created = str(content["run_id"])
            self.seeded.runs.add(created)
            self.read_run(target.name, created, example, settle=True)
        elif target.creates == "workflow" and isinstance(content, dict) and "id" in content:
            workflow_id = str(content["id"])
            self.seeded.workflows.add(workflow_id)
            path = f"/v1/workflows/{quote(workflow_id, safe='')}"
            self.get(target.name, "/v1/workflows/{id}", path, example)
            self.get(target.name, "/v1/workflows", "/v1/workflows", example, params={"limit": 200})
        elif target.touches_run:
            self.seeded.runs.add(run_id)
            self.read_run(target.name, run_id, example, settle=True)
            # a delivered signal ends the wait: the next bodies get a waiting run again
            self.replace_waiting_run(index % len(self.seeded.waiting_runs))

    def replace_waiting_run(self, slot: int) -> None:
        if self.stalled:  # once runs stopped running, do not wait for each of them
            return
        new, status = start_run(self.client, "bodies-approval", "waiting", "failed")
        if status == "waiting":
            self.seeded.waiting_runs[slot] = new
        else:
            self.stalled = True
            kind = f"a new run did not get to waiting in {RUN_SECONDS} s (it is {status})"
            self.violations.add("runs still run", kind, f"run {new} of bodies-approval")

    def sweep(self) -> None:
        """Runs still run; both listings, page after page, and every run created or
        touched still read."""
        run_id, status = start_run(self.client, "bodies-echo", *TERMINAL)
        if status != "succeeded":
            kind = f"after the fuzzing, a new run is {status} after {RUN_SECONDS} s"
            self.violations.add("runs still run", kind, f"run {run_id} of bodies-echo")
        for listing in ("/v1/runs", "/v1/workflows"):
            cursor: str | None = None
            for _ in range(1000):
                params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
                page = self.get("final sweep", listing, listing, f"GET {listing}", params=params)
                if not isinstance(page, dict) or not page.get("next_cursor"):
                    break
                cursor = str(page["next_cursor"])
        for run_id in sorted(self.seeded.runs):
            self.read_run("final sweep", run_id, f"GET /v1/runs/{run_id}", settle=False)
        for workflow_id in sorted(self.seeded.workflows):
            path = f"/v1/workflows/{quote(workflow_id, safe='')}"
            self.get("final sweep", "/v1/workflows/{id}", path, f"GET {path}")


# ------------------------------------------------------------------------ seeding


def _items(body: Any) -> list[Any]:
    """A list answer, or the items of a page of one."""
    items = body["items"] if isinstance(body, dict) else body
    assert isinstance(items, list), body
    return items


def start_run(client: httpx.Client, workflow_id: str, *statuses: str) -> tuple[str, str]:
    """A run of ``workflow_id`` with an empty input, and its status once it is one of
    ``statuses`` or ``RUN_SECONDS`` passed."""
    response = client.post("/v1/runs", json={"workflow_id": workflow_id, "input": {}})
    assert response.status_code in (200, 202), response.text
    run_id: str = response.json()["run_id"]
    deadline = time.monotonic() + RUN_SECONDS
    while True:
        response = client.get(f"/v1/runs/{run_id}")
        assert response.status_code == 200, response.text
        status: str = response.json()["status"]
        if status in statuses or time.monotonic() > deadline:
            return run_id, status
        time.sleep(0.05)


def seed(client: httpx.Client) -> Seeded:
    definitions = [
        chain("bodies-echo", transform("echo", value="input")),
        chain(
            "bodies-fails",
            transform("before", v="1"),
            {"id": "boom", "type": "fail", "config": {"message": "on purpose"}},
        ),
        chain(
            "bodies-approval",
            transform("prepare", v="1"),
            {"id": "approve", "type": "wait", "config": {"signal": "approval"}},
            transform("act", got="nodes.approve.output"),
        ),
    ]
    for definition in definitions:
        response = client.post("/v1/workflows", json=definition)
        assert response.status_code == 201, response.text
    started = [start_run(client, "bodies-approval", "waiting") for _ in range(WAITING_RUNS)]
    failed, status = start_run(client, "bodies-fails", "failed")
    assert status == "failed", status
    assert {status for _, status in started} == {"waiting"}, started
    waiting = [run_id for run_id, _ in started]
    checkpoints: list[str] = []
    for run_id in (failed, *waiting):
        response = client.get(f"/v1/runs/{run_id}/checkpoints")
        assert response.status_code == 200, response.text
        checkpoints += [c["id"] for c in _items(response.json())]
    assert checkpoints, "the seeded runs made no checkpoint"
    return Seeded(waiting_runs=waiting, checkpoints=checkpoints, runs={failed, *waiting})


# --------------------------------------------------------------------------- test


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_any_json_in_any_body_field_is_a_2xx_or_a_problem(
    make_settings: MakeSettings, serve_process: ServeProcess
) -> None:
    with (
        serve_process(make_settings(max_wait_seconds=2.0)) as server,
        # a connection of its own per request: a connection the server breaks is blamed
        # on the request that broke it, not on the next one that reuses it
        httpx.Client(
            base_url=server.base_url,
            timeout=TIMEOUT,
            limits=httpx.Limits(max_keepalive_connections=0),
        ) as client,
    ):
        prober = Prober(client, seed(client))

        @settings(
            settings.get_profile("default"),  # the same in CI as locally
            max_examples=MAX_EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            # every example runs (violations are collected, not raised): nothing to shrink
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(
            target=st.sampled_from(TARGETS),
            value=values,
            index=st.integers(min_value=0, max_value=1000),
        )
        def fuzz(target: Target, value: Any, index: int) -> None:
            prober.send(target, value, index)

        fuzz()
        prober.sweep()
    # an error logged by request handling is a request the server failed, even one whose
    # client saw nothing wrong
    request_failed, logged = server.error_report()
    if prober.violations.items or request_failed:
        pytest.fail(f"{prober.violations.report()}\n\n{logged}", pytrace=False)
