"""The dashboards tell the truth: every panel query of every Grafana dashboard and every
recording rule, evaluated by the real Prometheus after a scripted load through the real gateway
and the real `seminar serve` (tritonserver under its supervisor) with two versions as two arms,
requests that fail, Record calls and two config reloads (one rejected, one applied).

The queries are read from the files (docker/grafana/dashboards/*.json, rules.yml), so a panel or
rule added later is checked too.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from seminar.clients.config import Arm, ExperimentConfig, write_config
from seminar.clients.load import LoadConfig, run_load
from seminar.clients.metrics import ARM_CODES, RECORD_CODES, metric_total
from seminar.clients.observe import PROMETHEUS_DIR, PrometheusProcess
from seminar.clients.process import GatewayProcess
from seminar.clients.proto import ranker_pb2, ranker_pb2_grpc
from seminar.clients.record_load import event_message
from seminar.clients.workload import RankCall
from seminar.errors import ServiceError
from seminar.events import Event, EventType
from seminar.processes import free_port, http_request
from seminar.serving.serve_process import ServeProcess
from tests.support.clients import TEST_LIMITS, launch_gateway, metric_samples
from tests.support.serving import require_tritonserver

DASHBOARDS = PROMETHEUS_DIR.parent / "grafana" / "dashboards"

_PINNED = re.compile(r"^seminar_v(\d+)$")


@dataclass(frozen=True)
class Query:
    where: str  # "rules.yml: RECORD" or "DASHBOARD.json: PANEL TITLE [refId]"
    expr: str


def dashboard_queries() -> list[Query]:
    queries = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                where = f"{path.name}: {panel['title']} [{target['refId']}]"
                queries.append(Query(where, target["expr"]))
    return queries


def recording_rules() -> dict[str, str]:
    import yaml

    groups = yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())["groups"]
    return {rule["record"]: rule["expr"] for g in groups for rule in g["rules"] if "record" in rule}


def test_a_started_gateway_exports_its_arms_codes_and_reload_results_at_zero(
    tmp_path: Path,
) -> None:
    """Before any request or reload (Triton not even up): a rate over these counters reads 0,
    and the first error and the first reload show as increases from 0."""
    config = ExperimentConfig(
        "zero-salt",
        (Arm("control", "seminar_v1", 1, 90), Arm("treatment", "seminar_v2", 2, 10)),
        Arm("shadow", "seminar_v2", 2),
    )
    write_config(config, tmp_path / "ab.yaml")
    dead_triton = f"127.0.0.1:{free_port()}"
    with GatewayProcess(
        tmp_path / "ab.yaml",
        dead_triton,
        log_path=tmp_path / "gateway.log",
        wait_serving=False,
        event_log=f"sqlite://{tmp_path / 'events.db'}",
    ) as gateway:
        samples = {
            name: metric_samples(gateway.metrics_url, name)
            for name in (
                "seminar_gateway_requests_total",
                "seminar_gateway_config_reloads_total",
                "seminar_gateway_record_requests_total",
            )
        }
    requests = samples["seminar_gateway_requests_total"]
    assert {(s["arm"], s["model_version"], s["code"]): v for s, v in requests} == {
        ("", "", "INVALID_ARGUMENT"): 0.0,
        **{(arm.name, arm.model_version, code): 0.0 for arm in config.arms for code in ARM_CODES},
    }
    reloads = samples["seminar_gateway_config_reloads_total"]
    assert {s["result"]: v for s, v in reloads} == {"applied": 0.0, "rejected": 0.0}
    record = samples["seminar_gateway_record_requests_total"]
    assert {s["code"]: v for s, v in record} == dict.fromkeys(RECORD_CODES, 0.0)


def _rank_with(stub, call: RankCall, query: str | None = None, candidates=None, timeout=5.0):
    request = ranker_pb2.RankRequest(
        user_id=call.user_id,
        query=call.query if query is None else query,
        candidate_ids=call.candidate_ids.tolist() if candidates is None else candidates,
    )
    return stub.Rank(request, timeout=timeout)


def scripted_traffic(
    address: str, config: ExperimentConfig, calls: list[RankCall], failing_arm: str
) -> dict[str, int]:
    """Rank and Record traffic with failures; returns the count of each failure kind sent."""
    sent = {"INVALID_ARGUMENT": 0, "DEADLINE_EXCEEDED": 0}
    events = []
    with grpc.insecure_channel(address) as channel:
        ranker = ranker_pb2_grpc.RankerStub(channel)
        for index, call in enumerate(calls[:16]):
            response = _rank_with(ranker, call)
            # the top item clicked, the second shown and not clicked: CTR 1/2 on every arm
            for position, item in enumerate(response.item_ids[:2], start=1):
                clicked = position == 1
                events.append(
                    Event(
                        f"dash-{index}-{position}",
                        int(call.user_id),
                        item,
                        "",
                        EventType.REC if clicked else EventType.IMPRESSION,
                        clicked,
                        request_id=response.request_id,
                        position=position,
                    )
                )
        # Refused before assignment (arm ""): an over-long query and an unknown item.
        for call in calls[:4]:
            for query, candidates in (("x" * (TEST_LIMITS.max_query_bytes + 1), None), ("", [-5])):
                with pytest.raises(grpc.RpcError) as refused:
                    _rank_with(ranker, call, query, candidates)
                assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
                sent["INVALID_ARGUMENT"] += 1
        # Failures of one arm's users only: a deadline shorter than the gateway's reply margin
        # is answered DEADLINE_EXCEEDED under the user's arm without a Triton call.
        for call in [c for c in calls if config.assign(c.user_id).name == failing_arm][:6]:
            with pytest.raises(grpc.RpcError) as late:
                _rank_with(ranker, call, timeout=0.001)
            assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            sent["DEADLINE_EXCEEDED"] += 1
        events_stub = ranker_pb2_grpc.EventsStub(channel)
        for start in range(0, len(events), 8):
            batch = [event_message(e) for e in events[start : start + 8]]
            events_stub.Record(ranker_pb2.RecordRequest(events=batch), timeout=10)
    return sent


def _finite(result: list[dict]) -> bool:
    return all(math.isfinite(float(r["value"][1])) for r in result)


@pytest.mark.slow
@pytest.mark.serving
@pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus (Debian package) not installed"
)
def test_every_panel_and_rule_returns_the_right_series_after_a_scripted_load(
    model_repo_two_versions: Path, real_calls: list[RankCall], tmp_path: Path
) -> None:
    require_tritonserver()
    log_url = f"sqlite://{tmp_path / 'events.db'}"
    control, treatment = Arm("control", "seminar_v1", 1, 50), Arm("treatment", "seminar_v2", 2, 50)
    # The shadow serves the treatment's own (model, version): its agreement must come from
    # control requests only, never the treatment compared with itself.
    shadow = Arm("shadow", "seminar_v2", 2)
    config = ExperimentConfig("dash-salt", (control, treatment), shadow, TEST_LIMITS)
    arms = {arm.name: arm.model_version for arm in (control, treatment)}
    rules = recording_rules()
    queries = [*dashboard_queries(), *(Query(f"rules.yml: {r}", e) for r, e in rules.items())]
    started = time.monotonic()
    with ServeProcess(
        model_repo_two_versions, "--event-log", log_url, console_path=tmp_path / "serve.log"
    ) as serve:
        gateway = launch_gateway(
            config, serve.grpc_url, model_repo_two_versions, tmp_path, event_log=log_url
        )
        try:
            triton_targets = [
                serve.metrics_url.removeprefix("http://").removesuffix("/metrics"),
                serve.health_url.removeprefix("http://"),
            ]
            gateway_target = gateway.metrics_url.removeprefix("http://").removesuffix("/metrics")
            with PrometheusProcess(triton_targets, gateway_target, port=free_port()) as prom:
                prom.wait_scraped()
                asyncio.run(
                    run_load(
                        gateway.address,
                        real_calls,
                        LoadConfig(duration_s=4.0, concurrency=2, warmup_s=0),
                    )
                )
                sent = scripted_traffic(gateway.address, config, real_calls, "treatment")
                # Reloads: a broken file (rejected), then new weights (applied).
                gateway.config_path.write_text("salt: [unclosed\n")
                _wait_for(prom, 'seminar_gateway_config_reloads_total{result="rejected"} > 0')
                write_config(
                    ExperimentConfig(
                        "dash-salt",
                        (
                            Arm("control", "seminar_v1", 1, 60),
                            Arm("treatment", "seminar_v2", 2, 40),
                        ),
                        shadow,
                        TEST_LIMITS,
                    ),
                    gateway.config_path,
                )
                _wait_for(prom, 'seminar_gateway_config_reloads_total{result="applied"} > 0')
                results = _settled(prom, queries, rules)
            gateway_metrics = http_request(gateway.metrics_url)[1]
        finally:
            gateway.process.stop()
    print(f"\n{len(queries)} queries checked, {time.monotonic() - started:.0f} s with serving")
    problems = []
    for query in queries:
        result = results[query.where]
        if not result:
            problems.append(f"{query.where}: no series ({query.expr})")
        elif not _finite(result):
            problems.append(f"{query.where}: values not finite: {result}")
        problems += label_problems(query, result, arms, shadow, rules)
    assert not problems, "\n".join(problems)

    error_ratio = {
        r["metric"]["arm"]: float(r["value"][1])
        for r in results["rules.yml: seminar:gateway_error_ratio:rate1m_by_arm"]
    }
    assert error_ratio["treatment"] > 0 and error_ratio["control"] == 0, error_ratio
    by_code = {
        # Prometheus drops empty labels: the unassigned requests have no `arm`.
        (r["metric"].get("arm", ""), r["metric"]["code"])
        for r in results["rules.yml: seminar:gateway_requests:rate1m_by_arm_code"]
        if float(r["value"][1]) > 0
    }
    assert ("", "INVALID_ARGUMENT") in by_code and ("treatment", "DEADLINE_EXCEEDED") in by_code
    assert sent["DEADLINE_EXCEEDED"] > 0
    # The shadow is the treatment's own version: only control requests are compared with it.
    control_ok = metric_total(gateway_metrics, "seminar_gateway_requests", arm="control", code="OK")
    compared = metric_total(gateway_metrics, "seminar_gateway_shadow_agreement_count")
    assert 0 < compared == control_ok, (compared, control_ok)
    reloads = {
        r["metric"]["result"]: float(r["value"][1])
        for r in results["seminar.json: Config reloads [A]"]
    }
    assert reloads["applied"] > 0 and reloads["rejected"] > 0, reloads


def label_problems(
    query: Query, result: list[dict], arms: dict[str, str], shadow: Arm, rules: dict[str, str]
) -> list[str]:
    """Arm labels name configured arms with their model_version (the shadow only in shadow
    series; requests refused before assignment carry none); versions are 1 and 2, taken from
    the pinned ensembles' names; no `seminar` ensemble where versions are meant."""
    problems = []
    expected_arms = dict(arms)
    if "shadow" in query.expr:
        expected_arms = {shadow.name: shadow.model_version}
    elif "lift" in query.expr or "lift" in query.where:  # every arm but the one it is compared with
        expected_arms.pop("control")
    seen_arms, versions = set(), set()
    for series in result:
        labels = series["metric"]
        if "arm" in labels:
            arm = labels["arm"]  # Prometheus drops an empty arm: unassigned requests have none
            if labels.get("role") == "shadow":  # the gateway's Triton calls for the shadow
                if (arm, labels.get("model_version")) != (shadow.name, shadow.model_version):
                    problems.append(f"{query.where}: unexpected shadow labels {labels}")
                continue
            seen_arms.add(arm)
            if expected_arms.get(arm) != labels.get("model_version"):
                problems.append(f"{query.where}: unexpected arm labels {labels}")
        if "version" in labels:
            versions.add(labels["version"])
            model = labels.get("model", "")
            pinned = _PINNED.match(model)
            if model == "seminar" or (pinned and pinned.group(1) != labels["version"]):
                problems.append(f"{query.where}: wrong model/version {labels}")
    if seen_arms and seen_arms != set(expected_arms):
        problems.append(f"{query.where}: arms {sorted(seen_arms)}, not {sorted(expected_arms)}")
    if versions and versions != {"1", "2"}:
        problems.append(f"{query.where}: versions {sorted(versions)}, not ['1', '2']")
    return problems


def _query(prom: PrometheusProcess, expr: str) -> list[dict]:
    """The result, or one series whose `error` label says why the query failed (reported as a
    problem with the query's name rather than ending the test at the first one)."""
    try:
        return prom.query(expr)
    except ServiceError as err:
        return [{"metric": {"error": str(err)}, "value": [0, "NaN"]}]


def _wait_for(prom: PrometheusProcess, promql: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if prom.query(promql):
            return
        time.sleep(0.25)
    raise AssertionError(f"Prometheus never saw {promql} within {timeout_s:.0f} s")


def _settled(
    prom: PrometheusProcess, queries: list[Query], rules: dict[str, str], timeout_s: float = 20.0
) -> dict[str, list[dict]]:
    """Every query's result once all that should have data have it (rules are evaluated every
    second, and a rate needs two scrapes after the load), or whatever they give at the end."""
    deadline = time.monotonic() + timeout_s
    while True:
        results = {q.where: _query(prom, q.expr) for q in queries}
        ready = all(results[q.where] and _finite(results[q.where]) for q in queries)
        if ready or time.monotonic() > deadline:
            return results
        time.sleep(0.5)
