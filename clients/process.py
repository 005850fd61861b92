"""Run `seminar gateway` as a child process: for tests, the demo and `seminar perf`.

    with GatewayProcess(config_path, triton_url="127.0.0.1:8001", catalog=repo) as gw:
        rank_via_gateway(gw.address, "42", "", [1, 2, 3])

It picks free loopback ports, waits until grpc.health.v1 reports SERVING (Triton reachable and
every weighted arm READY; `wait_serving=False` waits only until health answers at all), fails
fast with the log tail if the process dies, and always stops it (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from seminar.errors import ServiceError
from seminar.serving.triton import LOOPBACK, free_port, terminate

__all__ = ["LOOPBACK", "GatewayProcess", "free_port"]


class GatewayProcess:
    """A `seminar gateway` subprocess on free loopback ports."""

    def __init__(
        self,
        config_path: Path,
        triton_url: str,
        catalog: Path | None = None,
        port: int = 0,
        metrics_port: int = 0,
        log_path: Path | None = None,
        startup_timeout_s: float = 30.0,
        wait_serving: bool = True,
    ) -> None:
        self.config_path = Path(config_path)
        self.triton_url = triton_url
        self.catalog = catalog
        self.port = port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="gateway-", suffix=".log")[1])
        self.startup_timeout_s = startup_timeout_s
        self.wait_serving = wait_serving
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "seminar.cli", "gateway",
            "--config", str(self.config_path),
            "--triton", self.triton_url,
            "--port", str(self.port),
            "--metrics-port", str(self.metrics_port),
        ]  # fmt: skip
        if self.catalog is not None:
            cmd += ["--catalog", str(self.catalog)]
        return cmd

    def start(self) -> GatewayProcess:
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            self._wait_serving()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_serving(self) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + self.startup_timeout_s
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self._proc is None or self._proc.poll() is not None:
                    raise ServiceError(
                        f"gateway exited with code {self._proc and self._proc.returncode}:\n"
                        f"{self.log_tail()}"
                    )
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
                    if status.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                    if not self.wait_serving:  # up and answering, NOT_SERVING is expected
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    wanted = "SERVING" if self.wait_serving else "answering health checks"
                    raise ServiceError(
                        f"gateway not {wanted} after {self.startup_timeout_s:.0f} s:\n"
                        f"{self.log_tail()}"
                    )
                time.sleep(0.1)

    def reload(self) -> None:
        """Ask for a config reload with SIGHUP (the file watcher also notices changes)."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGHUP)

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        terminate(proc, timeout_s)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
