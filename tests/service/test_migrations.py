"""The Alembic chain on both dialects: upgrade -> downgrade -> upgrade, and no drift
between the models and what the migrations build."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from app.store.db import create_engine
from app.store.migrate import alembic_config, downgrade, upgrade
from app.store.models import Base
from tests.service.support import (
    PG_ADMIN_DSN,
    in_thread,
    pg_execute,
    postgres_url,
    require_postgres,
)

TABLES = {t.name for t in Base.metadata.sorted_tables}


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database (no migrations applied) of each dialect; on Postgres a database
    of its own, created and dropped here."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'migrations.db'}"
        return
    require_postgres()
    name = f"flowcore_mig_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    in_thread(pg_execute, PG_ADMIN_DSN, f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url(name)
    finally:
        in_thread(pg_execute, PG_ADMIN_DSN, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _state(connection: Connection) -> tuple[set[str], str | None]:
    tables = set(inspect(connection).get_table_names())
    revision = MigrationContext.configure(connection).get_current_revision()
    return tables, revision


async def schema_state(url: str) -> tuple[set[str], str | None]:
    """The tables in the database and its Alembic revision."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_state)
    finally:
        await engine.dispose()


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, Base.metadata))


async def drift(url: str) -> list[Any]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_diff)
    finally:
        await engine.dispose()


def head() -> str:
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


async def test_upgrade_downgrade_upgrade(empty_database: str) -> None:
    url = empty_database
    in_thread(upgrade, url)
    tables, revision = await schema_state(url)
    assert tables >= TABLES
    assert revision == head()

    in_thread(downgrade, url, "base")
    tables, revision = await schema_state(url)
    assert tables & TABLES == set(), f"left behind: {tables & TABLES}"
    assert revision is None

    in_thread(upgrade, url)
    tables, revision = await schema_state(url)
    assert tables >= TABLES
    assert revision == head()


async def test_the_models_match_the_migrations(empty_database: str) -> None:
    in_thread(upgrade, empty_database)
    assert await drift(empty_database) == []


def test_the_chain_has_one_head_and_one_base() -> None:
    scripts = ScriptDirectory.from_config(alembic_config())
    assert len(scripts.get_heads()) == 1
    assert len(scripts.get_bases()) == 1
