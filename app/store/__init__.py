"""The store: every database operation of the service.

``Store`` (``repository``) is the portable implementation (SQLAlchemy: SQLite, and any
database it speaks); ``PostgresStore`` (``postgres``) runs Postgres's hot path on
asyncpg, and ``SqliteStore`` (``sqlite``) SQLite's on one writer thread. ``open_store``
picks the one for an engine."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.db import is_postgres
from app.store.repository import Store
from app.store.sqlite import SqliteStore, sqlite_path


def open_store(engine: AsyncEngine) -> Store:
    """The store for ``engine``'s database."""
    if is_postgres(engine):
        from app.store.postgres import PostgresStore

        return PostgresStore(engine)
    path = sqlite_path(engine) if engine.dialect.name == "sqlite" else None
    if path is not None:
        return SqliteStore(engine, path)
    return Store(engine)


__all__ = ["SqliteStore", "Store", "open_store"]
