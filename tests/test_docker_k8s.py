"""Static checks of the Kubernetes manifests under docker/k8s/: the Kubernetes OpenAPI schemas
(kubernetes-validate, offline, strict), then probes, ports, names and the A/B config."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from seminar.clients.config import bucket, load_config
from seminar.clients.scoring import TRITON_CHANNEL_ARGS
from seminar.contract import (
    DEFAULT_GATEWAY_METRICS_PORT,
    DEFAULT_GATEWAY_PORT,
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    pinned_ensemble_name,
)
from tests.support.docker import (
    DOCKER,
    K8S_VERSION,
    REPO,
    SUPERVISOR_HEALTH_PORT,
    assert_valid_cli_args,
    flag_value,
    k8s_manifest_files,
    load_yaml_documents,
)

Resources = dict[tuple[str, str], dict[str, Any]]
NAMESPACE = "seminar"
TRITON_PORTS = {
    "http": DEFAULT_HTTP_PORT,
    "grpc": DEFAULT_GRPC_PORT,
    "metrics": DEFAULT_METRICS_PORT,
    "supervisor": SUPERVISOR_HEALTH_PORT,
}
TRITON_DEPLOYMENTS = ["triton", "triton-shard-0", "triton-shard-1"]


def _container(resource: dict[str, Any]) -> dict[str, Any]:
    (container,) = resource["spec"]["template"]["spec"]["containers"]
    return container


def _pod_labels(resource: dict[str, Any]) -> dict[str, str]:
    return resource["spec"]["template"]["metadata"]["labels"]


def _ab_config_text(resources: Resources) -> str:
    return resources[("ConfigMap", "seminar-ab")]["data"]["ab.yaml"]


@pytest.mark.parametrize("path", k8s_manifest_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_manifest_matches_the_kubernetes_schema(path: Path) -> None:
    for doc in load_yaml_documents(path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_schema_rejects_broken_manifests(k8s_resources: Resources) -> None:
    """The validation above must be able to fail: an unknown field and a wrong type."""
    triton = k8s_resources[("Deployment", "triton")]
    typo = copy.deepcopy(triton)
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"port": 8000}}
    typo["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)
    wrong = copy.deepcopy(triton)
    wrong["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, K8S_VERSION, strict=True)


def test_everything_lives_in_the_namespace(k8s_resources: Resources) -> None:
    assert ("Namespace", NAMESPACE) in k8s_resources
    for (kind, name), resource in k8s_resources.items():
        if kind != "Namespace":
            assert resource["metadata"]["namespace"] == NAMESPACE, (kind, name)


def test_selectors_match_their_pods(k8s_resources: Resources) -> None:
    pods = {
        name: _pod_labels(r) for (kind, name), r in k8s_resources.items() if kind == "Deployment"
    }
    for (kind, name), resource in k8s_resources.items():
        if kind == "Deployment":
            assert resource["spec"]["selector"]["matchLabels"].items() <= pods[name].items(), name
        if kind == "Service":
            selector = resource["spec"]["selector"]
            matched = [d for d, labels in pods.items() if selector.items() <= labels.items()]
            assert len(matched) == 1, f"Service {name} selects {matched}"


def test_volumes_reference_existing_claims_and_configmaps(k8s_resources: Resources) -> None:
    for (kind, name), resource in k8s_resources.items():
        if kind not in {"Deployment", "Job"}:
            continue
        for volume in resource["spec"]["template"]["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in k8s_resources, (name, claim)
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in k8s_resources, name


@pytest.mark.parametrize("name", TRITON_DEPLOYMENTS)
def test_triton_deployment(k8s_resources: Resources, name: str) -> None:
    deployment = k8s_resources[("Deployment", name)]
    container = _container(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == TRITON_PORTS
    for flag, port in (
        ("--http-port", "http"),
        ("--grpc-port", "grpc"),
        ("--metrics-port", "metrics"),
        ("--health-port", "supervisor"),
    ):
        assert flag_value(container["args"], flag) == str(TRITON_PORTS[port])
    # The supervisor's probes. Ready = tritonserver up and every version READY with live model
    # processes; live = the supervisor answers (it restarts a dead tritonserver itself).
    for probe, path in (
        ("startupProbe", "/ready"),
        ("readinessProbe", "/ready"),
        ("livenessProbe", "/live"),
    ):
        get = container[probe]["httpGet"]
        assert (get["path"], ports[get["port"]]) == (path, SUPERVISOR_HEALTH_PORT), probe
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    # The Python backend's shared memory: a memory-backed /dev/shm, not the 64 MB default.
    spec = deployment["spec"]["template"]["spec"]
    shm = next(m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
    volume = next(v for v in spec["volumes"] if v["name"] == shm["name"])
    assert volume["emptyDir"]["medium"] == "Memory"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_prometheus_scrapes_both_metrics_endpoints_of_triton(k8s_resources: Resources) -> None:
    """Triton's metrics through the usual one-port annotations, the supervisor's through the
    port named `supervisor`, which docker/prometheus/kubernetes.yml scrapes as its own job."""
    config = yaml.safe_load((DOCKER / "prometheus" / "kubernetes.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for job in jobs.values():
        (discovery,) = job["kubernetes_sd_configs"]
        assert discovery["role"] == "pod" and discovery["namespaces"]["names"] == [NAMESPACE]
        keeps = {
            tuple(r["source_labels"]): r["regex"]
            for r in job["relabel_configs"]
            if r.get("action") == "keep"
        }
        assert keeps[("__meta_kubernetes_pod_annotation_prometheus_io_scrape",)] == "true"
    annotated = jobs["seminar-pods"]["relabel_configs"]
    assert any(
        "__meta_kubernetes_pod_annotation_prometheus_io_port" in r.get("source_labels", [])
        and r.get("target_label") == "__address__"
        for r in annotated
    )
    (port_name,) = [
        r["regex"]
        for r in jobs["seminar-supervisor"]["relabel_configs"]
        if r.get("source_labels") == ["__meta_kubernetes_pod_container_port_name"]
        and r.get("action") == "keep"
    ]
    for name in TRITON_DEPLOYMENTS:
        template = k8s_resources[("Deployment", name)]["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        ports = {
            p["name"]: p["containerPort"]
            for p in _container(k8s_resources[("Deployment", name)])["ports"]
        }
        assert annotations["prometheus.io/scrape"] == "true", name
        assert int(annotations["prometheus.io/port"]) == ports["metrics"] == DEFAULT_METRICS_PORT
        assert annotations["prometheus.io/path"] == "/metrics", name
        scraped = [port for pname, port in ports.items() if re.fullmatch(port_name, pname)]
        assert scraped == [SUPERVISOR_HEALTH_PORT], name
    for pattern in config["rule_files"]:
        assert list((DOCKER / "prometheus").glob(pattern)), pattern


def _headless_grpc_target(k8s_resources: Resources, service_name: str) -> str:
    """dns:///NAME.NAMESPACE.svc.cluster.local:PORT for a headless Service with a gRPC port."""
    service = k8s_resources[("Service", service_name)]
    assert service["spec"]["clusterIP"] == "None", f"{service_name} must be headless"
    (grpc,) = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert grpc["port"] == DEFAULT_GRPC_PORT
    return f"dns:///{service_name}.{NAMESPACE}.svc.cluster.local:{grpc['port']}"


