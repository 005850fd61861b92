"""Triton calls the gateway starts but never cancels: bounded, tracked, late results dropped.

Why never cancel: tritonserver 2.51's gRPC frontend can crash (segfault) when an inference
call is cancelled while Triton works on it (Triton issues #7368 and #8034, fixed in 24.12 and
later). A gRPC deadline on the call, cancelling the asyncio task that awaits it, or closing the
channel under it all cancel it. So each call runs as its own task that nobody cancels; a caller
waits for it through `asyncio.shield` with its own budget and walks away when the budget ends
or when its own client goes away. The call then finishes inside Triton and its result (or
error) is consumed here and dropped.

Walking away must not pile up work without bound: at most `limit` calls are outstanding,
abandoned ones included, and a call beyond that is refused at once (`Overloaded`), which the
gateway answers with RESOURCE_EXHAUSTED: load shedding instead of an ever-growing queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from seminar.clients.metrics import GatewayMetrics
from seminar.clients.scoring import CallFailed
from seminar.errors import ServiceError

log = logging.getLogger("seminar.gateway")

ResultT = TypeVar("ResultT")


class Overloaded(ServiceError):
    """No room for another Triton call: `outstanding` calls are already in flight."""

    def __init__(self, outstanding: int, limit: int) -> None:
        super().__init__(f"{outstanding} Triton calls in flight (limit {limit})")
        self.outstanding = outstanding
        self.limit = limit


@dataclass
class _CallRecord:
    arm: str
    model_version: str
    role: str  # "primary" | "shadow"
    abandoned: bool = False


class TritonCalls:
    """Every outstanding Triton call of one gateway, with the metrics that describe them."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics
        self._calls: dict[asyncio.Task, _CallRecord] = {}

    @property
    def outstanding(self) -> int:
        """Calls started and not yet finished, abandoned ones included."""
        return len(self._calls)

    def start(
        self,
        call: Callable[[], Awaitable[ResultT]],
        arm: str,
        model_version: str,
        role: str,
        limit: int,
    ) -> asyncio.Task[ResultT]:
        """Run `call()` as its own task; raise Overloaded when `limit` calls are outstanding.

        `call` is a factory so that a refused call never creates a coroutine.
        """
        if len(self._calls) >= limit:
            raise Overloaded(len(self._calls), limit)
        task = asyncio.ensure_future(call())
        self._calls[task] = _CallRecord(arm, model_version, role)
        self.metrics.triton_inflight.set(len(self._calls))
        task.add_done_callback(self._finished)
        return task

    async def wait(self, task: asyncio.Task[ResultT], budget_s: float) -> ResultT:
        """The call's result within `budget_s` seconds.

        Raises TimeoutError when the budget ends first, the call's own exception when it
        failed, or CancelledError when the caller is cancelled. In the first and last case the
        call goes on inside Triton, is counted as abandoned, and its outcome is dropped.
        """
        try:
            return await asyncio.wait_for(asyncio.shield(task), budget_s)
        finally:
            if not task.done():
                self._abandon(task)

    async def drain(self, timeout_s: float) -> int:
        """Wait up to `timeout_s` for every outstanding call; the number still running."""
        pending = set(self._calls)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout_s)
        return len(pending)

    def _abandon(self, task: asyncio.Task) -> None:
        record = self._calls.get(task)
        if record is None or record.abandoned:
            return
        record.abandoned = True
        self.metrics.triton_abandoned.labels(record.arm, record.model_version, record.role).inc()

    def _finished(self, task: asyncio.Task) -> None:
        record = self._calls.pop(task, None)
        self.metrics.triton_inflight.set(len(self._calls))
        # Always consume the outcome, so an abandoned call's error is never reported by asyncio
        # as "exception was never retrieved".
        if task.cancelled():
            code = "CANCELLED"  # only at interpreter shutdown: nothing here cancels a call
        else:
            error = task.exception()
            if error is None:
                code = "OK"
            elif isinstance(error, CallFailed):
                code = error.code
            else:
                code = "INTERNAL"
            if record is not None and record.abandoned and code == "INTERNAL":
                # Nobody awaits an abandoned call any more: its failure is reported here or never.
                log.error(
                    "abandoned Triton call for %s failed: %s: %s",
                    record.model_version, type(error).__name__, error,
                )  # fmt: skip
        if record is not None and record.abandoned:
            self.metrics.triton_late.labels(
                record.arm, record.model_version, record.role, code
            ).inc()
