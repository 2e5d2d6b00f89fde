"""The store's secrets: each namespace's named values, encrypted before they reach the
store (it holds ciphertexts only, and never sees a key or a value).

Listing a namespace reads names and times, not ciphertexts (a namespace may hold many
large ones); a run reads the ciphertexts of the names it references; rotation walks every
secret in pages and swaps each ciphertext compare-and-set, so a value put meanwhile is
never overwritten by a re-encryption of the old one.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence

from sqlalchemy import and_, delete, or_, select, update

from app.store.base import StoreBase, _rowcount
from app.store.db import insert_ignore
from app.store.models import SecretRow
from app.store.records import StoredSecret, StoredSecretInfo

#: names read per query by ``secret_ciphertexts`` (bound parameters stay well within
#: SQLite's and asyncpg's limits)
_NAMES_PER_QUERY = 500


class SecretRows(StoreBase):
    """Put, list, read, delete and re-encrypt secrets."""

    async def put_secret(
        self, namespace: str, name: str, ciphertext: str
    ) -> tuple[StoredSecretInfo, bool]:
        """Set ``name`` in ``namespace`` to ``ciphertext`` (one statement: created, or
        replaced keeping its ``created_at``); whether it was created."""
        now = time.time()
        # the dialect's INSERT, which has ON CONFLICT on both databases
        statement = (
            insert_ignore(self.engine, SecretRow.__table__)
            .values(
                namespace=namespace,
                name=name,
                ciphertext=ciphertext,
                created_at=now,
                updated_at=now,
            )
            .returning(SecretRow.created_at, SecretRow.updated_at)
        )
        statement = statement.on_conflict_do_update(
            index_elements=[SecretRow.namespace, SecretRow.name],
            set_={"ciphertext": statement.excluded.ciphertext, "updated_at": now},
        )
        async with self._write() as session:
            created_at, updated_at = (await session.execute(statement)).one()
            await session.commit()
        info = StoredSecretInfo(namespace, name, float(created_at), float(updated_at))
        # a row that was there keeps its created_at, which is older than this write
        return info, info.created_at == now

    async def list_secrets(self, namespace: str) -> list[StoredSecretInfo]:
        """The names and times of ``namespace``'s secrets, by name (no ciphertext)."""
        query = (
            select(SecretRow.namespace, SecretRow.name, SecretRow.created_at, SecretRow.updated_at)
            .where(SecretRow.namespace == namespace)
            .order_by(SecretRow.name)
        )
        async with self._read() as session:
            rows = (await session.execute(query)).all()
        return [StoredSecretInfo(*row) for row in rows]

    async def secret_ciphertexts(
        self, namespace: str, names: Collection[str] | None = None
    ) -> dict[str, str]:
        """name -> ciphertext of ``namespace``'s secrets (only ``names`` when given; a
        name that is not set is left out)."""
        base = select(SecretRow.name, SecretRow.ciphertext).where(SecretRow.namespace == namespace)
        found: dict[str, str] = {}
        async with self._read() as session:
            if names is None:
                found.update((name, text) for name, text in await session.execute(base))
                return found
            wanted = sorted(set(names))
            for start in range(0, len(wanted), _NAMES_PER_QUERY):
                chunk = wanted[start : start + _NAMES_PER_QUERY]
                query = base.where(SecretRow.name.in_(chunk))
                found.update((name, text) for name, text in await session.execute(query))
        return found

    async def delete_secret(self, namespace: str, name: str) -> bool:
        """Delete ``name`` from ``namespace`` (False: it was not set)."""
        async with self._write() as session:
            result = await session.execute(
                delete(SecretRow).where(SecretRow.namespace == namespace, SecretRow.name == name)
            )
            await session.commit()
        return bool(_rowcount(result))

    async def secrets_page(self, after: tuple[str, str] | None, limit: int) -> list[StoredSecret]:
        """Every namespace's secrets, ``limit`` at a time, by (namespace, name), from the
        one after ``after``: how rotation walks them all."""
        query = select(SecretRow).order_by(SecretRow.namespace, SecretRow.name).limit(limit)
        if after is not None:
            namespace, name = after
            query = query.where(
                or_(
                    SecretRow.namespace > namespace,
                    and_(SecretRow.namespace == namespace, SecretRow.name > name),
                )
            )
        async with self._read() as session:
            return [StoredSecret.of(row) for row in (await session.execute(query)).scalars()]

    async def replace_ciphertexts(self, changes: Sequence[tuple[StoredSecret, str]]) -> int:
        """For each (secret as read, new ciphertext): store the new ciphertext if the
        secret still holds the one read (a value put meanwhile stays). One transaction;
        ``updated_at`` is kept (the value did not change). How many were replaced."""
        replaced = 0
        async with self._write() as session:
            for secret, ciphertext in changes:
                result = await session.execute(
                    update(SecretRow)
                    .where(
                        SecretRow.namespace == secret.namespace,
                        SecretRow.name == secret.name,
                        SecretRow.ciphertext == secret.ciphertext,
                    )
                    .values(ciphertext=ciphertext)
                )
                replaced += _rowcount(result)
            await session.commit()
        return replaced
