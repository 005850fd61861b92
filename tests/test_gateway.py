"""The real gateway process in front of the real tritonserver, over real gRPC.

Covers the acceptance list of issue 7: scores equal direct Triton scores, every invalid request
type gets INVALID_ARGUMENT, health and reflection, metrics labels, shadow arm isolation,
config reloads (file change, SIGHUP, invalid config kept out), weights changed under load, and
Triton stopped / restarted.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from seminar.clients.client import rank_direct, rank_via_gateway
from seminar.clients.config import Arm, Limits
from seminar.clients.load import LoadConfig, run_load
from seminar.clients.proto import ranker_pb2, ranker_pb2_grpc
from seminar.clients.scoring import CallFailed
from seminar.clients.workload import RankCall
from seminar.serving.triton import TritonServer
from tests.support.clients import RunningGateway, make_config, metric_samples
from tests.support.clients import wait_until as _wait

pytestmark = [pytest.mark.slow, pytest.mark.serving]


def _rank(gw: RunningGateway, call: RankCall) -> ranker_pb2.RankResponse:
    with grpc.insecure_channel(gw.address) as channel:
        request = ranker_pb2.RankRequest(
            user_id=call.user_id, query=call.query, candidate_ids=call.candidate_ids.tolist()
        )
        return ranker_pb2_grpc.RankerStub(channel).Rank(request, timeout=10)


def test_gateway_scores_equal_direct_triton_scores(
    gateway: RunningGateway, real_calls: list[RankCall]
) -> None:
    arms_seen = set()
    for call in real_calls[:12]:
        via = rank_via_gateway(
            gateway.address, call.user_id, call.query, call.candidate_ids.tolist()
        )
        arm = gateway.config.assign(call.user_id)
        assert (via.arm, via.model_version) == (arm.name, arm.model_version)
        direct = rank_direct(
            gateway.triton_url, arm.model, arm.version, call.user_id, call.query,
            call.candidate_ids.tolist(),
        )  # fmt: skip
        assert sorted(via.item_ids) == sorted(call.candidate_ids.tolist())
        assert via.scores == sorted(via.scores, reverse=True)
        # Same Triton, same rows: equal per item. Dynamic batching may merge this request with
        # others, which changes float summation order only, hence 1e-5 and not bit equality.
        by_item = dict(zip(direct.item_ids, direct.scores, strict=True))
        np.testing.assert_allclose(
            via.scores, [by_item[i] for i in via.item_ids], rtol=1e-5, atol=1e-6
        )
        arms_seen.add(via.arm)
    assert arms_seen == {a.name for a in gateway.config.arms}, "12 users should hit both arms"


def test_every_invalid_request_type_gets_invalid_argument(
    gateway: RunningGateway, real_calls: list[RankCall]
) -> None:
    ok = real_calls[0]
    ids = ok.candidate_ids.tolist()
    limits = gateway.config.limits
    cases = {
        "no candidates": ("1", "", [], "empty"),
        "too many candidates": ("1", "", (ids * 3)[: limits.max_candidates + 1], "over the limit"),
        "unknown item id": ("1", "", [*ids[:3], 987_654_321], "unknown item id"),
        "oversize query": ("1", "x" * (limits.max_query_bytes + 1), ids, "bytes, over the limit"),
        "non-numeric user id": ("alice", "", ids, "user_id"),
        "negative user id": ("-5", "", ids, "user_id"),
        "empty user id": ("", "", ids, "user_id"),
    }
    with grpc.insecure_channel(gateway.address) as channel:
        stub = ranker_pb2_grpc.RankerStub(channel)
        for case, (user, query, cands, message) in cases.items():
            request = ranker_pb2.RankRequest(user_id=user, query=query, candidate_ids=cands)
            with pytest.raises(grpc.RpcError) as err:
                stub.Rank(request, timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
            assert message in err.value.details(), (case, err.value.details())


def test_health_and_reflection(gateway: RunningGateway) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(gateway.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "seminar.v1.Ranker"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
        names = {s.name for s in response.list_services_response.service}
        assert {"seminar.v1.Ranker", "grpc.health.v1.Health"} <= names


def test_metrics_carry_arm_and_version_labels(
    gateway: RunningGateway, real_calls: list[RankCall]
) -> None:
    for call in real_calls[:10]:
        rank_via_gateway(gateway.address, call.user_id, call.query, call.candidate_ids.tolist())
    requests = metric_samples(gateway.metrics_url, "seminar_gateway_requests_total")
    ok = {(s["arm"], s["model_version"]): v for s, v in requests if s["code"] == "OK"}
    for arm in gateway.config.arms:
        assert ok.get((arm.name, arm.model_version), 0) >= 1, (arm, ok)
    latency = metric_samples(gateway.metrics_url, "seminar_gateway_request_latency_seconds_count")
    assert {(s["arm"], s["model_version"]) for s, _ in latency} >= set(ok)
    triton = metric_samples(gateway.metrics_url, "seminar_gateway_triton_latency_seconds_count")
    assert any(s["role"] == "primary" for s, _ in triton)


def test_shadow_arm_never_changes_responses(
    gateway: RunningGateway,
    start_gateway,
    gateway_arms: tuple[Arm, Arm],
    real_calls: list[RankCall],
) -> None:
    other = gateway_arms[1]
    good = start_gateway(shadow=Arm("shadow", other.model, other.version))
    broken = start_gateway(shadow=Arm("shadow", "no_such_model", 7))
    calls = real_calls[:8]
    for call in calls:
        plain = _rank(gateway, call)
        for gw in (good, broken):
            shadowed = _rank(gw, call)
            assert list(shadowed.item_ids) == list(plain.item_ids)
            np.testing.assert_allclose(shadowed.scores, plain.scores, rtol=1e-5, atol=1e-6)
            assert (shadowed.arm, shadowed.model_version) == (plain.arm, plain.model_version)
    # Shadow calls run after the response; give them a moment, then read their meters.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        done = metric_samples(good.metrics_url, "seminar_gateway_shadow_requests_total")
        failed = metric_samples(broken.metrics_url, "seminar_gateway_shadow_requests_total")
        if sum(v for _, v in done) >= len(calls) and sum(v for _, v in failed) >= len(calls):
            break
        time.sleep(0.1)
    assert {s["code"] for s, _ in done} == {"OK"}
    assert sum(v for _, v in failed) == len(calls) and "OK" not in {s["code"] for s, _ in failed}
    # The shadow serves the treatment's own (model, version): a treatment request compared
    # with it would be a model compared with itself, so only the control's are compared.
    compared = [
        c for c in calls if good.config.assign(c.user_id).model_version != other.model_version
    ]
    assert 0 < len(compared) < len(calls)
    agreement = metric_samples(good.metrics_url, "seminar_gateway_shadow_agreement_count")
    assert sum(v for _, v in agreement) == len(compared)


def _reloads(gw: RunningGateway, result: str) -> float:
    return sum(
        v
        for s, v in metric_samples(gw.metrics_url, "seminar_gateway_config_reloads_total")
        if s["result"] == result
    )


def test_invalid_config_is_rejected_and_the_old_one_kept(
    start_gateway, real_calls: list[RankCall]
) -> None:
    gw = start_gateway()
    before = [_rank(gw, c).arm for c in real_calls[:6]]
    gw.config_path.write_text("salt: s\narms:\n  - {name: a, model: m, version: 1, weight: -1}\n")
    assert _wait(lambda: _reloads(gw, "rejected") >= 1), "an invalid file must be seen and rejected"
    gw.config_path.write_text("salt: [unclosed\n")
    assert _wait(lambda: _reloads(gw, "rejected") >= 2)
    assert [_rank(gw, c).arm for c in real_calls[:6]] == before  # the old config still routes
    log = gw.process.log_text()
    assert "rejected, keeping the previous config" in log and "weight" in log
    # SIGHUP reloads too (without any file change): the now-valid file is applied.
    gw.write_config(gw.config)
    assert _wait(lambda: _reloads(gw, "applied") >= 1)
    applied = _reloads(gw, "applied")
    gw.process.reload()
    assert _wait(lambda: _reloads(gw, "applied") >= applied + 1), "SIGHUP must reload"


def test_weight_change_under_load_loses_nothing_and_moves_traffic_within_a_second(
    start_gateway, real_calls: list[RankCall]
) -> None:
    gw = start_gateway(weights=(50, 50))
    control, treatment = (a.name for a in gw.config.arms)
    change_at = 1.5  # seconds into the measured window
    # 20 candidates per request: many requests per second even on a busy CI machine.
    calls = [RankCall(c.user_id, c.query, c.candidate_ids[:20]) for c in real_calls]

    async def scenario():
        async def flip() -> None:
            await asyncio.sleep(change_at)
            gw.write_config(make_config(gw.config.arms, weights=(100, 0)))  # atomic rename

        load = LoadConfig(duration_s=4.0, concurrency=4, warmup_s=0.0, timeout_s=10.0)
        result, _ = await asyncio.gather(run_load(gw.address, calls, load), flip())
        return result

    result = asyncio.run(scenario())
    assert result.codes() == {"OK": len(result.records)}, result.codes()
    before = {r.arm for r in result.records if r.start < change_at}
    after = [r.arm for r in result.records if r.start > change_at + 1.0]
    assert before == {control, treatment}
    assert len(after) >= 5 and set(after) == {control}, "all traffic must move within one second"


def test_triton_stopped_gives_unavailable_within_the_deadline_then_recovers(
    triton: TritonServer,
    start_gateway,
    gateway_arms: tuple[Arm, Arm],
    real_calls: list[RankCall],
    tmp_path: Path,
) -> None:
    """A separate tritonserver (not the shared one), stopped and restarted on the same port."""
    from seminar.processes import free_port
    from seminar.serving.triton import ModelControl, TritonConfig
    from tests.support.clients import health_status, single_version_repo

    control = gateway_arms[0]
    repo = single_version_repo(triton.repo, control.version, tmp_path / "repo")
    grpc_port = free_port()
    # The restarted server must listen on the same port the gateway dials, but the stopped
    # server leaves that port in TIME_WAIT, which TritonServer's pre-start port check (a bind
    # without SO_REUSEADDR) refuses although tritonserver itself binds it fine. So the port is
    # forced with a trailing --grpc-port flag (last one wins) and the check sees a free port.
    config = TritonConfig(
        repo=repo, model_control=ModelControl.EXPLICIT, log_path=tmp_path / "triton.log",
        load_models=(control.model,), wait_models=(control.model,),
        extra_args=(f"--grpc-port={grpc_port}",),
    )  # fmt: skip
    triton_url = f"127.0.0.1:{grpc_port}"
    server = TritonServer(config)
    server.start()
    try:
        deadline_ms = 1000
        # All traffic to the control arm: the only model this server loads.
        gw = start_gateway(
            weights=(100, 0), triton_url=triton_url, limits=Limits(200, 64, deadline_ms)
        )
        call = real_calls[0]
        args = (gw.address, call.user_id, call.query, call.candidate_ids.tolist())
        assert rank_via_gateway(*args).item_ids
        server.stop()
        t0 = time.perf_counter()
        with pytest.raises(CallFailed) as err:
            rank_via_gateway(*args, timeout_s=5)
        assert err.value.code == "UNAVAILABLE", err.value
        assert time.perf_counter() - t0 < deadline_ms / 1000
        # Health tells the truth: Triton unreachable means NOT_SERVING.
        assert _wait(lambda: health_status(gw.address) == "NOT_SERVING", 5)
        server = TritonServer(config)
        server.start()
        t_up = time.perf_counter()
        recovered = None
        while time.perf_counter() - t_up < 15:
            try:
                recovered = rank_via_gateway(*args)
                break
            except CallFailed:
                time.sleep(0.05)
        assert recovered is not None, "the gateway must reconnect by itself"
        assert _wait(lambda: health_status(gw.address) == "SERVING", 5)
    finally:
        server.stop()


def test_client_cli_ranks_through_the_gateway_and_verifies_against_triton(
    gateway: RunningGateway, real_calls: list[RankCall]
) -> None:
    import json
    import subprocess
    import sys

    call = real_calls[1]
    result = subprocess.run(
        [
            sys.executable, "-m", "seminar.cli", "client", "rank",
            "--gateway", gateway.address, "--user", call.user_id, "--query", call.query,
            "--candidates", ",".join(map(str, call.candidate_ids[:30].tolist())),
            "--verify-triton", gateway.triton_url, "--json",
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["arm"] == gateway.config.assign(call.user_id).name
    assert body["scores"] == sorted(body["scores"], reverse=True)
    assert "verified" in result.stderr


def test_load_cli_closed_and_open_loop_through_the_gateway(
    movielens_data: Path, gateway: RunningGateway, tmp_path: Path
) -> None:
    import json
    import subprocess
    import sys

    data = movielens_data
    base = [sys.executable, "-m", "seminar.cli", "load", "--gateway", gateway.address]
    base += ["--data", str(data), "--candidates", "20", "--warmup", "0"]
    closed = subprocess.run(
        [*base, "--duration", "1.5", "--concurrency", "2", "--out", str(tmp_path / "closed.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert closed.returncode == 0, closed.stderr
    assert "| p50 ms |" in closed.stdout
    report = json.loads((tmp_path / "closed.json").read_text())
    assert report["ok"] > 0 and report["codes"] == {"OK": report["ok"]}
    assert set(report["arms"]) <= {a.name for a in gateway.config.arms}
    assert (
        0
        < report["latency_ms"]["p50"]
        <= report["latency_ms"]["p99"]
        <= report["latency_ms"]["max"]
    )
    # Open loop: arrivals follow the clock, not the responses: rate x duration requests.
    opened = subprocess.run(
        [*base, "--duration", "1.5", "--rate", "40", "--out", str(tmp_path / "open.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert opened.returncode == 0, opened.stderr
    report = json.loads((tmp_path / "open.json").read_text())
    assert report["mode"] == "rate" and abs(report["requests"] - 60) <= 2, report


def test_a_config_reload_takes_the_newest_versions_catalog(
    triton: TritonServer, gateway_arms, real_calls: list[RankCall], tmp_path: Path
) -> None:
    """Items of a version built on a grown catalog are refused until the rollout's config
    reload, and accepted after it; the arms keep serving throughout."""
    from seminar import contract
    from tests.support.clients import launch_gateway

    repo = tmp_path / "repo"
    served = triton.repo / contract.FEATURES_MODEL / "1" / contract.ITEM_IDS_FILE
    (repo / contract.FEATURES_MODEL / "1").mkdir(parents=True)
    ids = np.load(served)
    np.save(repo / contract.FEATURES_MODEL / "1" / contract.ITEM_IDS_FILE, ids)
    new_id = int(ids.max()) + 1
    config = make_config(gateway_arms)
    (tmp_path / "gw").mkdir()
    gw = launch_gateway(config, triton.grpc_url, repo, tmp_path / "gw")
    try:
        call = real_calls[0]
        grown = RankCall(call.user_id, call.query, np.append(call.candidate_ids[:5], new_id))
        with pytest.raises(grpc.RpcError) as err:
            _rank(gw, grown)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"unknown item id(s) {new_id}" in err.value.details()
        # The build of version 2 wrote its features map with the new item; the rollout
        # rewrites the config (here: the same arms, SIGHUP).
        (repo / contract.FEATURES_MODEL / "2").mkdir()
        np.save(
            repo / contract.FEATURES_MODEL / "2" / contract.ITEM_IDS_FILE, np.append(ids, new_id)
        )
        applied = _reloads(gw, "applied")
        gw.process.reload()
        assert _wait(lambda: _reloads(gw, "applied") >= applied + 1)
        assert new_id in _rank(gw, grown).item_ids  # served (as OOV by version 1)
        assert "catalog: " in gw.process.log_text()
    finally:
        gw.process.stop()
