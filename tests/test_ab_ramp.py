"""`seminar ab ramp` against a real tritonserver, a real gateway and a real Prometheus.

One Triton serves the built repository (control, and the healthy treatment `seminar` at the
same version) and two Python models with the ensemble's tensors: `broken` fails every request,
`slow` answers after sleeping 5x the control's median latency. One gateway holds four arms
(control at 100, the three treatments at 0); each test ramps one treatment as a subprocess,
under a background load, with holds of a few seconds and a 1 s scrape.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from seminar.build import repository
from seminar.clients.config import Arm, ExperimentConfig, load_config, write_config
from seminar.clients.load import LoadConfig, LoadResult, run_load
from seminar.clients.metrics import metric_total
from seminar.clients.observe import PrometheusProcess
from seminar.clients.ramp import Guardrails, RampPlan, rolled_back, step_config
from seminar.clients.workload import RankCall, load_workload
from seminar.contract import CONFIG_FILE, PYTHON_FILE
from seminar.processes import free_port, http_request
from seminar.serving.floor import floor_config
from seminar.serving.triton import TritonServer
from tests.support.build import BuiltRepo
from tests.support.clients import (
    TEST_LIMITS,
    RunningGateway,
    launch_gateway,
    serving_arms,
    single_version_repo,
)
from tests.support.serving import private_triton, require_tritonserver

BROKEN_MODEL = """
from seminar.serving.backends.floor import TritonPythonModel as Floor


class TritonPythonModel(Floor):
    def execute(self, requests):
        raise RuntimeError("this treatment fails every request on purpose")
"""
SLOW_MODEL = """
import time
from pathlib import Path

from seminar.serving.backends.floor import TritonPythonModel as Floor

DELAY_FILE = Path(__file__).with_name("delay_s")  # written by the test once it knows control


class TritonPythonModel(Floor):
    def execute(self, requests):
        time.sleep(float(DELAY_FILE.read_text()))
        return super().execute(requests)
