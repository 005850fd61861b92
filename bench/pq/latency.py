"""Latency and recall@50 per request of every GSU at each history length, interleaved."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seminar.bench.harness import (
    Timing,
    comparison,
    markdown_table,
    ratio,
    side,
    time_interleaved,
)
from seminar.bench.pq.config import (
    DECODE,
    EXACT,
    EXACT_FAISS,
    FAISS_FASTSCAN,
    FAISS_PQ,
    FAISS_SHORTLIST,
    FAST,
    PER_MODALITY,
    RAW_FAISS,
    SERVED,
    TARGET_RATIO,
    TOP_K,
    BenchConfig,
    timed_methods,
)
from seminar.bench.pq.gsu import (
    embedding_recall,
    exact_gsu,
    exact_gsu_faiss,
    pq_gsu,
    threshold_recall,
)
from seminar.bench.pq.world import World, request_targets, retriever_for
from seminar.pq.faiss_scan import FaissScanner


@dataclass(frozen=True)
class Row:
    """One method at one history length."""

    method: str
    length: int
    timing: Timing
    recall: float
    bytes_per_event: float


def measure(cfg: BenchConfig, world: World, log: Callable[[str], None]) -> list[Row]:
    """Every method at every length of `cfg`, one SYNTHETIC user per length."""
    lengths = list(cfg.lengths)
    retrievers = {
        name: retriever_for(world, lengths, config, cfg.seed, fused_scan=name != FAISS_SHORTLIST)
        for name, config in timed_methods().items()
    }
    anchor = retrievers[DECODE]
    x_t = request_targets(world, cfg.seed)
    rows: list[Row] = []
    for user, length in enumerate(lengths):
        methods: dict[str, tuple[Callable[[], Any], float]] = {
            EXACT: (lambda u=user: exact_gsu(anchor, u, x_t, TOP_K), world.exact_bytes_per_event),
            EXACT_FAISS: (
                lambda u=user: exact_gsu_faiss(anchor, u, x_t, TOP_K),
                world.exact_bytes_per_event,
            ),
        }
        for name, retriever in retrievers.items():
            if "torch_lut" in name and length > cfg.lut_max_length:
                continue
            methods[name] = (
                lambda u=user, r=retriever: pq_gsu(r, u, x_t, TOP_K),
                retriever.store.bytes_per_event,
            )
        # raw faiss on the same codes: index prebuilt (not timed), search only, no gather
        for label, source in ((FAISS_PQ, DECODE), (FAISS_FASTSCAN, FAST)):
            retriever = retrievers[source]
            _, _, codes = retriever.store.user(user)
            scanner = FaissScanner(retriever.codebooks)
            index = scanner.index_for(np.ascontiguousarray(codes))
            rotated = retriever.rotated(retriever.query_vectors(x_t))
            queries = scanner.tiled(rotated.reshape(-1, world.dim).numpy())
            methods[label] = (
                lambda index=index, queries=queries: index.search(queries, TOP_K),
                retriever.store.bytes_per_event,
            )
        runs = cfg.runs_at(length)
        log(f"L={length:,}: {len(methods)} methods x ({cfg.warmup} warm-up + {runs} runs)")
        timings, last = time_interleaved(
            {name: call for name, (call, _) in methods.items()}, runs, cfg.warmup
        )
        exact_scores = last[EXACT][3]
        for name, (_, nbytes) in methods.items():
            if name == EXACT:
                recall = 1.0
            elif name in RAW_FAISS:
                found = torch.from_numpy(last[name][1])
                recall = threshold_recall(found.clamp(min=0), found >= 0, exact_scores, TOP_K)
            elif name in retrievers:  # retrieve's embeddings and validity
                emb, valid = last[name]
                recall = embedding_recall(anchor, x_t, emb, valid, exact_scores, TOP_K)
            else:
                pos, valid = last[name][0], last[name][1]
                recall = threshold_recall(
                    pos.reshape(-1, TOP_K), valid.reshape(-1, TOP_K), exact_scores, TOP_K
                )
            rows.append(Row(name, length, timings[name], recall, nbytes))
    return rows


def _anchors(rows: list[Row]) -> dict[int, Row]:
    return {row.length: row for row in rows if row.method == EXACT}


def table(rows: list[Row]) -> str:
    """Every row with its ratio to the exact GSU at the same length (the anchor rows)."""
    anchors = _anchors(rows)
    columns = (
        "L", "method", "ms / request (mean ± std)", "median ms", "ratio vs exact (mean)",
        "ratio (median)", "recall@50", "bytes / event",
    )  # fmt: skip
    cells = [
        (
            f"{row.length:,}",
            row.method,
            row.timing.estimate.text(),
            f"{row.timing.median:.2f}",
            ratio(row.timing.mean, anchors[row.length].timing.mean),
            ratio(row.timing.median, anchors[row.length].timing.median),
            f"{row.recall:.3f}",
            f"{row.bytes_per_event:.4g}",
        )
        for row in rows
    ]
    return markdown_table(columns, cells, align="rlrrrrrr")


def findings(rows: list[Row]) -> list[str]:
    """What the table says, one bullet per length, and the goal at its length."""
    anchors = _anchors(rows)
    lines = []
    for length, anchor in anchors.items():
        at = {row.method: row for row in rows if row.length == length}
        served = at[SERVED]
        fastest = min(at.values(), key=lambda row: row.timing.mean)
        lines.append(
            f"- L = {length:,}: "
            + comparison(
                "the served PQ GSU",
                served.timing.estimate,
                "the exact GSU",
                anchor.timing.estimate,
                lower_is_better=True,
                better="faster",
                unit=" ms",
            )
            + f"; its recall@50 is {served.recall:.3f}. The second anchor (faiss exhaustive "
            f"search) takes {ratio(at[EXACT_FAISS].timing.mean, anchor.timing.mean)} the exact "
            f"GSU's time. Fastest: {fastest.method}, "
            f"{ratio(fastest.timing.mean, anchor.timing.mean)} the exact GSU's time, at recall@50 "
            f"{fastest.recall:.3f}." + _before_sentence(at, anchor)
        )
    if len(anchors) > 1:
        served_ratios = {
            length: next(r for r in rows if r.length == length and r.method == SERVED).timing.mean
            / anchor.timing.mean
            for length, anchor in anchors.items()
        }
        shortest, longest = min(served_ratios), max(served_ratios)
        trend = side(served_ratios[longest], served_ratios[shortest], "lower", "not lower")
        lines.append(
            "- The served PQ GSU's time over the exact GSU's, by L: "
            + ", ".join(f"{length:,}: {value:.2f}×" for length, value in served_ratios.items())
            + f"; {trend} at the longest L than at the shortest."
        )
    return lines


def _before_sentence(at: dict[str, Row], anchor: Row) -> str:
    """The served configuration beside the paths it replaced: faiss's shortlist collection
    (before the fused kernel) and a codebook per item modality (before fused items)."""
    served = at[SERVED]
    sentences = []
    for method, what in (
        (FAISS_SHORTLIST, "With faiss collecting the shortlist instead"),
        (PER_MODALITY, "With a codebook per item modality instead"),
    ):
        if method not in at:
            continue
        before = at[method]
        sentences.append(
            f" {what} it takes {ratio(before.timing.mean, anchor.timing.mean)} the exact "
            f"GSU's time ({ratio(served.timing.mean, before.timing.mean)} of it served now), "
            f"recall@50 {before.recall:.3f}."
        )
    return "".join(sentences)


def goal(rows: list[Row], length: int) -> str | None:
    """Whether the served PQ GSU met the latency goal at `length` (None: not measured)."""
    at = {row.method: row for row in rows if row.length == length}
    if EXACT not in at or SERVED not in at:
        return None
    measured = at[SERVED].timing.mean / at[EXACT].timing.mean
    verdict = "met" if measured <= TARGET_RATIO else "missed"
    return (
        f"**Goal at L = {length:,}: the served PQ GSU at most {TARGET_RATIO:.2f}× the exact "
        f"GSU's mean time: {verdict}** ({measured:.2f}×)."
    )


def summary(rows: list[Row]) -> dict[str, Any]:
    """The JSON view: per length the anchor, served and raw faiss means, and every method."""
    out: dict[str, Any] = {}
    for length, anchor in _anchors(rows).items():
        at = {row.method: row for row in rows if row.length == length}
        out[str(length)] = {
            "exact": anchor.timing.mean,
            "pq": at[SERVED].timing.mean,
            "faiss": at[FAISS_FASTSCAN].timing.mean,
            "pq_over_exact": at[SERVED].timing.mean / anchor.timing.mean,
            "median": {
                "exact": anchor.timing.median,
                "pq": at[SERVED].timing.median,
                "faiss": at[FAISS_FASTSCAN].timing.median,
                "pq_over_exact": at[SERVED].timing.median / anchor.timing.median,
            },
            "exact_faiss_anchor": at[EXACT_FAISS].timing.mean,
            "pq_no_rerank": at[FAST].timing.mean,
            "pq_no_rerank_over_exact": at[FAST].timing.mean / anchor.timing.mean,
            "all": {
                method: {
                    "mean_ms": row.timing.mean,
                    "std_ms": row.timing.std,
                    "median_ms": row.timing.median,
                    "runs": len(row.timing.ms),
                    "recall_at_50": row.recall,
                    "bytes_per_event": row.bytes_per_event,
                }
                for method, row in at.items()
            },
        }
    return out


def plot(rows: list[Row], path: Path) -> None:
    """Recall against latency, one panel per length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({row.length for row in rows})
    methods = list(dict.fromkeys(row.method for row in rows))
    colors = {method: plt.cm.tab10(i % 10) for i, method in enumerate(methods)}
    fig, axes = plt.subplots(1, len(lengths), figsize=(5 * len(lengths), 4.5), squeeze=False)
    for axis, length in zip(axes[0], lengths, strict=True):
        for row in (row for row in rows if row.length == length):
            axis.scatter(
                row.timing.mean, row.recall, s=40, color=colors[row.method], label=row.method
            )
        axis.set_xscale("log")
        axis.set_xlabel("ms per request (1 user x 100 cand x 4 heads, top-50)")
        axis.set_ylabel("recall@50 vs exact GSU")
        axis.set_title(f"SYNTHETIC user, L = {length:,}")
        axis.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
