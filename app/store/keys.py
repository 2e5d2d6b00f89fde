"""The store's API keys: the hash of each key, its namespace, role and life."""

from __future__ import annotations

import time

from sqlalchemy import select, update

from app.store.base import StoreBase, _rowcount, one
from app.store.models import ApiKey
from app.store.notifications import KeyRevoked
from app.store.records import StoredApiKey


class ApiKeys(StoreBase):
    """Create, find, list and revoke API keys."""

    async def create_key(
        self,
        key_id: str,
        key_hash: str,
        namespace: str,
        role: str,
        *,
        name: str | None = None,
        created_by: str | None = None,
        expires_at: float | None = None,
    ) -> StoredApiKey:
        row = ApiKey(
            id=key_id,
            hash=key_hash,
            namespace=namespace,
            role=role,
            name=name,
            created_at=time.time(),
            created_by=created_by,
            expires_at=expires_at,
            revoked_at=None,
        )
        async with self._write() as session:
            session.add(row)
            await session.commit()
        return StoredApiKey.of(row)

    async def key(self, key_id: str) -> StoredApiKey | None:
        async with self._read() as session:
            return one(StoredApiKey, await session.get(ApiKey, key_id))

    async def list_keys(self, namespace: str | None) -> list[StoredApiKey]:
        """The keys of ``namespace`` (of every namespace with None), oldest first."""
        async with self._read() as session:
            query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
            if namespace is not None:
                query = query.where(ApiKey.namespace == namespace)
            return [StoredApiKey.of(r) for r in (await session.execute(query)).scalars()]

    async def revoke_key(self, key_id: str) -> bool:
        """Revoke a key (False: no such key, or revoked already); every replica hears of
        it (``KeyRevoked``)."""
        notification = KeyRevoked(key_id)
        async with self._write() as session:
            result = await session.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            revoked = bool(_rowcount(result))
            if revoked:
                await self._notify(session, notification)
            await session.commit()
        if revoked:
            self._announce(notification)
        return revoked
