"""Synthetic (labelled so everywhere) tables and lifelong users for PQ tests and benchmarks.

Trained embedding tables are far from isotropic: a few directions carry most of the variance.
`synthetic_tables` imitates that with a rank-`rank` latent part plus small isotropic noise;
`rank=None` gives the isotropic Gaussian worst case (every direction matters equally);
`clusters=C` plants C cluster centres per table (rows = centre + small noise), the case PQ is
built for. `SyntheticWorld` holds tables and a GSU projection (random ones, or a trained
model's) and draws synthetic users over them into a store and a retriever, for the PQ tests
and benchmarks alike.

numpy only at import (serving/long_users.py draws its users here); building a store or a
retriever imports the PQ engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from seminar.pq.codebooks import Codebooks
    from seminar.pq.config import PQConfig
    from seminar.pq.retriever import PQRetriever
    from seminar.pq.store import SequenceStore

ITEM_MODALITIES = ("id", "text", "attr")


@dataclass(frozen=True)
class SyntheticSpec:
    """Shapes and seed of one synthetic PQ world."""

    dim: int = 64
    heads: int = 4
    n_items: int = 20_000
    n_queries: int = 2_000
    rank: int | None = 8
    clusters: int | None = None
    noise: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("dim", "heads", "n_items", "n_queries"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.rank is not None and not 1 <= self.rank <= self.dim:
            raise ValueError(f"rank must be in [1, dim], got {self.rank}")
        if self.clusters is not None and self.clusters < 1:
            raise ValueError(f"clusters must be >= 1, got {self.clusters}")
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")


def synthetic_tables(spec: SyntheticSpec = SyntheticSpec()) -> dict[str, np.ndarray]:
    """Component tables "query" (Q, D) and one (I, D) per item modality, float32."""
    rng = np.random.default_rng(spec.seed)
    sizes = {"query": spec.n_queries} | {m: spec.n_items for m in ITEM_MODALITIES}
    out = {}
    for name, n in sizes.items():
        if spec.clusters is not None:
            # planted structure: every row is one of `clusters` centres plus small noise
            centres = rng.standard_normal((spec.clusters, spec.dim))
            table = centres[rng.integers(0, spec.clusters, n)]
            table = table + spec.noise * rng.standard_normal((n, spec.dim))
        elif spec.rank is None:
            table = rng.standard_normal((n, spec.dim))
        else:
            basis = rng.standard_normal((spec.rank, spec.dim)) / np.sqrt(spec.rank)
            table = rng.standard_normal((n, spec.rank)) @ basis
            table += spec.noise * rng.standard_normal((n, spec.dim))
        out[name] = (table / np.sqrt(len(sizes))).astype(np.float32)
    return out


def synthetic_users(
    lengths: list[int],
    n_items: int,
    n_queries: int,
    seed: int = 0,
    search_share: float = 0.3,
    first_item: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """offsets (U+1,), item (N,), query (N,) for users of the given lengths; items uniform in
    [first_item, n_items); a `search_share` of events carry a query, the rest are
    recommendation events (query 0)."""
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    item = rng.integers(first_item, n_items, n).astype(np.int32)
    query = rng.integers(1, max(n_queries, 2), n).astype(np.int32)
    query[rng.random(n) >= search_share] = 0
    return offsets, item, query


def synthetic_gsu(spec: SyntheticSpec = SyntheticSpec()) -> tuple[np.ndarray, np.ndarray]:
    """A GSU projection u = x_t @ W + b: W (D, H, D), b (H, D), like W_K^T W_Q per head."""
    rng = np.random.default_rng(spec.seed + 1)
    d, h = spec.dim, spec.heads
    wq = rng.standard_normal((h, d, d)) / np.sqrt(d)
    wk = rng.standard_normal((h, d, d)) / np.sqrt(d)
    # u_h = W_K^h^T W_Q^h x  ->  W[e, h, :] = (W_K^h^T W_Q^h)[:, e]
    a = np.einsum("hkd,hke->hde", wk, wq)  # (H, D, D)
    weight = np.ascontiguousarray(a.transpose(2, 0, 1)).astype(np.float32)  # (D, H, D)
    return weight, np.zeros((h, d), np.float32)


@dataclass(frozen=True)
class SyntheticWorld:
    """Component tables and a GSU projection that synthetic users are drawn over."""

    tables: dict[str, np.ndarray]  # "query" (Q, D) and one (I, D) per item modality, float32
    gsu_weight: np.ndarray  # (D, H, D)
    gsu_bias: np.ndarray  # (H, D)
    # Item rows below it are PAD / OOV rows of a trained model, never an event or a candidate.
    first_item: int = 0

    @classmethod
    def random(cls, spec: SyntheticSpec = SyntheticSpec()) -> SyntheticWorld:
        """Random SYNTHETIC tables and GSU projection of `spec`."""
        weight, bias = synthetic_gsu(spec)
        return cls(synthetic_tables(spec), weight, bias)

    @property
    def dim(self) -> int:
        return self.gsu_weight.shape[0]

    @property
    def n_items(self) -> int:
        return len(next(t for m, t in self.tables.items() if m != "query"))

    @property
    def n_queries(self) -> int:
        return len(self.tables["query"])

    def encode(self, codebooks: Codebooks) -> dict[str, np.ndarray]:
        """The codes (N_m, S) of every table row, per modality."""
        return {m: codebooks.encode(m, t) for m, t in self.tables.items()}

    def store(
        self,
        codebooks: Codebooks,
        lengths: list[int],
        seed: int = 0,
        table_codes: dict[str, np.ndarray] | None = None,
    ) -> SequenceStore:
        """The sequence store of synthetic users of the given lengths (`synthetic_users`)."""
        from seminar.pq.store import build_sequence_store

        offsets, item, query = synthetic_users(
            lengths, self.n_items, self.n_queries, seed=seed, first_item=self.first_item
        )
        codes = table_codes if table_codes is not None else self.encode(codebooks)
        return build_sequence_store(
            offsets, item, query, codes, codebooks.modalities, codebooks.nbits
        )

    def retriever(
        self,
        codebooks: Codebooks,
        config: PQConfig,
        k: int,
        store: SequenceStore,
        device: str = "cpu",
        table_codes: dict[str, np.ndarray] | None = None,
    ) -> PQRetriever:
        """A PQ retriever over `store` with these tables and projection."""
        import torch

        from seminar.pq.retriever import PQRetriever

        return PQRetriever(
            codebooks,
            {m: torch.from_numpy(t) for m, t in self.tables.items()},
            table_codes if table_codes is not None else self.encode(codebooks),
            config,
            store=store,
            gsu_weight=torch.from_numpy(self.gsu_weight),
            gsu_bias=torch.from_numpy(self.gsu_bias),
            k=k,
            device=device,
        )
