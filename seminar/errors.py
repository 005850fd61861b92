"""Every error a user can cause or meet, by kind, and the one exit code of each kind.

An error is raised with one sentence that names the file, field or address at fault, and its
kind says what the user must do about it. Every `seminar` command runs under `cli_guard`,
which prints the sentence on stderr and exits with the kind's code; `EXIT_CODES` is the table
that `seminar --help` and the README show. Anything that is not a `SeminarError` is a bug and
keeps its traceback.

An area keeps a subclass of a kind only where a caller must tell it apart from the rest of
the kind (the Triton backends answer a `RequestError` per request and serve the others);
everywhere else it raises the kind itself.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import ClassVar, ParamSpec, TypeVar


class SeminarError(Exception):
    """Base of every error meant for the user; `exit_code` and `meaning` are its kind's."""

    exit_code: ClassVar[int] = 1
    meaning: ClassVar[str] = "failed"


class CheckFailed(SeminarError):
    """It ran, and a check failed: the parity gate, a smoke test, a soak verdict."""

    exit_code = 1
    meaning = "a check or a benchmark verdict failed (parity gate, smoke test, soak)"


class UsageError(SeminarError, ValueError):
    """A command-line option (or the configuration or request it names) is invalid."""

    exit_code = 2
    meaning = "invalid option, configuration file or request (typer's own errors too)"


class DataError(SeminarError, ValueError):
    """Input data (a dataset, a catalog, an event log) is missing or malformed."""

    exit_code = 3
    meaning = "input data missing or malformed (source files, dataset, catalog)"


class ArtifactError(SeminarError):
    """Something the pipeline wrote (a run, a checkpoint, a repository, a version, PQ files)
    is missing or corrupt."""

    exit_code = 4
    meaning = "artifact missing or corrupt (run, checkpoint, repository, version)"


class ConflictError(SeminarError):
    """The request conflicts with what exists: a version taken, the last version, a lock."""

    exit_code = 5
    meaning = "conflicts with what exists (version taken, last version, lock held)"


class ServiceError(SeminarError):
    """A server (tritonserver, the gateway, Prometheus, perf_analyzer) cannot be started or
    reached, or failed a call."""

    exit_code = 6
    meaning = "a server or tool cannot be started or reached, or failed a call"


KINDS: tuple[type[SeminarError], ...] = (
    CheckFailed,
    UsageError,
    DataError,
    ArtifactError,
    ConflictError,
    ServiceError,
)

EXIT_CODES: dict[int, str] = {0: "done", **{kind.exit_code: kind.meaning for kind in KINDS}}


def exit_code_table() -> str:
    """EXIT_CODES as the markdown table of the README's "Exit codes" section."""
    kind_of = {kind.exit_code: kind.__name__ for kind in KINDS}
    rows = ["| exit | kind | meaning |", "|---:|---|---|"]
    for code, meaning in EXIT_CODES.items():
        kind = f"`{kind_of[code]}`" if code in kind_of else ""
        rows.append(f"| {code} | {kind} | {meaning} |")
    return "\n".join(rows)


def exit_code_epilog() -> str:
    """EXIT_CODES for `seminar --help`, one code per line."""
    lines = [f"{code}  {meaning}" for code, meaning in EXIT_CODES.items()]
    return "Exit codes:\n\n" + "\n".join(lines)


@contextlib.contextmanager
def reading_options() -> Iterator[None]:
    """Inside: a ValueError from building a configuration out of command-line options is
    the user's, so it becomes a UsageError (configurations validate in __post_init__)."""
    try:
        yield
    except SeminarError:
        raise
    except ValueError as error:
        raise UsageError(f"invalid option: {error}") from None


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
