"""faiss over the concatenated modality vectors: the fastest CPU path for the ADC sum.

Concatenate an event's per-modality vectors into one (M*D)-vector and the per-modality
codebooks into one (M*S)-sub-quantizer PQ; tile the query u M times. Then faiss's
inner-product ADC over that PQ is exactly sum_m sum_s LUT[m, s, code] of the spec.
With 4-bit codes faiss uses IndexPQFastScan (SIMD in-register look-ups, 8-bit quantized LUTs).

A stored sequence is kept in fast-scan's own block layout (`pack_fastscan`, done once at build
time), so a request copies its user's blocks into one long-lived index and searches: no
per-request re-packing.
"""

from __future__ import annotations

import numpy as np

from seminar.errors import ArtifactError
from seminar.pq.codebooks import Codebooks, pack_codes

FASTSCAN_BBS = 32  # events per fast-scan block: the AVX2 register width in 4-bit codes
# faiss's pq4_pack_codes: inside a block, byte j of a sub-quantizer holds the codes of events
# PERM0[j] (low nibble) and PERM0[j] + 16 (high nibble), the order its SIMD kernels read.
_PERM0 = np.array([0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15])
_EVENT_BYTE = np.argsort(_PERM0)  # the byte of a block's column that holds event e (e < 16)
# Search kernel: 13 = query-blocked kernel with a reservoir for the top-K, 4 queries per pass
# over the codes (qbs 0x4444). Timed against implem 0 and 12-15 on the bench's 10k-event
# request (400 queries, top-50..200) on the 2-core machine: 13 and 15 were fastest, within
# noise of each other; the heap kernels (12, 14) took twice as long at top-200.
FASTSCAN_IMPLEM = 13
FASTSCAN_QBS = 0x4444


