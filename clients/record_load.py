"""Record load: `concurrency` writers send event batches to seminar.v1.Events for a while.

Each writer sends one batch at a time and resends the same batch (same event ids) until it is
acknowledged, as a client that must lose no event does: a gateway or a redis-server killed
mid-call is answered UNAVAILABLE (or not at all), and the resent batch is applied once. After
`duration_s` the writers start no new batch; the one each holds is retried for up to `drain_s`.
The report says what was sent and acknowledged, event by event, so a caller can check the log.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from seminar.events import Event, EventType

if TYPE_CHECKING:
    from seminar.clients.proto import ranker_pb2

# Reconnect fast to a restarted gateway: gRPC's default backoff grows to minutes.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
)

# Answers that a resend cannot change: the batch itself is at fault, or the log is corrupt.
FINAL_CODES = frozenset({"INVALID_ARGUMENT", "DATA_LOSS"})


@dataclass(frozen=True)
class RecordLoadConfig:
    concurrency: int = 8
    batch_events: int = 20
    users: int = 50
    items: int = 500
    call_timeout_s: float = 5.0
    retry_pause_s: float = 0.05
    drain_s: float = 30.0  # how long a writer retries its last batch after the duration
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("concurrency", "batch_events", "users", "items"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class RecordLoadReport:
    sent: set[str] = field(default_factory=set)  # event ids sent at least once
    acknowledged: set[str] = field(default_factory=set)  # event ids in an OK answer
    resent_batches: int = 0  # batches sent again after a failed call
    duplicates: int = 0  # events the log answered as stored before (a retry's)
    failures: dict[str, int] = field(default_factory=dict)  # status code -> failed calls
    acknowledged_ms: list[float] = field(default_factory=list)  # duration of each OK call
    wall_s: float = 0.0  # from the first send until every writer finished

    @property
    def events_per_s(self) -> float:
        """Acknowledged events per second of wall time."""
        return len(self.acknowledged) / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self, stored: int) -> str:
        """One line: sent / acknowledged / stored / lost (acknowledged and not stored)."""
        lost = len(self.acknowledged) - stored
        return (
            f"sent {len(self.sent)} / acknowledged {len(self.acknowledged)} / stored {stored} / "
            f"lost {lost} (resent batches {self.resent_batches}, duplicates {self.duplicates}, "
            f"failed calls {self.failures})"
        )


def event_message(event: Event) -> ranker_pb2.Event:
    """The protobuf of `event`."""
    from seminar.clients.proto import ranker_pb2

    return ranker_pb2.Event(
        event_id=event.event_id,
        user_id=event.user_id,
        item_id=event.item_id,
        query=event.query,
        type=ranker_pb2.EventType.Value(event.type.name),  # the proto's names are EventType's
        clicked=event.clicked,
        timestamp_ms=event.timestamp_ms,
        request_id=event.request_id,
        position=event.position,
    )


def run_record_load(
    address: str, duration_s: float, config: RecordLoadConfig | None = None
) -> RecordLoadReport:
    """Send batches to the Record RPC at `address` for `duration_s`; see the module docstring."""
    import grpc

    from seminar.clients.proto import ranker_pb2, ranker_pb2_grpc

    config = config or RecordLoadConfig()
    report = RecordLoadReport()
    lock = threading.Lock()
    started = time.monotonic()
    stop_new_at = started + duration_s

    def writer(number: int) -> None:
        rng = random.Random(config.seed * 1000 + number)
        with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
            stub = ranker_pb2_grpc.EventsStub(channel)
            batch_number = 0
            while time.monotonic() < stop_new_at:
                events = [
                    Event(
                        event_id=f"w{number}-b{batch_number}-e{index}",
                        user_id=rng.randrange(config.users),
                        item_id=rng.randrange(config.items),
                        query="",
                        type=EventType.REC,
                        clicked=rng.random() < 0.3,
                    )
                    for index in range(config.batch_events)
                ]
                batch_number += 1
                request = ranker_pb2.RecordRequest(events=[event_message(e) for e in events])
                ids = {event.event_id for event in events}
                with lock:
                    report.sent |= ids
                give_up_at = max(stop_new_at, time.monotonic()) + config.drain_s
                attempt = 0
                while time.monotonic() < give_up_at:
                    attempt += 1
                    sent_at = time.perf_counter()
                    try:
                        answer = stub.Record(request, timeout=config.call_timeout_s)
                    except grpc.RpcError as err:
                        with lock:
                            code = err.code().name
                            report.failures[code] = report.failures.get(code, 0) + 1
                        if code in FINAL_CODES:
                            break
                        time.sleep(config.retry_pause_s)
                        continue
                    acknowledged_ms = (time.perf_counter() - sent_at) * 1e3
                    with lock:
                        report.acknowledged |= ids
                        report.acknowledged_ms.append(acknowledged_ms)
                        report.duplicates += answer.duplicates
                        report.resent_batches += attempt > 1
                    break

    threads = [
        threading.Thread(target=writer, args=(number,), name=f"record-writer-{number}")
        for number in range(config.concurrency)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report.wall_s = time.monotonic() - started
    return report
