"""`seminar bench serving`: latency of the `seminar` ensemble on a real tritonserver.

Rows: one user x C candidates (C = 100) at three history lengths: a real MovieLens user with
about 100 events, and SYNTHETIC users with 1k and 10k events appended to the dataset
(seminar.serving.long_users). Per row, measured in the same run:

- floor: a trivial Python-backend model with the ensemble's inputs on the same server
  (what Triton + gRPC + the Python backend cost before any model work), the anchor;
- ensemble: `seminar`, sequential and at concurrency 4 (threads, one gRPC client each);
- in-process: the same artifacts and library calls without Triton (seminar.serving.inprocess),
  single-threaded like each Triton model instance.

Where the time goes comes from Triton's own per-model statistics (queue and compute time per
request, diffed around each row). The markdown table goes to stdout and reports/serving.md,
everything to reports/serving.json.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from seminar import contract
from seminar.provenance import cpu_model


@dataclass(frozen=True)
class ServingBenchConfig:
    """Every default of the serving benchmark."""

    candidates: int = 100
    requests: int = 200  # timed requests per (row, mode)
    warmup: int = 20
    concurrency: int = 4
    movielens_length: int = 100  # pick the real user whose history is closest to this
    synthetic_lengths: tuple[int, ...] = (1_000, 10_000)
    seed: int = 0
    version: int = 1

    def __post_init__(self) -> None:
        for name in ("candidates", "requests", "concurrency", "movielens_length", "version"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup: must be >= 0, got {self.warmup}")
        if not self.synthetic_lengths or min(self.synthetic_lengths) < 1:
            raise ValueError(
                f"synthetic_lengths: need positive lengths, got {self.synthetic_lengths}"
            )
        if self.requests % self.concurrency:
            raise ValueError(
                f"requests: {self.requests} must be a multiple of concurrency {self.concurrency}"
            )


@dataclass
class Timing:
    """Latencies of one (row, system, mode) cell, in milliseconds."""

    ms: list[float] = field(repr=False)
    wall_s: float

    def pct(self, q: float) -> float:
        return float(np.percentile(self.ms, q))

    def summary(self) -> dict:
        return {
            "p50_ms": self.pct(50),
            "p90_ms": self.pct(90),
            "p99_ms": self.pct(99),
            "mean_ms": float(np.mean(self.ms)),
            "requests": len(self.ms),
            "throughput_rps": len(self.ms) / self.wall_s if self.wall_s else 0.0,
        }


def time_calls(
    call: Callable[[], object], requests: int, warmup: int, concurrency: int = 1
) -> Timing:
    """Latency of `call` (which makes one request) after `warmup` untimed calls.

    concurrency > 1: that many threads each make requests / concurrency calls back to back;
    `call` must be safe to run from several threads (a client per thread: see `per_thread`).
    """
    for _ in range(warmup):
        call()

    def worker(n: int) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            call()
            out.append((time.perf_counter() - t0) * 1e3)
        return out

    started = time.perf_counter()
    if concurrency == 1:
        ms = worker(requests)
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            parts = list(pool.map(worker, [requests // concurrency] * concurrency))
        ms = [x for part in parts for x in part]
    return Timing(ms=ms, wall_s=time.perf_counter() - started)


def machine() -> dict:
    import torch

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch_threads_in_process": torch.get_num_threads(),
        "triton_model_threads": os.environ.get("OMP_NUM_THREADS", "1"),
    }


def _stats(server) -> dict[str, dict[str, float]]:
    """Cumulative (count, ns) per model and phase from Triton's statistics extension."""
    out = {}
    for m in server.statistics().get("model_stats", []):
        inf = m["inference_stats"]
        out[m["name"]] = {
            "requests": float(inf["success"]["count"]),
            "executions": float(m.get("execution_count", 0)),
            **{
                phase: float(inf[phase]["ns"])
                for phase in ("queue", "compute_input", "compute_infer", "compute_output")
            },
        }
    return out


