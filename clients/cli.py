"""`seminar gateway | client | load | simulate | perf | observe | ab`: the serving edge of SEMINAR.

Heavy imports (grpc, tritonclient, numpy) live inside the command bodies so that
`seminar --help` stays instant. Every user error exits with its kind's code (seminar.errors)
and one sentence naming the file, field or address; no tracebacks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from seminar.clients.ramp import Guardrails
from seminar.contract import (
    DEFAULT_GATEWAY_METRICS_PORT,
    DEFAULT_GATEWAY_PORT,
    ENSEMBLE_MODEL,
)
from seminar.errors import (
    CheckFailed,
    DataError,
    ServiceError,
    UsageError,
    cli_guard,
    reading_options,
)

# A request the server refused as malformed: the user's options are at fault, not the server.
REFUSED_REQUEST_CODES = frozenset({"INVALID_ARGUMENT", "NOT_FOUND"})

client_app = typer.Typer(
    help="Send one Rank request to the gateway, or the same request straight to Triton; embed new items' images with the served image_encoder.",
    no_args_is_help=True,
)
ab_app = typer.Typer(
    help="A/B experiments behind the gateway: outcomes per arm with lift and a CI (report), a treatment ramped under guardrails (ramp).",
    no_args_is_help=True,
)


@cli_guard
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
    event_log: Annotated[
        str | None,
        typer.Option(
            help="Serve seminar.v1.Events (Record) over this online event log: sqlite://PATH "
            "(one file, created when missing) or redis://HOST:PORT (appendonly yes, appendfsync "
            "always). Without it Record is not served."
        ),
    ] = None,
) -> None:
    """Run the seminar.v1.Ranker gRPC gateway in front of Triton.

    Validates requests, assigns each user to an A/B arm (weighted rendezvous hash of salt + user id: raising one arm's weight moves users only into it), ranks the candidates with that arm's (model, version) in Triton, and exports metrics. Serves grpc.health.v1 and server reflection. Stops on SIGINT/SIGTERM after draining in-flight requests.
    """
    import asyncio
    import logging

    from seminar.clients.catalog import Catalog
    from seminar.clients.gateway import serve
    from seminar.events import open_event_log

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    items = Catalog.load(catalog) if catalog is not None else None
    log = open_event_log(event_log) if event_log is not None else None
    try:
        asyncio.run(
            serve(config, triton, port, metrics_port or None, items, host=host, event_log=log)
        )
    except OSError as err:  # a port taken or not allowed
        raise ServiceError(f"cannot start the gateway: {err}") from None
    finally:
        if log is not None:
            log.close()


@client_app.command("rank")
@cli_guard
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
    from seminar.clients.client import rank_direct, rank_via_gateway, same_ranking
    from seminar.clients.scoring import CallFailed

    if (gateway is None) == (triton is None):
        raise UsageError("give exactly one of --gateway HOST:PORT or --triton HOST:PORT")
    try:
        ids = [int(x) for x in candidates.split(",") if x.strip()]
    except ValueError:
        raise UsageError(
            f"--candidates must be comma-separated integers, got {candidates!r}"
        ) from None
    try:
        if gateway is not None:
            result = rank_via_gateway(gateway, user, query, ids, timeout)
        else:
            result = rank_direct(triton, model, version, user, query, ids, timeout)
    except CallFailed as err:
        if err.code in REFUSED_REQUEST_CODES:
            raise UsageError(str(err)) from None
        raise
    mismatch = None
    if verify_triton is not None and gateway is not None:
        served_model, _, served_version = result.model_version.rpartition(":")
        try:
            reference = rank_direct(
                verify_triton, served_model, int(served_version), user, query, ids, timeout
            )
        except CallFailed as err:
            raise ServiceError(f"--verify-triton: {err}") from None
        mismatch = same_ranking(result, reference)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
    else:
        _print_ranking(user, result)
    if verify_triton is not None:
        if mismatch:
            raise CheckFailed(f"MISMATCH with Triton {result.model_version}: {mismatch}")
        typer.echo(f"verified: equal to Triton {result.model_version} scores", err=True)


@client_app.command("embed-images")
@cli_guard
def client_embed_images(
    triton: Annotated[str, typer.Option(help="Triton HOST:PORT (gRPC) serving image_encoder.")],
    items: Annotated[
        Path,
        typer.Option(help="Parquet catalog of new items with image_ref files (docs/data.md)."),
    ],
    out: Annotated[Path, typer.Option("--out", help="The catalog with image_embedding to write.")],
    version: Annotated[
        int, typer.Option(help="image_encoder version (0 = Triton's default: the newest).")
    ] = 0,
    timeout: Annotated[float, typer.Option(help="Deadline per call in seconds.")] = 30.0,
) -> None:
    """Embed new items' images with the served image_encoder step (DALI + the dataset's image
    tower) and write OUT for `seminar data append --items OUT`. A missing or corrupt image exits
    3 naming its item and file, before any call; an unreachable server exits 6."""
    from seminar.clients.images import embed_new_items

    count = embed_new_items(triton, items, out, timeout_s=timeout, version=version)
    typer.echo(f"embedded {count:,} images through {triton}; wrote {out}")


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


@cli_guard
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
    out: Annotated[
        Path,
        typer.Option(help="JSON report file (runs/, ignored by git: the published reports/ stay)."),
    ] = Path("runs/load.json"),
) -> None:
    """Drive load through the gateway; print throughput, errors by code, p50/p90/p99/max.

    Requests are real: each is one evaluated user of DATA with its query and its real test candidate set (the held-out item plus its sampled negatives).
    """
    import asyncio

    from seminar.clients.load import LoadConfig, run_load
    from seminar.clients.workload import load_workload

    with reading_options():
        cfg = LoadConfig(
            duration_s=duration, concurrency=concurrency, rate=rate, warmup_s=warmup,
            timeout_s=timeout, seed=seed,
        )  # fmt: skip
    requests = load_workload(data, candidates=candidates)
    result = asyncio.run(run_load(gateway, requests, cfg, progress=True))
    typer.echo(result.markdown())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result.to_dict(), indent=2))
    typer.echo(f"wrote {out}")
    if result.ok == 0:
        raise ServiceError("no request succeeded; see the error counts above")


@cli_guard
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
    from seminar.clients.observe import run_prometheus

    run_prometheus(triton_metrics, gateway_metrics, port, storage)


@cli_guard
def simulate(
    gateway: Annotated[
        str, typer.Option(help="Gateway HOST:PORT; it must serve Record (--event-log).")
    ],
    data: Annotated[
        Path,
        typer.Option(
            help="Prepared dataset the served versions were built from: the visitors "
            "are its users, their planted relevance comes from their positive events' genres."
        ),
    ],
    users: Annotated[int, typer.Option(help="SYNTHETIC visitors (distinct users of DATA).")] = 200,
    visits: Annotated[int, typer.Option(help="Visits per user, one after the other.")] = 1,
    candidates: Annotated[int, typer.Option(help="Items ranked per visit.")] = 50,
    relevant: Annotated[
        int, typer.Option(help="Candidates per visit that are relevant to the visitor.")
    ] = 10,
    shown: Annotated[int, typer.Option(help="Top positions the visitor sees.")] = 10,
    p_relevant: Annotated[
        float, typer.Option(help="P(click) of a relevant item at position 1.")
    ] = 0.6,
    p_other: Annotated[float, typer.Option(help="P(click) of another item at position 1.")] = 0.05,
    relevance_probability: Annotated[
        float, typer.Option(help="P(an unseen item of a liked genre is relevant).")
    ] = 0.8,
    concurrency: Annotated[int, typer.Option(help="Users simulated at once.")] = 4,
    timeout: Annotated[
        float, typer.Option(help="Deadline of each Rank or Record call (s).")
    ] = 10.0,
    seed: Annotated[int, typer.Option(help="Seed of visitors, relevance, candidates, clicks.")] = 0,
    out: Annotated[
        Path | None, typer.Option(help="Also write the report as JSON (labelled synthetic).")
    ] = None,
) -> None:
    """Drive the gateway with SYNTHETIC users and record their clicks: a planted A/B outcome.

    Each visitor is a user of DATA; items of the genres its positive events over-represent are relevant (seeded). A visit ranks a seeded candidate sample through the gateway, clicks position r of the top SHOWN with P = (p_relevant or p_other) / log2(r + 1), and records through the gateway a clicked REC event per click and an IMPRESSION per shown item not clicked, with position and request_id. Prints a table per arm (users, impressions, clicks, CTR); the same seed repeats the run (visitors, relevance, candidates, click draws) at any --concurrency.
    """
    from seminar.clients.simulate import ClickModel, SimulationConfig, load_planted, run_simulation

    with reading_options():
        config = SimulationConfig(
            users=users, visits=visits, candidates=candidates, relevant_candidates=relevant,
            relevance_probability=relevance_probability,
            click=ClickModel(shown=shown, p_relevant=p_relevant, p_other=p_other),
            concurrency=concurrency, timeout_s=timeout, seed=seed,
        )  # fmt: skip
    if not (data / "meta.json").is_file():
        raise DataError(f"{data}: not a prepared dataset (seminar data prepare)")
    planted = load_planted(data, config)
    step = max(1, users // 10)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            typer.echo(f"simulated {done}/{total} SYNTHETIC users", err=True)

    report = run_simulation(gateway, planted, progress)
    typer.echo(report.markdown())
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report.to_dict(), indent=2))
        typer.echo(f"wrote {out}")


# ---- seminar ab: A/B experiments (report, ramp) ---------------------------------------------


@ab_app.command("report")
@cli_guard
def ab_report(
    config: Annotated[
        Path, typer.Option(help="The experiment config (ab.yaml): arms, weights, control.")
    ],
    event_log: Annotated[
        str | None,
        typer.Option(help="The gateway's event log: sqlite://PATH or redis://HOST:PORT."),
    ] = None,
    since_seq: Annotated[
        int, typer.Option(help="Count only events with a larger seq (the experiment's start).")
    ] = 0,
    control: Annotated[
        str, typer.Option(help="Control arm (default: the arm named control, else the first).")
    ] = "",
    prometheus: Annotated[
        str | None,
        typer.Option(
            help="Also print the live CTR per arm from this Prometheus (http://HOST:PORT)."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder of report.json, report.md, report.png.")] = Path(
        "runs/ab"
    ),
) -> None:
    """Report an A/B experiment from the event log: per arm users, impressions, clicks, CTR;
    each treatment's relative CTR lift against control with a 95% CI and a p-value computed
    at the user level (delta method: users are the unit of randomisation); a sample-ratio
    mismatch (SRM) check of users per arm against the weights (chi-square, flagged at
    p < 0.001); a PNG plot.

    The last line on stdout is the verdict, e.g. `verdict: treatment better lift=+4.1%
    [+1.2%, +7.0%] p=0.006` (better / worse / inconclusive per treatment). Exit 0: a valid
    report, whatever the verdict; exit 1: a sample-ratio mismatch, the experiment is invalid.
    --prometheus adds the live view of the gateway's counters: CTR per arm without a CI
    (counters are totals, not per user).
    """
    from seminar.clients.ab_report import (
        ReportConfig,
        build_report,
        control_arm,
        live_markdown,
        live_view,
        read_outcomes,
        write_report,
    )
    from seminar.clients.config import load_config

    if event_log is None and prometheus is None:
        raise UsageError("give --event-log (the report) or --prometheus (the live view), or both")
    experiment = load_config(config)
    with reading_options():
        settings = ReportConfig(control=control)
    control_arm(experiment, control)  # a UsageError before any reading
    if since_seq < 0:
        raise UsageError(f"--since-seq must be >= 0, got {since_seq}")
    if prometheus is not None:
        typer.echo(live_markdown(live_view(prometheus), prometheus) + "\n")
    if event_log is None:
        return
    from seminar.data.append import open_existing_log

    with open_existing_log(event_log) as log:
        outcomes = read_outcomes(log, since_seq, settings.page_events)
    report = build_report(outcomes, experiment, event_log, settings)
    typer.echo(report.markdown())
    for path in write_report(report, out):
        typer.echo(f"wrote {path}")
    typer.echo(report.verdict_line())
    if not report.valid:
        raise CheckFailed(
            f"sample-ratio mismatch ({report.sample_ratio.reason}): assignment or logging is "
            "broken, so no lift of this experiment is a result"
        )


@ab_app.command("ramp")
@cli_guard
def ab_ramp(
    config: Annotated[Path, typer.Option(help="The gateway's A/B experiment YAML (rewritten).")],
    treatment: Annotated[str, typer.Option(help="The arm to ramp up.")],
    prometheus: Annotated[
        str, typer.Option(help="Prometheus base URL that scrapes the gateway.")
    ] = "http://127.0.0.1:9090",
    steps: Annotated[
        str, typer.Option(help="The treatment's traffic percents, increasing, e.g. 1,5,25,50.")
    ] = "1,5,25,50",
    hold: Annotated[float, typer.Option(help="Seconds to hold each step.")] = 60.0,
    check_every: Annotated[
        float, typer.Option(help="Seconds between guardrail checks during a hold.")
    ] = 5.0,
    gateway_pid: Annotated[
        int | None,
        typer.Option(help="Gateway process to SIGHUP after each write (else its file watcher)."),
    ] = None,
    gateway_metrics: Annotated[
        str, typer.Option(help="Gateway /metrics URL: confirms each step took effect.")
    ] = f"http://127.0.0.1:{DEFAULT_GATEWAY_METRICS_PORT}/metrics",
    log: Annotated[
        Path | None, typer.Option(help="Append every step, check and rollback as JSON lines.")
    ] = None,
    metrics_file: Annotated[
        Path | None,
        typer.Option(help="Prometheus textfile of the ramp's metrics (node_exporter collector)."),
    ] = None,
    max_error_ratio: Annotated[
        float, typer.Option(help="Treatment non-OK / all above this rolls back.")
    ] = Guardrails.max_error_ratio,
    max_p99_ms: Annotated[
        float, typer.Option(help="Treatment p99 latency (ms) above this rolls back.")
    ] = Guardrails.max_p99_ms,
    max_p99_ratio: Annotated[
        float, typer.Option(help="Treatment p99 / control p99 above this rolls back.")
    ] = Guardrails.max_p99_ratio,
    max_ctr_drop: Annotated[
        float, typer.Option(help="1 - CTR(treatment)/CTR(control) above this rolls back.")
    ] = Guardrails.max_ctr_drop,
    min_requests: Annotated[
        int, typer.Option(help="Treatment requests in a check's window before error/latency count.")
    ] = Guardrails.min_requests,
    min_impressions: Annotated[
        int, typer.Option(help="Impressions per side before the CTR guardrail counts.")
    ] = Guardrails.min_impressions,
) -> None:
    """Ramp the treatment's weight through the steps; on a guardrail breach roll it back to 0%.

    At each step the config is rewritten atomically (the other arms keep their proportions), the gateway reloads it, and the step is held while Prometheus guardrails are checked: the treatment's error ratio, its p99 latency (absolute and against control), and its CTR drop against control once enough impressions are in. A breach writes weight 0 for the treatment, reloads, and exits 1 naming the guardrail, the value and the bound. Ctrl-C or SIGTERM leaves the config at the last step written and says so (exit 130).
    """
    from seminar.clients.ramp import Ramp, RampPlan
    from seminar.processes import interrupt_on_stop_signals

    try:
        percents = tuple(float(x) for x in steps.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--steps must be comma-separated percents, got {steps!r}") from None
    with reading_options():
        plan = RampPlan(
            config_path=config, treatment=treatment, prometheus=prometheus, steps=percents,
            hold_s=hold, check_every_s=check_every, gateway_pid=gateway_pid,
            gateway_metrics=gateway_metrics, log_path=log, metrics_file=metrics_file,
            guardrails=Guardrails(
                max_error_ratio=max_error_ratio, max_p99_ms=max_p99_ms,
                max_p99_ratio=max_p99_ratio, max_ctr_drop=max_ctr_drop,
                min_requests=min_requests, min_impressions=min_impressions,
            ),
        )  # fmt: skip
    ramp = Ramp(plan, echo=typer.echo)
    interrupt_on_stop_signals()
    try:
        ramp.run()
    except KeyboardInterrupt:
        typer.echo(ramp.interrupted(), err=True)
        raise typer.Exit(code=130) from None
