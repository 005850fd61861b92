"""The tables users are drawn over: random SYNTHETIC ones or a trained run's, with codebooks."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from seminar.bench.pq.config import CANDIDATES, TOP_K, BenchConfig
from seminar.contract import FIRST_ITEM_INDEX
from seminar.pq.codebooks import Codebooks, codebook_tables, train_codebooks
from seminar.pq.config import PQConfig
from seminar.pq.retriever import PQRetriever
from seminar.pq.synthetic import ITEM_MODALITIES, SyntheticSpec, SyntheticWorld


@dataclass(frozen=True, kw_only=True)
class World(SyntheticWorld):
    """A synthetic world (seminar.pq.synthetic) with its label (what the tables are, printed
    in the report) and codebooks trained on its tables."""

    label: str
    # (nbits, rotated, fused items) -> codebooks
    codebooks: dict[tuple[int, bool, bool], Codebooks]

    @property
    def exact_bytes_per_event(self) -> int:
        """float32 components of one event that the exact GSU fetches: one row per table."""
        return len(self.tables) * self.dim * 4


# The codebooks a world trains: 8- and 4-bit with the rotation, 4-bit without it (the
# rotation's own column in the recall table), and the served 4-bit fused-item ones.
BOOKS = ((8, True, False), (4, True, False), (4, False, False), (4, True, True))


def train_books(
    tables: dict[str, np.ndarray], cfg: BenchConfig
) -> dict[tuple[int, bool, bool], Codebooks]:
    """Codebooks by (nbits, OPQ rotation, fused items), every kind in BOOKS."""
    return {
        (nbits, rotated, fused): train_codebooks(
            tables,
            PQConfig(
                nbits=nbits,
                train_max_rows=cfg.train_max_rows,
                kmeans_iters=cfg.kmeans_iters,
                opq_iters=PQConfig().opq_iters if rotated else 0,
                seed=cfg.seed,
                fused_items=fused,
            ),
        )
        for nbits, rotated, fused in BOOKS
    }


def synthetic_world(spec: SyntheticSpec, cfg: BenchConfig) -> World:
    """Random SYNTHETIC tables (seminar.pq.synthetic) and a random GSU projection."""
    random = SyntheticWorld.random(spec)
    shape = "isotropic" if spec.rank is None else f"low rank {spec.rank}"
    if spec.clusters is not None:
        shape = f"{spec.clusters} clusters"
    label = (
        f"SYNTHETIC random tables (query + {', '.join(ITEM_MODALITIES)}, {spec.n_items:,} "
        f"items, D={spec.dim}, {shape} + noise {spec.noise}) and random GSU weights"
    )
    return World(
        tables=random.tables,
        gsu_weight=random.gsu_weight,
        gsu_bias=random.gsu_bias,
        label=label,
        codebooks=train_books(random.tables, cfg),
    )


def trained_world(run: Path, cfg: BenchConfig) -> World:
    """The component tables and GSU projection of a trained run: synthetic users drawn over a
    real model's embeddings, the distribution PQ meets in serving."""
    from seminar.pq.artifacts import gsu_projection, model_tables
    from seminar.training.checkpoint import load_run

    model = load_run(run).model.eval()
    tables = {m: t.numpy() for m, t in model_tables(model).items()}
    weight, bias = gsu_projection(model, next(iter(tables.values())).shape[1])
    label = (
        f"SYNTHETIC users over the trained tables and GSU weights of {run} "
        f"({', '.join(tables)}; D={weight.shape[0]}, H={weight.shape[1]})"
    )
    return World(
        tables=tables,
        gsu_weight=weight.numpy(),
        gsu_bias=bias.numpy(),
        first_item=FIRST_ITEM_INDEX,  # rows 0 and 1 of a trained item table: PAD and OOV
        label=label,
        codebooks=train_books(tables, cfg),
    )


def retriever_for(
    world: World, lengths: list[int], config: PQConfig, seed: int, fused_scan: bool = True
) -> PQRetriever:
    """A retriever over one SYNTHETIC user per length (user i has lengths[i] events);
    `fused_scan` False: faiss collects the shortlist (PQRetriever's fused_scan)."""
    codebooks = world.codebooks[config.nbits, config.opq_iters > 0, config.fused_items]
    # the tables the codes index: with fused items, query and the summed item table
    world = replace(world, tables=codebook_tables(world.tables, config))
    codes = world.encode(codebooks)
    store = world.store(codebooks, lengths, seed, table_codes=codes)
    retriever = world.retriever(codebooks, config, TOP_K, store, table_codes=codes)
    return retriever if fused_scan else retriever.with_fused_scan(False)


def request_targets(world: World, seed: int) -> torch.Tensor:
    """x_t (100, D) of 100 candidate items under one shared query, as the ranker sends them."""
    rng = np.random.default_rng(seed)
    query = rng.integers(1, world.n_queries)
    items = rng.integers(world.first_item, world.n_items, CANDIDATES)
    targets = world.tables["query"][query][None, :] + sum(
        world.tables[m][items] for m in world.tables if m != "query"
    )
    return torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))
