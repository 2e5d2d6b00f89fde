"""The ``http`` node: real workflows against a real local HTTP server, the SSRF guard,
the address classifier and config validation.

Nothing here sends traffic beyond 127.0.0.1: public addresses appear only in
classifier tests, and name resolution is faked where a test needs other names.
"""

from __future__ import annotations

import asyncio
import socket
from ipaddress import ip_address
from typing import Any

import pytest

from app.engine import (
    InMemorySecrets,
    RunResult,
    RunStatus,
    WorkflowExecutor,
    create_workflow,
    validate_workflow,
)
from app.nodes import egress as egress_module
from app.nodes import http as http_module
from app.nodes.egress import IPAddress, TargetPolicy, forbidden_reason
from app.nodes.http import shared_http_client

from .conftest import (
    LocalHTTPServer,
    Received,
    Reply,
    json_reply,
    redirect,
    text_reply,
)

LOOPBACK = ["127.0.0.1"]


def http_workflow(*configs: dict[str, Any]) -> dict[str, Any]:
    """A workflow of http nodes ``call0``, ``call1``, ... run one after the other."""
    nodes = [{"id": f"call{i}", "type": "http", "config": c} for i, c in enumerate(configs)]
    edges = [{"source": f"call{i}", "target": f"call{i + 1}"} for i in range(len(configs) - 1)]
    return {"id": "http-test", "nodes": nodes, "edges": edges}


async def run(*configs: dict[str, Any], input: Any = None) -> RunResult:
    return await WorkflowExecutor().execute(create_workflow(http_workflow(*configs)), input)


def output(result: RunResult, node: str = "call0") -> Any:
    assert result.status is RunStatus.SUCCEEDED, result.error
    return result.node_results[node].output


def failure(result: RunResult) -> tuple[str, str]:
    assert result.status is RunStatus.FAILED
    assert result.error is not None
    return result.error.kind, result.error.message


# ------------------------------------------------------------------ requests and responses


async def test_get_json(http_server: LocalHTTPServer) -> None:
    http_server.route("/items", lambda _: json_reply({"items": [1, 2]}))

    result = await run({"url": http_server.url("/items"), "allow_hosts": LOOPBACK})

    out = output(result)
    assert out["status"] == 200
    assert out["body"] == {"items": [1, 2]}
    assert out["headers"]["content-type"] == "application/json"
    assert http_server.requests[0].method == "GET"


async def test_post_json_body_carries_the_idempotency_key(http_server: LocalHTTPServer) -> None:
    http_server.route("/orders", lambda req: json_reply({"got": req.json()}, status=201))
    config = {
        "method": "post",
        "url": http_server.url("/orders"),
        "json": {"sku": "pen", "qty": 3},
        "allow_hosts": LOOPBACK,
    }

    result = await run(config)

    out = output(result)
    assert out["status"] == 201
    assert out["body"] == {"got": {"sku": "pen", "qty": 3}}
    sent = http_server.requests[0]
    assert sent.method == "POST"
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["idempotency-key"] == f"{result.run_id}:call0:0"


async def test_text_body(http_server: LocalHTTPServer) -> None:
    http_server.route("/echo", lambda req: text_reply(req.body.decode()))

    config = {
        "method": "PUT",
        "url": http_server.url("/echo"),
        "body": "hello",
        "headers": {"Content-Type": "text/x-greeting"},
        "allow_hosts": LOOPBACK,
    }
    result = await run(config)

    assert output(result)["body"] == "hello"
    assert http_server.requests[0].headers["content-type"] == "text/x-greeting"
    assert "idempotency-key" not in http_server.requests[0].headers  # PUT is idempotent


async def test_query_parameters_and_headers(http_server: LocalHTTPServer) -> None:
    http_server.route("/search", lambda _: json_reply({}))
    config = {
        "url": http_server.url("/search?fixed=1"),
        "query": {"q": "blue pens", "n": [1, 2], "exact": True},
        "headers": {"X-Token": "abc", "X-Count": 5},
        "allow_hosts": LOOPBACK,
    }

    output(await run(config))

    sent = http_server.requests[0]
    assert sent.target == "/search?fixed=1&q=blue+pens&n=1&n=2&exact=true"
    assert sent.headers["x-token"] == "abc"
    assert sent.headers["x-count"] == "5"
    assert sent.headers["user-agent"].startswith("flowcore")


