"""Static checks of docker/compose.yaml: the compose-spec schema, then what it references."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from seminar.clients.config import load_config
from seminar.contract import (
    DEFAULT_GATEWAY_METRICS_PORT,
    DEFAULT_GATEWAY_PORT,
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    pinned_ensemble_name,
)
from tests.support.docker import (
    COMPOSE_SCHEMA,
    DOCKER,
    REPO,
    SUPERVISOR_HEALTH_PORT,
    assert_valid_cli_args,
    flag_value,
    parse_dockerfile,
)

TRITON_PORTS = {DEFAULT_HTTP_PORT, DEFAULT_GRPC_PORT, DEFAULT_METRICS_PORT, SUPERVISOR_HEALTH_PORT}
# Bind-mount sources that `seminar data prepare` / `seminar train` create at run time (gitignored).
CREATED_AT_RUN_TIME = {REPO / "runs", REPO / "data"}


def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _errors(document: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in _validator().iter_errors(document)
    ]


def _container_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(p).rsplit(":", 1)[1].split("/")[0]) for p in service.get("ports", [])}


def _bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path, container path) of every bind mount; named volumes are skipped."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append(((DOCKER / source).resolve(), target))
    return mounts


def test_vendored_schema_is_the_recorded_one() -> None:
    digest = hashlib.sha256(COMPOSE_SCHEMA.read_bytes()).hexdigest()
    assert f"sha256: {digest}" in (DOCKER / "schemas" / "README.md").read_text()
    assert (DOCKER / "schemas" / "LICENSE.compose-spec").read_text().lstrip().startswith("Apache")


def test_compose_file_matches_the_compose_spec(compose: dict[str, Any]) -> None:
    assert _errors(compose) == []


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c["services"]["triton"].update(shm_sise="2gb"),
        lambda c: c["services"]["gateway"]["depends_on"]["triton"].update(condition="healthy"),
        lambda c: c["services"]["triton"]["deploy"]["resources"].update(reservations=[]),
    ],
    ids=["misspelled-key", "bad-enum", "wrong-type"],
)
def test_schema_rejects_broken_compose(compose: dict[str, Any], mutate: Any) -> None:
    broken = copy.deepcopy(compose)
    mutate(broken)
    assert _errors(broken), "the schema accepted a broken compose file"


def test_profiles_pick_one_triton(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["triton"]["profiles"] == ["gpu"]
    assert services["triton-cpu"]["profiles"] == ["cpu"]
    assert services["engines"]["profiles"] == ["build"]
    for always in ("gateway", "prometheus", "grafana"):
        assert "profiles" not in services[always], always
    # The CPU server answers to the same name, so the gateway and Prometheus need no variant.
    assert "triton" in services["triton-cpu"]["networks"]["default"]["aliases"]
    for name in ("triton", "triton-cpu"):
        dependency = services["gateway"]["depends_on"][name]
        assert dependency == {"condition": "service_healthy", "required": False}


def test_gpu_services_reserve_a_gpu(compose: dict[str, Any]) -> None:
    for name in ("triton", "engines"):
        devices = compose["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), name
    assert "deploy" not in compose["services"]["triton-cpu"]


def test_triton_services(compose: dict[str, Any]) -> None:
    for name in ("triton", "triton-cpu"):
        service = compose["services"][name]
        assert _container_ports(service) == TRITON_PORTS, name
        assert all(str(p).startswith("127.0.0.1:") for p in service["ports"]), name
        # Python backend tensors travel through /dev/shm: Docker's 64 MB default is too small.
        assert re.fullmatch(r"[1-9]\d*gb", service["shm_size"]), service["shm_size"]
        assert (REPO / "model_repository", "/models") in _bind_mounts(service)
        # The supervisor's readiness: every version READY with live model processes.
        check = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{SUPERVISOR_HEALTH_PORT}/ready" in check, check


def test_build_sections_point_at_real_dockerfiles_and_stages(compose: dict[str, Any]) -> None:
    built = 0
    for name, service in compose["services"].items():
        if "build" not in service:
            continue
        built += 1
        build = service["build"]
        context = (DOCKER / build["context"]).resolve()
        assert context == REPO, f"{name}: the build context must be the repository root"
        dockerfile = context / build["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"
        stages = [s.name for s in parse_dockerfile(dockerfile).stages]
        if "target" in build:
            assert build["target"] in stages, f"{name}: no stage {build['target']} in {stages}"
        assert re.search(r":\$\{SEMINAR_TAG:-\w+\}$", service["image"]), service["image"]
    assert built == 4


def test_bind_mount_sources_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for source, _ in _bind_mounts(service):
            assert source.exists() or source in CREATED_AT_RUN_TIME, f"{name}: {source} is missing"


def test_gateway_service(compose: dict[str, Any]) -> None:
    gateway = compose["services"]["gateway"]
    args = [str(a) for a in gateway["command"]]
    assert_valid_cli_args("gateway", args, "compose gateway")
    assert flag_value(args, "--triton") == f"triton:{DEFAULT_GRPC_PORT}"
    assert flag_value(args, "--port") == str(DEFAULT_GATEWAY_PORT)
    assert flag_value(args, "--metrics-port") == str(DEFAULT_GATEWAY_METRICS_PORT)
    assert flag_value(args, "--host") == "0.0.0.0"
    assert _container_ports(gateway) == {DEFAULT_GATEWAY_PORT, DEFAULT_GATEWAY_METRICS_PORT}

    # --config lies inside a mounted *directory* (reloads must see replaced files), and the
    # file on the host is a config the gateway accepts.
    config = Path(flag_value(args, "--config"))
    mounts = {target: source for source, target in _bind_mounts(gateway)}
    host_dir = mounts[str(config.parent)]
    assert host_dir.is_dir(), host_dir
    experiment = load_config(host_dir / config.name)
    for arm in experiment.arms:
        assert arm.model == pinned_ensemble_name(arm.version), arm  # docs/design.md section 5
    assert mounts[flag_value(args, "--catalog")] == REPO / "model_repository"
    assert int(gateway["healthcheck"]["test"][-1].rsplit(":", 1)[1]) == DEFAULT_GATEWAY_PORT


def test_engines_service_runs_a_gpu_build(compose: dict[str, Any]) -> None:
    args = [str(a) for a in compose["services"]["engines"]["command"]]
    assert_valid_cli_args("build", args, "compose engines")
    assert flag_value(args, "--target") == "gpu"
    targets = {t for _, t in _bind_mounts(compose["services"]["engines"])}
    for flag in ("--repo", "--run", "--data"):
        assert any(flag_value(args, flag).startswith(t) for t in targets), flag


def test_prometheus_scrapes_triton_and_gateway(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    in_container = Path(config_flag.split("=", 1)[1])
    mounts = {target: source for source, target in _bind_mounts(prometheus)}
    host_file = mounts[str(in_container.parent)] / in_container.name
    assert host_file.is_file(), f"{host_file} (the clients area's scrape config) is missing"
    config = yaml.safe_load(host_file.read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    assert f"triton:{DEFAULT_METRICS_PORT}" in targets, targets
    assert f"triton:{SUPERVISOR_HEALTH_PORT}" in targets, targets  # the supervisor's /metrics
    assert f"gateway:{DEFAULT_GATEWAY_METRICS_PORT}" in targets, targets
    for pattern in config.get("rule_files", []):
        assert list(host_file.parent.glob(pattern)), f"rule file {pattern} matches nothing"


def _provisioned(directory: Path, key: str) -> list[dict[str, Any]]:
    """Every entry under `key` across the provisioning YAML files of one directory."""
    entries = []
    for file in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        entries += yaml.safe_load(file.read_text()).get(key, [])
    return entries


def test_grafana_is_provisioned(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = {target: source for source, target in _bind_mounts(grafana)}
    provisioning = mounts["/etc/grafana/provisioning"]
    # Grafana refuses to start on two data sources (or providers) with one name or uid.
    (datasource,) = _provisioned(provisioning / "datasources", "datasources")
    prometheus_port = _container_ports(compose["services"]["prometheus"])
    assert datasource["url"] == f"http://prometheus:{prometheus_port.pop()}"
    (provider,) = _provisioned(provisioning / "dashboards", "providers")
    dashboards = mounts[provider["options"]["path"]]
    files = sorted(dashboards.glob("*.json"))
    assert files, f"no dashboard JSON in {dashboards}"
    for file in files:
        dashboard = json.loads(file.read_text())
        assert dashboard.get("panels"), f"{file}: no panels"
        # Panels name the provisioned data source by uid (or a template variable).
        for uid in re.findall(r'"datasource":\s*\{[^}]*"uid":\s*"([^"]+)"', file.read_text()):
            assert uid in {datasource["uid"], "${datasource}", "${DS_PROMETHEUS}"}, (file, uid)
