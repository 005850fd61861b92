"""`seminar bench serving`: latency of the `seminar` ensemble on a real tritonserver.

Rows: one user x C candidates (C = 100) at three history lengths: a real user of the prepared
dataset with about 100 events, and SYNTHETIC users with 1k and 10k events appended to it
(seminar.serving.long_users). Per row, measured in the same run:

- floor: a trivial Python-backend model with the ensemble's inputs on the same server
  (what Triton + gRPC + the Python backend cost before any model work), the anchor;
- ensemble, six steps: version 1 built with `--graph steps` (`seminar_v1`: each step its own
  Python-backend model), sequential and at concurrency 4 (threads, one gRPC client each);
- ensemble, fused: version 2 built from the same run with `--graph fused` (`seminar_v2`: one
  Python step, `pipeline`, runs the six steps' work in one process), the same cells;
- with a query: the same request with a query never seen in training, so the difference to
  the row without it is what the query's MiniLM embedding (`query_text`) costs;
- in-process: the same artifacts and library calls without Triton (seminar.serving.inprocess),
  single-threaded like each Triton model instance.

The sequential cells (floor, ensemble, in-process) are interleaved request by request, so load
from other jobs hits them alike. Where the time goes comes from Triton's own per-model
statistics (queue and compute time per request, diffed around each row); the bytes each
request moves through the Python backend's IPC, per step, follow from the tensors' shapes.
The record goes to OUT.md and OUT.json (bench/harness.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seminar import contract
from seminar.bench.harness import (
    Estimate,
    Header,
    Record,
    comparison,
    dataset_name,
    markdown_table,
    ratio,
    time_concurrent,
    time_interleaved,
)

# The serving goal: at the longest history, the ensemble's p50 at most this multiple of the
# same computation in-process (what Triton, gRPC and the Python backend may add).
GOAL_RATIO = 1.5
# The fused graph's goal at the shortest history, where the plumbing weighs most.
FUSED_GOAL_RATIO = 1.3
PHASES = ("queue", "compute_input", "compute_infer", "compute_output")  # Triton's statistics


@dataclass(frozen=True)
class ServingBenchConfig:
    """Every default of the serving benchmark."""

    candidates: int = 100
    requests: int = 200  # timed requests per (row, mode)
    warmup: int = 20
    concurrency: int = 4
    real_length: int = 100  # pick the real user whose history is closest to this
    synthetic_lengths: tuple[int, ...] = (1_000, 10_000)
    seed: int = 0
    version: int = 1  # the six-steps build; version + 1 is the fused build of the same run
    # The query of the search cell: never seen in training (query_text embeds it at serving
    # time); the same string every request, so the cell costs one MiniLM call per request.
    search_query: str = "a film about robots in love"

    def __post_init__(self) -> None:
        for name in ("candidates", "requests", "concurrency", "real_length", "version"):
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


def _stats(server) -> dict[str, dict[str, float]]:
    """Cumulative (count, ns) per model and phase from Triton's statistics extension."""
    out: dict[str, dict[str, float]] = {}
    for m in server.statistics().get("model_stats", []):
        inf = m["inference_stats"]
        counts = {
            "requests": float(inf["success"]["count"]),
            "executions": float(m.get("execution_count", 0)),
            **{phase: float(inf[phase]["ns"]) for phase in PHASES},
        }
        # Summed over the model's versions: each graph's requests reach one of them.
        total = out.setdefault(m["name"], dict.fromkeys(counts, 0.0))
        for key, value in counts.items():
            total[key] += value
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
        out[name] = {phase: (a[phase] - b.get(phase, 0.0)) / n / 1e6 for phase in PHASES}
        ex = a["executions"] - b.get("executions", 0.0)
        out[name]["requests_per_execution"] = n / ex if ex > 0 else 0.0
    return out


