"""`seminar bench online`: recording events and scoring fresh tails, through the real gateway.

Two measurements in one run, on one machine:

- Record: the Record load client (seminar.clients.record_load) at concurrency C sends fixed-size
  batches to a real `seminar gateway` for S seconds, once over a SQLite file and once over a
  real redis-server (appendfsync always). Per log: acknowledged events per second, the
  acknowledgement latency of each OK call (p50 / p99), and sent / acknowledged / stored / lost
  read back from the log.
- Rank with an online tail: the real `seminar serve` (supervisor + tritonserver, reading tails
  from a SQLite log) behind the gateway, a SYNTHETIC user with L = 10k stored events
  (seminar.serving.long_users), Rank p50 / p99 with 0, 100 and 1,000 events of that user
  recorded through Record after the version's watermark; the scores' largest change from the
  empty tail's shows the tail is read.

The record goes to OUT/online.md, .json and .png (bench/harness.py); its sentences come from
the harness's helpers only.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seminar.bench.harness import (
    Estimate,
    Header,
    Record,
    Timing,
    comparison,
    dataset_name,
    markdown_table,
    ratio,
    side,
    time_interleaved,
)
from seminar.errors import ServiceError

LOG_KINDS = ("sqlite", "redis")
LOG_NAMES = {"sqlite": "SQLite", "redis": "Redis"}
# A change of served scores below this is float noise, not the tail being read.
SCORE_CHANGE_FLOOR = 1e-6


@dataclass(frozen=True)
class OnlineBenchConfig:
    """Every default of the online benchmark."""

    seconds: float = 20.0  # Record load per log
    concurrency: int = 8  # Record writer threads
    batch_events: int = 10  # events per Record call
    length: int = 10_000  # stored events of the SYNTHETIC user (L)
    tails: tuple[int, ...] = (0, 100, 1_000)  # online events of that user per Rank cell
    tail_batch_events: int = 100  # events per Record call while growing the tail
    candidates: int = 100
    requests: int = 100  # timed Rank calls per tail
    warmup: int = 10
    search_share: float = 0.3  # tail events that are searches with a query of the dataset
    seed: int = 0
    version: int = 1

    def __post_init__(self) -> None:
        if self.seconds <= 0:
            raise ValueError(f"seconds: must be > 0, got {self.seconds}")
        for name in (
            "concurrency", "batch_events", "length", "tail_batch_events", "candidates",
            "requests", "version",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup: must be >= 0, got {self.warmup}")
        if not self.tails or list(self.tails) != sorted(set(self.tails)) or self.tails[0] != 0:
            raise ValueError(f"tails: need increasing sizes starting at 0, got {self.tails}")
        if not 0.0 <= self.search_share <= 1.0:
            raise ValueError(f"search_share: must be in [0, 1], got {self.search_share}")


# -- Record ---------------------------------------------------------------------------------------


def measure_record(address: str, log_url: str, kind: str, cfg: OnlineBenchConfig) -> dict[str, Any]:
    """The Record load against the gateway at `address` (serving Record over `log_url`)."""
    from seminar.clients.record_load import RecordLoadConfig, run_record_load
    from seminar.events import open_event_log

    load = RecordLoadConfig(
        concurrency=cfg.concurrency, batch_events=cfg.batch_events, seed=cfg.seed
    )
    report = run_record_load(address, cfg.seconds, load)
    with open_event_log(log_url) as log:
        stored = len(report.acknowledged & log.find(sorted(report.sent)).keys())
    acknowledged = Timing(tuple(report.acknowledged_ms) or (0.0,))
    return {
        "log": kind,
        "events_per_s": report.events_per_s,
        "wall_s": report.wall_s,
        "acknowledgement": acknowledged.summary(),
        "sent": len(report.sent),
        "acknowledged": len(report.acknowledged),
        "stored": stored,
        "lost": len(report.acknowledged) - stored,
        "failures": report.failures,
    }


# -- Rank with an online tail ---------------------------------------------------------------------


class TailWriter:
    """Records events of one user through the gateway's Record, `count` more at a time."""

    def __init__(
        self,
        address: str,
        user_id: int,
        item_ids: np.ndarray,
        queries: list[str],
        cfg: OnlineBenchConfig,
    ) -> None:
        self.address, self.user_id, self.cfg = address, user_id, cfg
        self.item_ids, self.queries = item_ids, queries
        self.rng = random.Random(cfg.seed)
        self.recorded = 0

    def grow_to(self, size: int) -> None:
        import grpc

        from seminar.clients.proto import ranker_pb2, ranker_pb2_grpc
        from seminar.clients.record_load import event_message
        from seminar.events import Event, EventType

        with grpc.insecure_channel(self.address) as channel:
            stub = ranker_pb2_grpc.EventsStub(channel)
            while self.recorded < size:
                count = min(self.cfg.tail_batch_events, size - self.recorded)
                events = []
                for number in range(self.recorded, self.recorded + count):
                    search = self.rng.random() < self.cfg.search_share
                    events.append(
                        Event(
                            event_id=f"online-bench-{self.user_id}-{number}",
                            user_id=self.user_id,
                            item_id=int(self.rng.choice(self.item_ids)),
                            query=self.rng.choice(self.queries) if search else "",
                            type=EventType.SEARCH if search else EventType.REC,
                            clicked=self.rng.random() < 0.5,
                        )
                    )
                request = ranker_pb2.RecordRequest(events=[event_message(e) for e in events])
                stub.Record(request, timeout=30)
                self.recorded += count


