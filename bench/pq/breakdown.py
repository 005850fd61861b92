"""Where the time of one request goes: each step of the exact and the served PQ GSU timed on
its own at one L, the machine rates they run at, and the bound those rates put on PQ."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from seminar.bench.harness import markdown_table, ratio, time_interleaved
from seminar.bench.pq.config import SERVED, TARGET_RATIO, TOP_K, BenchConfig, timed_methods
from seminar.bench.pq.gsu import exact_gsu
from seminar.bench.pq.world import World, request_targets, retriever_for
from seminar.pq.fused_scan import ExactRerank

GEMM_STEP = "scores: GEMM (B*H x D) @ (D x L)"
SCAN_STEP = "fast-scan ADC of every event (top-1: the scan alone)"
GATHER_STEP = "gather the K winners (B, H, K, D)"
REST_STEP = "the rest of the request: u, the user's sequence, the call (request minus the above)"
COPY_BYTES = 128 << 20  # a streaming copy this large measures memory bandwidth, not cache
# A side whose bytes would take at least this share of its time at the copy bandwidth is
# memory-bound; below it, compute-bound.
MEMORY_BOUND_SHARE = 0.5


def _medians(steps: dict[str, Any], repeats: int) -> dict[str, float]:
    timings, _ = time_interleaved(steps, repeats, warmup=1)
    return {name: timing.median for name, timing in timings.items()}


def measure(cfg: BenchConfig, world: World, length: int) -> dict[str, Any]:
    """Median ms of every step of both GSUs at `length`, the machine rates and the work."""
    import faiss

    repeats = max(5, cfg.runs)
    served = timed_methods()[SERVED]
    retriever = retriever_for(world, [length], served, cfg.seed)
    x_t = request_targets(world, cfg.seed)
    item, query, _, blocks = retriever.user_sequence(0, with_codes=False)
    u = retriever.query_vectors(x_t)  # (B, H, D)
    b, h, d = u.shape
    rows = b * h
    x = retriever.exact_vectors(item[0], query[0])
    flat_u = u.reshape(rows, d)
    scores = flat_u @ x.T
    top = scores.topk(TOP_K, dim=-1).indices
    rotated = retriever.rotated(u).reshape(rows, d).numpy()
    shortlist = TOP_K * served.rerank
    rerank_step = f"exact rerank of the {shortlist} shortlisted per (target, head)"
    if retriever._fused is not None:
        # the served kernel: top-1 is the scan with a trivial collection; the rerank runs in
        # the same call, so its step is the call with it minus the call without
        fused = retriever._fused
        kernel = "fused"
        exact_tables = ExactRerank(
            u.reshape(rows, d).numpy(), item[0].numpy(), query[0].numpy(),
            retriever.item_table.numpy(), retriever.query_table.numpy(), TOP_K,
        )  # fmt: skip
        # as `retrieve` serves it, the kernel also writes the winners' vectors
        with_vectors = replace(exact_tables, embeddings=True)
        # as served: the queries (target, head) taken head by head
        pq_steps = {
            SCAN_STEP: lambda: fused.search_blocks(rotated, blocks, length, 1, heads=h),
            "scan with shortlist": lambda: fused.search_blocks(
                rotated, blocks, length, shortlist, heads=h
            ),
            "with rerank": lambda: fused.search_blocks(
                rotated, blocks, length, shortlist, rerank=exact_tables, heads=h
            ),
            "with gather": lambda: fused.search_blocks(
                rotated, blocks, length, shortlist, rerank=with_vectors, heads=h
            ),
        }
    else:
        kernel = "faiss"
        short_pos, short_valid = retriever._faiss_stored_topk(
            retriever.rotated(u), blocks, length, shortlist
        )
        pos, valid = retriever._rerank(u, short_pos, short_valid, item, query, TOP_K)
        pq_steps = {
            f"pq {GATHER_STEP}": lambda: retriever.gather_winners(item, query, pos, valid),
            SCAN_STEP: lambda: retriever._faiss.search_blocks(rotated, blocks, length, 1),
            "scan with shortlist": lambda: retriever._faiss.search_blocks(
                rotated, blocks, length, shortlist
            ),
            rerank_step: lambda: retriever._rerank(u, short_pos, short_valid, item, query, TOP_K),
        }
    collect_step = f"{kernel} top-{shortlist} collection (top-{shortlist} minus top-1)"
    medians = _medians(
        {
            "exact request": lambda: exact_gsu(retriever, 0, x_t, TOP_K),
            "pq request": lambda: retriever.retrieve(0, x_t, TOP_K),
            "fetch exact embeddings (L x 2 table rows)": lambda: retriever.exact_vectors(
                item[0], query[0]
            ),
            GEMM_STEP: lambda: flat_u @ x.T,
            "top-K of B*H x L scores (torch.topk)": lambda: scores.topk(TOP_K, dim=-1),
            f"exact {GATHER_STEP}": lambda: x.index_select(0, top.reshape(-1)),
            **pq_steps,
        },
        repeats,
    )
    if "with rerank" in medians:  # the fused kernel's steps, by difference
        medians[rerank_step] = max(medians["with rerank"] - medians["scan with shortlist"], 0.0)
        medians[f"pq {GATHER_STEP}"] = max(medians["with gather"] - medians["with rerank"], 0.0)
    steps_exact = {
        name: medians[name]
        for name in (
            "fetch exact embeddings (L x 2 table rows)",
            GEMM_STEP,
            "top-K of B*H x L scores (torch.topk)",
        )
    }
    steps_exact[GATHER_STEP] = medians[f"exact {GATHER_STEP}"]
    steps_pq = {
        SCAN_STEP: medians[SCAN_STEP],
        collect_step: max(medians["scan with shortlist"] - medians[SCAN_STEP], 0.0),
        rerank_step: medians[rerank_step],
        GATHER_STEP: medians[f"pq {GATHER_STEP}"],
    }
    # the request's own work around the steps, so that each side sums to its request
    steps_exact[REST_STEP] = max(medians["exact request"] - sum(steps_exact.values()), 0.0)
    steps_pq[REST_STEP] = max(medians["pq request"] - sum(steps_pq.values()), 0.0)
    source = np.ones(COPY_BYTES // 4, np.float32)
    target = np.empty_like(source)
    copy_ms = _medians({"copy": lambda: np.copyto(target, source)}, 5)["copy"]
    bandwidth = 2 * source.nbytes / (copy_ms / 1e3)  # read + write, bytes/s
    lookups = rows * length * retriever.codebooks.code_size
    return {
        "length": length,
        "shortlist": shortlist,
        "threads": faiss.omp_get_max_threads(),
        "exact_ms": steps_exact,
        "pq_ms": steps_pq,
        "exact_total_ms": sum(steps_exact.values()),
        "pq_total_ms": sum(steps_pq.values()),
        "rates": {
            "copy_bandwidth_gb_s": bandwidth / 1e9,
            "gemm_gflop_s": 2 * rows * d * length / (steps_exact[GEMM_STEP] / 1e3) / 1e9,
            "fastscan_glookups_s": lookups / (steps_pq[SCAN_STEP] / 1e3) / 1e9,
        },
        "work": {
            "dim": d,
            "lookups_per_score": retriever.codebooks.code_size,
            "exact_bytes_fetched": length * 2 * d * 4,
            "exact_flops": 2 * rows * d * length,
            "pq_code_bytes": int(blocks.nbytes),
            "pq_lookups": lookups,
        },
        # a free top-K: what the scan and the exact steps around it cost at the measured rates
        "pq_floor_ms": steps_pq[SCAN_STEP]
        + steps_pq[rerank_step]
        + steps_pq[GATHER_STEP]
        + steps_pq[REST_STEP],
    }


def _bound(bytes_moved: float, total_ms: float, bandwidth_gb_s: float) -> tuple[float, str]:
    """ms the bytes take at the copy bandwidth, and which resource bounds the side."""
    bytes_ms = bytes_moved / (bandwidth_gb_s * 1e9) * 1e3
    share = bytes_ms / total_ms if total_ms else 0.0
    return bytes_ms, "memory-bound" if share >= MEMORY_BOUND_SHARE else "compute-bound"


def markdown(breakdown: dict[str, Any]) -> list[str]:
    """The per-step table and the sentences its numbers support."""
    rates, work = breakdown["rates"], breakdown["work"]
    exact_total, pq_total = breakdown["exact_total_ms"], breakdown["pq_total_ms"]
    exact_steps, pq_steps = list(breakdown["exact_ms"].items()), list(breakdown["pq_ms"].items())
    cells = [
        (exact_name, f"{exact_ms:.2f}", pq_name, f"{pq_ms:.2f}")
        for (exact_name, exact_ms), (pq_name, pq_ms) in zip(exact_steps, pq_steps, strict=True)
    ]
    cells.append(("**sum**", f"**{exact_total:.2f}**", "**sum**", f"**{pq_total:.2f}**"))
    exact_bytes_ms, exact_bound = _bound(
        work["exact_bytes_fetched"], exact_total, rates["copy_bandwidth_gb_s"]
    )
    pq_bytes_ms, pq_bound = _bound(work["pq_code_bytes"], pq_total, rates["copy_bandwidth_gb_s"])
    lookups, dim = work["lookups_per_score"], work["dim"]
    arithmetic = (
        "as many as" if lookups == dim else ("fewer than" if lookups < dim else "more than")
    )
    largest_name, largest_ms = max(pq_steps, key=lambda step: step[1])
    floor = breakdown["pq_floor_ms"] / exact_total
    return [
        f"Where the time goes at L = {breakdown['length']:,} (each step timed on its own, "
        "steps interleaved, median ms):",
        "",
        markdown_table(("exact GSU step", "ms", "served PQ GSU step", "ms"), cells, align="lrlr"),
        "",
        f"Machine rates, measured here: streaming copy {rates['copy_bandwidth_gb_s']:.1f} GB/s, "
        f"GEMM {rates['gemm_gflop_s']:.0f} GFLOP/s, fast-scan "
        f"{rates['fastscan_glookups_s']:.0f} G look-ups/s.",
        f"Work per request: exact fetches {work['exact_bytes_fetched'] / 1e6:.2f} MB of "
        f"embeddings and does {work['exact_flops'] / 1e9:.2f} GFLOP; PQ reads "
        f"{work['pq_code_bytes'] / 1e6:.2f} MB of codes "
        f"({ratio(work['pq_code_bytes'], work['exact_bytes_fetched'])} the exact bytes) and "
        f"does {work['pq_lookups'] / 1e9:.2f} G table look-ups.",
        f"At the copy bandwidth the exact GSU's bytes take {exact_bytes_ms:.2f} ms of its "
        f"{exact_total:.2f} ms ({exact_bound}) and PQ's {pq_bytes_ms:.2f} ms of its "
        f"{pq_total:.2f} ms ({pq_bound}). The ADC sums {lookups} look-ups per (event, target, "
        f"head), {arithmetic} the D = {dim} multiply-adds of the exact score.",
        f"The largest PQ step is {largest_name}: {largest_ms:.2f} ms, "
        f"{largest_ms / pq_total:.0%} of the PQ sum.",
        f"Bound: with a free top-K collection the served PQ GSU would take "
        f"{breakdown['pq_floor_ms']:.2f} ms (the other steps) = {floor:.2f}× the exact "
        f"steps' sum, {'within' if floor <= TARGET_RATIO else 'above'} the "
        f"{TARGET_RATIO:.2f}× goal.",
        _budget_sentence(breakdown),
    ]


def _budget_sentence(breakdown: dict[str, Any]) -> str:
    """What the PQ steps may take for the goal, against what they took, and the scan's share."""
    budget = TARGET_RATIO * breakdown["exact_total_ms"]
    pq_total = breakdown["pq_total_ms"]
    scan = next(iter(breakdown["pq_ms"].values()))  # the first PQ step is the scan
    if pq_total <= budget:
        return (
            f"Budget: the goal allows the PQ steps {budget:.2f} ms and they took {pq_total:.2f} ms."
        )
    rate = breakdown["rates"]["fastscan_glookups_s"]
    return (
        f"Budget: the goal allows the PQ steps {budget:.2f} ms and they took {pq_total:.2f} ms, "
        f"{pq_total - budget:.2f} ms over; the scan alone is {scan:.2f} ms "
        f"({scan / budget:.0%} of the budget) at {rate:.0f} G look-ups/s, so the rest of the "
        f"steps would have to fit in {max(budget - scan, 0.0):.2f} ms, or the scan do fewer "
        "look-ups (fewer sub-spaces, a deeper rerank) or run on more cores or a GPU."
    )
