"""`seminar bench soak`: hostile traffic through the gateway while model processes are frozen.

The whole production stack runs as a user runs it: `seminar serve` (the supervisor, its gRPC
proxy and tritonserver) over a built repository, and `seminar gateway` in front. Clients send
a mix nobody would plan for:

- deadlines drawn log-uniformly from 5 ms to 2 s, so many calls expire mid-flight;
- 1000-candidate requests beside ordinary 100-candidate ones;
- 1 MB query strings (the gateway must refuse them, not pass them on);
- calls the client cancels itself after a few milliseconds;

and every `stall_every_s` a random Python-backend model process is frozen (SIGSTOP) for
`stall_s`, then resumed (SIGCONT). Optionally the run ends with kill -9 of tritonserver under
load, timed until the gateway answers OK again.

The verdict: tritonserver never died during the soak, every call ended OK or with a status a
client can act on (never UNKNOWN or INTERNAL), and, with the kill, the service came back with
nothing left behind. The record (OUT.md, OUT.json) and the timeline plot (OUT.png) are written
by bench/harness.py.
"""

from __future__ import annotations

import math
import os
import random
import signal
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from seminar.bench.harness import Header, Record, Timing, markdown_table
from seminar.clients.config import ExperimentConfig, Limits, write_config
from seminar.clients.demo import demo_arms
from seminar.clients.metrics import metric_total
from seminar.clients.process import GatewayProcess
from seminar.clients.proto import ranker_pb2, ranker_pb2_grpc
from seminar.clients.workload import load_workload
from seminar.errors import ArtifactError
from seminar.serving import process_group
from seminar.serving.serve_process import ServeProcess

# A call may end with any of these: each tells the client what to do.
PROPER_CODES = {
    "OK",
    "DEADLINE_EXCEEDED",
    "CANCELLED",
    "INVALID_ARGUMENT",
    "RESOURCE_EXHAUSTED",
    "UNAVAILABLE",
}
HUGE_QUERY_BYTES = 1024 * 1024
RECOVERY_TIMEOUT_S = 600.0  # after the kill, how long the gateway has to answer OK again


class SoakError(ArtifactError):
    """The soak could not run (no repository, no data); the message names what is missing."""


@dataclass(frozen=True)
class SoakConfig:
    """The traffic and the faults; defaults are the acceptance run (10 minutes)."""

    duration_s: float = 600.0
    concurrency: int = 8
    deadline_min_s: float = 0.005
    deadline_max_s: float = 2.0
    big_share: float = 0.3  # requests with `big_candidates` candidates instead of 100
    big_candidates: int = 1000
    huge_query_share: float = 0.05  # requests with a 1 MB query
    cancel_share: float = 0.05  # requests the client cancels after a few ms
    stall_every_s: float = 30.0
    stall_s: float = 3.0
    kill_at_end: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or self.concurrency < 1:
            raise ValueError("duration_s must be > 0 and concurrency >= 1")
        if not 0 < self.deadline_min_s <= self.deadline_max_s:
            raise ValueError("deadlines: need 0 < deadline_min_s <= deadline_max_s")
        for name in ("big_share", "huge_query_share", "cancel_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}: must be in [0, 1], got {getattr(self, name)}")
        if self.stall_every_s <= self.stall_s or self.stall_s <= 0:
            raise ValueError("stall_every_s must be > stall_s > 0")


@dataclass
class Stall:
    at_s: float
    pid: int
    model: str
    version: str
    stopped_ms: float  # how long the process stayed stopped (the supervisor resumes it)


@dataclass
class KillPhase:
    at_s: float
    old_pid: int
    new_pid: int | None = None
    recovered_s: float | None = None  # kill -> first OK answer through the gateway
    leftover_processes: list[int] = field(default_factory=list)
    leftover_shm: list[str] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)  # calls that ended during this phase


