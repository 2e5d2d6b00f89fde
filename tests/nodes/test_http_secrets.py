"""The ``http`` node and secrets: its headers take ``{{ secrets.NAME }}`` (filled in when
the request is sent, from the definition's own text), a credential header must take one,
and nothing of the run's data can make it send a secret."""

from __future__ import annotations

from typing import Any

import pytest

from app.engine import (
    InMemorySecrets,
    RunStatus,
    WorkflowExecutor,
    create_workflow,
    validate_workflow,
)

from .conftest import LocalHTTPServer, json_reply

LOOPBACK = ["127.0.0.1"]


def call(url: str, headers: dict[str, Any]) -> dict[str, Any]:
    config = {"url": url, "headers": headers, "allow_hosts": LOOPBACK}
    return {"id": "w", "nodes": [{"id": "call", "type": "http", "config": config}]}


async def test_headers_carry_the_secrets_they_reference(http_server: LocalHTTPServer) -> None:
    http_server.route("/api", lambda _: json_reply({}))
    headers = {
        "Authorization": "Bearer {{ secrets.TOKEN }}",
        "proxy-authorization": "Basic {{ secrets.PROXY }}",
        "X-Api-Key": "{{ secrets.KEY }}",
        "X-Both": "{{ secrets.KEY }}/{{ secrets.TOKEN }}",
        "X-Plain": "p",
    }
    secrets = InMemorySecrets({"TOKEN": "t0k", "PROXY": "cHJveHk=", "KEY": "k3y"})
    workflow = create_workflow(call(http_server.url("/api"), headers))

    result = await WorkflowExecutor(secrets=secrets).execute(workflow)

    assert result.status is RunStatus.SUCCEEDED, result.error
    sent = http_server.requests[0].headers
    assert sent["authorization"] == "Bearer t0k"
    assert sent["proxy-authorization"] == "Basic cHJveHk="
    assert (sent["x-api-key"], sent["x-both"], sent["x-plain"]) == ("k3y", "k3y/t0k", "p")


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer s3cret"},
        {"authorization": "s3cret"},
        {"Proxy-Authorization": "Basic dXNlcjpwYXNz"},
        {"X-API-KEY": "k3y"},
        {"Authorization": "Bearer {{ input.token }}"},  # the run's input would hold it
        {"Authorization": 12345},
        {"Authorization": ""},
    ],
)
def test_a_credential_header_must_take_a_secret(headers: dict[str, Any]) -> None:
    (issue,) = validate_workflow(call("https://api.test/", headers))
    name = next(iter(headers))
    assert (issue.node, issue.field) == ("call", "config.headers")
    assert f"{name} holds a literal credential" in issue.message
    assert "PUT /v1/secrets/NAME" in issue.message
    assert "{{ secrets.NAME }}" in issue.message
    assert "s3cret" not in issue.message


def test_other_headers_may_be_literal_or_templated() -> None:
    headers = {"X-Token": "abc", "X-Run": "{{ run.id }}", "X-Signed": "{{ secrets.SIG }}"}
    assert validate_workflow(call("https://api.test/", headers)) == []


async def test_run_data_shaped_like_a_reference_is_sent_as_it_is(
    http_server: LocalHTTPServer,
) -> None:
    http_server.route("/api", lambda _: json_reply({}))
    probe = InMemorySecrets({"TOKEN": "t0k"})
    workflow = create_workflow(call(http_server.url("/api"), {"X-Echo": "{{ input.h }}"}))

    result = await WorkflowExecutor(secrets=probe).execute(workflow, {"h": "{{ secrets.TOKEN }}"})

    assert result.status is RunStatus.SUCCEEDED, result.error
    assert http_server.requests[0].headers["x-echo"] == "{{ secrets.TOKEN }}"
    assert probe.mask("t0k") == "t0k"  # never resolved


async def test_an_unknown_secret_sends_nothing(http_server: LocalHTTPServer) -> None:
    http_server.route("/api", lambda _: json_reply({}))
    workflow = create_workflow(
        call(http_server.url("/api"), {"Authorization": "Bearer {{ secrets.NOPE }}"})
    )

    result = await WorkflowExecutor(secrets=InMemorySecrets()).execute(workflow)

    assert result.status is RunStatus.FAILED
    assert result.error is not None
    assert (result.error.kind, result.error.node_id) == ("config", "call")
    assert "secret 'NOPE' is not set" in result.error.message
    assert http_server.connections == 0
