"""What `seminar bench pq` measures: the request, the methods by report label, every size."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from seminar.pq.config import PQConfig, ScoringBackend

# One request: 1 user x 100 candidates x 4 heads, top-50 of that user's whole sequence.
CANDIDATES, HEADS, TOP_K = 100, 4, 50

EXACT = "exact GSU (gather tables + GEMM + top-K + gather)"
EXACT_FAISS = "exact GSU, faiss exhaustive IP search (second anchor)"
FAST = "pq 4-bit faiss fast-scan"
SERVED_CONFIG = PQConfig.for_serving("cpu")  # what `seminar build --target cpu` serves
SERVED = (
    f"pq 4-bit fast-scan + rerank {SERVED_CONFIG.rerank}K, fused item codebook "
    "(CPU serving default)"
)
# The served configuration with faiss's own top-K collection instead of the fused kernel
# (seminar.pq.fused_scan): the path it replaced, timed side by side.
FAISS_SHORTLIST = (
    f"pq 4-bit fast-scan + rerank {SERVED_CONFIG.rerank}K, fused item codebook, faiss shortlist"
)
# The served configuration with a codebook per item modality (the default before
# PQConfig.fused_items): twice the look-ups per event.
PER_MODALITY_CONFIG = replace(SERVED_CONFIG, fused_items=False)
PER_MODALITY = f"pq 4-bit fast-scan + rerank {SERVED_CONFIG.rerank}K, a codebook per modality"
HIGH_RECALL = "pq 8-bit torch_decode + rerank 2K"
DECODE = "pq 8-bit torch_decode"
FAISS_PQ = "faiss IndexPQ search only (8-bit)"
FAISS_FASTSCAN = "faiss IndexPQFastScan search only (4-bit)"
RAW_FAISS = (FAISS_PQ, FAISS_FASTSCAN)

# The project's latency goal for the served PQ GSU (README, "PQ retrieval"): at most this
# fraction of the exact GSU's time at L = BREAKDOWN_LENGTH.
TARGET_RATIO = 0.5
BREAKDOWN_LENGTH = 10_000
DISTRIBUTION_REQUESTS = 3  # recall by table distribution: candidates under this many queries


def timed_methods() -> dict[str, PQConfig]:
    """Every PQ configuration the latency table times, by report label."""
    return {
        "pq 8-bit torch_lut (reference ADC)": PQConfig(nbits=8, backend=ScoringBackend.TORCH_LUT),
        DECODE: PQConfig(nbits=8, backend=ScoringBackend.TORCH_DECODE),
        "pq 8-bit faiss IndexPQ": PQConfig(nbits=8, backend=ScoringBackend.FAISS),
        HIGH_RECALL: PQConfig(nbits=8, backend=ScoringBackend.TORCH_DECODE, rerank=2),
        FAST: PQConfig(nbits=4, backend=ScoringBackend.FAISS),
        "pq 4-bit fast-scan + rerank 2K": PQConfig(nbits=4, backend=ScoringBackend.FAISS, rerank=2),
        FAISS_SHORTLIST: SERVED_CONFIG,
        PER_MODALITY: PER_MODALITY_CONFIG,
        SERVED: SERVED_CONFIG,
    }


def distribution_methods() -> dict[str, PQConfig]:
    """The PQ configurations whose recall the distribution table compares."""
    rerank = SERVED_CONFIG.rerank
    return {
        "pq 8-bit": PQConfig(nbits=8, backend=ScoringBackend.TORCH_DECODE),
        "pq 8-bit + rerank 2K": PQConfig(nbits=8, backend=ScoringBackend.TORCH_DECODE, rerank=2),
        "pq 4-bit fast-scan": PQConfig(nbits=4, backend=ScoringBackend.FAISS),
        f"pq 4-bit fast-scan + rerank {rerank}K, no OPQ": PQConfig(
            nbits=4, backend=ScoringBackend.FAISS, rerank=rerank, opq_iters=0
        ),
        f"pq 4-bit fast-scan + rerank {rerank}K": PQConfig(
            nbits=4, backend=ScoringBackend.FAISS, rerank=rerank
        ),
        f"pq 4-bit fast-scan + rerank {rerank}K, fused item codebook (served)": SERVED_CONFIG,
    }


def trained_run_methods() -> dict[str, PQConfig]:
    """The PQ configurations evaluated on a trained run's test split."""
    return {
        DECODE: PQConfig(nbits=8),
        HIGH_RECALL: PQConfig(nbits=8, rerank=2),
        FAST: PQConfig(nbits=4),
        SERVED: SERVED_CONFIG,
    }


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of one benchmark run; `quick()` fits in two minutes on 2 shared cores."""

    lengths: tuple[int, ...] = (1_000, 10_000, 100_000)
    runs: int = 20
    warmup: int = 2
    threads: int = 2
    seed: int = 0
    n_items: int = 20_000
    train_max_rows: int = 20_000
    kmeans_iters: int = 20
    lut_max_length: int = 10_000  # torch_lut is the slow reference: skip it beyond this L
    long_length: int = 100_000  # from this L on, a quarter of the runs (at least 2)
    distributions: bool = True  # recall at 10k for isotropic / low-rank / clustered tables

    def __post_init__(self) -> None:
        if self.runs < 1 or self.warmup < 0 or self.threads < 1:
            raise ValueError("runs and threads must be >= 1, warmup >= 0")
        if not self.lengths or min(self.lengths) < 1:
            raise ValueError(f"lengths must be positive, got {self.lengths}")

    @classmethod
    def quick(cls, **changes: Any) -> BenchConfig:
        return cls(
            runs=8,
            warmup=1,
            n_items=5_000,
            train_max_rows=5_000,
            kmeans_iters=10,
            lut_max_length=1_000,
            distributions=False,
            **changes,
        )

    @property
    def is_quick(self) -> bool:
        return self.runs < BenchConfig().runs

    def runs_at(self, length: int) -> int:
        return max(2, self.runs // 4) if length >= self.long_length else self.runs
