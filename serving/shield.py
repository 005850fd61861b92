"""The public gRPC port of `seminar serve`: Triton's KServe v2 protocol, with no cancellation.

tritonserver 2.51 crashes (SIGSEGV in TRITONBACKEND_ResponseSend, Triton server issues #7368
and #8034, fixed upstream only in later releases) when a gRPC client cancels an inference call
that a model is still working on, which every client with a short deadline does. The HTTP
endpoint has no such problem. So Triton's own gRPC port stays on loopback and clients talk to
this proxy, which forwards each call to Triton as raw bytes and never cancels one there:

- a call whose client goes away (deadline, cancellation, dropped connection) keeps running in
  Triton; its answer is dropped when it arrives and counted as abandoned. (Triton's own
  per-request queue timeout would drop such work earlier, but a request rejected from one
  step's queue while a sibling step still works on it crashes 2.51 just the same, so the
  repository's configs have no queue policy and Triton ignores client timeouts;)
- calls in flight, abandoned ones included, are bounded: past `max_inflight` a call is refused
  with RESOURCE_EXHAUSTED at once, so a flood of impatient clients cannot pile work up forever;
- ServerReady and ModelReady answer what the supervisor knows: Triton still says READY for a
  model whose Python process died, the supervisor does not; an inference that cannot be served
  now (tritonserver restarting, the model's process being reloaded) is refused at once with
  UNAVAILABLE and the reason;
- streaming inference (ModelStreamInfer) is refused: a stream is cancelled by design.

Every other method (metadata, statistics, the model-repository API, which Triton itself locks
with the admin key) is forwarded unchanged, request metadata included.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger("seminar.serve")

SERVICE = "inference.GRPCInferenceService"
# Reconnect fast after a restart of tritonserver: gRPC's default backoff grows to 120 s.
_UPSTREAM_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]
# Transport headers that belong to each hop, not to the call.
_HOP_HEADERS = {"user-agent", "te", "content-type", "grpc-accept-encoding", "grpc-encoding"}


@dataclass(frozen=True)
class ShieldConfig:
    """Limits of the proxy; defaults here only."""

    # Calls forwarded and not yet answered by Triton, abandoned included: nothing drops
    # abandoned work inside Triton (see the module doc), so this bounds it.
    max_inflight: int = 128
    max_message_bytes: int = 64 * 1024 * 1024  # largest request a client may send
    shutdown_grace_s: float = 5.0

    def __post_init__(self) -> None:
        if self.max_inflight < 1:
            raise ValueError(f"max_inflight: must be >= 1, got {self.max_inflight}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes: must be >= 1024, got {self.max_message_bytes}")


class ShieldMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "seminar_serve_grpc_calls",
            "Calls on the public gRPC port by method and status code.",
            ["method", "code"],
            registry=registry,
        )
        self.abandoned = Counter(
            "seminar_serve_grpc_abandoned",
            "Calls whose client went away before Triton answered (Triton finished them).",
            ["method"],
            registry=registry,
        )
        self.inflight = Gauge(
            "seminar_serve_grpc_inflight",
            "Calls forwarded to Triton and not answered yet, abandoned ones included.",
            registry=registry,
        )


# Readiness as the supervisor sees it: (model name, version or "") -> False when it knows the
# model cannot serve, None when it has no opinion (Triton's answer stands).
ModelHealth = Callable[[str, str], bool | None]
# Why an inference on (model name, version or "") cannot be served right now (tritonserver
# restarting, the model's process being reloaded), or None: such calls are refused at once
# with UNAVAILABLE instead of waiting on a server that cannot answer.
Unavailable = Callable[[str, str], str | None]


class InferenceShield:
    """A grpc.aio server forwarding `inference.GRPCInferenceService` to Triton's gRPC port."""

    def __init__(
        self,
        upstream: str,
        config: ShieldConfig,
        registry: CollectorRegistry,
        server_ready: Callable[[], bool],
        model_health: ModelHealth,
        unavailable: Unavailable,
    ) -> None:
        self.upstream = upstream
        self.config = config
        self.metrics = ShieldMetrics(registry)
        self.server_ready = server_ready
        self.model_health = model_health
        self.unavailable = unavailable
        self._inflight: set[asyncio.Task] = set()
        self._channel: grpc.aio.Channel | None = None
        self._server: grpc.aio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0 = a free port); the port bound."""
        self._channel = grpc.aio.insecure_channel(self.upstream, options=_UPSTREAM_OPTIONS)
        limit = self.config.max_message_bytes
        self._server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
            ]
        )
        self._server.add_generic_rpc_handlers((_Handler(self),))
        try:
            bound = self._server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as err:
            raise OSError(f"cannot bind the gRPC port {host}:{port}: {err}") from err
        if bound == 0:
            raise OSError(f"cannot bind the gRPC port {host}:{port}")
        await self._server.start()
        return bound

    async def stop(self) -> None:
        """Stop taking calls, let the ones in flight finish (bounded), close the channel."""
        if self._server is not None:
            await self._server.stop(grace=self.config.shutdown_grace_s)
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=self.config.shutdown_grace_s)
        if self._channel is not None:
            await self._channel.close()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    # ---- forwarding --------------------------------------------------------------------------

    async def forward(
        self, method: str, request: bytes, context: grpc.aio.ServicerContext
    ) -> bytes:
        name = method.rsplit("/", 1)[-1]
        if len(self._inflight) >= self.config.max_inflight:
            self.metrics.calls.labels(name, "RESOURCE_EXHAUSTED").inc()
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"server overloaded: {len(self._inflight)} calls in flight "
                f"(limit {self.config.max_inflight}); retry with backoff",
            )
        if name == "ModelInfer":
            request = await self._admit_inference(request, context)
        assert self._channel is not None
        call = self._channel.unary_unary(method)  # bytes in, bytes out: no re-encoding
        metadata = tuple(
            (key, value)
            for key, value in context.invocation_metadata() or ()
            if not key.startswith((":", "grpc-")) and key not in _HOP_HEADERS
        )
        task = asyncio.ensure_future(call(request, metadata=metadata))
        self._inflight.add(task)
        self.metrics.inflight.set(len(self._inflight))
        task.add_done_callback(self._finished)
        try:
            reply = await asyncio.shield(task)
        except asyncio.CancelledError:
            # The client left; Triton keeps working on the call and its answer is dropped.
            self.metrics.abandoned.labels(name).inc()
            self.metrics.calls.labels(name, "CANCELLED").inc()
            raise
        except grpc.aio.AioRpcError as err:
            self.metrics.calls.labels(name, err.code().name).inc()
            await context.abort(err.code(), _upstream_details(err))
        self.metrics.calls.labels(name, "OK").inc()
        return reply

    async def _admit_inference(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Refuse at once what Triton cannot serve now."""
        from tritonclient.grpc import service_pb2

        parsed = service_pb2.ModelInferRequest.FromString(request)
        why = self.unavailable(parsed.model_name, parsed.model_version)
        if why is not None:
            self.metrics.calls.labels("ModelInfer", "UNAVAILABLE").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, why)
        return request

    def _finished(self, task: asyncio.Task) -> None:
        self._inflight.discard(task)
        self.metrics.inflight.set(len(self._inflight))
        if not task.cancelled():
            task.exception()  # retrieved, so an abandoned call's error is never logged as lost

    async def server_ready_call(
        self, method: str, request: bytes, context: grpc.aio.ServicerContext
    ) -> bytes:
        from tritonclient.grpc import service_pb2

        self.metrics.calls.labels("ServerReady", "OK").inc()
        return service_pb2.ServerReadyResponse(ready=self.server_ready()).SerializeToString()

    async def model_ready_call(
        self, method: str, request: bytes, context: grpc.aio.ServicerContext
    ) -> bytes:
        from tritonclient.grpc import service_pb2

        reply = await self.forward(method, request, context)
        parsed = service_pb2.ModelReadyRequest.FromString(request)
        if self.model_health(parsed.name, parsed.version) is False:
            return service_pb2.ModelReadyResponse(ready=False).SerializeToString()
        return reply

    async def refuse_stream(self, request_iterator, context: grpc.aio.ServicerContext) -> None:
        self.metrics.calls.labels("ModelStreamInfer", "UNIMPLEMENTED").inc()
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "streaming inference is not offered: use ModelInfer (unary), whose calls are never "
            "cancelled inside Triton",
        )


