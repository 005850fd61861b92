"""`RedisEventLog`: the event log in a redis-server, for several gateway replicas.

Keys, under one prefix (default "seminar:events"):

    PREFIX:seq           the last sequence number given (INCR)
    PREFIX:ids           hash event_id -> "SEQ:FINGERPRINT" (what makes a retry a duplicate)
    PREFIX:all           stream of every event, entry id "SEQ-0" (compaction reads ranges)
    PREFIX:user:USER_ID  stream of one user's history events, entry id "SEQ-0" (serving reads
                         the tail); impressions are outcome data, never history, so they are
                         only in PREFIX:all and a tail's cap counts history events only

One batch is one Lua script: Redis runs it alone, so the duplicate checks, the sequence numbers
and the writes of a batch are atomic and in commit order (rule 3 of the contract in
seminar.events), and the script checks every event before it writes any. Its writes reach the
AOF as one MULTI/EXEC block, which Redis replays whole or (a torn tail) not at all.

Durability is the server's: the log refuses a server that does not run with appendonly yes and
appendfsync always (the reply is sent after the AOF is fsynced); `allow_everysec=True` accepts
appendfsync everysec, which may lose the last second of acknowledged events to a power cut or
a kernel crash (docs/deploy.md, "The online event log").
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from typing import ClassVar

from seminar.errors import ServiceError
from seminar.events.event import Event, EventLimits, EventType, StoredEvent
from seminar.events.log import AppendResult, EventLog, conflicting_event

DEFAULT_PREFIX = "seminar:events"
FIELDS = 10  # values per event in the script's ARGV, in the order `_append` lists them

# KEYS: seq, ids, all, then one user stream per event. ARGV: recorded_ms, then FIELDS per event.
# Returns {seq, duplicate} per event, or {-1, index, stored_seq} for an id stored with other
# content (nothing written then).
APPEND_SCRIPT = """
local count = #KEYS - 3
local recorded_ms = ARGV[1]
local answer = {}
for i = 1, count do
  local base = 1 + (i - 1) * 10
  local stored = redis.call('HGET', KEYS[2], ARGV[base + 1])
  if stored then
    local colon = string.find(stored, ':', 1, true)
    local seq = tonumber(string.sub(stored, 1, colon - 1))
    if string.sub(stored, colon + 1) ~= ARGV[base + 2] then
      return {-1, i - 1, seq}
    end
    answer[2 * i - 1] = seq
    answer[2 * i] = 1
  end
end
for i = 1, count do
  if not answer[2 * i] then
    local base = 1 + (i - 1) * 10
    local seq = redis.call('INCR', KEYS[1])
    local id = seq .. '-0'
    local fields = {
      'event_id', ARGV[base + 1], 'user_id', ARGV[base + 3], 'item_id', ARGV[base + 4],
      'query', ARGV[base + 5], 'type', ARGV[base + 6], 'clicked', ARGV[base + 7],
      'timestamp_ms', ARGV[base + 8], 'request_id', ARGV[base + 9],
      'recorded_ms', recorded_ms, 'position', ARGV[base + 10],
    }
    redis.call('XADD', KEYS[3], id, unpack(fields))
    if ARGV[base + 6] ~= 'impression' then
      redis.call('XADD', KEYS[3 + i], id, unpack(fields))
    end
    redis.call('HSET', KEYS[2], ARGV[base + 1], seq .. ':' .. ARGV[base + 2])
    answer[2 * i - 1] = seq
    answer[2 * i] = 0
  end