async def test_templated_url_and_headers(http_server: LocalHTTPServer) -> None:
    http_server.route("/users/ada", lambda req: json_reply({"name": "Ada"}))
    config = {
        "url": http_server.url("/users/{{ input.user }}"),
        "headers": {"X-Request": "{{ input.request_id }}"},
        "allow_hosts": LOOPBACK,
    }

    result = await run(config, input={"user": "ada", "request_id": 42})

    assert output(result)["body"] == {"name": "Ada"}
    assert http_server.requests[0].headers["x-request"] == "42"


async def test_response_modes(http_server: LocalHTTPServer) -> None:
    http_server.route("/text", lambda _: text_reply("plain words"))
    http_server.route("/json-as-text", lambda _: json_reply({"a": 1}))
    http_server.route("/text-as-json", lambda _: text_reply('{"b": 2}'))
    http_server.route("/empty", lambda _: Reply(204, [("Content-Type", "application/json")]))

    result = await run(
        {"url": http_server.url("/text"), "allow_hosts": LOOPBACK},
        {"url": http_server.url("/json-as-text"), "response": "text", "allow_hosts": LOOPBACK},
        {"url": http_server.url("/text-as-json"), "response": "json", "allow_hosts": LOOPBACK},
        {"url": http_server.url("/empty"), "allow_hosts": LOOPBACK},
    )

    assert output(result, "call0")["body"] == "plain words"
    assert output(result, "call1")["body"] == '{"a": 1}'
    assert output(result, "call2")["body"] == {"b": 2}
    assert output(result, "call3")["status"] == 204
    assert output(result, "call3")["body"] is None


async def test_invalid_json_response_fails_clearly(http_server: LocalHTTPServer) -> None:
    http_server.route("/broken", lambda _: Reply(200, [("Content-Type", "application/json")], b"{"))

    kind, message = failure(await run({"url": http_server.url("/broken"), "allow_hosts": LOOPBACK}))

    assert kind == "execution"
    assert "not valid JSON" in message


async def test_unexpected_status_fails_naming_it(http_server: LocalHTTPServer) -> None:
    http_server.route("/boom", lambda _: text_reply("database down", 500))

    kind, message = failure(await run({"url": http_server.url("/boom"), "allow_hosts": LOOPBACK}))

    assert kind == "execution"
    assert "HTTP 500" in message
    assert "expected 2xx" in message
    assert "database down" in message


@pytest.mark.parametrize("expect", [404, [200, 404]])
async def test_expect_status_admits_a_listed_status(
    http_server: LocalHTTPServer, expect: int | list[int]
) -> None:
    config = {"url": http_server.url("/missing"), "expect_status": expect, "allow_hosts": LOOPBACK}

    assert output(await run(config))["status"] == 404


async def test_expect_status_mismatch_even_for_2xx(http_server: LocalHTTPServer) -> None:
    http_server.route("/ok", lambda _: json_reply({}))
    config = {"url": http_server.url("/ok"), "expect_status": 201, "allow_hosts": LOOPBACK}

    kind, message = failure(await run(config))

    assert kind == "execution"
    assert "HTTP 200, expected 201" in message


async def test_timeout_is_a_timeout_error(http_server: LocalHTTPServer) -> None:
    async def stall(_: Received) -> Reply:
        await asyncio.sleep(30)
        return json_reply({})

    http_server.route("/slow", stall)
    config = {"url": http_server.url("/slow"), "timeout": 0.2, "allow_hosts": LOOPBACK}

    kind, message = failure(await run(config))

    assert kind == "timeout"
    assert "0.2s" in message


async def test_connection_refused_is_an_execution_error() -> None:
    with socket.socket() as probe:  # a port nobody listens on once the socket is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    result = await run({"url": f"http://127.0.0.1:{port}/", "allow_hosts": LOOPBACK})

    kind, message = failure(result)
    assert kind == "execution"
    assert "cannot connect" in message


async def test_response_size_is_capped(http_server: LocalHTTPServer) -> None:
    http_server.route("/big", lambda _: text_reply("x" * 1000))
    config = {"url": http_server.url("/big"), "max_response_bytes": 100, "allow_hosts": LOOPBACK}

    kind, message = failure(await run(config))

    assert kind == "execution"
    assert "max_response_bytes=100" in message


async def test_one_pooled_client_serves_every_node(http_server: LocalHTTPServer) -> None:
    http_server.route("/a", lambda _: json_reply({}))
    config = {"url": http_server.url("/a"), "allow_hosts": LOOPBACK}

    result = await run(config, config, config)

    assert result.status is RunStatus.SUCCEEDED
    assert http_server.paths == ["/a", "/a", "/a"]
    assert http_server.connections == 1  # the three requests reused one pooled connection
    assert shared_http_client(1) is shared_http_client(50)


