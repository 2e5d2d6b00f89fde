"""The operator's egress policy (``app.nodes.egress``): parsing its settings, deny over
everything, ``allow_hosts`` only narrowing it, every redirect hop checked, and the
shared client vetting what plugins send.

Nothing here sends traffic beyond 127.0.0.1: other names exist only in a fake resolver,
and public addresses are only vetted, never connected to.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from ipaddress import ip_address, ip_network
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.engine import RunResult, RunStatus, WorkflowExecutor, create_workflow
from app.nodes import egress as egress_module
from app.nodes.egress import (
    EgressPolicy,
    EgressPolicyError,
    ForbiddenTargetError,
    IPAddress,
    TargetPolicy,
    install_egress_policy,
    vet_target,
    vetted_extensions,
)
from app.nodes.http import shared_http_client

from .conftest import LocalHTTPServer, json_reply, redirect

#: what the fake resolver knows; IP literals resolve to themselves
NAMES = {
    "localhost": ["127.0.0.1"],
    "svc.test": ["127.0.0.1"],
    "allowed.test": ["127.0.0.1"],
    "other.test": ["127.0.0.1"],
    "denied.test": ["127.0.0.2"],  # nothing listens there: reaching it fails differently
    "db.test": ["10.1.2.3"],
    "mixed.test": ["10.1.2.3", "192.168.1.1"],
    "public.test": ["93.184.216.34"],
    "api.test": ["93.184.216.35"],
    "split.test": ["93.184.216.34", "1.1.1.1"],
}


@pytest.fixture(autouse=True)
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The fake resolver, recording the names it was asked for."""
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[IPAddress]:
        asked.append(host)
        try:
            return [ip_address(host)]
        except ValueError:
            return [ip_address(a) for a in NAMES[host]]

    monkeypatch.setattr(egress_module, "resolve_host", resolve)
    return asked


def operator(allow: Iterable[str] = (), deny: Iterable[str] = ()) -> None:
    """Install the operator's policy, as the service does (undone after each test)."""
    install_egress_policy(EgressPolicy.from_entries(allow, deny))


async def run_http(config: dict[str, Any]) -> RunResult:
    workflow = {"id": "egress", "nodes": [{"id": "call", "type": "http", "config": config}]}
    return await WorkflowExecutor().execute(create_workflow(workflow), None)


def refusal(result: RunResult) -> str:
    assert result.status is RunStatus.FAILED, result.node_results
    assert result.error is not None
    assert result.error.kind == "forbidden_target", result.error
    return result.error.message


def body(result: RunResult) -> Any:
    assert result.status is RunStatus.SUCCEEDED, result.error
    return result.node_results["call"].output["body"]


def refused(text: str) -> pytest.RaisesExc[ForbiddenTargetError]:
    return pytest.raises(ForbiddenTargetError, match=re.escape(text))


def server_url(server: LocalHTTPServer, host: str, path: str = "/") -> str:
    return f"http://{host}:{server.port}{path}"


# ------------------------------------------------------------------------- settings


def test_policy_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWCORE_EGRESS_ALLOW", "10.0.0.0/8, Api.Internal.")
    monkeypatch.setenv("FLOWCORE_EGRESS_DENY", '["169.254.169.254", "metadata.internal"]')

    policy = EgressPolicy.from_settings(Settings())

    assert policy.allow == TargetPolicy(frozenset({"api.internal"}), (ip_network("10.0.0.0/8"),))
    assert policy.deny == TargetPolicy(
        frozenset({"metadata.internal"}), (ip_network("169.254.169.254/32"),)
    )


def test_no_settings_is_the_strict_policy() -> None:
    assert EgressPolicy.from_settings(Settings()) == EgressPolicy()


