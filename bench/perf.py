"""`seminar perf`: perf_analyzer against the `seminar` ensemble, and the gateway beside it.

1. `--input-data` JSON from real requests, not random tensors: one row per candidate,
   `-b C` rows per request, so perf_analyzer's requests are the users' real candidate sets
   (consecutive rows form one batch). An optional synthetic long user is added, labelled so.
2. perf_analyzer over gRPC for a concurrency range, natively where glibc >= 2.38, else inside
   the Debian 13 chroot built by clients/perf_analyzer_chroot.sh.
3. `seminar load` through the gateway at the same concurrencies, same requests.
4. With `--repo`, first and back to back: perf_analyzer at the top concurrency while /proc is
   read (bench/served_cpu.py: CPU cores and CPU ms per request of the client, `seminar serve`'s
   gRPC proxy when one listens on the address, tritonserver, its stubs and the rest of the
   machine; behind a proxy, also at tritonserver's own gRPC port, side by side), then in-process
   serving of the same requests, no Triton (seminar.serving.inprocess, the version the ensemble
   serves), in as many worker processes as the machine has cores, one thread each, closed
   loop: the throughput and the CPU per request Triton's are compared with. In rounds
   (`rounds`, 3 by default), because the machine's speed drifts: the report gives every
   round's shares, judges the median and shows the median round's CPU table.
5. OUT_DIR/perf.md and perf.json (bench/harness.py: header, one table with the gateway/Triton
   ratio and the sentences it supports), perf.png, and the raw measurements beside them:
   perf_analyzer.csv, perf_analyzer.log, perf_gateway.json.
"""

from __future__ import annotations

import asyncio
import csv
import glob
import json
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seminar.bench.harness import SCRATCH, Header, Record, markdown_table, ratio, write_record
from seminar.bench.served_cpu import (
    CLIENT,
    IDLE,
    OTHER,
    PROXY,
    STUBS,
    CpuSnapshot,
    Role,
    cpu_table,
    find_served_path,
    machine_cpu_seconds,
    other_cores,
    own_cpu_seconds,
)
from seminar.clients.workload import RankCall, load_workload
from seminar.contract import ENSEMBLE_MODEL, NATIVE_MODEL
from seminar.errors import ServiceError
from seminar.serving.client import request_rows

DEFAULT_CHROOT = Path("/opt/seminar/perf-chroot")
_CHROOT_BINARY = "opt/pa/lib/python3*/site-packages/perf_analyzer/bin/perf_analyzer"


class PerfError(ServiceError):
    """perf_analyzer is missing or failed; the message says what to do."""


