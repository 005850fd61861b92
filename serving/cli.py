"""`seminar serve` and `seminar bench serving`.

Heavy imports (tritonclient, torch) live inside the command bodies so `seminar --help` is fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from seminar.contract import (
    ADMIN_KEY_HEADER,
    DEFAULT_GRPC_PORT,
    DEFAULT_HEALTH_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
)
from seminar.errors import cli_guard, reading_options
from seminar.processes import LOOPBACK
from seminar.serving.shield import ShieldConfig


@cli_guard
def serve(
    repo: Path = typer.Option(
        Path("model_repository"), "--repo", help="Model repository written by `seminar build`."
    ),
    host: str = typer.Option(
        LOOPBACK,
        help="Address of the public ports (0.0.0.0 inside a container). Triton's own gRPC "
        "port always stays on loopback behind the proxy.",
    ),
    grpc_port: int = typer.Option(
        DEFAULT_GRPC_PORT,
        help="KServe v2 gRPC inference port (the proxy that never cancels inside Triton; "
        "0 = free port).",
    ),
    http_port: int = typer.Option(DEFAULT_HTTP_PORT, help="Triton's HTTP port (0 = free port)."),
    metrics_port: int = typer.Option(
        DEFAULT_METRICS_PORT, help="Triton's Prometheus /metrics port (0 = free port)."
    ),
    health_port: int = typer.Option(
        DEFAULT_HEALTH_PORT,
        help="This supervisor's HTTP port: /live, /ready, /status, /metrics (0 = free port).",
    ),
    admin_key_file: Path | None = typer.Option(
        None,
        help="File holding the key of Triton's model-repository API (header "
        f"`{ADMIN_KEY_HEADER}`); created with a random key if missing. Without it, only this "
        "process can load or unload models.",
    ),
    tritonserver: Path | None = typer.Option(
        None, help="Another tritonserver binary (e.g. NGC's); needs --backend-directory."
    ),
    backend_directory: Path | None = typer.Option(
        None, help="The backends of --tritonserver (default: nvidia-pytriton's Python backend)."
    ),
    shm_default_bytes: int = typer.Option(
        4 * 1024 * 1024, help="Python-backend shared memory per model instance, in bytes."
    ),
    max_inflight: int = typer.Option(
        ShieldConfig.max_inflight,
        help="gRPC calls in flight to Triton, abandoned ones included; beyond, RESOURCE_EXHAUSTED.",
    ),
    wait_model: list[str] = typer.Option(
        [], help="Model(s) that must be served, else the start fails (repeatable)."
    ),
    startup_timeout: float = typer.Option(180.0, help="Seconds to start and load everything."),
    log_verbose: int = typer.Option(0, help="tritonserver --log-verbose level."),
    event_log: str | None = typer.Option(
        None,
        help="Online event log (sqlite://PATH or redis://HOST:PORT, the one `seminar gateway --event-log` records into): every ranking scores the user's events recorded after the version was built.",
    ),
) -> None:
    """Serve a model repository with tritonserver under a supervisor that keeps it up.

    Loads every version that loads (a failing version is left out and named with its file; `seminar` falls back to the newest complete version), restarts tritonserver if it dies, resumes stopped model processes and reloads dead ones, and keeps the model-repository API locked with an admin key. Clients use the gRPC port (KServe v2; calls are never cancelled inside Triton, whose 2.51 release crashes on cancellations) or Triton's HTTP port. Runs in the foreground until SIGINT or SIGTERM.

    Example: seminar serve --repo model_repository --grpc-port 8001 --http-port 8000 --metrics-port 8002 --health-port 8003
    """
    import logging

    from seminar.events import open_event_log
    from seminar.serving.supervisor import ServeConfig, serve_forever

    if event_log is not None:
        open_event_log(event_log).close()  # a bad URL or an unreachable log fails here, once
    with reading_options():
        config = ServeConfig(
            shield=ShieldConfig(max_inflight=max_inflight),
            repo=repo,
            host=host,
            grpc_port=grpc_port,
            http_port=http_port,
            metrics_port=metrics_port,
            health_port=health_port,
            admin_key_file=admin_key_file,
            tritonserver=tritonserver,
            backend_directory=backend_directory,
            shm_default_bytes=shm_default_bytes,
            wait_models=tuple(wait_model),
            startup_timeout_s=startup_timeout,
            log_verbose=log_verbose,
            event_log=event_log,
        )
    logging.basicConfig(level=logging.INFO, format="seminar serve: %(message)s")

    def announce(supervisor) -> None:
        server = supervisor.server
        shown = LOOPBACK if host in ("0.0.0.0", "::") else host
        typer.echo(
            f"seminar serve ready: grpc {shown}:{supervisor.grpc_port}  "
            f"http {server.http_url}  metrics {server.metrics_url}  "
            f"health http://{shown}:{supervisor.health_port}/ready  "
            f"(tritonserver pid {server.pid}, log {server.log_path})",
            err=True,
        )

    serve_forever(config, announce)
    typer.echo("seminar serve stopped.", err=True)
