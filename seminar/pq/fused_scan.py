"""Fast-scan ADC with the shortlist collection and the exact rerank fused in: a small C++ kernel.

faiss's fast-scan scores a 10k-event sequence for 400 queries in about 2 ms, then spent more
than that again collecting a 200-deep shortlist per query in its reservoir (reports/pq.md).
fused_scan.cpp scans the same fast-scan blocks (`pack_fastscan`) and sets each query's
shortlist threshold from a strided sample of the blocks it scanned first, so that the other
blocks leave the registers only for the few events above it. The shortlist is the exact top-k
by the quantized ADC score (ties to the earlier event); the same call reranks it by exact score
against the item and query tables and can write the winners' exact vectors (`ExactRerank`).

`make setup` builds the kernel with the machine's g++ (`python -m seminar.pq.fused_scan`);
`FusedScanner.available()` is False without the built library or on a CPU without AVX2, and
the retriever then uses faiss (seminar.pq.faiss_scan), the same shortlist up to LUT rounding.
The kernel runs on torch's OpenMP threads (it binds to the libgomp torch loads).
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from seminar.errors import ArtifactError
from seminar.pq.codebooks import Codebooks
from seminar.pq.faiss_scan import FASTSCAN_BBS

SOURCE = Path(__file__).with_name("fused_scan.cpp")
HEADER = SOURCE.with_suffix(".h")
LIBRARY = Path(__file__).with_name("_fused_scan.so")
COMPILE = ("g++", "-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp")
# Every SAMPLE_STRIDE-th block is scanned first and kept whole; the threshold is the score
# SAMPLE_DEPTH_PERCENT / 100 times deeper in that sample than the shortlist's expected share of
# it, so that about 1.5 k events pass and fewer than k almost never do (then the query is
# scanned again without a threshold: the same answer, twice the time). Timed on the bench's
# 10k-event request (400 queries, k = 200) on the 2-core machine against strides 4 and 16 and
# depths 1.3x and 2x: stride 8 at 1.5x was fastest, with under 1% of the queries scanned twice.
SAMPLE_STRIDE = 8
SAMPLE_DEPTH_PERCENT = 150


def compile_library(library: Path, sources: tuple[Path, ...], flags: tuple[str, ...] = ()) -> Path:
    """g++ `sources` into the shared library `library` (COMPILE's flags, then `flags`);
    ArtifactError with the compiler's message when it fails."""
    command = [*COMPILE, "-o", str(library), *map(str, sources), *flags]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ArtifactError(f"building {library.name} failed:\n{done.stderr.strip()}")
    return library


def build(quiet: bool = False) -> Path:
    """Compile fused_scan.cpp into the shared library next to it; returns its path."""
    compile_library(LIBRARY, (SOURCE,))
    if not quiet:
        print(f"built {LIBRARY}")
    return LIBRARY


@cache
def _library() -> ctypes.CDLL | None:
    """The built kernel, or None (not built, stale, or no AVX2 on this CPU)."""
    if not LIBRARY.exists():
        return None
    # torch first: its libgomp.so.1 is then the OpenMP runtime the kernel binds to, one thread
    # pool for torch and the kernel
    import torch  # noqa: F401

    if any(
        src.exists() and LIBRARY.stat().st_mtime < src.stat().st_mtime for src in (SOURCE, HEADER)
    ):
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
        integer, pointer, pointer, pointer, pointer, pointer, pointer, pointer, pointer, integer,
        size, pointer, pointer, size,
    ]  # fmt: skip
    return library


@dataclass(frozen=True)
class ExactRerank:
    """What the kernel reranks a shortlist against: event e of the sequence has the exact vector
    item_table[item_index[e]] + query_table[query_index[e]] (no query table: item only), and
    u (Q, D) are the queries before any rotation; the best `k` by <u, x> are kept, and with
    `embeddings` their exact vectors are written too."""

    u: np.ndarray
    item_index: np.ndarray
    query_index: np.ndarray | None
    item_table: np.ndarray
    query_table: np.ndarray | None
    k: int
    embeddings: bool = False


class ScanResult(NamedTuple):
    """ids (Q, k) int64: the shortlist (no order; -1 past the end of a short sequence);
    values (Q, k) uint16: their quantized ADC scores; luts (Q, M*S, 16) uint8 when asked for;
    reranked (Q, rerank.k) int64 with a rerank: the best by exact score, best first, ties to the
    earlier event, -1 past the end; embeddings (Q, rerank.k, D) float32 with rerank.embeddings:
    their exact vectors, zero past the end."""

    ids: np.ndarray
    values: np.ndarray
    luts: np.ndarray | None
    reranked: np.ndarray | None
    embeddings: np.ndarray | None


def _floats(array: np.ndarray, shape: tuple[int | None, ...], name: str) -> np.ndarray:
    out = np.ascontiguousarray(array, dtype=np.float32)
    if out.ndim != len(shape) or any(
        w is not None and w != g for w, g in zip(shape, out.shape, strict=True)
    ):
        raise ArtifactError(f"{name} must have shape {shape}, got {out.shape}")
    return out