def prepare_repo(
    run: Path, data: Path, work: Path, cfg: ServingBenchConfig, progress
) -> tuple[Path, Path, tuple[int, ...]]:
    """The bench's own data (real + SYNTHETIC long users) and repository, built from `run`.

    Reused when `work` already holds a complete build from the same inputs and the same
    committed code (a build from other code would time that code; a dirty checkout rebuilds).
    """
    from seminar.provenance import git_revision
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
        "revision": git_revision(),
    }
    built = contract.build_info_path(repo, cfg.version + 1)
    committed = not inputs["revision"].endswith(("+dirty", "unknown"))
    same = stamp.is_file() and json.loads(stamp.read_text()) == inputs
    if committed and same and built.is_file():
        progress(f"reusing {repo}")
        meta = json.loads((data_long / "meta.json").read_text())
        return repo, data_long, tuple(meta["synthetic_users"]["user_ids"])
    if work.exists() and any(work.iterdir()) and not stamp.is_file():
        raise RuntimeError(f"--work {work} is not empty and is not a previous bench folder")
    shutil.rmtree(work, ignore_errors=True)  # a stale bench folder of ours
    work.mkdir(parents=True)
    progress(f"appending SYNTHETIC users of {list(cfg.synthetic_lengths)} events to {data}")
    long_users = append_synthetic_users(data, data_long, cfg.synthetic_lengths, seed=cfg.seed)
    for version, graph in (
        (cfg.version, contract.Graph.STEPS),
        (cfg.version + 1, contract.Graph.FUSED),
    ):
        progress(f"building {repo} version {version} from {run} (seminar build --graph {graph})")
        cmd = [
            sys.executable, "-m", "seminar.cli", "build", "--run", str(run), "--data",
            str(data_long), "--repo", str(repo), "--version", str(version), "--no-polygraphy",
            "--graph", graph.value,
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"seminar build failed:\n{result.stderr[-3000:]}")
    write_floor_model(repo)
    stamp.write_text(json.dumps(inputs))
    return repo, data_long, long_users.user_ids


def ipc_bytes(dims: contract.PipelineDims, rows: int, query: str) -> dict[str, int]:
    """Bytes one request of `rows` candidate rows moves through the Python backend's IPC per
    model, inputs plus outputs (a string tensor element: 4 length bytes + its UTF-8)."""
    string_element = 4 + len(query.encode("utf-8"))
    out = {}
    for name, spec in contract.model_specs(dims).items():
        total = 0
        for tensor in (*spec.inputs, *spec.outputs):
            per_row = int(np.prod(tensor.dims))
            if tensor.dtype is contract.DataType.BYTES:
                total += rows * per_row * string_element
            else:
                total += rows * per_row * tensor.dtype.numpy.itemsize
        out[name] = total
    return out


def _measure_row(server, client, pipeline, uid, candidates, cfg) -> dict:
    """Floor, both graphs (sequential, concurrent), in-process and Triton's breakdown for
    one user."""
    from seminar.serving.client import request_inputs
    from seminar.serving.floor import FLOOR_MODEL

    steps = contract.pinned_ensemble_name(cfg.version)
    fused = contract.pinned_ensemble_name(cfg.version + 1)
    inputs = request_inputs(uid, "", candidates)
    search = request_inputs(uid, cfg.search_query, candidates)
    cell: dict = {}
    for suffix, query, request in (("", "", inputs), ("_search", cfg.search_query, search)):
        local = pipeline.score(uid, query, candidates)
        for prefix, model in (("max_abs_diff", steps), ("max_abs_diff_fused", fused)):
            served = client().infer(model, request).as_numpy(contract.OUTPUT_SCORE)
            cell[prefix + suffix] = float(np.abs(served.reshape(-1) - local).max())
    before = _stats(server)
    sequential, _ = time_interleaved(
        {
            "floor": lambda: client().infer(FLOOR_MODEL, inputs),
            "ensemble": lambda: client().infer(steps, inputs),
            # the same request with a query: what the query_text step (MiniLM) adds
            "ensemble_search": lambda: client().infer(steps, search),
            "fused": lambda: client().infer(fused, inputs),
            "fused_search": lambda: client().infer(fused, search),
            "in_process": lambda: pipeline.score(uid, "", candidates),
        },
        cfg.requests,
        cfg.warmup,
    )
    # only the ensembles' requests reach the composing models: the floor is its own model
    cell["breakdown"] = _breakdown(before, _stats(server), contract.STEP_MODELS)
    cell |= {name: timing.summary() for name, timing in sequential.items()}
    for key, model in (("ensemble_c4", steps), ("fused_c4", fused)):
        cell[key] = time_concurrent(
            lambda model=model: client().infer(model, inputs),
            cfg.requests,
            cfg.warmup,
            cfg.concurrency,
        ).summary()
    return cell


