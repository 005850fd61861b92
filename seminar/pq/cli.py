"""`seminar bench pq` (owned by seminar.pq)."""

from __future__ import annotations

from pathlib import Path

import typer


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

    from seminar.pq.bench import BenchConfig, run_bench
    from seminar.pq.errors import PQError

    start = time.perf_counter()

    def log(msg: str) -> None:
        typer.echo(f"[{time.perf_counter() - start:6.1f} s] {msg}", err=True)

    if run is not None and not run.is_dir():
        typer.echo(f"--run {run}: not a run directory.", err=True)
        raise typer.Exit(code=1)
    if data is not None and not data.is_dir():
        typer.echo(f"--data {data}: not a prepared dataset directory.", err=True)
        raise typer.Exit(code=1)
    cfg = (
        BenchConfig.quick(threads=threads, seed=seed)
        if quick
        else BenchConfig(threads=threads, seed=seed)
    )
    try:
        result = run_bench(cfg, out, run, data, log=log)
    except PQError as err:
        typer.echo(f"bench pq: {err}", err=True)
        raise typer.Exit(code=1) from None
    except Exception as err:
        # errors of the run / dataset loaders (TrainingError, DataError) name their file
        if type(err).__name__ in ("TrainingError", "DataError"):
            typer.echo(f"bench pq: {err}", err=True)
            raise typer.Exit(code=1) from None
        raise
    typer.echo(result["markdown"])
