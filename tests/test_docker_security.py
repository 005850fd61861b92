"""The model-repository API of every deployed Triton stays locked, statically checked.

A tritonserver in explicit (or poll) model-control mode loads whatever a client names, and the
repository API accepts the model's files in the request body: anyone who reaches its HTTP or
gRPC port can upload a `model.py` and have the server run it, or unload what serves. So every
command that any Dockerfile (ENTRYPOINT, CMD, RUN), the compose file or a Kubernetes manifest
makes something run is parsed, shell scripts included, and:

- a tritonserver in explicit/poll mode must restrict `model-repository` on HTTP and on gRPC
  (`--http-restricted-api`, `--grpc-restricted-protocol`), unless that protocol is off;
- `seminar serve` (the supervisor, which does that for tritonserver) bound to anything but
  loopback must be given the admin key (`--admin-key-file`), and the key must come from a
  Secret (Kubernetes) or a compose secret that exist, readable by the container's user only;
- every pod that runs a server must be selected by a NetworkPolicy, and the Triton pods' policy
  may admit inference only from the gateway and metrics only from Prometheus.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Any

import pytest

from seminar.contract import (
    DEFAULT_GATEWAY_METRICS_PORT,
    DEFAULT_GATEWAY_PORT,
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
)
from tests.support.docker import (
    ADMIN_KEY_FILE,
    DOCKER,
    REPO,
    SUPERVISOR_HEALTH_PORT,
    ContainerCommand,
    Dockerfile,
    compose_commands,
    dockerfile_commands,
    flag_values,
    k8s_commands,
    pod_template,
    serve_options,
    server_kind,
    simple_commands,
)

Resources = dict[tuple[str, str], dict[str, Any]]
NAMESPACE = "seminar"
# Where a Triton server runs. Every one must be found by the parser (or it checks nothing).
TRITON_CONTAINERS = {
    "docker/triton/Dockerfile stage triton",
    "docker/triton-cpu/Dockerfile stage 0",
    "docker/compose.yaml service triton",
    "docker/compose.yaml service triton-cpu",
    "k8s Deployment/triton container triton",
    "k8s Deployment/triton-shard-0 container triton",
    "k8s Deployment/triton-shard-1 container triton",
}
TRITON_DEPLOYMENTS = ["triton", "triton-shard-0", "triton-shard-1"]
# The Kubernetes Secret that holds the admin key, and the placeholder the repository ships in
# it: a real key committed here would be public.
ADMIN_KEY_SECRET = "seminar-admin-key"
ADMIN_KEY_PLACEHOLDER = "REPLACE-ME"
# The Secret file is root's; kubelet gives the pod's fsGroup read access, nobody else.
ADMIN_KEY_MODE = 0o400
LOOPBACK = ("127.", "localhost", "::1", "[::1]")
INFERENCE_PORTS = {DEFAULT_HTTP_PORT, DEFAULT_GRPC_PORT}
MONITORING_PORTS = {DEFAULT_METRICS_PORT, SUPERVISOR_HEALTH_PORT}


# ---------------------------------------------------------------------------------------------
# The rule, on one command
# ---------------------------------------------------------------------------------------------


def _last(args: list[str], flag: str, default: str) -> str:
    values = flag_values(args, flag)
    return values[-1] if values else default


def _restricts_repository(value: str) -> bool:
    """`model-repository[,other...]:HEADER=KEY`, the syntax of both Triton flags."""
    categories, _, header_key = value.partition(":")
    header, _, key = header_key.partition("=")
    return "model-repository" in categories.split(",") and bool(header) and bool(key)


def open_repository_api(argv: list[str]) -> str | None:
    """Why this simple command exposes Triton's model-repository API, or None."""
    kind = server_kind(argv)
    if kind == "tritonserver":
        mode = _last(argv, "--model-control-mode", "none")
        if mode not in {"explicit", "poll"}:
            return None  # load and unload are refused in mode none
        for restrict, allow in (
            ("--http-restricted-api", "--allow-http"),
            ("--grpc-restricted-protocol", "--allow-grpc"),
        ):
            if _last(argv, allow, "true").lower() in {"false", "0"}:
                continue
            if not any(_restricts_repository(v) for v in flag_values(argv, restrict)):
                return f"tritonserver in {mode} mode without {restrict}=model-repository:..."
    if kind == "seminar serve":
        host = _last(argv, "--host", "127.0.0.1")
        if not host.startswith(LOOPBACK) and not any(flag_values(argv, "--admin-key-file")):
            return f"seminar serve on {host} without --admin-key-file"
    return None


