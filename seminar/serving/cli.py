"""`seminar serve` and `seminar bench serving`.

Heavy imports (tritonclient, torch) live inside the command bodies so `seminar --help` is fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from seminar.constants import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    ENSEMBLE_MODEL,
)


def serve(
    repo: Path = typer.Option(
        Path("model_repository"), "--repo", help="Model repository written by `seminar build`."
    ),
    grpc_port: int = typer.Option(
        DEFAULT_GRPC_PORT, help="gRPC port on 127.0.0.1 (0 = free port)."
    ),
    http_port: int = typer.Option(
        DEFAULT_HTTP_PORT, help="HTTP port on 127.0.0.1 (0 = free port)."
    ),
    metrics_port: int = typer.Option(
        DEFAULT_METRICS_PORT, help="Prometheus /metrics port on 127.0.0.1 (0 = free port)."
    ),
    model_control: str = typer.Option(
        "none",
        help="`none`: load every model at start. `explicit`: load/unload versions at run time "
        "through the repository API (all models are still loaded at start).",
    ),
    wait_model: list[str] = typer.Option(
        [ENSEMBLE_MODEL], help="Model(s) that must be READY before the server counts as up."
    ),
    startup_timeout: float = typer.Option(180.0, help="Seconds to wait for readiness."),
    log_verbose: int = typer.Option(0, help="tritonserver --log-verbose level."),
) -> None:
    """Run the bundled tritonserver (nvidia-pytriton) on loopback over a model repository.

    Waits until the ensemble is ready, then stays in the foreground until SIGINT or SIGTERM, which it forwards to tritonserver so in-flight requests finish before it exits.

    Example: seminar serve --repo model_repository --grpc-port 8001 --http-port 8000 --metrics-port 8002
    """
    import signal

    from seminar.serving.triton import ModelControl, TritonConfig, TritonError, TritonServer

    try:
        control = ModelControl(model_control)
    except ValueError:
        typer.echo(
            f"--model-control must be one of: none, explicit (got {model_control!r}).", err=True
        )
        raise typer.Exit(code=2) from None
    try:
        config = TritonConfig(
            repo=repo,
            grpc_port=grpc_port,
            http_port=http_port,
            metrics_port=metrics_port,
            model_control=control,
            load_models=("*",) if control is ModelControl.EXPLICIT else (),
            wait_models=tuple(wait_model),
            startup_timeout_s=startup_timeout,
            log_verbose=log_verbose,
        )
    except ValueError as e:
        typer.echo(f"Invalid option: {e}.", err=True)
        raise typer.Exit(code=2) from None

    server = TritonServer(config)
    stop_signal: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stop_signal.append(signum)
        server.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.start()
        except TritonError as e:
            typer.echo(f"tritonserver failed to start: {e}", err=True)
            raise typer.Exit(code=1) from None
        if stop_signal:  # a signal arrived during start-up
            raise typer.Exit(code=0)
        typer.echo(
            f"tritonserver ready: grpc {server.grpc_url}  http {server.http_url}  "
            f"metrics {server.metrics_url}  (model control {control.value}, log {server.log_path})",
            err=True,
        )
        code = server.wait()
        if not stop_signal and code != 0:
            typer.echo(
                f"tritonserver exited with code {code}; log tail:\n{server.log_tail()}", err=True
            )
            raise typer.Exit(code=1)
        typer.echo("tritonserver stopped.", err=True)
    finally:
        server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)


def bench_serving(
    run: Path = typer.Option(
        ..., help="Trained run directory (checkpoint.safetensors + config.json)."
    ),
    data: Path = typer.Option(
        Path("data/movielens"), help="Prepared MovieLens dataset the run was trained on."
    ),
    work: Path = typer.Option(
        Path("runs/serving-bench"),
        help="Scratch folder for the bench's dataset (+ SYNTHETIC long users) and repository; "
        "reused when its inputs are unchanged.",
    ),
    out: Path = typer.Option(
        Path("reports/serving"), help="Report path without suffix: writes OUT.md and OUT.json."
    ),
    candidates: int = typer.Option(100, help="Candidates per request (rows of the batch)."),
    requests: int = typer.Option(200, help="Timed requests per cell."),
    warmup: int = typer.Option(20, help="Untimed warm-up requests per cell."),
    concurrency: int = typer.Option(4, help="Client threads for the concurrent cells."),
    seed: int = typer.Option(0, help="Seed of the candidates and the SYNTHETIC users."),
) -> None:
    """Ensemble latency vs in-process vs a trivial model; writes reports/serving.md and .json.

    Builds a repository from RUN over DATA plus SYNTHETIC users with 1k and 10k events, starts the real tritonserver with it and a trivial Python-backend model (the floor), and measures p50/p90/p99 per history length, sequentially and at concurrency 4, next to the same computation in-process. Triton's per-model statistics show where the time goes.
    """
    import json
    import shlex
    import sys

    from seminar.serving.bench import ServingBenchConfig, markdown, run_bench

    for path, what in ((run / "checkpoint.safetensors", "--run"), (data / "meta.json", "--data")):
        if not path.is_file():
            typer.echo(f"{what}: {path} does not exist.", err=True)
            raise typer.Exit(code=2)
    try:
        cfg = ServingBenchConfig(
            candidates=candidates,
            requests=requests,
            warmup=warmup,
            concurrency=concurrency,
            seed=seed,
        )
    except ValueError as e:
        typer.echo(f"Invalid option: {e}.", err=True)
        raise typer.Exit(code=2) from None
    command = "seminar bench serving " + shlex.join(sys.argv[3:])

    def progress(message: str) -> None:
        typer.echo(message, err=True)

    try:
        report = run_bench(run, data, work, cfg, command, progress)
    except RuntimeError as e:
        typer.echo(f"bench serving failed: {e}", err=True)
        raise typer.Exit(code=1) from None
    text = markdown(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    typer.echo(text)
    typer.echo(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}", err=True)