@dataclass(frozen=True)
class PerfConfig:
    triton: str
    data: Path
    gateway: str | None = None
    model: str = ENSEMBLE_MODEL
    concurrency: str = "1:8"
    candidates: int = 100
    requests: int = 32
    synthetic_long_user: int | None = None
    measurement_ms: int = 3000
    chroot: Path | None = None
    out_dir: Path = SCRATCH
    repo: Path | None = None  # the served repository: adds the in-process workers' throughput
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    # Triton's best throughput over the sweep, as a share of the in-process workers' (the
    # serving-efficiency goal: what Triton and gRPC may cost at saturation).
    goal_share: float = 0.8
    # With `repo`: rounds of (served at saturation, then in-process), back to back. The shared
    # reference machine's speed drifts by 20% within minutes, so one pair of runs can land
    # either side of the goal; the report gives every round and judges the median.
    rounds: int = 3

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not 1 <= self.candidates <= 100:
            raise ValueError(f"candidates must be in 1..100, got {self.candidates}")
        if self.requests < 1:
            raise ValueError(f"requests must be >= 1, got {self.requests}")
        if self.measurement_ms < 100:
            raise ValueError(f"measurement_ms must be >= 100, got {self.measurement_ms}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        self.concurrency_levels()  # validates the range

    def concurrency_levels(self) -> list[int]:
        parts = self.concurrency.split(":")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            nums = []
        if (
            len(nums) not in (2, 3)
            or nums[0] < 1
            or nums[1] < nums[0]
            or (len(nums) == 3 and nums[2] < 1)
        ):
            raise ValueError(
                f"concurrency must be START:END[:STEP] with 1 <= START <= END, got {self.concurrency!r}"
            )
        step = nums[2] if len(nums) == 3 else 1
        return list(range(nums[0], nums[1] + 1, step))


@dataclass(frozen=True)
class PerfAnalyzer:
    """How to run perf_analyzer here: a native binary, or one inside a chroot."""

    binary: str  # path as perf_analyzer sees it
    chroot: Path | None = None

    def command(self, args: list[str]) -> list[str]:
        prefix = ["chroot", str(self.chroot)] if self.chroot else []
        return [*prefix, self.binary, *args]

    def host_path(self, inside: str) -> Path:
        """Where a path perf_analyzer sees lies on this machine."""
        return self.chroot / inside.lstrip("/") if self.chroot else Path(inside)

    @property
    def where(self) -> str:
        return f"chroot {self.chroot} (Debian 13)" if self.chroot else "native"


def find_perf_analyzer(chroot: Path | None = None) -> PerfAnalyzer:
    """A working perf_analyzer, or PerfError naming both ways to get one."""
    if chroot is None:
        native = shutil.which("perf_analyzer")
        if native and _runs([native, "--version"]):
            return PerfAnalyzer(native)
    root = chroot or DEFAULT_CHROOT
    matches = sorted(glob.glob(str(root / _CHROOT_BINARY)))
    if matches and os.geteuid() == 0:
        inside = "/" + str(Path(matches[-1]).relative_to(root))
        candidate = PerfAnalyzer(inside, root)
        if _runs(candidate.command(["--version"])):
            return candidate
    libc = " ".join(platform.libc_ver())
    raise PerfError(
        f"no runnable perf_analyzer: the PyPI wheel needs glibc >= 2.38 (this host has {libc}) "
        f"and no Debian 13 chroot with it at {root} usable by this user (uid {os.geteuid()}); "
        "build one as root with clients/perf_analyzer_chroot.sh"
    )


def _runs(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def input_data(calls: list[RankCall], synthetic_user: int | None = None) -> dict:
    """perf_analyzer --input-data: one entry per candidate row; request k = rows [kC, (k+1)C).

    A synthetic long user reuses the first real candidate set under its own user id.
    """
    rows = []
    requests = list(calls)
    if synthetic_user is not None:
        requests.append(RankCall(str(synthetic_user), "", calls[0].candidate_ids))
    for call in requests:
        rows += request_rows(int(call.user_id), call.query, call.candidate_ids)
    return {"data": rows}


def analyzer_args(
    cfg: PerfConfig, address: str, input_file: str, concurrency: str, measurement_ms: int
) -> list[str]:
    """perf_analyzer's arguments for `cfg`'s model and requests at `address`."""
    return [
        "-m", cfg.model, "-i", "grpc", "-u", address,
        "-b", str(cfg.candidates),
        "--input-data", input_file,
        "--concurrency-range", concurrency,
        "--measurement-interval", str(measurement_ms),
        "--stability-percentage", "50",  # p99 on 2 shared cores is noisy (docs/environment.md)
        "--max-trials", "10",
    ]  # fmt: skip


def parse_csv(path: Path, batch: int) -> list[dict[str, float]]:
    """perf_analyzer's -f CSV (latencies in us, throughput in rows/s) -> requests/s and ms."""
    out = []
    with open(path) as f:
        for row in csv.DictReader(f):
            out.append(
                {
                    "concurrency": int(row["Concurrency"]),
                    "rps": float(row["Inferences/Second"]) / batch,
                    "p50": float(row["p50 latency"]) / 1000,
                    "p90": float(row["p90 latency"]) / 1000,
                    "p95": float(row["p95 latency"]) / 1000,
                    "p99": float(row["p99 latency"]) / 1000,
                    "queue": float(row.get("Server Queue", 0) or 0) / 1000,
                    "compute": float(row.get("Server Compute Infer", 0) or 0) / 1000,
                }
            )
    return sorted(out, key=lambda r: r["concurrency"])  # perf_analyzer sorts by throughput


def run_perf(cfg: PerfConfig) -> str:
    """Run both measurements; write the record and the raw files; return the markdown."""
    from rich.console import Console

    header = Header.now(seeds=())
    console = Console(stderr=True)
    pa = find_perf_analyzer(cfg.chroot)
    calls = load_workload(cfg.data, candidates=cfg.candidates, limit=cfg.requests)
    levels = cfg.concurrency_levels()
    cfg.out_dir.mkdir(parents=True, exist_ok=True)

    scratch_root = pa.host_path("/tmp")
    scratch_root.mkdir(parents=True, exist_ok=True)
    served = find_served_path(cfg.triton)  # None: not served on this machine
    steps = _ensemble_steps(cfg.triton, cfg.model)
    served_roles = [] if served is None else served.processes(steps)
    # The in-process workers run the computation the ensemble serves: the C++ step when it
    # schedules the native one, else the Python pipeline.
    native = NATIVE_MODEL in steps
    with tempfile.TemporaryDirectory(prefix="seminar-perf-", dir=scratch_root) as scratch:
        inside = "/tmp/" + Path(scratch).name if pa.chroot else scratch
        (Path(scratch) / "input.json").write_text(
            json.dumps(input_data(calls, cfg.synthetic_long_user))
        )
        input_file = f"{inside}/input.json"
        # First, back to back, what the goal compares: Triton at saturation and the in-process
        # workers (a shared machine's other load changes less over a minute than over the
        # whole run), in rounds.
        rounds: list[dict[str, Any]] = []
        if cfg.repo is not None:
            version = _newest_version(cfg.triton, cfg.model)
            # Without a served path on this machine there is nothing to pair: one round.
            count = cfg.rounds if served is not None else 1
            for index in range(count):
                step = f"round {index + 1} of {count}"
                with console.status(f"{step}: CPU per process at concurrency {levels[-1]}"):
                    runs = saturation_runs(pa, cfg, input_file, levels[-1], served)
                with console.status(f"{step}: in-process serving, {cfg.workers} workers"):
                    in_process = in_process_throughput(
                        cfg.repo, version, calls, cfg.workers, cfg.measurement_ms / 1000 * 2,
                        native=native,
                    )  # fmt: skip
                rounds.append({"runs": runs, "in_process": in_process})
        median = median_round(rounds)
        in_process = median["in_process"] if median else None
        args = analyzer_args(cfg, cfg.triton, input_file, cfg.concurrency, cfg.measurement_ms)
        args += ["-f", f"{inside}/perf.csv"]
        command = pa.command(args)
        console.print(f"[bold]perf_analyzer[/] ({pa.where}): {shlex.join(command)}", soft_wrap=True)
        with console.status(f"perf_analyzer, concurrency {cfg.concurrency}"):
            before, own = CpuSnapshot.take(served_roles), own_cpu_seconds()
            proc = subprocess.run(command, capture_output=True, text=True, timeout=60 * 30)
            after, own = CpuSnapshot.take(served_roles), own_cpu_seconds() - own
        sweep_other = other_cores(served_roles, before, after, own)
        if proc.returncode != 0 or not (Path(scratch) / "perf.csv").exists():
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
            raise PerfError(f"perf_analyzer failed (exit {proc.returncode}):\n{tail}")
        shutil.copy(Path(scratch) / "perf.csv", cfg.out_dir / "perf_analyzer.csv")
        (cfg.out_dir / "perf_analyzer.log").write_text(proc.stdout)
    gateway_rows, gateway_note = _gateway_runs(cfg, calls, levels, console)
    run = {"perf_analyzer": {"where": pa.where, "command": command}, "gateway": gateway_note}
    (cfg.out_dir / "perf_gateway.json").write_text(
        json.dumps({**run, "rows": gateway_rows}, indent=2)
    )
    triton_rows = parse_csv(cfg.out_dir / "perf_analyzer.csv", cfg.candidates)
    data = {
        "model": cfg.model,
        "triton": cfg.triton,
        "data": str(cfg.data),
        "requests": cfg.requests,
        "candidates": cfg.candidates,
        "synthetic_long_user": cfg.synthetic_long_user,
        "measurement_ms": cfg.measurement_ms,
        **run,
        "triton_rows": triton_rows,
        "gateway_rows": gateway_rows,
        "in_process": in_process,
        "saturation_rounds": rounds,
        "sweep_other_cores": sweep_other,
        "goal_share": cfg.goal_share,
    }
    record = Record(
        title="Serving latency: perf_analyzer on Triton vs `seminar load` through the gateway",
        header=header,
        setup=setup_lines(data),
        body=markdown(triton_rows, gateway_rows, in_process, cfg.goal_share, sweep_other)
        + saturation_markdown(rounds, cfg.goal_share),
        data=data,
    )
    paths = write_record(
        record, cfg.out_dir / "perf", figure=lambda path: _plot(triton_rows, gateway_rows, path)
    )
    console.print("wrote " + ", ".join(str(path) for path in paths))
    return record.markdown()


def _gateway_runs(
    cfg: PerfConfig, calls: list[RankCall], levels: list[int], console
) -> tuple[list[dict], str]:
    """`seminar load` at each concurrency through cfg.gateway, or through a gateway we start."""
    from seminar.clients.load import LoadConfig, run_load

    def measure(address: str) -> list[dict]:
        rows = []
        for c in levels:
            with console.status(f"seminar load through the gateway, concurrency {c}"):
                load = LoadConfig(
                    duration_s=cfg.measurement_ms / 1000 * 2, concurrency=c, warmup_s=0.5
                )
                result = asyncio.run(run_load(address, calls, load))
            p = result.percentiles_ms()
            rows.append({"concurrency": c, "rps": result.throughput, **p, "codes": result.codes()})
        return rows

    if cfg.gateway is not None:
        return measure(cfg.gateway), f"the running gateway at {cfg.gateway}"
    from seminar.clients.config import Arm, ExperimentConfig, write_config
    from seminar.clients.process import GatewayProcess

    version = _newest_version(cfg.triton, cfg.model)
    config = ExperimentConfig(salt="perf", arms=(Arm("perf", cfg.model, version, 1),))
    with tempfile.TemporaryDirectory(prefix="seminar-perf-gw-") as tmp:
        path = Path(tmp) / "ab.yaml"
        write_config(config, path)
        with GatewayProcess(
            path, cfg.triton, catalog=cfg.data, log_path=Path(tmp) / "gw.log"
        ) as gw:
            rows = measure(gw.address)
    return rows, f"a gateway started for this run (one arm: {cfg.model}:{version})"


def _in_process_worker(
    repo: Path, version: int, calls: list[RankCall], seconds: float, results: Any, native: bool
) -> None:
    """One worker process: load the version in-process, score the calls round robin for
    `seconds` (after a warm-up pass), put (requests, seconds, CPU seconds, busy cores and idle
    cores of the machine meanwhile) on `results`. `native`: the fused step in C++
    (seminar.serving.native), else the Python pipeline."""

    import torch

    from seminar.serving.inprocess import InProcessPipeline

    torch.set_num_threads(1)  # like one Triton model instance
    if native:
        from seminar.serving.native.fused_step import NativeFusedStep

        pipeline = NativeFusedStep.from_repo(repo, version)
    else:
        pipeline = InProcessPipeline.from_repo(repo, version)
    for call in calls:
        pipeline.score(int(call.user_id), call.query, call.candidate_ids)
    busy, idle = machine_cpu_seconds()
    done, started, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        call = calls[done % len(calls)]
        pipeline.score(int(call.user_id), call.query, call.candidate_ids)
        done += 1
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    busy_after, idle_after = machine_cpu_seconds()
    results.put((done, elapsed, cpu, (busy_after - busy) / elapsed, (idle_after - idle) / elapsed))


def in_process_throughput(
    repo: Path,
    version: int,
    calls: list[RankCall],
    workers: int,
    seconds: float,
    native: bool = False,
) -> dict[str, float]:
    """Requests/s of `workers` in-process worker processes serving `calls` at once (`native`:
    the C++ fused step)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no torch state forked into the workers
    results = context.Queue()
    processes = [
        context.Process(
            target=_in_process_worker, args=(repo, version, calls, seconds, results, native)
        )
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    counted = [results.get(timeout=seconds + 300) for _ in processes]
    for process in processes:
        process.join()
    if any(process.exitcode for process in processes):
        raise PerfError(
            f"an in-process worker failed (exit codes {[p.exitcode for p in processes]})"
        )
    rps = sum(done / elapsed for done, elapsed, *_ in counted)
    cpu_ms = 1000 * sum(entry[2] for entry in counted) / sum(entry[0] for entry in counted)
    worker_cores = sum(cpu / elapsed for _, elapsed, cpu, *_ in counted)
    return {
        "workers": workers,
        "native": native,
        "version": version,
        "seconds": seconds,
        "rps": rps,
        "cpu_ms_per_request": cpu_ms,
        # What the rest of the machine did meanwhile (each worker saw about the same window).
        "other_cores": max(0.0, sum(entry[3] for entry in counted) / workers - worker_cores),
        "idle_cores": sum(entry[4] for entry in counted) / workers,
    }


# perf_analyzer runs this long before the CPU window opens: its connections, the first batches.
SATURATION_WARMUP_S = 2.0


def saturation_runs(
    pa: PerfAnalyzer, cfg: PerfConfig, input_file: str, concurrency: int, served: Any
) -> list[dict[str, Any]]:
    """CPU per process at `concurrency` through cfg.triton and, when `seminar serve`'s proxy
    listens there, at tritonserver's own gRPC port too; [] when cfg.triton is not served by a
    tritonserver on this machine (`served` is None: nothing to read in /proc)."""
    if served is None:
        return []
    runs = [saturation_run(pa, cfg, input_file, concurrency, served, cfg.triton)]
    direct = served.triton_address()
    if direct is not None:
        runs.append(saturation_run(pa, cfg, input_file, concurrency, served, direct))
    return runs


def saturation_run(
    pa: PerfAnalyzer,
    cfg: PerfConfig,
    input_file: str,
    concurrency: int,
    served: Any,
    address: str,
) -> dict[str, Any]:
    """perf_analyzer at `address` and fixed `concurrency` for cfg's measurement window x 2,
    with every process of `served` (bench.served_cpu.ServedPath) read from /proc around the
    window, and the ensemble's requests counted by Triton itself over the same window."""
    seconds = cfg.measurement_ms / 1000 * 2
    # Long enough never to end on its own: it is stopped once the window closed.
    longer_ms = int(1000 * (SATURATION_WARMUP_S + seconds) * 10)
    command = pa.command(
        analyzer_args(cfg, address, input_file, f"{concurrency}:{concurrency}", longer_ms)
    )
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(SATURATION_WARMUP_S)
        roles = [
            Role(f"perf_analyzer (the client, {concurrency} in flight)", CLIENT, (process.pid,))
        ]
        roles += served.processes(_ensemble_steps(address, cfg.model))
        before, count_before = CpuSnapshot.take(roles), _requests_served(address, cfg.model)
        time.sleep(seconds)
        after, count_after = CpuSnapshot.take(roles), _requests_served(address, cfg.model)
        if process.poll() is not None:
            raise PerfError(
                f"perf_analyzer at {address} ended early (exit {process.returncode}): "
                + process.stderr.read().decode(errors="replace")[-2000:]
            )
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    requests = count_after - count_before
    if requests <= 0:
        raise PerfError(f"Triton at {address} counted no {cfg.model} request in {seconds:g} s")
    return {
        "address": address,
        "proxied": address == served.address and served.proxied,
        "concurrency": concurrency,
        "seconds": after.wall - before.wall,
        "requests": requests,
        "rps": requests / (after.wall - before.wall),
        "rows": cpu_table(roles, before, after, requests),
    }


def _ensemble_steps(address: str, model: str) -> tuple[str, ...]:
    """The models an ensemble schedules (the model itself when it is not an ensemble)."""
    import tritonclient.grpc as grpcclient

    config = grpcclient.InferenceServerClient(address).get_model_config(model).config
    steps = tuple(step.model_name for step in config.ensemble_scheduling.step)
    return steps or (model,)


def _requests_served(address: str, model: str) -> int:
    """Successful requests of `model` (every version) Triton has counted so far."""
    import tritonclient.grpc as grpcclient

    stats = grpcclient.InferenceServerClient(address).get_inference_statistics(model_name=model)
    return sum(int(entry.inference_stats.success.count) for entry in stats.model_stats)


def served_share(one_round: dict[str, Any], run: int = 0) -> float:
    """Requests/s of a round's served run number `run` over its in-process workers'."""
    return one_round["runs"][run]["rps"] / one_round["in_process"]["rps"]


def _lower_middle(ordered: list[Any]) -> Any:
    """The median of a sorted list; the lower middle one of an even count."""
    return ordered[(len(ordered) - 1) // 2]


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The round whose share at the address the command was given (its first run) is the
    median; the only round where none measured a served path (run_perf then runs one)."""
    if not rounds:
        return None
    if not rounds[0]["runs"]:
        return rounds[0]
    return _lower_middle(sorted(rounds, key=served_share))


def rounds_markdown(rounds: list[dict[str, Any]], goal_share: float) -> list[str]:
    """Every round's throughput shares, and the median share of each served address."""
    first = rounds[0]["runs"]
    columns = ["round", "in-process req/s"]
    for run in first:
        where = "proxy" if run["proxied"] else "Triton"
        columns += [f"{where} {run['address']}: req/s", "share"]
    cells = []
    for number, one in enumerate(rounds, 1):
        line = [str(number), f"{one['in_process']['rps']:.1f}"]
        for index, run in enumerate(one["runs"]):
            line += [f"{run['rps']:.1f}", f"{served_share(one, index):.2f}×"]
        cells.append(tuple(line))
    lines = [
        "",
        f"## Throughput at saturation, {len(rounds)} rounds",
        "",
        "Each round: perf_analyzer at the top concurrency through every served address, then "
        "the in-process workers, back to back; share = served req/s / in-process req/s of the "
        "same round.",
        "",
        markdown_table(tuple(columns), cells, align="r" * len(columns)),
        "",
    ]
    for index, run in enumerate(first):
        shares = sorted(served_share(one, index) for one in rounds)
        middle = _lower_middle(shares)
        lines.append(
            f"- At {run['address']}"
            + (" (`seminar serve`'s gRPC proxy)" if run["proxied"] else " (tritonserver)")
            + f": median share {middle:.2f}× over {len(shares)} rounds (from {shares[0]:.2f}× "
            f"to {shares[-1]:.2f}×); goal >= {goal_share:g}×: "
            f"{'met' if middle >= goal_share else 'missed'} on the median."
        )
    return lines


def saturation_markdown(rounds: list[dict[str, Any]], goal_share: float = 0.8) -> str:
    """Every round's shares, then the CPU of every process per request in the median round,
    and what they say."""
    median = median_round(rounds)
    if median is None or not median["runs"]:
        return ""
    runs, in_process = median["runs"], median["in_process"]
    concurrency, seconds = runs[0]["concurrency"], runs[0]["seconds"]
    columns = ["process"]
    for run in runs:
        where = "proxy" if run["proxied"] else "Triton"
        columns += [f"{where} {run['address']}: cores", "CPU ms / request"]
    cells = []
    for row in runs[0]["rows"]:
        line = [row["process"]]
        for run in runs:
            match = [r for r in run["rows"] if r["process"] == row["process"]]
            line += (
                [f"{match[0]['cores']:.2f}", f"{match[0]['ms_per_request']:.2f}"]
                if match
                else ["-", "-"]
            )
        cells.append(tuple(line))
    cells.append(("requests/s", *(x for run in runs for x in (f"{run['rps']:.1f}", ""))))
    if in_process:
        cells.append(
            (
                f"in-process worker (for comparison; {in_process['workers']:g} of them served "
                f"{in_process['rps']:.1f} req/s right after, while other processes took "
                f"{in_process.get('other_cores', 0):.2f} cores and "
                f"{in_process.get('idle_cores', 0):.2f} stayed idle)",
                *(x for _ in runs for x in ("", f"{in_process['cpu_ms_per_request']:.2f}")),
            )
        )
    lines = [
        *rounds_markdown(rounds, goal_share),
        "",
        f"## CPU per process at saturation, round {rounds.index(median) + 1} (the median; "
        f"perf_analyzer at concurrency {concurrency}, {seconds:.1f} s, read from /proc)",
        "",
        "cores = CPU seconds / wall seconds; CPU ms / request = CPU seconds / the requests "
        "Triton counted in the same window.",
        "",
        markdown_table(tuple(columns), cells, align="l" + "r" * (len(columns) - 1)),
        "",
    ]
    for run in runs:

        def ms(*kinds: str, rows: list = run["rows"]) -> float:
            return sum(r["ms_per_request"] for r in rows if r["kind"] in kinds)

        served = sum(
            r["ms_per_request"] for r in run["rows"] if r["kind"] not in (OTHER, IDLE, CLIENT)
        )
        idle = sum(r["cores"] for r in run["rows"] if r["kind"] == IDLE)
        sentence = (
            f"- At {run['address']}"
            + (" (`seminar serve`'s gRPC proxy in front of tritonserver)" if run["proxied"] else "")
            + f": {run['rps']:.1f} req/s; the served path took {served:.2f} ms of CPU per "
            f"request, of which the stubs {ms(STUBS):.2f}"
            + (f" and the proxy {ms(PROXY):.2f}" if run["proxied"] else "")
            + f"; the client {ms(CLIENT):.2f}; {idle:.2f} cores stayed idle"
        )
        if in_process:
            share = run["rps"] / in_process["rps"]
            inproc_ms = in_process["cpu_ms_per_request"]
            sentence += (
                f". This throughput is {share:.2f}× the in-process workers' (goal >= "
                f"{goal_share:g}×: {'met' if share >= goal_share else 'missed'}). Per request, "
                f"an in-process worker spends {inproc_ms:.2f} ms of CPU, {inproc_ms / (served + ms(CLIENT)):.2f}× "
                "what the served path and the client spend together (the throughput share "
                "the two cores would give with nothing else running on them)"
            )
            budget, spent = inproc_ms / goal_share, served + ms(CLIENT)
            if spent > budget:
                sentence += (
                    f"; at {goal_share:g}× they may spend {budget:.2f} ms, {spent - budget:.2f} "
                    "ms less than here"
                )
        lines.append(sentence + ".")
    return "\n".join(lines) + "\n"


def _newest_version(triton: str, model: str) -> int:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    try:
        meta = grpcclient.InferenceServerClient(triton).get_model_metadata(model)
    except InferenceServerException as err:
        raise PerfError(f"Triton at {triton} has no model {model!r}: {err.message()}") from err
    return max(int(v) for v in meta.versions)


def setup_lines(data: dict[str, Any]) -> tuple[str, ...]:
    long_user = data["synthetic_long_user"]
    return (
        f"model: `{data['model']}` at {data['triton']}; requests: {data['requests']} real users "
        f"of `{data['data']}` with their real test candidate sets, {data['candidates']} "
        "candidates (rows) per request"
        + (f"; plus one synthetic long user (id {long_user})" if long_user else ""),
        f"perf_analyzer ({data['perf_analyzer']['where']}):\n\n"
        f"      {shlex.join(data['perf_analyzer']['command'])}\n",
        f"gateway: {data['gateway']}; closed loop, {data['measurement_ms'] * 2 / 1000:g} s per "
        "concurrency, same requests",
        "latencies in ms per request (one user, all candidates); req/s = perf_analyzer "
        "inferences/s / candidates. Ratio = gateway / Triton (the anchor is Triton)",
    )


def markdown(
    triton_rows: list[dict],
    gateway_rows: list[dict],
    in_process: dict[str, float] | None = None,
    goal_share: float = 0.8,
    sweep_other: float | None = None,
) -> str:
    """The table of both systems per concurrency, and what their ratios say; `sweep_other`:
    the cores other processes on the machine took during perf_analyzer's sweep."""
    gateway = {row["concurrency"]: row for row in gateway_rows}
    cells = []
    for t in triton_rows:
        triton_cells = (
            t["concurrency"], f"{t['rps']:.1f}", f"{t['p50']:.2f}", f"{t['p90']:.2f}",
            f"{t['p99']:.2f}",
        )  # fmt: skip
        g = gateway.get(t["concurrency"])
        if g is None:
            cells.append((*triton_cells, *("-",) * 7))
            continue
        errors = ", ".join(f"{k}={v}" for k, v in g["codes"].items() if k != "OK") or "none"
        cells.append(
            (
                *triton_cells,
                f"{g['rps']:.1f}",
                f"{g['p50']:.2f}",
                f"{g['p90']:.2f}",
                f"{g['p99']:.2f}",
                ratio(g["p50"], t["p50"]),
                ratio(g["p99"], t["p99"]),
                errors,
            )
        )
    columns = (
        "concurrency", "Triton req/s", "Triton p50", "Triton p90", "Triton p99", "gateway req/s",
        "gateway p50", "gateway p90", "gateway p99", "p50 ratio", "p99 ratio", "gateway errors",
    )  # fmt: skip
    lines = [markdown_table(columns, cells, align="r" * 11 + "l"), ""]
    lines += findings(triton_rows, gateway_rows)
    if sweep_other is not None:
        lines.append(
            f"- During perf_analyzer's sweep, processes other than the served path, "
            f"perf_analyzer and this command took {sweep_other:.2f} cores on average."
        )
    if in_process and triton_rows:
        best = max(triton_rows, key=lambda row: row["rps"])
        share = best["rps"] / in_process["rps"]
        lines.append(
            f"- In-process serving of the same requests (version {in_process['version']:g}, no "
            f"Triton, {_in_process_step(in_process)}), {in_process['workers']:g} worker "
            "processes of one thread each, in the "
            f"median round below: {in_process['rps']:.1f} req/s. Triton's highest throughput "
            f"is {share:.2f}× of it (goal >= {goal_share:g}×: "
            f"{'met' if share >= goal_share else 'missed'})."
        )
    return "\n".join(lines) + "\n"


def _in_process_step(in_process: dict) -> str:
    """Which computation the in-process workers ran, as the report names it."""
    return "the fused step in C++" if in_process.get("native") else "the Python pipeline"


def findings(triton_rows: list[dict], gateway_rows: list[dict]) -> list[str]:
    lines = []
    if triton_rows:
        best = max(triton_rows, key=lambda row: row["rps"])
        lines.append(
            f"- Triton's highest throughput: {best['rps']:.1f} req/s at concurrency "
            f"{best['concurrency']}."
        )
    triton = {row["concurrency"]: row for row in triton_rows}
    paired = [(triton[g["concurrency"]], g) for g in gateway_rows if g["concurrency"] in triton]
    if paired:
        best = max(gateway_rows, key=lambda row: row["rps"])
        ratios = {t["concurrency"]: g["p50"] / t["p50"] for t, g in paired}
        low, high = min(ratios, key=ratios.get), max(ratios, key=ratios.get)
        slower = sum(1 for value in ratios.values() if value > 1)
        erring = [g["concurrency"] for _, g in paired if set(g["codes"]) - {"OK"}]
        lines += [
            f"- The gateway's highest throughput: {best['rps']:.1f} req/s at concurrency "
            f"{best['concurrency']}.",
            f"- Gateway p50 / Triton p50 runs from {ratios[low]:.2f}× (concurrency {low}) to "
            f"{ratios[high]:.2f}× (concurrency {high}); the gateway's p50 is the higher at "
            f"{slower} of {len(ratios)} concurrencies.",
            "- Gateway errors at concurrency " + ", ".join(map(str, erring)) + "."
            if erring
            else "- The gateway answered every call OK.",
        ]
    return lines


def _plot(triton_rows: list[dict], gateway_rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(11, 4))
    for rows, label, marker in (
        (triton_rows, "Triton (perf_analyzer)", "o"),
        (gateway_rows, "gateway (seminar load)", "s"),
    ):
        if not rows:
            continue
        c = [r["concurrency"] for r in rows]
        ax_lat.plot(c, [r["p50"] for r in rows], marker=marker, label=f"{label} p50")
        ax_lat.plot(
            c, [r["p99"] for r in rows], marker=marker, linestyle="--", label=f"{label} p99"
        )
        ax_tp.plot([r["rps"] for r in rows], [r["p50"] for r in rows], marker=marker, label=label)
    ax_lat.set(xlabel="concurrency", ylabel="latency (ms)", title="latency vs concurrency")
    ax_tp.set(
        xlabel="throughput (requests/s)", ylabel="p50 latency (ms)", title="latency vs throughput"
    )
    for ax in (ax_lat, ax_tp):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
