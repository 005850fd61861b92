"""The gateway end of `make demo`: Triton + gateway with an A/B config, a few rankings, the
user's latest events recorded online and that user's ranking again (it changes on the very next
request), a short load, and the arm split read back from the gateway's /metrics (and
Prometheus, if installed).

    from seminar.clients.demo import run_gateway_demo
    run_gateway_demo(repo=Path("model_repository"), data=Path("data/movielens"))

Arms are the two newest pinned ensembles `seminar_vN` found in the repository (one build gives
one arm pair over the same version: `seminar_vN` and the contract ensemble `seminar`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seminar.clients.config import Arm, ExperimentConfig, write_config
from seminar.contract import ENSEMBLE_MODEL
from seminar.errors import ArtifactError
from seminar.processes import free_port

_PINNED = re.compile(r"^seminar_v(\d+)$")


@dataclass
class DemoResult:
    arms: tuple[Arm, ...]
    rankings: list[dict] = field(default_factory=list)
    load_markdown: str = ""
    arm_split_metrics: dict[str, float] = field(default_factory=dict)  # arm -> OK requests
    arm_split_prometheus: dict[str, float] | None = None
    report_path: Path | None = None
    fresh_events: dict = field(default_factory=dict)  # the Record step: events, ranks before/after


def demo_arms(repo: Path) -> tuple[Arm, Arm]:
    """Two arms from the builds on disk (docs/design.md section 5)."""
    builds = sorted(
        int(m.group(1))
        for d in repo.iterdir()
        if (m := _PINNED.match(d.name)) and (d / m.group(1)).is_dir()
    ) if repo.is_dir() else []  # fmt: skip
    if len(builds) >= 2:
        a, b = builds[-2], builds[-1]
        return Arm("control", f"seminar_v{a}", a, 50), Arm("treatment", f"seminar_v{b}", b, 50)
    if len(builds) == 1:
        v = builds[0]
        return Arm("control", f"seminar_v{v}", v, 50), Arm("treatment", ENSEMBLE_MODEL, v, 50)
    raise ArtifactError(f"{repo}: no pinned ensemble seminar_vN/N (run `seminar build` first)")


def arm_split_from_metrics(metrics_url: str) -> dict[str, float]:
    """OK requests per arm, read from the gateway's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    split: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "seminar_gateway_requests_total" and s.labels["code"] == "OK":
                split[s.labels["arm"]] = split.get(s.labels["arm"], 0.0) + s.value
    return split


