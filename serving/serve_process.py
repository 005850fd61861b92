"""Run `seminar serve` as a child process: for tests, the demo and the benchmarks.

    with ServeProcess(repo) as serve:
        client = tritonclient.grpc.InferenceServerClient(serve.grpc_url)   # the proxy
        serve.status()["served"]

It picks free loopback ports, waits until /ready answers 200, fails fast with the console tail
if the process dies, and always stops it (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from seminar.errors import ServiceError
from seminar.serving.triton import LOOPBACK, free_port, terminate


class ServeProcess:
    """A `seminar serve` subprocess on free loopback ports."""

    def __init__(
        self,
        repo: Path,
        *extra_args: str,
        admin_key_file: Path | None = None,
        console_path: Path | None = None,
        startup_timeout_s: float = 240.0,
    ) -> None:
        self.repo = Path(repo)
        self.extra_args = extra_args
        self.admin_key_file = admin_key_file
        self.grpc_port, self.http_port = free_port(), free_port()
        self.metrics_port, self.health_port = free_port(), free_port()
        self.console_path = console_path or Path(
            tempfile.mkstemp(prefix="seminar-serve-", suffix=".log")[1]
        )
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    # ---- addresses -----------------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"

    @property
    def health_url(self) -> str:
        return f"http://{LOOPBACK}:{self.health_port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "seminar.cli", "serve",
            "--repo", str(self.repo),
            "--grpc-port", str(self.grpc_port),
            "--http-port", str(self.http_port),
            "--metrics-port", str(self.metrics_port),
            "--health-port", str(self.health_port),
        ]  # fmt: skip
        if self.admin_key_file is not None:
            cmd += ["--admin-key-file", str(self.admin_key_file)]
        return [*cmd, *self.extra_args]

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> ServeProcess:
        with open(self.console_path, "wb") as console:
            self._proc = subprocess.Popen(
                self.command(), stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            self.wait_ready(self.startup_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float) -> float:
        """Block until /ready answers 200; the seconds waited. Raises ServiceError."""
        started = time.monotonic()
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = self._proc.returncode if self._proc else None
                raise ServiceError(f"seminar serve exited with code {code}:\n{self.console()}")
            if self.ready():
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise ServiceError(
                    f"seminar serve not ready after {timeout_s:.0f} s:\n{self.console()}"
                )
            time.sleep(0.2)

    def ready(self) -> bool:
        return self._get("/ready")[0] == 200

    def status(self) -> dict:
        code, body = self._get("/status")
        if code != 200:
            raise ServiceError(f"/status answered {code}: {body}")
        return json.loads(body)

    def supervisor_metrics(self) -> str:
        return self._get("/metrics")[1]

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.health_url + path, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")
        except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
            return 0, str(err)

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`; the exit code."""
        proc, self._proc = self._proc, None
        terminate(proc, timeout_s)
        return None if proc is None else proc.returncode

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def console(self, lines: int = 40) -> str:
        try:
            text = self.console_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