@pytest.mark.parametrize(
    ("variable", "value", "entry"),
    [
        ("FLOWCORE_EGRESS_ALLOW", "10.0.0.0/8,not a host", "'not a host'"),
        ("FLOWCORE_EGRESS_ALLOW", "https://api.internal/", "'https://api.internal/'"),
        ("FLOWCORE_EGRESS_DENY", "10.0.0.0/33", "'10.0.0.0/33'"),
        ("FLOWCORE_EGRESS_DENY", "*.example", "'*.example'"),
    ],
)
def test_a_bad_entry_fails_naming_the_setting_and_the_entry(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, entry: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(EgressPolicyError) as caught:
        EgressPolicy.from_settings(Settings())

    assert str(caught.value) == (
        f"{variable}: {entry} is neither a host name nor an IP address or network"
    )


# ------------------------------------------------------- allow_hosts cannot widen it

WIDENING = [
    ("127.0.0.1", ["0.0.0.0/0"]),
    ("127.0.0.1", ["127.0.0.0/8"]),
    ("127.0.0.1", ["127.0.0.1"]),
    ("localhost", ["localhost"]),
    ("svc.test", ["svc.test"]),  # a name that resolves to loopback
    ("svc.test", ["0.0.0.0/0"]),
]


@pytest.mark.parametrize(("host", "allow_hosts"), [*WIDENING, ("[::ffff:127.0.0.1]", ["::/0"])])
async def test_allow_hosts_cannot_widen_the_operator_policy(
    http_server: LocalHTTPServer, host: str, allow_hosts: list[str]
) -> None:
    http_server.route("/", lambda _: json_reply({"reached": True}))
    operator()  # the service with no FLOWCORE_EGRESS_ALLOW

    message = refusal(
        await run_http({"url": server_url(http_server, host), "allow_hosts": allow_hosts})
    )

    assert "loopback" in message
    assert "the operator's egress policy does not allow it" in message
    assert http_server.connections == 0


@pytest.mark.parametrize(("host", "allow_hosts"), WIDENING)
async def test_the_same_nodes_reach_the_target_once_the_operator_allows_it(
    http_server: LocalHTTPServer, host: str, allow_hosts: list[str]
) -> None:
    http_server.route("/", lambda _: json_reply({"reached": True}))
    operator(allow=["127.0.0.1"])

    result = await run_http({"url": server_url(http_server, host), "allow_hosts": allow_hosts})

    assert body(result) == {"reached": True}


async def test_without_an_installed_policy_allow_hosts_admits_as_before(
    http_server: LocalHTTPServer,
) -> None:
    # the engine used as a library: the program is its own operator
    http_server.route("/", lambda _: json_reply({"reached": True}))
    url = server_url(http_server, "127.0.0.1")

    assert body(await run_http({"url": url, "allow_hosts": ["127.0.0.1"]})) == {"reached": True}
    assert "loopback" in refusal(await run_http({"url": url}))


# ---------------------------------------------------------------- deny beats everything


async def test_deny_beats_allow_hosts_and_the_operator_allow_list(
    http_server: LocalHTTPServer,
) -> None:
    http_server.route("/", lambda _: json_reply({"reached": True}))
    config = {"url": server_url(http_server, "svc.test"), "allow_hosts": ["svc.test"]}
    operator(allow=["svc.test", "127.0.0.0/8"])
    assert body(await run_http(config)) == {"reached": True}

    for deny in (["svc.test"], ["127.0.0.1"], ["127.0.0.0/8"]):
        operator(allow=["svc.test", "127.0.0.0/8"], deny=deny)

        message = refusal(await run_http(config))

        assert "denied by the operator's egress policy" in message
    assert len(http_server.requests) == 1  # only the run before any deny


async def test_deny_refuses_a_public_target() -> None:
    url = httpx.URL("https://public.test/")
    operator()
    assert await vet_target(url) == [ip_address("93.184.216.34")]

    operator(deny=["93.184.216.0/24"])

    with refused("public.test resolves to 93.184.216.34, denied"):
        await vet_target(url)


async def test_a_denied_name_is_never_looked_up(lookups: list[str]) -> None:
    operator(allow=["0.0.0.0/0"], deny=["public.test"])

    with refused("public.test is denied"):
        await vet_target(
            httpx.URL("https://PUBLIC.test./x"), TargetPolicy.from_entries(["public.test"])
        )

    assert lookups == []


# -------------------------------------------------------- the operator's allow list


async def test_operator_allow_admits_a_private_network() -> None:
    url = httpx.URL("http://db.test:5432/")
    operator()
    with refused("db.test resolves to 10.1.2.3, a private"):
        await vet_target(url)

    operator(allow=["10.0.0.0/8"])

    assert await vet_target(url) == [ip_address("10.1.2.3")]
    # every non-public address must be allowed, not just one
    with refused("resolves to 192.168.1.1, a private"):
        await vet_target(httpx.URL("http://mixed.test/"))


async def test_operator_allow_admits_loopback_for_a_node_without_allow_hosts(
    http_server: LocalHTTPServer,
) -> None:
    http_server.route("/", lambda _: json_reply({"reached": True}))
    operator(allow=["127.0.0.0/8"])

    assert body(await run_http({"url": server_url(http_server, "127.0.0.1")})) == {"reached": True}


# -------------------------------------------------------- allow_hosts only narrows


@pytest.mark.parametrize("installed", [True, False], ids=["operator", "library"])
async def test_allow_hosts_restricts_a_node_to_its_hosts(installed: bool) -> None:
    if installed:
        operator()
    by_name = TargetPolicy.from_entries(["api.test"])
    by_network = TargetPolicy.from_entries(["93.184.216.0/24"])

    assert await vet_target(httpx.URL("https://api.test/"), by_name) == [
        ip_address("93.184.216.35")
    ]
    with refused("public.test resolves to 93.184.216.34, outside"):
        await vet_target(httpx.URL("https://public.test/"), by_name)
    assert await vet_target(httpx.URL("https://public.test/"), by_network) == [
        ip_address("93.184.216.34")
    ]
    # every address must lie in a listed network: the client may connect to any of them
    with refused("split.test resolves to 1.1.1.1, outside"):
        await vet_target(httpx.URL("https://split.test/"), by_network)


# --------------------------------------------------------------------------- redirects


async def test_redirects_within_the_policy_are_followed(http_server: LocalHTTPServer) -> None:
    http_server.route("/hop", lambda _: redirect(server_url(http_server, "other.test", "/end")))
    http_server.route("/end", lambda _: json_reply({"reached": True}))
    operator(allow=["127.0.0.0/8"])

    result = await run_http({"url": server_url(http_server, "allowed.test", "/hop")})

    assert body(result) == {"reached": True}
    assert http_server.paths == ["/hop", "/end"]


@pytest.mark.parametrize(
    ("allow", "deny", "allow_hosts", "location", "reason"),
    [
        (["127.0.0.0/8"], ["denied.test"], [], "denied.test", "denied.test is denied"),
        (
            ["127.0.0.0/8"],
            ["127.0.0.2"],
            [],
            "denied.test",
            "denied.test resolves to 127.0.0.2, denied",
        ),
        (
            ["allowed.test"],
            [],
            [],
            "other.test",
            "other.test resolves to 127.0.0.1, a loopback address",
        ),
        (
            ["127.0.0.0/8"],
            [],
            ["allowed.test"],
            "127.0.0.1",
            "127.0.0.1 is outside the node's allow_hosts",
        ),
    ],
    ids=["denied-name", "denied-address", "not-allowed", "outside-allow-hosts"],
)
async def test_every_redirect_hop_is_checked_against_the_effective_policy(
    http_server: LocalHTTPServer,
    allow: list[str],
    deny: list[str],
    allow_hosts: list[str],
    location: str,
    reason: str,
) -> None:
    http_server.route("/hop", lambda _: redirect(server_url(http_server, location, "/secret")))
    http_server.route("/secret", lambda _: json_reply({"secret": True}))
    operator(allow=allow, deny=deny)
    config = {"url": server_url(http_server, "allowed.test", "/hop"), "allow_hosts": allow_hosts}

    message = refusal(await run_http(config))

    assert reason in message
    assert http_server.paths == ["/hop"]


# ------------------------------------------------------------------ the shared client


async def test_the_shared_client_vets_every_request(http_server: LocalHTTPServer) -> None:
    http_server.route("/", lambda _: json_reply({"reached": True}))
    client = shared_http_client(2)
    operator()

    with refused("egress policy does not allow it"):
        await client.get(http_server.url("/"))
    assert http_server.connections == 0

    operator(allow=["127.0.0.1"])
    response = await client.get(http_server.url("/"))

    assert response.json() == {"reached": True}


async def test_the_shared_client_is_strict_without_an_installed_policy(
    http_server: LocalHTTPServer,
) -> None:
    # a plugin has no allow_hosts to speak of: public targets only
    with refused("loopback"):
        await shared_http_client(2).get(http_server.url("/"))
    assert http_server.connections == 0


async def test_the_shared_client_vets_redirects_httpx_follows(
    http_server: LocalHTTPServer,
) -> None:
    http_server.route("/hop", lambda _: redirect(server_url(http_server, "localhost", "/secret")))
    http_server.route("/secret", lambda _: json_reply({"secret": True}))
    operator(allow=["127.0.0.0/8"], deny=["localhost"])

    with refused("localhost is denied"):
        await shared_http_client(2).get(http_server.url("/hop"), follow_redirects=True)

    assert http_server.paths == ["/hop"]


async def test_a_vetted_mark_covers_its_url_only(http_server: LocalHTTPServer) -> None:
    # httpx copies a request's extensions to the redirects it follows: the mark must
    # not let a redirect through, even to the same host
    http_server.route("/hop", lambda _: redirect("/secret"))
    http_server.route("/secret", lambda _: json_reply({"secret": True}))
    operator()
    client = shared_http_client(2)
    url = httpx.URL(http_server.url("/hop"))
    request = client.build_request("GET", url, extensions=vetted_extensions(url))

    with refused("127.0.0.1 is a loopback address"):
        await client.send(request, follow_redirects=True)

    assert http_server.paths == ["/hop"]
