"""`seminar build` (owned by build/). Placeholder."""

import typer


def build() -> None:
    """Export a trained run into a new numbered version of the Triton model repository."""
    typer.echo("not implemented yet", err=True)
    raise typer.Exit(code=2)
