"""`seminar gateway | client | load | perf | observe`: the serving edge of SEMINAR.

Heavy imports (grpc, tritonclient, numpy) live inside the command bodies so that
`seminar --help` stays instant. Every user error exits with code 2 and one sentence naming
the file or field; no tracebacks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from seminar.constants import (
    DEFAULT_GATEWAY_METRICS_PORT,
    DEFAULT_GATEWAY_PORT,
    ENSEMBLE_MODEL,
)

client_app = typer.Typer(
    help="Send one Rank request to the gateway, or the same request straight to Triton.",
    no_args_is_help=True,
)


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


def gateway(
    config: Annotated[
        Path,
        typer.Option(
            help="A/B experiment YAML (salt, arms, shadow, limits); reloads on change or SIGHUP."
        ),
    ],
    triton: Annotated[str, typer.Option(help="Triton gRPC address HOST:PORT.")] = "127.0.0.1:8001",
    port: Annotated[
        int, typer.Option(help="gRPC port of seminar.v1.Ranker.")
    ] = DEFAULT_GATEWAY_PORT,
    metrics_port: Annotated[
        int, typer.Option(help="Port of the Prometheus /metrics endpoint (0 = off).")
    ] = DEFAULT_GATEWAY_METRICS_PORT,
    catalog: Annotated[
        Path | None,
        typer.Option(
            help="Item ids to accept: a model repository (newest features/N/item_ids.npy), a "
            "prepared dataset dir, or an .npy file. Without it unknown ids are not rejected."
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to bind (0.0.0.0 inside a container).")
    ] = "127.0.0.1",
    log_level: Annotated[str, typer.Option(help="Python logging level.")] = "INFO",
) -> None:
    """Run the seminar.v1.Ranker gRPC gateway in front of Triton.

    Validates requests, assigns each user to an A/B arm (hash of salt + user id into 10,000 buckets), ranks the candidates with that arm's (model, version) in Triton, and exports metrics. Serves grpc.health.v1 and server reflection. Stops on SIGINT/SIGTERM after draining in-flight requests.
    """
    import asyncio
    import logging

    from seminar.clients.catalog import Catalog, CatalogError
    from seminar.clients.config import ConfigError
    from seminar.clients.gateway import serve

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        items = Catalog.load(catalog) if catalog is not None else None
        asyncio.run(serve(config, triton, port, metrics_port or None, items, host=host))
    except (ConfigError, CatalogError) as err:
        raise _fail(str(err)) from None
    except OSError as err:
        raise _fail(f"cannot start the gateway: {err}") from None


@client_app.command("rank")
def client_rank(
    user: Annotated[str, typer.Option(help="External user id (MovieLens userId).")],
    candidates: Annotated[str, typer.Option(help="Comma-separated item ids, e.g. 1,2,3.")],
    query: Annotated[str, typer.Option(help="Free-text query; empty = recommendation.")] = "",
    gateway: Annotated[
        str | None, typer.Option(help="Gateway HOST:PORT (the default mode).")
    ] = None,
    triton: Annotated[
        str | None, typer.Option(help="Call Triton HOST:PORT directly instead of the gateway.")
    ] = None,
    model: Annotated[str, typer.Option(help="Triton model for --triton.")] = ENSEMBLE_MODEL,
    version: Annotated[
        int, typer.Option(help="Model version for --triton (0 = Triton's default).")
    ] = 0,
    timeout: Annotated[float, typer.Option(help="Deadline in seconds.")] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    verify_triton: Annotated[
        str | None,
        typer.Option(
            help="Smoke check: also score the request in Triton HOST:PORT with the (model, version) the gateway served; exit 1 on any difference."
        ),
    ] = None,
) -> None:
    """Rank candidates for one user through the gateway (or straight through Triton)."""
    from seminar.clients.client import ClientError, rank_direct, rank_via_gateway, same_ranking

    if (gateway is None) == (triton is None):
        raise _fail("give exactly one of --gateway HOST:PORT or --triton HOST:PORT")
    try:
        ids = [int(x) for x in candidates.split(",") if x.strip()]
    except ValueError:
        raise _fail(f"--candidates must be comma-separated integers, got {candidates!r}") from None
    try:
        if gateway is not None:
            result = rank_via_gateway(gateway, user, query, ids, timeout)
        else:
            result = rank_direct(triton, model, version, user, query, ids, timeout)
    except ClientError as err:
        raise _fail(str(err)) from None
    mismatch = None
    if verify_triton is not None and gateway is not None:
        served_model, _, served_version = result.model_version.rpartition(":")
        try:
            reference = rank_direct(
                verify_triton, served_model, int(served_version), user, query, ids, timeout
            )
        except ClientError as err:
            raise _fail(f"--verify-triton: {err}") from None
        mismatch = same_ranking(result, reference)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
    else:
        _print_ranking(user, result)
    if verify_triton is not None:
        if mismatch:
            typer.secho(
                f"MISMATCH with Triton {result.model_version}: {mismatch}", err=True, fg="red"
            )
            raise typer.Exit(code=1)
        typer.echo(f"verified: equal to Triton {result.model_version} scores", err=True)


def _print_ranking(user: str, result) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"user {user} · arm {result.arm or '-'} · {result.model_version}")
    table.add_column("rank", justify="right")
    table.add_column("item_id", justify="right")
    table.add_column("score", justify="right")
    for i, (item, score) in enumerate(zip(result.item_ids, result.scores, strict=True), 1):
        table.add_row(str(i), str(item), f"{score:.5f}")
    Console().print(table)


def load(
    gateway: Annotated[str, typer.Option(help="Gateway HOST:PORT.")],
    data: Annotated[
        Path, typer.Option(help="Prepared dataset dir: users and their test candidate sets.")
    ],
    duration: Annotated[float, typer.Option(help="Seconds of load (after warm-up).")] = 10.0,
    concurrency: Annotated[int, typer.Option(help="Requests in flight (closed loop).")] = 4,
    rate: Annotated[
        float, typer.Option(help="Fixed arrival rate in requests/s (open loop); 0 = closed loop.")
    ] = 0.0,
    warmup: Annotated[float, typer.Option(help="Seconds of warm-up, not measured.")] = 1.0,
    candidates: Annotated[
        int, typer.Option(help="Candidates per request (the user's test item + negatives).")
    ] = 100,
    timeout: Annotated[float, typer.Option(help="Per-request deadline in seconds.")] = 2.0,
    seed: Annotated[int, typer.Option(help="Seed of the request order.")] = 0,
    out: Annotated[Path, typer.Option(help="JSON report file.")] = Path("reports/load.json"),
) -> None:
    """Drive load through the gateway; print throughput, errors by code, p50/p90/p99/max.

    Requests are real: each is one evaluated user of DATA with its query and its real test candidate set (the held-out item plus its sampled negatives).
    """
    import asyncio

    from seminar.clients.load import LoadConfig, run_load
    from seminar.clients.workload import WorkloadError, load_workload

    try:
        cfg = LoadConfig(
            duration_s=duration, concurrency=concurrency, rate=rate, warmup_s=warmup,
            timeout_s=timeout, seed=seed,
        )  # fmt: skip
        requests = load_workload(data, candidates=candidates)
    except (ValueError, WorkloadError) as err:
        raise _fail(str(err)) from None
    result = asyncio.run(run_load(gateway, requests, cfg, progress=True))
    typer.echo(result.markdown())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result.to_dict(), indent=2))
    typer.echo(f"wrote {out}")
    if result.ok == 0:
        raise _fail("no request succeeded; see the error counts above")


def perf(
    triton: Annotated[str, typer.Option(help="Triton gRPC HOST:PORT (perf_analyzer's target).")],
    data: Annotated[Path, typer.Option(help="Prepared dataset dir for real requests.")],
    gateway: Annotated[
        str | None,
        typer.Option(
            help="Gateway HOST:PORT for the comparison `seminar load` run (omit to skip)."
        ),
    ] = None,
    model: Annotated[str, typer.Option(help="Triton model to drive.")] = ENSEMBLE_MODEL,
    concurrency: Annotated[str, typer.Option(help="perf_analyzer range START:END[:STEP].")] = "1:8",
    candidates: Annotated[int, typer.Option(help="Candidate rows per request (batch).")] = 100,
    requests: Annotated[int, typer.Option(help="Distinct real requests in --input-data.")] = 32,
    synthetic_long_user: Annotated[
        int | None,
        typer.Option(
            help="Also send one synthetic user id (e.g. a 10k-event user built into the repo)."
        ),
    ] = None,
    measurement_ms: Annotated[int, typer.Option(help="perf_analyzer measurement window.")] = 3000,
    chroot: Annotated[
        Path | None,
        typer.Option(
            help="Debian 13 chroot holding perf_analyzer (clients/perf_analyzer_chroot.sh)."
        ),
    ] = None,
    out_dir: Annotated[Path, typer.Option(help="Where perf.md, perf.png, perf.csv go.")] = Path(
        "reports"
    ),
) -> None:
    """Run perf_analyzer against the seminar ensemble; write reports/perf.md and perf.png.

    --input-data is built from real users and their real candidate sets. With --gateway, a `seminar load` run at the same concurrencies through the gateway is added, so the gateway's overhead shows as a ratio.
    """
    from seminar.clients.perf import PerfConfig, PerfError, run_perf
    from seminar.clients.workload import WorkloadError

    try:
        cfg = PerfConfig(
            triton=triton, data=data, gateway=gateway, model=model, concurrency=concurrency,
            candidates=candidates, requests=requests, synthetic_long_user=synthetic_long_user,
            measurement_ms=measurement_ms, chroot=chroot, out_dir=out_dir,
        )  # fmt: skip
        report = run_perf(cfg)
    except (ValueError, PerfError, WorkloadError) as err:
        raise _fail(str(err)) from None
    typer.echo(report)


def observe(
    triton_metrics: Annotated[
        str, typer.Option(help="Triton metrics HOST:PORT.")
    ] = "127.0.0.1:8002",
    gateway_metrics: Annotated[
        str, typer.Option(help="Gateway metrics HOST:PORT.")
    ] = f"127.0.0.1:{DEFAULT_GATEWAY_METRICS_PORT}",
    port: Annotated[int, typer.Option(help="Prometheus web port on 127.0.0.1.")] = 9090,
    storage: Annotated[
        Path | None, typer.Option(help="TSDB directory (default: a temp dir).")
    ] = None,
) -> None:
    """Start Prometheus on loopback scraping Triton and the gateway (Ctrl-C stops it).

    Uses docker/prometheus/prometheus.yml and rules.yml with the targets rewritten to the given addresses. Needs the `prometheus` binary (Debian: apt-get install prometheus).
    """
    from seminar.clients.observe import ObserveError, run_prometheus

    try:
        run_prometheus(triton_metrics, gateway_metrics, port, storage)
    except ObserveError as err:
        raise _fail(str(err)) from None


def bench_soak(
    repo: Path = typer.Option(
        Path("model_repository"),
        help="Model repository built by `seminar build` (2 versions: A/B).",
    ),
    data: Path = typer.Option(
        Path("data/movielens"), help="Prepared dataset the repository was built from."
    ),
    duration: float = typer.Option(600.0, help="Seconds of traffic before the kill -9 phase."),
    concurrency: int = typer.Option(8, help="Client threads."),
    stall_every: float = typer.Option(30.0, help="Seconds between two frozen model processes."),
    stall: float = typer.Option(3.0, help="Seconds each model process stays frozen (SIGSTOP)."),
    kill: bool = typer.Option(True, help="End with kill -9 of tritonserver under load."),
    seed: int = typer.Option(0, help="Seed of the traffic mix and of the stall victims."),
    out: Path = typer.Option(
        Path("reports/soak"), help="Report path without suffix: writes OUT.md, OUT.json, OUT.png."
    ),
) -> None:
    """Hostile traffic through the gateway while model processes freeze; exit 1 unless it held.

    Starts `seminar serve` and `seminar gateway` over REPO, sends CONCURRENCY clients with deadlines from 5 ms to 2 s, 1000-candidate requests, 1 MB queries and client cancellations for DURATION seconds, freezes a random model process every STALL_EVERY seconds, then kills tritonserver and times the recovery. Passes when tritonserver never died during the soak, every call ended OK or with a status a client can act on, and the kill left nothing behind.
    """
    import shlex
    import sys

    from seminar.clients.soak import SoakConfig, SoakError, markdown, run_soak, write_reports

    try:
        config = SoakConfig(
            duration_s=duration,
            concurrency=concurrency,
            stall_every_s=stall_every,
            stall_s=stall,
            kill_at_end=kill,
            seed=seed,
        )
    except ValueError as err:
        typer.echo(f"Invalid option: {err}.", err=True)
        raise typer.Exit(code=2) from None
    command = "seminar bench soak " + shlex.join(sys.argv[3:])
    try:
        report = run_soak(repo, data, config, command, lambda m: typer.echo(m, err=True))
    except (SoakError, OSError, ValueError) as err:
        typer.echo(f"bench soak could not run: {err}", err=True)
        raise typer.Exit(code=2) from None
    paths = write_reports(report, out)
    typer.echo(markdown(report))
    typer.echo("wrote " + ", ".join(str(p) for p in paths), err=True)
    if not report["passed"]:
        raise typer.Exit(code=1)
