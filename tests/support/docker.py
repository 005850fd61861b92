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

# Every Triton container runs the supervisor `seminar serve`, which starts tritonserver itself
# with the model-repository API locked by an admin key. Its own HTTP port (probes /live and
# /ready, its /metrics) is this one in every image and manifest.
SUPERVISOR_HEALTH_PORT = 8003
# `seminar serve`'s options as the supervisor defines them. Until the CLI in this checkout has
# them, the deployments are checked against this list; afterwards against the real CLI.
SERVE_OPTIONS = frozenset(
    {
        "--repo",
        "--host",
        "--grpc-port",
        "--http-port",
        "--metrics-port",
        "--health-port",
        "--admin-key-file",
        "--tritonserver",
        "--backend-directory",
        "--shm-default-bytes",
    }
)
# Where every image and manifest puts the admin key of the model-repository API.
ADMIN_KEY_FILE = "/var/run/secrets/seminar/admin-key"


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


def serve_options() -> set[str]:
    """The options `seminar serve` accepts: the real CLI's once it has the supervisor's flags
    (the admin key), the documented interface before that."""
    real = set(cli_options("serve"))
    return real if "--admin-key-file" in real else set(SERVE_OPTIONS)


def flag_values(args: list[str] | tuple[str, ...], flag: str) -> list[str]:
    """Every value given to `flag` (as `flag value` or `flag=value`), in order."""
    values = []
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            values.append(args[i + 1])
        elif arg.startswith(flag + "="):
            values.append(arg.split("=", 1)[1])
    return values


# ---------------------------------------------------------------------------------------------
# What a container runs: the argv Docker or the kubelet starts, resolved through the image's
# ENTRYPOINT/CMD, and the simple commands inside shell scripts (`sh -c`, RUN). The security
# checks look for servers in these, wherever a manifest or an image hides them.
# ---------------------------------------------------------------------------------------------

SHELLS = {"sh", "bash", "dash", "ash", "zsh", "ksh"}
# Programs that run their arguments as a command (after their own options).
WRAPPERS = {"exec", "env", "nohup", "tini", "dumb-init", "setsid"}
WRAPPERS_WITH_USER = {"gosu", "su-exec"}  # WRAPPER USER COMMAND...
DEFAULT_SHELL = ["/bin/sh", "-c"]


@dataclass(frozen=True)
class ContainerCommand:
    """One command a deployment file makes something run."""

    where: str  # e.g. "docker/compose.yaml service triton"
    argv: tuple[str, ...]
    server: bool  # a container's main process (False: a RUN step of an image build)


def _basename(word: str) -> str:
    return word.rsplit("/", 1)[-1]