def run_bench(
    run: Path,
    data: Path,
    work: Path,
    cfg: ServingBenchConfig,
    progress: Callable[[str], None] = print,
) -> Record:
    """Measure every row; returns the record (`write_record` writes it)."""
    import torch
    import tritonclient.grpc as grpcclient

    from seminar.data.dataset import PreparedDataset
    from seminar.serving.floor import FLOOR_MODEL
    from seminar.serving.inprocess import InProcessPipeline, build_info
    from seminar.serving.triton import TritonConfig, TritonServer

    torch.set_num_threads(1)  # like each Triton model instance (OMP_NUM_THREADS=1)
    header = Header.now(seeds=(cfg.seed,))
    dataset = dataset_name(data)
    repo, data_long, long_ids = prepare_repo(run, data, work, cfg, progress)
    ds = PreparedDataset.load(data_long)
    lengths = np.diff(ds.seq_offsets)
    real = np.flatnonzero(~np.isin(ds.user_ids, long_ids))
    real_user = int(real[np.argmin(np.abs(lengths[real] - cfg.real_length))])
    rows = [(dataset, int(ds.user_ids[real_user]), int(lengths[real_user]))]
    rows += [("SYNTHETIC", uid, int(lengths[ds.user_index(uid)])) for uid in long_ids]
    rng = np.random.default_rng(cfg.seed)
    candidates = rng.choice(ds.item_ids, size=cfg.candidates, replace=False).astype(np.int64)

    pipeline = InProcessPipeline.from_repo(repo, cfg.version)
    results = []
    pinned = tuple(contract.pinned_ensemble_name(v) for v in (cfg.version, cfg.version + 1))
    config = TritonConfig(repo=repo, wait_models=(*pinned, FLOOR_MODEL))
    with TritonServer(config) as server:
        clients: dict[int, object] = {}

        def client():  # one gRPC client per thread
            key = threading.get_ident()
            if key not in clients:
                clients[key] = grpcclient.InferenceServerClient(server.grpc_url)
            return clients[key]

        for source, uid, length in rows:
            cell = {"source": source, "user_id": uid, "length": length}
            cell |= _measure_row(server, client, pipeline, uid, candidates, cfg)
            progress(
                f"L = {length:,} ({source} user {uid}): six steps p50 "
                f"{cell['ensemble']['p50_ms']:.2f} ms, fused {cell['fused']['p50_ms']:.2f} ms, "
                f"in-process {cell['in_process']['p50_ms']:.2f} ms, served vs in-process max "
                f"|diff| {max(cell['max_abs_diff'], cell['max_abs_diff_fused']):.1e}"
            )
            results.append(cell)
    dims = contract.PipelineDims(**build_info(repo, cfg.version)["dims"])
    report = {
        "config": asdict(cfg),
        "dataset": dataset,
        "repo": str(repo),
        "ipc_bytes": ipc_bytes(dims, cfg.candidates, ""),
        "ipc_bytes_search": ipc_bytes(dims, cfg.candidates, cfg.search_query),
        "model_threads": int(os.environ.get("OMP_NUM_THREADS", "1")),
        "rows": results,
    }
    return Record(
        title="Serving latency: the `seminar` ensemble on a real tritonserver",
        header=header,
        setup=setup_lines(report),
        body=markdown(report),
        data=report,
    )


def setup_lines(report: dict[str, Any]) -> tuple[str, ...]:
    cfg = report["config"]
    return (
        f"each Triton model instance uses {report['model_threads']} thread(s), the in-process "
        "run 1 torch thread",
        f"one request = 1 user x {cfg['candidates']} candidates (recommendation request; the "
        f"search cell adds the query {cfg.get('search_query', '')!r}), "
        f"{cfg['requests']} timed requests after {cfg['warmup']} warm-up per cell; floor, "
        f"both graphs (without and with the query) and in-process interleaved; "
        f"c{cfg['concurrency']} = {cfg['concurrency']} client threads",
        f"data: {report['dataset']}; SYNTHETIC rows are users with seeded random events of its "
        "catalogue appended to it",
    )


