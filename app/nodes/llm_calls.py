"""What each ``llm`` call reports to whoever watches them (the service's metrics).

The node layer may not import the service's metrics (``app.observability`` sits above
it), so the node reports each call, attempt by attempt, as an :class:`LlmCall` to the
one observer the composition root installs with :func:`observe_llm_calls`; with none
installed, reporting costs a truth test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LlmCall", "LlmCallObserver", "observe_llm_calls", "report_llm_call"]


@dataclass(slots=True, frozen=True)
class LlmCall:
    """One request to a Chat Completions endpoint (one attempt of a node).

    ``model`` is the model the config asked for (the label operators chose, not the
    provider's dated variant); ``outcome`` is ``ok`` or the error's kind (``unavailable``,
    ``rejected``, ``timeout``, ``error``); ``first_token_seconds`` is None when no content
    token came (a tool call, a non-streamed call, a failure before the first one)."""

    model: str
    outcome: str
    seconds: float
    first_token_seconds: float | None
    prompt_tokens: int | None
    completion_tokens: int | None


LlmCallObserver = Callable[[LlmCall], None]

_observer: LlmCallObserver | None = None


def observe_llm_calls(observer: LlmCallObserver | None) -> None:
    """Send every ``llm`` call of this process to ``observer`` (None: to nobody). One
    observer at a time: building a replica again replaces it rather than doubling it."""
    global _observer
    _observer = observer


def report_llm_call(call: LlmCall) -> None:
    """Tell the observer about ``call`` (an observer that fails never fails the node)."""
    observer = _observer
    if observer is None:
        return
    with contextlib.suppress(Exception):  # metrics never turn an answer into an error
        observer(call)
