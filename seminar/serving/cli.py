"""`seminar serve` and `seminar bench serving` (owned by seminar.serving). Placeholder."""

import typer


def serve() -> None:
    """Run the bundled tritonserver on loopback over a model repository."""
    typer.echo("not implemented yet", err=True)
    raise typer.Exit(code=2)


def bench_serving() -> None:
    """Ensemble latency vs in-process vs a trivial model; writes reports/serving.*."""
    typer.echo("not implemented yet", err=True)
    raise typer.Exit(code=2)
