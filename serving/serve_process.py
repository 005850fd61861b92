"""Run `seminar serve` as a child process: for tests, the demo and the benchmarks.

    with ServeProcess(repo) as serve:
        client = tritonclient.grpc.InferenceServerClient(serve.grpc_url)   # the proxy
        serve.status()["served"]

It picks free loopback ports and is ready when /ready answers 200; starting, failing fast and
stopping are `seminar.processes.ChildProcess`'s.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import ClassVar

from seminar.errors import ServiceError
from seminar.processes import LOOPBACK, ChildProcess, free_port, http_request


class ServeProcess(ChildProcess):
    """A `seminar serve` subprocess on free loopback ports."""

    name: ClassVar[str] = "seminar serve"

    def __init__(
        self,
        repo: Path,
        *extra_args: str,
        admin_key_file: Path | None = None,
        console_path: Path | None = None,
        startup_timeout_s: float = 240.0,
    ) -> None:
        super().__init__(console_path, startup_timeout_s=startup_timeout_s, stop_timeout_s=60.0)
        self.repo = Path(repo)
        self.extra_args = extra_args
        self.admin_key_file = admin_key_file
        self.grpc_port, self.http_port = free_port(), free_port()
        self.metrics_port, self.health_port = free_port(), free_port()

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

    # ---- the supervisor's own endpoints --------------------------------------------------------
    def is_ready(self) -> bool:
        return http_request(self.health_url + "/ready")[0] == 200

    def status(self) -> dict:
        code, body = http_request(self.health_url + "/status")
        if code != 200:
            raise ServiceError(f"/status answered {code}: {body}")
        return json.loads(body)

    def supervisor_metrics(self) -> str:
        return http_request(self.health_url + "/metrics")[1]