def _violations(commands: list[ContainerCommand]) -> list[str]:
    found = []
    for command in commands:
        for argv in simple_commands(command.argv):
            reason = open_repository_api(argv)
            if reason:
                found.append(f"{command.where}: {reason}: {' '.join(argv)}")
    return found


@pytest.mark.parametrize(
    ("command", "why"),
    [
        (["tritonserver", "--model-repository=/m", "--model-control-mode=explicit"], "explicit"),
        (["tritonserver", "--model-control-mode", "poll"], "poll"),
        (
            [
                "tritonserver",
                "--model-control-mode=explicit",
                "--http-restricted-api=model-repository:k=v",
            ],
            "--grpc-restricted-protocol",
        ),
        (
            [
                "tritonserver",
                "--model-control-mode=explicit",
                "--http-restricted-api=model-config:k=v",
                "--grpc-restricted-protocol=model-repository:k=v",
            ],
            "--http-restricted-api",
        ),
        (["/bin/sh", "-c", "cd /m && exec tritonserver --model-control-mode=explicit"], "explicit"),
        (
            ["bash", "-o", "pipefail", "-ec", "env A=1 tritonserver --model-control-mode=poll"],
            "poll",
        ),
        (["tini", "--", "/opt/tritonserver/bin/tritonserver", "--model-control-mode=poll"], "poll"),
        (["seminar", "serve", "--repo", "/m", "--host", "0.0.0.0"], "0.0.0.0"),
        (["sh", "-c", "seminar serve --host=10.0.0.1 --repo /m > /log 2>&1"], "10.0.0.1"),
    ],
)
def test_the_rule_finds_open_repository_apis(command: list[str], why: str) -> None:
    """The check below must be able to fail, including through shells and wrappers."""
    (violation,) = _violations([ContainerCommand("example", tuple(command), True)])
    assert why in violation


@pytest.mark.parametrize(
    "command",
    [
        ["tritonserver", "--model-repository=/m"],
        ["tritonserver", "--model-control-mode=none"],
        [
            "tritonserver",
            "--model-control-mode=explicit",
            "--http-restricted-api=model-repository,model-config:seminar-admin-key=x",
            "--grpc-restricted-protocol=model-repository:seminar-admin-key=x",
        ],
        ["tritonserver", "--model-control-mode=explicit", "--allow-http=false", "--allow-grpc=0"],
        ["seminar", "serve", "--repo", "/m"],
        ["seminar", "serve", "--host", "127.0.0.1"],
        ["seminar", "serve", "--host", "0.0.0.0", "--admin-key-file", "/run/secrets/k"],
        ["seminar", "build", "--repo", "/m"],
    ],
)
def test_the_rule_accepts_locked_or_loopback_servers(command: list[str]) -> None:
    assert _violations([ContainerCommand("example", tuple(command), True)]) == []


# ---------------------------------------------------------------------------------------------
# The rule, on every file
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def all_commands(
    dockerfiles: dict[str, Dockerfile], compose: dict[str, Any], k8s_resources: Resources
) -> list[ContainerCommand]:
    return [
        *(c for df in dockerfiles.values() for c in dockerfile_commands(df)),
        *compose_commands(compose),
        *k8s_commands(k8s_resources, compose),
    ]


def _servers(commands: list[ContainerCommand]) -> dict[str, list[str]]:
    """where -> the argv of the server it starts (tritonserver or seminar serve)."""
    servers = {}
    for command in commands:
        for argv in simple_commands(command.argv):
            if server_kind(argv):
                assert command.where not in servers, f"{command.where} starts two servers"
                servers[command.where] = argv
    return servers


def test_no_deployment_opens_the_model_repository_api(all_commands: list[ContainerCommand]) -> None:
    assert _violations(all_commands) == []


