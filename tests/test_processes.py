"""seminar.processes: the child-process wrapper tritonserver, `seminar serve`, the gateway and
Prometheus share, run on a trivial child (`python -m http.server`)."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest

from seminar.errors import ServiceError
from seminar.processes import LOOPBACK, ChildProcess, free_port, http_request, terminate


class WebServer(ChildProcess):
    """`python -m http.server` on a free port, serving `root`."""

    name: ClassVar[str] = "http.server"

    def __init__(self, root: Path, *extra: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root, self.extra, self.port = root, extra, free_port()

    def command(self) -> list[str]:
        return [
            sys.executable, "-u", "-m", "http.server", str(self.port),
            "--bind", LOOPBACK, "--directory", str(self.root), *self.extra,
        ]  # fmt: skip

    def is_ready(self) -> bool:
        return http_request(f"http://{LOOPBACK}:{self.port}/")[0] == 200


class ReadyError(ServiceError):
    pass


class NeverReady(WebServer):
    name: ClassVar[str] = "never ready"
    start_error: ClassVar[type[Exception]] = ReadyError
    poll_s: ClassVar[float] = 0.05

    def is_ready(self) -> bool:
        return False


def test_free_port_can_be_bound() -> None:
    with socket.socket() as s:
        s.bind((LOOPBACK, free_port()))


def test_start_waits_until_ready_and_stop_ends_the_child(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("hello")
    server = WebServer(tmp_path, log_path=tmp_path / "web.log")
    with server:
        assert server.is_alive() and server.pid is not None
        status, body = http_request(f"http://{LOOPBACK}:{server.port}/hello.txt")
        assert (status, body) == (200, "hello")
        pid = server.pid
    assert not server.is_alive() and server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped and reaped
    assert "GET /hello.txt" in server.log_text(), "the child's output goes to its log"


def test_a_child_that_exits_fails_the_start_fast_with_its_log_tail(tmp_path: Path) -> None:
    server = WebServer(tmp_path, "--no-such-flag", log_path=tmp_path / "web.log")
    started = time.monotonic()
    with pytest.raises(ServiceError, match=r"(?s)http\.server exited with code 2; log .*--no-such"):
        server.start()
    assert time.monotonic() - started < 20, "failed fast, not at the startup timeout"
    assert not server.is_alive()


def test_a_child_never_ready_is_stopped_at_the_timeout(tmp_path: Path) -> None:
    server = NeverReady(tmp_path, startup_timeout_s=0.5)
    with pytest.raises(ReadyError, match=r"never ready not ready after 0 s; log "):
        server.start()
    assert not server.is_alive(), "a failed start stops the child"
    assert server.stop() is None, "stopping twice is harmless"


def test_stop_falls_back_to_sigkill(tmp_path: Path) -> None:
    """A child that ignores SIGTERM is killed after the stop timeout."""

    class Stubborn(ChildProcess):
        name: ClassVar[str] = "stubborn"

        def command(self) -> list[str]:
            code = (
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('up', flush=True); time.sleep(60)"
            )
            return [sys.executable, "-c", code]

        def is_ready(self) -> bool:
            return "up" in self.log_tail()

    child = Stubborn(log_path=tmp_path / "stubborn.log", stop_timeout_s=0.5)
    child.start()
    started = time.monotonic()
    assert child.stop() == -signal.SIGKILL
    assert time.monotonic() - started < 10


def test_terminate_ignores_a_missing_or_finished_child() -> None:
    terminate(None, 1.0)
