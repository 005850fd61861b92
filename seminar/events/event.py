"""One recorded event, its limits and its validation: shared by both logs and the Record RPC."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from seminar.errors import UsageError

INT64_MAX = 2**63 - 1


INT32_MAX = 2**31 - 1  # position is an int32 on the wire


class EventType(StrEnum):
    """What the user was shown: the results of a search (a query) or a recommendation; or an
    impression, an item shown and not clicked. SEARCH and REC events are history: they enter
    the user's lifelong sequence (serving's tail, compaction). An IMPRESSION is outcome data
    only, the denominator of an A/B experiment's click-through rate: never clicked, never part
    of a history (the logs leave it out of `read_user`, compaction skips it)."""

    SEARCH = "search"
    REC = "rec"
    IMPRESSION = "impression"


@dataclass(frozen=True)
class EventLimits:
    """What one Record batch may hold; a batch over a limit is rejected whole."""

    max_batch_events: int = 1000
    max_query_bytes: int = 1024
    max_id_chars: int = 128  # event_id and request_id

    def __post_init__(self) -> None:
        for name in ("max_batch_events", "max_query_bytes", "max_id_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Event:
    """One event as the client sends it. `timestamp_ms` 0 means "now": the log assigns it."""

    event_id: str  # chosen by the client, unique per event: a retry reuses it
    user_id: int  # external user id (MovieLens userId)
    item_id: int  # external item id (MovieLens movieId)
    query: str  # UTF-8; "" for a recommendation event
    type: EventType
    clicked: bool  # the label: the user clicked (engaged with) the item
    timestamp_ms: int = 0  # unix milliseconds; 0 = assigned by the log when stored
    request_id: str = ""  # the Rank request this event answers ("" when unknown)
    # The 1-based rank at which the item was served in the ranking named by request_id;
    # 0 = unknown (an event not answering a ranking, or a client that does not say).
    position: int = 0

    @property
    def is_history(self) -> bool:
        """Whether the event belongs to the user's lifelong sequence (not an impression)."""
        return self.type is not EventType.IMPRESSION

    @property
    def history_query(self) -> str:
        """The query as a lifelong sequence holds this event: a search's query; none for a
        recommendation, whatever the client sent (the dataset's canonical rule), so that the
        online tail and the base store compaction folds it into score the event alike."""
        return self.query if self.type is EventType.SEARCH else ""

    def fingerprint(self) -> str:
        """What a retry must repeat exactly: every field as sent (timestamp 0 included, so a
        retry of a server-stamped event matches although the stored copy has a time)."""
        fields = [
            self.event_id,
            self.user_id,
            self.item_id,
            self.query,
            str(self.type),
            self.clicked,
            self.timestamp_ms,
            self.request_id,
        ]
        # Appended only when set, so that an event of a log written before positions existed
        # keeps its fingerprint (a retry of it is still a duplicate, not a conflict).
        if self.position:
            fields.append(self.position)
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:32]

    def stamped(self, now_ms: int) -> Event:
        """This event with `timestamp_ms` set to `now_ms` when the client left it 0."""
        return self if self.timestamp_ms else replace(self, timestamp_ms=now_ms)


@dataclass(frozen=True)
class StoredEvent:
    """An event as the log holds it: its sequence number, the time it was stored, and the
    event with its timestamp assigned."""

    seq: int
    recorded_ms: int
    event: Event


def _refuse(index: int, event: Event, field: str, why: str) -> UsageError:
    return UsageError(f"events[{index}] (event_id {event.event_id!r}): {field} {why}")


def validate_event(index: int, event: Event, limits: EventLimits) -> None:
    """Raise a UsageError naming the event (its position and id) and the field at fault."""
    if not event.event_id or len(event.event_id) > limits.max_id_chars:
        raise _refuse(index, event, "event_id", f"must have 1 to {limits.max_id_chars} characters")
    if not 0 <= event.user_id <= INT64_MAX:
        raise _refuse(index, event, "user_id", f"must be in [0, 2^63), got {event.user_id}")
    if not 0 <= event.item_id <= INT64_MAX:
        raise _refuse(index, event, "item_id", f"must be in [0, 2^63), got {event.item_id}")
    query_bytes = len(event.query.encode())
    if query_bytes > limits.max_query_bytes:
        raise _refuse(
            index, event, "query", f"is {query_bytes} bytes, over {limits.max_query_bytes}"
        )
    if event.type is EventType.SEARCH and not event.query:
        raise _refuse(index, event, "query", "is empty in a search event")
    if not 0 <= event.timestamp_ms <= INT64_MAX:
        raise _refuse(
            index,
            event,
            "timestamp_ms",
            f"must be unix milliseconds >= 0, got {event.timestamp_ms}",
        )
    if len(event.request_id) > limits.max_id_chars:
        raise _refuse(index, event, "request_id", f"is over {limits.max_id_chars} characters")
    if not 0 <= event.position <= INT32_MAX:
        raise _refuse(index, event, "position", f"must be in [0, 2^31), got {event.position}")
    if event.type is EventType.IMPRESSION and event.clicked:
        raise _refuse(
            index, event, "clicked", "is true in an impression event: send a click as a "
            "clicked SEARCH or REC event (it counts as the impression too)",
        )  # fmt: skip


def validate_batch(events: Sequence[Event], limits: EventLimits) -> None:
    """Every event valid and every event_id once in the batch; else a UsageError naming the
    first event at fault and its field (the whole batch is rejected)."""
    if not events:
        raise UsageError("events is empty: send at least one event")
    if len(events) > limits.max_batch_events:
        raise UsageError(
            f"events holds {len(events)} events, over the limit of {limits.max_batch_events}"
        )
    first_at: dict[str, int] = {}
    for index, event in enumerate(events):
        validate_event(index, event, limits)
        if event.event_id in first_at:
            raise _refuse(index, event, "event_id", f"repeats events[{first_at[event.event_id]}]'s")
        first_at[event.event_id] = index