async def test_cookies_never_carry_over_between_requests(http_server: LocalHTTPServer) -> None:
    http_server.route("/login", lambda _: Reply(200, [("Set-Cookie", "session=secret; Path=/")]))
    http_server.route("/next", lambda _: json_reply({}))

    output(
        await run(
            {"url": http_server.url("/login"), "allow_hosts": LOOPBACK},
            {"url": http_server.url("/next"), "allow_hosts": LOOPBACK},
        ),
        "call1",
    )

    assert "cookie" not in http_server.requests[1].headers


async def test_header_injection_from_input_is_refused(http_server: LocalHTTPServer) -> None:
    config = {
        "url": http_server.url("/"),
        "headers": {"X-Name": "{{ input.name }}"},
        "allow_hosts": LOOPBACK,
    }

    result = await run(config, input={"name": "ada\r\nX-Admin: yes"})

    assert failure(result)[0] == "execution"
    assert http_server.requests == []


async def test_templated_method_is_checked_when_it_resolves(http_server: LocalHTTPServer) -> None:
    config = {"method": "{{ input.m }}", "url": http_server.url("/"), "allow_hosts": LOOPBACK}

    kind, message = failure(await run(config, input={"m": "FETCH"}))

    assert kind == "config"
    assert "method" in message
    assert http_server.requests == []


# ---------------------------------------------------------------------------- redirects


async def test_redirects_are_followed_with_303_becoming_get(http_server: LocalHTTPServer) -> None:
    http_server.route("/submit", lambda _: redirect("/done", 303))
    http_server.route("/done", lambda req: json_reply({"method": req.method}))
    config = {
        "method": "POST",
        "url": http_server.url("/submit"),
        "json": {"a": 1},
        "allow_hosts": LOOPBACK,
    }

    result = await run(config)

    assert output(result)["body"] == {"method": "GET"}
    assert http_server.paths == ["/submit", "/done"]
    assert http_server.requests[1].body == b""
    assert result.node_results["call0"].metadata == {
        "url": http_server.url("/done"),
        "redirects": 1,
    }


async def test_redirects_are_not_followed_when_disabled(http_server: LocalHTTPServer) -> None:
    http_server.route("/old", lambda _: redirect("/new", 301))
    config = {
        "url": http_server.url("/old"),
        "follow_redirects": False,
        "expect_status": 301,
        "allow_hosts": LOOPBACK,
    }

    out = output(await run(config))

    assert out["status"] == 301
    assert out["headers"]["location"] == "/new"
    assert http_server.paths == ["/old"]


async def test_too_many_redirects(http_server: LocalHTTPServer) -> None:
    http_server.route("/loop", lambda _: redirect("/loop"))

    kind, message = failure(await run({"url": http_server.url("/loop"), "allow_hosts": LOOPBACK}))

    assert kind == "execution"
    assert "more than 5 redirects" in message
    assert len(http_server.requests) == 6


async def test_redirect_to_a_forbidden_address_is_refused(http_server: LocalHTTPServer) -> None:
    # "localhost" is allowed by name; the same server by IP is not, so the second hop
    # must be re-checked and refused before it is sent
    http_server.route("/hop", lambda _: redirect(http_server.url("/secret")))
    http_server.route("/secret", lambda _: json_reply({"secret": True}))
    config = {"url": http_server.url("/hop", host="localhost"), "allow_hosts": ["localhost"]}

    kind, message = failure(await run(config))

    assert kind == "forbidden_target"
    assert "127.0.0.1 is a loopback address" in message
    assert http_server.paths == ["/hop"]


async def test_redirect_to_another_scheme_is_refused(http_server: LocalHTTPServer) -> None:
    http_server.route("/hop", lambda _: redirect("file:///etc/passwd"))

    kind, message = failure(await run({"url": http_server.url("/hop"), "allow_hosts": LOOPBACK}))

    assert kind == "forbidden_target"
    assert "only http and https" in message


async def test_cross_origin_redirect_drops_credentials(http_server: LocalHTTPServer) -> None:
    http_server.route("/hop", lambda _: redirect(http_server.url("/landing", host="localhost")))
    http_server.route("/landing", lambda _: json_reply({}))
    config = {
        "url": http_server.url("/hop"),
        # a header that carries a secret is a credential too, whatever its name
        "headers": {
            "Authorization": "Bearer {{ secrets.TOKEN }}",
            "X-Signature": "{{ secrets.SIGNATURE }}",
            "X-Trace": "t1",
        },
        "allow_hosts": ["127.0.0.1", "localhost"],
    }
    executor = WorkflowExecutor(secrets=InMemorySecrets({"TOKEN": "s3cret", "SIGNATURE": "sig"}))

    output(await executor.execute(create_workflow(http_workflow(config))))

    first, second = http_server.requests
    assert first.headers["authorization"] == "Bearer s3cret"
    assert first.headers["x-signature"] == "sig"
    assert "authorization" not in second.headers
    assert "x-signature" not in second.headers
    assert second.headers["x-trace"] == "t1"
    assert second.headers["host"] == f"localhost:{http_server.port}"


