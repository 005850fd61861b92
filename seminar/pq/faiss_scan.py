"""faiss over the concatenated modality vectors: the fastest CPU path for the ADC sum.

Concatenate an event's per-modality vectors into one (M*D)-vector and the per-modality
codebooks into one (M*S)-sub-quantizer PQ; tile the query u M times. Then faiss's
inner-product ADC over that PQ is exactly sum_m sum_s LUT[m, s, code] of the spec.
With 4-bit codes faiss uses IndexPQFastScan (SIMD in-register look-ups, 8-bit quantized LUTs).
"""

from __future__ import annotations

import numpy as np

from seminar.pq.codebooks import Codebooks, pack_codes

FASTSCAN_BBS = 32  # events per fast-scan block: the AVX2 register width in 4-bit codes


class FaissScanner:
    """Top-K by ADC over one sequence's codes with faiss; threads follow faiss.omp_set_num_threads.

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

    def index_for(self, codes: np.ndarray):
        """A faiss index over one sequence's codes (L, C) uint8 (one code per byte)."""
        faiss = self._faiss
        index = faiss.IndexPQ(
            self.full_dim, self.pq.M, self.codebooks.nbits, faiss.METRIC_INNER_PRODUCT
        )
        index.pq = self.pq
        index.is_trained = True
        index.add_sa_codes(pack_codes(np.asarray(codes), self.codebooks.nbits))
        if self.codebooks.nbits == 4:
            fast = faiss.IndexPQFastScan(index, FASTSCAN_BBS)
            # fast-scan's reference kernels read `orig_codes`, a raw pointer into the IndexPQ's
            # codes: keep that index alive as long as the fast-scan one.
            fast.referenced_objects = [index]
            index = fast
            if self.exact_luts:
                index.implem = 2
        return index

    def search(self, u: np.ndarray, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """u (Q, D) float32, codes (L, C) -> scores (Q, K) float32, positions (Q, K) int64
        (position -1 where the sequence has fewer than K events)."""
        n_q = len(u)
        if len(codes) == 0:
            return np.full((n_q, k), -np.inf, np.float32), np.full((n_q, k), -1, np.int64)
        # (Q, D) -> (Q, M*D): the tiled query's inner product with the concatenated vector is
        # the sum over modalities of <u, e_m>.
        uq = np.ascontiguousarray(np.tile(np.asarray(u, dtype=np.float32), (1, self.n_mod)))
        return self.index_for(codes).search(uq, k)
