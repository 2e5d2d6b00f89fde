"""API keys: minting, authenticating, listing and revoking them.

A key reads ``fc_live_<id>_<secret>``: ``<id>`` (12 hex digits) is public — logs, the
audit log and ``GET /v1/keys`` name a key by it — and ``<secret>`` is 256 random bits.
The store keeps the SHA-256 of the whole key, never the key (a key is random, so a
fast hash is as strong as a slow one), and the comparison is constant-time. A key is
shown once, when it is created.

Authentication is on every request, so a replica keeps the keys it looked up for
``auth_cache_seconds``; a revocation reaches the replicas that hear notifications
(Postgres LISTEN, or Redis) at once, the others within that time. Unknown ids are kept
too (briefly, boundedly), so a flood of made-up keys costs no query each.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from app.runtime.access import (
    AuditTrail,
    Caller,
    Forbidden,
    Role,
    Unauthenticated,
    valid_namespace,
)
from app.runtime.audit import KEY_CREATED, KEY_REVOKED
from app.runtime.errors import InvalidValue, NotFound
from app.store.notifications import KeyRevoked, Notification
from app.store.records import DEFAULT_NAMESPACE, StoredApiKey
from app.store.repository import Store

#: a key as the service shows it (never the key itself: its hash)
KeyRecord = StoredApiKey

KEY_PREFIX = "fc_live_"
_KEY = re.compile(r"^fc_live_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
#: the id the bootstrap key is known by (it is not in the database)
BOOTSTRAP_ID = "bootstrap"
#: the least a bootstrap key must have
MIN_BOOTSTRAP_LENGTH = 32
#: keys a replica remembers at most
CACHE_SIZE = 10_000
_DURATION = re.compile(r"^(\d{1,9})([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def mint() -> tuple[str, str]:
    """A new key and its public id."""
    key_id = secrets.token_hex(6)
    return f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}", key_id


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(token: str) -> str | None:
    """The public id of a well-formed key (None: not one)."""
    match = _KEY.match(token)
    return match.group(1) if match else None


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``3600s`` or ``3600`` as seconds (ValueError if not)."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not a duration such as 30d, 12h, 90m or 3600s")
    return float(int(match.group(1)) * _UNITS[match.group(2)])


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key just created: ``key`` is shown this once."""

    key: str
    record: StoredApiKey


class KeyService:
    """Authenticate requests; create, list and revoke keys (admins only)."""

    def __init__(
        self,
        store: Store,
        *,
        bootstrap_key: str | None = None,
        cache_seconds: float = 5.0,
        audit: AuditTrail | None = None,
    ) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self.audit = audit
        self._bootstrap = key_hash(bootstrap_key) if bootstrap_key else None
        #: key id -> (the stored key or None for no such key, when it was looked up)
        self._cache: OrderedDict[str, tuple[StoredApiKey | None, float]] = OrderedDict()
        store.notifier.subscribe(self._on_notification)

    def close(self) -> None:
        self.store.notifier.unsubscribe(self._on_notification)

    def _on_notification(self, notification: Notification) -> None:
        if isinstance(notification, KeyRevoked):
            self._cache.pop(notification.key_id, None)

    # ------------------------------------------------------------- authenticating

    async def authenticate(self, token: str, source: str | None = None) -> Caller:
        """The caller a bearer token stands for; Unauthenticated for a malformed,
        unknown, expired or revoked key (the reason is not told)."""
        digest = key_hash(token)
        if self._bootstrap is not None and hmac.compare_digest(digest, self._bootstrap):
            return Caller(DEFAULT_NAMESPACE, Role.ADMIN, BOOTSTRAP_ID, system=True, source=source)
        key_id = key_id_of(token)
        if key_id is None:
            raise Unauthenticated("malformed key")
        stored = await self._lookup(key_id)
        if stored is None or not hmac.compare_digest(stored.hash, digest):
            raise Unauthenticated("unknown key")
        if stored.revoked_at is not None:
            raise Unauthenticated("revoked key")
        if stored.expires_at is not None and stored.expires_at <= time.time():
            raise Unauthenticated("expired key")
        return Caller(stored.namespace, Role(stored.role), stored.id, source=source)

    async def _lookup(self, key_id: str) -> StoredApiKey | None:
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and now - cached[1] < self.cache_seconds:
            return cached[0]
        stored = await self.store.key(key_id)
        self._cache[key_id] = (stored, now)
        self._cache.move_to_end(key_id)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return stored

    # ----------------------------------------------------------------- managing

    def _manages(self, caller: Caller, namespace: str) -> None:
        caller.need(Role.ADMIN)
        if namespace != caller.namespace and not caller.system:
            raise Forbidden("an admin key manages the keys of its own namespace only")

    async def create(
        self,
        caller: Caller,
        *,
        namespace: str | None = None,
        role: Role,
        name: str | None = None,
        expires_in: float | None = None,
    ) -> NewKey:
        """A new key of ``role`` in ``namespace`` (the caller's by default)."""
        namespace = namespace or caller.namespace
        if not valid_namespace(namespace):
            message = f"{namespace!r} is not a namespace (lowercase letters, digits and -)"
            raise InvalidValue("namespace", message)
        self._manages(caller, namespace)
        key, key_id = mint()
        expires_at = time.time() + expires_in if expires_in else None
        record = await self.store.create_key(
            key_id,
            key_hash(key),
            namespace,
            role.value,
            name=name,
            created_by=caller.key_id,
            expires_at=expires_at,
        )
        if self.audit is not None:
            detail = {"namespace": namespace, "role": role.value}
            await self.audit.record(
                caller, KEY_CREATED, f"key:{key_id}", detail, namespace=namespace
            )
        return NewKey(key, record)

    async def listing(self, caller: Caller, namespace: str | None = None) -> list[StoredApiKey]:
        """The keys of the caller's namespace (a system caller: of ``namespace``, or of
        every namespace)."""
        caller.need(Role.ADMIN)
        if not caller.system:
            namespace = caller.namespace
        return await self.store.list_keys(namespace)

    async def revoke(self, caller: Caller, key_id: str) -> StoredApiKey:
        caller.need(Role.ADMIN)
        stored = await self.store.key(key_id)
        if stored is None or not (caller.system or caller.sees(stored.namespace)):
            raise NotFound(f"no key {key_id!r}")
        await self.store.revoke_key(key_id)
        self._cache.pop(key_id, None)
        if self.audit is not None:
            await self.audit.record(
                caller, KEY_REVOKED, f"key:{key_id}", namespace=stored.namespace
            )
        revoked = await self.store.key(key_id)
        assert revoked is not None
        return revoked
