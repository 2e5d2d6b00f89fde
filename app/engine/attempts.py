"""``NodeAttempts``: one node's execution, from its rendered config to a NodeResult.

In order: the pre-node hooks, the cache (a hit ends it), then attempts, each through
the node's circuit breaker and timeout, retried by its retry policy with backoff; a
failure that stands is offered to the error hooks, which may recover it; a success is
cached; then the post-node hooks. Nothing here raises but CancelledError: every failure
is a NodeResult, for ``completion.Completion`` to book.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import random
import time
from typing import Any

from app.engine.breaker import CircuitOpenError
from app.engine.cache import cache_key
from app.engine.dsl import RetryPolicy
from app.engine.errors import FlowcoreError, NodeExecutionError, NodeTimeoutError
from app.engine.events import EventType
from app.engine.expressions import compile_template
from app.engine.frontier import Frontier
from app.engine.graph import CompiledNode
from app.engine.node import NodeContext, NodeResult
from app.engine.result import NodeRun, NodeStatus
from app.engine.runtime import NodeRuntime
from app.engine.values import clean_text

__all__ = ["NodeAttempts", "failure"]


class NodeAttempts(Frontier):
    """A graph run that executes its nodes: cache, breaker, timeout, retries, hooks."""

    @property
    def runtime(self) -> NodeRuntime:
        """What this graph's nodes call through their NodeContext
        (``scheduler.RunHandle`` is its own)."""
        raise NotImplementedError

    async def _execute(self, cn: CompiledNode, record: NodeRun, for_index: int) -> NodeResult:
        """Run one node to a NodeResult: cache, breaker, timeout, retries, error hooks.
        Never raises, except CancelledError."""
        shared = self.shared
        records = self.records
        parents = self.compiled.nodes[for_index].parents
        outputs = self.scope.nodes
        node_input = {
            records[p].node_id: outputs[records[p].node_id]
            for p in parents
            if records[p].status is NodeStatus.SUCCEEDED
        }
        record.started_at = time.time()
        record.status = NodeStatus.RUNNING
        event_id = self.path + cn.id
        shared.busy += 1
        if shared.park_after is not None:
            shared.parking_changed()
        if shared.debug:
            shared.current[event_id] = record.started_at
            shared.last_node = event_id
        if shared.sinks:
            shared.emit(EventType.NODE_STARTED, event_id, {"type": cn.spec.type})
        else:  # nobody listens: keep the sequence, skip building the payload
            shared.seq += 1
        try:
            try:
                config = cn.config.render(self.scope)
            except FlowcoreError as exc:
                return failure(exc)
            ctx = NodeContext(cn.spec, config, node_input, self.scope, self.runtime)
            hooks = shared.hooks
            if hooks.pre_node is not None:
                await hooks.pre_node(cn.spec, ctx)
            if hooks.callbacks:
                await hooks.notify("on_node_start", cn.spec, ctx)
            key = self._cache_key(cn, config, node_input) if shared.cache is not None else None
            if key is not None:
                assert shared.cache is not None
                hit = await shared.cache.get(key)
                if hit is not None:
                    record.attempts = 0
                    result = NodeResult(output=hit.value, metadata={"cache_hit": True})
                    await self._after(cn, result)
                    return result
            result = await self._attempts(cn, ctx, record, event_id, config)
            if not result.success:
                result = await self._handlefailure(cn, ctx, result)
            elif key is not None:
                assert shared.cache is not None
                ttl = cn.spec.cache.ttl if cn.spec.cache and cn.spec.cache.ttl else None
                await shared.cache.set(key, result.output, ttl or shared.config.cache_ttl)
            await self._after(cn, result)
            return result
        finally:
            shared.busy -= 1
            if shared.park_after is not None:
                shared.parking_changed()
            if shared.debug:
                shared.current.pop(event_id, None)

    async def _after(self, cn: CompiledNode, result: NodeResult) -> None:
        hooks = self.shared.hooks
        if hooks.post_node is not None:
            await hooks.post_node(cn.spec, result)
        if hooks.callbacks:
            await hooks.notify("on_node_end", cn.spec, result)

    def _cache_key(self, cn: CompiledNode, config: Any, node_input: Any) -> str | None:
        policy = cn.spec.cache
        if policy is None and not self.shared.config.enable_cache:
            return None
        if not cn.node.cacheable:
            return None
        if policy is None and not cn.node.cacheable_call(config):
            return None
        if policy is not None and policy.key is not None:
            rendered = compile_template(policy.key)
            text = rendered if isinstance(rendered, str) else rendered.render(self.scope)
            return f"{cn.spec.type}:key:{text}"
        # templates are resolved into `config` already; raw CEL fields (a transform's
        # outputs, a map's items) also read the input, vars and the nodes they name
        reads: dict[str, Any] = {"parents": node_input}
        if cn.has_expressions:
            scope = self.scope
            reads["input"] = scope.input
            reads["vars"] = scope.vars
            names = cn.expression_reads if cn.expression_reads is not None else scope.nodes
            reads["nodes"] = {name: scope.nodes.get(name) for name in names}
        return cache_key(cn.spec.type, config, reads)

    async def _attempts(
        self, cn: CompiledNode, ctx: NodeContext, record: NodeRun, event_id: str, config: Any
    ) -> NodeResult:
        shared = self.shared
        timeout = cn.spec.timeout or shared.config.node_timeout
        policy = self._retry_policy(cn)
        breaker = cn.spec.circuit_breaker or cn.node.default_circuit_breaker
        breakers = shared.breakers if breaker is not None else None
        breaker_key = ""
        if breakers is not None:
            assert breaker is not None
            breaker_key = breaker.key or cn.node.breaker_key(config)
        attempt = 0
        while True:
            attempt += 1
            ctx.attempt = attempt
            record.attempts = attempt
            if breakers is not None:
                assert breaker is not None
                try:
                    await breakers.acquire(breaker_key, breaker)
                except CircuitOpenError as exc:
                    result = failure(exc)
                else:
                    result = await self._attempt(cn, ctx, timeout)
                    await breakers.record(breaker_key, breaker, result.success)
            else:
                result = await self._attempt(cn, ctx, timeout)
            if result.success or policy is None or result.error_kind == "budget":
                return result
            retries = (
                policy.max_retries if policy.max_retries is not None else shared.config.max_retries
            )
            if attempt > retries:
                return result
            kind = result.error_kind or "execution"
            if policy.retry_on is not None:
                if kind not in policy.retry_on:
                    return result
            elif kind in _NOT_RETRIED:
                return result  # the same call fails the same way; retrying only delays
            delay = _backoff(policy, shared.config.retry_delay, attempt, result.exception)
            shared.emit(
                EventType.NODE_RETRY,
                event_id,
                {"attempt": attempt + 1, "delay": delay, "error": result.error, "kind": kind},
            )
            if delay > 0:
                await shared.clock.sleep(delay)

    async def _handlefailure(
        self, cn: CompiledNode, ctx: NodeContext, result: NodeResult
    ) -> NodeResult:
        """Give ``handle_error`` (subclass hook) and ``error_handler`` (config callback) a
        chance to recover: a returned NodeResult (or value) replaces the failure."""
        shared = self.shared
        handler = shared.config.error_handler
        hook = shared.hooks.handle_error
        if hook is None and handler is None:
            return result
        error = result.exception or NodeExecutionError(result.error or "node failed")
        recovered: Any = None
        try:
            if hook is not None:
                recovered = await hook(error, cn.spec, ctx)
            elif handler is not None:
                recovered = handler(error, cn.spec, ctx)
                if inspect.isawaitable(recovered):
                    recovered = await recovered
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if exc is error:
                return result
            return failure(exc)
        if recovered is None:
            return result
        if isinstance(recovered, NodeResult):
            return recovered
        return NodeResult(output=recovered, metadata={"recovered": True})

    async def _attempt(
        self, cn: CompiledNode, ctx: NodeContext, timeout: float | None
    ) -> NodeResult:
        try:
            if timeout is None:
                result = await cn.node.execute(ctx, self.context)
            else:
                try:
                    async with asyncio.timeout(timeout):
                        result = await cn.node.execute(ctx, self.context)
                except TimeoutError:
                    return failure(NodeTimeoutError(f"timed out after {timeout:g}s"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return failure(exc)
        if not isinstance(result, NodeResult):  # a plain return value is the output
            return NodeResult(output=result)  # type: ignore[unreachable]
        if not result.success and result.error_kind is None:
            result.error_kind = "execution"
        return result

    def _retry_policy(self, cn: CompiledNode) -> RetryPolicy | None:
        if cn.spec.retry is not None:
            return cn.spec.retry
        on_error = cn.spec.on_error or self._on_error
        if self.shared.config.retry_failed_nodes or on_error == "retry":
            return _DEFAULT_RETRY
        return None


_DEFAULT_RETRY = RetryPolicy()
#: error kinds not retried unless a policy's ``retry_on`` names them
_NOT_RETRIED = frozenset({"circuit_open", "config", "forbidden_target", "input", "output"})


def _backoff(
    policy: RetryPolicy, default_delay: float, attempt: int, error: BaseException | None = None
) -> float:
    """The policy's delay before retry ``attempt``; longer when the error says how long
    the other side asked to wait (a ``retry_after`` in seconds: HTTP ``Retry-After``),
    never past ``max_delay``."""
    base = policy.delay if policy.delay is not None else default_delay
    delay = base * policy.backoff ** (attempt - 1)
    if policy.jitter:
        delay *= 1 + random.uniform(-policy.jitter, policy.jitter)
    hint = getattr(error, "retry_after", None)
    if isinstance(hint, int | float) and not isinstance(hint, bool) and math.isfinite(hint):
        delay = max(delay, float(hint))
    return max(min(delay, policy.max_delay), 0.0)


def failure(exc: BaseException) -> NodeResult:
    """A failed NodeResult for ``exc``: its kind (``execution`` unless it names one)
    and a message that names the exception's type unless it is one of ours."""
    kind = str(getattr(exc, "kind", None) or "execution")[:64]
    message = str(exc) or type(exc).__name__
    if not isinstance(exc, FlowcoreError):
        message = f"{type(exc).__name__}: {message}"
    return NodeResult(success=False, error=clean_text(message), error_kind=kind, exception=exc)
