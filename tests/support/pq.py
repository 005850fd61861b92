"""Fixtures for the pq tests (owned by that area). All data here is synthetic (labelled)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from seminar.pq import (
    Codebooks,
    PQConfig,
    PQRetriever,
    SequenceStore,
    build_sequence_store,
    train_codebooks,
)
from seminar.pq.synthetic import SyntheticSpec, synthetic_gsu, synthetic_tables, synthetic_users

PQ_TEST_SPEC = SyntheticSpec(dim=64, heads=4, n_items=2_000, n_queries=300, rank=8, seed=7)
PQ_TEST_K = 50
# users with 0, 1, K-1, K+1 and a long history: the edge cases and an ordinary one
PQ_TEST_LENGTHS = [0, 1, PQ_TEST_K - 1, PQ_TEST_K + 1, 2_000]


@dataclass(frozen=True)
class PQWorld:
    """A synthetic PQ world: tables, trained codebooks, codes, store and GSU projection."""

    spec: SyntheticSpec
    tables: dict[str, np.ndarray]
    codebooks: Codebooks
    table_codes: dict[str, np.ndarray]
    store: SequenceStore
    gsu_weight: np.ndarray
    gsu_bias: np.ndarray

    def retriever(self, device: str = "cpu", **config) -> PQRetriever:
        cfg = PQConfig(nbits=self.codebooks.nbits, **config)
        return PQRetriever(
            self.codebooks,
            {m: torch.from_numpy(t) for m, t in self.tables.items()},
            self.table_codes,
            cfg,
            store=self.store,
            gsu_weight=torch.from_numpy(self.gsu_weight),
            gsu_bias=torch.from_numpy(self.gsu_bias),
            k=PQ_TEST_K,
            device=device,
        )


def make_world(spec: SyntheticSpec, nbits: int, lengths: list[int]) -> PQWorld:
    tables = synthetic_tables(spec)
    codebooks = train_codebooks(tables, PQConfig(nbits=nbits, kmeans_iters=6, seed=spec.seed))
    table_codes = {m: codebooks.encode(m, t) for m, t in tables.items()}
    offsets, item, query = synthetic_users(lengths, spec.n_items, spec.n_queries, seed=spec.seed)
    store = build_sequence_store(
        offsets, item, query, table_codes, codebooks.modalities, codebooks.nbits
    )
    weight, bias = synthetic_gsu(spec)
    return PQWorld(spec, tables, codebooks, table_codes, store, weight, bias)


@pytest.fixture(scope="session")
def pq_world_8bit() -> PQWorld:
    """Synthetic low-rank tables, S=16 x k=256 codebooks."""
    return make_world(PQ_TEST_SPEC, 8, PQ_TEST_LENGTHS)


@pytest.fixture(scope="session")
def pq_world_4bit() -> PQWorld:
    """Synthetic low-rank tables, S=16 x k=16 codebooks (faiss fast-scan layout)."""
    return make_world(PQ_TEST_SPEC, 4, PQ_TEST_LENGTHS)
