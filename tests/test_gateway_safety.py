"""The gateway keeps tritonserver alive and tells the truth about it: real tritonserver, real
gRPC, real /metrics.

tritonserver 2.51 can crash (segfault) when an inference call is cancelled inside it (Triton
issues #7368 and #8034), which a gateway that passes client deadlines on to Triton does for
every client with a short deadline. These tests drive short deadlines, cancellations and
overload through the gateway and check that Triton survives, that every call ends with a code
the client can act on, and that the gateway's metrics count the same; then that arms whose
(model, version) is not READY are refused, and that malformed input gets INVALID_ARGUMENT.

Tests that can crash or change a tritonserver use this module's own server (`private_triton`),
never the session's shared one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from seminar.clients.client import rank_direct
from seminar.clients.config import Arm, ExperimentConfig, write_config
from seminar.clients.proto import ranker_pb2, ranker_pb2_grpc
from seminar.clients.workload import RankCall
from seminar.serving import process_group
from seminar.serving.triton import ModelControl, TritonConfig, TritonServer
from tests.support.clients import (
    TEST_LIMITS,
    RunningGateway,
    health_status,
    metric_samples,
    single_version_repo,
)

pytestmark = [pytest.mark.slow, pytest.mark.serving]

# Codes a client of a healthy, busy gateway may get when its deadline is short.
SHORT_DEADLINE_CODES = {"OK", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}


class PrivateTriton:
    """A tritonserver of this module's own: explicit model control, one build's models.

    A crash or an unloaded model here never reaches other tests; `running()` starts a fresh
    server (new log file) when a previous test left it dead.
    """

    def __init__(self, repo: Path, model: str, version: int, folder: Path) -> None:
        self.model = model
        self.version = version
        self.folder = folder
        self.config = TritonConfig(
            repo=repo, model_control=ModelControl.EXPLICIT,
            load_models=(model,), wait_models=(model,),
        )  # fmt: skip
        self.server: TritonServer | None = None
        self.starts = 0

    def running(self) -> TritonServer:
        if self.server is None or not self.server.is_alive():
            self.stop()
            self.starts += 1
            log = self.folder / f"tritonserver-{self.starts}.log"
            self.server = TritonServer(dataclasses.replace(self.config, log_path=log))
            self.server.start()
        return self.server

    def stop(self) -> None:
        """Stop the server, and kill what a crashed one leaves behind: its Python-backend stubs
        (they ignore SIGTERM) stay in its process group, whose id is the server's pid."""
        if self.server is None:
            return
        pid, server, self.server = self.server.pid, self.server, None
        crashed = not server.is_alive()
        server.stop()
        if crashed and pid is not None:
            # While the stubs live, Linux keeps their group id from being reused as a pid.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def private_triton(
    triton: TritonServer,
    gateway_arms: tuple[Arm, Arm],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PrivateTriton]:
    control = gateway_arms[0]
    folder = tmp_path_factory.mktemp("private_triton")
    repo = single_version_repo(triton.repo, control.version, folder / "repo")
    private = PrivateTriton(repo, control.model, control.version, folder)
    try:
        yield private
    finally:
        private.stop()


@pytest.fixture(scope="module")
def big_requests(triton: TritonServer, real_calls: list[RankCall]) -> list[ranker_pb2.RankRequest]:
    """Real users, each with 1000 distinct catalog items as candidates (seeded)."""
    from seminar.clients.catalog import Catalog

    items = Catalog.load(triton.repo).item_ids
    rng = np.random.default_rng(0)
    return [
        ranker_pb2.RankRequest(
            user_id=call.user_id,
            query=call.query,
            candidate_ids=rng.choice(items, size=1000, replace=False).tolist(),
        )
        for call in real_calls[:32]
    ]


def _requests(calls: list[RankCall]) -> list[ranker_pb2.RankRequest]:
    return [
        ranker_pb2.RankRequest(
            user_id=c.user_id, query=c.query, candidate_ids=c.candidate_ids.tolist()
        )
        for c in calls
    ]


