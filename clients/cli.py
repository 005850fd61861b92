"""`seminar gateway | client | load | perf | observe` (owned by clients/). Placeholder."""

import typer

client_app = typer.Typer(help="Send requests to the gateway or straight to Triton.", no_args_is_help=True)


def _todo() -> None:
    typer.echo("not implemented yet", err=True)
    raise typer.Exit(code=2)


def gateway() -> None:
    """Run the seminar.v1.Ranker gRPC gateway in front of Triton."""
    _todo()


def load() -> None:
    """Drive load through the gateway; print throughput and latency percentiles."""
    _todo()


def perf() -> None:
    """Run perf_analyzer against the seminar ensemble; write reports/perf.*."""
    _todo()


def observe() -> None:
    """Start Prometheus on loopback scraping Triton and the gateway."""
    _todo()
