"""`seminar bench ...` and `seminar perf`: every benchmark, each printing a markdown table and
writing it (with its JSON) under reports/.

Heavy imports live inside the command bodies so that `seminar --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from seminar.contract import ENSEMBLE_MODEL
from seminar.errors import (
    ArtifactError,
    CheckFailed,
    DataError,
    ServiceError,
    cli_guard,
    reading_options,
)
from seminar.training.cli import require_data_dir


@cli_guard
def bench_synthetic(
    events: Annotated[
        list[int], typer.Option(help="Total events per run (repeat the option for a sweep).")
    ] = [100_000, 1_000_000, 4_000_000],  # noqa: B006 - typer needs a literal default
    events_per_user: Annotated[int, typer.Option(help="Mean events per user.")] = 1000,
    items: Annotated[int, typer.Option(help="Catalog size.")] = 10_000,
    topics: Annotated[int, typer.Option(help="Latent topics.")] = 50,
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
    chunk_rows: Annotated[
        int, typer.Option(help="Events per write chunk: the bound on the generator's memory.")
    ] = 262_144,
    reports: Annotated[Path, typer.Option(help="Where synthetic.md / .json go.")] = Path("reports"),
) -> None:
    """Synthetic generator throughput (events/s) and peak RSS, e.g. for 1M events.

    Each run prepares a SYNTHETIC dataset (events, arrays, splits; no MiniLM, which is timed
    by the prepare commands) in a fresh process and is deleted afterwards. Prints a markdown
    table and writes reports/synthetic.md and reports/synthetic.json.
    """
    from seminar.bench.synthetic import run_bench

    with reading_options():  # run_bench checks its options (--events) before it starts
        run_bench(events, events_per_user, items, topics, seed, reports, chunk_rows)


@cli_guard
def bench_quality(
    data: Annotated[Path, typer.Option(help="Prepared MovieLens directory.")] = Path(
        "data/movielens"
    ),
    seeds: Annotated[
        int, typer.Option(help="Seeds per model and ablation (>= 3 for the report).")
    ] = 3,
    runs: Annotated[Path, typer.Option(help="Where the runs are written.")] = Path("runs/quality"),
    reports: Annotated[Path, typer.Option(help="Where quality.md / quality.json go.")] = Path(
        "reports"
    ),
    ablations: Annotated[
        bool, typer.Option("--ablations/--no-ablations", help="Also run the SEMINAR ablations.")
    ] = True,
    quick: Annotated[
        bool, typer.Option("--quick", help="Quick configuration for every run.")
    ] = False,
    only: Annotated[
        str, typer.Option(help="Comma-separated subset of variants (default: all).")
    ] = "",
) -> None:
    """Train and evaluate every model and ablation over seeds; writes reports/quality.{md,json}.

    Variants: seminar, twin, sim, eta, din, and SEMINAR without pretraining, without each PSU
    loss, without text, without attributes. Prints the markdown table with mean ± std.
    """
    from seminar.bench.quality import QualityBench

    require_data_dir(data)
    names = [x.strip() for x in only.split(",") if x.strip()]
    QualityBench(data, runs, reports, seeds, ablations, quick, names).run(echo=typer.echo)


@cli_guard
def bench_pq(
    quick: bool = typer.Option(
        False, "--quick", help="Fewer runs and smaller codebook training: under two minutes."
    ),
    run: Path | None = typer.Option(
        None,
        "--run",
        help="Trained run directory: adds MovieLens recall@50 and the NDCG@10 change with the PQ GSU.",
    ),
    data: Path | None = typer.Option(
        None, "--data", help="Prepared dataset for --run (default: the path recorded in the run)."
    ),
    out: Path = typer.Option(
        Path("reports"), "--out", help="Where pq.md, pq.json and pq_recall_latency.png go."
    ),
    threads: int = typer.Option(2, "--threads", min=1, help="torch and faiss threads."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic tables, users and requests."),
) -> None:
    """PQ GSU vs exact GSU vs faiss: latency per request (1 user × 100 candidates × 4 heads,
    top-50) at L = 1k, 10k, 100k on SYNTHETIC users, bytes per stored event, recall@50;
    with --run also MovieLens recall@50 and NDCG@10 change. Writes reports/pq.md, pq.json and a
    recall-vs-latency PNG."""
    import time

    from seminar.bench.pq import BenchConfig, run_bench

    start = time.perf_counter()

    def log(msg: str) -> None:
        typer.echo(f"[{time.perf_counter() - start:6.1f} s] {msg}", err=True)

    if run is not None and not run.is_dir():
        raise ArtifactError(f"--run {run}: not a run directory.")
    if data is not None and not data.is_dir():
        raise DataError(f"--data {data}: not a prepared dataset directory.")
    with reading_options():
        cfg = (
            BenchConfig.quick(threads=threads, seed=seed)
            if quick
            else BenchConfig(threads=threads, seed=seed)
        )
    result = run_bench(cfg, out, run, data, log=log)
    typer.echo(result["markdown"])


@cli_guard
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

    from seminar.bench.serving import ServingBenchConfig, markdown, run_bench

    inputs = (
        (run / "checkpoint.safetensors", "--run", ArtifactError),
        (data / "meta.json", "--data", DataError),
    )
    for path, what, kind in inputs:
        if not path.is_file():
            raise kind(f"{what}: {path} does not exist.")
    with reading_options():
        cfg = ServingBenchConfig(
            candidates=candidates,
            requests=requests,
            warmup=warmup,
            concurrency=concurrency,
            seed=seed,
        )
    command = "seminar bench serving " + shlex.join(sys.argv[3:])

    def progress(message: str) -> None:
        typer.echo(message, err=True)

    try:
        report = run_bench(run, data, work, cfg, command, progress)
    except RuntimeError as err:  # bench/serving.py's own failures (a busy --work, a failed build)
        raise CheckFailed(f"bench serving failed: {err}") from None
    text = markdown(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    typer.echo(text)
    typer.echo(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}", err=True)


@cli_guard
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

    from seminar.bench.soak import SoakConfig, markdown, run_soak, write_reports

    with reading_options():
        config = SoakConfig(
            duration_s=duration,
            concurrency=concurrency,
            stall_every_s=stall_every,
            stall_s=stall,
            kill_at_end=kill,
            seed=seed,
        )
    command = "seminar bench soak " + shlex.join(sys.argv[3:])
    try:
        report = run_soak(repo, data, config, command, lambda m: typer.echo(m, err=True))
    except OSError as err:
        raise ServiceError(f"bench soak could not run: {err}") from None
    paths = write_reports(report, out)
    typer.echo(markdown(report))
    typer.echo("wrote " + ", ".join(str(p) for p in paths), err=True)
    if not report["passed"]:
        raise CheckFailed(f"the soak did not hold; see {paths[0]}")


@cli_guard
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
    from seminar.bench.perf import PerfConfig, run_perf

    with reading_options():
        cfg = PerfConfig(
            triton=triton, data=data, gateway=gateway, model=model, concurrency=concurrency,
            candidates=candidates, requests=requests, synthetic_long_user=synthetic_long_user,
            measurement_ms=measurement_ms, chroot=chroot, out_dir=out_dir,
        )  # fmt: skip
    report = run_perf(cfg)
    typer.echo(report)