def strip_wrappers(argv: list[str]) -> list[str]:
    """argv without leading VAR=value assignments and exec/env/tini-style wrappers."""
    argv = list(argv)
    while argv:
        head = _basename(argv[0])
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):
            argv = argv[1:]
        elif head in WRAPPERS or head in WRAPPERS_WITH_USER:
            rest = argv[1:]
            while rest and (rest[0].startswith("-") or "=" in rest[0]):
                rest = rest[1:]
            if head in WRAPPERS_WITH_USER and rest:
                rest = rest[1:]
            argv = rest
        else:
            return argv
    return argv


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script: split at ; & && | || ( ) and newlines;
    redirection targets are dropped."""
    lexer = shlex.shlex(script.replace("\\\n", " "), posix=True, punctuation_chars=";&|()<>\n")
    lexer.whitespace = " \t\r"
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    skip_next = False
    for token in lexer:
        if token and set(token) <= set(";&|()<>\n"):
            if "<" in token or ">" in token:
                skip_next = True
            elif commands[-1]:
                commands.append([])
            continue
        if skip_next:
            skip_next = False
            continue
        commands[-1].append(token)
    return [c for c in commands if c]


def simple_commands(argv: list[str] | tuple[str, ...]) -> list[list[str]]:
    """argv itself and, for a shell running a script (`sh -c SCRIPT`), every command of the
    script, recursively; wrappers (exec, env, tini, ...) are stripped."""
    argv = strip_wrappers(list(argv))
    if not argv:
        return []
    found = [argv]
    if _basename(argv[0]) in SHELLS:
        for i, arg in enumerate(argv[1:-1], 1):
            if re.fullmatch(r"-[A-Za-z]*c[A-Za-z]*", arg):
                for command in shell_commands(argv[i + 1]):
                    found += simple_commands(command)
                break
    return found


def server_kind(argv: list[str]) -> str | None:
    """ "tritonserver" or "seminar serve" when argv (wrappers stripped) starts one, else None."""
    if not argv:
        return None
    head = _basename(argv[0])
    rest = argv[1:]
    if re.fullmatch(r"python[0-9.]*", head) and rest[:1] == ["-m"] and len(rest) > 1:
        head, rest = rest[1].split(".")[0], rest[2:]
    if head == "tritonserver":
        return "tritonserver"
    if head == "seminar" and rest[:1] == ["serve"]:
        return "seminar serve"
    return None


def _argv(ins: Instruction, shell: list[str]) -> list[str]:
    exec_form = ins.json_args()
    return [str(a) for a in exec_form] if exec_form is not None else [*shell, ins.value]


def image_command(df: Dockerfile, stage: Stage) -> list[str]:
    """ENTRYPOINT + CMD of the image a stage builds, inherited from an earlier stage it is
    built FROM as Docker does (a stage's own ENTRYPOINT resets an inherited CMD). A registry
    base image contributes nothing: what it runs by default is not known here."""
    entrypoint, cmd = _entry_and_cmd(df, stage)
    return [*entrypoint, *cmd]


def _parent(df: Dockerfile, stage: Stage) -> Stage | None:
    earlier = df.stages[: df.stages.index(stage)]
    return next((s for s in reversed(earlier) if s.name == stage.base), None)


def _entry_and_cmd(df: Dockerfile, stage: Stage) -> tuple[list[str], list[str]]:
    parent = _parent(df, stage)
    entrypoint, cmd = _entry_and_cmd(df, parent) if parent else ([], [])
    shell = _shell(df, parent) if parent else DEFAULT_SHELL
    cmd_set = False
    for ins in stage.instructions:
        if ins.keyword == "SHELL":
            shell = [str(a) for a in ins.json_args() or DEFAULT_SHELL]
        elif ins.keyword == "ENTRYPOINT":
            entrypoint = _argv(ins, shell)
            if not cmd_set:
                cmd = []
        elif ins.keyword == "CMD":
            cmd, cmd_set = _argv(ins, shell), True
    return entrypoint, cmd


def _shell(df: Dockerfile, stage: Stage) -> list[str]:
    parent = _parent(df, stage)
    shell = _shell(df, parent) if parent else DEFAULT_SHELL
    for ins in stage.all("SHELL"):
        shell = [str(a) for a in ins.json_args() or DEFAULT_SHELL]
    return shell


def dockerfile_commands(df: Dockerfile) -> list[ContainerCommand]:
    """What each stage's image runs when started, and each RUN step of its build."""
    commands = []
    for index, stage in enumerate(df.stages):
        label = f"{df.rel} stage {stage.name or index}"
        argv = image_command(df, stage)
        if argv:
            commands.append(ContainerCommand(label, tuple(argv), server=True))
        shell = _shell(df, stage)
        for ins in stage.all("RUN"):
            commands.append(
                ContainerCommand(f"{label} RUN line {ins.line}", tuple(_argv(ins, shell)), False)
            )
    return commands


def image_repository(image: str) -> str:
    """`seminar/triton-gpu:0.1.0` or `seminar/triton-gpu:${SEMINAR_TAG:-dev}` -> `seminar/triton-gpu`."""
    return re.sub(r":(\$\{[^}]*\}|[\w.-]+)$", "", image.split("@")[0])


def compose_images(compose: dict[str, Any]) -> dict[str, tuple[list[str], list[str]]]:
    """Image repository -> (ENTRYPOINT, CMD), for every image compose builds from a Dockerfile
    here; the Kubernetes manifests run the same images under the same names."""
    images = {}
    for service in compose["services"].values():
        if "build" in service and "image" in service:
            build = service["build"]
            df = parse_dockerfile((DOCKER / build["context"] / build["dockerfile"]).resolve())
            stage = df.stage(build["target"]) if "target" in build else df.stages[-1]
            images[image_repository(service["image"])] = _entry_and_cmd(df, stage)
    return images


def _words(value: str | list[Any] | None) -> list[str] | None:
    if value is None:
        return None
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def _override(
    image: tuple[list[str], list[str]], entrypoint: list[str] | None, cmd: list[str] | None
) -> list[str]:
    """Docker's and the kubelet's rule: a new entry point drops the image's CMD too."""
    image_entry, image_cmd = image
    if entrypoint is not None:
        return [*entrypoint, *(cmd or [])]
    return [*image_entry, *(cmd if cmd is not None else image_cmd)]


def compose_commands(compose: dict[str, Any]) -> list[ContainerCommand]:
    """What each compose service runs: its image's ENTRYPOINT/CMD under the service's
    `entrypoint` and `command`."""
    images = compose_images(compose)
    commands = []
    for name, service in compose["services"].items():
        image = images.get(image_repository(service.get("image", "")), ([], []))
        argv = _override(image, _words(service.get("entrypoint")), _words(service.get("command")))
        if argv:
            where = f"docker/compose.yaml service {name}"
            commands.append(ContainerCommand(where, tuple(argv), server=True))
    return commands


POD_OWNERS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def pod_template(resource: dict[str, Any]) -> dict[str, Any] | None:
    """The pod template (metadata + spec) of a workload, or None for other kinds."""
    kind = resource["kind"]
    if kind == "Pod":
        return resource
    if kind in POD_OWNERS:
        return resource["spec"]["template"]
    if kind == "CronJob":
        return resource["spec"]["jobTemplate"]["spec"]["template"]
    return None


def k8s_commands(
    resources: dict[tuple[str, str], dict[str, Any]], compose: dict[str, Any]
) -> list[ContainerCommand]:
    """What each container of each workload runs: `command` replaces the image's ENTRYPOINT
    (and drops its CMD), `args` replaces the CMD. A project image (seminar/...) that nothing
    here builds fails: what it runs cannot be known."""
    images = compose_images(compose)
    commands = []
    for (kind, name), resource in resources.items():
        template = pod_template(resource)
        if template is None:
            continue
        spec = template["spec"]
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            where = f"k8s {kind}/{name} container {container['name']}"
            repository = image_repository(container["image"])
            command = _words(container.get("command"))
            assert repository in images or not repository.startswith("seminar/") or command, (
                f"{where}: image {container['image']} is built nowhere in docker/"
            )
            image = images.get(repository, ([], []))
            argv = _override(image, command, _words(container.get("args")))
            if argv:
                commands.append(ContainerCommand(where, tuple(argv), server=True))
    return commands
