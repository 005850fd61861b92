"""`RedisServer`: a redis-server child process configured for the event log.

Loopback only, its data in one folder, appendonly yes with appendfsync always (an acknowledged
write is fsynced to the AOF before the reply), no RDB snapshots. Started by the tests and by
`make demo`; a deployment runs its own (docs/deploy.md, "The online event log").

    with RedisServer(data_dir) as server:
        log = RedisEventLog(server.url)
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import ClassVar

from seminar.errors import ServiceError
from seminar.processes import LOOPBACK, ChildProcess, free_port

REDIS_SERVER = "redis-server"  # Debian's package of the same name (`make system-tools`)


def redis_server_binary() -> str:
    """The redis-server on PATH; a ServiceError saying how to install it when there is none."""
    found = shutil.which(REDIS_SERVER)
    if found is None:
        raise ServiceError(
            f"{REDIS_SERVER} not found on PATH: install Debian's redis-server package "
            "(make system-tools)"
        )
    return found


class RedisServer(ChildProcess):
    """redis-server on a loopback port with its AOF in `data_dir`; same port and folder on a
    restart, so a restarted server replays what the killed one acknowledged."""

    name: ClassVar[str] = "redis-server"
    poll_s: ClassVar[float] = 0.05

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        appendfsync: str = "always",
        log_path: Path | None = None,
        startup_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(log_path, startup_timeout_s=startup_timeout_s, stop_timeout_s=10.0)
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendfsync = appendfsync

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def command(self) -> list[str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return [
            redis_server_binary(),
            "--bind", LOOPBACK,
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip

    def is_ready(self) -> bool:
        """PING answers PONG (redis answers LOADING while it replays the AOF)."""
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=0.5) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(64).startswith(b"+PONG")
        except OSError:
            return False
