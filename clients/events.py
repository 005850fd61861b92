"""`seminar.v1.Events`: the Record RPC, in the gateway process, over a seminar.events log.

    RecordRequest -> Event per message -> EventLog.append (validation, then one atomic,
    durable append in a worker thread) -> RecordResponse(seqs, stored, duplicates)

The answer is sent only after the log says the batch is durable, so an acknowledged event
survives a kill -9 of the gateway or of redis-server. An error answers the whole batch:

    INVALID_ARGUMENT  an event at fault (the message names events[i], its event_id and the
                      field), or an event_id stored before with other content
    UNAVAILABLE       the log is locked by another writer or its server cannot be reached:
                      retry the same batch (event ids make the retry apply once)
    DATA_LOSS         the log's file is corrupt or is not an event log

Every call is metered in the gateway's registry: calls by status code, acknowledgement time of
the OK ones, events by outcome (stored, duplicate, rejected), and the impressions and clicks
of events whose request_id names the arm that served them (seminar.clients.metrics).
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
from google.protobuf.message import DecodeError

from seminar.clients.attribution import outcome, parse_request_id
from seminar.clients.gateway import MalformedRequest, Refusal, bug_message
from seminar.clients.metrics import GatewayMetrics
from seminar.clients.proto import ranker_pb2
from seminar.contract import EVENTS_METHOD, EVENTS_SERVICE
from seminar.errors import ConflictError, DataError, ServiceError, UsageError
from seminar.events import AppendResult, Event, EventLog, EventType

log = logging.getLogger("seminar.events")

EVENT_TYPES = {
    ranker_pb2.SEARCH: EventType.SEARCH,
    ranker_pb2.REC: EventType.REC,
    ranker_pb2.IMPRESSION: EventType.IMPRESSION,
}


def parse_record_request(raw: bytes) -> ranker_pb2.RecordRequest | MalformedRequest:
    """Record's request deserializer: bytes that do not parse become INVALID_ARGUMENT."""
    try:
        return ranker_pb2.RecordRequest.FromString(raw)
    except DecodeError as err:
        return MalformedRequest(str(err) or "cannot decode the message", len(raw))


def events_from_request(request: ranker_pb2.RecordRequest) -> list[Event]:
    """The request's events; an unset or unknown type is a UsageError naming the event."""
    events = []
    for index, message in enumerate(request.events):
        if message.type not in EVENT_TYPES:
            known = message.type in ranker_pb2.EventType.values()
            name = ranker_pb2.EventType.Name(message.type) if known else str(message.type)
            raise UsageError(
                f"events[{index}] (event_id {message.event_id!r}): type must be SEARCH, REC "
                f"or IMPRESSION, got {name}"
            )
        events.append(
            Event(
                event_id=message.event_id,
                user_id=message.user_id,
                item_id=message.item_id,
                query=message.query,
                type=EVENT_TYPES[message.type],
                clicked=message.clicked,
                timestamp_ms=message.timestamp_ms,
                request_id=message.request_id,
                position=message.position,
            )
        )
    return events


def count_outcomes(metrics: GatewayMetrics, events: list[Event], result: AppendResult) -> None:
    """Count the newly stored events' impressions and clicks against the arm and version
    their request_id names (seminar.clients.metrics); duplicates were counted when first
    stored, unattributed events not at all."""
    for event, duplicate in zip(events, result.duplicates, strict=True):
        counted = None if duplicate else outcome(event)
        served = parse_request_id(event.request_id) if counted else None
        if counted is None or served is None:
            continue
        metrics.impressions.labels(served.arm, served.model_version).inc(counted[0])
        metrics.clicks.labels(served.arm, served.model_version).inc(counted[1])


def status_of(error: Exception) -> grpc.StatusCode:
    """The gRPC status that answers a batch the log refused with `error`."""
    if isinstance(error, UsageError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, ConflictError | ServiceError):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(error, DataError):
        return grpc.StatusCode.DATA_LOSS
    return grpc.StatusCode.INTERNAL


class EventsService:
    """The Record RPC over one event log (shared by every call; it is thread-safe), metered
    in `metrics` (seminar.clients.metrics: the seminar_gateway_record_* family)."""

    def __init__(self, event_log: EventLog, metrics: GatewayMetrics) -> None:
        self.event_log = event_log
        self.metrics = metrics
        metrics.serve_record(event_log.kind)

    async def Record(
        self,
        request: ranker_pb2.RecordRequest | MalformedRequest,
        context: grpc.aio.ServicerContext,
    ) -> ranker_pb2.RecordResponse:
        start = time.perf_counter()
        code, message = grpc.StatusCode.OK, ""
        try:
            return await self._record(request)
        except Refusal as refusal:
            code, message = refusal.code, refusal.message
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED  # the client left; the append still completes
            raise
        except Exception as err:  # a gateway bug: INTERNAL with one line, never UNKNOWN
            code, message = grpc.StatusCode.INTERNAL, bug_message(err)
            log.error("Record failed: %s", message)
        finally:
            self.metrics.record_requests.labels(code.name).inc()
            if code is grpc.StatusCode.OK:
                self.metrics.record_latency.observe(time.perf_counter() - start)
        await context.abort(code, message)

    async def _record(
        self, request: ranker_pb2.RecordRequest | MalformedRequest
    ) -> ranker_pb2.RecordResponse:
        if isinstance(request, MalformedRequest):
            raise Refusal(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request is not a valid seminar.v1.RecordRequest: {request.error}",
            )
        try:
            events = events_from_request(request)
            # The append blocks on fsync: a worker thread keeps the event loop (and Rank) free.
            # A cancelled call still completes its append; the client's retry is a duplicate.
            result: AppendResult = await asyncio.to_thread(self.event_log.append, events)
        except (UsageError, ConflictError, ServiceError, DataError) as error:
            code = status_of(error)
            if code is grpc.StatusCode.INVALID_ARGUMENT:
                self.metrics.events_recorded.labels("rejected").inc(len(request.events))
            else:
                log.warning("Record: %s: %s", code.name, error)
            raise Refusal(code, str(error)) from None
        count_outcomes(self.metrics, events, result)
        self.metrics.events_recorded.labels("stored").inc(result.stored)
        self.metrics.events_recorded.labels("duplicate").inc(result.duplicate_count)
        return ranker_pb2.RecordResponse(
            seqs=list(result.seqs), stored=result.stored, duplicates=result.duplicate_count
        )


def record_rpc_handler(service: EventsService) -> grpc.GenericRpcHandler:
    """seminar.v1.Events with Record's request parsed by parse_record_request."""
    method = grpc.unary_unary_rpc_method_handler(
        service.Record,
        request_deserializer=parse_record_request,
        response_serializer=ranker_pb2.RecordResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(EVENTS_SERVICE, {EVENTS_METHOD: method})
