"""PQ core on synthetic (labelled) data: codebooks, ADC, backends agreeing, the store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seminar.pq import PQConfig, PQError, ScoringBackend, SequenceStore
from seminar.pq.adc import adc_scores_decode, adc_scores_lut, build_luts, masked_topk
from seminar.pq.bench import threshold_recall
from seminar.pq.codebooks import pack_codes, unpack_codes
from seminar.pq.faiss_scan import FaissScanner
from tests.support.pq import PQ_TEST_K


def _recall(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean overlap of two (..., K) top-K position sets."""
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return float(
        np.mean(
            [len(set(x.tolist()) & set(y.tolist())) / len(x) for x, y in zip(a, b, strict=True)]
        )
    )


def test_config_rejects_bad_fields() -> None:
    with pytest.raises(ValueError, match="nbits"):
        PQConfig(nbits=5)
    with pytest.raises(ValueError, match="n_subspaces"):
        PQConfig(n_subspaces=0)
    with pytest.raises(ValueError, match="rerank"):
        PQConfig(rerank=0)
    with pytest.raises(ValueError, match="unknown PQConfig field"):
        PQConfig.from_json({"nbits": 8, "bogus": 1})
    assert PQConfig.from_json(PQConfig(nbits=4).to_json()) == PQConfig(nbits=4)


@pytest.mark.parametrize("nbits", [4, 8])
def test_pack_unpack_matches_faiss_layout(nbits: int) -> None:
    import faiss

    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 32)).astype(np.float32)
    pq = faiss.ProductQuantizer(32, 8, nbits)
    pq.cp.min_points_per_centroid = 1
    pq.train(x)
    packed = pq.compute_codes(x)
    codes = unpack_codes(packed, 8, nbits)
    assert codes.max() < (1 << nbits)
    np.testing.assert_array_equal(pack_codes(codes, nbits), packed)


