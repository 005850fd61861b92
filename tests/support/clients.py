"""Fixtures for the clients tests: a real `seminar gateway` process in front of the real Triton.

    def test_x(gateway):            # session-scoped, two arms 50/50, no shadow
        rank_via_gateway(gateway.address, "1", "", [1, 2, 3])

    def test_y(start_gateway):      # function-scoped factory for tests that change the config
        gw = start_gateway(weights=(50, 50), shadow=("shadow", "seminar_v1", 1))

Arms come from the models the `triton` fixture has loaded: two pinned ensembles `seminar_vN`
when the repository holds two builds, else `seminar_vN` and the contract ensemble `seminar` at
the same version (same scores, distinct arm labels).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from seminar.clients.config import Arm, ExperimentConfig, Limits, write_config
from seminar.clients.process import GatewayProcess
from seminar.clients.workload import RankCall
from seminar.contract import ENSEMBLE_MODEL
from seminar.serving.triton import TritonServer

_PINNED = re.compile(r"^seminar_v(\d+)$")
# A generous deadline: the shared 2-core CI machine runs other areas' tests beside these.
TEST_LIMITS = Limits(max_candidates=200, max_query_bytes=64, deadline_ms=5000)


def serving_arms(triton: TritonServer) -> tuple[Arm, Arm]:
    """Two arms over READY models of the running Triton."""
    ready: dict[str, list[int]] = {}
    for entry in triton.repository_index():
        if entry.get("state") == "READY" and entry.get("version", "").isdecimal():
            ready.setdefault(entry["name"], []).append(int(entry["version"]))
    pinned = sorted(
        (int(m.group(1)), name)
        for name in ready
        if (m := _PINNED.match(name)) and int(m.group(1)) in ready[name]
    )
    if len(pinned) >= 2:
        (va, a), (vb, b) = pinned[0], pinned[-1]
        return Arm("control", a, va, 50), Arm("treatment", b, vb, 50)
    if pinned and pinned[0][0] in ready.get(ENSEMBLE_MODEL, []):
        v, a = pinned[0]
        return Arm("control", a, v, 50), Arm("treatment", ENSEMBLE_MODEL, v, 50)
    pytest.skip(f"Triton has no two servable arms (READY models: {sorted(ready)})")


def single_version_repo(repo: Path, version: int, dest: Path) -> Path:
    """A view of the built repository holding only `version`: every model dir that has it, with
    its config.pbtxt copied and the version dir symlinked (read-only use, nothing copied big).

    A private tritonserver over it loads one build's stubs instead of every build's, which
    halves start-up on the 2-core CI machine.
    """
    dest.mkdir(parents=True, exist_ok=False)
    for model in sorted(Path(repo).iterdir()):
        if (model / str(version)).is_dir() and (model / "config.pbtxt").is_file():
            (dest / model.name).mkdir()
            (dest / model.name / "config.pbtxt").write_bytes((model / "config.pbtxt").read_bytes())
            (dest / model.name / str(version)).symlink_to((model / str(version)).resolve())
    return dest


def metric_samples(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called `name` on a Prometheus text endpoint: (labels, value)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Poll `predicate` every 50 ms until it holds (True) or `timeout_s` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def health_status(address: str, service: str = "") -> str:
    """The grpc.health.v1 status name the gateway reports for `service`."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


@dataclass
class RunningGateway:
    process: GatewayProcess
    config: ExperimentConfig
    triton_url: str

    @property
    def address(self) -> str:
        return self.process.address

    @property
    def metrics_url(self) -> str:
        return self.process.metrics_url

    @property
    def config_path(self) -> Path:
        return self.process.config_path

    def write_config(self, config: ExperimentConfig) -> None:
        write_config(config, self.config_path)
        self.config = config


def make_config(
    arms: tuple[Arm, Arm],
    weights: tuple[float, float] = (50, 50),
    shadow: Arm | None = None,
    salt: str = "test-salt",
    limits: Limits = TEST_LIMITS,
) -> ExperimentConfig:
    a, b = arms
    return ExperimentConfig(
        salt=salt,
        arms=(
            Arm(a.name, a.model, a.version, weights[0]),
            Arm(b.name, b.model, b.version, weights[1]),
        ),
        shadow=shadow,
        limits=limits,
    )


def launch_gateway(
    config: ExperimentConfig,
    triton_url: str,
    catalog: Path,
    folder: Path,
    wait_serving: bool = True,
    event_log: str | None = None,
) -> RunningGateway:
    """A gateway process with `config` (written to folder/ab.yaml) in front of `triton_url`;
    with `event_log` it also serves Record into that log."""
    path = folder / "ab.yaml"
    write_config(config, path)
    process = GatewayProcess(
        path,
        triton_url,
        catalog=catalog,
        log_path=folder / "gateway.log",
        wait_serving=wait_serving,
        event_log=event_log,
    )
    process.start()
    return RunningGateway(process, config, triton_url)


@pytest.fixture(scope="session")
def gateway_arms(triton: TritonServer) -> tuple[Arm, Arm]:
    return serving_arms(triton)


@pytest.fixture(scope="session")
def gateway(
    triton: TritonServer,
    gateway_arms: tuple[Arm, Arm],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningGateway]:
    """A real gateway process in front of `triton`: arms 50/50, catalog = the model repository."""
    gw = launch_gateway(
        make_config(gateway_arms), triton.grpc_url, triton.repo, tmp_path_factory.mktemp("gateway")
    )
    try:
        yield gw
    finally:
        gw.process.stop()


@pytest.fixture
def start_gateway(
    triton: TritonServer,
    gateway_arms: tuple[Arm, Arm],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., RunningGateway]]:
    """Factory: start more gateways (own config file) in front of `triton` or another server."""
    started: list[RunningGateway] = []

    def start(
        weights: tuple[float, float] = (50, 50),
        shadow: Arm | None = None,
        triton_url: str | None = None,
        limits: Limits = TEST_LIMITS,
        arms: tuple[Arm, Arm] | None = None,
        wait_serving: bool = True,
    ) -> RunningGateway:
        """`arms` replaces `gateway_arms`; `wait_serving=False` returns as soon as the gateway
        answers health checks (for gateways meant to report NOT_SERVING)."""
        config = make_config(arms or gateway_arms, weights, shadow, limits=limits)
        gw = launch_gateway(
            config,
            triton_url or triton.grpc_url,
            triton.repo,
            tmp_path_factory.mktemp("gateway"),
            wait_serving=wait_serving,
        )
        started.append(gw)
        return gw

    try:
        yield start
    finally:
        for gw in started:
            gw.process.stop()


@pytest.fixture(scope="session")
def real_calls(movielens_data: Path) -> list[RankCall]:
    """Real requests: evaluated MovieLens users with their real test candidate sets."""
    from seminar.clients.workload import load_workload

    return load_workload(movielens_data, candidates=100, limit=64)
