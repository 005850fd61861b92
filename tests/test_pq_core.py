"""PQ core on synthetic (labelled) data: codebooks, ADC, backends agreeing, the store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seminar.bench.pq.gsu import score_recall, threshold_recall
from seminar.errors import ArtifactError, UsageError
from seminar.pq import PQConfig, ScoringBackend, SequenceStore
from seminar.pq.adc import adc_scores_decode, adc_scores_lut, build_luts, masked_topk
from seminar.pq.codebooks import codebook_tables, pack_codes, train_codebooks, unpack_codes
from seminar.pq.faiss_scan import FaissScanner
from seminar.pq.synthetic import SyntheticWorld
from tests.support.pq import PQ_TEST_K, PQ_TEST_LENGTHS


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
        x = w.tables[m][:200] @ cb.rotation.T  # codes quantize the rotated rows R e
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
    # brute force: decode with numpy (independent of seminar.pq.adc, and turned back from the
    # OPQ rotation), then plain dot products
    assert cb.rotation is not None
    decoded = torch.from_numpy(cb.decode(np.asarray(codes)))  # (L, D)
    want = torch.einsum("bhd,ld->bhl", u.double(), decoded.double())
    codes_t = torch.from_numpy(np.ascontiguousarray(codes)).unsqueeze(0)
    centroids = torch.from_numpy(cb.centroids)
    u_rot = u @ torch.from_numpy(cb.rotation).T  # the ADC scores R u against the centroids
    lut = build_luts(u_rot, centroids)  # (B, H, C, k)
    assert lut.shape == (3, 4, cb.code_size, cb.n_centroids)
    got_lut = adc_scores_lut(lut, codes_t)
    got_dec = adc_scores_decode(u_rot, codes_t, centroids)
    got_retriever = w.retriever(backend=ScoringBackend.TORCH_LUT).adc_scores(u, codes_t)
    scale = want.abs().max().item()
    for got in (got_lut, got_dec, got_retriever):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5 * scale)


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


@pytest.mark.parametrize("rerank", [1, 4])
@pytest.mark.parametrize("backend", ["torch_lut", "torch_decode", "faiss"])
@pytest.mark.parametrize("world", ["pq_world_8bit", "pq_world_4bit"])
def test_users_with_0_1_and_k_minus_1_events(
    world: str, backend: str, rerank: int, request
) -> None:
    w = request.getfixturevalue(world)
    r = w.retriever(backend=ScoringBackend(backend), rerank=rerank)
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
    saved = store.save(tmp_path / "store")
    assert saved.files["codes.npy"].shape == store.codes.shape
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
    with pytest.raises(ArtifactError, match=r"codes\.npy: sha256"):
        SequenceStore.load(tmp_path / "store", verify=True)
    with pytest.raises(ArtifactError, match="manifest not found"):
        SequenceStore.load(tmp_path / "nowhere")


def test_store_rejects_out_of_range_indices(pq_world_8bit) -> None:
    from seminar.pq import build_sequence_store

    w = pq_world_8bit
    with pytest.raises(ArtifactError, match="item index out of range"):
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
        it, qu, codes, _ = r.user_sequence(4)
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
    with pytest.raises(UsageError, match="4-bit"):
        base.with_config(PQConfig(nbits=4))


# -- 4-bit store in faiss fast-scan layout -------------------------------------------------------


@pytest.mark.parametrize("n_events", [0, 1, 31, 32, 33, 1_000])
def test_pack_fastscan_is_faiss_layout_and_round_trips(n_events: int) -> None:
    """Our block packing is byte-for-byte what IndexPQFastScan builds from the same codes."""
    import faiss

    from seminar.pq.faiss_scan import pack_fastscan, unpack_fastscan

    c = 64
    codes = np.random.default_rng(n_events).integers(0, 16, (n_events, c)).astype(np.uint8)
    blocks = pack_fastscan(codes)
    np.testing.assert_array_equal(unpack_fastscan(blocks, n_events), codes)
    index = faiss.IndexPQ(c, c, 4, faiss.METRIC_INNER_PRODUCT)
    index.is_trained = True
    index.add_sa_codes(pack_codes(codes, 4))
    fast = faiss.IndexPQFastScan(index, 32)
    want = faiss.rev_swig_ptr(fast.codes.get(), fast.codes.size())
    np.testing.assert_array_equal(blocks.reshape(-1), want)


def test_4bit_store_round_trips_codes_and_files(pq_world_4bit, pq_world_8bit, tmp_path) -> None:
    from seminar.pq.store import event_codes

    w = pq_world_4bit
    store = w.store
    assert store.fastscan and store.code_size == w.codebooks.code_size
    # two codes per byte plus each user's last block padding: under 1/16 of M x D float32
    exact_bytes = w.codebooks.n_modalities * w.spec.dim * 4
    assert store.bytes_per_event * 16 <= exact_bytes
    for u in range(store.n_users):
        item, query, codes = store.user(u)
        np.testing.assert_array_equal(
            codes, event_codes(w.table_codes, w.codebooks.modalities, item, query)
        )
    store.save(tmp_path / "store")
    loaded = SequenceStore.load(tmp_path / "store", verify=True)
    np.testing.assert_array_equal(loaded.block_offsets, store.block_offsets)
    for u in range(store.n_users):
        np.testing.assert_array_equal(loaded.user_blocks(u), store.user_blocks(u))
    with pytest.raises(ArtifactError, match="block_offsets disagree"):
        SequenceStore(
            store.offsets,
            store.item,
            store.query,
            store.codes,
            store.modalities,
            4,
            store.block_offsets + 1,
        )
    with pytest.raises(RuntimeError, match="only a 4-bit store"):
        pq_world_8bit.store.user_blocks(0)


def test_stored_fastscan_search_equals_per_request_packing(pq_world_4bit) -> None:
    """Searching the build-time blocks picks what packing the codes per request picks, for
    users with 0, 1, K-1, K+1 and 2,000 events, and never returns a padding slot."""
    w = pq_world_4bit
    scanner = FaissScanner(w.codebooks)
    u = np.random.default_rng(3).standard_normal((12, w.spec.dim)).astype(np.float32)
    for user in range(w.store.n_users):
        _, _, codes = w.store.user(user)
        n = len(codes)
        want_s, want_i = scanner.search(u, codes, PQ_TEST_K)
        got_s, got_i = scanner.search_blocks(u, w.store.user_blocks(user), n, PQ_TEST_K)
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_array_equal(got_s, want_s)
        assert got_i.max() < n
        assert ((got_i >= 0).sum(-1) == min(n, PQ_TEST_K)).all()


def test_shortlist_scores_by_index_equal_torch(pq_world_4bit) -> None:
    """The CPU rerank's by-index inner products equal the gathered exact vectors' scores."""
    r = pq_world_4bit.retriever(backend=ScoringBackend.FAISS, rerank=4)
    g = torch.Generator().manual_seed(8)
    u = torch.randn(5, 4, pq_world_4bit.spec.dim, generator=g)
    item = torch.randint(0, pq_world_4bit.spec.n_items, (5, 4, 30), generator=g)
    query = torch.randint(0, pq_world_4bit.spec.n_queries, (5, 4, 30), generator=g)
    want = torch.einsum("bhd,bhrd->bhr", u, r.exact_vectors(item, query))
    torch.testing.assert_close(r._shortlist_scores(u, item, query), want, rtol=1e-5, atol=1e-5)


def test_serving_presets_and_overrides() -> None:
    cpu, gpu = PQConfig.for_serving("cpu"), PQConfig.for_serving("cuda")
    assert (cpu.nbits, cpu.rerank, cpu.fused_items) == (4, 4, True)
    assert (gpu.nbits, gpu.rerank, gpu.fused_items) == (PQConfig().nbits, 1, False) == (8, 1, False)
    assert PQConfig.from_json(cpu.to_json()) == cpu
    # a config saved before fused_items existed describes per-modality codebooks
    old = {k: v for k, v in cpu.to_json().items() if k != "fused_items"}
    assert PQConfig.from_json(old).fused_items is False
    assert PQConfig.for_serving("cpu", rerank=2, nbits=None).rerank == 2


def test_opq_rotation_is_orthogonal_and_cuts_quantization_error() -> None:
    """On low-rank (trained-like) SYNTHETIC tables the learnt rotation spreads the variance
    over the sub-spaces: 4-bit codes reconstruct the rows with less error than plain PQ."""
    from seminar.pq import train_codebooks
    from seminar.pq.synthetic import SyntheticSpec, synthetic_tables

    tables = synthetic_tables(SyntheticSpec(n_items=3_000, n_queries=500, rank=8, seed=11))
    errors = {}
    for opq_iters in (0, 10):
        cb = train_codebooks(tables, PQConfig(nbits=4, kmeans_iters=10, opq_iters=opq_iters))
        if opq_iters:
            np.testing.assert_allclose(cb.rotation @ cb.rotation.T, np.eye(cb.dim), atol=1e-4)
        else:
            assert cb.rotation is None
        x = tables["id"]
        codes = cb.encode("id", x).astype(np.int64)  # (N, S)
        centroids = cb.centroids[cb.modalities.index("id")]  # (S, k, d)
        # (N, S, d) -> (N, D), then back from the rotated space
        approx = centroids[np.arange(cb.n_subspaces)[None, :], codes].reshape(len(x), -1)
        if cb.rotation is not None:
            approx = approx @ cb.rotation
        errors[opq_iters] = float(((approx - x) ** 2).sum(-1).mean())
    assert errors[10] < 0.8 * errors[0], errors


@pytest.mark.parametrize("world", ["pq_world_8bit", "pq_world_4bit"])
def test_short_history_under_the_shortlist_gets_the_exact_gsu(world: str, request) -> None:
    """With rerank R and L <= R*K the shortlist is the whole history: the choice is the exact
    GSU's (recall 1), for the served path and the offline one."""
    w = request.getfixturevalue(world)
    r = w.retriever(backend=ScoringBackend.FAISS, rerank=4)
    x_t = torch.randn(6, w.spec.dim, generator=torch.Generator().manual_seed(9))
    u = r.query_vectors(x_t)
    user = 3  # K + 1 = 51 events <= 4K
    item, query, pos, valid = r.retrieve_positions(user, x_t)
    exact = torch.einsum("bhd,ld->bhl", u, r.exact_vectors(item[0], query[0]))
    assert threshold_recall(
        pos.reshape(-1, PQ_TEST_K), valid.reshape(-1, PQ_TEST_K), exact.reshape(-1, 51), PQ_TEST_K
    ) == pytest.approx(1.0)
    offline_pos, offline_valid = r.select(
        u, torch.empty(0), item, query, torch.ones_like(item, dtype=torch.bool), PQ_TEST_K
    )
    assert torch.equal(offline_pos[offline_valid].sort().values, pos[valid].sort().values)


