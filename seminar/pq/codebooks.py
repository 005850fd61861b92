"""Per-modality PQ codebooks: k-means training (faiss), encoding, decoding, save/load.

Optionally every table is first turned by one learnt orthogonal rotation R (OPQ, shared by
all modalities): codes quantize R e, and since <R u, R e> = <u, e> the ADC scores R u against
the centroids (PQRetriever turns u once, before any backend).

Shape letters: M modalities, S sub-spaces per modality, k centroids per sub-space,
D embedding size, d = D / S sub-space size, N table rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seminar.errors import ArtifactError, UsageError
from seminar.pq.config import PQConfig

QUERY_MODALITY = "query"
# The one item modality of fused-item codebooks (PQConfig.fused_items): the item modalities'
# tables summed, the item part of every x.
ITEM_MODALITY = "item"


def unpack_codes(packed: np.ndarray, n_codes: int, nbits: int) -> np.ndarray:
    """faiss's bit-packed codes (N, ceil(n_codes * nbits / 8)) -> one uint8 per code (N, n_codes)."""
    if nbits == 8:
        return np.ascontiguousarray(packed[:, :n_codes])
    # faiss's BitstringWriter fills each byte from its low bits: code 2j is the low nibble.
    low = packed & 0x0F
    high = packed >> 4
    # (N, n_codes / 2, 2) -> (N, n_codes)
    return np.ascontiguousarray(
        np.stack([low, high], axis=-1).reshape(len(packed), -1)[:, :n_codes]
    )