def run_gateway_demo(
    repo: Path,
    data: Path,
    out_dir: Path = Path("reports"),
    users: int = 3,
    load_seconds: float = 5.0,
    concurrency: int = 4,
    prometheus: bool = True,
) -> DemoResult:
    """Start Triton and the gateway, rank, load, read the arm split back; stop everything."""
    from rich.console import Console
    from rich.table import Table

    from seminar.clients.client import rank_via_gateway
    from seminar.clients.load import LoadConfig, run_load
    from seminar.clients.process import GatewayProcess
    from seminar.clients.workload import load_workload
    from seminar.serving.serve_process import ServeProcess

    console = Console(soft_wrap=True)
    arms = demo_arms(repo)
    calls = load_workload(data, candidates=100, limit=200)
    config = ExperimentConfig(salt="demo", arms=arms)
    result = DemoResult(arms=arms)
    out_dir.mkdir(parents=True, exist_ok=True)

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="seminar-demo-")))
        write_config(config, tmp / "ab.yaml")
        arm_models = sorted({a.model for a in arms})
        wait = [arg for model in arm_models for arg in ("--wait-model", model)]
        # The online event log both processes share: the gateway records into it, every
        # pq_retrieval instance reads the users' tails from it.
        event_log = f"sqlite://{tmp / 'events.db'}"
        with console.status("starting seminar serve (tritonserver under its supervisor)"):
            serve = stack.enter_context(
                ServeProcess(repo, *wait, "--event-log", event_log, console_path=tmp / "serve.log")
            )
        with console.status("starting the gateway"):
            gw = stack.enter_context(
                GatewayProcess(tmp / "ab.yaml", serve.grpc_url, catalog=repo, event_log=event_log)
            )
        console.print(
            f"seminar serve on {serve.grpc_url} (health {serve.health_url}/ready), gateway on "
            f"{gw.address} (metrics {gw.metrics_url}); arms: "
            + ", ".join(f"{a.name}={a.model_version} ({a.weight:g}%)" for a in arms)
        )

        for call in calls[:users]:
            r = rank_via_gateway(gw.address, call.user_id, call.query, call.candidate_ids.tolist())
            result.rankings.append({"user_id": call.user_id, "query": call.query, **r.to_dict()})
            table = Table(title=f"user {call.user_id} · arm {r.arm} · {r.model_version}")
            for col in ("rank", "item_id", "score"):
                table.add_column(col, justify="right")
            for rank_no, (item, score) in enumerate(
                zip(r.item_ids[:5], r.scores[:5], strict=True), 1
            ):
                table.add_row(str(rank_no), str(item), f"{score:.4f}")
            console.print(table)

        result.fresh_events = _record_and_rank_again(
            console, gw.address, _short_history_call(data, calls[:50])
        )

        prom = None
        if prometheus and shutil.which("prometheus"):
            from seminar.clients.observe import PrometheusProcess

            triton_metrics = serve.metrics_url.removeprefix("http://").removesuffix("/metrics")
            supervisor_metrics = serve.health_url.removeprefix("http://")
            with console.status("starting Prometheus"):
                prom = stack.enter_context(
                    PrometheusProcess(
                        [triton_metrics, supervisor_metrics],
                        f"127.0.0.1:{gw.metrics_port}",
                        port=free_port(),
                    )
                )
                prom.wait_scraped()

        load = LoadConfig(duration_s=load_seconds, concurrency=concurrency, warmup_s=0.5)
        load_result = asyncio.run(run_load(gw.address, calls, load, progress=True))
        result.load_markdown = load_result.markdown()
        console.print(result.load_markdown, soft_wrap=True)

        result.arm_split_metrics = arm_split_from_metrics(gw.metrics_url)
        if prom is not None:
            time.sleep(2.5)  # two scrapes after the load, so Prometheus holds the final counts
            query = 'sum by (arm) (seminar_gateway_requests_total{code="OK"})'
            result.arm_split_prometheus = {
                r["metric"]["arm"]: float(r["value"][1]) for r in prom.query(query)
            }
        total = sum(result.arm_split_metrics.values()) or 1.0
        split = ", ".join(
            f"{arm}={n:.0f} ({n / total:.1%})"
            for arm, n in sorted(result.arm_split_metrics.items())
        )
        console.print(f"arm split from the gateway's /metrics: {split}")
        if result.arm_split_prometheus is not None:
            console.print(f"arm split from Prometheus: {result.arm_split_prometheus}")

    result.report_path = out_dir / "demo_gateway.md"
    result.report_path.write_text(_report(result))
    return result


def _short_history_call(data: Path, calls: list) -> object:
    """The request of the user with the shortest stored history among `calls`: a few new
    events weigh most against a short history, which makes the change easy to see."""
    from seminar.data.dataset import PreparedDataset

    ds = PreparedDataset.load(data)
    lengths = np.diff(ds.seq_offsets)
    return min(calls, key=lambda call: int(lengths[ds.user_index(int(call.user_id))]))