class _Traffic:
    """Client threads against the gateway; per-second counts and OK latencies."""

    def __init__(self, address: str, calls, config: SoakConfig, items: np.ndarray) -> None:
        self.address, self.calls, self.config, self.items = address, calls, config, items
        self.started = time.monotonic()
        self.codes: Counter[str] = Counter()
        self.per_second: dict[int, Counter[str]] = defaultdict(Counter)
        self.ok_ms: list[float] = []
        self.ok_ms_by_second: dict[int, list[float]] = defaultdict(list)
        self.examples: dict[str, str] = {}
        self.last_ok = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(config.seed * 1000 + i,), daemon=True)
            for i in range(config.concurrency)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _request(self, rng: random.Random) -> ranker_pb2.RankRequest:
        call = self.calls[rng.randrange(len(self.calls))]
        candidates = call.candidate_ids
        if rng.random() < self.config.big_share:
            candidates = rng.sample(list(self.items), self.config.big_candidates)
        query = call.query
        if rng.random() < self.config.huge_query_share:
            query = "x" * HUGE_QUERY_BYTES
        return ranker_pb2.RankRequest(
            user_id=call.user_id, query=query, candidate_ids=[int(i) for i in candidates]
        )

    def _client(self, seed: int) -> None:
        import grpc

        rng = random.Random(seed)
        cfg = self.config
        log_lo, log_hi = math.log(cfg.deadline_min_s), math.log(cfg.deadline_max_s)
        options = [("grpc.max_send_message_length", 4 * HUGE_QUERY_BYTES)]
        with grpc.insecure_channel(self.address, options=options) as channel:
            stub = ranker_pb2_grpc.RankerStub(channel)
            while not self._stop.is_set():
                request = self._request(rng)
                deadline = math.exp(rng.uniform(log_lo, log_hi))
                cancel = rng.random() < cfg.cancel_share
                t0 = time.perf_counter()
                future = stub.Rank.future(request, timeout=deadline)
                if cancel:
                    time.sleep(rng.uniform(0.0, 0.02))
                    future.cancel()
                try:
                    future.result()
                    code, detail = "OK", ""
                except grpc.FutureCancelledError:
                    code, detail = "CANCELLED", "cancelled by the client"
                except grpc.RpcError as err:
                    code, detail = err.code().name, err.details() or ""
                ms = (time.perf_counter() - t0) * 1000
                second = int(time.monotonic() - self.started)
                with self._lock:
                    self.codes[code] += 1
                    self.per_second[second][code] += 1
                    if code == "OK":
                        self.ok_ms.append(ms)
                        self.ok_ms_by_second[second].append(ms)
                        self.last_ok = time.monotonic()
                    else:
                        self.examples.setdefault(code, detail[:200])


def _stall_loop(
    serve: ServeProcess,
    config: SoakConfig,
    started: float,
    stop: threading.Event,
    stalls: list[Stall],
) -> None:
    rng = random.Random(config.seed + 7)
    while not stop.wait(config.stall_every_s):
        pid = serve.status().get("tritonserver_pid")
        if not pid:
            continue  # tritonserver is restarting
        stubs = [s for s in process_group.StubWatch(int(pid)).stubs() if not s.dead]
        if not stubs:
            continue
        victim = rng.choice(stubs)
        watch = process_group.StubWatch(int(pid), rescan_every=10**9)
        t0 = time.monotonic()
        os.kill(victim.pid, signal.SIGSTOP)
        stopped_at, stopped_ms = None, config.stall_s * 1000
        while time.monotonic() - t0 < config.stall_s:
            state = next((s for s in watch.stubs() if s.pid == victim.pid), None)
            if state is None:
                break  # the process is gone (its model was reloaded)
            if stopped_at is None and state.stopped:
                stopped_at = time.monotonic()  # the signal has landed
            elif stopped_at is not None and not state.stopped:
                stopped_ms = (time.monotonic() - stopped_at) * 1000  # someone resumed it
                break
            time.sleep(0.002)
        time.sleep(max(0.0, config.stall_s - (time.monotonic() - t0)))
        os.kill(victim.pid, signal.SIGCONT)
        stalls.append(
            Stall(round(t0 - started, 1), victim.pid, victim.model, victim.version, stopped_ms)
        )


def _kill_phase(serve: ServeProcess, traffic: _Traffic, started: float) -> KillPhase:
    old_pid = int(serve.status()["tritonserver_pid"])
    regions = process_group.mapped_shm_regions(old_pid)
    phase = KillPhase(at_s=round(time.monotonic() - started, 1), old_pid=old_pid)
    before = Counter(traffic.codes)
    killed_at = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)
    deadline = killed_at + RECOVERY_TIMEOUT_S
    while time.monotonic() < deadline:
        if traffic.last_ok > killed_at + 0.5 and serve.is_ready():
            phase.recovered_s = round(traffic.last_ok - killed_at, 1)
            break
        time.sleep(0.1)
    phase.codes = dict(Counter(traffic.codes) - before)
    phase.new_pid = serve.status().get("tritonserver_pid")
    phase.leftover_processes = process_group.group_pids(old_pid)
    phase.leftover_shm = sorted(n for n in regions if (process_group.SHM_DIR / n).exists())
    return phase


