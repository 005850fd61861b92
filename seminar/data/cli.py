"""`seminar data ...` (owned by the data pipeline)."""

import typer

app = typer.Typer(help="Prepare datasets into the canonical layout (docs/data.md).", no_args_is_help=True)
prepare_app = typer.Typer(help="Turn a source into a prepared dataset directory.", no_args_is_help=True)
app.add_typer(prepare_app, name="prepare")


def bench_synthetic() -> None:
    """Synthetic generator throughput and peak memory for 1M events; writes reports/synthetic.*."""
    typer.echo("not implemented yet", err=True)
    raise typer.Exit(code=2)
