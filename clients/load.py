"""Async load generator for the gateway: closed loop (fixed concurrency) or open loop (rate).

Every request is recorded (start, end, status code, arm), so callers can ask more than the
summary: the weight-change test reads which arm served each request over time.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import numpy as np

from seminar.clients.proto import ranker_pb2, ranker_pb2_grpc
from seminar.clients.workload import RankCall


@dataclass(frozen=True)
class LoadConfig:
    """One load run. rate > 0 = open loop at that many requests/s, else closed loop."""

    duration_s: float = 10.0
    concurrency: int = 4
    rate: float = 0.0
    warmup_s: float = 1.0
    timeout_s: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.duration_s <= 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.rate < 0:
            raise ValueError(f"rate must be >= 0 (0 = closed loop), got {self.rate}")
        if self.warmup_s < 0:
            raise ValueError(f"warmup_s must be >= 0, got {self.warmup_s}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")


@dataclass(frozen=True)
class Record:
    start: float  # seconds since the measured window began (negative = warm-up)
    latency_s: float
    code: str  # gRPC status name
    arm: str  # "" when the call failed


@dataclass
class LoadResult:
    config: LoadConfig
    target: str
    records: list[Record] = field(default_factory=list)  # measured window only
    wall_s: float = 0.0

    @property
    def ok(self) -> int:
        return sum(r.code == "OK" for r in self.records)

    def codes(self) -> dict[str, int]:
        return dict(Counter(r.code for r in self.records))

    def arms(self) -> dict[str, int]:
        return dict(Counter(r.arm for r in self.records if r.code == "OK"))

    def percentiles_ms(self) -> dict[str, float]:
        lat = np.array([r.latency_s for r in self.records if r.code == "OK"]) * 1000
        if len(lat) == 0:
            return {k: float("nan") for k in ("p50", "p90", "p99", "max")}
        p50, p90, p99 = np.percentile(lat, [50, 90, 99])
        return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(lat.max())}

    @property
    def throughput(self) -> float:
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "mode": "rate" if self.config.rate else "concurrency",
            "concurrency": self.config.concurrency,
            "rate": self.config.rate,
            "duration_s": self.wall_s,
            "requests": len(self.records),
            "ok": self.ok,
            "throughput_rps": self.throughput,
            "codes": self.codes(),
            "arms": self.arms(),
            "latency_ms": self.percentiles_ms(),
        }

    def markdown(self) -> str:
        p = self.percentiles_ms()
        mode = (
            f"rate {self.config.rate:g}/s"
            if self.config.rate
            else f"concurrency {self.config.concurrency}"
        )
        errors = (
            ", ".join(f"{c}={n}" for c, n in sorted(self.codes().items()) if c != "OK") or "none"
        )
        arms = ", ".join(f"{a}={n}" for a, n in sorted(self.arms().items())) or "-"
        return "\n".join(
            [
                "| target | load | requests | ok | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | arms |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
                f"| {self.target} | {mode} | {len(self.records)} | {self.ok} | {self.throughput:.1f} "
                f"| {p['p50']:.2f} | {p['p90']:.2f} | {p['p99']:.2f} | {p['max']:.2f} | {errors} | {arms} |",
            ]
        )


async def run_load(
    target: str, calls: list[RankCall], config: LoadConfig, progress: bool = False
) -> LoadResult:
    """Send requests drawn (seeded) from `calls` to the gateway at `target` for the duration."""
    rng = random.Random(config.seed)
    requests = [
        ranker_pb2.RankRequest(
            user_id=c.user_id, query=c.query, candidate_ids=c.candidate_ids.tolist()
        )
        for c in calls
    ]
    result = LoadResult(config=config, target=target)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ranker_pb2_grpc.RankerStub(channel)
        t_zero = time.perf_counter() + config.warmup_s
        t_end = t_zero + config.duration_s

        async def one(request: ranker_pb2.RankRequest) -> None:
            start = time.perf_counter()
            try:
                response = await stub.Rank(request, timeout=config.timeout_s)
                code, arm = "OK", response.arm
            except grpc.aio.AioRpcError as err:
                code, arm = err.code().name, ""
            end = time.perf_counter()
            if start >= t_zero:
                result.records.append(Record(start - t_zero, end - start, code, arm))

        async def closed_loop_worker() -> None:
            while time.perf_counter() < t_end:
                await one(rng.choice(requests))

        async def open_loop() -> None:
            period, in_flight = 1.0 / config.rate, set()
            next_at = time.perf_counter()
            while next_at < t_end:
                task = asyncio.create_task(one(rng.choice(requests)))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                next_at += period
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            if in_flight:
                await asyncio.wait(in_flight)

        ticker = asyncio.create_task(_progress(t_zero, t_end, result)) if progress else None
        if config.rate > 0:
            await open_loop()
        else:
            await asyncio.gather(*(closed_loop_worker() for _ in range(config.concurrency)))
        result.wall_s = max(time.perf_counter() - t_zero, 1e-9)
        if ticker is not None:
            ticker.cancel()
    result.records.sort(key=lambda r: r.start)
    return result


async def _progress(t_zero: float, t_end: float, result: LoadResult) -> None:
    from tqdm import tqdm

    total = t_end - t_zero
    with tqdm(total=round(total), unit="s", desc="load", leave=False) as bar:
        while True:
            await asyncio.sleep(1.0)
            now = time.perf_counter()
            if now >= t_zero:
                bar.n = min(round(now - t_zero), round(total))
                bar.set_postfix(ok=result.ok, errors=len(result.records) - result.ok)
                bar.refresh()