def test_a_store_saved_before_the_fast_scan_layout_still_loads(pq_world_4bit, tmp_path) -> None:
    """Format /1 kept one byte per code at every width: a version built then still serves."""
    import json

    from seminar.pq.store import STORE_FORMAT_V1

    store = pq_world_4bit.store
    old = tmp_path / "old"
    old.mkdir()
    codes = np.concatenate([store.user(u)[2] for u in range(store.n_users)])  # (N, C)
    arrays = {"offsets": store.offsets, "item": store.item, "query": store.query, "codes": codes}
    entries = {}
    for name, arr in arrays.items():
        np.save(old / f"{name}.npy", arr)
        entries[name] = {"file": f"{name}.npy", "shape": list(arr.shape), "dtype": str(arr.dtype)}
    manifest = {"format": STORE_FORMAT_V1, "modalities": list(store.modalities), "nbits": 4}
    (old / "manifest.json").write_text(json.dumps(manifest | {"arrays": entries}))
    loaded = SequenceStore.load(old)
    np.testing.assert_array_equal(loaded.codes, store.codes)
    np.testing.assert_array_equal(loaded.block_offsets, store.block_offsets)
    (old / "manifest.json").write_text(json.dumps(manifest | {"format": "seminar-pq-store/9"}))
    with pytest.raises(ArtifactError, match="format"):
        SequenceStore.load(old)


