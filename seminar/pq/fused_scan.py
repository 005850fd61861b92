"""Fast-scan ADC with the shortlist collection fused into the scan: a small C++ kernel.

faiss's fast-scan scores a 10k-event sequence for 400 queries in about 2 ms, then spends more
than that again collecting a 200-deep shortlist per query in its reservoir (reports/pq.md).
fused_scan.cpp scans the same fast-scan blocks (`pack_fastscan`) and sets each query's
shortlist threshold from a strided sample of the blocks it scanned first, so that the other
blocks leave the registers only for the few events above it. The result is the exact top-k by
the quantized ADC score (ties to the earlier event), the shortlist the exact rerank reads.

`make setup` builds the kernel with the machine's g++ (`python -m seminar.pq.fused_scan`);
`FusedScanner.available()` is False without the built library or on a CPU without AVX2, and
the retriever then uses faiss (seminar.pq.faiss_scan), the same shortlist up to LUT rounding.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np

from seminar.errors import ArtifactError
from seminar.pq.codebooks import Codebooks
from seminar.pq.faiss_scan import FASTSCAN_BBS

SOURCE = Path(__file__).with_name("fused_scan.cpp")
LIBRARY = Path(__file__).with_name("_fused_scan.so")
COMPILE = ("g++", "-O3", "-std=c++17", "-shared", "-fPIC", "-pthread")
# Every SAMPLE_STRIDE-th block is scanned first and kept whole; the threshold is the score
# SAMPLE_DEPTH_PERCENT / 100 times deeper in that sample than the shortlist's expected share of
# it, so that about 1.5 k events pass and fewer than k almost never do (then the query is
# scanned again without a threshold: the same answer, twice the time). Timed on the bench's
# 10k-event request (400 queries, k = 200) on the 2-core machine against strides 4 and 16 and
# depths 1.3x and 2x: stride 8 at 1.5x was fastest, with under 1% of the queries scanned twice.
SAMPLE_STRIDE = 8
SAMPLE_DEPTH_PERCENT = 150


def build(quiet: bool = False) -> Path:
    """Compile fused_scan.cpp into the shared library next to it; returns its path."""
    command = [*COMPILE, "-o", str(LIBRARY), str(SOURCE)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ArtifactError(f"building {SOURCE.name} failed:\n{done.stderr.strip()}")
    if not quiet:
        print(f"built {LIBRARY}")
    return LIBRARY


@cache
def _library() -> ctypes.CDLL | None:
    """The built kernel, or None (not built, stale, or no AVX2 on this CPU)."""
    if not LIBRARY.exists():
        return None
    if SOURCE.exists() and LIBRARY.stat().st_mtime < SOURCE.stat().st_mtime:
        return None  # built from an older source: `make setup` rebuilds it
    library = ctypes.CDLL(str(LIBRARY))
    if not library.seminar_fused_scan_supported():
        return None
    pointer = ctypes.c_void_p
    size = ctypes.c_int64
    library.seminar_fused_scan_topk.restype = size
    integer = ctypes.c_int
    library.seminar_fused_scan_topk.argtypes = [
        pointer, size, size, integer, pointer, pointer, integer, integer, size, size, size, size,
        integer, pointer, pointer, pointer,
    ]  # fmt: skip
    return library


class FusedScanner:
    """Top-k positions by 4-bit ADC over one sequence's fast-scan blocks, `threads` threads.

    The query vectors are the rotated u of the retriever; their look-up tables against the
    codebooks are built and quantized here (uint8, one scale and per-table offsets per query).
    """

    def __init__(self, codebooks: Codebooks, threads: int = 1) -> None:
        if codebooks.nbits != 4:
            raise ArtifactError(f"the fused scan reads 4-bit codes, got {codebooks.nbits}-bit")
        if not self.available():
            raise ArtifactError(
                f"the fused scan kernel is not built ({LIBRARY.name}; run `make setup`) or "
                "this CPU has no AVX2"
            )
        m, s, k, d = codebooks.centroids.shape
        self.n_subspaces, self.sub_dim = s, d
        self.code_size = m * s
        self.threads = threads
        # (M, S, k, d) -> (M*S, d, k): code column m*S + s, the k centroids of one dimension
        # contiguous (the kernel's inner loop)
        self._centroids = np.ascontiguousarray(
            codebooks.centroids.reshape(m * s, k, d).transpose(0, 2, 1), dtype=np.float32
        )
        self.last_rescans = 0  # queries the last search scanned twice (for the bench)

    @staticmethod
    def available() -> bool:
        return _library() is not None

    def search_blocks(
        self,
        u: np.ndarray,
        blocks: np.ndarray,
        n_events: int,
        k: int,
        with_luts: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """u (Q, D) float32, blocks (ceil(n_events / 32), 16 * M*S) uint8 -> the top-k
        positions (Q, k) int64 by quantized ADC score (in no particular order; -1 past the end of
        a sequence of fewer than k events), their scores (Q, k) uint16, and with `with_luts` the
        quantized look-up tables (Q, M*S, 16) uint8 they were summed from."""
        library = _library()
        if library is None:
            raise ArtifactError("the fused scan kernel is not available")
        blocks = np.ascontiguousarray(blocks, dtype=np.uint8)
        if blocks.ndim != 2 or blocks.shape[1] != 16 * self.code_size:
            raise ArtifactError(
                f"fast-scan blocks must be (n, {16 * self.code_size}), got {blocks.shape}"
            )
        if not 0 <= n_events <= len(blocks) * FASTSCAN_BBS:
            raise ArtifactError(f"{n_events} events do not fit {len(blocks)} blocks of 32")
        u = np.ascontiguousarray(u, dtype=np.float32)
        if u.ndim != 2 or u.shape[1] != self.n_subspaces * self.sub_dim:
            raise ArtifactError(
                f"queries must be (Q, {self.n_subspaces * self.sub_dim}), got {u.shape}"
            )
        n_queries = len(u)
        ids = np.full((n_queries, k), -1, np.int64)
        values = np.zeros((n_queries, k), np.uint16)
        luts = np.zeros((n_queries, self.code_size, 16), np.uint8) if with_luts else None
        if n_events == 0 or n_queries == 0:
            return ids, values, luts
        rescans = library.seminar_fused_scan_topk(
            blocks.ctypes.data, len(blocks), n_events, self.code_size, u.ctypes.data,
            self._centroids.ctypes.data, self.n_subspaces, self.sub_dim, n_queries, k,
            SAMPLE_STRIDE, SAMPLE_DEPTH_PERCENT, self.threads, ids.ctypes.data, values.ctypes.data,
            None if luts is None else luts.ctypes.data,
        )  # fmt: skip
        if rescans < 0:
            raise ArtifactError("the fused scan kernel refused its arguments")
        self.last_rescans = int(rescans)
        return ids, values, luts


if __name__ == "__main__":
    build(quiet="--quiet" in sys.argv)