def _breakdown(before: dict, after: dict, models: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Per model: ms per request in each phase between two `_stats` snapshots."""
    out = {}
    for name in models:
        a, b = after.get(name), before.get(name, {})
        if not a:
            continue
        n = a["requests"] - b.get("requests", 0.0)
        if n <= 0:
            continue
        out[name] = {
            phase: (a[phase] - b.get(phase, 0.0)) / n / 1e6
            for phase in ("queue", "compute_input", "compute_infer", "compute_output")
        }
        ex = a["executions"] - b.get("executions", 0.0)
        out[name]["requests_per_execution"] = n / ex if ex > 0 else 0.0
    return out


def prepare_repo(
    run: Path, data: Path, work: Path, cfg: ServingBenchConfig, progress
) -> tuple[Path, Path, tuple[int, ...]]:
    """The bench's own data (real + SYNTHETIC long users) and repository, built from `run`.

    Reused when `work` already holds a complete build from the same inputs.
    """
    from seminar.serving.floor import write_floor_model
    from seminar.serving.long_users import append_synthetic_users

    data_long = work / "data"
    repo = work / "model_repository"
    stamp = work / "inputs.json"
    inputs = {
        "run": str(run.resolve()),
        "data": str(data.resolve()),
        "lengths": list(cfg.synthetic_lengths),
        "seed": cfg.seed,
        "checkpoint_mtime": (run / "checkpoint.safetensors").stat().st_mtime,
    }
    built = contract.build_info_path(repo, cfg.version)
    if stamp.is_file() and json.loads(stamp.read_text()) == inputs and built.is_file():
        progress(f"reusing {repo}")
        meta = json.loads((data_long / "meta.json").read_text())
        return repo, data_long, tuple(meta["synthetic_users"]["user_ids"])
    if work.exists() and any(work.iterdir()) and not stamp.is_file():
        raise RuntimeError(f"--work {work} is not empty and is not a previous bench folder")
    shutil.rmtree(work, ignore_errors=True)  # a stale bench folder of ours
    work.mkdir(parents=True)
    progress(f"appending SYNTHETIC users of {list(cfg.synthetic_lengths)} events to {data}")
    long_users = append_synthetic_users(data, data_long, cfg.synthetic_lengths, seed=cfg.seed)
    progress(f"building {repo} from {run} (seminar build)")
    cmd = [
        sys.executable, "-m", "seminar.cli", "build", "--run", str(run), "--data", str(data_long),
        "--repo", str(repo), "--version", str(cfg.version), "--no-polygraphy",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"seminar build failed:\n{result.stderr[-3000:]}")
    write_floor_model(repo)
    stamp.write_text(json.dumps(inputs))
    return repo, data_long, long_users.user_ids


def _measure_row(server, client, pipeline, uid, candidates, cfg, composing) -> dict:
    """Floor, ensemble (sequential, concurrent), in-process and Triton's breakdown for one user."""
    from seminar.serving.client import request_inputs
    from seminar.serving.floor import FLOOR_MODEL

    inputs = request_inputs(uid, "", candidates)
    served = (
        client().infer(contract.ENSEMBLE_MODEL, inputs).as_numpy(contract.OUTPUT_SCORE).reshape(-1)
    )
    local = pipeline.score(uid, "", candidates)
    cell: dict = {"max_abs_diff": float(np.abs(served - local).max())}
    cell["floor"] = time_calls(
        lambda: client().infer(FLOOR_MODEL, inputs), cfg.requests, cfg.warmup
    ).summary()
    before = _stats(server)
    cell["ensemble"] = time_calls(
        lambda: client().infer(contract.ENSEMBLE_MODEL, inputs), cfg.requests, cfg.warmup
    ).summary()
    cell["breakdown"] = _breakdown(before, _stats(server), composing)
    cell["ensemble_c4"] = time_calls(
        lambda: client().infer(contract.ENSEMBLE_MODEL, inputs),
        cfg.requests,
        cfg.warmup,
        concurrency=cfg.concurrency,
    ).summary()
    cell["in_process"] = time_calls(
        lambda: pipeline.score(uid, "", candidates), cfg.requests, cfg.warmup
    ).summary()
    return cell


def run_bench(
    run: Path, data: Path, work: Path, cfg: ServingBenchConfig, command: str, progress=print
) -> dict:
    """Measure every row; returns the report dict (see `markdown`)."""
    import torch
    import tritonclient.grpc as grpcclient

    from seminar.data.dataset import PreparedDataset
    from seminar.serving.floor import FLOOR_MODEL
    from seminar.serving.inprocess import InProcessPipeline
    from seminar.serving.triton import TritonConfig, TritonServer

    torch.set_num_threads(1)  # like each Triton model instance (OMP_NUM_THREADS=1)
    repo, data_long, long_ids = prepare_repo(run, data, work, cfg, progress)
    ds = PreparedDataset.load(data_long)
    lengths = np.diff(ds.seq_offsets)
    real = np.flatnonzero(~np.isin(ds.user_ids, long_ids))
    ml_user = int(real[np.argmin(np.abs(lengths[real] - cfg.movielens_length))])
    rows = [("MovieLens", int(ds.user_ids[ml_user]), int(lengths[ml_user]))]
    rows += [("synthetic", uid, int(lengths[ds.user_index(uid)])) for uid in long_ids]
    rng = np.random.default_rng(cfg.seed)
    candidates = rng.choice(ds.item_ids, size=cfg.candidates, replace=False).astype(np.int64)

    pipeline = InProcessPipeline.from_repo(repo, cfg.version)
    composing = (
        contract.FEATURES_MODEL,
        *contract.EXPORTED_MODELS[:2],
        contract.PQ_RETRIEVAL_MODEL,
        contract.RANKING_HEAD_MODEL,
    )
    results = []
    config = TritonConfig(repo=repo, wait_models=(contract.ENSEMBLE_MODEL, FLOOR_MODEL))
    with TritonServer(config) as server:
        clients: dict[int, object] = {}

        def client():  # one gRPC client per thread
            key = threading.get_ident()
            if key not in clients:
                clients[key] = grpcclient.InferenceServerClient(server.grpc_url)
            return clients[key]

        for source, uid, length in rows:
            cell = {"source": source, "user_id": uid, "length": length}
            cell |= _measure_row(server, client, pipeline, uid, candidates, cfg, composing)
            progress(
                f"L = {length:,} ({source} user {uid}): ensemble p50 "
                f"{cell['ensemble']['p50_ms']:.2f} ms, in-process {cell['in_process']['p50_ms']:.2f} ms, "
                f"served vs in-process max |diff| {cell['max_abs_diff']:.1e}"
            )
            results.append(cell)
    return {
        "command": command,
        "machine": machine(),
        "config": asdict(cfg),
        "repo": str(repo),
        "rows": results,
    }


def markdown(report: dict) -> str:
    cfg, m = report["config"], report["machine"]
    lines = [
        "# Serving latency: the `seminar` ensemble on a real tritonserver",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}, "
        f"load average at start {m['load_avg_1m']:.1f}; each Triton model instance and the "
        f"in-process run use 1 thread. Seed {cfg['seed']}. Command: `{report['command']}`.",
        f"One request = 1 user x {cfg['candidates']} candidates (recommendation request), "
        f"{cfg['requests']} timed requests after {cfg['warmup']} warm-up per cell; "
        f"c{cfg['concurrency']} = {cfg['concurrency']} client threads. SYNTHETIC rows are users "
        "with seeded random MovieLens events appended to the dataset.",
        "",
        "| L (history) | system | p50 ms | p90 ms | p99 ms | req/s | p50 / in-process |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        label = f"{row['length']:,} ({row['source']})"
        base = row["in_process"]["p50_ms"]
        for key, name in (
            ("floor", "floor: trivial Python model (anchor)"),
            ("in_process", "in-process, no Triton"),
            ("ensemble", "ensemble, sequential"),
            ("ensemble_c4", f"ensemble, concurrency {cfg['concurrency']}"),
        ):
            s = row[key]
            lines.append(
                f"| {label} | {name} | {s['p50_ms']:.2f} | {s['p90_ms']:.2f} | {s['p99_ms']:.2f} "
                f"| {s['throughput_rps']:.0f} | {s['p50_ms'] / base:.2f}x |"
            )
    lines += [
        "",
        "## Where the time goes (Triton per-model statistics, sequential, ms per request)",
        "",
    ]
    lines += [
        "| L | model | queue | compute input | compute infer | compute output |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        for name, b in row["breakdown"].items():
            lines.append(
                f"| {row['length']:,} | {name} | {b['queue']:.3f} | {b['compute_input']:.3f} "
                f"| {b['compute_infer']:.3f} | {b['compute_output']:.3f} |"
            )
    lines.append("")
    for row in report["rows"]:
        queue = sum(b["queue"] for b in row["breakdown"].values())
        infer = sum(b["compute_infer"] for b in row["breakdown"].values())
        lines.append(
            f"- L = {row['length']:,}: of the ensemble's mean {row['ensemble']['mean_ms']:.2f} ms, "
            f"{queue:.2f} ms is queueing in the {len(row['breakdown'])} steps' dynamic batchers "
            f"(max_queue_delay) and {infer:.2f} ms is compute (Triton's compute_infer, which "
            "includes each Python model's IPC with its stub process)."
        )
    last = report["rows"][-1]
    ratio = last["ensemble"]["p50_ms"] / last["in_process"]["p50_ms"]
    lines += [
        "",
        f"Goal: at L = {last['length']:,} the ensemble's p50 <= 1.5x the in-process time: "
        f"{ratio:.2f}x ({'met' if ratio <= 1.5 else 'missed; see the per-model statistics'}).",
        "Served vs in-process scores, max |diff| per row: "
        + ", ".join(f"{r['max_abs_diff']:.1e}" for r in report["rows"])
        + ".",
    ]
    return "\n".join(lines) + "\n"
