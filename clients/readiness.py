"""Which (model, version) pairs Triton has READY, asked with ModelReady and never with a deadline.

The probes carry no gRPC deadline for the reason the inference calls carry none
(seminar.clients.triton_calls): a cancelled call can crash tritonserver 2.51. A probe that
outlives its wait is left running and reported as "no answer"; the next check waits on that
same probe instead of stacking another, so a hung Triton holds at most one probe per pair.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from seminar.clients.scoring import status_name

if TYPE_CHECKING:
    import tritonclient.grpc.aio as triton_aio

ModelKey = tuple[str, int]  # (model, version)

# ModelReady failures that mean "Triton did not answer", as opposed to Triton answering that it
# does not know the model (NOT_FOUND and the like), which is an answer: not READY.
_NO_ANSWER = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN"})


@dataclass(frozen=True)
class Readiness:
    """One probe's answer: whether Triton answered, and which pairs it reports READY."""

    reachable: bool
    ready: frozenset[ModelKey] = frozenset()
    reasons: dict[ModelKey, str] = field(default_factory=dict)  # why a pair is not READY

    def is_ready(self, model: str, version: int) -> bool:
        return (model, version) in self.ready

    def reason(self, model: str, version: int) -> str:
        return self.reasons.get((model, version), "not checked yet")


NOT_CHECKED = Readiness(reachable=False)


@dataclass(frozen=True)
class _Answer:
    ready: bool
    reachable: bool
    reason: str


class ReadinessProbe:
    """Asks one Triton about (model, version) pairs; at most one probe per pair outstanding."""

    def __init__(self, triton: triton_aio.InferenceServerClient) -> None:
        self.triton = triton
        self._pending: dict[ModelKey, asyncio.Task[_Answer]] = {}

    async def check(self, keys: Iterable[ModelKey], timeout_s: float) -> Readiness:
        """Ask about every pair at once and wait up to `timeout_s` for the answers."""
        tasks: dict[ModelKey, asyncio.Task[_Answer]] = {}
        for key in sorted(set(keys)):
            task = self._pending.get(key)
            if task is None:
                task = asyncio.ensure_future(self._ask(key))
                self._pending[key] = task
                task.add_done_callback(lambda done, key=key: self._forget(key, done))
            tasks[key] = task
        done: set[asyncio.Task[_Answer]] = set()
        if tasks:
            # asyncio.wait never cancels what it waits on: a slow probe stays in _pending.
            done, _ = await asyncio.wait(tasks.values(), timeout=timeout_s)
        reachable, ready, reasons = True, set(), {}
        for key, task in tasks.items():
            if task not in done:
                reachable = False
                reasons[key] = f"Triton did not answer ModelReady within {timeout_s:g} s"
                continue
            answer = task.result()
            reachable = reachable and answer.reachable
            if answer.ready:
                ready.add(key)
            else:
                reasons[key] = answer.reason
        return Readiness(reachable, frozenset(ready), reasons)

    async def wait_idle(self, timeout_s: float) -> None:
        """Let outstanding probes finish (bounded) before the channel is closed under them."""
        if self._pending:
            await asyncio.wait(set(self._pending.values()), timeout=timeout_s)

    def _forget(self, key: ModelKey, task: asyncio.Task[_Answer]) -> None:
        if self._pending.get(key) is task:
            del self._pending[key]

    async def _ask(self, key: ModelKey) -> _Answer:
        from tritonclient.utils import InferenceServerException

        model, version = key
        try:
            ready = await self.triton.is_model_ready(model, str(version))
        except InferenceServerException as err:
            code = status_name(err)
            message = (err.message() or str(err) or code).splitlines()[0]
            if code in _NO_ANSWER:
                return _Answer(False, False, f"Triton unreachable ({code}: {message})")
            return _Answer(False, True, f"ModelReady failed ({code}: {message})")
        except Exception as err:  # a probe must always answer; the reason says what broke
            return _Answer(False, False, f"ModelReady failed ({type(err).__name__}: {err})")
        return _Answer(bool(ready), True, "" if ready else "Triton reports it not READY")
