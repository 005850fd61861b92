"""Child processes of the stack (tritonserver, `seminar serve`, the gateway, Prometheus).

`ChildProcess` is what they share: start the command with its output in a log file, wait until
it is ready (failing fast, with the log's tail, if it exits meanwhile), stop it with SIGTERM
then SIGKILL, and always stop it when used as a context manager. A subclass says what to run
(`command`) and when it is ready (`is_ready`, one probe):

    class Web(ChildProcess):
        name = "http.server"

        def command(self) -> list[str]:
            return [sys.executable, "-m", "http.server", str(self.port)]

        def is_ready(self) -> bool:
            return http_status(f"http://127.0.0.1:{self.port}/") == 200

    with Web() as web:
        ...
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from seminar.errors import ServiceError

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A loopback TCP port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def terminate(proc: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    """SIGTERM (graceful: in-flight work finishes), then SIGKILL after `timeout_s`.

    Kills the whole process group when the child leads one (start_new_session=True), so that
    tritonserver's Python-backend stubs go with it.
    """
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait()


def interrupt_on_stop_signals() -> None:
    """Make SIGINT and SIGTERM raise KeyboardInterrupt in this process's main thread, so a
    long-running command stops through its own clean-up path on either, whatever it inherited:
    a command started in the background of a script inherits SIGINT ignored, and supervisors
    (Kubernetes, CI runners, systemd) stop processes with SIGTERM."""
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, signal.default_int_handler)  # raises KeyboardInterrupt


def http_request(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 5.0,
) -> tuple[int, str]:
    """(status, body) of an HTTP call; status 0 (and the reason as body) when nothing answered."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
        return 0, str(err)


def file_tail(path: Path, lines: int) -> str:
    """The last `lines` lines of a text file ("" when it cannot be read)."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class ChildProcess:
    """One child process with its output in `log_path`; see the module docstring."""

    name: ClassVar[str] = "process"  # what messages call it
    # The error a failed start raises; subclasses name their own kind of ServiceError.
    start_error: ClassVar[type[Exception]] = ServiceError
    poll_s: ClassVar[float] = 0.2  # between readiness probes
    # Own process group: the child's children can be killed with it, and Ctrl-C in a terminal
    # reaches only us.
    new_session: ClassVar[bool] = False

    def __init__(
        self,
        log_path: Path | None = None,
        startup_timeout_s: float = 30.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"{self.name.replace(' ', '-')}-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = Path(log_path)
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    # ---- what a subclass says ------------------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """The child's environment (None: this process's)."""
        return None

    def is_ready(self) -> bool:
        """One readiness probe of a running child."""
        raise NotImplementedError

    def awaited(self) -> str:
        """What `wait_ready` waits for, as messages say it ("not <awaited> after 30 s")."""
        return "ready"

    # ---- lifecycle -----------------------------------------------------------------------------
    def launch(self) -> None:
        """Start the process without waiting for it (see `start`)."""
        if self._proc is not None:
            raise self.start_error(f"{self.name} already started")
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                self.command(),
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=self.new_session,
            )

    def start(self) -> Self:
        """Launch and wait until ready; a failed start stops the process and raises."""
        self.launch()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float | None = None) -> float:
        """Block until `is_ready`; the seconds waited."""
        timeout_s = self.startup_timeout_s if timeout_s is None else timeout_s
        return self.wait_until(self.is_ready, timeout_s)

    def wait_until(
        self, probe: Callable[[], bool], timeout_s: float, awaited: Callable[[], str] | None = None
    ) -> float:
        """Probe every `poll_s` until `probe()` is true; the seconds waited. Raises
        `start_error` with the log's tail when the process exits first or `timeout_s` passes
        (`awaited()`, by default `self.awaited()`, says what was being waited for)."""
        awaited = awaited or self.awaited
        started = time.monotonic()
        while True:
            self.check_alive()
            if probe():
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise self.start_error(
                    f"{self.name} not {awaited()} after {timeout_s:.0f} s; log "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(self.poll_s)

    def check_alive(self) -> None:
        """Raise `start_error`, with the log's tail, unless the process is running."""
        if not self.is_alive():
            code = self._proc.returncode if self._proc is not None else None
            raise self.start_error(
                f"{self.name} exited with code {code}; log {self.log_path}:\n{self.log_tail()}"
            )

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`; the exit code (None if never started)."""
        proc, self._proc = self._proc, None
        terminate(proc, self.stop_timeout_s if timeout_s is None else timeout_s)
        return None if proc is None else proc.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- state ---------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def send_signal(self, sig: int) -> None:
        if self.is_alive():
            self._proc.send_signal(sig)  # type: ignore[union-attr]

    def log_tail(self, lines: int = 40) -> str:
        return file_tail(self.log_path, lines)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")