def _record_and_rank_again(console, address: str, call, clicks: int = 5) -> dict:
    """Record `clicks` clicks of the user on the candidates ranked last, rank again, and show
    how those items, the candidates that moved most and the top of the list changed."""
    import uuid

    from rich.table import Table

    from seminar.clients.client import rank_via_gateway, record_via_gateway
    from seminar.events import Event, EventType

    candidates = call.candidate_ids.tolist()
    before = rank_via_gateway(address, call.user_id, call.query, candidates)
    clicked = before.item_ids[-clicks:]
    run = uuid.uuid4().hex[:8]
    events = [
        Event(f"demo-{run}-{n}", int(call.user_id), item, "", EventType.REC, True)
        for n, item in enumerate(clicked)
    ]
    answer = record_via_gateway(address, events)
    after = rank_via_gateway(address, call.user_id, call.query, candidates)
    rank_before = {item: n for n, item in enumerate(before.item_ids, 1)}
    rank_after = {item: n for n, item in enumerate(after.item_ids, 1)}
    table = Table(
        title=f"user {call.user_id}: {answer.stored} clicks recorded (seminar.v1.Events/Record), "
        "then ranked again"
    )
    for column in ("item_id", "rank before", "rank after"):
        table.add_column(column, justify="right")
    for item in clicked:
        table.add_row(str(item), str(rank_before[item]), str(rank_after[item]))
    console.print(table)
    moves = sorted(
        (rank_before[item] - rank_after[item], item) for item in candidates if item not in clicked
    )[::-1][:5]
    console.print(
        "candidates that rose most: "
        + ", ".join(f"{item} ({rank_before[item]} -> {rank_after[item]})" for _, item in moves)
    )
    changed = sum(a != b for a, b in zip(before.item_ids[:10], after.item_ids[:10], strict=True))
    score_before = dict(zip(before.item_ids, before.scores, strict=True))
    score_after = dict(zip(after.item_ids, after.scores, strict=True))
    largest = max(abs(score_after[item] - score_before[item]) for item in candidates)
    console.print(
        f"top 10 before: {before.item_ids[:10]}\ntop 10 after:  {after.item_ids[:10]} "
        f"({changed} of 10 positions changed; largest score change {largest:.3f})"
    )
    return {
        "user_id": call.user_id,
        "clicked": clicked,
        "rank_before": [rank_before[item] for item in clicked],
        "rank_after": [rank_after[item] for item in clicked],
        "top10_before": before.item_ids[:10],
        "top10_after": after.item_ids[:10],
        "top10_changed": changed,
        "largest_score_change": largest,
        "rose_most": [[item, rank_before[item], rank_after[item]] for _, item in moves],
    }


def _report(result: DemoResult) -> str:
    lines = ["# Demo: A/B gateway in front of Triton", "", "Arms: " + ", ".join(
        f"`{a.name}` = {a.model_version} ({a.weight:g}%)" for a in result.arms
    ), "", "## Rankings through the gateway (top 5)", ""]  # fmt: skip
    for r in result.rankings:
        top = ", ".join(
            f"{i} ({s:.3f})" for i, s in zip(r["item_ids"][:5], r["scores"][:5], strict=True)
        )
        lines.append(f"- user {r['user_id']} → arm `{r['arm']}` ({r['model_version']}): {top}")
    fresh = result.fresh_events
    if fresh:
        lines += ["", "## The user's latest events, served on the next request", ""]
        lines.append(
            f"User {fresh['user_id']} clicked the {len(fresh['clicked'])} candidates ranked last "
            "(recorded through `seminar.v1.Events/Record`); ranked again right after:"
        )
        lines.append("")
        for item, was, now in zip(
            fresh["clicked"], fresh["rank_before"], fresh["rank_after"], strict=True
        ):
            lines.append(f"- item {item}: rank {was} -> {now}")
        rose = ", ".join(f"{item} ({was} -> {now})" for item, was, now in fresh["rose_most"])
        lines.append(f"- candidates that rose most: {rose}")
        lines.append(
            f"- top 10 before {fresh['top10_before']}, after {fresh['top10_after']} "
            f"({fresh['top10_changed']} of 10 positions changed; largest score change "
            f"{fresh['largest_score_change']:.3f})"
        )
    lines += ["", "## Load through the gateway", "", result.load_markdown, "", "## Arm split", ""]
    lines.append(f"- gateway /metrics (OK requests): {result.arm_split_metrics}")
    if result.arm_split_prometheus is not None:
        lines.append(
            f'- Prometheus `sum by (arm) (seminar_gateway_requests_total{{code="OK"}})`: {result.arm_split_prometheus}'
        )
    return "\n".join(lines) + "\n"
