"""Checks of secrets: put creates then replaces (keeping when it was created), listing
shows names and times only, by name, a namespace at a time; ciphertexts by name; delete;
and the walk over every secret with compare-and-set replacement that rotation uses."""

from __future__ import annotations

import asyncio

from tests.store_contract.bench import Bench, Check, collector

CHECKS: list[Check] = []
check = collector(CHECKS)


@check
async def a_secret_is_created_then_replaced_keeping_its_creation_time(bench: Bench) -> None:
    store = bench.store
    first, created = await store.put_secret("team-a", "TOKEN", "c1")
    assert created
    assert (first.namespace, first.name) == ("team-a", "TOKEN")
    assert first.created_at == first.updated_at
    assert first.created_at >= await store.now() - 60
    second, created = await store.put_secret("team-a", "TOKEN", "c2")
    assert not created
    assert second.created_at == first.created_at
    assert second.updated_at >= first.updated_at
    assert await store.secret_ciphertexts("team-a") == {"TOKEN": "c2"}
    (listed,) = await store.list_secrets("team-a")
    assert listed == second
    assert not hasattr(listed, "ciphertext")


@check
async def secrets_are_listed_by_name_a_namespace_at_a_time(bench: Bench) -> None:
    store = bench.store
    for namespace, name in [("b", "Z"), ("a", "_x"), ("a", "B"), ("b", "A"), ("a", "a1")]:
        await store.put_secret(namespace, name, f"{namespace}:{name}")
    assert [s.name for s in await store.list_secrets("a")] == sorted(["_x", "B", "a1"])
    assert [s.name for s in await store.list_secrets("b")] == ["A", "Z"]
    assert await store.list_secrets("c") == []
    assert await store.secret_ciphertexts("b") == {"A": "b:A", "Z": "b:Z"}
    # by name: names not set are left out, another namespace's are never read
    assert await store.secret_ciphertexts("a", ["B", "Z", "nope"]) == {"B": "a:B"}
    assert await store.secret_ciphertexts("a", []) == {}
    many = [f"N{i}" for i in range(1200)]  # more than one query's worth of names
    assert await store.secret_ciphertexts("a", [*many, "a1"]) == {"a1": "a:a1"}


@check
async def deleting_a_secret_removes_it_from_its_namespace_only(bench: Bench) -> None:
    store = bench.store
    await store.put_secret("a", "KEY", "1")
    await store.put_secret("b", "KEY", "2")
    assert await store.delete_secret("a", "KEY") is True
    assert await store.delete_secret("a", "KEY") is False
    assert await store.delete_secret("a", "never") is False
    assert await store.list_secrets("a") == []
    assert await store.secret_ciphertexts("b") == {"KEY": "2"}
    _, created = await store.put_secret("a", "KEY", "3")  # a new secret
    assert created


@check
async def racing_puts_create_one_secret(bench: Bench) -> None:
    store = bench.store
    results = await asyncio.gather(*(store.put_secret("a", "RACE", f"c{i}") for i in range(5)))
    assert sum(created for _, created in results) == 1
    assert len(await store.list_secrets("a")) == 1
    assert (await store.secret_ciphertexts("a"))["RACE"] in {f"c{i}" for i in range(5)}


@check
async def every_secret_is_walked_once_and_replaced_compare_and_set(bench: Bench) -> None:
    store = bench.store
    names = [("a", "A"), ("a", "B"), ("b", "A"), ("b", "C"), ("c", "A")]
    for namespace, name in names:
        await store.put_secret(namespace, name, f"old-{namespace}{name}")
    walked, after = [], None
    while page := await store.secrets_page(after, 2):
        assert len(page) <= 2
        walked += page
        after = (page[-1].namespace, page[-1].name)
    assert [(s.namespace, s.name) for s in walked] == names
    assert [s.ciphertext for s in walked] == [f"old-{n}{m}" for n, m in names]
    before = {(s.namespace, s.name): s.updated_at for s in walked}
    # a value put after the walk read the secret is not overwritten by the rotation
    await store.put_secret("b", "A", "fresh")
    replaced = await store.replace_ciphertexts([(s, "new-" + s.ciphertext) for s in walked])
    assert replaced == 4
    assert await store.secret_ciphertexts("a") == {"A": "new-old-aA", "B": "new-old-aB"}
    assert await store.secret_ciphertexts("b") == {"A": "fresh", "C": "new-old-bC"}
    for secret in await store.list_secrets("a"):  # the value did not change: nor its time
        assert secret.updated_at == before[("a", secret.name)]
    assert await store.replace_ciphertexts([]) == 0
