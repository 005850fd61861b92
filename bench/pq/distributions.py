"""recall@50 at L = 10k of the PQ configurations over several table distributions."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from seminar.bench.harness import markdown_table
from seminar.bench.pq.config import (
    DISTRIBUTION_REQUESTS,
    TOP_K,
    BenchConfig,
    distribution_methods,
)
from seminar.bench.pq.gsu import embedding_recall, exact_gsu, pq_gsu
from seminar.bench.pq.world import World, request_targets, retriever_for, synthetic_world
from seminar.pq.synthetic import SyntheticSpec

LENGTH = 10_000
# SYNTHETIC table shapes, from the isotropic worst case to clustered tables.
SHAPES: dict[str, dict[str, float | int | None]] = {
    "random isotropic": {"rank": None},
    "random low-rank 8": {"rank": 8},
    "random 64 clusters": {"clusters": 64, "noise": 0.1},
}
QUICK_SHAPE = "random low-rank 8"


def measure(
    cfg: BenchConfig, worlds: dict[str, World], log: Callable[[str], None]
) -> dict[str, dict[str, float]]:
    """recall@50 per table distribution and PQ configuration: the worlds given (a trained
    run's tables) and the SYNTHETIC shapes (only one in a quick run)."""
    shapes = SHAPES if cfg.distributions else {QUICK_SHAPE: SHAPES[QUICK_SHAPE]}
    for label, shape in shapes.items():
        if label not in worlds:
            log(f"recall by distribution: training codebooks for {label}")
            spec = SyntheticSpec(n_items=cfg.n_items, seed=cfg.seed, **shape)
            worlds[label] = synthetic_world(spec, cfg)
    out = {}
    for label, world in worlds.items():
        recalls = {}
        for name, config in distribution_methods().items():
            retriever = retriever_for(world, [LENGTH], config, cfg.seed)
            per_request = []
            for request in range(DISTRIBUTION_REQUESTS):
                x_t = request_targets(world, cfg.seed + request)
                _, _, _, exact_scores = exact_gsu(retriever, 0, x_t, TOP_K)
                emb, valid = pq_gsu(retriever, 0, x_t, TOP_K)
                per_request.append(
                    embedding_recall(retriever, x_t, emb, valid, exact_scores, TOP_K)
                )
            recalls[name] = float(np.mean(per_request))
        out[label] = recalls
    return out


def markdown(by_distribution: dict[str, dict[str, float]]) -> list[str]:
    """The recall table, and for each configuration the tables it does best and worst on."""
    names = list(next(iter(by_distribution.values())))
    cells = [
        (tables, *(f"{recalls[name]:.3f}" for name in names))
        for tables, recalls in by_distribution.items()
    ]
    lines = [
        f"recall@50 at L = {LENGTH // 1000}k by table distribution (mean of "
        f"{DISTRIBUTION_REQUESTS} requests):",
        "",
        markdown_table(("tables", *names), cells),
        "",
    ]
    if len(by_distribution) > 1:
        for name in names:
            by_tables = {tables: recalls[name] for tables, recalls in by_distribution.items()}
            best, worst = max(by_tables, key=by_tables.get), min(by_tables, key=by_tables.get)
            lines.append(
                f"- {name}: highest on {best} ({by_tables[best]:.3f}), lowest on {worst} "
                f"({by_tables[worst]:.3f})."
            )
    best_name = {
        tables: max(recalls, key=recalls.get) for tables, recalls in by_distribution.items()
    }
    lines += [
        "- Highest recall per table distribution: "
        + "; ".join(
            f"{tables}: {name} ({by_distribution[tables][name]:.3f})"
            for tables, name in best_name.items()
        )
        + "."
    ]
    return lines
