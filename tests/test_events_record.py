"""seminar.v1.Events Record through a real `seminar gateway` process (Triton not needed), on a
real SQLite file and a real redis-server, metered on the gateway's real /metrics; then kill -9
of the gateway, of tritonserver (under a real `seminar serve`) and of redis-server during one
load: every acknowledged event is stored, once."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from seminar.clients.client import RankResult, rank_via_gateway
from seminar.clients.config import ExperimentConfig, write_config
from seminar.clients.demo import demo_arms
from seminar.clients.metrics import EVENT_OUTCOMES, metric_total
from seminar.clients.process import GatewayProcess
from seminar.clients.proto import ranker_pb2, ranker_pb2_grpc
from seminar.clients.record_load import (
    RecordLoadConfig,
    RecordLoadReport,
    event_message,
    run_record_load,
)
from seminar.clients.scoring import CallFailed
from seminar.clients.workload import RankCall, load_workload
from seminar.contract import EVENTS_METHOD, EVENTS_SERVICE
from seminar.events import open_event_log
from seminar.events.redis_server import RedisServer
from seminar.processes import free_port
from seminar.serving.serve_process import ServeProcess
from tests.support.build import BuiltRepo
from tests.support.clients import TEST_LIMITS, health_status, single_version_repo
from tests.support.events import BACKENDS, make_events, needs_redis_server
from tests.support.serving import require_tritonserver

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = ROOT / "clients" / "ab.example.yaml"
# The acceptance load is 60 s per kill; SEMINAR_RECORD_KILL_S shortens it for a quick look.
KILL_LOAD_S = float(os.environ.get("SEMINAR_RECORD_KILL_S", "60"))


def start_gateway(url: str, tmp_path: Path, port: int = 0) -> GatewayProcess:
    """A gateway serving Record over `url`; Triton is nowhere (Rank is not under test)."""
    return GatewayProcess(
        EXAMPLE_CONFIG,
        triton_url=f"127.0.0.1:{free_port()}",
        port=port,
        log_path=tmp_path / f"gateway-{time.monotonic_ns()}.log",
        wait_serving=False,
        event_log=url,
    ).start()


@pytest.fixture
def gateway(log_url: str, tmp_path: Path) -> Iterator[GatewayProcess]:
    process = start_gateway(log_url, tmp_path)
    yield process
    process.stop()


def record(address: str, request: ranker_pb2.RecordRequest) -> ranker_pb2.RecordResponse:
    with grpc.insecure_channel(address) as channel:
        return ranker_pb2_grpc.EventsStub(channel).Record(request, timeout=10)


def test_record_stores_a_batch_once_and_a_retry_gets_the_same_seqs(
    gateway: GatewayProcess, log_url: str
) -> None:
    assert health_status(gateway.address, EVENTS_SERVICE) == "SERVING"
    request = ranker_pb2.RecordRequest(events=[event_message(e) for e in make_events(5)])
    first = record(gateway.address, request)
    assert list(first.seqs) == [1, 2, 3, 4, 5] and (first.stored, first.duplicates) == (5, 0)
    again = record(gateway.address, request)
    assert list(again.seqs) == list(first.seqs) and (again.stored, again.duplicates) == (0, 5)
    with open_event_log(log_url) as log:
        stored = log.read_range(0, 100)
    sent = [e.stamped(s.recorded_ms) for e, s in zip(make_events(5), stored, strict=True)]
    assert [s.event for s in stored] == sent


@pytest.mark.parametrize(
    ("index", "change", "says"),
    [
        (3, {"type": ranker_pb2.EVENT_TYPE_UNSPECIFIED}, "events[3] (event_id 'e3'): type must"),
        (1, {"item_id": -1}, "events[1] (event_id 'e1'): item_id must"),
        (2, {"event_id": "e0"}, "events[2] (event_id 'e0'): event_id repeats events[0]"),
    ],
)
def test_a_bad_event_rejects_its_batch_with_invalid_argument(
    gateway: GatewayProcess, log_url: str, index: int, change: dict, says: str
) -> None:
    messages = [event_message(e) for e in make_events(4)]
    for field, value in change.items():
        setattr(messages[index], field, value)
    with pytest.raises(grpc.RpcError) as err:
        record(gateway.address, ranker_pb2.RecordRequest(events=messages))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in err.value.details()
    with open_event_log(log_url) as log:
        assert log.high_watermark() == 0, "nothing of a rejected batch is stored"


def test_malformed_bytes_and_an_empty_batch_get_invalid_argument(gateway: GatewayProcess) -> None:
    with grpc.insecure_channel(gateway.address) as channel:
        raw = channel.unary_unary(f"/{EVENTS_SERVICE}/{EVENTS_METHOD}")
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\xff\xff\xff", timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid seminar.v1.RecordRequest" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        record(gateway.address, ranker_pb2.RecordRequest())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events is empty" in err.value.details()


def record_metrics(gateway: GatewayProcess) -> dict[str, float]:
    """The gateway's Record series, read from its real /metrics endpoint."""
    import urllib.request

    text = urllib.request.urlopen(gateway.metrics_url, timeout=5).read().decode()
    counts = {
        f"events {outcome}": metric_total(
            text, "seminar_gateway_events_recorded_total", outcome=outcome
        )
        for outcome in EVENT_OUTCOMES
    }
    for code in ("OK", "INVALID_ARGUMENT", "UNAVAILABLE"):
        counts[f"calls {code}"] = metric_total(
            text, "seminar_gateway_record_requests_total", code=code
        )
    counts["acknowledged calls"] = metric_total(
        text, "seminar_gateway_record_latency_seconds_count"
    )
    for kind in ("sqlite", "redis"):
        counts[f"log {kind}"] = metric_total(text, "seminar_gateway_event_log_info", kind=kind)
    return counts