# ---------------------------------------------------------------------------- SSRF guard


async def test_loopback_is_refused_without_an_allow_list(http_server: LocalHTTPServer) -> None:
    http_server.route("/", lambda _: json_reply({}))

    kind, message = failure(await run({"url": http_server.url("/?token=secret")}))

    assert kind == "forbidden_target"
    assert "loopback" in message
    assert "secret" not in message  # the query string is redacted from errors
    assert http_server.connections == 0
    assert http_server.requests == []


@pytest.mark.parametrize(
    ("host", "allow_hosts"),
    [
        ("127.0.0.1", ["127.0.0.1"]),
        ("127.0.0.1", ["127.0.0.0/8"]),
        ("localhost", ["LOCALHOST."]),
        ("localhost", ["127.0.0.0/8"]),
    ],
)
async def test_allow_hosts_admits_a_target(
    http_server: LocalHTTPServer, host: str, allow_hosts: list[str]
) -> None:
    http_server.route("/", lambda _: json_reply({"ok": True}))

    result = await run({"url": http_server.url("/", host=host), "allow_hosts": allow_hosts})

    assert output(result)["body"] == {"ok": True}


async def test_allow_list_for_another_network_does_not_admit(
    http_server: LocalHTTPServer,
) -> None:
    result = await run({"url": http_server.url("/"), "allow_hosts": ["10.0.0.0/8", "example"]})

    assert failure(result)[0] == "forbidden_target"
    assert http_server.connections == 0


async def test_ipv4_mapped_ipv6_literal_is_refused(http_server: LocalHTTPServer) -> None:
    url = f"http://[::ffff:127.0.0.1]:{http_server.port}/"

    kind, message = failure(await run({"url": url}))

    assert kind == "forbidden_target"
    assert "loopback (IPv4-mapped 127.0.0.1)" in message
    assert http_server.connections == 0


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/x",
        "gopher://127.0.0.1:70/_x",
    ],
)
async def test_non_http_schemes_are_refused_at_run_time(url: str) -> None:
    # the scheme arrives through a template, so only the run-time guard sees it
    kind, message = failure(await run({"url": "{{ input.url }}"}, input={"url": url}))

    assert kind == "forbidden_target"
    assert "only http and https" in message


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f.1", "017700000001"])
async def test_numeric_host_spellings_are_judged_by_what_they_resolve_to(
    http_server: LocalHTTPServer, host: str
) -> None:
    kind, _ = failure(await run({"url": f"http://{host}:{http_server.port}/"}))

    # inet_aton spellings of 127.0.0.1: refused by what glibc resolves them to (a
    # resolver that rejects them fails the lookup instead; either way nothing is sent)
    assert kind in ("forbidden_target", "execution")
    assert http_server.connections == 0


def fake_resolver(table: dict[str, list[str]]) -> Any:
    async def resolve(host: str, port: int) -> list[IPAddress]:
        return [ip_address(a) for a in table[host]]

    return resolve


