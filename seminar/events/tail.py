"""A user's online tail: the events recorded after a base store was built, as scoring sees them.

One policy for serving (`pq_retrieval`) and for the offline reference (`seminar score
--event-log`), so that both score the same events: the user's events with seq above the base
store's watermark, the newest `max_events` of them, oldest first. Events older than the cap
are not lost: they stay in the log and come back into the scores when compaction folds them
into the next version's base store. The cap bounds the work and memory of one request (a
request reads, encodes and scores at most `max_events` events per user) whatever a client
records; nothing about tails is kept between requests except the encoded query texts.
"""

from __future__ import annotations

from seminar.events.event import StoredEvent
from seminar.events.log import EventLog, Watermark

DEFAULT_MAX_TAIL_EVENTS = 1000


def require_tail_cap(max_events: int) -> None:
    """ValueError unless `max_events` is a usable cap (0 turns tails off)."""
    if max_events < 0:
        raise ValueError(f"max_tail_events must be >= 0, got {max_events}")


def read_tail(
    log: EventLog, user_id: int, mark: Watermark, max_events: int = DEFAULT_MAX_TAIL_EVENTS
) -> list[StoredEvent]:
    """The user's history events after `mark` in `log`, the newest `max_events`, in seq order.
    Impressions are not history: the log leaves them out of `read_user`, so the cap counts
    history events only; the filter here holds the rule for any log."""
    require_tail_cap(max_events)
    if max_events == 0:
        return []
    stored = log.read_user(user_id, after_seq=mark.watermark, limit=max_events, newest=True)
    return [event for event in stored if event.event.is_history]
