"""`seminar bench pq` (owned by seminar.pq). Placeholder."""

import typer


def bench_pq() -> None:
    """PQ GSU vs exact GSU vs faiss: latency, bytes, recall; writes reports/pq.*."""
    typer.echo("not implemented yet", err=True)
    raise typer.Exit(code=2)
