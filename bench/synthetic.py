"""`seminar bench synthetic`: SYNTHETIC generator throughput and peak memory.

Each run prepares a synthetic dataset (generate -> Parquet + sequence arrays + splits; MiniLM
off, it is measured by the prepare commands) in a fresh spawned process, so its peak RSS is its
own. The anchor row is a process that only imports the pipeline: the memory every run pays.
Runs with more events than one write chunk show whether memory stays bounded.
"""

from __future__ import annotations

import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

from seminar.bench.harness import Header, Record, markdown_table, ratio, side, write_record

ANCHOR = "imports only (anchor)"


@dataclass(frozen=True)
class BenchRow:
    run: str
    events: int
    users: int
    seconds: float
    events_per_s: float
    peak_rss_mib: float
    disk_mib: float


def _child(
    events: int, events_per_user: int, items: int, topics: int, seed: int, chunk_rows: int
) -> dict:
    """Runs in a fresh process: one synthetic prepare; returns timing and this process's peak RSS."""
    from seminar.data.prepare import PrepareConfig
    from seminar.data.synthetic import SyntheticConfig, prepare_synthetic

    if events == 0:  # anchor: imports only
        return {
            "seconds": 0.0,
            "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "disk": 0,
            "users": 0,
            "events": 0,
        }
    users = max(1, events // events_per_user)
    config = SyntheticConfig(
        users=users,
        events_per_user=events_per_user,
        items=items,
        topics=topics,
        seed=seed,
        length_spread=0.0,
    )
    prepare = PrepareConfig(seed=seed, chunk_rows=chunk_rows, text_features=False, progress=False)
    root = Path(tempfile.mkdtemp(prefix="seminar-bench-synthetic-"))
    try:
        start = time.perf_counter()
        stats = prepare_synthetic(config, root / "data", prepare)
        seconds = time.perf_counter() - start
        disk = sum(p.stat().st_size for p in (root / "data").rglob("*") if p.is_file())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "seconds": seconds,
        "rss_kib": rss,
        "disk": disk,
        "users": stats.users,
        "events": stats.events,
    }


def run_bench(
    sizes: list[int],
    events_per_user: int,
    items: int,
    topics: int,
    seed: int,
    reports: Path,
    chunk_rows: int = 262_144,
) -> Record:
    """One fresh process per size (and the imports-only anchor); writes REPORTS/synthetic.*."""
    if any(n < 1 for n in sizes):
        raise ValueError("--events values must be >= 1")
    from rich.progress import track

    header = Header.now(seeds=(seed,))
    rows: list[BenchRow] = []
    for n in track([0, *sizes], description="synthetic bench"):
        # A fresh spawned process per run: its peak RSS belongs to that run alone.
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            r = pool.submit(_child, n, events_per_user, items, topics, seed, chunk_rows).result()
        rows.append(
            BenchRow(
                run=ANCHOR if n == 0 else f"{r['events']:,} events",
                events=r["events"],
                users=r["users"],
                seconds=round(r["seconds"], 3),
                events_per_s=round(r["events"] / r["seconds"]) if r["seconds"] else 0.0,
                peak_rss_mib=round(r["rss_kib"] / 1024, 1),
                disk_mib=round(r["disk"] / 2**20, 1),
            )
        )
    record = Record(
        title="Synthetic generator benchmark (SYNTHETIC data)",
        header=header,
        setup=(
            f"{events_per_user} events/user; {items} items; {topics} topics; write chunk "
            f"{chunk_rows:,} events; MiniLM off; each run in a fresh process",
        ),
        body=markdown(rows, chunk_rows),
        data={
            "events_per_user": events_per_user,
            "items": items,
            "topics": topics,
            "chunk_rows": chunk_rows,
            "rows": [asdict(row) for row in rows],
        },
    )
    write_record(record, reports / "synthetic")
    return record


def markdown(rows: list[BenchRow], chunk_rows: int) -> str:
    """The table, and what the runs say about throughput and memory as events grow."""
    anchor = rows[0].peak_rss_mib
    columns = (
        "run", "users", "events", "seconds", "events/s", "peak RSS MiB", "RSS - anchor MiB",
        "on disk MiB",
    )  # fmt: skip
    cells = [
        (
            row.run,
            f"{row.users:,}",
            f"{row.events:,}",
            f"{row.seconds:.2f}",
            f"{row.events_per_s:,.0f}",
            f"{row.peak_rss_mib:.0f}",
            f"{row.peak_rss_mib - anchor:+.0f}",
            f"{row.disk_mib:.1f}",
        )
        for row in rows
    ]
    lines = [markdown_table(columns, cells), ""]
    runs = rows[1:]
    if len(runs) > 1:
        small, large = runs[0], runs[-1]
        events_growth = large.events / small.events
        small_extra, large_extra = small.peak_rss_mib - anchor, large.peak_rss_mib - anchor
        lines.append(
            f"- From {small.events:,} to {large.events:,} events ({events_growth:.1f}× the "
            f"events), throughput went from {small.events_per_s:,.0f} to "
            f"{large.events_per_s:,.0f} events/s ({ratio(large.events_per_s, small.events_per_s)})."
        )
        if small_extra > 0:
            memory_growth = large_extra / small_extra
            lines.append(
                f"- Peak RSS above the anchor went from {small_extra:+.0f} to {large_extra:+.0f} "
                f"MiB ({memory_growth:.2f}×): "
                + side(memory_growth, events_growth, "less than", "at least as much as")
                + " the events grew"
                + (
                    f", with {large.events:,} events over a {chunk_rows:,}-event write chunk."
                    if large.events > chunk_rows
                    else "."
                )
            )
    return "\n".join(lines)