async def test_the_request_goes_to_the_address_that_was_checked(
    http_server: LocalHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "svc.test" exists only in the fake resolver: the request can only succeed if the
    # client connects to the vetted address instead of resolving the name again
    monkeypatch.setattr(egress_module, "resolve_host", fake_resolver({"svc.test": ["127.0.0.1"]}))
    http_server.route("/", lambda _: json_reply({"ok": True}))
    url = f"http://svc.test:{http_server.port}/"

    result = await run({"url": url, "allow_hosts": ["127.0.0.0/8"]})

    assert output(result)["body"] == {"ok": True}
    assert http_server.requests[0].headers["host"] == f"svc.test:{http_server.port}"


async def test_any_forbidden_address_refuses_the_host(
    http_server: LocalHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = {"mixed.test": ["127.0.0.1", "10.0.0.1"]}
    monkeypatch.setattr(egress_module, "resolve_host", fake_resolver(table))
    url = f"http://mixed.test:{http_server.port}/"

    kind, message = failure(await run({"url": url, "allow_hosts": ["127.0.0.0/8"]}))

    assert kind == "forbidden_target"
    assert "mixed.test resolves to 10.0.0.1, a private address" in message
    assert http_server.connections == 0


async def test_unresolvable_host_is_an_execution_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # the lookup fails locally: no DNS query leaves the machine
    async def no_such_host(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", no_such_host)

    kind, message = failure(await run({"url": "http://no-such-host.invalid/"}))

    assert kind == "execution"
    assert "cannot resolve host" in message


# -------------------------------------------------------------------- address classifier


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.0.0.1", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "shared address space"),
        ("127.0.0.1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "unique-local"),
        ("fd12:3456::1", "unique-local"),
        ("ff0e::1", "multicast"),
        ("::ffff:10.0.0.1", "private (IPv4-mapped 10.0.0.1)"),
        ("::ffff:127.0.0.1", "loopback (IPv4-mapped 127.0.0.1)"),
        ("64:ff9b::a9fe:a9fe", "link-local (NAT64 169.254.169.254)"),
        ("2002:a00:1::", "private (6to4 10.0.0.1)"),
        ("2001::1", "Teredo tunnel"),
        ("::10.0.0.1", "reserved"),
        ("2001:db8::1", "non-global"),
    ],
)
def test_non_public_addresses(address: str, reason: str) -> None:
    assert forbidden_reason(address) == reason


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"],
)
def test_public_addresses(address: str) -> None:
    assert forbidden_reason(address) is None
    assert forbidden_reason(ip_address(address)) is None


def test_target_policy() -> None:
    policy = TargetPolicy.from_entries(["Internal.Example.", "10.0.0.0/8", "[fd00::1]"])

    assert policy.admits_host("internal.example")
    assert not policy.admits_host("example")
    assert policy.admits_address(ip_address("10.1.2.3"))
    assert policy.admits_address(ip_address("::ffff:10.1.2.3"))  # judged as its IPv4
    assert policy.admits_address(ip_address("fd00::1"))
    assert not policy.admits_address(ip_address("192.168.0.1"))


# ---------------------------------------------------------------------------- validation


def issues_by_field(config: dict[str, Any]) -> dict[str | None, str]:
    issues = validate_workflow(http_workflow(config))
    assert all(issue.node == "call0" for issue in issues)
    return {issue.field: issue.message for issue in issues}


def test_a_valid_config_has_no_issues() -> None:
    assert issues_by_field({"url": "https://api.example/{{ input.id }}", "method": "delete"}) == {}
    assert issues_by_field({"url": "{{ input.url }}", "method": "{{ input.method }}"}) == {}


def test_bad_method_is_reported() -> None:
    issues = issues_by_field({"url": "https://api.example/", "method": "FETCH"})

    assert list(issues) == ["config.method"]
    assert "unknown HTTP method 'FETCH'" in issues["config.method"]


def test_json_and_body_together_are_reported() -> None:
    issues = issues_by_field({"url": "https://api.example/", "json": {"a": 1}, "body": "a=1"})

    assert list(issues) == ["config.body"]
    assert "either `json` or `body`" in issues["config.body"]


@pytest.mark.parametrize(
    ("config", "field", "text"),
    [
        ({}, "config.url", "Field required"),
        ({"url": "ftp://files.example/"}, "config.url", "only http and https"),
        ({"url": "gopher://{{ input.h }}/"}, "config.url", "only http and https"),
        ({"url": "https://x/", "timeout": 0}, "config.timeout", "positive"),
        ({"url": "https://x/", "timeout": "soon"}, "config.timeout", "number of seconds"),
        ({"url": "https://x/", "expect_status": 99}, "config.expect_status", "not an HTTP"),
        ({"url": "https://x/", "response": "xml"}, "config.response", "'json' or 'text'"),
        ({"url": "https://x/", "headers": {"Bad Name": "v"}}, "config.headers", "header name"),
        ({"url": "https://x/", "allow_hosts": ["not a host"]}, "config.allow_hosts", "neither"),
        (
            {"url": "https://x/", "allow_hosts": ["{{ input.host }}"]},
            "config.allow_hosts",
            "no templates",
        ),
        ({"url": "https://x/", "proxy": "http://p/"}, "config.proxy", "Extra inputs"),
    ],
)
def test_config_problems_name_the_field(config: dict[str, Any], field: str, text: str) -> None:
    issues = issues_by_field(config)

    assert field in issues, issues
    assert text in issues[field]


def test_breaker_key_is_the_target_origin() -> None:
    node = http_module.HttpNode()

    assert node.breaker_key({"url": "https://API.example:443/v1?k=secret"}) == (
        "http:https://api.example"
    )
    assert node.breaker_key({"url": "http://[::1]:8080/"}) == "http:http://[::1]:8080"
    assert node.breaker_key({"url": "{{ not resolved"}) == "http"
    assert node.breaker_key({}) == "http"
