"""Secrets: each namespace's named values, encrypted at rest, which runs reference as
``{{ secrets.NAME }}`` and no API ever returns.

- **Encryption**: Fernet (AES-128-CBC with HMAC-SHA256, from ``cryptography``) with the
  keys of ``FLOWCORE_SECRET_KEY``, comma-separated: the first encrypts, every one
  decrypts (``MultiFernet``). The store holds ciphertexts only.
- **Rotation**: put a new key first (``new,old``) on every replica, run
  ``flowcore secrets rotate`` (:meth:`SecretService.rotate`: every secret re-encrypted
  with the first key, compare-and-set, so a value put meanwhile stays), then remove the
  old key. Without it, secrets encrypted with a removed key cannot be read: a run that
  references one fails, naming it.
- **Access**: setting and deleting need an admin key, listing a writer key, each in its
  own namespace (``app.runtime.access``). Without ``FLOWCORE_SECRET_KEY`` every
  operation raises :class:`SecretsUnavailable` (a 503).
- **Runs**: the dispatcher gives each run a :class:`RunSecrets` of the run's namespace,
  which reads and decrypts only the names the run references, when a node needs them,
  keeps them for that run only, and masks them in whatever the run writes out (its
  journal masks events, checkpoints, node results and the outcome; what it leaves to
  later runs goes through :class:`MaskingCache` and :class:`MaskingMemoryStore`).

Audit: a secret set (``secret.set``, ``{"created": bool}``) or deleted
(``secret.deleted``) is recorded with its name as the target, never its value.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import SecretStr

from app.engine import (
    SECRET_NAME_PATTERN,
    Cache,
    CacheHit,
    ConversationMemory,
    MemoryStore,
    SecretMask,
    SecretUnavailableError,
)
from app.runtime.access import AuditTrail, Caller, Role
from app.runtime.audit import SECRET_DELETED, SECRET_SET
from app.runtime.errors import InvalidValue, NotFound, SecretsUnavailable
from app.store.records import StoredSecretInfo
from app.store.repository import Store

__all__ = [
    "MAX_SECRET_BYTES",
    "SECRET_NAME_PATTERN",
    "InvalidSecretKey",
    "MaskingCache",
    "MaskingMemoryStore",
    "RunSecrets",
    "SecretBox",
    "SecretInfo",
    "SecretService",
    "SecretsUnavailable",
]

#: the largest value a secret may hold (UTF-8 bytes)
MAX_SECRET_BYTES = 64 * 1024
_NAME = re.compile(SECRET_NAME_PATTERN)
#: secrets re-encrypted per transaction by ``rotate``
ROTATE_BATCH = 200
#: the setting that holds the keys, as an operator knows it
KEY_SETTING = "FLOWCORE_SECRET_KEY"


class InvalidSecretKey(ValueError):
    """``FLOWCORE_SECRET_KEY`` holds something that is not a Fernet key: the replica
    does not start."""


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """A secret as its namespace sees it: a name and when it was set, never a value."""

    name: str
    created_at: float
    updated_at: float

    @classmethod
    def of(cls, stored: StoredSecretInfo) -> SecretInfo:
        return cls(stored.name, stored.created_at, stored.updated_at)


class SecretBox:
    """Encrypts and decrypts secret values with the keys of ``FLOWCORE_SECRET_KEY``."""

    __slots__ = ("_fernet",)

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise InvalidSecretKey(f"{KEY_SETTING} holds no key")
        fernets = []
        for index, key in enumerate(keys, 1):
            try:
                fernets.append(Fernet(key.encode()))
            except (ValueError, TypeError):
                # never the key itself in the message: it may be a real key, mistyped
                raise InvalidSecretKey(
                    f"{KEY_SETTING}: key {index} of {len(keys)} is not a Fernet key (32 "
                    "url-safe base64-encoded bytes); `flowcore secrets generate-key` "
                    "prints one"
                ) from None
        self._fernet = MultiFernet(fernets)

    @classmethod
    def from_setting(cls, value: SecretStr | str | None) -> SecretBox | None:
        """The box for the setting's comma-separated keys (None: no setting)."""
        if value is None:
            return None
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if not text.strip():
            return None
        return cls([key.strip() for key in text.split(",") if key.strip()])

    @staticmethod
    def generate_key() -> str:
        return Fernet.generate_key().decode()

    def encrypt(self, value: str) -> str:
        return self._fernet.encrypt(value.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        """The value (InvalidToken: no key of the setting encrypted it, or it was
        tampered with)."""
        return self._fernet.decrypt(ciphertext.encode()).decode()

    def rotate(self, ciphertext: str) -> str:
        """The same value encrypted with the first key (InvalidToken as ``decrypt``)."""
        return self._fernet.rotate(ciphertext.encode()).decode()


class SecretService:
    """Set, list and delete a namespace's secrets; give runs theirs; rotate the key.
    Each request operation takes the caller first and checks it."""

    def __init__(
        self, store: Store, box: SecretBox | None, *, audit: AuditTrail | None = None
    ) -> None:
        self.store = store
        self.box = box
        self.audit = audit

    def _box(self) -> SecretBox:
        if self.box is None:
            raise SecretsUnavailable(
                f"secrets are not configured on this service: the operator sets "
                f"{KEY_SETTING} (docs/security.md, Secrets)"
            )
        return self.box

    async def put(self, caller: Caller, name: str, value: str) -> tuple[SecretInfo, bool]:
        """Set ``name`` in the caller's namespace to ``value`` (admins); the secret as
        listed, and whether it was created (else replaced)."""
        caller.need(Role.ADMIN)
        box = self._box()
        _check_name(name)
        if not isinstance(value, str) or not value:
            raise InvalidValue("value", "must be a non-empty string")
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > MAX_SECRET_BYTES:
            raise InvalidValue(
                "value", f"is {size} bytes; a secret holds at most {MAX_SECRET_BYTES}"
            )
        stored, created = await self.store.put_secret(caller.namespace, name, box.encrypt(value))
        if self.audit is not None:
            await self.audit.record(caller, SECRET_SET, f"secret:{name}", {"created": created})
        return SecretInfo.of(stored), created

    async def listing(self, caller: Caller) -> list[SecretInfo]:
        """The caller's namespace's secrets by name (writers): names and times only."""
        caller.need(Role.WRITER)
        self._box()
        return [SecretInfo.of(s) for s in await self.store.list_secrets(caller.namespace)]

    async def delete(self, caller: Caller, name: str) -> None:
        """Delete ``name`` from the caller's namespace (admins); NotFound if not set.
        Runs that already read it keep it until they end."""
        caller.need(Role.ADMIN)
        self._box()
        _check_name(name)
        if not await self.store.delete_secret(caller.namespace, name):
            raise NotFound(f"no secret {name!r}")
        if self.audit is not None:
            await self.audit.record(caller, SECRET_DELETED, f"secret:{name}")

    async def rotate(self) -> tuple[int, list[str]]:
        """Re-encrypt every secret of every namespace with the first key (the
        operator's command, ``flowcore secrets rotate``): how many were re-encrypted,
        and ``namespace/name`` of those no key of the setting can decrypt (left as
        they are)."""
        box = self._box()
        rotated = 0
        unreadable: list[str] = []
        after: tuple[str, str] | None = None
        while page := await self.store.secrets_page(after, ROTATE_BATCH):
            changes = []
            for secret in page:
                try:
                    changes.append((secret, box.rotate(secret.ciphertext)))
                except InvalidToken:
                    unreadable.append(f"{secret.namespace}/{secret.name}")
            rotated += await self.store.replace_ciphertexts(changes)
            after = (page[-1].namespace, page[-1].name)
        return rotated, unreadable

    def for_run(self, namespace: str) -> RunSecrets:
        """The secrets of one run of ``namespace`` (a new one per execution)."""
        return RunSecrets(self.store, self.box, namespace)


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise InvalidValue(
            "name",
            f"{name[:140]!r} is not a secret name: a letter or _, then letters, digits "
            "and _, at most 128",
        )


class RunSecrets:
    """One run's secrets (the engine's ``SecretResolver``): the values of the names its
    nodes reference, read and decrypted when first needed and kept for this run only;
    :attr:`masking` hides each of them in whatever the run writes out."""

    __slots__ = ("_box", "_namespace", "_store", "_values", "masking")

    def __init__(self, store: Store, box: SecretBox | None, namespace: str) -> None:
        self._store = store
        self._box = box
        self._namespace = namespace
        self._values: dict[str, str] = {}
        self.masking = SecretMask()

    async def resolve(self, names: Collection[str]) -> Mapping[str, str]:
        missing = sorted(set(names).difference(self._values))
        if missing:
            await self._read(missing)
        return {name: self._values[name] for name in names}

    async def _read(self, names: list[str]) -> None:
        box = self._box
        if box is None:
            raise SecretUnavailableError(
                f"secret {names[0]!r} cannot be read: {KEY_SETTING} is not set on this service"
            )
        found = await self._store.secret_ciphertexts(self._namespace, names)
        values: dict[str, str] = {}
        for name in names:
            ciphertext = found.get(name)
            if ciphertext is None:
                raise SecretUnavailableError(
                    f"secret {name!r} is not set in namespace {self._namespace!r} "
                    f"(PUT /v1/secrets/{name})"
                )
            try:
                values[name] = box.decrypt(ciphertext)
            except InvalidToken:
                raise SecretUnavailableError(
                    f"secret {name!r} cannot be decrypted with {KEY_SETTING} (was the key "
                    "that encrypted it removed before `flowcore secrets rotate` ran?)"
                ) from None
        # masked before any node can use them
        self.masking.add(values.values())
        self._values.update(values)

    def mask(self, value: Any) -> Any:
        return self.masking.apply(value)


class MaskingCache:
    """A run's view of the shared cache that stores its results masked: a result a
    node cached after echoing a secret is served to later runs as ``***``, never as
    the value."""

    __slots__ = ("_inner", "_masking")

    def __init__(self, inner: Cache, masking: SecretMask) -> None:
        self._inner = inner
        self._masking = masking

    async def get(self, key: str) -> CacheHit | None:
        return await self._inner.get(key)

    async def set(self, key: str, value: Any, ttl: float) -> None:
        if self._masking:
            value = self._masking.apply(value)
        await self._inner.set(key, value, ttl)


class MaskingMemoryStore:
    """A run's view of the replica's conversation memory that keeps what it saves with
    the run's secrets masked: a message that quoted one is ``***`` for later runs."""

    __slots__ = ("_inner", "_masking")

    def __init__(self, inner: MemoryStore, masking: SecretMask) -> None:
        self._inner = inner
        self._masking = masking

    async def load(self, conversation_id: str) -> ConversationMemory:
        return await self._inner.load(conversation_id)

    async def save(self, conversation_id: str, memory: ConversationMemory) -> None:
        masking = self._masking
        if masking:
            # in place: an in-process store hands out the very object it keeps
            for message in memory.messages:
                message.content = masking.text(message.content)
                message.metadata = masking.apply(message.metadata)
            if memory.summary is not None:
                memory.summary = masking.text(memory.summary)
        await self._inner.save(conversation_id, memory)

    async def delete(self, conversation_id: str) -> None:
        await self._inner.delete(conversation_id)