def run_soak(
    repo: Path,
    data: Path,
    config: SoakConfig,
    progress: Callable[[str], None] = lambda _m: None,
) -> Record:
    """Run the soak; its record (`write_plotted` with `plot` writes it with the timeline)."""
    header = Header.now(seeds=(config.seed,))
    if not repo.is_dir():
        raise SoakError(f"--repo: {repo} is not a model repository (run `seminar build`)")
    calls = load_workload(data, candidates=100)
    items = np.unique(np.concatenate([c.candidate_ids for c in calls]))
    arms = demo_arms(repo)
    limits = Limits(max_candidates=config.big_candidates, max_query_bytes=256, deadline_ms=2000)
    work = Path(tempfile.mkdtemp(prefix="seminar-soak-"))
    experiment = work / "ab.yaml"
    write_config(ExperimentConfig(salt="soak", arms=arms, limits=limits), experiment)
    stalls: list[Stall] = []
    progress("starting seminar serve")
    with ServeProcess(repo, console_path=work / "serve.log") as serve:
        first_pid = int(serve.status()["tritonserver_pid"])
        progress("starting the gateway")
        with GatewayProcess(
            experiment, serve.grpc_url, catalog=repo, log_path=work / "gateway.log"
        ) as gateway:
            traffic = _Traffic(gateway.address, calls, config, items)
            stop = threading.Event()
            staller = threading.Thread(
                target=_stall_loop, args=(serve, config, traffic.started, stop, stalls)
            )
            traffic.start()
            staller.start()
            try:
                end = traffic.started + config.duration_s
                while time.monotonic() < end:
                    time.sleep(min(10.0, end - time.monotonic()))
                    progress(f"{time.monotonic() - traffic.started:5.0f} s: {dict(traffic.codes)}")
            finally:
                stop.set()
                staller.join()
            soak_status = serve.status()
            soak_codes = dict(traffic.codes)
            soak_ok_ms = list(traffic.ok_ms)
            kill = None
            if config.kill_at_end:
                progress("kill -9 tritonserver under load")
                kill = _kill_phase(serve, traffic, traffic.started)
            traffic.stop()
            supervisor_metrics = serve.supervisor_metrics()
    survived = soak_status["restarts"] == 0 and soak_status["tritonserver_pid"] == first_pid
    improper = {c: n for c, n in soak_codes.items() if c not in PROPER_CODES}
    recovered = kill is None or (
        kill.recovered_s is not None and not kill.leftover_processes and not kill.leftover_shm
    )
    ok = Timing(tuple(soak_ok_ms) or (0.0,))
    report = {
        "config": asdict(config),
        "arms": [a.model_version for a in arms],
        "passed": bool(survived and not improper and recovered),
        "tritonserver_survived": survived,
        "codes": soak_codes,
        "improper_codes": improper,
        "examples": traffic.examples,
        "ok_p50_ms": ok.percentile(50),
        "ok_p99_ms": ok.percentile(99),
        "calls": int(sum(soak_codes.values())),
        "stalls": [asdict(s) for s in stalls],
        "kill": asdict(kill) if kill else None,
        "supervisor": {
            "resumed": metric_total(
                supervisor_metrics, "seminar_serve_model_process_resumed_total"
            ),
            "abandoned": metric_total(supervisor_metrics, "seminar_serve_grpc_abandoned_total"),
            "restarts": metric_total(supervisor_metrics, "seminar_serve_triton_restarts_total"),
        },
        "timeline": {
            str(s): {"codes": dict(c), "ok_p99_ms": _p99(traffic.ok_ms_by_second.get(s, []))}
            for s, c in sorted(traffic.per_second.items())
        },
    }
    return Record(
        title="Soak: hostile traffic through the gateway while model processes freeze",
        header=header,
        setup=setup_lines(report),
        body=markdown(report),
        data=report,
    )


def _p99(values: list[float]) -> float | None:
    return Timing(tuple(values)).percentile(99) if values else None


def setup_lines(report: dict) -> tuple[str, ...]:
    cfg = report["config"]
    return (
        f"arms: {', '.join(report['arms'])}",
        f"traffic: {cfg['concurrency']} clients for {cfg['duration_s']:.0f} s; deadlines "
        f"log-uniform {cfg['deadline_min_s'] * 1000:.0f} ms - {cfg['deadline_max_s']:.1f} s; "
        f"{cfg['big_share']:.0%} of requests with {cfg['big_candidates']} candidates (else 100); "
        f"{cfg['huge_query_share']:.0%} with a 1 MB query; {cfg['cancel_share']:.0%} cancelled "
        f"by the client; a random model process frozen (SIGSTOP) every {cfg['stall_every_s']:.0f} s "
        f"for {cfg['stall_s']:.0f} s",
    )


