"""Fixtures and parsers for the static checks of docker/ (tests/test_docker*.py).

Nothing here needs a Docker engine or a cluster: Dockerfiles are parsed into instructions,
the compose file and the Kubernetes manifests are loaded as YAML, and the tests check them
against their schemas and against the repository (paths, ports, model names).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
COMPOSE_SCHEMA = DOCKER / "schemas" / "compose-spec.json"
K8S = DOCKER / "k8s"
# The Kubernetes minor the manifests target (kubernetes-validate ships its schemas offline).
# 1.27 is the oldest with GA gRPC probes, which gateway.yaml uses; we validate against the
# newest schema the pinned package ships, strict (unknown fields are errors).
K8S_VERSION = "1.37.0"


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction with its continuation lines joined."""

    line: int  # 1-based line of the keyword
    keyword: str  # upper-case, e.g. "COPY"
    value: str  # everything after the keyword, continuations joined with spaces

    def json_args(self) -> list[str] | None:
        """The exec-form (JSON array) arguments, or None for the shell form."""
        text = self.value
        while text.startswith("--"):  # leading flags such as COPY --chown=...
            text = text.partition(" ")[2].lstrip()
        if not text.startswith("["):
            return None
        return yaml.safe_load(text)


@dataclass
class Stage:
    """One build stage: its resolved base image, name and instructions."""

    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    path: Path
    args: dict[str, str]  # global ARG defaults (before the first FROM)
    stages: list[Stage]

    @property
    def rel(self) -> str:
        return str(self.path.relative_to(REPO))

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"{self.rel}: no stage named {name!r}")

    def instructions(self, keyword: str) -> list[Instruction]:
        return [i for s in self.stages for i in s.all(keyword)]


def parse_dockerfile(path: Path) -> Dockerfile:
    """Split into instructions (comments dropped, `\\` continuations joined), resolve each
    FROM through the global ARG defaults and earlier stage names."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continuation is dropped by Docker too
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        text = " ".join(p for p in pending if p)
        keyword, _, value = text.partition(" ")
        instructions.append(Instruction(start, keyword.upper(), value.strip()))
        pending = []
    assert not pending, f"{path}: the file ends inside a line continuation"

    args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = [w for w in ins.value.split() if not w.startswith("--")]
            base = _substitute(words[0], args)
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        elif not stages and ins.keyword == "ARG":
            key, _, default = ins.value.partition("=")
            args[key.strip()] = default.strip().strip('"')
        elif stages:
            stages[-1].instructions.append(ins)
        else:
            raise AssertionError(f"{path}:{ins.line}: {ins.keyword} before the first FROM")
    return Dockerfile(path=path, args=args, stages=stages)


def _substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(
        r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), text
    )


def copy_sources(ins: Instruction) -> list[str]:
    """Source paths of a COPY/ADD from the build context (not `--from` a stage)."""
    words = shlex.split(ins.value) if ins.json_args() is None else ins.json_args()
    if any(w.startswith("--from=") for w in words):
        return []
    words = [w for w in words if not w.startswith("--")]
    return words[:-1]


def exposed_ports(dockerfile: Dockerfile) -> set[int]:
    return {
        int(p.split("/")[0]) for ins in dockerfile.instructions("EXPOSE") for p in ins.value.split()
    }


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_manifest_files() -> list[Path]:
    return sorted(K8S.rglob("*.yaml"))


def dockerfile_paths() -> list[Path]:
    return sorted(p for p in DOCKER.rglob("*") if p.is_file() and p.name.startswith("Dockerfile"))


@pytest.fixture(scope="session")
def dockerfiles() -> dict[str, Dockerfile]:
    """Every Dockerfile under docker/, keyed by its folder name ("triton", "gateway", ...)."""
    return {p.parent.name: parse_dockerfile(p) for p in dockerfile_paths()}


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="session")
def k8s_resources() -> dict[tuple[str, str], dict[str, Any]]:
    """Every Kubernetes resource under docker/k8s/, keyed by (kind, name)."""
    resources: dict[tuple[str, str], dict[str, Any]] = {}
    for path in k8s_manifest_files():
        for doc in load_yaml_documents(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in resources, f"{path}: {key} is defined twice"
            resources[key] = doc
    return resources


def cli_options(command: str) -> dict[str, bool]:
    """The options of `seminar COMMAND` (from the real Typer app) -> whether each is required."""
    import typer.main

    from seminar.cli import app

    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    return {
        opt: p.required
        for p in click_command.params
        for opt in [*p.opts, *getattr(p, "secondary_opts", [])]
        if opt.startswith("--")
    }


def assert_valid_cli_args(command: str, args: list[str], where: str) -> None:
    """Every `--flag` in args is an option of `seminar COMMAND`, and every required one is there."""
    options = cli_options(command)
    given = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    unknown = sorted(given - options.keys())
    assert not unknown, f"{where}: `seminar {command}` has no option(s) {unknown}"
    missing = sorted(o for o, required in options.items() if required and o not in given)
    assert not missing, f"{where}: `seminar {command}` needs {missing}"


def flag_value(args: list[str], flag: str) -> str:
    """The value after `flag` (or of `flag=value`) in an argument list."""
    for i, arg in enumerate(args):
        if arg == flag:
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{flag} is not in {args}")
