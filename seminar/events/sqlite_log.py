"""`SqliteEventLog`: the embedded event log, one SQLite file (contract: seminar.events).

Durability: WAL journal with synchronous FULL, so a commit returns after the WAL is fsynced; a
kill -9 of the process (or a power cut) after `append` returned loses nothing, and an
interrupted transaction is rolled back whole when the file is next opened.

Sequence numbers are the table's INTEGER PRIMARY KEY AUTOINCREMENT: assigned inside the write
transaction, and SQLite admits one writer at a time, so they are in commit order and never
reused (rule 3 of the contract). Writers in other processes are serialized by SQLite's lock;
one that waits longer than `busy_timeout_s` gets a ConflictError naming the file.

Writers of one process (the gateway's threads, or several handles on one file) first queue
on a first-come, first-served lock per file: SQLite's busy handler polls with sleeps of up to
100 ms, and a writer that commits and begins again within microseconds wins nearly every
poll, so on a disk with slow fsyncs another writer could wait past any timeout. SQLite's
polling still serializes writers in different processes (several gateway replicas on one
host: docs/deploy.md recommends Redis for those).

Schema versions (PRAGMA user_version): 1 had no `position`; 2 adds it. A file of schema 1 is
migrated when opened (one ALTER TABLE in a write transaction, its events get position 0,
"unknown"), so a log written before positions existed keeps working, its events and their
fingerprints unchanged.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

from seminar.errors import ConflictError, DataError
from seminar.events.event import Event, EventLimits, EventType, StoredEvent
from seminar.events.log import AppendResult, EventLog, conflicting_event

SCHEMA_VERSION = 2  # PRAGMA user_version of a file this code wrote
OLD_SCHEMA_VERSIONS = (1,)  # migrated to SCHEMA_VERSION when opened
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT    NOT NULL UNIQUE,
    fingerprint  TEXT    NOT NULL,
    user_id      INTEGER NOT NULL,
    item_id      INTEGER NOT NULL,
    query        TEXT    NOT NULL,
    type         TEXT    NOT NULL,
    clicked      INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    request_id   TEXT    NOT NULL,
    recorded_ms  INTEGER NOT NULL,
    position     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id, seq);
CREATE TABLE IF NOT EXISTS log_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
TABLES = {"events", "log_meta"}
COLUMNS = (
    "seq, recorded_ms, event_id, user_id, item_id, query, type, clicked, timestamp_ms, "
    "request_id, position"
)
MIGRATE_1_TO_2 = "ALTER TABLE events ADD COLUMN position INTEGER NOT NULL DEFAULT 0"
# read_user's filter: impressions are outcome data, never a user's history, and leaving them
# out in the query makes a `limit` (serving's tail cap) count history events only.
HISTORY_ONLY = f"type != '{EventType.IMPRESSION}'"
# SQLite's default limit on host parameters in one statement is 32766; lookups stay well below.
LOOKUP_CHUNK = 500


class FirstComeLock:
    """A lock handed to its waiters in arrival order (threading.Lock wakes them in no
    particular order); `acquire` gives up after a timeout."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held = False
        self._waiters: collections.deque[threading.Event] = collections.deque()

    def acquire(self, timeout_s: float) -> bool:
        with self._mutex:
            if not self._held:
                self._held = True
                return True
            turn = threading.Event()
            self._waiters.append(turn)
        if turn.wait(timeout_s):
            return True
        with self._mutex:
            if turn.is_set():  # handed over as the wait timed out: it is ours now
                return True
            self._waiters.remove(turn)
            return False

    def release(self) -> None:
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().set()  # handed over: stays held
            else:
                self._held = False


_WRITER_LOCKS: dict[str, FirstComeLock] = {}  # real path of a log file -> its writers' queue
_WRITER_LOCKS_GUARD = threading.Lock()