def markdown(report: dict) -> str:
    cfg = report["config"]
    verdict = "PASSED" if report["passed"] else "FAILED"
    total = max(report["calls"], 1)
    codes = sorted(report["codes"].items(), key=lambda kv: -kv[1])
    lines = [
        f"**{verdict}.** tritonserver "
        + ("never died" if report["tritonserver_survived"] else "DIED")
        + f" during the soak; {report['calls']:,} calls, "
        + (
            "every one OK or with a status a client can act on."
            if not report["improper_codes"]
            else f"improper codes: {report['improper_codes']}."
        ),
        "",
        markdown_table(
            ("status", "calls", "share", "example"),
            [
                (
                    code,
                    f"{n:,}",
                    f"{n / total:.1%}",
                    report["examples"].get(code, "").replace("|", "/"),
                )
                for code, n in codes
            ],
            align="lrrl",
        ),
        "",
        f"OK calls: p50 {report['ok_p50_ms']:.1f} ms, p99 {report['ok_p99_ms']:.1f} ms "
        "(client-side, through the gateway, on the same cores as the server).",
        "",
        "## Frozen model processes",
        "",
        markdown_table(
            ("at (s)", "model", "version", "stopped for (ms)"),
            [
                (stall["at_s"], stall["model"], stall["version"], f"{stall['stopped_ms']:.0f}")
                for stall in report["stalls"]
            ],
            align="rllr",
        ),
    ]
    sup, kill = report["supervisor"], report["kill"]
    planned_ms = cfg["stall_s"] * 1000
    early = sum(1 for stall in report["stalls"] if stall["stopped_ms"] < planned_ms)
    lines += [
        "",
        f"{early} of {len(report['stalls'])} frozen processes were running again before the "
        f"bench's own SIGCONT at {cfg['stall_s']:g} s. The supervisor counted "
        f"{sup['resumed']:.0f} resumed process(es) and {sup['restarts']:.0f} tritonserver "
        f"restart(s){' (the kill below included)' if kill is not None else ''}; "
        f"{sup['abandoned']:.0f} calls reached its gRPC proxy and were then abandoned by their "
        "caller.",
    ]
    if kill is not None:
        recovered = (
            f"the gateway answered OK again {kill['recovered_s']} s after the kill"
            if kill["recovered_s"] is not None
            else f"the gateway did NOT answer OK again within {RECOVERY_TIMEOUT_S:.0f} s"
        )
        lines += [
            "",
            "## kill -9 of tritonserver under load",
            "",
            f"At {kill['at_s']} s tritonserver (pid {kill['old_pid']}) was killed with SIGKILL; "
            f"the supervisor started pid {kill['new_pid']}, and {recovered}. Left behind by the "
            f"dead server: {len(kill['leftover_processes'])} process(es), "
            f"{len(kill['leftover_shm'])} shared-memory region(s). Calls that ended in between: "
            + ", ".join(f"{code} {n:,}" for code, n in sorted(kill["codes"].items()))
            + ".",
        ]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = report["timeline"]
    seconds = sorted(int(s) for s in timeline)
    codes = sorted({c for s in timeline.values() for c in s["codes"]})
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    bottom_stack = np.zeros(len(seconds))
    for code in codes:
        counts = np.array([timeline[str(s)]["codes"].get(code, 0) for s in seconds])
        top.bar(seconds, counts, bottom=bottom_stack, width=1.0, label=code)
        bottom_stack += counts
    top.set_ylabel("calls per second")
    top.legend(loc="upper right", fontsize=7)
    p99 = [timeline[str(s)]["ok_p99_ms"] for s in seconds]
    bottom.plot(seconds, [v if v is not None else np.nan for v in p99], lw=0.8)
    bottom.set_ylabel("OK p99 (ms)")
    bottom.set_xlabel("seconds")
    for stall in report["stalls"]:
        for axis in (top, bottom):
            axis.axvline(stall["at_s"], color="grey", ls=":", lw=0.8)
    if report["kill"] is not None:
        for axis in (top, bottom):
            axis.axvline(report["kill"]["at_s"], color="red", ls="--", lw=1)
    top.set_title("Soak through the gateway (dotted: frozen model process; red: kill -9)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
