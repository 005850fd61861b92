"""`seminar bench ...` and `seminar perf`: every benchmark, on the one harness of
bench/harness.py: each prints its record (header, tables, the sentences its numbers support)
and writes it as markdown + JSON (+ PNG).

Every output option defaults to runs/bench/ (ignored by git), so running a bench from the
repository root never overwrites the published reports/: publishing a run is naming reports/
as its output on purpose (e.g. `seminar bench pq --out reports`).

Heavy imports live inside the command bodies so that `seminar --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from seminar.bench.harness import SCRATCH
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


def require_run_and_data(run: Path, data: Path) -> None:
    """ArtifactError / DataError naming the option when --run or --data is not there."""
    inputs = (
        (run / "checkpoint.safetensors", "--run", ArtifactError),
        (data / "meta.json", "--data", DataError),
    )
    for path, what, kind in inputs:
        if not path.is_file():
            raise kind(f"{what}: {path} does not exist.")


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
    reports: Annotated[
        Path, typer.Option(help="Folder for synthetic.md / synthetic.json (reports/ publishes).")
    ] = SCRATCH,
) -> None:
    """Synthetic generator throughput (events/s) and peak RSS, e.g. for 1M events.

    Each run prepares a SYNTHETIC dataset (events, arrays, splits; no MiniLM, which is timed
    by the prepare commands) in a fresh process and is deleted afterwards. Prints the record
    and writes REPORTS/synthetic.md and REPORTS/synthetic.json.
    """
    from seminar.bench.synthetic import run_bench

    with reading_options():  # run_bench checks its options (--events) before it starts
        record = run_bench(events, events_per_user, items, topics, seed, reports, chunk_rows)
    typer.echo(record.markdown())


@cli_guard
def bench_images(
    images: Annotated[
        int, typer.Option(help="SYNTHETIC JPEGs timed through both pipelines.")
    ] = 1000,
    repeats: Annotated[int, typer.Option(help="Timed passes of each pipeline.")] = 3,
    seeds: Annotated[int, typer.Option(help="Training seeds per ablation variant.")] = 3,
    users: Annotated[int, typer.Option(help="SYNTHETIC users of the ablation dataset.")] = 300,
    events_per_user: Annotated[int, typer.Option(help="Their mean events.")] = 150,
    items: Annotated[int, typer.Option(help="Catalog size of the ablation dataset.")] = 1000,
    topics: Annotated[int, typer.Option(help="Planted topics of the ablation dataset.")] = 8,
    untitled: Annotated[
        float,
        typer.Option(help="Share of items whose text and attributes hide their topic."),
    ] = 0.5,
    image_topics: Annotated[
        int,
        typer.Option(help="0: images show their item's topic; N: N planted image topics."),
    ] = 0,
    threads: Annotated[int, typer.Option(help="torch threads; 0 = torch's default.")] = 1,
    runs: Annotated[Path, typer.Option(help="Where the dataset and runs are written.")] = Path(
        "runs/images"
    ),
    out: Annotated[
        Path,
        typer.Option(help="Folder for the images report: .md, .json, .png (reports/ publishes)."),
    ] = SCRATCH,
) -> None:
    """DALI vs PIL preprocessing (images/s, pixel difference), and SEMINAR with vs without
    images on SYNTHETIC data where only the images show half the items' topics (3 seeds,
    quick settings).

    Prints the record and writes OUT/images.md, images.json and images.png; takes minutes.
    """
    from seminar.bench.images import ImagesBenchConfig, run_bench

    with reading_options():
        config = ImagesBenchConfig(
            images=images,
            repeats=repeats,
            seeds=seeds,
            users=users,
            events_per_user=events_per_user,
            items=items,
            topics=topics,
            untitled=untitled,
            image_topics=image_topics,
            threads=threads,
            runs=runs,
        )
    record = run_bench(config, out, echo=lambda line: typer.echo(line, err=True))
    typer.echo(record.markdown())


@cli_guard
def bench_quality(
    data: Annotated[
        Path, typer.Option(help="Prepared dataset directory (`seminar data prepare ...`).")
    ] = Path("data/movielens"),
    seeds: Annotated[
        int, typer.Option(help="Seeds per model and ablation (>= 3 for the report).")
    ] = 3,
    runs: Annotated[Path, typer.Option(help="Where the runs are written.")] = Path("runs/quality"),
    reports: Annotated[
        Path, typer.Option(help="Folder for quality.md / quality.json (reports/ publishes).")
    ] = SCRATCH,
    ablations: Annotated[
        bool,
        typer.Option(
            "--ablations/--no-ablations", help="Also run the 6 SEMINAR ablations (off: 5 models)."
        ),
    ] = False,
    quick: Annotated[
        bool, typer.Option("--quick", help="Quick configuration for every run.")
    ] = False,
    only: Annotated[
        str, typer.Option(help="Comma-separated subset of variants (default: all).")
    ] = "",
    threads: Annotated[int, typer.Option(help="torch threads per run (0 = default).")] = 0,
) -> None:
    """Train and evaluate every model (and with --ablations every SEMINAR ablation) over seeds;
    writes REPORTS/quality.{md,json}.

    Variants: seminar, twin, sim, eta, din; ablations: SEMINAR without pretraining, without
    each PSU loss, without text, without attributes. Prints each run as it starts, with
    per-epoch step bars, then the tables (mean ± std over seeds) and what they support.
    """

    from seminar.bench.quality import QualityBench, QualityConfig

    require_data_dir(data)
    names = tuple(x.strip() for x in only.split(",") if x.strip())
    with reading_options():
        config = QualityConfig(
            data=data, runs=runs, reports=reports, seeds=seeds, ablations=ablations,
            quick=quick, only=names, threads=threads,
        )  # fmt: skip
    QualityBench(config).run(echo=typer.echo)


@cli_guard
def bench_pq(
    quick: bool = typer.Option(
        False, "--quick", help="Fewer runs and smaller codebook training: under two minutes."
    ),
    run: Path | None = typer.Option(
        None,
        "--run",
        help="Trained run directory: adds recall@50 and the NDCG@10 change with the PQ GSU on "
        "its dataset's test split.",
    ),
    data: Path | None = typer.Option(
        None, "--data", help="Prepared dataset for --run (default: the path recorded in the run)."
    ),
    out: Path = typer.Option(
        SCRATCH,
        "--out",
        help="Folder for pq.md, pq.json and pq_recall_latency.png (reports/ publishes).",
    ),
    threads: int = typer.Option(2, "--threads", min=1, help="torch and faiss threads."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic tables, users and requests."),
) -> None:
    """PQ GSU vs exact GSU vs faiss: latency per request (1 user × 100 candidates × 4 heads,
    top-50) at L = 1k, 10k, 100k on SYNTHETIC users, bytes per stored event, recall@50;
    with --run also recall@50 and the NDCG@10 change on the run's dataset. Writes OUT/pq.md,
    pq.json and a recall-vs-latency PNG."""
    import time

    from seminar.bench.pq.config import BenchConfig
    from seminar.bench.pq.run import run_bench

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
    record = run_bench(cfg, out, run, data, log=log)
    typer.echo(record.markdown())


@cli_guard
def bench_serving(
    run: Path = typer.Option(
        ..., help="Trained run directory (checkpoint.safetensors + config.json)."
    ),
    data: Path = typer.Option(
        Path("data/movielens"), help="Prepared dataset the run was trained on."
    ),
    work: Path = typer.Option(
        Path("runs/serving-bench"),
        help="Scratch folder for the bench's dataset (+ SYNTHETIC long users) and repository; "
        "reused when its inputs are unchanged.",
    ),
    out: Path = typer.Option(
        SCRATCH, help="Folder for serving.md and serving.json (reports/ publishes)."
    ),
    candidates: int = typer.Option(100, help="Candidates per request (rows of the batch)."),
    requests: int = typer.Option(200, help="Timed requests per cell."),
    warmup: int = typer.Option(20, help="Untimed warm-up requests per cell."),
    concurrency: int = typer.Option(4, help="Client threads for the concurrent cells."),
    seed: int = typer.Option(0, help="Seed of the candidates and the SYNTHETIC users."),
) -> None:
    """Ensemble latency vs in-process vs a trivial model; writes OUT/serving.md and .json.

    Builds a repository from RUN over DATA plus SYNTHETIC users with 1k and 10k events, starts the real tritonserver with it and a trivial Python-backend model (the floor), and measures p50/p90/p99 per history length, sequentially (without and with a query, whose difference is what the query's MiniLM embedding costs) and at concurrency 4, next to the same computation in-process. Triton's per-model statistics show where the time goes.
    """
    from seminar.bench.harness import write_record
    from seminar.bench.serving import ServingBenchConfig, run_bench

    require_run_and_data(run, data)
    with reading_options():
        cfg = ServingBenchConfig(
            candidates=candidates,
            requests=requests,
            warmup=warmup,
            concurrency=concurrency,
            seed=seed,
        )

    def progress(message: str) -> None:
        typer.echo(message, err=True)

    try:
        record = run_bench(run, data, work, cfg, progress)
    except RuntimeError as err:  # bench/serving.py's own failures (a busy --work, a failed build)
        raise CheckFailed(f"bench serving failed: {err}") from None
    paths = write_record(record, out / "serving")
    typer.echo(record.markdown())
    typer.echo("wrote " + " and ".join(str(path) for path in paths), err=True)


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
        SCRATCH, help="Folder for soak.md, soak.json and soak.png (reports/ publishes)."
    ),
) -> None:
    """Hostile traffic through the gateway while model processes freeze; exit 1 unless it held.

    Starts `seminar serve` and `seminar gateway` over REPO, sends CONCURRENCY clients with deadlines from 5 ms to 2 s, 1000-candidate requests, 1 MB queries and client cancellations for DURATION seconds, freezes a random model process every STALL_EVERY seconds, then kills tritonserver and times the recovery. Passes when tritonserver never died during the soak, every call ended OK or with a status a client can act on, and the kill left nothing behind.
    """
    from seminar.bench.harness import write_plotted
    from seminar.bench.soak import SoakConfig, plot, run_soak

    with reading_options():
        config = SoakConfig(
            duration_s=duration,
            concurrency=concurrency,
            stall_every_s=stall_every,
            stall_s=stall,
            kill_at_end=kill,
            seed=seed,
        )
    try:
        record = run_soak(repo, data, config, lambda m: typer.echo(m, err=True))
    except OSError as err:
        raise ServiceError(f"bench soak could not run: {err}") from None
    paths = write_plotted(record, out / "soak", plot)
    typer.echo(record.markdown())
    typer.echo("wrote " + ", ".join(str(p) for p in paths), err=True)
    if not record.data["passed"]:
        raise CheckFailed(f"the soak did not hold; see {paths[0]}")


@cli_guard
def bench_online(
    run: Path = typer.Option(
        ..., help="Trained run directory (checkpoint.safetensors + config.json)."
    ),
    data: Path = typer.Option(
        Path("data/movielens"), help="Prepared dataset the run was trained on."
    ),
    work: Path = typer.Option(
        Path("runs/online-bench"),
        help="Scratch folder for the bench's repository (+ a SYNTHETIC long user, reused when "
        "its inputs are unchanged) and its event logs (fresh every run).",
    ),
    reports: Path = typer.Option(
        SCRATCH, help="Folder for the online report: markdown, JSON and PNG (reports/ publishes)."
    ),
    seconds: float = typer.Option(20.0, help="Seconds of Record load per log."),
    concurrency: int = typer.Option(8, help="Record writer threads."),
    batch_events: int = typer.Option(10, help="Events per Record call."),
    requests: int = typer.Option(100, help="Timed Rank calls per tail size."),
    seed: int = typer.Option(0, help="Seed of the events, the candidates and the SYNTHETIC user."),
) -> None:
    """Record throughput and acknowledgement latency on SQLite and Redis, and Rank latency over a fresh online tail; writes REPORTS/online.md, .json and .png.

    Record: CONCURRENCY writers send BATCH_EVENTS-event batches to a real `seminar gateway` for SECONDS, over a SQLite file and over a real redis-server; the report gives events/s, acknowledgement p50/p99 and sent / acknowledged / stored / lost. Rank: `seminar serve --event-log` behind the gateway, a SYNTHETIC user with 10k stored events, p50/p99 with 0, 100 and 1,000 of its events recorded after the version's watermark. About 3 minutes once the repository is built.
    """
    from seminar.bench.harness import write_plotted
    from seminar.bench.online import OnlineBenchConfig, plot, run_bench

    require_run_and_data(run, data)
    with reading_options():
        config = OnlineBenchConfig(
            seconds=seconds, concurrency=concurrency, batch_events=batch_events,
            requests=requests, seed=seed,
        )  # fmt: skip
    try:
        record = run_bench(run, data, work, config, lambda m: typer.echo(m, err=True))
    except RuntimeError as err:  # the repository build failed or --work is not the bench's
        raise CheckFailed(f"bench online failed: {err}") from None
    paths = write_plotted(record, reports / "online", plot)
    typer.echo(record.markdown())
    typer.echo("wrote " + ", ".join(str(p) for p in paths), err=True)


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
    out_dir: Annotated[
        Path,
        typer.Option(
            help="Folder for perf.md, perf.json, perf.png and the raw perf_analyzer.csv, "
            "perf_analyzer.log, perf_gateway.json (reports/ publishes)."
        ),
    ] = SCRATCH,
    repo: Annotated[
        Path | None,
        typer.Option(
            help="The repository Triton serves: adds in-process serving of the same requests "
            "(one worker process per core, no Triton) as the throughput to compare with, and "
            "the CPU per request of every process at the top concurrency (read from /proc; "
            "behind `seminar serve`'s proxy also at tritonserver's own gRPC port)."
        ),
    ] = None,
    rounds: Annotated[
        int,
        typer.Option(
            help="With --repo: rounds of (served at saturation, in-process) back to back; the "
            "report judges the median share."
        ),
    ] = 3,
) -> None:
    """Run perf_analyzer against the seminar ensemble; write OUT_DIR/perf.md, perf.json, perf.png.

    --input-data is built from real users and their real candidate sets. With --gateway, a `seminar load` run at the same concurrencies through the gateway is added, so the gateway's overhead shows as a ratio. With --repo, in-process serving of the same requests in one worker per core is measured too, and Triton's best throughput is given as a share of it; a table gives the CPU milliseconds per request of the client, `seminar serve`'s gRPC proxy, tritonserver, its model stubs and the rest of the machine at saturation, so a shortfall shows where the CPU went.
    """
    from seminar.bench.perf import PerfConfig, run_perf

    with reading_options():
        cfg = PerfConfig(
            triton=triton, data=data, gateway=gateway, model=model, concurrency=concurrency,
            candidates=candidates, requests=requests, synthetic_long_user=synthetic_long_user,
            measurement_ms=measurement_ms, chroot=chroot, out_dir=out_dir, repo=repo,
            rounds=rounds,
        )  # fmt: skip
    report = run_perf(cfg)
    typer.echo(report)


@cli_guard
def bench_native(
    repo: Annotated[
        Path, typer.Option(help="A built cpu model repository (4-bit PQ with a rerank).")
    ],
    data: Annotated[Path, typer.Option(help="Prepared dataset dir for real requests.")],
    version: Annotated[int, typer.Option(min=1, help="The version of REPO to serve.")] = 1,
    concurrency: Annotated[
        str, typer.Option(help="perf_analyzer range START:END[:STEP].")
    ] = "4:16:4",
    requests: Annotated[int, typer.Option(help="Distinct real requests in --input-data.")] = 32,
    measurement_ms: Annotated[int, typer.Option(help="perf_analyzer measurement window.")] = 4000,
    rounds: Annotated[
        int, typer.Option(help="Rounds of (served sweep, in-process); the median share counts.")
    ] = 3,
    chroot: Annotated[
        Path | None,
        typer.Option(
            help="Debian 13 chroot holding perf_analyzer (clients/perf_analyzer_chroot.sh)."
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Folder for native.md and native.json (reports/ publishes).")
    ] = SCRATCH,
) -> None:
    """The fused step in C++: served by tritonserver's `seminar_native` backend (perf_analyzer
    sweep, best throughput) against in-process workers running the same C++ step, one per core,
    in rounds; writes OUT/native.md and native.json.

    Real requests of DATA with the query left out (the native step serves no searches and no online tails yet). About 1 minute a round."""
    from seminar.bench.native import NativeBenchConfig, run_native_bench

    require_data_dir(data)
    if not (repo / ENSEMBLE_MODEL).is_dir():
        raise ArtifactError(f"--repo {repo}: not a built model repository.")
    with reading_options():
        cfg = NativeBenchConfig(
            repo=repo, data=data, version=version, out_dir=out, chroot=chroot,
            concurrency=concurrency, requests=requests, measurement_ms=measurement_ms,
            rounds=rounds,
        )  # fmt: skip
    typer.echo(run_native_bench(cfg))
