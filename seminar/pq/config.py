"""Typed configuration of the multi-modal product quantizer: every default lives here."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum, unique


@unique
class ScoringBackend(StrEnum):
    """How ADC scores of stored events are computed.

    - `torch_lut`: per target and head, look-up tables LUT[m, s, j] and a gather-sum over codes
      (the spec's ADC, literally); runs on CPU and CUDA tensors; the reference.
    - `torch_decode`: decode each event's codes to its approximate vector, then one GEMM with u.
      Equal to `torch_lut` up to float rounding (sum of LUT entries = <u, sum of centroids>),
      and faster on CPU because the GEMM is dense.
    - `faiss`: faiss IndexPQ (8-bit) / IndexPQFastScan (4-bit) over the concatenated modality
      vectors with inner product: the fastest CPU path for 4-bit codes. CPU only.
    - `triton`: fused Triton-lang GPU kernel (LUT build + gather-sum); CUDA only.
    - `auto`: `faiss` for 4-bit codes on CPU, `torch_decode` otherwise.
    """

    TORCH_LUT = "torch_lut"
    TORCH_DECODE = "torch_decode"
    FAISS = "faiss"
    TRITON = "triton"
    AUTO = "auto"


@dataclass(frozen=True)
class PQConfig:
    """Codebook shape, k-means training and retrieval knobs.

    n_subspaces: S, sub-spaces per modality (D must be divisible by S).
    nbits: bits per code: 8 (k = 256 centroids) or 4 (k = 16, faiss fast-scan layout).
    train_max_rows: k-means sees at most this many rows of a table (sampled with `seed`).
    kmeans_iters: Lloyd iterations per sub-space.
    backend: how scores are computed (see ScoringBackend).
    rerank: shortlist `rerank * K` events by ADC, then keep the K best by exact score
        (gathered from the component tables). 1 = no rerank: the paper's pure PQ top-K.
    """

    n_subspaces: int = 16
    nbits: int = 8
    train_max_rows: int = 32_768
    kmeans_iters: int = 20
    seed: int = 0
    backend: ScoringBackend = ScoringBackend.AUTO
    rerank: int = 1

    def __post_init__(self) -> None:
        if self.n_subspaces < 1:
            raise ValueError(f"n_subspaces must be >= 1, got {self.n_subspaces}")
        if self.nbits not in (4, 8):
            raise ValueError(f"nbits must be 4 or 8, got {self.nbits}")
        if self.train_max_rows < 1:
            raise ValueError(f"train_max_rows must be >= 1, got {self.train_max_rows}")
        if self.kmeans_iters < 1:
            raise ValueError(f"kmeans_iters must be >= 1, got {self.kmeans_iters}")
        if self.rerank < 1:
            raise ValueError(f"rerank must be >= 1, got {self.rerank}")
        # Accept the enum's string value (from JSON or the CLI) and normalise it.
        object.__setattr__(self, "backend", ScoringBackend(self.backend))

    @property
    def n_centroids(self) -> int:
        """k, centroids per sub-space."""
        return 1 << self.nbits

    def to_json(self) -> dict:
        return {
            "n_subspaces": self.n_subspaces,
            "nbits": self.nbits,
            "train_max_rows": self.train_max_rows,
            "kmeans_iters": self.kmeans_iters,
            "seed": self.seed,
            "backend": self.backend.value,
            "rerank": self.rerank,
        }

    @classmethod
    def from_json(cls, data: dict) -> PQConfig:
        unknown = set(data) - set(cls().to_json())
        if unknown:
            raise ValueError(f"unknown PQConfig field(s): {sorted(unknown)}")
        return cls(**data)
