"""The online event log (seminar.events): every test runs on a real SQLite file and a real
redis-server through the one `EventLog` interface; the backend-specific failures follow."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from seminar.errors import ConflictError, DataError, ServiceError, UsageError
from seminar.events import Event, EventLog, EventType, Watermark, open_event_log
from seminar.events.redis_log import RedisEventLog
from seminar.events.redis_server import RedisServer
from seminar.events.sqlite_log import SCHEMA_VERSION, SqliteEventLog
from seminar.events.tail import read_tail
from tests.support.events import make_events, needs_redis_server


def test_append_then_read_back_by_user_and_by_range(event_log: EventLog) -> None:
    events = make_events(6, users=2)
    result = event_log.append(events)
    assert result.seqs == (1, 2, 3, 4, 5, 6) and result.stored == 6
    assert event_log.high_watermark() == 6
    user_0 = event_log.read_user(0)
    assert [stored.event.event_id for stored in user_0] == ["e0", "e2", "e4"]
    assert all(stored.event.timestamp_ms == stored.recorded_ms > 0 for stored in user_0)
    assert user_0[0].event.request_id == "rank-0" and user_0[0].event.clicked is True
    assert [stored.seq for stored in event_log.read_user(0, after_seq=3)] == [5]
    assert [stored.seq for stored in event_log.read_range(2, 5)] == [3, 4, 5]
    assert [stored.seq for stored in event_log.read_range(0, 6, limit=2)] == [1, 2]
    assert event_log.read_user(7) == []


def test_the_newest_events_of_a_user_come_back_in_seq_order(event_log: EventLog) -> None:
    event_log.append(make_events(10, users=2))  # user 0: seqs 1, 3, 5, 7, 9
    newest = event_log.read_user(0, after_seq=1, limit=3, newest=True)
    assert [stored.seq for stored in newest] == [5, 7, 9]
    assert [stored.seq for stored in event_log.read_user(0, after_seq=6, newest=True)] == [7, 9]
    assert [stored.seq for stored in event_log.read_user(0, after_seq=1, limit=3)] == [3, 5, 7]


def test_a_log_keeps_its_id_and_a_watermark_names_the_log_it_came_from(log_url: str) -> None:
    with open_event_log(log_url) as first, open_event_log(log_url) as second:
        assert first.log_id() == second.log_id() != ""
        mark = Watermark(first.log_id(), 5)
        mark.check_log(second)
        assert Watermark.from_json(mark.to_json()) == mark
        with pytest.raises(DataError, match="count events twice"):
            Watermark("another-log", 5).check_log(first)
        Watermark("another-log", 0).check_log(first)  # nothing folded in: any log will do
    with pytest.raises(DataError, match="watermark"):
        Watermark.from_json({"log_id": "x", "watermark": -1})


def test_a_client_timestamp_is_kept_and_zero_is_stamped(event_log: EventLog) -> None:
    given = Event("t1", 1, 2, "action", EventType.SEARCH, True, timestamp_ms=1_700_000_000_000)
    event_log.append([given, Event("t2", 1, 3, "", EventType.REC, False)])
    stored = event_log.find(["t1", "t2"])
    assert stored["t1"].event == given
    assert stored["t2"].event.timestamp_ms == stored["t2"].recorded_ms > 1_700_000_000_000


def test_a_retried_batch_is_applied_once_with_its_first_seqs(event_log: EventLog) -> None:
    events = make_events(4)
    first = event_log.append(events)
    again = event_log.append(events)
    assert again.seqs == first.seqs and again.duplicates == (True,) * 4 and again.stored == 0
    # A retry regrouped with new events: the old are duplicates, only the new are stored.
    mixed = event_log.append([*events[2:], *make_events(2, start=4)])
    assert mixed.duplicates == (True, True, False, False) and mixed.seqs[:2] == first.seqs[2:]
    assert event_log.high_watermark() == 6
    assert len(event_log.read_range(0, 100)) == 6


def test_an_event_id_reused_with_other_content_rejects_the_batch(event_log: EventLog) -> None:
    event_log.append(make_events(2))
    changed = Event("e1", 1, 999, "", EventType.REC, True)
    with pytest.raises(UsageError, match=r"events\[1\] \(event_id 'e1'\): event_id is already"):
        event_log.append([make_events(1, start=50)[0], changed])
    assert event_log.high_watermark() == 2, "the new event in the rejected batch is not stored"
    assert event_log.find(["e50"]) == {}


@pytest.mark.parametrize(
    ("index", "bad", "says"),
    [
        (2, {"item_id": -5}, r"events\[2\] \(event_id 'e2'\): item_id must be"),
        (1, {"event_id": ""}, r"events\[1\] \(event_id ''\): event_id must have"),
        (3, {"query": "x" * 2000}, r"events\[3\] \(event_id 'e3'\): query is 2000 bytes"),
        (0, {"type": EventType.SEARCH}, r"events\[0\] \(event_id 'e0'\): query is empty"),
        (1, {"timestamp_ms": -1}, r"events\[1\] \(event_id 'e1'\): timestamp_ms must"),
        (2, {"event_id": "e0"}, r"events\[2\] \(event_id 'e0'\): event_id repeats events\[0\]"),
    ],
)
def test_a_batch_with_one_bad_event_is_rejected_whole(
    event_log: EventLog, index: int, bad: dict, says: str
) -> None:
    events = make_events(4)
    events[index] = Event(**{**events[index].__dict__, **bad})
    with pytest.raises(UsageError, match=says):
        event_log.append(events)
    assert event_log.high_watermark() == 0 and event_log.read_range(0, 10) == []


def test_two_writers_at_once_store_every_event_once(
    open_log: Callable[[], EventLog],
) -> None:
    """Two handles (two connections, as two gateway replicas) append at once; half the ids
    are sent by both, racing: each id is stored once and both writers get its one seq."""
    writers = [open_log(), open_log()]
    shared = make_events(200, prefix="shared-", users=7)
    own = [make_events(200, prefix=f"own{n}-", users=7) for n in range(2)]
    results: list[list] = [[], []]

    def write(number: int) -> None:
        for start in range(0, 200, 10):
            batch = shared[start : start + 10] + own[number][start : start + 10]
            results[number].append(writers[number].append(batch))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log = writers[0]
    stored = log.read_range(0, log.high_watermark())
    ids = [s.event.event_id for s in stored]
    assert len(ids) == len(set(ids)) == 600
    seq_of = {s.event.event_id: s.seq for s in stored}
    for number in range(2):
        answered = [seq for result in results[number] for seq in result.seqs]
        batches = [shared[i : i + 10] + own[number][i : i + 10] for i in range(0, 200, 10)]
        expected = [seq_of[e.event_id] for batch in batches for e in batch]
        assert answered == expected
    duplicates = sum(result.duplicate_count for rs in results for result in rs)
    assert duplicates == 200, "each shared id was stored by one writer, a duplicate for the other"
    per_user = sum(len(log.read_user(user)) for user in range(7))
    assert per_user == 600


def test_the_watermark_splits_the_log_into_base_and_tail_without_overlap(
    event_log: EventLog,
) -> None:
    """The contract compaction and serving rely on: up to W is folded into the base store,
    after W is the tail serving reads; together they are every event, once."""
    event_log.append(make_events(10, users=3))
    watermark = event_log.high_watermark()
    event_log.append(make_events(5, users=3, start=10))
    base = event_log.read_range(0, watermark)
    for user in range(3):
        tail = event_log.read_user(user, after_seq=watermark)
        folded = [s for s in base if s.event.user_id == user]
        everything = event_log.read_user(user)
        assert [s.seq for s in folded + tail] == [s.seq for s in everything]
        assert all(s.seq > watermark for s in tail)
    assert [s.seq for s in event_log.read_range(watermark, event_log.high_watermark())] == list(
        range(11, 16)
    )


def test_the_log_survives_a_reopen(log_url: str) -> None:
    with open_event_log(log_url) as log:
        first = log.append(make_events(3))
    with open_event_log(log_url) as log:
        assert log.append(make_events(3)).seqs == first.seqs
        assert log.append(make_events(1, start=3)).seqs == (4,)


# ---- SQLite's own failures ------------------------------------------------------------------


def test_a_locked_sqlite_file_gives_a_conflict_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    log = SqliteEventLog(path, busy_timeout_s=0.2)
    log.append(make_events(2))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
    try:
        with pytest.raises(ConflictError, match=rf"event log {path} is locked"):
            log.append(make_events(1, start=2))
        assert len(log.read_range(0, 10)) == 2, "readers are not blocked by a writer (WAL)"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert log.append(make_events(1, start=2)).seqs == (3,)
    log.close()


class SlowDisk(SqliteEventLog):
    """A log whose write transactions take 40 ms, as on a disk whose fsync is that slow."""

    def _append_in_transaction(self, *args: object) -> object:
        time.sleep(0.04)
        return super()._append_in_transaction(*args)  # type: ignore[arg-type]


def test_a_writer_in_a_tight_loop_never_starves_another_in_the_same_process(
    tmp_path: Path,
) -> None:
    """A reported defect: on a slow disk, one writer appending in a loop held the write lock
    again microseconds after each commit, and another writer of the same process, polling
    through SQLite's busy handler, waited past its 5 s timeout (CI's ConflictError in
    test_events_append). Writers of one process are served in arrival order: each waits at
    most for the writers that came before it."""
    path = tmp_path / "events.db"
    hog, victim = SlowDisk(path, busy_timeout_s=1.0), SqliteEventLog(path, busy_timeout_s=1.0)
    stop = threading.Event()
    hogged = [0]

    def keep_writing() -> None:
        while not stop.is_set():
            hog.append(make_events(3, prefix="hog-", start=3 * hogged[0]))
            hogged[0] += 1

    thread = threading.Thread(target=keep_writing)
    thread.start()
    waits = []
    try:
        for number in range(15):
            started = time.monotonic()
            victim.append(make_events(1, prefix="victim-", start=number))
            waits.append(time.monotonic() - started)
    finally:
        stop.set()
        thread.join()
    assert hogged[0] >= 15, "the hog must have been writing all along"
    assert max(waits) < 0.5, f"the victim waited up to {max(waits):.2f} s behind one writer"
    stored = victim.read_range(0, victim.high_watermark())
    assert len(stored) == 15 + 3 * hogged[0]


def test_an_existing_sqlite_log_opens_and_reads_while_a_writer_holds_it(tmp_path: Path) -> None:
    """Serving opens the log with a short lock timeout while gateways write: opening an
    existing log must not need the write lock (it did: a restarted tritonserver's
    pq_retrieval failed to load under a Record load)."""
    path = tmp_path / "events.db"
    with SqliteEventLog(path) as writer:
        writer.append(make_events(3))
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another writer in the middle of a transaction
        try:
            with SqliteEventLog(path, busy_timeout_s=0.2) as reader:
                assert reader.log_id() == writer.log_id()
                assert len(reader.read_user(0)) == 1
        finally:
            holder.execute("ROLLBACK")
            holder.close()


def test_a_corrupt_sqlite_file_gives_a_data_error_naming_it(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database, " * 100)
    with pytest.raises(DataError, match=rf"event log {garbage} is corrupt or not a SQLite"):
        open_event_log(f"sqlite://{garbage}")

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE customers (name TEXT)")
    with pytest.raises(DataError, match=rf"event log {other} is a SQLite file but not an event"):
        open_event_log(f"sqlite://{other}")

    damaged = tmp_path / "damaged.db"
    with SqliteEventLog(damaged) as log:
        log.append(make_events(300))
    data = bytearray(damaged.read_bytes())
    data[4096:16384] = b"\xff" * (16384 - 4096)  # overwrite pages of the table and index
    damaged.write_bytes(bytes(data))
    with (
        pytest.raises(DataError, match=rf"event log {damaged} is corrupt"),
        SqliteEventLog(damaged) as log,
    ):
        log.read_range(0, 1000)

    with pytest.raises(DataError, match="does not exist"):
        open_event_log(f"sqlite://{tmp_path}/no-such-folder/events.db")


def test_an_unknown_url_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="names no known log"):
        open_event_log("postgres://somewhere/events")


# ---- Redis's own failures -------------------------------------------------------------------


def test_redis_without_fsync_always_is_refused(tmp_path: Path) -> None:
    needs_redis_server()
    with RedisServer(tmp_path / "redis", appendfsync="everysec") as server:
        with pytest.raises(ServiceError, match="appendfsync 'everysec'"):
            RedisEventLog(server.url)
        with RedisEventLog(server.url, allow_everysec=True) as log:
            assert log.append(make_events(1)).seqs == (1,)


def test_an_unreachable_redis_gives_a_service_error_naming_it() -> None:
    from seminar.processes import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(ServiceError, match=rf"event log redis at {url}"):
        RedisEventLog(url, timeout_s=0.5)


def _impressions(user_id: int, items: range, start: int = 0) -> list[Event]:
    return [
        Event(f"i{start + index}", user_id, item, "", EventType.IMPRESSION, False,
              request_id="r", position=index + 1)
        for index, item in enumerate(items)
    ]  # fmt: skip


def test_impressions_and_positions_are_stored_but_never_history(event_log: EventLog) -> None:
    click = Event("c1", 4, 7, "", EventType.REC, True, request_id="r", position=3)
    history = make_events(3, users=1, start=50)  # user 0
    event_log.append([*history, *_impressions(0, range(10, 16)), click])
    stored = event_log.find(["c1", "i2"])
    assert stored["c1"].event == click.stamped(stored["c1"].recorded_ms)
    assert stored["i2"].event.type is EventType.IMPRESSION and stored["i2"].event.position == 3
    # read_range (compaction, A/B reports) sees every event; read_user only history events,
    # so a cap of 3 (serving's tail) still returns all three history events of user 0.
    assert len(event_log.read_range(0, event_log.high_watermark())) == 10
    newest = event_log.read_user(0, limit=3, newest=True)
    assert [item.event.event_id for item in newest] == ["e50", "e51", "e52"]
    assert [item.event.event_id for item in read_tail(event_log, 0, Watermark(), 3)] == [
        "e50", "e51", "e52",
    ]  # fmt: skip
    assert [item.event.event_id for item in event_log.read_user(4)] == ["c1"]


def test_a_position_is_part_of_the_fingerprint(event_log: EventLog) -> None:
    event = Event("p1", 1, 2, "", EventType.REC, True, position=4)
    event_log.append([event])
    assert event_log.append([event]).duplicates == (True,)
    with pytest.raises(UsageError, match="other content"):
        event_log.append([Event("p1", 1, 2, "", EventType.REC, True, position=5)])


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (Event("x", 1, 2, "", EventType.IMPRESSION, True, request_id="r"), "clicked"),
        (Event("x", 1, 2, "", EventType.REC, True, position=-1), "position"),
        (Event("x", 1, 2, "", EventType.REC, True, position=2**31), "position"),
    ],
)
def test_a_clicked_impression_or_a_bad_position_is_refused(
    event_log: EventLog, event: Event, field: str
) -> None:
    with pytest.raises(UsageError, match=rf"events\[0\] \(event_id 'x'\): {field}"):
        event_log.append([event])
    assert event_log.high_watermark() == 0


SCHEMA_1 = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
    fingerprint TEXT NOT NULL, user_id INTEGER NOT NULL, item_id INTEGER NOT NULL,
    query TEXT NOT NULL, type TEXT NOT NULL, clicked INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL, request_id TEXT NOT NULL, recorded_ms INTEGER NOT NULL
);
CREATE INDEX events_by_user ON events (user_id, seq);
CREATE TABLE log_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO log_meta VALUES ('log_id', 'old-log');
PRAGMA user_version = 1;
"""


def test_a_schema_1_sqlite_log_is_migrated_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = Event("old1", 3, 9, "", EventType.REC, True, timestamp_ms=1000, request_id="r")
    connection = sqlite3.connect(path)
    connection.executescript(SCHEMA_1)
    connection.execute(
        "INSERT INTO events (event_id, fingerprint, user_id, item_id, query, type, clicked, "
        "timestamp_ms, request_id, recorded_ms) VALUES (?,?,?,?,?,?,?,?,?,?)",
        ("old1", old.fingerprint(), 3, 9, "", "rec", 1, 1000, "r", 1000),
    )
    connection.commit()
    connection.close()
    with SqliteEventLog(path) as log, SqliteEventLog(path) as again:
        assert log.log_id() == again.log_id() == "old-log"
        assert log.read_user(3)[0].event == old  # position 0: unknown
        assert log.append([old]).duplicates == (True,)  # the old fingerprint still matches
        log.append(_impressions(3, range(5, 7)))
        assert [stored.event.position for stored in again.read_range(0, 3)] == [0, 1, 2]
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    connection.close()