def test_record_metrics_follow_a_known_sequence_of_calls(
    gateway: GatewayProcess, log_url: str
) -> None:
    kind = log_url.split(":")[0]
    before = record_metrics(gateway)
    assert before == {
        **dict.fromkeys(before, 0.0),
        f"log {kind}": 1.0,
    }, "a fresh gateway shows every outcome at 0 and its log's kind"
    events = make_events(8)
    record(gateway.address, ranker_pb2.RecordRequest(events=[event_message(e) for e in events[:5]]))
    # a retried batch: 2 events stored before, 3 new ones
    retried = ranker_pb2.RecordRequest(events=[event_message(e) for e in events[3:]])
    assert (record(gateway.address, retried).duplicates) == 2
    rejected = [event_message(e) for e in make_events(4, prefix="bad")]
    rejected[2].item_id = -1
    for request in (ranker_pb2.RecordRequest(events=rejected), ranker_pb2.RecordRequest()):
        with pytest.raises(grpc.RpcError) as err:
            record(gateway.address, request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = record_metrics(gateway)
    assert after == {
        **before,
        "events stored": 8.0,
        "events duplicate": 2.0,
        "events rejected": 4.0,  # the empty batch has no event to count
        "calls OK": 2.0,
        "calls INVALID_ARGUMENT": 2.0,
        "acknowledged calls": 2.0,
    }
    with open_event_log(log_url) as log:
        assert len(log.read_range(0, log.high_watermark())) == after["events stored"]


# ---- kill -9 under load -------------------------------------------------------------------


def check_nothing_lost(url: str, report: RecordLoadReport, interrupted: bool = True) -> None:
    """Every acknowledged event stored, every stored event once; prints the tally.
    `interrupted`: the kill hit Record itself, so some batch must have been resent."""
    with open_event_log(url) as log:
        # One scan of the whole log (hundreds of thousands of events): every check below is
        # a set operation on its ids, not a lookup per event.
        everything = log.read_range(0, log.high_watermark())
        users = {s.event.user_id for s in everything}
        per_user = sum(len(log.read_user(user)) for user in users)
    ids = [s.event.event_id for s in everything]
    stored = set(ids)
    acknowledged_stored = len(report.acknowledged & stored)
    print(f"\n{url.split(':')[0]}: {report.summary(acknowledged_stored)}")
    assert report.acknowledged, "the load recorded nothing"
    assert report.resent_batches > 0 or not interrupted, "the kill interrupted the load"
    assert acknowledged_stored == len(report.acknowledged), "an acknowledged event was lost"
    assert len(ids) == len(stored), "an event is stored twice"
    assert per_user == len(everything), "the per-user reads see each event once"
    assert stored <= report.sent


def load_in_background(address: str) -> tuple[threading.Thread, list[RecordLoadReport]]:
    reports: list[RecordLoadReport] = []
    # Small batches: more commits (each an fsync) for the kill to land between, and fewer
    # events for the checks to read back (the load is concurrency 8 for the full duration).
    config = RecordLoadConfig(concurrency=8, batch_events=5, drain_s=30.0)
    thread = threading.Thread(
        target=lambda: reports.append(run_record_load(address, KILL_LOAD_S, config))
    )
    thread.start()
    return thread, reports


def rank_until_ok(address: str, call: RankCall, timeout_s: float) -> RankResult:
    """One Rank through the gateway, retried until it answers OK (the gateway probes a
    restarted Triton every half second while an arm is unready)."""
    give_up_at = time.monotonic() + timeout_s
    while True:
        try:
            return rank_via_gateway(
                address, call.user_id, call.query, [int(i) for i in call.candidate_ids]
            )
        except CallFailed as failure:
            if time.monotonic() > give_up_at:
                raise AssertionError(
                    f"no Rank answered OK within {timeout_s:.0f} s: {failure}"
                ) from None
            time.sleep(0.5)


def kill_tritonserver_and_wait(serve: ServeProcess, url: str) -> int:
    """kill -9 of the supervised tritonserver, then wait until the supervisor has it ready
    again; returns how many events Record stored while it was down (Record never needs it)."""
    old_pid = int(serve.status()["tritonserver_pid"])
    with open_event_log(url) as log:
        stored_at_kill = log.high_watermark()
        os.kill(old_pid, signal.SIGKILL)
        stored_while_down = stored_at_kill
        # The supervisor notices the death (readiness drops), then restarts tritonserver.
        for ready, within_s in ((False, 10), (True, 180)):
            give_up_at = time.monotonic() + within_s
            while serve.is_ready() != ready:
                assert time.monotonic() < give_up_at, f"readiness not {ready} in time"
                stored_while_down = log.high_watermark()
                time.sleep(0.2)
    assert int(serve.status()["tritonserver_pid"]) != old_pid
    return stored_while_down - stored_at_kill


@pytest.mark.slow
@pytest.mark.serving
@pytest.mark.parametrize("kind", BACKENDS)
def test_kill_9_of_each_process_under_load_loses_no_acknowledged_event(
    kind: str, model_repo: BuiltRepo, tmp_path: Path
) -> None:
    """One Record load at concurrency 8 for KILL_LOAD_S, through a gateway in front of a
    real `seminar serve` whose pq_retrieval reads the same log; during it, kill -9 of the
    gateway (restarted on its port: clients resend what was not acknowledged), on Redis of
    redis-server (restarted from its fsynced append-only file), then of tritonserver (the
    supervisor restarts it; Record goes on meanwhile). Afterwards every acknowledged
    event is stored exactly once, and Rank answers again."""
    require_tritonserver()
    redis = None
    if kind == "redis":
        needs_redis_server()
        redis_port = free_port()
        redis = RedisServer(tmp_path / "redis", port=redis_port, log_path=tmp_path / "redis-1.log")
        url = redis.start().url
    else:
        url = f"sqlite://{tmp_path / 'events.db'}"
    repo = single_version_repo(model_repo.repo, model_repo.version, tmp_path / "repo")
    config = tmp_path / "ab.yaml"
    write_config(ExperimentConfig(salt="record", arms=demo_arms(repo), limits=TEST_LIMITS), config)
    call = load_workload(model_repo.data, candidates=50, limit=1)[0]
    port = free_port()

    def start() -> GatewayProcess:
        return GatewayProcess(
            config, serve.grpc_url, catalog=repo, port=port,
            log_path=tmp_path / f"gateway-{time.monotonic_ns()}.log", event_log=url,
        ).start()  # fmt: skip

    try:
        with ServeProcess(repo, "--event-log", url, console_path=tmp_path / "serve.log") as serve:
            gateway = start()
            try:
                rank_until_ok(gateway.address, call, timeout_s=30)
                started = time.monotonic()
                thread, reports = load_in_background(gateway.address)
                time.sleep(KILL_LOAD_S / 6)
                gateway.send_signal(signal.SIGKILL)
                gateway.stop()
                gateway = start()
                if redis is not None:
                    time.sleep(max(0.0, started + KILL_LOAD_S / 3 - time.monotonic()))
                    redis.send_signal(signal.SIGKILL)
                    redis.stop()
                    time.sleep(1.0)  # the writers meet a dead server for a while
                    redis = RedisServer(
                        tmp_path / "redis", port=redis_port, log_path=tmp_path / "redis-2.log"
                    )
                    redis.start()
                time.sleep(max(0.0, started + KILL_LOAD_S / 2 - time.monotonic()))
                assert time.monotonic() < started + 0.8 * KILL_LOAD_S, (
                    "the kills outlasted the load"
                )
                stored_while_triton_down = kill_tritonserver_and_wait(serve, url)
                assert stored_while_triton_down > 0, "Record stopped while Triton was down"
                thread.join()
                after = rank_until_ok(gateway.address, call, timeout_s=60)
                assert len(after.item_ids) == len(call.candidate_ids)
            finally:
                gateway.stop()
        check_nothing_lost(url, reports[0])
        print(f"stored while tritonserver was down: {stored_while_triton_down} events")
    finally:
        if redis is not None:
            redis.stop()
