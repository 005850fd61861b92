"""PQ artifacts from a real SeminarModel on real MovieLens: offline (Retriever protocol) and
serving (`retrieve`) paths agree, the projection and tables reproduce the model, bad artifacts
are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seminar.errors import ArtifactError
from seminar.pq import PQConfig, load_pq_retriever, save_pq_artifacts

# 4-bit codes train in a blink and route select() and retrieve() through the faiss fast-scan path
FAST_PQ = PQConfig(nbits=4, train_max_rows=4_096, kmeans_iters=8)


@pytest.fixture(scope="module")
def ml_model_and_artifacts(movielens_data, tmp_path_factory):
    from seminar.data.dataset import PreparedDataset
    from seminar.training.trainer import model_config_for, new_model

    ds = PreparedDataset.load(movielens_data)
    torch.manual_seed(0)
    # an untrained model is a real model for these checks (they compare paths, not quality)
    model = new_model(model_config_for(ds, "seminar"), ds).eval()
    out = tmp_path_factory.mktemp("pq") / "artifacts"
    saved = save_pq_artifacts(model, ds, out, FAST_PQ)
    return ds, model, out, saved.fields


@pytest.mark.slow
def test_offline_and_serving_scores_agree(ml_model_and_artifacts) -> None:
    ds, model, out, fields = ml_model_and_artifacts
    d = model.config.dim
    r = load_pq_retriever(out, verify=True)
    assert fields["n_users"] == ds.n_users and fields["n_events"] == ds.n_events
    assert fields["alpha"] == r.alpha == model.config.alpha
    assert r.k == model.config.top_k
    # stored bytes per event vs the float32 components PQ replaces
    assert fields["bytes_per_event"] * 16 <= len(fields["modalities"]) * d * 4
    with torch.no_grad():
        x = torch.randn(6, d, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(
            r.query_vectors(x), model.gsu_query_vectors(x), atol=1e-5, rtol=1e-5
        )

        user = int(np.argmax(np.diff(ds.seq_offsets)))  # the longest MovieLens history
        lo, hi = int(ds.seq_offsets[user]), int(ds.seq_offsets[user + 1])
        item = torch.from_numpy(np.asarray(ds.seq_item[lo:hi])).long()
        query = torch.from_numpy(np.asarray(ds.seq_query[lo:hi])).long()
        x_seq = model.pair(model.query_table()[query], model.item_table()[item])  # (L, D)
        torch.testing.assert_close(r.exact_vectors(item, query), x_seq, atol=1e-5, rtol=1e-5)

        cands = torch.arange(2, 12)  # (C,)
        c = len(cands)
        query_emb = model.query_table()[:1]  # (1, D): a recommendation request
        cand_emb = model.item_table()[cands]  # (C, D)
        mask = torch.ones(1, hi - lo, dtype=torch.bool)
        offline = model.score_candidates(
            query_emb, cand_emb[None], x_seq[None], item[None], query[None], mask, retriever=r
        )[0]  # (C,)
        x_t = model.pair(query_emb.expand(c, d), cand_emb)  # (C, D)
        emb, valid = r.retrieve(user, x_t)  # (C, H, K, D), (C, H, K)
        served = model.ranking_head(query_emb.expand(c, d), cand_emb, emb, valid)
        torch.testing.assert_close(served.reshape(-1), offline, atol=1e-4, rtol=0)

        emb, valid = r.retrieve(-1, x_t)
        assert not valid.any() and (emb == 0).all()


@pytest.mark.slow
def test_tampered_artifacts_are_refused(ml_model_and_artifacts, tmp_path) -> None:
    import shutil

    _, _, out, _ = ml_model_and_artifacts
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    tables = copy / "tables.safetensors"
    raw = bytearray(tables.read_bytes())
    raw[-1] ^= 0xFF
    tables.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match=r"tables\.safetensors: sha256"):
        load_pq_retriever(copy, verify=True)
    with pytest.raises(ArtifactError, match="manifest not found"):
        load_pq_retriever(tmp_path / "missing")