def test_gateway_balances_over_the_headless_triton_service(k8s_resources: Resources) -> None:
    container = _container(k8s_resources[("Deployment", "gateway")])
    args = container["args"]
    assert_valid_cli_args("gateway", args, "k8s gateway")
    assert flag_value(args, "--triton") == _headless_grpc_target(k8s_resources, "triton-headless")
    # dns:/// alone resolves every pod but pick_first still uses one: round_robin must be set.
    assert ("grpc.lb_policy_name", "round_robin") in TRITON_CHANNEL_ARGS, (
        "seminar.clients.scoring.TRITON_CHANNEL_ARGS must select round_robin"
    )


def test_gateway_deployment_and_service(k8s_resources: Resources) -> None:
    container = _container(k8s_resources[("Deployment", "gateway")])
    args = container["args"]
    assert flag_value(args, "--port") == str(DEFAULT_GATEWAY_PORT)
    assert flag_value(args, "--metrics-port") == str(DEFAULT_GATEWAY_METRICS_PORT)
    assert flag_value(args, "--host") == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": DEFAULT_GATEWAY_PORT, "metrics": DEFAULT_GATEWAY_METRICS_PORT}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == DEFAULT_GATEWAY_PORT, probe
    service_ports = {
        p["name"]: p["port"] for p in k8s_resources[("Service", "gateway")]["spec"]["ports"]
    }
    assert service_ports == ports

    # The config is a whole ConfigMap directory (kubelet updates it; a subPath would freeze it).
    config = Path(flag_value(args, "--config"))
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(config.parent))
    assert "subPath" not in mount
    volumes = k8s_resources[("Deployment", "gateway")]["spec"]["template"]["spec"]["volumes"]
    volume = next(v for v in volumes if v["name"] == mount["name"])
    configmap = k8s_resources[("ConfigMap", volume["configMap"]["name"])]
    assert config.name in configmap["data"]