def pack_codes(codes: np.ndarray, nbits: int) -> np.ndarray:
    """One uint8 per code (N, C) -> faiss's bit-packed layout (inverse of `unpack_codes`)."""
    if nbits == 8:
        return np.ascontiguousarray(codes, dtype=np.uint8)
    if codes.shape[1] % 2:
        codes = np.pad(codes, ((0, 0), (0, 1)))
    # (N, C) -> (N, C / 2, 2): low nibble first
    pairs = codes.reshape(len(codes), codes.shape[1] // 2, 2).astype(np.uint8)
    return np.ascontiguousarray(pairs[..., 0] | (pairs[..., 1] << 4))


@dataclass(frozen=True)
class Codebooks:
    """Trained centroids of every modality.

    modalities: table names in code order ("query" first, then the item modalities).
    centroids: float32 (M, S, k, d), in the rotated space when `rotation` is set.
    rotation: float32 (D, D) orthogonal OPQ rotation shared by all modalities, or None.
    """

    modalities: tuple[str, ...]
    centroids: np.ndarray
    nbits: int
    rotation: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.centroids.ndim != 4 or self.centroids.shape[0] != len(self.modalities):
            raise ValueError(
                f"centroids must be (M={len(self.modalities)}, S, k, d), got {self.centroids.shape}"
            )
        if self.centroids.shape[2] != 1 << self.nbits:
            raise ValueError(f"centroids has k={self.centroids.shape[2]}, nbits={self.nbits}")
        if self.rotation is not None and self.rotation.shape != (self.dim, self.dim):
            raise ValueError(f"rotation must be (D, D) = ({self.dim}, {self.dim})")

    @property
    def n_modalities(self) -> int:
        return self.centroids.shape[0]

    @property
    def n_subspaces(self) -> int:
        return self.centroids.shape[1]

    @property
    def n_centroids(self) -> int:
        return self.centroids.shape[2]

    @property
    def dim(self) -> int:
        """D, the embedding size."""
        return self.centroids.shape[1] * self.centroids.shape[3]

    @property
    def code_size(self) -> int:
        """M * S codes per event, one uint8 each."""
        return self.n_modalities * self.n_subspaces

    def _faiss_pq(self, modality: int):
        import faiss

        pq = faiss.ProductQuantizer(self.dim, self.n_subspaces, self.nbits)
        faiss.copy_array_to_vector(
            np.ascontiguousarray(self.centroids[modality]).ravel(), pq.centroids
        )
        return pq

    def encode(self, modality: str, x: np.ndarray) -> np.ndarray:
        """Rows (N, D) of one modality's table -> nearest-centroid codes (N, S) uint8."""
        if modality not in self.modalities:
            raise ArtifactError(
                f"no codebook for modality {modality!r} (have {list(self.modalities)})"
            )
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ArtifactError(f"table {modality!r} must be (N, {self.dim}), got {x.shape}")
        if self.rotation is not None:
            x = np.ascontiguousarray(x @ self.rotation.T)  # rows e -> R e
        pq = self._faiss_pq(self.modalities.index(modality))
        return unpack_codes(pq.compute_codes(x), self.n_subspaces, self.nbits)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Event codes (N, M * S) -> approximate pair vectors (N, D): sum of the modalities."""
        m_, s_, _, d = self.centroids.shape
        # (N, M*S) -> (N, M, S)
        c = codes.reshape(len(codes), m_, s_).astype(np.int64)
        # centroids[m, s, c[n, m, s]] -> (N, M, S, d)
        parts = self.centroids[np.arange(m_)[None, :, None], np.arange(s_)[None, None, :], c]
        # sum over modalities, then (N, S, d) -> (N, D)
        x = parts.sum(axis=1).reshape(len(codes), s_ * d)
        # back from the rotated space: rows R e -> e
        return x if self.rotation is None else x @ self.rotation

    def save(self, path: Path) -> None:
        """Write `path` (.npz with the centroids) and `path.json` (modalities, nbits)."""
        path = Path(path)
        extra = {} if self.rotation is None else {"rotation": self.rotation}
        np.savez(path, centroids=self.centroids, **extra)
        meta = {"modalities": list(self.modalities), "nbits": self.nbits}
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Codebooks:
        path = Path(path)
        meta_path = path.with_suffix(".json")
        if not path.exists() or not meta_path.exists():
            raise ArtifactError(f"codebooks not found: {path} and {meta_path} are both needed")
        meta = json.loads(meta_path.read_text())
        with np.load(path) as z:
            centroids = z["centroids"].astype(np.float32)
            rotation = z["rotation"].astype(np.float32) if "rotation" in z.files else None
        return cls(tuple(meta["modalities"]), centroids, int(meta["nbits"]), rotation)


def codebook_tables(tables: Mapping[str, np.ndarray], config: PQConfig) -> dict[str, np.ndarray]:
    """The tables codebooks are trained on and codes are read from: the component tables as
    given, or with `config.fused_items` the query table and ITEM_MODALITY, the sum of the item
    modalities' tables (float32, summed in the tables' order; already fused tables pass)."""
    if not config.fused_items:
        return dict(tables)
    items = [np.asarray(t, dtype=np.float32) for m, t in tables.items() if m != QUERY_MODALITY]
    if not items:
        raise ArtifactError("fused_items needs at least one item modality table")
    out = {m: np.asarray(t, dtype=np.float32) for m, t in tables.items() if m == QUERY_MODALITY}
    out[ITEM_MODALITY] = np.ascontiguousarray(np.stack(items).sum(axis=0, dtype=np.float32))
    return out


def train_codebooks(tables: dict[str, np.ndarray], config: PQConfig = PQConfig()) -> Codebooks:
    """k-means (faiss ProductQuantizer) per modality on that modality's table rows.

    tables: name -> (N_m, D) float32, as from `model.component_tables()`; all-zero rows
    (PAD/OOV items, the empty query) are kept: they are real rows events may point at. With
    `config.fused_items` the codebooks are those of `codebook_tables` (query and item).
    """
    import faiss

    if not tables:
        raise ArtifactError("no component tables to train codebooks on")
    tables = codebook_tables(tables, config)
    names = _ordered_modalities(tables)
    dims = {name: np.asarray(t).shape[1] for name, t in tables.items()}
    if len(set(dims.values())) != 1:
        raise ArtifactError(f"component tables disagree on D: {dims}")
    dim = next(iter(dims.values()))
    if dim % config.n_subspaces:
        raise UsageError(f"D={dim} is not divisible by n_subspaces={config.n_subspaces}")
    k = config.n_centroids
    rng = np.random.default_rng(config.seed)
    samples = {}
    for name in names:
        x = np.ascontiguousarray(tables[name], dtype=np.float32)
        if len(x) > config.train_max_rows:
            x = x[np.sort(rng.choice(len(x), config.train_max_rows, replace=False))]
        samples[name] = x
    rotation = _train_rotation(samples, dim, config, rng) if config.opq_iters else None
    out = []
    for name in names:
        x = samples[name] if rotation is None else samples[name] @ rotation.T
        x = np.ascontiguousarray(x, dtype=np.float32)
        if len(x) < k:
            # k-means needs at least k points; repeating rows lets a small table (tiny test
            # vocabularies) be represented exactly, with spare centroids duplicated.
            x = np.concatenate([x] * (k // len(x) + 1))[: max(k, len(x))]
        pq = faiss.ProductQuantizer(dim, config.n_subspaces, config.nbits)
        pq.cp.niter = config.kmeans_iters
        pq.cp.seed = config.seed
        pq.cp.min_points_per_centroid = 1  # small tables are fine; don't warn about them
        pq.verbose = False
        pq.train(x)
        # (S * k * d,) -> (S, k, d)
        out.append(faiss.vector_to_array(pq.centroids).reshape(config.n_subspaces, k, -1))
    return Codebooks(tuple(names), np.stack(out).astype(np.float32), config.nbits, rotation)


def _train_rotation(
    samples: dict[str, np.ndarray], dim: int, config: PQConfig, rng: np.random.Generator
) -> np.ndarray:
    """One OPQ rotation (D, D) for the rows of all tables together (faiss OPQMatrix, with a
    PQ of the configured code width inside)."""
    import faiss

    rows = np.concatenate(list(samples.values()))
    if len(rows) > config.opq_max_rows:
        rows = rows[np.sort(rng.choice(len(rows), config.opq_max_rows, replace=False))]
    opq = faiss.OPQMatrix(dim, config.n_subspaces)
    opq.niter = config.opq_iters
    opq.verbose = False
    inner = faiss.ProductQuantizer(dim, config.n_subspaces, config.nbits)
    inner.cp.min_points_per_centroid = 1
    inner.cp.seed = config.seed
    opq.pq = inner  # faiss keeps a raw pointer: `inner` must outlive train()
    opq.train(np.ascontiguousarray(rows, dtype=np.float32))
    return faiss.vector_to_array(opq.A).reshape(dim, dim).astype(np.float32)


def _ordered_modalities(tables: dict[str, object]) -> list[str]:
    """ "query" first (when present), then the item modalities in the tables' order."""
    names = list(tables)
    return [n for n in names if n == QUERY_MODALITY] + [n for n in names if n != QUERY_MODALITY]