RANK_BUDGET_MS = 30_000


def measure_rank(
    address: str, user_id: int, candidates: np.ndarray, cfg: OnlineBenchConfig
) -> tuple[dict[str, float | int], np.ndarray]:
    """Rank p50 / p99 through the gateway for one user; also the scores, in candidate order."""
    import grpc

    from seminar.clients.proto import ranker_pb2, ranker_pb2_grpc

    request = ranker_pb2.RankRequest(
        user_id=str(user_id), query="", candidate_ids=[int(i) for i in candidates]
    )
    with grpc.insecure_channel(address) as channel:
        stub = ranker_pb2_grpc.RankerStub(channel)
        try:
            timings, last = time_interleaved(
                {"rank": lambda: stub.Rank(request, timeout=RANK_BUDGET_MS / 1000)},
                cfg.requests,
                cfg.warmup,
            )
        except grpc.RpcError as err:
            raise ServiceError(
                f"Rank of user {user_id} through the gateway at {address} failed: "
                f"{err.code().name} ({err.details()})"
            ) from None
    by_item = dict(zip(last["rank"].item_ids, last["rank"].scores, strict=True))
    scores = np.array([by_item[int(i)] for i in candidates], dtype=np.float64)
    return timings["rank"].summary(), scores


# -- the run --------------------------------------------------------------------------------------


