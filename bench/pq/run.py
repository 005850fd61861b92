"""One `seminar bench pq` run: measure every part, then write pq.md, pq.json and the figure."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seminar.bench import harness
from seminar.bench.pq import breakdown, distributions, latency, trained_run
from seminar.bench.pq.config import (
    BREAKDOWN_LENGTH,
    CANDIDATES,
    FAST,
    HEADS,
    PER_MODALITY,
    SERVED,
    TOP_K,
    BenchConfig,
    trained_run_methods,
)
from seminar.bench.pq.world import World, synthetic_world, trained_world
from seminar.pq.config import PQConfig
from seminar.pq.synthetic import SyntheticSpec

FIGURE = "pq_recall_latency.png"


@dataclass(frozen=True)
class Measured:
    """Everything one run measured; the report and the JSON are rendered from it alone."""

    world: World
    rows: list[latency.Row]
    split: dict[str, Any] | None  # the breakdown at BREAKDOWN_LENGTH, when measured
    by_distribution: dict[str, dict[str, float]]
    trained: dict[str, Any] | None  # with --run
    seconds: float


def run_bench(
    cfg: BenchConfig,
    out_dir: Path,
    run: Path | None,
    data: Path | None,
    log: Callable[[str], None],
) -> harness.Record:
    """Measure, write OUT_DIR/pq.md, pq.json and the figure; returns the record."""
    import faiss

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    faiss.omp_set_num_threads(cfg.threads)
    header = harness.Header.now(seeds=(cfg.seed,))
    started = time.perf_counter()
    if run is not None:
        log(f"tables: the trained run {run}; training codebooks")
        world = trained_world(run, cfg)
    else:
        log("tables: random SYNTHETIC (pass --run for a trained model's); training codebooks")
        world = synthetic_world(SyntheticSpec(n_items=cfg.n_items, seed=cfg.seed), cfg)
    rows = latency.measure(cfg, world, log)
    split = None
    if BREAKDOWN_LENGTH in cfg.lengths:
        log(f"latency breakdown at L = {BREAKDOWN_LENGTH:,}")
        split = breakdown.measure(cfg, world, BREAKDOWN_LENGTH)
    worlds = {"trained tables" if run is not None else distributions.QUICK_SHAPE: world}
    by_distribution = distributions.measure(cfg, worlds, log)
    trained = None
    if run is not None:
        trained = trained_run.measure(run, data, trained_run_methods(), log)
    measured = Measured(world, rows, split, by_distribution, trained, time.perf_counter() - started)
    record = harness.Record(
        title="PQ GSU benchmark",
        header=header,
        setup=setup_lines(cfg, world),
        body=body(measured),
        data=result(cfg, measured),
    )
    harness.write_record(
        record, out_dir / "pq", figure=lambda path: latency.plot(rows, path),
        figure_path=out_dir / FIGURE,
    )  # fmt: skip
    return record


def setup_lines(cfg: BenchConfig, world: World) -> tuple[str, ...]:
    long_runs = cfg.runs_at(cfg.long_length)
    return (
        f"threads: {cfg.threads}; runs: {cfg.runs} (L ≥ {cfg.long_length:,}: {long_runs}) "
        f"after {cfg.warmup} warm-up, methods interleaved",
        f"data: {world.label}; request = 1 user × {CANDIDATES} candidates × {HEADS} heads, "
        f"top-{TOP_K}; codebooks: S={PQConfig().n_subspaces} per modality, OPQ rotation, "
        f"k-means {cfg.kmeans_iters} iterations; the served rows code the query and the item "
        "modalities' summed table (fused item codebook), the others every modality",
    )


def _bytes_sentence(rows: list[latency.Row], world: World) -> str:
    served = next(row for row in rows if row.method == SERVED)
    per_modality = next(row for row in rows if row.method == PER_MODALITY)
    code_size = world.codebooks[8, True, False].code_size
    fused = world.codebooks[4, True, True]
    packed = fused.code_size / 2  # two 4-bit codes per byte
    return (
        f"bytes / event: exact = {len(world.tables)} modality components × {world.dim} × "
        f"float32 = {world.exact_bytes_per_event} B (a fused x_l would be {world.dim * 4} B); "
        f"PQ 8-bit = {code_size} B, one byte per (modality, sub-space) code; PQ 4-bit with a "
        f"codebook per modality = {per_modality.bytes_per_event:.4g} B; served PQ 4-bit = "
        f"{packed:g} B of codes ({fused.n_modalities} modalities × {fused.n_subspaces} "
        f"sub-spaces) plus {served.bytes_per_event - packed:.2f} B of fast-scan block padding "
        f"= {served.bytes_per_event:.4g} B, "
        f"{harness.ratio(served.bytes_per_event, world.exact_bytes_per_event)} the exact bytes."
    )


def body(measured: Measured) -> str:
    rows, split, trained = measured.rows, measured.split, measured.trained
    lines = [latency.table(rows), "", *latency.findings(rows)]
    goal = latency.goal(rows, BREAKDOWN_LENGTH)
    if goal is not None:
        lines += ["", goal]
    lines += [
        "",
        "Every method ran on the CPU: the GPU kernel is not timed by this bench.",
        _bytes_sentence(rows, measured.world),
    ]
    if split is not None:
        lines += ["", *breakdown.markdown(split)]
    lines += ["", *distributions.markdown(measured.by_distribution), ""]
    if trained is None:
        lines.append("Trained run: not measured, pass --run.")
    else:
        lines += trained_run.markdown(trained)
    lines += ["", f"![recall vs latency]({FIGURE})  (took {measured.seconds:.0f} s)"]
    return "\n".join(lines)


def result(cfg: BenchConfig, measured: Measured) -> dict[str, Any]:
    rows, trained, world = measured.rows, measured.trained, measured.world

    def recall_at(method: str, length: int = BREAKDOWN_LENGTH) -> float | None:
        return next((r.recall for r in rows if r.length == length and r.method == method), None)

    def trained_recall(method: str) -> float | None:
        return None if trained is None else trained["pq"][method]["recall_at_50"]

    served_bytes = next(row.bytes_per_event for row in rows if row.method == SERVED)
    return {
        "threads": cfg.threads,
        "quick": cfg.is_quick,
        "tables": world.label,
        "pq_method": SERVED,
        "recall_at_50": {"trained_run": trained_recall(SERVED), "synthetic_10k": recall_at(SERVED)},
        "recall_at_50_no_rerank": {
            "method": FAST,
            "trained_run": trained_recall(FAST),
            "synthetic_10k": recall_at(FAST),
        },
        "ndcg10_relative_change": None
        if trained is None
        else trained["pq"][SERVED]["ndcg10_relative_change"],
        "latency_ms": latency.summary(rows),
        "bytes_per_event": {
            "exact": world.exact_bytes_per_event,
            "exact_fused_x": world.dim * 4,
            "pq": served_bytes,
            "pq_over_exact": served_bytes / world.exact_bytes_per_event,
        },
        "breakdown_10k": measured.split,
        "recall_at_50_by_distribution_10k": measured.by_distribution,
        "trained_run": trained,
        "seconds": measured.seconds,
    }
