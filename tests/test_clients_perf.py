"""perf_analyzer input data, the real perf_analyzer against the real Triton, and Prometheus
(config checked by promtool; a real Prometheus scraping the real gateway and Triton)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from seminar.bench.perf import PerfConfig, PerfError, find_perf_analyzer, input_data, parse_csv
from seminar.clients.observe import PROMETHEUS_DIR, PrometheusProcess, local_config
from seminar.clients.workload import RankCall
from seminar.contract import INPUT_ITEM_ID, INPUT_QUERY, INPUT_USER_ID
from seminar.processes import free_port
from seminar.serving.triton import TritonServer
from tests.support.clients import RunningGateway

DOCKER = PROMETHEUS_DIR.parent


def test_input_data_has_one_row_per_candidate_and_labels_the_synthetic_user() -> None:
    calls = [
        RankCall("7", "space", np.array([10, 20, 30])),
        RankCall("9", "", np.array([40, 50, 60])),
    ]
    rows = input_data(calls, synthetic_user=424242)["data"]
    assert len(rows) == 9  # 3 requests x 3 candidates; -b 3 makes each request one user
    assert rows[0] == {INPUT_USER_ID: [7], INPUT_QUERY: ["space"], INPUT_ITEM_ID: [10]}
    assert [r[INPUT_USER_ID][0] for r in rows[3:6]] == [9, 9, 9]
    assert [r[INPUT_USER_ID][0] for r in rows[6:]] == [424242] * 3  # synthetic, own id


def test_perf_config_rejects_bad_ranges() -> None:
    assert PerfConfig(triton="x:1", data=Path("d"), concurrency="1:8:3").concurrency_levels() == [
        1,
        4,
        7,
    ]
    for bad in ("8:1", "0:4", "a:b", "3"):
        with pytest.raises(ValueError, match="concurrency"):
            PerfConfig(triton="x:1", data=Path("d"), concurrency=bad)
    with pytest.raises(ValueError, match="rounds must be >= 1, got 0"):
        PerfConfig(triton="x:1", data=Path("d"), rounds=0)


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed"
)
def test_prometheus_config_and_rules_pass_promtool(tmp_path: Path) -> None:
    import yaml

    for args in (
        ["check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
        ["check", "rules", str(PROMETHEUS_DIR / "rules.yml")],
    ):
        result = subprocess.run(["promtool", *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(local_config("127.0.0.1:1", "127.0.0.1:2")))
    shutil.copy(PROMETHEUS_DIR / "rules.yml", tmp_path / "rules.yml")
    assert (
        subprocess.run(["promtool", "check", "config", str(local)], capture_output=True).returncode
        == 0
    )


def test_grafana_dashboard_uses_recorded_series() -> None:
    import yaml

    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "seminar.json").read_text())
    rules = yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert {
        "seminar:gateway_latency_ms:p50_by_arm",
        "seminar:gateway_latency_ms:p99_by_arm",
    } <= set(exprs)
    used = {e for e in exprs if e.startswith("seminar:")}
    assert used <= recorded, used - recorded


@pytest.mark.slow
@pytest.mark.serving
@pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus (Debian package) not installed"
)
def test_real_prometheus_records_p50_p99_by_arm(
    triton: TritonServer, gateway: RunningGateway, real_calls: list[RankCall]
) -> None:
    import asyncio

    from seminar.clients.load import LoadConfig, run_load

    triton_metrics = triton.metrics_url.removeprefix("http://").removesuffix("/metrics")
    gateway_metrics = gateway.metrics_url.removeprefix("http://").removesuffix("/metrics")
    with PrometheusProcess(triton_metrics, gateway_metrics, port=free_port()) as prom:
        prom.wait_scraped()
        asyncio.run(
            run_load(
                gateway.address, real_calls, LoadConfig(duration_s=3.0, concurrency=2, warmup_s=0)
            )
        )
        import time

        deadline = time.monotonic() + 10
        p99 = []
        while time.monotonic() < deadline and len(p99) < 2:
            time.sleep(0.5)
            p99 = [
                r
                for r in prom.query("seminar:gateway_latency_ms:p99_by_arm")
                if r["value"][1] != "NaN"
            ]
        assert {r["metric"]["arm"] for r in p99} == {a.name for a in gateway.config.arms}
        assert all(0 < float(r["value"][1]) < 5000 for r in p99)
        assert {r["metric"]["job"] for r in prom.query("up == 1")} == {"triton", "gateway"}


@pytest.mark.slow
@pytest.mark.serving
def test_perf_analyzer_against_the_real_ensemble(
    triton: TritonServer, movielens_data: Path, gateway: RunningGateway, tmp_path: Path
) -> None:
    try:
        find_perf_analyzer()
    except PerfError as err:
        pytest.skip(str(err))
    from seminar.bench.perf import run_perf

    cfg = PerfConfig(
        triton=triton.grpc_url,
        data=movielens_data,
        gateway=gateway.address,
        concurrency="1:2",
        requests=8,
        measurement_ms=1500,
        out_dir=tmp_path,
    )
    report = run_perf(cfg)
    rows = parse_csv(tmp_path / "perf_analyzer.csv", cfg.candidates)
    assert [r["concurrency"] for r in rows] == [1, 2]
    assert all(r["rps"] > 0 and 0 < r["p50"] <= r["p99"] for r in rows)
    assert "p50 ratio" in report and "perf_analyzer" in report and "-b 100" in report
    assert (tmp_path / "perf.png").stat().st_size > 10_000
    gateway_rows = json.loads((tmp_path / "perf_gateway.json").read_text())["rows"]
    assert all(r["codes"] == {"OK": r["codes"].get("OK", 0)} and r["rps"] > 0 for r in gateway_rows)