def test_every_triton_container_runs_the_supervisor(all_commands: list[ContainerCommand]) -> None:
    """Found where expected (else the parser checks nothing), and always `seminar serve`:
    it keeps the repository API locked, restarts tritonserver and proxies its gRPC."""
    servers = _servers(all_commands)
    assert set(servers) == TRITON_CONTAINERS
    for where, argv in servers.items():
        assert server_kind(argv) == "seminar serve", f"{where}: {' '.join(argv)}"
        assert flag_values(argv, "--admin-key-file") == [ADMIN_KEY_FILE], where


def test_supervisor_arguments_are_its_options(all_commands: list[ContainerCommand]) -> None:
    """Every flag given to `seminar serve` is one of its options, with the contract ports; a
    container binds every interface (the ports are published or reached from other pods)."""
    options = serve_options()
    for where, argv in _servers(all_commands).items():
        given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
        assert given <= options, f"{where}: `seminar serve` has no {sorted(given - options)}"
        assert flag_values(argv, "--repo") == ["/models"], where
        assert flag_values(argv, "--host") == ["0.0.0.0"], where
        for flag, port in (
            ("--http-port", DEFAULT_HTTP_PORT),
            ("--grpc-port", DEFAULT_GRPC_PORT),
            ("--metrics-port", DEFAULT_METRICS_PORT),
            ("--health-port", SUPERVISOR_HEALTH_PORT),
        ):
            assert flag_values(argv, flag) == [str(port)], f"{where}: {flag}"


# ---------------------------------------------------------------------------------------------
# Where the admin key comes from
# ---------------------------------------------------------------------------------------------


def _k8s_servers(
    k8s_resources: Resources, compose: dict[str, Any]
) -> dict[str, tuple[str, list[str]]]:
    """Workload name -> (container name, argv of its server), for workloads that run one."""
    servers = {}
    for where, argv in _servers(k8s_commands(k8s_resources, compose)).items():
        _, workload, _, container = where.split()  # "k8s KIND/NAME container NAME"
        servers[workload.split("/", 1)[1]] = (container, argv)
    return servers


def test_k8s_admin_key_is_a_read_only_secret(
    k8s_resources: Resources, compose: dict[str, Any]
) -> None:
    servers = _k8s_servers(k8s_resources, compose)
    assert sorted(servers) == sorted(TRITON_DEPLOYMENTS)
    for name, (container_name, argv) in servers.items():
        (key_file,) = flag_values(argv, "--admin-key-file")
        spec = k8s_resources[("Deployment", name)]["spec"]["template"]["spec"]
        (container,) = [c for c in spec["containers"] if c["name"] == container_name]
        mounts = [m for m in container["volumeMounts"] if key_file.startswith(m["mountPath"] + "/")]
        assert len(mounts) == 1, f"{name}: {key_file} is in no (or several) volume mounts"
        (mount,) = mounts
        assert mount.get("readOnly") is True, f"{name}: mount the admin key read-only"
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert "secret" in volume, f"{name}: {key_file} must come from a Secret"
        secret = volume["secret"]
        assert secret["secretName"] == ADMIN_KEY_SECRET, name
        relative = key_file[len(mount["mountPath"]) + 1 :]
        items = {i["path"]: i for i in secret.get("items", [])}
        assert relative in items, f"{name}: name the Secret key that becomes {key_file}"
        assert items[relative].get("mode", secret.get("defaultMode")) == ADMIN_KEY_MODE, name
        # A 0400 file belongs to root: the non-root server reads it through the fsGroup.
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True and "fsGroup" in security, name


