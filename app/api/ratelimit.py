"""Request rate limits of the API: one token bucket per API key and one per namespace,
and the headers that tell a client where it stands.

``check_rate`` is called once a request's caller is known (by the authentication
middleware). It takes a token from the key's bucket (``FLOWCORE_RATE_LIMIT_PER_SECOND``,
bursts of ``FLOWCORE_RATE_LIMIT_BURST``), then from its namespace's
(``FLOWCORE_NAMESPACE_RATE_LIMIT_PER_SECOND``, bursts of twice that); a limit set to 0
is off. A request the key's bucket refuses takes nothing from the namespace's, so one
noisy key does not use up its namespace. Refused: :class:`RateLimitExceeded`, a ``429``
(``api/errors.py``) naming the limit, with ``Retry-After`` and the headers below.

Headers, as in the IETF draft *RateLimit header fields for HTTP*
(draft-ietf-httpapi-ratelimit-headers-11), one list item per limit that is on, named
``"key"`` or ``"namespace"``::

    RateLimit-Policy: "key";q=40;w=2, "namespace";q=200;w=2
    RateLimit: "key";r=39;t=1, "namespace";r=180;t=1

``q`` is the bucket's size (its burst) and ``w`` the seconds it takes to refill from
empty (``q / w`` is the sustained rate); ``r`` is the whole requests left now and ``t``
the seconds until the bucket is full again. They are sent on every response of a
rate-limited request, the ``429`` included; ``Retry-After`` (seconds, at least 1) only
on the ``429``.
"""

from __future__ import annotations

import math

from app.config import Settings
from app.runtime.ratelimit import RateLimiter, Verdict

__all__ = ["RateHeaders", "RateLimitExceeded", "check_rate", "limits"]

#: response headers to add (empty when no limit is on)
RateHeaders = dict[str, str]


class RateLimitExceeded(Exception):
    """A request over a rate limit: a 429. ``policy`` is the limit that refused it
    (``"key"`` or ``"namespace"``); ``headers`` go on the response."""

    def __init__(self, policy: str, detail: str, headers: RateHeaders) -> None:
        super().__init__(detail)
        self.policy = policy
        self.detail = detail
        self.headers = headers


def limits(settings: Settings) -> list[tuple[str, float, int]]:
    """The limits that are on, in the order they are checked: (policy, rate, burst)."""
    found: list[tuple[str, float, int]] = []
    if settings.rate_limit_per_second > 0:
        rate = settings.rate_limit_per_second
        found.append(("key", rate, settings.rate_limit_burst or _twice(rate)))
    if settings.namespace_rate_limit_per_second > 0:
        rate = settings.namespace_rate_limit_per_second
        found.append(("namespace", rate, _twice(rate)))
    return found


def _twice(rate: float) -> int:
    return max(1, math.ceil(2 * rate))


async def check_rate(
    limiter: RateLimiter, settings: Settings, key_id: str, namespace: str
) -> RateHeaders:
    """Count one request of API key ``key_id`` (its public id) in ``namespace``
    against the rate limits: the headers to add to its response, or
    :class:`RateLimitExceeded` (which carries the 429's headers).

    Call it from the authentication middleware once the caller is known, with the
    replica's limiter (``RateLimiter(link)``, built once)::

        try:
            headers = await check_rate(limiter, settings, caller.key_id, caller.namespace)
        except RateLimitExceeded as exc:
            # a middleware runs outside the app's exception handlers: answer here
            await errors.rate_limited(exc, scope["path"])(scope, receive, send)
            return
        # ... then add ``headers`` to the response's start message

    Raised in a route or a dependency instead, the handler of ``api/errors.py`` renders
    the same 429. With both limits off it returns ``{}`` without touching any bucket.
    """
    on = limits(settings)
    if not on:
        return {}
    policies = [_policy(policy, rate, burst) for policy, rate, burst in on]
    states: list[str] = []
    for policy, rate, burst in on:
        name = key_id if policy == "key" else namespace
        verdict = await limiter.take(f"{policy}:{name}", rate, burst)
        states.append(_state(policy, verdict))
        if not verdict.allowed:
            headers = _headers(policies, states)
            headers["Retry-After"] = str(max(1, math.ceil(verdict.retry_after_seconds)))
            what = f"API key {key_id}" if policy == "key" else f"namespace {namespace!r}"
            raise RateLimitExceeded(
                policy,
                f"the rate limit of {what} ({rate:g} requests/s, bursts of {burst}) is "
                f"used up; retry in {headers['Retry-After']} s",
                headers,
            )
    return _headers(policies, states)


def _policy(policy: str, rate: float, burst: int) -> str:
    return f'"{policy}";q={burst};w={max(1, math.ceil(burst / rate))}'


def _state(policy: str, verdict: Verdict) -> str:
    return f'"{policy}";r={verdict.remaining};t={math.ceil(verdict.reset_seconds)}'


def _headers(policies: list[str], states: list[str]) -> RateHeaders:
    return {"RateLimit-Policy": ", ".join(policies), "RateLimit": ", ".join(states)}
