"""`seminar`: one console command, sub-commands in data-flow order.

cli/ is the top of the layout: the library and every stage own their commands, each in a cli
module of its own folder (seminar.data.cli, seminar.training.cli, ...); this file only mounts them (and cli/demo.py runs them end to end for `make demo`).
Those modules import heavy libraries (torch, tritonclient, grpc) inside the command bodies so
that `seminar --help` stays instant.
"""

from pathlib import Path

import typer

from seminar.bench import cli as bench_cli
from seminar.build import cli as build_cli
from seminar.clients import cli as clients_cli
from seminar.data import cli as data_cli
from seminar.errors import exit_code_epilog
from seminar.serving import cli as serving_cli
from seminar.training import cli as training_cli


def _write_native(repo: Path, version: int) -> Path:
    """builder.BuildInputs.write_native: serving's C++ step, imported when a build needs it."""
    from seminar.serving.native.fused_step import write_native_version

    return write_native_version(repo, version)


# `seminar build --graph native` writes the serving stage's C++ step, which the build stage
# may not import: the application that mounts both hands it over.
build_cli.NATIVE_WRITER = _write_native

app = typer.Typer(
    name="seminar",
    help=(
        "SEMINAR lifelong-sequence recommender: prepare data, train, build a Triton model "
        "repository, serve it, and roll it out behind an A/B gateway."
    ),
    epilog=exit_code_epilog(),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

bench_app = typer.Typer(
    help="Benchmarks: each prints its record and writes it under runs/bench/ (reports/ only "
    "when named as the output).",
    no_args_is_help=True,
)

# data -> training -> PQ -> build -> serving -> clients
app.add_typer(data_cli.app, name="data")
bench_app.command("synthetic")(bench_cli.bench_synthetic)
app.command("train")(training_cli.train)
app.command("evaluate")(training_cli.evaluate)
app.command("score")(training_cli.score)
app.command("degrade")(training_cli.degrade)
bench_app.command("quality")(bench_cli.bench_quality)
bench_app.command("pq")(bench_cli.bench_pq)
bench_app.command("images")(bench_cli.bench_images)
app.command("build")(build_cli.build)
app.command("retire")(build_cli.retire)
app.command("serve")(serving_cli.serve)
bench_app.command("serving")(bench_cli.bench_serving)
bench_app.command("native")(bench_cli.bench_native)
bench_app.command("soak")(bench_cli.bench_soak)
bench_app.command("online")(bench_cli.bench_online)
app.command("gateway")(clients_cli.gateway)
app.add_typer(clients_cli.client_app, name="client")
app.command("load")(clients_cli.load)
app.command("simulate")(clients_cli.simulate)
app.command("perf")(bench_cli.perf)
app.command("observe")(clients_cli.observe)
app.add_typer(clients_cli.ab_app, name="ab")  # seminar ab report | ramp
app.add_typer(bench_app, name="bench")