def _secret_refs(template: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(Secret name, key or None) for every reference a pod template makes to a Secret."""
    spec = template["spec"]
    refs: list[tuple[str, str | None]] = []
    for volume in spec.get("volumes", []):
        sources = [volume]
        if "projected" in volume:
            sources = volume["projected"]["sources"]
        for source in sources:
            if "secret" in source:
                name = source["secret"].get("secretName") or source["secret"].get("name")
                keys = [i["key"] for i in source["secret"].get("items", [])] or [None]
                refs += [(name, k) for k in keys]
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.append((ref["name"], ref["key"]))
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                refs.append((source["secretRef"]["name"], None))
    refs += [(s["name"], None) for s in spec.get("imagePullSecrets", [])]
    return refs


def test_every_referenced_secret_exists(k8s_resources: Resources) -> None:
    referenced = 0
    for (kind, name), resource in k8s_resources.items():
        template = pod_template(resource)
        if template is None:
            continue
        for secret_name, key in _secret_refs(template):
            referenced += 1
            assert ("Secret", secret_name) in k8s_resources, (
                f"{kind}/{name}: no Secret {secret_name}"
            )
            secret = k8s_resources[("Secret", secret_name)]
            keys = {*secret.get("data", {}), *secret.get("stringData", {})}
            assert key is None or key in keys, f"{kind}/{name}: Secret {secret_name} has no {key}"
    assert referenced >= len(TRITON_DEPLOYMENTS)


def test_the_shipped_secret_is_a_placeholder(k8s_resources: Resources) -> None:
    """The operator replaces it (docs/deploy.md); a key committed here would be public."""
    secret = k8s_resources[("Secret", ADMIN_KEY_SECRET)]
    assert secret["type"] == "Opaque"
    assert secret.get("data", {}) == {}
    assert set(secret["stringData"].values()) == {ADMIN_KEY_PLACEHOLDER}
    assert ADMIN_KEY_PLACEHOLDER in (REPO / "docs" / "deploy.md").read_text()


def test_compose_admin_key_is_a_compose_secret(
    compose: dict[str, Any], all_commands: list[ContainerCommand]
) -> None:
    servers = {
        where.rsplit(" ", 1)[1]: argv
        for where, argv in _servers(all_commands).items()
        if where.startswith("docker/compose.yaml")
    }
    assert sorted(servers) == ["triton", "triton-cpu"]
    declared = compose.get("secrets", {})
    for name, argv in servers.items():
        (key_file,) = flag_values(argv, "--admin-key-file")
        targets = {}
        for entry in compose["services"][name].get("secrets", []):
            source = entry if isinstance(entry, str) else entry["source"]
            target = f"/run/secrets/{source}" if isinstance(entry, str) else entry["target"]
            targets[target] = source
        assert key_file in targets, f"compose {name}: {key_file} is no secret of the service"
        assert targets[key_file] in declared, f"compose: secret {targets[key_file]} undeclared"
        assert "file" in declared[targets[key_file]], "the operator provides the key as a file"
    for service in compose["services"].values():
        for entry in service.get("secrets", []):
            source = entry if isinstance(entry, str) else entry["source"]
            assert source in declared, f"compose: secret {source} is not declared"


def test_compose_default_key_file_stays_out_of_git(compose: dict[str, Any]) -> None:
    """The key file's default path (`${SEMINAR_ADMIN_KEY_FILE:-...}`) is git-ignored."""
    import re

    assert compose.get("secrets"), "compose declares no secret"
    for name, secret in compose["secrets"].items():
        match = re.fullmatch(r"\$\{\w+:-([^}]+)\}", secret["file"])
        assert match, f"compose secret {name}: let the operator choose the file"
        default = (DOCKER / match.group(1)).resolve().relative_to(REPO)
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", "--no-index", str(default)], cwd=REPO, check=False
        )
        assert ignored.returncode == 0, f"{default} is not git-ignored"


# ---------------------------------------------------------------------------------------------
# NetworkPolicy
# ---------------------------------------------------------------------------------------------


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics; an empty selector selects everything."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


@dataclass(frozen=True)
class Workload:
    kind: str
    name: str
    labels: dict[str, str]
    ports: dict[str, int]  # container port name -> number


def _workloads(k8s_resources: Resources) -> dict[str, Workload]:
    found = {}
    for (kind, name), resource in k8s_resources.items():
        template = pod_template(resource)
        if template is None:
            continue
        ports = {
            p.get("name", str(p["containerPort"])): p["containerPort"]
            for c in template["spec"]["containers"]
            for p in c.get("ports", [])
        }
        found[name] = Workload(kind, name, template["metadata"]["labels"], ports)
    return found