class _ClientGoneFilter(logging.Filter):
    """grpc.aio logs a traceback when an answer is sent the moment its client's deadline
    passes (the send fails with ExecuteBatchError); the call is already counted as abandoned
    or answered, so the traceback says nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "ExecuteBatchError" not in record.getMessage()


logging.getLogger("grpc._cython.cygrpc").addFilter(_ClientGoneFilter())


def _upstream_details(err: grpc.aio.AioRpcError) -> str:
    details = err.details() or ""
    if err.code() is grpc.StatusCode.UNAVAILABLE and "connect" in details.lower():
        return f"tritonserver is not reachable (restarting?): {details}"
    return details


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, shield: InferenceShield) -> None:
        self.shield = shield

    def service(self, handler_call_details: grpc.HandlerCallDetails):
        method = handler_call_details.method
        service, _, name = method.lstrip("/").partition("/")
        if service != SERVICE:
            return None  # UNIMPLEMENTED
        if name == "ModelStreamInfer":
            return grpc.stream_stream_rpc_method_handler(self.shield.refuse_stream)
        behaviour = {
            "ServerReady": self.shield.server_ready_call,
            "ModelReady": self.shield.model_ready_call,
        }.get(name, self.shield.forward)

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await behaviour(method, request, context)

        return grpc.unary_unary_rpc_method_handler(handle)