def test_fused_item_codebooks_halve_the_codes_and_keep_the_exact_vectors(pq_world_4bit) -> None:
    """fused_items: one codebook for the summed item tables, so an event carries query + item
    codes (2 x S, not 4 x S); the retriever's exact vectors are the per-modality ones, its
    served top-K (fast-scan + 4K rerank) keeps recall@50 >= 0.9 on the SYNTHETIC 2,000-event
    user, and codebooks that disagree with the config are refused."""
    w = pq_world_4bit
    config = PQConfig(nbits=4, rerank=4, fused_items=True, kmeans_iters=6, seed=w.spec.seed)
    tables = codebook_tables(w.tables, config)
    assert list(tables) == ["query", "item"]
    summed = sum(t for m, t in w.tables.items() if m != "query")
    np.testing.assert_allclose(tables["item"], summed, rtol=1e-6, atol=1e-6)
    again = codebook_tables(tables, config)  # already fused tables pass unchanged
    assert list(again) == list(tables) and all(np.array_equal(again[m], tables[m]) for m in tables)
    codebooks = train_codebooks(w.tables, config)
    assert codebooks.modalities == ("query", "item")
    assert codebooks.code_size == 2 * w.codebooks.n_subspaces == w.codebooks.code_size // 2
    world = SyntheticWorld(tables, w.world.gsu_weight, w.world.gsu_bias)
    codes = world.encode(codebooks)
    store = world.store(codebooks, PQ_TEST_LENGTHS, seed=w.spec.seed, table_codes=codes)
    fused = world.retriever(codebooks, config, PQ_TEST_K, store, table_codes=codes)
    per_modality = w.retriever(rerank=4)
    assert store.bytes_per_event < w.store.bytes_per_event
    user = PQ_TEST_LENGTHS.index(2_000)
    item, query, _, _ = fused.user_sequence(user)
    torch.testing.assert_close(
        fused.exact_vectors(item, query), per_modality.exact_vectors(item, query)
    )
    x_t = torch.randn(20, w.spec.dim, generator=torch.Generator().manual_seed(11))
    emb, valid = fused.retrieve(user, x_t)
    u = fused.query_vectors(x_t)
    exact_scores = u.reshape(-1, w.spec.dim) @ fused.exact_vectors(item[0], query[0]).T
    got = torch.einsum("bhd,bhkd->bhk", u, emb).reshape(-1, PQ_TEST_K)
    assert score_recall(got, valid.reshape(-1, PQ_TEST_K), exact_scores, PQ_TEST_K) >= 0.9
    with pytest.raises(ArtifactError, match="fused_items"):
        world.retriever(codebooks, PQConfig(nbits=4), PQ_TEST_K, store, table_codes=codes)
    with pytest.raises(ArtifactError, match="fused_items"):
        w.retriever(fused_items=True)
