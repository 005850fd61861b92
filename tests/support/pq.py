"""Fixtures for the pq tests (owned by that area). All data here is synthetic (labelled)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from seminar.pq import Codebooks, PQConfig, PQRetriever, SequenceStore, train_codebooks
from seminar.pq.synthetic import SyntheticSpec, SyntheticWorld

PQ_TEST_SPEC = SyntheticSpec(dim=64, heads=4, n_items=2_000, n_queries=300, rank=8, seed=7)
PQ_TEST_K = 50
# users with 0, 1, K-1, K+1 and a long history: the edge cases and an ordinary one
PQ_TEST_LENGTHS = [0, 1, PQ_TEST_K - 1, PQ_TEST_K + 1, 2_000]


@dataclass(frozen=True)
class PQWorld:
    """A synthetic PQ world (seminar.pq.synthetic) with trained codebooks, the codes of every
    table row and the store of PQ_TEST_LENGTHS users."""

    spec: SyntheticSpec
    world: SyntheticWorld
    codebooks: Codebooks
    table_codes: dict[str, np.ndarray]
    store: SequenceStore

    @property
    def tables(self) -> dict[str, np.ndarray]:
        return self.world.tables

    def retriever(self, device: str = "cpu", **config) -> PQRetriever:
        cfg = PQConfig(nbits=self.codebooks.nbits, **config)
        return self.world.retriever(
            self.codebooks, cfg, PQ_TEST_K, self.store, device, self.table_codes
        )


def make_world(spec: SyntheticSpec, nbits: int, lengths: list[int]) -> PQWorld:
    world = SyntheticWorld.random(spec)
    codebooks = train_codebooks(world.tables, PQConfig(nbits=nbits, kmeans_iters=6, seed=spec.seed))
    table_codes = world.encode(codebooks)
    store = world.store(codebooks, lengths, seed=spec.seed, table_codes=table_codes)
    return PQWorld(spec, world, codebooks, table_codes, store)


@pytest.fixture(scope="session")
def pq_world_8bit() -> PQWorld:
    """Synthetic low-rank tables, S=16 x k=256 codebooks."""
    return make_world(PQ_TEST_SPEC, 8, PQ_TEST_LENGTHS)


@pytest.fixture(scope="session")
def pq_world_4bit() -> PQWorld:
    """Synthetic low-rank tables, S=16 x k=16 codebooks (faiss fast-scan layout)."""
    return make_world(PQ_TEST_SPEC, 4, PQ_TEST_LENGTHS)
