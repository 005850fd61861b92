"""`seminar train | evaluate | score | bench quality` (owned by training/). Placeholder."""

import typer


def _not_built_yet() -> int:
    typer.echo("not implemented yet", err=True)
    return 2


def train() -> None:
    """Train a model on a prepared dataset."""
    raise typer.Exit(code=_not_built_yet())


def evaluate() -> None:
    """Evaluate a trained run on the test split."""
    raise typer.Exit(code=_not_built_yet())


def score() -> None:
    """Offline reference scores for one request."""
    raise typer.Exit(code=_not_built_yet())


def bench_quality() -> None:
    """Train and evaluate every model over seeds; write reports/quality.*."""
    raise typer.Exit(code=_not_built_yet())