def _one_model_arms(model: str, version: int) -> tuple[Arm, Arm]:
    """Two arms over the one model the private server loads (distinct labels, same scores)."""
    return Arm("control", model, version, 50), Arm("treatment", model, version, 50)


def _by_code(gw: RunningGateway, name: str = "seminar_gateway_requests_total") -> Counter:
    counts: Counter = Counter()
    for labels, value in metric_samples(gw.metrics_url, name):
        counts[labels["code"]] += int(value)
    return +counts


def _total(gw: RunningGateway, name: str, **match: str) -> float:
    return sum(
        value
        for labels, value in metric_samples(gw.metrics_url, name)
        if all(labels.get(k) == v for k, v in match.items())
    )


def _wait(predicate: Callable[[], bool], timeout_s: float, every_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return predicate()


def _wait_drained(gw: RunningGateway, timeout_s: float = 60.0) -> None:
    """Until every abandoned Triton call has ended (its late result counted)."""
    drained = _wait(
        lambda: (
            _total(gw, "seminar_gateway_triton_inflight") == 0
            and _total(gw, "seminar_gateway_triton_late_total")
            == _total(gw, "seminar_gateway_triton_abandoned_total")
        ),
        timeout_s,
        every_s=0.25,
    )
    assert drained, (
        f"Triton calls still outstanding after {timeout_s:.0f} s: "
        f"inflight={_total(gw, 'seminar_gateway_triton_inflight')}, "
        f"abandoned={_total(gw, 'seminar_gateway_triton_abandoned_total')}, "
        f"late={_total(gw, 'seminar_gateway_triton_late_total')}"
    )


def _assert_alive_and_answering(private: PrivateTriton) -> None:
    server = private.server
    assert server is not None and server.is_alive(), (
        f"tritonserver died (exit code {server.wait() if server else None}); "
        f"log tail:\n{server.log_tail(15) if server else ''}"
    )
    assert server.is_ready()
    direct = rank_direct(
        server.grpc_url, private.model, private.version, "1", "", [1, 2, 3], timeout_s=60
    )
    assert sorted(direct.item_ids) == [1, 2, 3]


def _assert_metrics_agree(gateway: Counter, clients: Counter) -> None:
    """The gateway's request counts by code match what the clients saw.

    Not to the call: a deadline can pass while a request or its reply is on the wire, so a
    client may see DEADLINE_EXCEEDED for a call the gateway answered OK or never received.
    Those races are rare (under 1% here); a gateway that miscounts whole classes of calls
    (e.g. meters cancelled or refused calls as OK) is far outside the tolerance.
    """
    calls = sum(clients.values())
    assert sum(gateway.values()) <= calls, (gateway, clients)
    tolerance = 3 + calls // 100
    for code in set(gateway) | set(clients):
        assert abs(gateway[code] - clients[code]) <= tolerance, (
            f"{code}: gateway metered {gateway[code]}, clients saw {clients[code]} "
            f"(tolerance {tolerance}); gateway {dict(gateway)}, clients {dict(clients)}"
        )


async def _drive(
    address: str,
    requests: list[ranker_pb2.RankRequest],
    concurrency: int,
    deadline_ms: tuple[float, float],
    duration_s: float,
    keep_going: Callable[[], bool],
    seed: int = 0,
) -> tuple[Counter, dict[str, str]]:
    """Closed-loop clients with deadlines drawn uniformly from `deadline_ms`; codes per call
    and one message per non-OK code. Stops early when `keep_going()` turns false."""
    rng = random.Random(seed)
    codes: Counter = Counter()
    messages: dict[str, str] = {}
    end = time.monotonic() + duration_s
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ranker_pb2_grpc.RankerStub(channel)

        async def client() -> None:
            while time.monotonic() < end and keep_going():
                timeout_s = rng.uniform(*deadline_ms) / 1000
                try:
                    await stub.Rank(rng.choice(requests), timeout=timeout_s)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as err:
                    codes[err.code().name] += 1
                    messages.setdefault(err.code().name, err.details() or "")

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return codes, messages


@pytest.mark.parametrize(
    ("load", "concurrency", "deadline_ms", "duration_s"),
    [
        pytest.param("100 candidates", 4, (10, 60), 15.0, id="100-candidates-10-60ms"),
        pytest.param("1000 candidates", 8, (50, 400), 15.0, id="1000-candidates-50-400ms"),
    ],
)
def test_short_client_deadlines_never_crash_triton(
    private_triton: PrivateTriton,
    start_gateway,
    real_calls: list[RankCall],
    big_requests: list[ranker_pb2.RankRequest],
    load: str,
    concurrency: int,
    deadline_ms: tuple[float, float],
    duration_s: float,
) -> None:
    server = private_triton.running()
    model, version = private_triton.model, private_triton.version
    limits = dataclasses.replace(TEST_LIMITS, max_candidates=1000, max_inflight=32)
    gw = start_gateway(
        triton_url=server.grpc_url, arms=_one_model_arms(model, version), limits=limits
    )
    requests = big_requests if load == "1000 candidates" else _requests(real_calls)
    codes, messages = asyncio.run(
        _drive(gw.address, requests, concurrency, deadline_ms, duration_s, server.is_alive)
    )
    _assert_alive_and_answering(private_triton)
    assert set(codes) <= SHORT_DEADLINE_CODES, (codes, messages)
    assert codes["DEADLINE_EXCEEDED"] > 0, f"no deadline was short enough to matter: {codes}"
    _wait_drained(gw)
    _assert_metrics_agree(_by_code(gw), codes)
    # Calls whose budget ended were left to finish inside Triton, and each one's late outcome
    # was counted.
    assert _total(gw, "seminar_gateway_triton_abandoned_total") >= 1
    late = _by_code(gw, "seminar_gateway_triton_late_total")
    assert set(late) <= {"OK"}, late


def test_client_cancellation_never_cancels_inside_triton(
    private_triton: PrivateTriton, start_gateway, big_requests: list[ranker_pb2.RankRequest]
) -> None:
    """Clients cancel (grpc future .cancel()) 1000-candidate calls a few ms after sending."""
    server = private_triton.running()
    limits = dataclasses.replace(TEST_LIMITS, max_candidates=1000, max_inflight=32)
    gw = start_gateway(
        triton_url=server.grpc_url,
        arms=_one_model_arms(private_triton.model, private_triton.version),
        limits=limits,
    )
    rng = random.Random(1)
    cancelled, finished = 0, Counter()
    end = time.monotonic() + 10.0
    with grpc.insecure_channel(gw.address) as channel:
        stub = ranker_pb2_grpc.RankerStub(channel)
        while time.monotonic() < end and server.is_alive():
            futures = [stub.Rank.future(r, timeout=30) for r in rng.sample(big_requests, 8)]
            time.sleep(rng.uniform(0.002, 0.06))
            for future in futures:
                if future.cancel():
                    cancelled += 1
                else:
                    error = future.exception()
                    finished["OK" if error is None else error.code().name] += 1
    _assert_alive_and_answering(private_triton)
    assert cancelled >= 50, f"too few calls were cancelled mid-request: {cancelled}, {finished}"
    assert set(finished) <= {"OK", "RESOURCE_EXHAUSTED"}, finished
    _wait_drained(gw)
    metered = _by_code(gw)
    # A call cancelled before the gateway read it never reaches Rank, hence <=.
    assert 0 < metered["CANCELLED"] <= cancelled, (metered, cancelled)
    # Most cancellations land while the gateway waits for Triton: that call is left running.
    abandoned = _total(gw, "seminar_gateway_triton_abandoned_total", role="primary")
    assert abandoned >= metered["CANCELLED"] // 2, (abandoned, metered)
    late = _by_code(gw, "seminar_gateway_triton_late_total")
    assert sum(late.values()) == abandoned and set(late) <= {"OK", "UNAVAILABLE"}, late


def test_calls_beyond_max_inflight_are_shed_at_once(
    private_triton: PrivateTriton, start_gateway, big_requests: list[ranker_pb2.RankRequest]
) -> None:
    server = private_triton.running()
    arms = _one_model_arms(private_triton.model, private_triton.version)
    # Under load: 12 clients, room for 2 Triton calls, a generous budget.
    shed = start_gateway(
        triton_url=server.grpc_url,
        arms=arms,
        limits=dataclasses.replace(TEST_LIMITS, max_candidates=1000, max_inflight=2),
    )
    codes, messages = asyncio.run(
        _drive(shed.address, big_requests, 12, (10_000, 10_000), 4.0, server.is_alive)
    )
    assert codes["OK"] > 0 and codes["RESOURCE_EXHAUSTED"] > 0, codes
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, (codes, messages)
    assert messages["RESOURCE_EXHAUSTED"].startswith("gateway overloaded: 2 Triton calls in flight")
    assert _by_code(shed) == codes  # nothing races a 10 s deadline

    # Abandoned calls hold their place: a 1 ms budget abandons the call at once while Triton
    # still works on it (its `features` process is held for 0.3 s, well under the 1 s after
    # which Triton gives a frozen model process up), so the next request finds no room until
    # it has finished.
    abandon = start_gateway(
        triton_url=server.grpc_url,
        arms=arms,
        limits=dataclasses.replace(TEST_LIMITS, max_candidates=1000, deadline_ms=1, max_inflight=1),
    )
    features = next(
        s.pid for s in process_group.StubWatch(server.pid).stubs() if s.model == "features"
    )
    with grpc.insecure_channel(abandon.address) as channel:
        stub = ranker_pb2_grpc.RankerStub(channel)
        os.kill(features, signal.SIGSTOP)
        try:
            with pytest.raises(grpc.RpcError) as err:
                stub.Rank(big_requests[0], timeout=10)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.value
            t0 = time.perf_counter()
            with pytest.raises(grpc.RpcError) as err:
                stub.Rank(big_requests[4], timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
            assert "1 Triton calls in flight" in err.value.details()
            assert time.perf_counter() - t0 < 0.2, "shedding must not wait for Triton"
        finally:
            time.sleep(max(0.0, 0.3 - (time.perf_counter() - t0)))
            os.kill(features, signal.SIGCONT)
        _wait_drained(abandon)
        assert _by_code(abandon, "seminar_gateway_triton_late_total") == {"OK": 1}
        with pytest.raises(grpc.RpcError) as err:  # room again: back to the 1 ms budget
            stub.Rank(big_requests[5], timeout=10)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.value
        assert "within the budget of" in err.value.details()
    # Stopped with that call still in Triton: the gateway waits for it before closing the
    # channel (closing it would cancel the call inside Triton).
    abandon.process.stop()
    log = abandon.process.log_text()
    assert "gateway stopping" in log and "still running after" not in log, log[-2000:]
    _assert_alive_and_answering(private_triton)


def _rank_all(gw: RunningGateway, calls: list[RankCall]) -> list[tuple[str, str, float]]:
    """Per call: (the arm that answered, or the arm the config assigns when refused; the
    status code name; seconds)."""
    out = []
    with grpc.insecure_channel(gw.address) as channel:
        stub = ranker_pb2_grpc.RankerStub(channel)
        for request, call in zip(_requests(calls), calls, strict=True):
            t0 = time.perf_counter()
            try:
                arm, code = stub.Rank(request, timeout=10).arm, "OK"
            except grpc.RpcError as err:
                arm, code = gw.config.assign(call.user_id).name, err.code().name
                if err.code() == grpc.StatusCode.UNAVAILABLE:
                    assert f"arm {arm}: " in err.details(), err.details()
            out.append((arm, code, time.perf_counter() - t0))
    return out


def test_reload_naming_an_unready_version_is_rejected(
    start_gateway, real_calls: list[RankCall]
) -> None:
    gw = start_gateway()
    control, treatment = gw.config.arms
    before = _rank_all(gw, real_calls[:8])
    assert {code for _, code, _ in before} == {"OK"}
    unloaded = Arm(treatment.name, control.model, 99, treatment.weight)  # no such version
    bad_arm = ExperimentConfig(gw.config.salt, (control, unloaded), limits=gw.config.limits)
    write_config(bad_arm, gw.config_path)
    assert _wait(
        lambda: _total(gw, "seminar_gateway_config_reloads_total", result="rejected") >= 1, 5
    )
    bad_shadow = dataclasses.replace(gw.config, shadow=Arm("shadow", control.model, 99))
    write_config(bad_shadow, gw.config_path)
    assert _wait(
        lambda: _total(gw, "seminar_gateway_config_reloads_total", result="rejected") >= 2, 5
    )
    after = _rank_all(gw, real_calls[:8])  # the old config still routes, every arm serves
    assert [(arm, code) for arm, code, _ in after] == [(arm, code) for arm, code, _ in before]
    rejected = [line for line in gw.process.log_text().splitlines() if "rejected" in line]
    assert len(rejected) == 2, rejected
    assert f"arm {treatment.name} (model {control.model} version 99) is not READY" in rejected[0]
    assert f"shadow shadow (model {control.model} version 99) is not READY" in rejected[1]
    assert "keeping the previous config" in rejected[0]
    assert _total(gw, "seminar_gateway_config_reloads_total", result="applied") == 0
    assert health_status(gw.address) == "SERVING"
    ready = {
        (labels["arm"], labels["model_version"]): value
        for labels, value in metric_samples(gw.metrics_url, "seminar_gateway_arm_ready")
    }
    assert ready == {(a.name, a.model_version): 1.0 for a in gw.config.arms}
    # An unready arm without traffic (weight 0) is no reason to refuse a config.
    idle = ExperimentConfig(
        gw.config.salt,
        (dataclasses.replace(control, weight=100), dataclasses.replace(unloaded, weight=0)),
        limits=gw.config.limits,
    )
    gw.write_config(idle)
    assert _wait(
        lambda: _total(gw, "seminar_gateway_config_reloads_total", result="applied") >= 1, 5
    )
    assert _total(gw, "seminar_gateway_arm_ready", arm=treatment.name) == 0
    assert health_status(gw.address) == "SERVING"


def test_gateway_starts_not_serving_when_an_arm_or_triton_is_not_ready(
    start_gateway, gateway_arms: tuple[Arm, Arm], real_calls: list[RankCall]
) -> None:
    from seminar.processes import free_port

    control = gateway_arms[0]
    unloaded = Arm("treatment", control.model, 99, 50)
    gw = start_gateway(arms=(control, unloaded), wait_serving=False)
    for service in ("", "seminar.v1.Ranker"):
        assert health_status(gw.address, service) == "NOT_SERVING"
    results = _rank_all(gw, real_calls[:16])
    by_arm = {arm: {code for a, code, _ in results if a == arm} for arm, _, _ in results}
    assert by_arm == {"control": {"OK"}, "treatment": {"UNAVAILABLE"}}, by_arm
    assert all(t < 0.5 for a, _, t in results if a == "treatment"), "refusals must be fast"
    assert _total(gw, "seminar_gateway_arm_ready", arm="treatment") == 0
    assert _total(gw, "seminar_gateway_arm_ready", arm="control") == 1
    refused = sum(1 for a, _, _ in results if a == "treatment")
    assert (
        _total(gw, "seminar_gateway_requests_total", arm="treatment", code="UNAVAILABLE") == refused
    )
    assert _total(gw, "seminar_gateway_triton_latency_seconds_count", arm="treatment") == 0
    with grpc.insecure_channel(gw.address) as channel:
        call = next(c for c in real_calls if gw.config.assign(c.user_id).name == "treatment")
        with pytest.raises(grpc.RpcError) as err:
            ranker_pb2_grpc.RankerStub(channel).Rank(_requests([call])[0], timeout=10)
        assert f"arm treatment: {control.model}:99 is not READY in Triton" in err.value.details()

    # Triton not up at all: the gateway starts, NOT_SERVING, and says why.
    nowhere = start_gateway(triton_url=f"127.0.0.1:{free_port()}", wait_serving=False)
    assert health_status(nowhere.address) == "NOT_SERVING"
    assert health_status(nowhere.address, "liveness") == "SERVING"  # the process itself is fine
    with grpc.insecure_channel(nowhere.address) as channel, pytest.raises(grpc.RpcError) as err:
        ranker_pb2_grpc.RankerStub(channel).Rank(_requests(real_calls[:1])[0], timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Triton unreachable" in err.value.details(), err.value.details()
    assert _total(nowhere, "seminar_gateway_triton_reachable") == 0


def test_unloaded_version_under_a_live_config_is_refused_then_recovers(
    private_triton: PrivateTriton, start_gateway, real_calls: list[RankCall]
) -> None:
    server = private_triton.running()
    model, version = private_triton.model, private_triton.version
    gw = start_gateway(triton_url=server.grpc_url, arms=_one_model_arms(model, version))
    calls = real_calls[:8]
    assert {code for _, code, _ in _rank_all(gw, calls)} == {"OK"}
    try:
        server.unload_model(model)
        assert _wait(lambda: health_status(gw.address) == "NOT_SERVING", 5), "health must follow"
        assert health_status(gw.address, "seminar.v1.Ranker") == "NOT_SERVING"
        triton_calls = _total(gw, "seminar_gateway_triton_latency_seconds_count")
        results = _rank_all(gw, calls)
        assert {code for _, code, _ in results} == {"UNAVAILABLE"}, results
        assert max(t for _, _, t in results) < 0.5, results
        assert _total(gw, "seminar_gateway_triton_latency_seconds_count") == triton_calls
        assert _total(gw, "seminar_gateway_arm_ready") == 0
        log = gw.process.log_text()
        assert f"arm control ({model}:{version}) is not READY in Triton" in log
    finally:
        server.load_model(model)
    assert _wait(lambda: health_status(gw.address) == "SERVING", 10), "health must recover"
    assert {code for _, code, _ in _rank_all(gw, calls)} == {"OK"}
    assert _total(gw, "seminar_gateway_arm_ready") == 2


def test_huge_user_id_and_malformed_bytes_get_invalid_argument(
    start_gateway, real_calls: list[RankCall]
) -> None:
    gw = start_gateway()
    ids = real_calls[0].candidate_ids.tolist()
    with grpc.insecure_channel(gw.address) as channel:
        stub = ranker_pb2_grpc.RankerStub(channel)
        for user_id in ("9" * 5000, "1" * 20, str(2**63)):
            with pytest.raises(grpc.RpcError) as err:
                stub.Rank(ranker_pb2.RankRequest(user_id=user_id, candidate_ids=ids), timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
            assert "user_id must be" in err.value.details()
            assert len(err.value.details()) < 200, "the message must not echo 5000 digits"
        raw = channel.unary_unary("/seminar.v1.Ranker/Rank")  # bytes in, bytes out
        garbage = {
            "truncated varint": b"\xff\xff\xff\xff",
            "field longer than the message": b"\x0a\x05ab",
            "user_id not UTF-8": b"\x0a\x02\xff\xfe",
        }
        for case, payload in garbage.items():
            with pytest.raises(grpc.RpcError) as err:
                raw(payload, timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, err.value)
            assert err.value.details().startswith(
                "request is not a valid seminar.v1.RankRequest: "
            ), (case, err.value.details())
    assert _by_code(gw) == {"INVALID_ARGUMENT": 3 + len(garbage)}
    log = gw.process.log_text()
    assert "Traceback" not in log and "deserializ" not in log.lower(), log
    assert sum("not a RankRequest" in line for line in log.splitlines()) == len(garbage)
