"""The fused fast-scan kernel (seminar.pq.fused_scan) against a numpy reference of its own
quantized scores, on SYNTHETIC random codes and codebooks."""

from __future__ import annotations

import numpy as np
import pytest

from seminar.errors import ArtifactError
from seminar.pq.codebooks import Codebooks
from seminar.pq.faiss_scan import pack_fastscan
from seminar.pq.fused_scan import SAMPLE_STRIDE, FusedScanner

pytestmark = pytest.mark.skipif(
    not FusedScanner.available(), reason="fused scan kernel not built (make setup) or no AVX2"
)

MODALITIES, SUBSPACES, SUB_DIM = 4, 16, 4  # the served shape: 64 codes of 4 bits per event


def scanner(seed: int = 0) -> FusedScanner:
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((MODALITIES, SUBSPACES, 16, SUB_DIM)).astype(np.float32)
    books = Codebooks(
        modalities=("query", "id", "text", "attr"), centroids=centroids, nbits=4, rotation=None
    )
    return FusedScanner(books, threads=2)


def reference_topk(luts: np.ndarray, codes: np.ndarray, k: int) -> list[set[int]]:
    """Per query the k events with the highest sum of quantized table entries, ties to the
    earlier event: what the kernel promises."""
    columns = np.arange(codes.shape[1])
    scores = luts[:, columns, codes].sum(axis=-1, dtype=np.int64)  # (Q, L)
    order = np.lexsort((np.broadcast_to(np.arange(codes.shape[0]), scores.shape), -scores))
    return [set(row[:k].tolist()) for row in order]


@pytest.mark.parametrize(
    ("n_events", "k", "repeats"),
    [
        (4_000, 200, 1),  # the sampled threshold path
        (4_000, 200, 40),  # few distinct events: long runs of tied scores at the threshold
        (37, 200, 1),  # fewer events than k: all of them, then -1
        (SAMPLE_STRIDE * 32 * 3 + 5, 1, 1),  # k = 1, a partial last block
    ],
)
def test_shortlist_is_the_exact_top_k_of_its_quantized_scores(
    n_events: int, k: int, repeats: int
) -> None:
    fused = scanner()
    rng = np.random.default_rng(n_events + repeats)
    distinct = rng.integers(0, 16, (max(n_events // repeats, 1), MODALITIES * SUBSPACES))
    codes = distinct[rng.integers(0, len(distinct), n_events)].astype(np.uint8)
    queries = rng.standard_normal((13, SUBSPACES * SUB_DIM)).astype(np.float32)
    ids, values, luts = fused.search_blocks(queries, pack_fastscan(codes), n_events, k, True)
    assert ids.shape == values.shape == (13, k)
    expected = reference_topk(luts.astype(np.int64), codes.astype(np.int64), k)
    for row, want in zip(ids, expected, strict=True):
        found = row[row >= 0]
        assert len(found) == min(k, n_events)
        assert set(found.tolist()) == want
        assert np.all(row[len(found) :] == -1)
    # the tables are the float ADC tables up to one scale and per-table offsets, rounded
    float_luts = np.einsum(
        "qsd,msjd->qmsj", queries.reshape(13, SUBSPACES, SUB_DIM), fused_centroids(fused)
    ).reshape(13, MODALITIES * SUBSPACES, 16)
    shifted = float_luts - float_luts.min(axis=2, keepdims=True)
    scale = 255 / shifted.max(axis=(1, 2), keepdims=True)
    assert np.abs(shifted * scale - luts).max() <= 0.51


def fused_centroids(fused: FusedScanner) -> np.ndarray:
    """(M*S, d, 16) back to (M, S, 16, d)."""
    return fused._centroids.transpose(0, 2, 1).reshape(MODALITIES, SUBSPACES, 16, SUB_DIM)


def test_bad_blocks_and_queries_are_refused_by_name() -> None:
    fused = scanner()
    queries = np.zeros((2, SUBSPACES * SUB_DIM), np.float32)
    blocks = pack_fastscan(np.zeros((40, MODALITIES * SUBSPACES), np.uint8))
    with pytest.raises(ArtifactError, match="blocks must be"):
        fused.search_blocks(queries, blocks[:, :100], 40, 5)
    with pytest.raises(ArtifactError, match="do not fit"):
        fused.search_blocks(queries, blocks, 65, 5)
    with pytest.raises(ArtifactError, match="queries must be"):
        fused.search_blocks(queries[:, :10], blocks, 40, 5)
