"""Every error a user can cause or meet, by kind, and the one exit code of each kind.

An error is raised with one sentence that names the file, field or address at fault, and its
kind says what the user must do about it; every `seminar` command runs under `cli_guard`, which
prints the sentence and exits with the kind's code. Anything that is not a `SeminarError` is a
bug and keeps its traceback.

| exit | kind | meaning |
|---:|---|---|
| 0 | | done |
| 1 | `CheckFailed` | ran, and a check or benchmark verdict failed (parity gate, soak, smoke test) |
| 2 | `UsageError` | a command-line option is invalid (typer's own usage errors use 2 too) |
| 3 | `DataError` | input data (dataset, catalog, event log) is missing or malformed |
| 4 | `ArtifactError` | an artifact (run, checkpoint, repository, version, PQ files) is missing or corrupt |
| 5 | `ConflictError` | the request conflicts with what exists (version taken, last version, ...) |
| 6 | `ServiceError` | a server (tritonserver, gateway, Prometheus) cannot be started or reached |
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ClassVar, ParamSpec, TypeVar


class SeminarError(Exception):
    """Base of every error meant for the user; `exit_code` is its kind's."""

    exit_code: ClassVar[int] = 1


class CheckFailed(SeminarError):
    exit_code = 1


class UsageError(SeminarError, ValueError):
    exit_code = 2


class DataError(SeminarError, ValueError):
    exit_code = 3


class ArtifactError(SeminarError):
    exit_code = 4


class ConflictError(SeminarError):
    exit_code = 5


class ServiceError(SeminarError):
    exit_code = 6


EXIT_CODES: dict[int, str] = {
    0: "done",
    CheckFailed.exit_code: "a check or a benchmark verdict failed",
    UsageError.exit_code: "invalid command-line option",
    DataError.exit_code: "input data missing or malformed",
    ArtifactError.exit_code: "artifact (run, repository, version) missing or corrupt",
    ConflictError.exit_code: "conflicts with what exists (version taken, last version, ...)",
    ServiceError.exit_code: "a server cannot be started or reached",
}

Params = ParamSpec("Params")
Result = TypeVar("Result")


def cli_guard(command: Callable[Params, Result]) -> Callable[Params, Result]:
    """Run a typer command; a SeminarError becomes its sentence on stderr and its exit code."""
    import typer

    @functools.wraps(command)
    def guarded(*args: Params.args, **kwargs: Params.kwargs) -> Result:
        try:
            return command(*args, **kwargs)
        except SeminarError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(code=error.exit_code) from None

    return guarded
