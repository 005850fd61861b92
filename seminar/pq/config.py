"""Typed configuration of the multi-modal product quantizer: every default lives here."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum, unique
from typing import Any


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
    opq_iters: iterations of the OPQ rotation learnt before k-means, one orthogonal D x D
        rotation shared by all modalities (so the ADC rotates u once, and every backend is
        unchanged); 0 = no rotation (plain PQ). Rotating spreads the variance of a table over
        the sub-spaces: recall@50 of 4-bit codes + a 4K rerank at L = 10k goes from 0.93 to 0.94
        on the trained MovieLens tables and from 0.72 to 0.99 on random low-rank ones
        (reports/pq.md, "by table distribution").
    opq_max_rows: the rotation is learnt on at most this many rows of all tables together.
    backend: how scores are computed (see ScoringBackend).
    rerank: shortlist `rerank * K` events by ADC, then keep the K best by exact score
        (gathered from the component tables). 1 = no rerank: the paper's pure PQ top-K.
    fused_items: one codebook for the item part of x (the sum of the item modalities' tables,
        the item table the exact rerank and gather read) instead of one per item modality, so
        an event has two modalities' codes (query, item), not 1 + 3: half the look-ups of the
        ADC at the same S. The GSU scores only the sum <u, query + item>, so nothing is lost
        but the split by modality; recall@50 of 4-bit codes + a 4K rerank at L = 10k stays
        >= 0.9 on the trained tables (reports/pq.md). Old artifacts (per modality) still load.
    """

    n_subspaces: int = 16
    nbits: int = 8
    train_max_rows: int = 32_768
    kmeans_iters: int = 20
    opq_iters: int = 20
    opq_max_rows: int = 20_000
    seed: int = 0
    backend: ScoringBackend = ScoringBackend.AUTO
    rerank: int = 1
    fused_items: bool = False

    def __post_init__(self) -> None:
        if self.n_subspaces < 1:
            raise ValueError(f"n_subspaces must be >= 1, got {self.n_subspaces}")
        if self.nbits not in (4, 8):
            raise ValueError(f"nbits must be 4 or 8, got {self.nbits}")
        if self.train_max_rows < 1:
            raise ValueError(f"train_max_rows must be >= 1, got {self.train_max_rows}")
        if self.kmeans_iters < 1:
            raise ValueError(f"kmeans_iters must be >= 1, got {self.kmeans_iters}")
        if self.opq_iters < 0 or self.opq_max_rows < 1:
            raise ValueError(
                f"opq_iters must be >= 0 and opq_max_rows >= 1, got {self.opq_iters}, "
                f"{self.opq_max_rows}"
            )
        if self.rerank < 1:
            raise ValueError(f"rerank must be >= 1, got {self.rerank}")
        # Accept the enum's string value (from JSON or the CLI) and normalise it.
        object.__setattr__(self, "backend", ScoringBackend(self.backend))

    @classmethod
    def for_serving(cls, device: str, **overrides: Any) -> PQConfig:
        """What `seminar build` serves unless told otherwise, on "cpu" or "cuda".

        CPU: 4-bit codes of the query and the fused item modality in faiss fast-scan layout,
        then an exact rerank of a 4K shortlist, the fastest CPU path whose recall@50 holds
        >= 0.9 at L = 10k (reports/pq.md). CUDA: the
        default 16 x 256 codebooks, scored by the Triton-lang ADC kernel / torch on the device.
        `overrides` (None values ignored) replace single fields.
        """
        base = cls(nbits=4, rerank=4, fused_items=True) if device == "cpu" else cls()
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})

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
            "opq_iters": self.opq_iters,
            "opq_max_rows": self.opq_max_rows,
            "seed": self.seed,
            "backend": self.backend.value,
            "rerank": self.rerank,
            "fused_items": self.fused_items,
        }

    @classmethod
    def from_json(cls, data: dict) -> PQConfig:
        unknown = set(data) - set(cls().to_json())
        if unknown:
            raise ValueError(f"unknown PQConfig field(s): {sorted(unknown)}")
        # configs saved before fused_items existed trained one codebook per item modality
        return cls(**{"fused_items": False, **data})