def _rows(index: np.ndarray, n_events: int, n_rows: int, name: str) -> np.ndarray:
    """One table row per event (n_events,) int64, each in [0, n_rows)."""
    out = np.ascontiguousarray(index, dtype=np.int64)
    if out.shape != (n_events,):
        raise ArtifactError(f"{name} must be ({n_events},), got {out.shape}")
    if n_events and (out.min() < 0 or out.max() >= n_rows):
        raise ArtifactError(f"{name} out of range for {n_rows} table rows")
    return out


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
        rerank: ExactRerank | None = None,
        heads: int = 1,
    ) -> ScanResult:
        """The top-k events by quantized ADC score of queries u (Q, D) float32 over one
        sequence's blocks (ceil(n_events / 32), 16 * M*S) uint8, and with `rerank` the best of
        them by exact score (ScanResult). `heads` > 1: u is (targets, heads) flattened, and the
        kernel takes the queries head by head (one head's shortlists overlap, so their rows
        stay cached); the results keep u's order either way."""
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
        u = _floats(u, (None, self.n_subspaces * self.sub_dim), "queries")
        n_queries = len(u)
        if heads < 1 or n_queries % heads:
            raise ArtifactError(f"{n_queries} queries are not (targets, {heads} heads)")
        # `arrays` keeps the checked copies alive through the call that reads their pointers
        arrays, exact = self._exact_arguments(rerank, n_queries, n_events)
        dim = exact[5]
        with_embeddings = rerank is not None and rerank.embeddings
        if n_events == 0 or n_queries == 0:
            return ScanResult(
                np.full((n_queries, k), -1, np.int64),
                np.zeros((n_queries, k), np.uint16),
                np.zeros((n_queries, self.code_size, 16), np.uint8) if with_luts else None,
                None if rerank is None else np.full((n_queries, rerank.k), -1, np.int64),
                np.zeros((n_queries, rerank.k, dim), np.float32) if with_embeddings else None,
            )
        # the kernel writes every slot of its outputs (-1 / zero past the end): no fill here,
        # which for the winners' vectors (megabytes) would cost as much as writing them
        ids = np.empty((n_queries, k), np.int64)
        values = np.empty((n_queries, k), np.uint16)
        luts = np.empty((n_queries, self.code_size, 16), np.uint8) if with_luts else None
        reranked = None if rerank is None else np.empty((n_queries, rerank.k), np.int64)
        embeddings = None
        if with_embeddings:
            embeddings = np.empty((n_queries, rerank.k, dim), np.float32)
        rescans = library.seminar_fused_scan_topk(
            blocks.ctypes.data, len(blocks), n_events, self.code_size, u.ctypes.data,
            self._centroids.ctypes.data, self.n_subspaces, self.sub_dim, n_queries, k,
            SAMPLE_STRIDE, SAMPLE_DEPTH_PERCENT, self.threads, ids.ctypes.data, values.ctypes.data,
            None if luts is None else luts.ctypes.data, *exact,
            None if reranked is None else reranked.ctypes.data,
            None if embeddings is None else embeddings.ctypes.data, heads,
        )  # fmt: skip
        del arrays  # read by the kernel; free to go
        if rescans < 0:
            raise ArtifactError("the fused scan kernel refused its arguments")
        self.last_rescans = int(rescans)
        return ScanResult(ids, values, luts, reranked, embeddings)

    def _exact_arguments(
        self, rerank: ExactRerank | None, n_queries: int, n_events: int
    ) -> tuple[tuple, list]:
        """The checked arrays and the kernel's rerank arguments (nulls without a rerank)."""
        if rerank is None:
            return (), [None, None, None, None, None, 0, 0]
        item_table = _floats(rerank.item_table, (None, None), "item_table")
        dim = item_table.shape[1]
        exact_u = _floats(rerank.u, (n_queries, dim), "rerank queries")
        item_index = _rows(rerank.item_index, n_events, len(item_table), "item_index")
        query_index = query_table = None
        if (rerank.query_index is None) != (rerank.query_table is None):
            raise ArtifactError("query_index and query_table come together")
        if rerank.query_table is not None:
            query_table = _floats(rerank.query_table, (None, dim), "query_table")
            query_index = _rows(rerank.query_index, n_events, len(query_table), "query_index")
        if rerank.k < 1:
            raise ArtifactError(f"rerank k must be >= 1, got {rerank.k}")
        arrays = (exact_u, item_index, query_index, item_table, query_table)
        return arrays, [
            exact_u.ctypes.data, item_index.ctypes.data,
            None if query_index is None else query_index.ctypes.data, item_table.ctypes.data,
            None if query_table is None else query_table.ctypes.data, dim, rerank.k,
        ]  # fmt: skip


if __name__ == "__main__":
    build(quiet="--quiet" in sys.argv)
