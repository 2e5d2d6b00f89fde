"""The store: every database operation of the service.

``Store`` (``repository``) is the portable implementation (SQLAlchemy: SQLite, and any
database it speaks); ``PostgresStore`` (``postgres``) runs Postgres's hot path on
asyncpg. ``open_store`` picks the one for an engine."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.db import is_postgres
from app.store.repository import Store


def open_store(engine: AsyncEngine) -> Store:
    """The store for ``engine``'s database."""
    if is_postgres(engine):
        from app.store.postgres import PostgresStore

        return PostgresStore(engine)
    return Store(engine)


__all__ = ["Store", "open_store"]
