"""Secrets in node configs: what a node type needs to take ``{{ secrets.NAME }}``.

A node type lists the config fields that take secrets in ``secret_fields`` (validation
refuses a reference anywhere else), keeps the definition's strings of those fields as
:class:`SecretStrings` (parsed once per node instance), and fills them in when it runs,
right where the value is needed::

    class ChatNode(BaseNode):
        secret_fields = frozenset({"api_key"})

        async def execute(self, node_context, workflow_context):
            filled = await SecretStrings({"api_key": self.config.api_key}).fill(node_context)
            headers = {"Authorization": f"Bearer {filled['api_key']}"}

The values come from the run's resolver (in the service: the run's namespace, decrypted
for this run only); whatever the run writes out afterwards is masked, so a value a server
echoes back is stored and streamed as ``***``. A value is filled into the definition's
own text, never into text a template rendered from run data, so no input can make a
node send a secret elsewhere than where its definition puts it.

Headers that carry credentials (:data:`CREDENTIAL_HEADERS`) must take them from a secret:
:func:`literal_credentials` names those that do not, for a config model to refuse.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Generic, TypeVar

from app.engine import NodeContext, SecretTemplate

__all__ = ["CREDENTIAL_HEADERS", "SecretStrings", "literal_credentials"]

K = TypeVar("K", bound=Hashable)

#: request headers whose value is a credential (compared lower-cased)
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key"})


class SecretStrings(Generic[K]):
    """Those of ``strings`` (the definition's, not resolved: a field's value, a map of
    header values...) that reference secrets, by key."""

    __slots__ = ("_templates", "names")

    def __init__(self, strings: Mapping[K, object]) -> None:
        self._templates: dict[K, SecretTemplate] = {}
        for key, value in strings.items():
            template = SecretTemplate.parse(value) if isinstance(value, str) else None
            if template is not None:
                self._templates[key] = template
        #: every secret they reference
        self.names = frozenset(name for t in self._templates.values() for name in t.names)

    def __bool__(self) -> bool:
        return bool(self._templates)

    def __contains__(self, key: object) -> bool:
        return key in self._templates

    async def fill(self, node_context: NodeContext) -> dict[K, str]:
        """Each string that references secrets, with the run's values filled in (a
        secret that is not set fails the node, naming it: SecretUnavailableError)."""
        if not self._templates:
            return {}
        values = await node_context.resolve_secrets(self.names)
        return {key: template.fill(values) for key, template in self._templates.items()}


def literal_credentials(headers: Mapping[str, object]) -> list[str]:
    """The credential headers of ``headers`` (as a definition gives them) whose value
    does not come from a secret: a literal, or a template of run data (which the run's
    input, and so the database, would hold)."""
    return [
        name
        for name, value in headers.items()
        if name.lower() in CREDENTIAL_HEADERS
        and not (isinstance(value, str) and SecretTemplate.parse(value) is not None)
    ]