def pack_fastscan(codes: np.ndarray) -> np.ndarray:
    """One 4-bit code per byte (L, C) -> fast-scan blocks (ceil(L / 32), 16 * C) uint8, the
    exact byte layout of faiss's IndexPQFastScan (bbs 32); the last block is zero-padded."""
    n, c = codes.shape
    if c % 2:
        raise ArtifactError(f"fast-scan needs an even number of codes per event, got {c}")
    n_blocks = -(-n // FASTSCAN_BBS)
    padded = np.zeros((n_blocks * FASTSCAN_BBS, c), np.uint8)
    padded[:n] = codes
    blocks = padded.reshape(n_blocks, FASTSCAN_BBS, c)
    byte = blocks[:, _PERM0, :] | (blocks[:, _PERM0 + 16, :] << 4)  # (blocks, 16, C)
    # (blocks, 16, C) -> (blocks, C, 16): 16 bytes per sub-quantizer, sub-quantizers in order
    return np.ascontiguousarray(byte.transpose(0, 2, 1)).reshape(n_blocks, 16 * c)


def unpack_fastscan(blocks, n: int):
    """Inverse of `pack_fastscan`: blocks (nb, 16 * C) -> codes (n, C), one per byte; a numpy
    array gives a numpy array, a torch tensor (a GPU-resident store) a tensor on its device."""
    is_tensor = not isinstance(blocks, np.ndarray) and hasattr(blocks, "swapaxes")
    if not is_tensor:
        blocks = np.asarray(blocks)
    n_blocks, width = blocks.shape
    c = width // 16
    byte = blocks.reshape(n_blocks, c, 16).swapaxes(1, 2)  # (nb, 16, C)
    order = _EVENT_BYTE
    if is_tensor:
        import torch

        order = torch.from_numpy(order).to(blocks.device)
        both = torch.cat([byte[:, order, :] & 0x0F, byte[:, order, :] >> 4], 1)
    else:
        both = np.concatenate([byte[:, order, :] & 0x0F, byte[:, order, :] >> 4], 1)
    return both.reshape(-1, c)[:n]


class FaissScanner:
    """Top-K by ADC over one sequence's codes with faiss; threads follow faiss.omp_set_num_threads.

    Holds one long-lived fast-scan index whose codes each `search_blocks` call replaces, so a
    scanner serves one request at a time (a Triton model instance is single-threaded).

    exact_luts: for 4-bit codes use fast-scan's float-LUT reference kernel (implem 2) instead
    of the quantized-LUT SIMD kernel; slow, for tests that compare scores with torch.
    """

    def __init__(self, codebooks: Codebooks, exact_luts: bool = False) -> None:
        import faiss

        self._faiss = faiss
        self.codebooks = codebooks
        self.exact_luts = exact_luts
        m, s, _, d = codebooks.centroids.shape
        self.n_mod = m
        self.full_dim = m * s * d
        self.pq = faiss.ProductQuantizer(self.full_dim, m * s, codebooks.nbits)
        # (M, S, k, d) -> (M*S, k, d): sub-quantizer m*S + s is codebook (m, s), the same
        # column order as the store's codes.
        faiss.copy_array_to_vector(
            np.ascontiguousarray(codebooks.centroids).ravel(), self.pq.centroids
        )
        self._stored = None
        if codebooks.nbits == 4:
            self._stored = faiss.IndexPQFastScan(self._index_pq(), FASTSCAN_BBS)
            self._stored.implem = FASTSCAN_IMPLEM
            self._stored.qbs = FASTSCAN_QBS

    def _index_pq(self):
        faiss = self._faiss
        index = faiss.IndexPQ(
            self.full_dim, self.pq.M, self.codebooks.nbits, faiss.METRIC_INNER_PRODUCT
        )
        index.pq = self.pq
        index.is_trained = True
        return index

    def index_for(self, codes: np.ndarray):
        """A faiss index over one sequence's codes (L, C) uint8 (one code per byte)."""
        index = self._index_pq()
        index.add_sa_codes(pack_codes(np.asarray(codes), self.codebooks.nbits))
        if self.codebooks.nbits == 4:
            fast = self._faiss.IndexPQFastScan(index, FASTSCAN_BBS)
            # fast-scan's reference kernels read `orig_codes`, a raw pointer into the IndexPQ's
            # codes: keep that index alive as long as the fast-scan one.
            fast.referenced_objects = [index]
            index = fast
            if self.exact_luts:
                index.implem = 2
        return index

    def tiled(self, u: np.ndarray) -> np.ndarray:
        """(Q, D) -> (Q, M*D): the tiled query's inner product with the concatenated vector is
        the sum over modalities of <u, e_m>."""
        return np.ascontiguousarray(np.tile(np.asarray(u, dtype=np.float32), (1, self.n_mod)))

    def search(self, u: np.ndarray, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """u (Q, D) float32, codes (L, C) -> scores (Q, K) float32, positions (Q, K) int64
        (position -1 where the sequence has fewer than K events)."""
        if len(codes) == 0:
            return _empty(len(u), k)
        return self.index_for(codes).search(self.tiled(u), k)

    def search_blocks(
        self, u: np.ndarray, blocks: np.ndarray, n_events: int, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like `search`, over a stored sequence already in fast-scan layout (`pack_fastscan`):
        blocks (ceil(n_events / 32), 16 * C) uint8."""
        if self._stored is None:
            raise RuntimeError("search_blocks needs 4-bit codebooks (fast-scan layout)")
        if n_events == 0:
            return _empty(len(u), k)
        index = self._stored
        nbytes = blocks.size
        index.codes.resize(nbytes)
        self._faiss.rev_swig_ptr(index.codes.get(), nbytes)[:] = blocks.reshape(-1)
        index.ntotal = n_events
        index.ntotal2 = len(blocks) * FASTSCAN_BBS
        return index.search(self.tiled(u), k)


def _empty(n_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((n_queries, k), -np.inf, np.float32), np.full((n_queries, k), -1, np.int64)
