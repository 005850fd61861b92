"""Run `seminar gateway` as a child process: for tests, the demo and `seminar perf`.

    with GatewayProcess(config_path, triton_url="127.0.0.1:8001", catalog=repo) as gw:
        rank_via_gateway(gw.address, "42", "", [1, 2, 3])

It picks free loopback ports and is ready when grpc.health.v1 reports SERVING (Triton reachable
and every weighted arm READY; `wait_serving=False` waits only until health answers at all);
starting, failing fast and stopping are `seminar.processes.ChildProcess`'s.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import ClassVar

from seminar.processes import LOOPBACK, ChildProcess, free_port


class GatewayProcess(ChildProcess):
    """A `seminar gateway` subprocess on free loopback ports."""

    name: ClassVar[str] = "gateway"
    poll_s: ClassVar[float] = 0.1

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
        event_log: str | None = None,
    ) -> None:
        super().__init__(log_path, startup_timeout_s=startup_timeout_s, stop_timeout_s=10.0)
        self.config_path = Path(config_path)
        self.triton_url = triton_url
        self.catalog = catalog
        self.port = port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.wait_serving = wait_serving
        self.event_log = event_log  # a seminar.events URL: the gateway serves Record over it

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"

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
        if self.event_log is not None:
            cmd += ["--event-log", self.event_log]
        return cmd

    def awaited(self) -> str:
        return "SERVING" if self.wait_serving else "answering health checks"

    def is_ready(self) -> bool:
        """Health answers SERVING (or, with `wait_serving=False`, answers at all: NOT_SERVING
        is expected then)."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(self.address) as channel:
            try:
                status = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=0.5
                )
            except grpc.RpcError:
                return False
        return status.status == health_pb2.HealthCheckResponse.SERVING or not self.wait_serving

    def reload(self) -> None:
        """Ask for a config reload with SIGHUP (the file watcher also notices changes)."""
        self.send_signal(signal.SIGHUP)