"""
SLOWDOWN = 5  # the slow treatment answers this many times the control's median latency
# Bounds of every ramp here. The absolute p99 bound is an SLO, meaningless on a shared 2-core
# machine, so only the ratio to control judges latency; 2.5 leaves room for that machine's
# noise and still trips on a 5x slower arm.
BOUNDS = ("--max-p99-ms", "5000", "--max-p99-ratio", "2.5", "--min-requests", "10")


@dataclass
class RampStack:
    gateway: RunningGateway
    prometheus: PrometheusProcess
    base: ExperimentConfig  # control at 100, every treatment at 0
    slow_delay_file: Path
    calls: list[RankCall]


def _python_model(repo: Path, name: str, source: str) -> Path:
    config = floor_config(max_batch_size=4096)
    config.name = name
    (repo / name / "1").mkdir(parents=True)
    repository.write_config(repo / name / CONFIG_FILE, config)
    (repo / name / "1" / PYTHON_FILE).write_text(source)
    return repo / name / "1"


@pytest.fixture(scope="module")
def ramp_stack(
    model_repo: BuiltRepo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RampStack]:
    require_tritonserver()
    folder = tmp_path_factory.mktemp("ramp")
    repo = single_version_repo(model_repo.repo, model_repo.version, folder / "repo")
    _python_model(repo, "broken", BROKEN_MODEL)
    slow_dir = _python_model(repo, "slow", SLOW_MODEL)
    (slow_dir / "delay_s").write_text("0")
    with private_triton(repo, folder / "triton.log") as triton:
        base = _base_config(triton)
        gateway = launch_gateway(base, triton.grpc_url, repo, folder)
        try:
            with PrometheusProcess(
                _address(triton.metrics_url), _address(gateway.metrics_url), port=free_port()
            ) as prometheus:
                prometheus.wait_scraped()
                calls = load_workload(model_repo.data, candidates=100, limit=400)
                yield RampStack(gateway, prometheus, base, slow_dir / "delay_s", calls)
        finally:
            gateway.process.stop()


def _address(metrics_url: str) -> str:
    return metrics_url.removeprefix("http://").removesuffix("/metrics")


def _base_config(triton: TritonServer) -> ExperimentConfig:
    control, healthy = serving_arms(triton)
    arms = (
        Arm("control", control.model, control.version, 100),
        Arm("healthy", healthy.model, healthy.version, 0),
        Arm("broken", "broken", 1, 0),
        Arm("slow", "slow", 1, 0),
    )
    return ExperimentConfig(salt="ramp-test", arms=arms, limits=TEST_LIMITS)


def _reset(stack: RampStack) -> None:
    """Back to control at 100 %, applied by the gateway."""
    write_config(stack.base, stack.gateway.config_path)
    stack.gateway.process.reload()
    deadline = time.monotonic() + 15
    while _gateway_metric(stack, "seminar_gateway_arm_share", arm="control") != 1.0:
        assert time.monotonic() < deadline, "the gateway did not apply the base config"
        time.sleep(0.1)


def _gateway_metric(stack: RampStack, name: str, **labels: str) -> float:
    status, body = http_request(stack.gateway.metrics_url)
    assert status == 200, body
    return metric_total(body, name, **labels)


def _requests_by_arm_code(stack: RampStack) -> Counter[tuple[str, str]]:
    from prometheus_client.parser import text_string_to_metric_families

    _, body = http_request(stack.gateway.metrics_url)
    return Counter(
        {
            (sample.labels["arm"], sample.labels["code"]): sample.value
            for family in text_string_to_metric_families(body)
            for sample in family.samples
            if sample.name == "seminar_gateway_requests_total"
        }
    )


class BackgroundLoad:
    """run_load in a thread for `duration_s`; `result()` joins it."""

    def __init__(self, stack: RampStack, duration_s: float) -> None:
        self._result: list[LoadResult] = []
        config = LoadConfig(duration_s=duration_s, concurrency=4, warmup_s=0, timeout_s=10)
        self._thread = threading.Thread(
            target=lambda: self._result.append(
                asyncio.run(run_load(stack.gateway.address, stack.calls, config))
            ),
            daemon=True,
        )
        self._thread.start()

    def result(self) -> LoadResult:
        self._thread.join(timeout=120)
        assert self._result, "the background load did not finish"
        return self._result[0]


def _ramp(
    stack: RampStack,
    tmp_path: Path,
    treatment: str,
    steps: str,
    hold_s: float,
    sigint_ignored: bool = False,
) -> subprocess.Popen[str]:
    """`seminar ab ramp` against the stack; `sigint_ignored`: started as a script's
    background command is (bash starts those with SIGINT ignored, and exec keeps that)."""
    cmd = [
        sys.executable, "-m", "seminar.cli", "ab", "ramp",
        "--config", str(stack.gateway.config_path), "--treatment", treatment,
        "--steps", steps, "--hold", str(hold_s), "--check-every", "1",
        "--prometheus", stack.prometheus.url,
        "--gateway-pid", str(stack.gateway.process.pid),
        "--gateway-metrics", stack.gateway.metrics_url,
        "--log", str(tmp_path / "ramp.jsonl"), "--metrics-file", str(tmp_path / "ramp.prom"),
        *BOUNDS,
    ]  # fmt: skip
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if sigint_ignored else None
    try:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _events(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "ramp.jsonl").read_text().splitlines()]


def _ramp_metric(tmp_path: Path, name: str, **labels: str) -> float:
    return metric_total((tmp_path / "ramp.prom").read_text(), name, **labels)


def _weight(stack: RampStack, arm: str) -> float:
    return next(a.weight for a in load_config(stack.gateway.config_path).arms if a.name == arm)


def _assert_only_treatment_failed(
    stack: RampStack, before: Counter, load: LoadResult, treatment: str
) -> int:
    """Every failed request of the load is one of the treatment's own (never UNAVAILABLE from a
    reload); returns how many failed."""
    after = _requests_by_arm_code(stack)
    failed = {key: after[key] - before[key] for key in after if key[1] != "OK"}
    failed = {key: n for key, n in failed.items() if n > 0}
    assert all(arm == treatment for arm, _ in failed), failed
    assert not any(code == "UNAVAILABLE" for _, code in failed), failed
    lost = {code: n for code, n in load.codes().items() if code != "OK"}
    assert sum(lost.values()) == sum(failed.values()), (lost, failed)
    assert load.ok > 0
    return sum(lost.values())


def _rolled_back_within_one_step(
    stack: RampStack, tmp_path: Path, treatment: str, guardrails: set[str]
) -> str:
    before = _requests_by_arm_code(stack)
    load = BackgroundLoad(stack, duration_s=14)
    ramp = _ramp(stack, tmp_path, treatment, "20,50", hold_s=6)
    _, stderr = ramp.communicate(timeout=90)
    result = load.result()
    assert ramp.returncode == 1, stderr
    assert any(f"guardrail {name} tripped at 20%" in stderr for name in guardrails), stderr
    assert f"{treatment} rolled back to 0%" in stderr
    assert _weight(stack, treatment) == 0
    assert _gateway_metric(stack, "seminar_gateway_arm_share", arm=treatment) == 0
    events = _events(tmp_path)
    assert [e["percent"] for e in events if e["event"] == "step"] == [20]  # never reached 50
    (rollback,) = [e for e in events if e["event"] == "rollback"]
    assert rollback["guardrail"] in guardrails and rollback["value"] > rollback["bound"]
    assert _ramp_metric(tmp_path, "seminar_ab_ramp_step_percent", treatment=treatment) == 0
    assert _ramp_metric(
        tmp_path, "seminar_ab_ramp_rollbacks_total", treatment=treatment,
        guardrail=rollback["guardrail"],
    ) == 1  # fmt: skip
    _assert_only_treatment_failed(stack, before, result, treatment)
    return stderr


@pytest.mark.slow
@pytest.mark.serving
def test_a_treatment_that_errors_is_rolled_back_by_the_error_guardrail(
    ramp_stack: RampStack, tmp_path: Path
) -> None:
    _reset(ramp_stack)
    stderr = _rolled_back_within_one_step(ramp_stack, tmp_path, "broken", {"error_ratio"})
    assert "error_ratio 1 > bound 0.02" in stderr


@pytest.mark.slow
@pytest.mark.serving
def test_a_treatment_5x_slower_is_rolled_back_by_the_latency_guardrail(
    ramp_stack: RampStack, tmp_path: Path
) -> None:
    _reset(ramp_stack)
    warmup = asyncio.run(
        run_load(
            ramp_stack.gateway.address,
            ramp_stack.calls,
            LoadConfig(duration_s=2, concurrency=4, warmup_s=0.5),
        )
    )
    control_ms = warmup.percentiles_ms()["p50"]
    ramp_stack.slow_delay_file.write_text(str(SLOWDOWN * control_ms / 1000))
    _rolled_back_within_one_step(ramp_stack, tmp_path, "slow", {"p99_ratio", "p99_ms"})


@pytest.mark.slow
@pytest.mark.serving
def test_a_healthy_treatment_reaches_50_percent_and_no_request_is_lost(
    ramp_stack: RampStack, tmp_path: Path
) -> None:
    _reset(ramp_stack)
    before = _requests_by_arm_code(ramp_stack)
    load = BackgroundLoad(ramp_stack, duration_s=16)
    ramp = _ramp(ramp_stack, tmp_path, "healthy", "10,25,50", hold_s=3)
    stdout, stderr = ramp.communicate(timeout=90)
    result = load.result()
    assert ramp.returncode == 0, stderr
    assert "ramp done: healthy at 50%" in stdout
    assert "ctr_drop not armed" in stdout  # no impression/click series on this gateway
    config = load_config(ramp_stack.gateway.config_path)
    assert {a.name: a.weight for a in config.arms} == {
        "control": 50, "healthy": 50, "broken": 0, "slow": 0,
    }  # fmt: skip
    steps = [e["percent"] for e in _events(tmp_path) if e["event"] == "step"]
    assert steps == [10, 25, 50]
    assert _ramp_metric(tmp_path, "seminar_ab_ramp_step_percent", treatment="healthy") == 50
    assert _assert_only_treatment_failed(ramp_stack, before, result, "healthy") == 0
    assert result.arms().get("healthy", 0) > 0  # it served during the ramp


@pytest.mark.slow
@pytest.mark.serving
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_ramp_leaves_the_last_step_and_says_so(
    ramp_stack: RampStack, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    """Ctrl-C, or a supervisor's SIGTERM, even where the ramp was started with SIGINT ignored
    (a script's background command): the last step stays, the log and stderr say so."""
    _reset(ramp_stack)
    ramp = _ramp(ramp_stack, tmp_path, "healthy", "10,25", hold_s=60, sigint_ignored=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "ramp.jsonl").exists() or not _events(tmp_path):
        assert time.monotonic() < deadline and ramp.poll() is None, ramp.stderr
        time.sleep(0.1)
    ramp.send_signal(stop_signal)
    _, stderr = ramp.communicate(timeout=30)
    assert ramp.returncode == 130, stderr
    assert "left at the last step written, healthy at 10%" in stderr
    assert _weight(ramp_stack, "healthy") == 10
    assert _events(tmp_path)[-1]["event"] == "interrupted"


# ---- fast: the weights of a step, the plan's and the CLI's bad inputs --------------------------


def test_a_step_scales_the_other_arms_in_their_proportions() -> None:
    arms = (Arm("a", "m", 1, 30), Arm("b", "m", 1, 10), Arm("t", "m", 2, 0))
    config = ExperimentConfig(salt="s", arms=arms)
    stepped = step_config(config, "t", 20)
    assert {a.name: a.weight for a in stepped.arms} == {"a": 60, "b": 20, "t": 20}
    assert stepped.shares()["t"] == pytest.approx(0.2)
    back = rolled_back(stepped, "t")
    assert {a.name: a.weight for a in back.arms} == {"a": 60, "b": 20, "t": 0}


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"steps": ()}, "at least one"),
        ({"steps": (5, 1)}, "increase"),
        ({"steps": (0, 5)}, "increase"),
        ({"steps": (50, 101)}, "increase"),
        ({"hold_s": 0}, "> 0"),
        ({"guardrails": {"max_error_ratio": 1.5}}, "fractions"),
        ({"guardrails": {"min_requests": -1}}, "min_requests"),
    ],
)
def test_invalid_plans_are_refused(changes: dict, match: str) -> None:
    fields = {"config_path": Path("ab.yaml"), "treatment": "t", "prometheus": "http://x"}
    with pytest.raises(ValueError, match=match):
        if "guardrails" in changes:
            Guardrails(**changes["guardrails"])
        RampPlan(**fields, **changes)


def test_cli_refuses_an_unknown_treatment_and_an_unreachable_prometheus(tmp_path: Path) -> None:
    arms = (Arm("control", "m", 1, 100), Arm("t", "m", 2, 0))
    path = tmp_path / "ab.yaml"
    write_config(ExperimentConfig(salt="s", arms=arms), path)

    def ramp(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "seminar.cli", "ab", "ramp", "--config", str(path), *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    unknown = ramp("--treatment", "nope")
    assert unknown.returncode == 2 and "'nope' is not an arm" in unknown.stderr
    bad_steps = ramp("--treatment", "t", "--steps", "5,x")
    assert bad_steps.returncode == 2 and "--steps" in bad_steps.stderr
    no_prometheus = ramp("--treatment", "t", "--prometheus", f"http://127.0.0.1:{free_port()}")
    assert no_prometheus.returncode == 6 and "Prometheus" in no_prometheus.stderr
    assert load_config(path) == ExperimentConfig(salt="s", arms=arms)  # untouched