def writer_lock(path: Path) -> FirstComeLock:
    """The one queue of this process's writers of the file at `path`."""
    key = os.path.realpath(path)
    with _WRITER_LOCKS_GUARD:
        return _WRITER_LOCKS.setdefault(key, FirstComeLock())


def _stored(row: tuple) -> StoredEvent:
    seq, recorded_ms, event_id, user_id, item_id, query, kind, clicked, timestamp_ms = row[:9]
    request_id, position = row[9:]
    event = Event(
        event_id, user_id, item_id, query, EventType(kind), bool(clicked), timestamp_ms,
        request_id, position,
    )  # fmt: skip
    return StoredEvent(seq, recorded_ms, event)


class SqliteEventLog(EventLog):
    """The event log in one SQLite file; one connection per thread."""

    kind: ClassVar[str] = "sqlite"

    def __init__(
        self, path: str | Path, limits: EventLimits | None = None, busy_timeout_s: float = 5.0
    ) -> None:
        super().__init__(limits)
        self.path = Path(path)
        self.url = f"sqlite://{self.path}"
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._writers = writer_lock(self.path)
        if not self.path.parent.is_dir():
            raise DataError(f"event log {self.path}: folder {self.path.parent} does not exist")
        with self._errors("open"):
            connection = self._connection()
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            tables = {
                row[0]
                for row in connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%'"
                )
            }
            if version not in (0, SCHEMA_VERSION, *OLD_SCHEMA_VERSIONS) or tables - TABLES:
                raise DataError(
                    f"event log {self.path} is a SQLite file but not an event log of schema "
                    f"{SCHEMA_VERSION} (user_version {version}, tables {sorted(tables)})"
                )
            if version == 0 or "log_meta" not in tables:
                connection.executescript(f"BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = "
                                         f"{SCHEMA_VERSION}; COMMIT;")  # fmt: skip
            elif version in OLD_SCHEMA_VERSIONS:
                self._migrate(connection)
            # Opening an existing log only reads: a reader (serving's tails) must open it while
            # writers hold the write lock. Two processes creating a new file race here:
            # INSERT OR IGNORE keeps the first id.
            has_id = connection.execute("SELECT 1 FROM log_meta WHERE key = 'log_id'").fetchone()
            if has_id is None:
                connection.execute(
                    "INSERT OR IGNORE INTO log_meta (key, value) VALUES ('log_id', ?)",
                    (str(uuid.uuid4()),),
                )

    def _migrate(self, connection: sqlite3.Connection) -> None:
        """Bring a schema-1 file to SCHEMA_VERSION in one transaction; another process may
        have migrated it meanwhile, so the version is read again under the write lock."""
        connection.execute("BEGIN IMMEDIATE")
        try:
            if connection.execute("PRAGMA user_version").fetchone()[0] == 1:
                connection.execute(MIGRATE_1_TO_2)
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            # isolation_level=None: transactions are the explicit BEGIN IMMEDIATE below.
            connection = sqlite3.connect(
                self.path, timeout=self.busy_timeout_s, isolation_level=None,
                check_same_thread=False,
            )  # fmt: skip
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise DataError(f"event log {self.path}: cannot use WAL (journal_mode {mode})")
            connection.execute("PRAGMA synchronous = FULL")
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """sqlite3's errors as seminar.errors kinds, each naming the file."""
        try:
            yield
        except sqlite3.OperationalError as err:
            if "locked" in str(err) or "busy" in str(err):
                raise ConflictError(
                    f"event log {self.path} is locked: another writer held it for over "
                    f"{self.busy_timeout_s:g} s ({action}: {err})"
                ) from None
            raise DataError(f"event log {self.path}: cannot {action}: {err}") from None
        except sqlite3.DatabaseError as err:  # "file is not a database", "malformed"
            raise DataError(
                f"event log {self.path} is corrupt or not a SQLite database ({action}: {err})"
            ) from None

    def _append(self, events: list[Event], recorded_ms: int) -> AppendResult:
        if not self._writers.acquire(self.busy_timeout_s):
            raise ConflictError(
                f"event log {self.path} is locked: the writers of this process ahead of this "
                f"append held it for over {self.busy_timeout_s:g} s"
            )
        try:
            with self._errors("append"):
                connection = self._connection()
                connection.execute("BEGIN IMMEDIATE")
                try:
                    result = self._append_in_transaction(connection, events, recorded_ms)
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
                connection.execute("COMMIT")
        finally:
            self._writers.release()
        return result

    def _append_in_transaction(
        self, connection: sqlite3.Connection, events: list[Event], recorded_ms: int
    ) -> AppendResult:
        known: dict[str, tuple[int, str]] = {}
        ids = [event.event_id for event in events]
        for start in range(0, len(ids), LOOKUP_CHUNK):
            chunk = ids[start : start + LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            for event_id, seq, fingerprint in connection.execute(
                f"SELECT event_id, seq, fingerprint FROM events WHERE event_id IN ({marks})", chunk
            ):
                known[event_id] = (seq, fingerprint)
        seqs: list[int] = []
        duplicates: list[bool] = []
        for index, event in enumerate(events):
            if event.event_id in known:
                seq, fingerprint = known[event.event_id]
                if fingerprint != event.fingerprint():
                    raise conflicting_event(index, event, seq)
                seqs.append(seq)
                duplicates.append(True)
                continue
            stamped = event.stamped(recorded_ms)
            cursor = connection.execute(
                "INSERT INTO events (event_id, fingerprint, user_id, item_id, query, type, "
                "clicked, timestamp_ms, request_id, recorded_ms, position) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    event.event_id, event.fingerprint(), event.user_id, event.item_id,
                    event.query, str(event.type), int(event.clicked), stamped.timestamp_ms,
                    event.request_id, recorded_ms, event.position,
                ),
            )  # fmt: skip
            seqs.append(int(cursor.lastrowid or 0))
            duplicates.append(False)
        return AppendResult(tuple(seqs), tuple(duplicates))

    def _select(
        self,
        where: str,
        parameters: Sequence[object],
        limit: int | None,
        newest: bool = False,
    ) -> list[StoredEvent]:
        sql = f"SELECT {COLUMNS} FROM events WHERE {where} ORDER BY seq"
        if newest:
            sql += " DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._errors("read"):
            rows = [_stored(row) for row in self._connection().execute(sql, parameters)]
        return rows[::-1] if newest else rows

    def read_user(
        self, user_id: int, after_seq: int = 0, limit: int | None = None, newest: bool = False
    ) -> list[StoredEvent]:
        return self._select(
            f"user_id = ? AND seq > ? AND {HISTORY_ONLY}", (user_id, after_seq), limit, newest
        )

    def log_id(self) -> str:
        with self._errors("read"):
            row = (
                self._connection()
                .execute("SELECT value FROM log_meta WHERE key = 'log_id'")
                .fetchone()
            )
        return str(row[0])

    def read_range(
        self, after_seq: int, up_to_seq: int, limit: int | None = None
    ) -> list[StoredEvent]:
        return self._select("seq > ? AND seq <= ?", (after_seq, up_to_seq), limit)

    def high_watermark(self) -> int:
        with self._errors("read"):
            row = self._connection().execute("SELECT MAX(seq) FROM events").fetchone()
        return int(row[0] or 0)

    def find(self, event_ids: Sequence[str]) -> dict[str, StoredEvent]:
        found: dict[str, StoredEvent] = {}
        ids = list(event_ids)
        for start in range(0, len(ids), LOOKUP_CHUNK):
            chunk = ids[start : start + LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            for stored in self._select(f"event_id IN ({marks})", chunk, None):
                found[stored.event.event_id] = stored
        return found

    def close(self) -> None:
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()
        self._local = threading.local()