SYSTEMS = (
    ("floor", "floor: trivial Python model (anchor)"),
    ("in_process", "in-process, no Triton"),
    ("ensemble", "ensemble, six steps, sequential"),
    ("ensemble_search", "ensemble, six steps, sequential, with a query"),
    ("ensemble_c4", "ensemble, six steps, concurrency {concurrency}"),
    ("fused", "ensemble, fused, sequential"),
    ("fused_search", "ensemble, fused, sequential, with a query"),
    ("fused_c4", "ensemble, fused, concurrency {concurrency}"),
)


def _estimate(summary: dict[str, float]) -> Estimate:
    """mean ± std over the timed requests of one cell (the per-request spread)."""
    return Estimate(summary["mean_ms"], summary["std_ms"], summary["requests"])


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    cells = []
    for row in report["rows"]:
        label = f"{row['length']:,} ({row['source']})"
        base = row["in_process"]["p50_ms"]
        for key, name in SYSTEMS:
            if key not in row:  # a record from before the cell existed
                continue
            summary = row[key]
            cells.append(
                (
                    label,
                    name.format(concurrency=cfg["concurrency"]),
                    f"{summary['p50_ms']:.2f}",
                    f"{summary['p90_ms']:.2f}",
                    f"{summary['p99_ms']:.2f}",
                    f"{summary['throughput_rps']:.0f}",
                    ratio(summary["p50_ms"], base),
                )
            )
    columns = ("L (history)", "system", "p50 ms", "p90 ms", "p99 ms", "req/s", "p50 / in-process")
    lines = [markdown_table(columns, cells, align="llrrrrr"), ""]

    def faster(row: dict, name: str, key: str, anchor_name: str, anchor_key: str) -> str:
        return comparison(
            name, _estimate(row[key]), anchor_name, _estimate(row[anchor_key]),
            lower_is_better=True, better="faster", unit=" ms mean",
        )  # fmt: skip

    for row in report["rows"]:
        floor, ensemble = row["floor"]["p50_ms"], row["ensemble"]["p50_ms"]
        lines.append(
            f"- L = {row['length']:,}: the floor's p50 is {floor / ensemble:.0%} of the six "
            "steps'; " + faster(row, "the six steps", "ensemble", "in-process", "in_process") + "."
        )
        if "fused" in row:
            lines.append(
                f"- L = {row['length']:,}: "
                + faster(row, "the fused graph", "fused", "the six steps", "ensemble")
                + f"; at concurrency {cfg['concurrency']} it serves "
                f"{row['fused_c4']['throughput_rps']:.0f} requests/s against "
                f"{row['ensemble_c4']['throughput_rps']:.0f}."
            )
    if "ipc_bytes" in report:
        lines += ["", *ipc_lines(report, cfg)]
    breakdown_cells = [
        (
            f"{row['length']:,}",
            name,
            *(f"{b[phase]:.3f}" for phase in PHASES),
        )
        for row in report["rows"]
        for name, b in row["breakdown"].items()
    ]
    lines += [
        "",
        "## Where the time goes (Triton per-model statistics, sequential, ms per request)",
        "",
        markdown_table(
            ("L", "model", "queue", "compute input", "compute infer", "compute output"),
            breakdown_cells,
            align="llrrrr",
        ),
        "",
    ]
    for row in report["rows"]:
        steps = {n: b for n, b in row["breakdown"].items() if n != contract.PIPELINE_MODEL}
        if steps:
            queue = sum(b["queue"] for b in steps.values())
            infer = sum(b["compute_infer"] for b in steps.values())
            slowest = max(steps, key=lambda name: steps[name]["compute_infer"])
            lines.append(
                f"- L = {row['length']:,}: of the six steps' mean {row['ensemble']['mean_ms']:.2f} "
                f"ms, {queue:.2f} ms is queueing in the {len(steps)} steps' dynamic batchers "
                f"(max_queue_delay) and {infer:.2f} ms is compute (Triton's compute_infer, which "
                "includes each Python model's IPC with its stub process); the largest compute "
                f"is {slowest}'s, {steps[slowest]['compute_infer']:.2f} ms."
            )
        fused = row["breakdown"].get(contract.PIPELINE_MODEL)
        if fused and "fused" in row:
            lines.append(
                f"- L = {row['length']:,}: of the fused graph's mean {row['fused']['mean_ms']:.2f} "
                f"ms, {fused['queue']:.2f} ms is queueing in its one batcher and "
                f"{fused['compute_infer']:.2f} ms is the {contract.PIPELINE_MODEL} step's compute."
            )
    for row in report["rows"]:
        if "ensemble_search" not in row:
            continue
        with_query, without = row["ensemble_search"]["p50_ms"], row["ensemble"]["p50_ms"]
        text = row["breakdown"].get(contract.QUERY_TEXT_MODEL, {}).get("compute_infer")
        lines.append(
            f"- L = {row['length']:,}: a search request (query {cfg.get('search_query', '')!r}) "
            f"takes {with_query:.2f} ms p50 against {without:.2f} ms without a query: "
            f"{with_query - without:+.2f} ms for the query's MiniLM embedding (query_text)"
            + (
                f"; query_text's compute averaged over both kinds of request is {text:.2f} ms"
                if text is not None
                else ""
            )
            + "."
        )
    last, first = report["rows"][-1], report["rows"][0]
    measured = last["ensemble"]["p50_ms"] / last["in_process"]["p50_ms"]
    lines += [
        "",
        f"Goal: at L = {last['length']:,} the six steps' p50 <= {GOAL_RATIO:g}× the in-process "
        f"time: {measured:.2f}× "
        f"({'met' if measured <= GOAL_RATIO else 'missed; see the per-model statistics'}).",
    ]
    if "fused" in first:
        fused = first["fused"]["p50_ms"] / first["in_process"]["p50_ms"]
        lines.append(
            f"Goal: at L = {first['length']:,} the fused graph's p50 <= {FUSED_GOAL_RATIO:g}× "
            f"the in-process time: {fused:.2f}× ({'met' if fused <= FUSED_GOAL_RATIO else 'missed'})."
        )
    diffs = [
        (label, key)
        for label, key in (
            ("six steps", "max_abs_diff"),
            ("six steps with the query", "max_abs_diff_search"),
            ("fused", "max_abs_diff_fused"),
            ("fused with the query", "max_abs_diff_fused_search"),
        )
        if all(key in r for r in report["rows"])
    ]
    lines.append(
        "Served vs in-process scores, max |diff| per row: "
        + "; ".join(
            f"{label}: " + ", ".join(f"{r[key]:.1e}" for r in report["rows"])
            for label, key in diffs
        )
        + "."
    )
    return "\n".join(lines) + "\n"


