"""The query encoder's text part, the head's relevance features, and runs saved before them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from seminar.model import ModelConfig, SeminarModel
from seminar.training.checkpoint import load_run

SIZES = {"num_items": 40, "num_queries": 8, "num_tokens": 12, "query_len": 4, "text_dim": 16}
LEGACY_RUN = Path(__file__).parent / "support" / "legacy_run"


def make_model(seed: int = 0, **over: object) -> SeminarModel:
    torch.manual_seed(seed)
    model = SeminarModel(ModelConfig(dim=16, heads=2, top_k=4, **{**SIZES, **over}))
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, SIZES["num_tokens"], size=(SIZES["num_queries"], 4))
    tokens[0] = 0  # query 0 = no query
    tokens[5] = 1  # query 5: every word unknown (<unk>)
    tokens[6] = 1  # query 6: another all-<unk> query, different text
    text = rng.normal(size=(SIZES["num_queries"], SIZES["text_dim"])).astype(np.float32)
    text[0] = 0  # no query: the all-zero row
    model.load_features(tokens, query_text_emb=text)
    return model.eval()


def test_query_embeddings_have_the_interface_shapes() -> None:
    model = make_model()
    assert model.query_text.shape == (SIZES["num_queries"], SIZES["text_dim"])
    assert model.encode_queries(torch.tensor([0, 3, 3, 7])).shape == (4, 16)
    torch.testing.assert_close(model.query_table(), model.encode_queries(torch.arange(8)))
    direct = model.query_encoder(model.query_tokens[[2, 4]], model.query_text[[2, 4]])
    torch.testing.assert_close(direct, model.encode_queries(torch.tensor([2, 4])))


def test_the_text_row_of_a_row_without_query_changes_nothing() -> None:
    model = make_model()
    before = model.encode_queries(torch.tensor([0])).detach().clone()
    with torch.no_grad():
        model.query_text[0] = torch.randn(SIZES["text_dim"])
    torch.testing.assert_close(model.encode_queries(torch.tensor([0])), before, atol=0, rtol=0)
    # ... and every no-query row is the shared no-query vector itself (what the head detects).
    torch.testing.assert_close(before[0], model.query_encoder.no_query.detach(), atol=0, rtol=0)


def test_a_zero_text_row_falls_back_to_the_tokens_alone() -> None:
    model = make_model()
    tokens = model.query_tokens[[3]]
    text_off = model.query_encoder(tokens, torch.zeros(1, SIZES["text_dim"]))
    tokens_only = make_model(use_query_text=False).query_encoder
    tokens_only.load_state_dict(model.query_encoder.state_dict(), strict=False)
    torch.testing.assert_close(text_off, tokens_only(tokens, torch.randn(1, SIZES["text_dim"])))
    assert not torch.allclose(text_off, model.encode_queries(torch.tensor([3])))


def test_unknown_words_with_different_text_get_different_embeddings() -> None:
    model = make_model()
    assert torch.equal(model.query_tokens[5], model.query_tokens[6])  # both all <unk>
    emb = model.encode_queries(torch.tensor([5, 6]))
    assert (emb[0] - emb[1]).abs().max() > 0.1
    without_text = make_model(use_query_text=False).encode_queries(torch.tensor([5, 6]))
    torch.testing.assert_close(without_text[0], without_text[1])  # the ablation cannot tell


def test_relevance_features_are_zero_without_a_query_and_used_with_one() -> None:
    model = make_model()
    head = model.ranking_head
    items = model.item_encoder(torch.tensor([2, 9, 17, 30]))
    queries = model.encode_queries(torch.tensor([0, 0, 3, 5]))
    topk = torch.randn(4, 2, 4, 16)
    mask = torch.ones(4, 2, 4)
    features = head.relevance(queries, items, head.no_query)
    assert torch.equal(features[:2], torch.zeros(2, 17)) and features[2:].abs().min() > 0
    before = head(queries, items, topk, mask).detach()
    with torch.no_grad():  # rewire the relevance inputs of the scorer's first layer
        head.mlp[0].weight[:, 3 * 16 :] = torch.randn_like(head.mlp[0].weight[:, 3 * 16 :])
    after = head(queries, items, topk, mask).detach()
    torch.testing.assert_close(after[:2], before[:2], atol=0, rtol=0)  # recommendation rows
    assert (after[2:] - before[2:]).abs().min() > 0  # search rows


def test_the_head_shares_the_no_query_vector_with_the_encoder() -> None:
    model = make_model()
    assert model.ranking_head.no_query is model.query_encoder.no_query
    state = model.state_dict()
    assert torch.equal(state["ranking_head.no_query"], state["query_encoder.no_query"])


def test_a_run_saved_before_the_query_text_loads_and_scores_as_before() -> None:
    """tests/support/legacy_run was written by the model code of commit 33aeeaf (before the
    query text and the relevance features): its config has neither field, its checkpoint no
    query_text buffer."""
    raw = json.loads((LEGACY_RUN / "config.json").read_text())["model"]
    assert "use_query_text" not in raw and "query_relevance" not in raw
    run = load_run(LEGACY_RUN)
    assert not run.model_config.use_query_text and not run.model_config.query_relevance
    assert "query_text" not in run.model.state_dict()
    expected = json.loads((LEGACY_RUN / "expected.json").read_text())
    inputs = {k: torch.tensor(v) for k, v in expected["inputs"].items()}
    with torch.no_grad():
        logits = run.model(
            inputs["target_query"],
            inputs["candidates"],
            inputs["seq_item"],
            inputs["seq_query"],
            inputs["seq_mask"],
        )
        queries = run.model.query_table()
    torch.testing.assert_close(logits, torch.tensor(expected["logits"]), atol=1e-6, rtol=0)
    torch.testing.assert_close(queries, torch.tensor(expected["query_table"]), atol=1e-6, rtol=0)


def test_search_targets_weigh_search_weight_in_the_fine_tuning_loss() -> None:
    from seminar.training.trainer import bce_loss

    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.3, 1.0, 0.0], [0.1, 0.2, -2.0]])
    target_query = torch.tensor([0, 4, 0])  # row 1 is a search target
    plain = bce_loss(logits)
    assert torch.equal(bce_loss(logits, target_query, 1.0), plain)
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1.0
    per_row = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, labels, reduction="none"
    ).mean(1)
    expected = (per_row * torch.tensor([1.0, 3.0, 1.0])).mean()
    torch.testing.assert_close(bce_loss(logits, target_query, 3.0), expected)
