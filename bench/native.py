"""`seminar bench native`: the fused step in C++ served inside tritonserver by the
`seminar_native` backend, against the same C++ step in in-process workers.

The question is the serving-efficiency goal's: what do Triton, gRPC and the client cost at
saturation when the step itself runs no Python? Each round sweeps perf_analyzer over the
concurrency range on the served model (its best throughput is the served figure), then runs one
in-process worker per core over the same requests (seminar.serving.native.fused_step, the same
library the backend links); share = served / in-process, judged on the median round.

The requests are the real workload's, searches included: the backend scores recommendations
itself and forwards each search, inside the server, to the Python `pipeline` model served beside
it (the C++ step has no query tokenizers yet), while an in-process worker maps a search's query
in Python and scores it on the same C++ step. Online tails are not read by the native step, so
the source repository is served without an event log. The model runs from a scratch repository
that links the source repository's composing models and its `pipeline` and holds the native
model's bundle.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seminar import contract
from seminar.bench.harness import SCRATCH, Header, Record, markdown_table, ratio, write_record
from seminar.bench.perf import (
    PerfConfig,
    PerfError,
    analyzer_args,
    find_perf_analyzer,
    in_process_throughput,
    input_data,
    median_round,
    parse_csv,
    served_share,
)
from seminar.clients.workload import load_workload


@dataclass(frozen=True)
class NativeBenchConfig:
    repo: Path  # a built cpu repository (its composing models and PQ artifacts)
    data: Path
    version: int = 1
    out_dir: Path = SCRATCH
    chroot: Path | None = None
    concurrency: str = "4:16:4"
    requests: int = 32
    candidates: int = 100
    measurement_ms: int = 4000
    rounds: int = 3
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    goal_share: float = 0.8

    def perf_config(self, triton: str) -> PerfConfig:
        """The perf_analyzer settings of bench/perf.py for the native model at `triton`."""
        from seminar.serving.native.fused_step import NATIVE_MODEL

        return PerfConfig(
            triton=triton, data=self.data, model=NATIVE_MODEL, concurrency=self.concurrency,
            candidates=self.candidates, requests=self.requests,
            measurement_ms=self.measurement_ms, chroot=self.chroot, workers=self.workers,
            rounds=self.rounds, goal_share=self.goal_share,
        )  # fmt: skip


def _sweep(cfg: PerfConfig, pa: Any, scratch: Path, inside: str) -> list[dict[str, float]]:
    """One perf_analyzer sweep over cfg.concurrency: its rows (requests/s, latencies)."""
    args = analyzer_args(
        cfg, cfg.triton, f"{inside}/input.json", cfg.concurrency, cfg.measurement_ms
    )
    done = subprocess.run(
        pa.command([*args, "-f", f"{inside}/perf.csv"]), capture_output=True, text=True,
        timeout=60 * 30,
    )  # fmt: skip
    if done.returncode != 0 or not (scratch / "perf.csv").exists():
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise PerfError(f"perf_analyzer failed (exit {done.returncode}):\n{tail}")
    rows = parse_csv(scratch / "perf.csv", cfg.candidates)
    (scratch / "perf.csv").unlink()
    return rows


def run_native_bench(cfg: NativeBenchConfig) -> str:
    """Serve the native model, measure the rounds, write the record; return its markdown."""
    from rich.console import Console

    from seminar.serving.native.fused_step import NATIVE_MODEL, NativeFusedStep, add_native_model
    from seminar.serving.triton import ModelControl, TritonConfig, TritonServer

    header = Header.now(seeds=())
    console = Console(stderr=True)
    pa = find_perf_analyzer(cfg.chroot)
    calls = load_workload(cfg.data, candidates=cfg.candidates, limit=cfg.requests)
    if not (cfg.repo / contract.PIPELINE_MODEL / str(cfg.version)).is_dir():
        raise PerfError(
            f"{cfg.repo} has no version {cfg.version} of {contract.PIPELINE_MODEL}, where the "
            "native model forwards searches: build it with the fused graph (the cpu default)"
        )
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    scratch_root = pa.host_path("/tmp")
    scratch_root.mkdir(parents=True, exist_ok=True)
    rounds: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="seminar-native-") as work,
        tempfile.TemporaryDirectory(prefix="seminar-native-", dir=scratch_root) as scratch,
    ):
        repo = Path(work) / "model_repository"
        repo.mkdir()
        # the graphs the bundle names, in place, and the model searches are forwarded to
        for name in (*contract.COMPOSING_MODELS, contract.PIPELINE_MODEL):
            (repo / name).symlink_to((cfg.repo / name).resolve(), target_is_directory=True)
        with console.status("writing the native model's bundle"):
            step = NativeFusedStep.from_repo(cfg.repo, cfg.version)
            add_native_model(repo, step, cfg.version, cfg.workers)
            del step
        inside = "/tmp/" + Path(scratch).name if pa.chroot else scratch
        (Path(scratch) / "input.json").write_text(json.dumps(input_data(calls)))
        server_config = TritonConfig(
            repo=repo, model_control=ModelControl.EXPLICIT,
            load_models=(NATIVE_MODEL, contract.PIPELINE_MODEL),
            wait_models=(NATIVE_MODEL, contract.PIPELINE_MODEL),
            log_path=cfg.out_dir / "native_triton.log",
        )  # fmt: skip
        with TritonServer(server_config) as server:
            perf = cfg.perf_config(server.grpc_url)
            for index in range(cfg.rounds):
                step = f"round {index + 1} of {cfg.rounds}"
                with console.status(f"{step}: perf_analyzer, concurrency {cfg.concurrency}"):
                    rows = _sweep(perf, pa, Path(scratch), inside)
                with console.status(f"{step}: in-process native workers, {cfg.workers}"):
                    in_process = in_process_throughput(
                        cfg.repo, cfg.version, calls, cfg.workers, cfg.measurement_ms / 1000 * 2,
                        native=True,
                    )  # fmt: skip
                # "runs": bench/perf.py's round layout, one served run (the sweep's best)
                best = max(rows, key=lambda row: row["rps"])
                rounds.append({"runs": [best], "sweep": rows, "in_process": in_process})
    median = median_round(rounds)
    searches = sum(1 for call in calls if call.query)
    data = {
        "repo": str(cfg.repo), "version": cfg.version, "data": str(cfg.data),
        "requests": cfg.requests, "searches": searches, "candidates": cfg.candidates,
        "concurrency": cfg.concurrency,
        "measurement_ms": cfg.measurement_ms, "workers": cfg.workers,
        "goal_share": cfg.goal_share, "rounds": rounds, "median_share": served_share(median),
        "perf_analyzer": pa.where,
    }  # fmt: skip
    record = Record(
        title="The fused step in C++: served by the seminar_native backend vs in-process",
        header=header,
        setup=(
            f"Repository {cfg.repo}, version {cfg.version}; {len(calls)} real requests of "
            f"{cfg.data} ({cfg.candidates} candidates each), {searches} of them searches "
            f"(forwarded by the backend to `{contract.PIPELINE_MODEL}`; an in-process worker "
            "maps their query in Python).",
            f"perf_analyzer ({pa.where}) over concurrency {cfg.concurrency}, "
            f"{cfg.measurement_ms} ms windows, on `seminar_native` ({cfg.workers} instances); "
            f"then {cfg.workers} in-process workers running the same C++ step.",
        ),
        body=native_markdown(rounds, cfg.goal_share),
        data=data,
    )
    paths = write_record(record, cfg.out_dir / "native")
    console.print("wrote " + ", ".join(str(path) for path in paths))
    return record.markdown()


def native_markdown(rounds: list[dict[str, Any]], goal_share: float) -> str:
    """The rounds' table and the median share against the goal, from the numbers alone."""
    table = markdown_table(
        ["round", "in-process req/s", "served best req/s", "at concurrency", "served p50 ms",
         "share"],
        [
            [str(n + 1), f"{r['in_process']['rps']:.1f}", f"{r['runs'][0]['rps']:.1f}",
             str(r["runs"][0]["concurrency"]), f"{r['runs'][0]['p50']:.2f}",
             ratio(r["runs"][0]["rps"], r["in_process"]["rps"])]
            for n, r in enumerate(rounds)
        ],
    )  # fmt: skip
    median = median_round(rounds)
    share = served_share(median)
    verdict = "met" if share >= goal_share else "missed"
    shares = sorted(served_share(r) for r in rounds)
    return (
        f"{table}\n\n- Median share {share:.2f}× over {len(rounds)} rounds "
        f"(from {shares[0]:.2f}× to {shares[-1]:.2f}×); goal >= {goal_share}×: {verdict}.\n"
        f"- CPU per request of an in-process worker in the median round: "
        f"{median['in_process']['cpu_ms_per_request']:.2f} ms.\n"
    )