def test_encode_picks_nearest_centroid(pq_world_8bit) -> None:
    w = pq_world_8bit
    cb = w.codebooks
    for mi, m in enumerate(cb.modalities):
        x = w.tables[m][:200]
        codes = w.table_codes[m][:200]
        s, d = cb.n_subspaces, cb.centroids.shape[-1]
        # (N, S, 1, d) - (S, k, d) -> distances (N, S, k)
        dist = ((x.reshape(-1, s, 1, d) - cb.centroids[mi][None]) ** 2).sum(-1)
        chosen = np.take_along_axis(dist, codes[:, :, None].astype(np.int64), 2)[..., 0]
        np.testing.assert_allclose(chosen, dist.min(-1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("world", ["pq_world_8bit", "pq_world_4bit"])
def test_adc_equals_bruteforce_on_decoded_vectors(world: str, request) -> None:
    w = request.getfixturevalue(world)
    cb = w.codebooks
    _, _, codes = w.store.user(4)  # (L, C)
    u = torch.randn(3, 4, cb.dim, generator=torch.Generator().manual_seed(1))
    # brute force: decode with numpy (independent of seminar.pq.adc), then plain dot products
    decoded = torch.from_numpy(cb.decode(np.asarray(codes)))  # (L, D)
    want = torch.einsum("bhd,ld->bhl", u.double(), decoded.double())
    codes_t = torch.from_numpy(np.ascontiguousarray(codes)).unsqueeze(0)
    centroids = torch.from_numpy(cb.centroids)
    lut = build_luts(u, centroids)  # (B, H, C, k)
    assert lut.shape == (3, 4, cb.code_size, cb.n_centroids)
    got_lut = adc_scores_lut(lut, codes_t)
    got_dec = adc_scores_decode(u, codes_t, centroids)
    scale = want.abs().max().item()
    torch.testing.assert_close(got_lut.double(), want, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(got_dec.double(), want, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("world", ["pq_world_8bit", "pq_world_4bit"])
def test_torch_and_faiss_return_the_same_topk(world: str, request) -> None:
    w = request.getfixturevalue(world)
    cb = w.codebooks
    _, _, codes = w.store.user(4)
    codes = np.ascontiguousarray(codes)
    u = torch.randn(8, 4, cb.dim, generator=torch.Generator().manual_seed(2))
    scores = adc_scores_lut(
        build_luts(u, torch.from_numpy(cb.centroids)), torch.from_numpy(codes)[None]
    )
    want_scores, want = scores.topk(PQ_TEST_K, dim=-1)
    # faiss with float LUTs computes the same sums: the same top-K up to ties (a user's
    # history repeats items, and equal codes give equal scores), with the same scores
    exact_faiss = FaissScanner(cb, exact_luts=True)
    got_scores, got = exact_faiss.search(u.reshape(-1, cb.dim).numpy(), codes, PQ_TEST_K)
    got = torch.from_numpy(got).reshape(8, 4, -1)
    got_scores = torch.from_numpy(got_scores).reshape(8, 4, -1)
    torch.testing.assert_close(got_scores, want_scores, rtol=1e-4, atol=1e-4)
    # faiss's winners have the torch scores faiss reported for them
    torch.testing.assert_close(torch.gather(scores, 2, got), got_scores, rtol=1e-4, atol=1e-4)
    assert _recall(got, want) >= 0.99
    if cb.nbits == 4:
        # the SIMD fast-scan kernel quantizes LUTs to 8 bits: near-identical sets, not equal
        _, fast = FaissScanner(cb).search(u.reshape(-1, cb.dim).numpy(), codes, PQ_TEST_K)
        assert _recall(torch.from_numpy(fast).reshape(8, 4, -1), want) >= 0.95


@pytest.mark.parametrize("backend", ["torch_lut", "torch_decode", "faiss"])
@pytest.mark.parametrize("world", ["pq_world_8bit", "pq_world_4bit"])
def test_users_with_0_1_and_k_minus_1_events(world: str, backend: str, request) -> None:
    w = request.getfixturevalue(world)
    r = w.retriever(backend=ScoringBackend(backend))
    x_t = torch.randn(5, w.spec.dim, generator=torch.Generator().manual_seed(3))
    for user, length in enumerate([0, 1, PQ_TEST_K - 1, PQ_TEST_K + 1]):
        emb, mask = r.retrieve(user, x_t)
        assert emb.shape == (5, w.spec.heads, PQ_TEST_K, w.spec.dim)
        assert mask.shape == (5, w.spec.heads, PQ_TEST_K)
        assert (mask.sum(-1) == min(length, PQ_TEST_K)).all(), (user, length)
        assert (emb[~mask] == 0).all()
        item, query, _ = w.store.user(user)
        if length:
            exact = r.exact_vectors(torch.from_numpy(item).long(), torch.from_numpy(query).long())
            # every valid winner is one of the user's events, each at most once per head
            for row in emb[mask].reshape(-1, w.spec.dim):
                assert torch.isclose(exact, row, atol=1e-6).all(-1).any()
    emb, mask = r.retrieve(-1, x_t)
    assert not mask.any() and (emb == 0).all()


@pytest.mark.parametrize("rerank", [1, 2])
@pytest.mark.parametrize("backend", ["torch_lut", "torch_decode", "faiss"])
def test_select_never_picks_padding(pq_world_8bit, backend: str, rerank: int) -> None:
    w = pq_world_8bit
    r = w.retriever(backend=ScoringBackend(backend), rerank=rerank)
    g = torch.Generator().manual_seed(4)
    b, n_l = 3, 80
    seq_item = torch.randint(2, w.spec.n_items, (b, n_l), generator=g)
    seq_query = torch.randint(0, w.spec.n_queries, (b, n_l), generator=g)
    lengths = torch.tensor([0, 10, 80])
    # left-padded like a batch of histories ending at the target
    seq_mask = torch.arange(n_l)[None, :] >= (n_l - lengths)[:, None]
    u = torch.randn(b, 4, w.spec.dim, generator=g)
    pos, valid = r.select(u, torch.empty(0), seq_item, seq_query, seq_mask, PQ_TEST_K)
    assert pos.shape == valid.shape == (b, 4, PQ_TEST_K)
    assert (valid.sum(-1) == lengths.clamp(max=PQ_TEST_K)[:, None]).all()
    assert torch.gather(seq_mask[:, None, :].expand(b, 4, n_l), 2, pos)[valid].all()


def test_masked_topk_handles_empty_sequences() -> None:
    pos, valid = masked_topk(torch.zeros(2, 3, 0), torch.zeros(2, 0, dtype=torch.bool), 5)
    assert pos.shape == (2, 3, 5) and not valid.any()


def test_store_round_trip_and_verify(pq_world_8bit, tmp_path) -> None:
    store = pq_world_8bit.store
    manifest = store.save(tmp_path / "store")
    assert manifest["arrays"]["codes"]["shape"] == list(store.codes.shape)
    loaded = SequenceStore.load(tmp_path / "store", mmap=True, verify=True)
    assert isinstance(loaded.codes, np.memmap)
    for name in ("offsets", "item", "query", "codes"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(store, name))
    for u in range(store.n_users):
        for a, b in zip(loaded.user(u), store.user(u), strict=True):
            np.testing.assert_array_equal(a, b)
    # a flipped byte is caught by verify-on-load, named by file
    codes_file = tmp_path / "store" / "codes.npy"
    raw = bytearray(codes_file.read_bytes())
    raw[-1] ^= 0xFF
    codes_file.write_bytes(bytes(raw))
    with pytest.raises(PQError, match=r"codes\.npy: sha256"):
        SequenceStore.load(tmp_path / "store", verify=True)
    with pytest.raises(PQError, match="manifest not found"):
        SequenceStore.load(tmp_path / "nowhere")


def test_store_rejects_out_of_range_indices(pq_world_8bit) -> None:
    from seminar.pq import build_sequence_store

    w = pq_world_8bit
    with pytest.raises(PQError, match="item index out of range"):
        build_sequence_store(
            np.array([0, 1]),
            np.array([w.spec.n_items + 5]),
            np.array([0]),
            w.table_codes,
            w.codebooks.modalities,
            8,
        )


def test_rerank_raises_recall(pq_world_8bit) -> None:
    """A 4K shortlist re-scored exactly keeps more of the exact top-K than pure PQ."""
    w = pq_world_8bit
    x_t = torch.randn(20, w.spec.dim, generator=torch.Generator().manual_seed(5))
    item, query, _ = w.store.user(4)
    plain = w.retriever(backend=ScoringBackend.TORCH_DECODE)
    exact_x = plain.exact_vectors(torch.from_numpy(item).long(), torch.from_numpy(query).long())
    u = plain.query_vectors(x_t)
    exact = torch.einsum("bhd,ld->bhl", u, exact_x).reshape(-1, len(item))  # (B*H, L)
    recalls = {}
    for rerank in (1, 4):
        r = w.retriever(backend=ScoringBackend.TORCH_DECODE, rerank=rerank)
        it, qu, codes = r.user_sequence(4)
        pos, valid = r.topk_positions(
            u, codes, torch.ones_like(it, dtype=torch.bool), it, qu, PQ_TEST_K
        )
        recalls[rerank] = threshold_recall(
            pos.reshape(-1, PQ_TEST_K), valid.reshape(-1, PQ_TEST_K), exact, PQ_TEST_K
        )
    assert recalls[4] > recalls[1]
    assert recalls[4] >= 0.9, recalls


def test_with_config_shares_codebooks_and_checks_code_shape(pq_world_8bit) -> None:
    base = pq_world_8bit.retriever(backend=ScoringBackend.TORCH_LUT)
    other = base.with_config(PQConfig(nbits=8, backend=ScoringBackend.TORCH_DECODE))
    assert other.store is base.store and other.backend == ScoringBackend.TORCH_DECODE
    x_t = torch.randn(3, pq_world_8bit.spec.dim, generator=torch.Generator().manual_seed(6))
    assert torch.equal(base.retrieve(4, x_t)[1], other.retrieve(4, x_t)[1])
    with pytest.raises(PQError, match="4-bit"):
        base.with_config(PQConfig(nbits=4))