def run_bench(
    run: Path,
    data: Path,
    work: Path,
    cfg: OnlineBenchConfig,
    progress: Callable[[str], None] = print,
) -> Record:
    """Measure Record on both logs, then Rank over growing tails; returns the record."""
    from seminar.bench.serving import ServingBenchConfig, prepare_repo
    from seminar.clients.config import ExperimentConfig, Limits, write_config
    from seminar.clients.demo import demo_arms
    from seminar.clients.process import GatewayProcess
    from seminar.data.dataset import PreparedDataset
    from seminar.events.redis_server import RedisServer
    from seminar.serving.serve_process import ServeProcess

    header = Header.now(seeds=(cfg.seed,))
    dataset = dataset_name(data)
    # The serving bench's repository builder, with one SYNTHETIC user of L events.
    build = ServingBenchConfig(synthetic_lengths=(cfg.length,), seed=cfg.seed, version=cfg.version)
    repo, data_long, (long_user,) = prepare_repo(run, data, work / "build", build, progress)
    ds = PreparedDataset.load(data_long)
    rng = np.random.default_rng(cfg.seed)
    candidates = rng.choice(ds.item_ids, size=cfg.candidates, replace=False).astype(np.int64)
    logs = work / "logs"
    shutil.rmtree(logs, ignore_errors=True)  # every run measures empty logs
    logs.mkdir(parents=True)
    experiment = logs / "ab.yaml"
    # The bench measures latency, so the gateway's own budget must not cut the slow cells off
    # (a 1,000-event tail's first request encodes its new query texts on a loaded machine).
    limits = Limits(deadline_ms=RANK_BUDGET_MS)
    write_config(
        ExperimentConfig(salt="online-bench", arms=demo_arms(repo), limits=limits), experiment
    )
    tails_url = f"sqlite://{logs / 'tails.db'}"

    progress(f"starting seminar serve over {repo}, tails from {tails_url}")
    with ServeProcess(repo, "--event-log", tails_url, console_path=logs / "serve.log") as serve:

        def gateway(url: str, name: str) -> GatewayProcess:
            return GatewayProcess(
                experiment, serve.grpc_url, catalog=repo, event_log=url,
                log_path=logs / f"gateway-{name}.log",
            )  # fmt: skip

        record_rows = []
        with RedisServer(logs / "redis", log_path=logs / "redis.log") as redis:
            urls = {"sqlite": f"sqlite://{logs / 'record.db'}", "redis": redis.url}
            for kind in LOG_KINDS:
                progress(f"Record load on {kind}: {cfg.seconds:g} s at concurrency "
                         f"{cfg.concurrency}, {cfg.batch_events} events per call")  # fmt: skip
                with gateway(urls[kind], kind) as front:
                    row = measure_record(front.address, urls[kind], kind, cfg)
                progress(
                    f"  {row['events_per_s']:,.0f} events/s, acknowledgement p99 "
                    f"{row['acknowledgement']['p99_ms']:.1f} ms, lost {row['lost']}"
                )
                record_rows.append(row)

        rank_rows = []
        with gateway(tails_url, "tails") as front:
            writer = TailWriter(front.address, long_user, ds.item_ids, ds.queries[1:], cfg)
            baseline = None
            for tail in cfg.tails:
                writer.grow_to(tail)
                summary, scores = measure_rank(front.address, long_user, candidates, cfg)
                baseline = scores if baseline is None else baseline
                change = float(np.abs(scores - baseline).max())
                rank_rows.append({"tail": tail, "rank": summary, "max_score_change": change})
                progress(
                    f"Rank at L = {cfg.length:,}, tail {tail:,}: p50 "
                    f"{summary['p50_ms']:.2f} ms, largest score change {change:.1e}"
                )
    report = {
        "config": asdict(cfg),
        "dataset": dataset,
        "repo": str(repo),
        "user_id": long_user,
        "record": record_rows,
        "rank_tails": rank_rows,
    }
    return Record(
        title="Online events: Record throughput and Rank over a fresh tail",
        header=header,
        setup=setup_lines(report),
        body=markdown(report),
        data=report,
    )


# -- the report -----------------------------------------------------------------------------------


def setup_lines(report: dict[str, Any]) -> tuple[str, ...]:
    cfg = report["config"]
    return (
        f"Record: the Record load client through a real `seminar gateway`, {cfg['concurrency']} "
        f"writers, {cfg['batch_events']} events per call, {cfg['seconds']:g} s per log; SQLite "
        "is one file (WAL, synchronous FULL), Redis a real redis-server (appendonly yes, "
        "appendfsync always); acknowledgement = the time of each call answered OK",
        f"Rank: SYNTHETIC user {report['user_id']} with L = {cfg['length']:,} stored events "
        f"appended to {report['dataset']}, {cfg['candidates']} candidates, no query, "
        f"{cfg['requests']} timed calls after {cfg['warmup']} warm-up per tail, through the "
        "gateway and `seminar serve` (tritonserver) reading tails from a SQLite log; the tail is "
        f"recorded through Record between cells ({cfg['search_share']:.0%} searches with a "
        "query of the dataset)",
    )


