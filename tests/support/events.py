"""Event-log fixtures: the same tests run against a real SQLite file and a real redis-server."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from seminar.events import Event, EventLog, EventType, open_event_log
from seminar.events.redis_server import REDIS_SERVER, RedisServer

BACKENDS = ("sqlite", "redis")


def needs_redis_server() -> None:
    if shutil.which(REDIS_SERVER) is None:
        pytest.skip(
            f"{REDIS_SERVER} not found on PATH (Debian package redis-server: make system-tools)"
        )


def make_events(
    count: int, prefix: str = "e", users: int = 3, start: int = 0, type: EventType = EventType.REC
) -> list[Event]:
    return [
        Event(
            event_id=f"{prefix}{start + index}",
            user_id=(start + index) % users,
            item_id=100 + start + index,
            query="funny" if type is EventType.SEARCH else "",
            type=type,
            clicked=index % 2 == 0,
            request_id=f"rank-{index}",
        )
        for index in range(count)
    ]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    needs_redis_server()
    with RedisServer(tmp_path / "redis", log_path=tmp_path / "redis.log") as server:
        yield server


@pytest.fixture(params=BACKENDS)
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty event log of each kind (a redis-server started for the test)."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'events.db'}"
    return request.getfixturevalue("redis_server").url


@pytest.fixture
def open_log(log_url: str) -> Iterator[Callable[[], EventLog]]:
    """Opens another handle on the test's log (a second writer); all are closed at the end."""
    opened: list[EventLog] = []

    def open_one() -> EventLog:
        opened.append(open_event_log(log_url))
        return opened[-1]

    yield open_one
    for log in opened:
        log.close()


@pytest.fixture
def event_log(open_log: Callable[[], EventLog]) -> EventLog:
    return open_log()