def _policies_for(k8s_resources: Resources, workload: Workload) -> list[dict[str, Any]]:
    return [
        r
        for (kind, _), r in k8s_resources.items()
        if kind == "NetworkPolicy"
        and r["metadata"]["namespace"] == NAMESPACE
        and "Ingress" in r["spec"].get("policyTypes", ["Ingress"])
        and _selects(r["spec"]["podSelector"], workload.labels)
    ]


def _peers_by_port(policies: list[dict[str, Any]], workload: Workload) -> dict[int, list[Any]]:
    """Container port -> the `from` peers the policies admit to it (None: anyone)."""
    peers: dict[int, list[Any]] = {port: [] for port in workload.ports.values()}
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            sources = rule.get("from") or [None]
            for port in workload.ports.values():
                if _rule_covers(rule, port, workload):
                    peers[port] += sources
    return peers


def _rule_covers(rule: dict[str, Any], port: int, workload: Workload) -> bool:
    if not rule.get("ports"):
        return True
    for entry in rule["ports"]:
        if entry.get("protocol", "TCP") != "TCP":
            continue
        start = entry.get("port")
        if start is None:
            return True
        start = workload.ports.get(start, start) if isinstance(start, str) else start
        if start <= port <= entry.get("endPort", start):
            return True
    return False


def _namespace_labels(k8s_resources: Resources) -> dict[str, str]:
    namespace = k8s_resources[("Namespace", NAMESPACE)]
    return {**namespace["metadata"].get("labels", {}), "kubernetes.io/metadata.name": NAMESPACE}


def test_every_server_pod_is_behind_a_network_policy(
    k8s_resources: Resources, compose: dict[str, Any]
) -> None:
    workloads = _workloads(k8s_resources)
    servers = _k8s_servers(k8s_resources, compose)
    assert servers
    for name in [*servers, "gateway"]:
        assert _policies_for(k8s_resources, workloads[name]), f"no NetworkPolicy selects {name}"


def _assert_prometheus_only(peers: list[Any], where: str, k8s_resources: Resources) -> None:
    """Every peer is Prometheus: pods picked by label in a namespace other than ours."""
    assert peers, f"{where}: Prometheus cannot scrape it"
    for peer in peers:
        assert peer is not None, f"{where}: open to everyone"
        assert "ipBlock" not in peer, f"{where}: {peer}"
        namespaces, pods = peer.get("namespaceSelector"), peer.get("podSelector")
        assert namespaces and pods, f"{where}: name Prometheus' namespace and pods: {peer}"
        assert not _selects(namespaces, _namespace_labels(k8s_resources)), where


@pytest.mark.parametrize("name", TRITON_DEPLOYMENTS)
def test_triton_admits_the_gateway_and_prometheus_only(k8s_resources: Resources, name: str) -> None:
    workloads = _workloads(k8s_resources)
    triton = workloads[name]
    assert set(triton.ports.values()) == INFERENCE_PORTS | MONITORING_PORTS, triton.ports
    peers = _peers_by_port(_policies_for(k8s_resources, triton), triton)
    for port in INFERENCE_PORTS:
        where = f"{name}:{port}"
        assert peers[port], f"{where}: the gateway cannot reach it"
        for peer in peers[port]:
            assert peer is not None, f"{where}: open to everyone"
            assert set(peer) == {"podSelector"}, f"{where}: only pods of this namespace: {peer}"
            selected = {
                w for w, load in workloads.items() if _selects(peer["podSelector"], load.labels)
            }
            assert selected == {"gateway"}, f"{where}: admits {sorted(selected)}"
    for port in MONITORING_PORTS:
        _assert_prometheus_only(peers[port], f"{name}:{port}", k8s_resources)


def test_gateway_admits_clients_and_prometheus(k8s_resources: Resources) -> None:
    """Clients live anywhere (other namespaces, an ingress), so the Ranker port is open;
    its metrics are Prometheus'."""
    gateway = _workloads(k8s_resources)["gateway"]
    peers = _peers_by_port(_policies_for(k8s_resources, gateway), gateway)
    assert None in peers[DEFAULT_GATEWAY_PORT]
    _assert_prometheus_only(
        peers[DEFAULT_GATEWAY_METRICS_PORT],
        f"gateway:{DEFAULT_GATEWAY_METRICS_PORT}",
        k8s_resources,
    )