def ipc_lines(report: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    """The bytes table: what one request moves through the Python backend's IPC per step."""
    steps = [name for name in report["ipc_bytes"] if name != contract.PIPELINE_MODEL]
    cells = [
        (
            "six steps",
            name,
            f"{report['ipc_bytes'][name]:,}",
            f"{report['ipc_bytes_search'][name]:,}",
        )
        for name in steps
    ]
    total = sum(report["ipc_bytes"][name] for name in steps)
    total_search = sum(report["ipc_bytes_search"][name] for name in steps)
    fused = report["ipc_bytes"][contract.PIPELINE_MODEL]
    fused_search = report["ipc_bytes_search"][contract.PIPELINE_MODEL]
    cells += [
        ("six steps", "**sum**", f"**{total:,}**", f"**{total_search:,}**"),
        ("fused", contract.PIPELINE_MODEL, f"{fused:,}", f"{fused_search:,}"),
    ]
    heaviest = max(steps, key=lambda name: report["ipc_bytes"][name])
    return [
        f"## Bytes through the Python backend's IPC per request ({cfg['candidates']} rows, "
        "inputs + outputs, from the tensors' shapes)",
        "",
        markdown_table(("graph", "step", "bytes", "bytes with the query"), cells, align="llrr"),
        "",
        f"- The six steps move {total:,} bytes per request ({heaviest} alone "
        f"{report['ipc_bytes'][heaviest]:,}); the fused graph moves {fused:,} "
        f"({fused / total:.1%} of that).",
    ]
