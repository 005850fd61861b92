"""`EventLog`: the one interface of the online event log (contract: seminar.events)."""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar, Self

from seminar.errors import DataError, UsageError
from seminar.events.event import Event, EventLimits, StoredEvent, validate_batch

SQLITE_SCHEME = "sqlite://"  # then the path: sqlite:///abs/events.db, sqlite://runs/events.db
REDIS_SCHEMES = ("redis://", "rediss://")


@dataclass(frozen=True)
class AppendResult:
    """The answer to one acknowledged batch, event by event in the batch's order."""

    seqs: tuple[int, ...]  # the event's sequence number (a duplicate's original one)
    duplicates: tuple[bool, ...]  # True: stored before with the same content, not stored again

    @property
    def stored(self) -> int:
        return self.duplicates.count(False)

    @property
    def duplicate_count(self) -> int:
        return self.duplicates.count(True)


@dataclass(frozen=True)
class Watermark:
    """A position in one log: every event of log `log_id` with seq <= `watermark` is folded
    into the base store that carries this mark; the events after it are the online tail.
    `Watermark()` (no log, 0) is a base store built before any event was recorded."""

    log_id: str = ""
    watermark: int = 0

    def to_json(self) -> dict[str, object]:
        return {"log_id": self.log_id, "watermark": self.watermark}

    @classmethod
    def from_json(cls, value: object) -> Watermark:
        """The mark recorded under contract.EVENT_LOG_FIELD (None when absent)."""
        if value is None:
            return cls()
        if (
            not isinstance(value, dict)
            or not isinstance(value.get("log_id"), str)
            or not isinstance(value.get("watermark"), int)
            or value["watermark"] < 0
        ):
            raise DataError(
                f"event log mark {value!r} is not {{'log_id': str, 'watermark': int >= 0}}"
            )
        return cls(value["log_id"], value["watermark"])

    def check_log(self, log: EventLog) -> None:
        """DataError unless `log` is the log this mark was taken in (any log matches W = 0)."""
        if self.watermark == 0:
            return
        found = log.log_id()
        if found != self.log_id:
            raise DataError(
                f"event log {log.url} has id {found}, but this store holds the events up to "
                f"seq {self.watermark} of log {self.log_id}: reading its tail would count "
                "events twice or miss them; point it at the log it was compacted from"
            )


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def conflicting_event(index: int, event: Event, stored_seq: int) -> UsageError:
    """The error of an event_id already stored with other content (the batch is rejected)."""
    return UsageError(
        f"events[{index}] (event_id {event.event_id!r}): event_id is already stored (seq "
        f"{stored_seq}) with other content; a retry must resend the event unchanged"
    )


class EventLog(abc.ABC):
    """Append batches durably and once; read them back by sequence number.

    Implementations are safe to share between threads; every error is a seminar.errors kind:
    UsageError for a batch the client must fix, ConflictError for a log locked by another
    writer for too long, ServiceError for a server that cannot be reached, DataError for a log
    that is corrupt or not an event log.
    """

    url: str
    kind: ClassVar[str]  # "sqlite" or "redis": what the gateway's metrics call the log

    def __init__(self, limits: EventLimits | None = None) -> None:
        self.limits = limits or EventLimits()

    def append(self, events: Sequence[Event]) -> AppendResult:
        """Store the batch, all or nothing, and return once it is durable. Events whose
        timestamp_ms is 0 are stamped with the time of this call."""
        validate_batch(events, self.limits)
        return self._append(list(events), now_ms())

    @abc.abstractmethod
    def _append(self, events: list[Event], recorded_ms: int) -> AppendResult:
        """Append a validated batch atomically (see `append`)."""

    @abc.abstractmethod
    def read_user(
        self, user_id: int, after_seq: int = 0, limit: int | None = None, newest: bool = False
    ) -> list[StoredEvent]:
        """The user's history events (impressions left out: they are never history) with
        seq > after_seq, in seq order: at most `limit` of them, the oldest ones, or with
        `newest` the newest ones (serving's capped tail)."""

    @abc.abstractmethod
    def read_range(
        self, after_seq: int, up_to_seq: int, limit: int | None = None
    ) -> list[StoredEvent]:
        """Every user's events with after_seq < seq <= up_to_seq, in seq order, impressions
        included (compaction skips them; an A/B report counts them)."""

    @abc.abstractmethod
    def high_watermark(self) -> int:
        """The largest seq stored (0 for an empty log); every smaller seq is visible."""

    @abc.abstractmethod
    def log_id(self) -> str:
        """The log's identity, a UUID drawn when the log was created and never changed: a
        watermark means something only in the log it was taken from."""

    @abc.abstractmethod
    def find(self, event_ids: Sequence[str]) -> dict[str, StoredEvent]:
        """The stored events among `event_ids`, by id."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; the log stays on disk."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_event_log(url: str, limits: EventLimits | None = None, timeout_s: float = 5.0) -> EventLog:
    """The log at `url`: sqlite://PATH (a file, created when missing; sqlite:///tmp/x.db is
    /tmp/x.db) or redis://HOST:PORT[/DB]
    (a running redis-server with appendonly yes and appendfsync always). `timeout_s` bounds
    one call: the wait for another writer's lock (SQLite) or for the server (Redis)."""
    if url.startswith(SQLITE_SCHEME):
        from seminar.events.sqlite_log import SqliteEventLog

        return SqliteEventLog(
            url.removeprefix(SQLITE_SCHEME), limits=limits, busy_timeout_s=timeout_s
        )
    if url.startswith(REDIS_SCHEMES):
        from seminar.events.redis_log import RedisEventLog

        return RedisEventLog(url, limits=limits, timeout_s=timeout_s)
    raise UsageError(
        f"event log URL {url!r} names no known log: use sqlite://PATH or redis://HOST:PORT"
    )
