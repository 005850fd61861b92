"""The fused fast-scan kernel (seminar.pq.fused_scan) against a numpy reference of its own
quantized scores, on SYNTHETIC random codes and codebooks."""

from __future__ import annotations

import numpy as np
import pytest

from seminar.errors import ArtifactError
from seminar.pq.codebooks import Codebooks
from seminar.pq.faiss_scan import pack_fastscan
from seminar.pq.fused_scan import SAMPLE_STRIDE, ExactRerank, FusedScanner, _library

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


@pytest.fixture(params=["avx512 where present", "avx2"])
def instruction_set(request):
    """Both kernels: the AVX-512 one this CPU may pick and the AVX2 one every other CPU runs."""
    library = _library()
    library.seminar_fused_scan_avx2_only(int(request.param == "avx2"))
    yield request.param
    library.seminar_fused_scan_avx2_only(0)


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
    n_events: int, k: int, repeats: int, instruction_set: str
) -> None:
    fused = scanner()
    rng = np.random.default_rng(n_events + repeats)
    distinct = rng.integers(0, 16, (max(n_events // repeats, 1), MODALITIES * SUBSPACES))
    codes = distinct[rng.integers(0, len(distinct), n_events)].astype(np.uint8)
    queries = rng.standard_normal((13, SUBSPACES * SUB_DIM)).astype(np.float32)
    # the exact rerank's tables: SYNTHETIC pairs (item, query) of every event
    items = rng.integers(0, 50, n_events)
    query_rows = rng.integers(0, 7, n_events)
    item_table = rng.standard_normal((50, SUBSPACES * SUB_DIM)).astype(np.float32)
    query_table = rng.standard_normal((7, SUBSPACES * SUB_DIM)).astype(np.float32)
    exact_u = rng.standard_normal(queries.shape).astype(np.float32)
    rerank = ExactRerank(exact_u, items, query_rows, item_table, query_table, k=10, embeddings=True)
    ids, values, luts, reranked, embeddings = fused.search_blocks(
        queries, pack_fastscan(codes), n_events, k, with_luts=True, rerank=rerank
    )
    assert ids.shape == values.shape == (13, k)
    expected = reference_topk(luts.astype(np.int64), codes.astype(np.int64), k)
    for row, want in zip(ids, expected, strict=True):
        found = row[row >= 0]
        assert len(found) == min(k, n_events)
        assert set(found.tolist()) == want
        assert np.all(row[len(found) :] == -1)
    # the rerank: the best 10 of each shortlist by exact score, best first, ties to the earlier
    exact = exact_u @ (item_table[items] + query_table[query_rows]).T  # (13, L)
    for row, shortlist, best in zip(exact, ids, reranked, strict=True):
        listed = shortlist[shortlist >= 0]
        order = listed[np.lexsort((listed, -row[listed]))][:10]
        kept = best[best >= 0]
        assert len(kept) == min(10, len(listed))
        # float32 sums in another order: compare the scores, then the events where not tied
        np.testing.assert_allclose(row[kept], row[order], rtol=1e-5, atol=1e-5)
        assert np.all(np.diff(row[kept]) <= 1e-5)
    # and the winners' exact vectors, zero past the end
    chosen = np.maximum(reranked, 0)
    expected_vectors = np.where(
        (reranked >= 0)[..., None], item_table[items[chosen]] + query_table[query_rows[chosen]], 0
    )
    assert np.array_equal(embeddings, expected_vectors)
    # the tables are the float ADC tables up to one scale and per-table offsets, rounded
    float_luts = np.einsum(
        "qsd,msjd->qmsj", queries.reshape(13, SUBSPACES, SUB_DIM), fused_centroids(fused)
    ).reshape(13, MODALITIES * SUBSPACES, 16)
    shifted = float_luts - float_luts.min(axis=2, keepdims=True)
    scale = 255 / shifted.max(axis=(1, 2), keepdims=True)
    assert np.abs(shifted * scale - luts).max() <= 0.51


def test_taking_the_queries_head_by_head_changes_no_output() -> None:
    """heads=4: the kernel visits (target, head) queries head-major for the cache; every output
    still belongs to its own query, the same arrays as in the given order."""
    fused = scanner()
    rng = np.random.default_rng(5)
    n_events, dim = 1_500, SUBSPACES * SUB_DIM
    codes = rng.integers(0, 16, (n_events, MODALITIES * SUBSPACES)).astype(np.uint8)
    queries = rng.standard_normal((3 * 4, dim)).astype(np.float32)  # 3 targets x 4 heads
    table = rng.standard_normal((60, dim)).astype(np.float32)
    rerank = ExactRerank(queries, rng.integers(0, 60, n_events), None, table, None, 7, True)
    given = fused.search_blocks(queries, pack_fastscan(codes), n_events, 40, True, rerank)
    by_head = fused.search_blocks(queries, pack_fastscan(codes), n_events, 40, True, rerank, 4)
    for name, want, got in zip(given._fields, given, by_head, strict=True):
        assert np.array_equal(
            np.sort(want, axis=-1) if name in ("ids", "values") else want,
            np.sort(got, axis=-1) if name in ("ids", "values") else got,
        ), name


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
    with pytest.raises(ArtifactError, match="queries must have shape"):
        fused.search_blocks(queries[:, :10], blocks, 40, 5)
    with pytest.raises(ArtifactError, match=r"not \(targets, 3 heads\)"):
        fused.search_blocks(queries, blocks, 40, 5, heads=3)
    table = np.zeros((3, SUBSPACES * SUB_DIM), np.float32)
    out_of_range = ExactRerank(queries, np.full(40, 3), None, table, None, k=2)
    with pytest.raises(ArtifactError, match="item_index out of range"):
        fused.search_blocks(queries, blocks, 40, 5, rerank=out_of_range)


def test_served_and_offline_paths_pick_the_same_events_and_vectors() -> None:
    """One SYNTHETIC user of 1,000 events (longer than the 4K = 200 shortlist): retrieve's one
    kernel call (scan, shortlist, rerank, gather) returns what topk_positions + gather_winners
    return, and an offline row of the same history (padded) picks the same positions."""
    import torch

    from seminar.pq import PQConfig, train_codebooks
    from seminar.pq.synthetic import SyntheticSpec, SyntheticWorld

    spec = SyntheticSpec(n_items=600, n_queries=50, seed=3)
    world = SyntheticWorld.random(spec)
    config = PQConfig(nbits=4, rerank=4, kmeans_iters=2, opq_iters=2, train_max_rows=600)
    books = train_codebooks(world.tables, config)
    codes = world.encode(books)
    store = world.store(books, [1_000], seed=3, table_codes=codes)
    retriever = world.retriever(books, config, 10, store, table_codes=codes)
    assert retriever._fused is not None
    x_t = torch.from_numpy(np.random.default_rng(3).standard_normal((6, 64)).astype(np.float32))
    emb, valid = retriever.retrieve(0, x_t)
    item, query, pos, pos_valid = retriever.retrieve_positions(0, x_t)
    assert torch.equal(valid, pos_valid) and bool(valid.all())
    assert torch.equal(emb, retriever.gather_winners(item, query, pos, pos_valid))
    # offline: the same history as one row with 7 padding slots in front
    pad = torch.zeros((1, 7), dtype=torch.long)
    seq_item, seq_query = torch.cat([pad, item], 1), torch.cat([pad, query], 1)
    mask = torch.cat(
        [torch.zeros((1, 7), dtype=torch.bool), torch.ones_like(item, dtype=torch.bool)], 1
    )
    u = retriever.query_vectors(x_t)
    for row in range(len(x_t)):
        offline, offline_valid = retriever.select(
            u[row : row + 1], None, seq_item, seq_query, mask, 10
        )
        assert torch.equal(offline[0] - 7, pos[row]) and bool(offline_valid.all())
