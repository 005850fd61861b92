"""One errors module, one base class, one CLI guard, one exit code per kind of failure.

The scans parse every code folder (no imports, so the Triton backends count too); the CLI
tests run the real `seminar` command and check the documented code, one sentence on stderr
and no traceback.
"""

from __future__ import annotations

import ast
import builtins
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from seminar.cli import app
from seminar.errors import (
    EXIT_CODES,
    KINDS,
    ArtifactError,
    CheckFailed,
    ConflictError,
    DataError,
    SeminarError,
    ServiceError,
    UsageError,
    cli_guard,
    exit_code_table,
)
from tests.test_layout import LAYERS, ROOT

# Exception classes that are not SeminarErrors, each with the reason it never reaches a user.
NOT_FOR_USERS = {
    "Refusal": "the gateway's answer to one request: Rank turns it into that answer's gRPC status",
}


def code_files() -> Iterator[Path]:
    for layer in LAYERS:
        yield from sorted((ROOT / layer).rglob("*.py"))


def base_names(node: ast.ClassDef) -> list[str]:
    """`Name` of each base of a class, `attr` for dotted ones (errors.ArtifactError)."""
    names = []
    for base in node.bases:
        if isinstance(base, ast.Name):
            names.append(base.id)
        elif isinstance(base, ast.Attribute):
            names.append(base.attr)
    return names


def is_builtin_exception(name: str) -> bool:
    value = getattr(builtins, name, None)
    return isinstance(value, type) and issubclass(value, BaseException)


def exception_classes() -> dict[str, list[tuple[str, list[str]]]]:
    """Class name -> [(where, base names)] of every class in the code that is an exception:
    one deriving from a builtin exception, from another library's *Error / *Exception, or
    from such a class of this code base."""
    classes: dict[str, list[tuple[str, list[str]]]] = {}
    for path in code_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ClassDef):
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                classes.setdefault(node.name, []).append((where, base_names(node)))
    exceptions: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, definitions in classes.items():
            if name in exceptions:
                continue
            bases = {base for _, found in definitions for base in found}
            if any(
                is_builtin_exception(base)
                or base in exceptions
                or (base not in classes and base.endswith(("Error", "Exception")))
                for base in bases
            ):
                exceptions.add(name)
                changed = True
    return {name: classes[name] for name in sorted(exceptions)}


def derives_from_seminar_error(name: str, classes: dict[str, list[tuple[str, list[str]]]]) -> bool:
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current == SeminarError.__name__:
            return True
        if current in seen or current not in classes:
            continue
        seen.add(current)
        todo += [base for _, bases in classes[current] for base in bases]
    return False


def test_every_exception_class_is_a_seminar_error_or_says_why_not() -> None:
    classes = exception_classes()
    assert "SeminarError" in classes and "RequestError" in classes, "the scan finds classes"
    strays = [
        f"{where}: class {name}({', '.join(bases)})"
        for name, definitions in classes.items()
        for where, bases in definitions
        if not derives_from_seminar_error(name, classes) and name not in NOT_FOR_USERS
    ]
    assert strays == [], "derive these from a kind in seminar/errors.py:\n" + "\n".join(strays)
    assert set(NOT_FOR_USERS) <= set(classes), "the allow-list names classes that still exist"


def test_no_exception_class_name_is_defined_twice() -> None:
    twice = {
        name: [where for where, _ in definitions]
        for name, definitions in exception_classes().items()
        if len(definitions) > 1
    }
    assert twice == {}


def _is_class_name(node: ast.expr) -> bool:
    """`type(x).__name__` or `x.__class__.__name__`."""
    if not (isinstance(node, ast.Attribute) and node.attr == "__name__"):
        return False
    owner = node.value
    is_type_call = (
        isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "type"
    )
    return is_type_call or (isinstance(owner, ast.Attribute) and owner.attr == "__class__")