end
return answer
"""


def _stored(entry_id: bytes | str, fields: dict) -> StoredEvent:
    values = {
        (key.decode() if isinstance(key, bytes) else key): (
            value.decode() if isinstance(value, bytes) else value
        )
        for key, value in fields.items()
    }
    seq = int((entry_id.decode() if isinstance(entry_id, bytes) else entry_id).split("-")[0])
    event = Event(
        event_id=values["event_id"],
        user_id=int(values["user_id"]),
        item_id=int(values["item_id"]),
        query=values["query"],
        type=EventType(values["type"]),
        clicked=values["clicked"] == "1",
        timestamp_ms=int(values["timestamp_ms"]),
        request_id=values["request_id"],
        position=int(values.get("position", 0)),  # absent in events stored before positions
    )
    return StoredEvent(seq, int(values["recorded_ms"]), event)


class RedisEventLog(EventLog):
    """The event log in a redis-server reached at `url` (redis://HOST:PORT[/DB])."""

    kind: ClassVar[str] = "redis"

    def __init__(
        self,
        url: str,
        limits: EventLimits | None = None,
        prefix: str = DEFAULT_PREFIX,
        allow_everysec: bool = False,
        timeout_s: float = 5.0,
    ) -> None:
        import redis

        super().__init__(limits)
        self.url = url
        self.prefix = prefix
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._script = self._client.register_script(APPEND_SCRIPT)
        with self._errors("check the server's durability settings"):
            settings = {
                **self._client.config_get("appendonly"),
                **self._client.config_get("appendfsync"),
            }
        accepted = {"always", "everysec"} if allow_everysec else {"always"}
        if settings.get("appendonly") != "yes" or settings.get("appendfsync") not in accepted:
            self.close()
            raise ServiceError(
                f"redis at {url} runs with appendonly {settings.get('appendonly')!r}, "
                f"appendfsync {settings.get('appendfsync')!r}: an acknowledged event could be "
                "lost; start it with --appendonly yes --appendfsync always"
            )

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        import redis

        try:
            yield
        except redis.exceptions.RedisError as err:
            raise ServiceError(f"event log redis at {self.url}: cannot {action}: {err}") from None

    def _key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    def _user_key(self, user_id: int) -> str:
        return f"{self.prefix}:user:{user_id}"

    def _append(self, events: list[Event], recorded_ms: int) -> AppendResult:
        keys = [self._key("seq"), self._key("ids"), self._key("all")]
        keys += [self._user_key(event.user_id) for event in events]
        arguments: list[object] = [recorded_ms]
        for event in events:
            arguments += [
                event.event_id, event.fingerprint(), event.user_id, event.item_id, event.query,
                str(event.type), int(event.clicked), event.stamped(recorded_ms).timestamp_ms,
                event.request_id, event.position,
            ]  # fmt: skip
        with self._errors("append"):
            answer = [int(value) for value in self._script(keys=keys, args=arguments)]
        if answer[0] == -1:
            raise conflicting_event(answer[1], events[answer[1]], answer[2])
        return AppendResult(tuple(answer[0::2]), tuple(bool(flag) for flag in answer[1::2]))

    def _range(
        self, key: str, after_seq: int, up_to_seq: int | None, limit: int | None
    ) -> list[StoredEvent]:
        high = "+" if up_to_seq is None else f"{up_to_seq}-0"
        with self._errors("read"):
            entries = self._client.xrange(key, f"{after_seq + 1}-0", high, count=limit)
        return [_stored(entry_id, fields) for entry_id, fields in entries]

    def read_user(
        self, user_id: int, after_seq: int = 0, limit: int | None = None, newest: bool = False
    ) -> list[StoredEvent]:
        if not newest:
            return self._range(self._user_key(user_id), after_seq, None, limit)
        with self._errors("read"):
            entries = self._client.xrevrange(
                self._user_key(user_id), "+", f"{after_seq + 1}-0", count=limit
            )
        return [_stored(entry_id, fields) for entry_id, fields in reversed(entries)]

    def log_id(self) -> str:
        with self._errors("read"):
            # SET NX: the first process to ask draws the id, every later one reads it.
            self._client.set(self._key("log_id"), str(uuid.uuid4()), nx=True)
            value = self._client.get(self._key("log_id"))
        return value.decode() if isinstance(value, bytes) else str(value)

    def read_range(
        self, after_seq: int, up_to_seq: int, limit: int | None = None
    ) -> list[StoredEvent]:
        if up_to_seq <= after_seq:
            return []
        return self._range(self._key("all"), after_seq, up_to_seq, limit)

    def high_watermark(self) -> int:
        with self._errors("read"):
            value = self._client.get(self._key("seq"))
        return int(value or 0)

    def find(self, event_ids: Sequence[str]) -> dict[str, StoredEvent]:
        ids = list(event_ids)
        if not ids:
            return {}
        with self._errors("read"):
            stored = self._client.hmget(self._key("ids"), ids)
            pipeline = self._client.pipeline(transaction=False)
            for value in stored:
                if value is not None:
                    seq = value.decode().split(":")[0]
                    pipeline.xrange(self._key("all"), f"{seq}-0", f"{seq}-0")
            entries = pipeline.execute()
        return {
            event.event.event_id: event
            for found in entries
            for event in (_stored(entry_id, fields) for entry_id, fields in found)
        }

    def close(self) -> None:
        self._client.close()