def test_ab_configmap_is_the_compose_config(k8s_resources: Resources, tmp_path: Path) -> None:
    """One experiment config: the ConfigMap carries docker/gateway/config/ab.yaml verbatim, and
    it is a config the gateway accepts, with arms naming pinned ensembles."""
    text = _ab_config_text(k8s_resources)
    assert text == (DOCKER / "gateway" / "config" / "ab.yaml").read_text()
    (tmp_path / "ab.yaml").write_text(text)
    experiment = load_config(tmp_path / "ab.yaml")
    for arm in experiment.arms:
        assert arm.model == pinned_ensemble_name(arm.version), arm


def test_engine_build_job(k8s_resources: Resources) -> None:
    job = k8s_resources[("Job", "seminar-engine-build-v1")]
    container = _container(job)
    assert_valid_cli_args("build", container["args"], "k8s engine build")
    assert flag_value(container["args"], "--target") == "gpu"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    for flag in ("--repo", "--run", "--data"):
        assert any(flag_value(container["args"], flag).startswith(m) for m in mounts), flag
    # It writes the repository the Triton pods read.
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    repo_mount = next(
        m
        for m in container["volumeMounts"]
        if m["mountPath"] == flag_value(container["args"], "--repo")
    )
    triton_volumes = k8s_resources[("Deployment", "triton")]["spec"]["template"]["spec"]["volumes"]
    claim = volumes[repo_mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim in {v.get("persistentVolumeClaim", {}).get("claimName") for v in triton_volumes}


def test_shard_routing_table(k8s_resources: Resources) -> None:
    """Sharded layout (design): every shard has a headless Service and its own repository, and
    the shard salt differs from the A/B salt so shards cut across arms."""
    table = yaml.safe_load(k8s_resources[("ConfigMap", "seminar-shards")]["data"]["shards.yaml"])
    ab = yaml.safe_load(_ab_config_text(k8s_resources))
    assert table["salt"] != ab["salt"]
    claims = set()
    for index, shard in enumerate(table["shards"]):
        assert shard["index"] == index
        name = f"triton-shard-{index}"
        assert shard["triton"] == _headless_grpc_target(k8s_resources, name)
        volumes = k8s_resources[("Deployment", name)]["spec"]["template"]["spec"]["volumes"]
        claims |= {
            v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v
        }
    assert len(claims) == len(table["shards"]), "each shard needs its own model repository"
    # The documented key is the A/B hash family with the shard salt: both shards get users.
    users = [str(u) for u in range(1, 611)]
    counts = [0] * len(table["shards"])
    for user in users:
        counts[bucket(table["salt"], user) % len(counts)] += 1
    assert min(counts) > 0.4 * len(users) / len(counts), counts


def test_images_are_pinned_and_exist_as_dockerfile_targets(k8s_resources: Resources) -> None:
    images = {"seminar/triton-gpu", "seminar/gateway", "seminar/engine-builder"}
    for (kind, name), resource in k8s_resources.items():
        if kind in {"Deployment", "Job"}:
            image = _container(resource)["image"]
            repo, _, tag = image.rpartition(":")
            assert repo in images and re.fullmatch(r"\d+\.\d+\.\d+", tag), (name, image)


def test_gateway_channel_spreads_calls_over_every_address() -> None:
    """What a headless Service gives the gateway, one name with several addresses, here as a
    static two-address target: with the gateway's channel args, tritonclient's channel must
    call both servers (pick_first, gRPC's default, would send everything to one)."""
    import asyncio
    from concurrent import futures

    import grpc
    import tritonclient.grpc.aio as triton_aio
    from tritonclient.grpc import service_pb2

    calls = [0, 0]

    def live_handler(index: int) -> grpc.GenericRpcHandler:
        def server_live(request: bytes, context: grpc.ServicerContext) -> bytes:
            calls[index] += 1
            return service_pb2.ServerLiveResponse(live=True).SerializeToString()

        method = grpc.unary_unary_rpc_method_handler(server_live)
        return grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService", {"ServerLive": method}
        )

    servers, ports = [], []
    for index in range(2):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        server.add_generic_rpc_handlers((live_handler(index),))
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        server.start()
        servers.append(server)

    async def call_many() -> None:
        target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)
        client = triton_aio.InferenceServerClient(target, channel_args=TRITON_CHANNEL_ARGS)
        try:
            for _ in range(20):
                assert await client.is_server_live()
        finally:
            await client.close()

    try:
        asyncio.run(call_many())
    finally:
        for server in servers:
            server.stop(grace=None)
    assert sum(calls) == 20
    assert min(calls) > 0, f"all calls went to one server: {calls}"