def test_no_code_matches_an_exception_by_its_class_name() -> None:
    found = []
    for path in code_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Compare) and any(
                _is_class_name(operand) for operand in (node.left, *node.comparators)
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == [], "catch the class (or its kind), never compare names:\n" + "\n".join(found)


def test_each_kind_has_its_own_exit_code_and_the_table_lists_them() -> None:
    codes = [kind.exit_code for kind in KINDS]
    assert len(set(codes)) == len(codes)
    assert set(KINDS) == set(SeminarError.__subclasses__())
    assert sorted(EXIT_CODES) == [0, *sorted(codes)]
    assert (UsageError.exit_code, CheckFailed.exit_code) == (2, 1)  # typer's usage errors are 2


def _commands(typer_app) -> Iterator[tuple[str, object]]:
    for info in typer_app.registered_commands:
        yield info.name or info.callback.__name__, info.callback
    for group in typer_app.registered_groups:
        for name, callback in _commands(group.typer_instance):
            yield f"{group.name} {name}", callback


def test_every_command_runs_under_cli_guard() -> None:
    guarded = cli_guard(lambda: None).__code__
    commands = dict(_commands(app))
    assert {"train", "build", "data info", "client rank", "bench soak"} <= set(commands)
    unguarded = sorted(
        name for name, callback in commands.items() if callback.__code__ is not guarded
    )
    assert unguarded == []


def test_help_lists_every_exit_code() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    shown = " ".join(result.output.split())
    for code, meaning in EXIT_CODES.items():
        assert f"{code} {' '.join(meaning.split())}" in shown


def test_readme_exit_codes_are_the_table() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "## Exit codes" in readme
    assert exit_code_table() in readme, "README's table must read:\n" + exit_code_table()


def _seminar(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seminar.cli", *args], capture_output=True, text=True, timeout=120
    )


def _one_sentence(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.mark.parametrize(
    ("kind", "args", "says"),
    [
        (
            UsageError,
            ["client", "rank", "--user", "1", "--candidates", "1", "--gateway", "a:1", "--triton", "b:1"],
            "exactly one of --gateway",
        ),
        (DataError, ["data", "info", "{tmp}/no-dataset"], "is not a prepared dataset"),
        (ArtifactError, ["evaluate", "--run", "{tmp}/no-run"], "run directory not found"),
        (
            ConflictError,
            ["data", "prepare", "synthetic", "--out", "{tmp}/taken", "--users", "5"],
            "refusing to overwrite",
        ),
        (
            ServiceError,
            ["client", "rank", "--user", "1", "--candidates", "1", "--gateway", "127.0.0.1:1",
             "--timeout", "2"],
            "UNAVAILABLE",
        ),
    ],
)  # fmt: skip
def test_a_command_exits_with_its_kind_code_and_one_sentence(
    kind: type[SeminarError], args: list[str], says: str, tmp_path: Path
) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "precious.txt").write_text("not a dataset")
    result = _seminar(*(arg.replace("{tmp}", str(tmp_path)) for arg in args))
    assert result.returncode == kind.exit_code, result.stderr
    assert says in _one_sentence(result.stderr)
    assert "Traceback" not in result.stderr


def test_typer_usage_errors_exit_2_without_a_traceback(tmp_path: Path) -> None:
    result = _seminar("train", "--data", str(tmp_path), "--out", str(tmp_path), "--model", "bert")
    assert result.returncode == UsageError.exit_code == 2
    assert "bert" in result.stderr and "Traceback" not in result.stderr


def test_a_failed_check_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    """`seminar client rank --verify-triton`: the gateway's ranking differs from Triton's."""
    from seminar.clients import client

    served = client.RankResult([2, 1], [0.9, 0.1], "control", "seminar_v1:1")
    reference = client.RankResult([2, 1], [0.9, 0.3], "", "seminar_v1:1")
    monkeypatch.setattr(client, "rank_via_gateway", lambda *args: served)
    monkeypatch.setattr(client, "rank_direct", lambda *args: reference)
    result = CliRunner().invoke(
        app,
        ["client", "rank", "--user", "1", "--candidates", "1,2", "--gateway", "a:1",
         "--verify-triton", "b:1", "--json"],
    )  # fmt: skip
    assert result.exit_code == CheckFailed.exit_code == 1, result.output
    assert "MISMATCH" in _one_sentence(result.stderr)