def _estimate(summary: dict[str, float]) -> Estimate:
    return Estimate(summary["mean_ms"], summary["std_ms"], int(summary["requests"]))


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    rows = {row["log"]: row for row in report["record"]}
    record_cells = [
        (
            LOG_NAMES[kind],
            f"{row['events_per_s']:,.0f}",
            f"{row['acknowledgement']['p50_ms']:.2f}",
            f"{row['acknowledgement']['p99_ms']:.2f}",
            f"{row['sent']:,} / {row['acknowledged']:,} / {row['stored']:,} / {row['lost']:,}",
        )
        for kind, row in rows.items()
    ]
    lines = [
        "## Record",
        "",
        markdown_table(
            ("log", "events/s", "ack p50 ms", "ack p99 ms", "sent / acknowledged / stored / lost"),
            record_cells,
        ),
        "",
    ]
    if set(LOG_KINDS) <= rows.keys():
        sqlite, redis = rows["sqlite"], rows["redis"]
        lines.append(
            "- "
            + comparison(
                "SQLite",
                _estimate(sqlite["acknowledgement"]),
                "Redis",
                _estimate(redis["acknowledgement"]),
                lower_is_better=True,
                better="faster to acknowledge",
                unit=" ms mean",
            )
            + f"; SQLite's throughput is {ratio(sqlite['events_per_s'], redis['events_per_s'])} "
            "Redis's."
        )
    lost = sum(row["lost"] for row in rows.values())
    lines.append(
        f"- Acknowledged events missing from the log: {lost} "
        f"({side(lost, 1, 'none lost', 'EVENTS LOST')})."
    )
    tails = report["rank_tails"]
    base = tails[0]["rank"]
    rank_cells = [
        (
            f"{row['tail']:,}",
            f"{row['rank']['p50_ms']:.2f}",
            f"{row['rank']['p99_ms']:.2f}",
            ratio(row["rank"]["p50_ms"], base["p50_ms"]),
            f"{row['max_score_change']:.1e}",
        )
        for row in tails
    ]
    lines += [
        "",
        f"## Rank at L = {cfg['length']:,} with an online tail",
        "",
        markdown_table(
            ("tail events", "p50 ms", "p99 ms", "p50 / empty tail", "largest score change"),
            rank_cells,
        ),
        "",
    ]
    for row in tails[1:]:
        moved = side(row["max_score_change"], SCORE_CHANGE_FLOOR, "did not move", "moved")
        lines.append(
            f"- Tail {row['tail']:,}: "
            + comparison(
                f"the {row['tail']:,}-event tail",
                _estimate(row["rank"]),
                "the empty tail",
                _estimate(base),
                lower_is_better=True,
                better="faster",
                unit=" ms mean",
            )
            + f"; the scores {moved} (largest change {row['max_score_change']:.1e})."
        )
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    rows = report["record"]
    positions = np.arange(len(rows))
    for offset, key in ((-0.2, "p50_ms"), (0.2, "p99_ms")):
        left.bar(
            positions + offset,
            [row["acknowledgement"][key] for row in rows],
            width=0.4,
            label=key.removesuffix("_ms"),
        )
    left.set_xticks(
        positions, [f"{LOG_NAMES[r['log']]}\n{r['events_per_s']:,.0f} ev/s" for r in rows]
    )
    left.set_ylabel("Record acknowledgement (ms)")
    left.legend()
    tails = report["rank_tails"]
    sizes = [row["tail"] for row in tails]
    for key in ("p50_ms", "p99_ms"):
        right.plot(
            sizes, [row["rank"][key] for row in tails], marker="o", label=key.removesuffix("_ms")
        )
    right.set_xlabel("online tail (events)")
    right.set_ylabel(f"Rank at L = {report['config']['length']:,} (ms)")
    right.legend()
    fig.suptitle("Online events through the gateway")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
