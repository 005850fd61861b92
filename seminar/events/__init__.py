"""The online event log: users' latest events, recorded durably, read by sequence number.

The log is the source of truth for every event recorded after a version was built (docs/design.md
section 13). One interface, `EventLog` (log.py), two implementations that pass the same tests:

    sqlite://PATH       SqliteEventLog (sqlite_log.py): one file, WAL, synchronous FULL; the
                        embedded default for one gateway replica
    redis://HOST:PORT   RedisEventLog (redis_log.py): a redis-server with appendonly yes and
                        appendfsync always; for several replicas

`open_event_log(url)` picks one. `Event` and its validation (event.py) are shared by both and by
the `seminar.v1.Events` Record RPC in seminar.clients.events.

The contract every reader and writer relies on:

1. Acknowledged means durable. `append` returns only after the whole batch is on disk (SQLite:
   the WAL commit is fsynced; Redis: the AOF is fsynced before the reply); a crash of the
   writer or of redis-server after that loses none of it. A batch is all-or-nothing, on a
   crash too.
2. Applied once. Each event carries a client-chosen `event_id`; an event whose id is stored
   with the same content is a duplicate: not stored again, answered with its original
   sequence number. The same id with other content rejects the whole batch. A client that
   lost an answer therefore retries the same batch until it is acknowledged.
3. Sequence numbers. Every stored event gets `seq`, an integer unique in the log, assigned in
   commit order and never reused (gaps are possible, order is not broken). When a reader sees
   seq S, every event with a smaller seq is already visible: `high_watermark()` is the largest
   seq stored, and nothing below it can still appear.
4. Watermarks. A consumer of the log remembers the highest seq it has consumed, its watermark
   W. "Events of user U after W" is `read_user(U, after_seq=W)` (an index on (user, seq) in
   SQLite, one stream per user in Redis); compaction reads `read_range(W_old, W_new)` with
   W_new = `high_watermark()` taken before it reads, folds those events into the base store and
   records W_new beside it. By rule 3 the events up to W_new are exactly those it folded in,
   and those after it are exactly the tail serving reads, so each event is counted once: in the
   base store (seq <= W) or in the tail (seq > W), never both, never neither.
5. History and outcomes. An IMPRESSION event (an item shown, not clicked) is outcome data for
   A/B reports, never part of a user's history: `read_range` returns it, `read_user` does not
   (so a capped tail counts history events only), and compaction skips it.
"""

from __future__ import annotations

from seminar.events.event import Event, EventLimits, EventType, StoredEvent, validate_batch
from seminar.events.log import AppendResult, EventLog, Watermark, open_event_log

__all__ = [
    "AppendResult",
    "Event",
    "EventLimits",
    "EventLog",
    "EventType",
    "StoredEvent",
    "Watermark",
    "open_event_log",
    "validate_batch",
]
