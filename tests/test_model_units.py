"""SEMINAR model parts on hand-built tensors: GSU, ESU, gate, PSU losses, metrics, configs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional

from seminar.model import Modality, ModelConfig, ModelKind, SeminarModel
from seminar.model.head import RankingHead
from seminar.model.psu import PSU, PSUConfig, alignment_loss, info_nce, relevance_loss
from seminar.model.retrieval import ExactRetriever, RecentRetriever, SimHashRetriever
from seminar.training.metrics import METRIC_NAMES, global_auc, ranking_metrics

SIZES = {
    "num_items": 60,
    "num_queries": 12,
    "num_tokens": 20,
    "num_attrs": 9,
    "attrs_per_item": 3,
    "text_dim": 16,
}


def make_model(kind: ModelKind = ModelKind.SEMINAR, seed: int = 0, **over: object) -> SeminarModel:
    torch.manual_seed(seed)
    config = ModelConfig(kind=kind, dim=16, heads=2, top_k=4, **{**SIZES, **over})
    model = SeminarModel(config)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, SIZES["num_tokens"], size=(SIZES["num_queries"], config.query_len))
    tokens[0] = 0  # query 0 = no query
    text = rng.normal(size=(SIZES["num_items"], SIZES["text_dim"])).astype(np.float32)
    text[:2] = 0  # PAD and OOV have no text
    attrs = rng.integers(0, SIZES["num_attrs"], size=(SIZES["num_items"], 3))
    attrs[:2] = 0
    model.load_features(tokens, text, attrs)
    return model


def random_batch(b: int = 3, c: int = 4, length: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, length, generator=g) > 0.3
    seq_item = torch.randint(2, SIZES["num_items"], (b, length), generator=g) * mask
    seq_query = torch.randint(0, SIZES["num_queries"], (b, length), generator=g) * mask
    target_query = torch.randint(0, SIZES["num_queries"], (b,), generator=g)
    candidates = torch.randint(2, SIZES["num_items"], (b, c), generator=g)
    return target_query, candidates, seq_item, seq_query, mask


# ---- GSU -----------------------------------------------------------------------------------


def test_gsu_returns_true_topk_and_never_padding() -> None:
    # One row, one head: u picks out dimension 0, so the score of event l is x_seq[l, 0].
    x0 = torch.tensor([5.0, 9.0, 1.0, 7.0, 8.0, 3.0, 6.0])
    mask = torch.tensor([True, False, True, True, False, True, True])  # 9 and 8 are padding
    x_seq = torch.zeros(1, 7, 4)
    x_seq[0, :, 0] = x0
    u = torch.zeros(1, 1, 4)
    u[0, 0, 0] = 1.0
    dummy = torch.zeros(1, 7, dtype=torch.long)
    positions, valid = ExactRetriever().select(u, x_seq, dummy, dummy, mask[None], 3)
    assert positions[0, 0].tolist() == [3, 6, 0]  # scores 7, 6, 5: the real top-3
    assert valid.all()


def test_gsu_pads_short_histories_with_invalid_slots() -> None:
    x_seq = torch.randn(2, 5, 4)
    mask = torch.tensor([[False, False, True, True, False], [False] * 5])
    u = torch.randn(2, 3, 4)
    dummy = torch.zeros(2, 5, dtype=torch.long)
    for retriever in (ExactRetriever(), RecentRetriever(), SimHashRetriever(4, 8, 0)):
        positions, valid = retriever.select(u, x_seq, dummy, dummy, mask, 4)
        assert positions.shape == (2, 3, 4) and valid.shape == (2, 3, 4)
        assert valid[0].sum(-1).tolist() == [2, 2, 2]  # only the 2 real events
        assert not valid[1].any()  # empty history: nothing valid
        chosen = mask.unsqueeze(1).expand(2, 3, 5).gather(-1, positions)
        assert bool(chosen[valid].all()), "a valid slot points at padding"


def test_recent_retriever_takes_the_most_recent_events() -> None:
    mask = torch.tensor([[True, True, True, True, False]])
    dummy = torch.zeros(1, 5, dtype=torch.long)
    positions, valid = RecentRetriever().select(
        torch.randn(1, 2, 4), torch.randn(1, 5, 4), dummy, dummy, mask, 2
    )
    assert sorted(positions[0, 0].tolist()) == [2, 3] and valid.all()


# ---- ESU / ranking head -----------------------------------------------------------------------


def test_esu_equals_reference_softmax_attention() -> None:
    torch.manual_seed(0)
    config = ModelConfig(dim=8, heads=3, top_k=5)
    head = RankingHead(config)
    b, h, k, d = 2, 3, 5, 8
    x_t = torch.randn(b, d)
    topk = torch.randn(b, h, k, d)
    mask = torch.ones(b, h, k, dtype=torch.bool)
    mask[0, 1, 3:] = False
    got = head.esu(x_t, topk, mask)
    # Textbook multi-head target attention, one head at a time.
    outs = []
    for j in range(h):
        q = x_t @ head.w_q[j].T  # (B, D)
        keys = topk[:, j] @ head.w_k[j].T  # (B, K, D)
        values = topk[:, j] @ head.w_v[j].T  # (B, K, D)
        scores = (keys @ q.unsqueeze(-1)).squeeze(-1) / math.sqrt(d)  # (B, K)
        scores = scores.masked_fill(~mask[:, j], float("-inf"))
        outs.append((torch.softmax(scores, -1).unsqueeze(-1) * values).sum(1))
    want = head.w_o(torch.cat(outs, dim=-1))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_ranking_head_all_masked_is_finite_and_esu_is_zero() -> None:
    model = make_model()
    head = model.ranking_head
    q, item = torch.randn(3, 16), torch.randn(3, 16)
    topk = torch.randn(3, 2, 4, 16)
    zeros = torch.zeros(3, 2, 4)  # float mask as serving sends it
    assert torch.equal(head.esu(model.pair(q, item), topk, zeros), torch.zeros(3, 16))
    scores = head(q, item, topk, zeros)
    assert scores.shape == (3,) and torch.isfinite(scores).all()


def test_gsu_scores_match_esu_attention_logits() -> None:
    # The GSU ranks with <u, x_l>; that must be the ESU's <W_Q x_t, W_K x_l> (before 1/sqrt(D)).
    model = make_model()
    x_t, x_l = torch.randn(4, 16), torch.randn(4, 16)
    u = model.gsu_query_vectors(x_t)  # (B, H, D)
    head = model.ranking_head
    for j in range(2):
        want = ((x_t @ head.w_q[j].T) * (x_l @ head.w_k[j].T)).sum(-1)
        torch.testing.assert_close((u[:, j] * x_l).sum(-1), want, atol=1e-5, rtol=1e-5)


def test_per_head_parameters_get_gradients_and_are_in_the_state_dict() -> None:
    model = make_model()
    logits = model(*random_batch())
    functional.binary_cross_entropy_with_logits(logits, torch.rand_like(logits)).backward()
    state = model.state_dict()
    for name in (
        "ranking_head.w_q",
        "ranking_head.w_k",
        "ranking_head.w_v",
        "ranking_head.w_o.weight",
    ):
        param = model.get_parameter(name)
        assert param.grad is not None and param.grad.abs().sum() > 0, name
        assert name in state
    for j in range(2):  # every head, not just the first, is trained
        assert model.ranking_head.w_q.grad[j].abs().sum() > 0


def test_every_weight_is_a_registered_parameter() -> None:
    model = make_model()
    registered = {id(p) for p in model.parameters()}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.nn.Parameter):
                assert id(value) in registered
            if isinstance(value, list | tuple):
                assert not any(isinstance(v, torch.Tensor) for v in value), (
                    "tensor hidden in a list"
                )


# ---- embeddings -------------------------------------------------------------------------------


def test_gate_masks_missing_modalities_and_pad_encodes_to_zero() -> None:
    model = make_model()
    enc = model.item_encoder
    parts = enc.components(torch.tensor([0, 1, 5]))
    # PAD (0) has no modality at all; OOV (1) only its learned id row.
    for emb in parts.values():
        assert torch.equal(emb[0], torch.zeros(16))
    assert torch.equal(parts[Modality.TEXT][1], torch.zeros(16))  # OOV has no text
    raw = enc.raw_modalities(torch.tensor([1]))
    # Its only modality gets gate weight 1 (projected by the identity G).
    torch.testing.assert_close(parts[Modality.ID][1], raw[Modality.ID][0][0])


def test_component_tables_sum_to_pair_embeddings() -> None:
    model = make_model()
    tables = model.component_tables()
    assert set(tables) == {"query", "id", "text", "attr"}
    q, i = torch.tensor([0, 3, 7]), torch.tensor([2, 9, 1])
    x = model.pair(model.encode_queries(q), model.item_encoder(i))
    summed = tables["query"][q] + sum(tables[m][i] for m in ("id", "text", "attr"))
    torch.testing.assert_close(x, summed, atol=1e-6, rtol=1e-5)


def test_projections_start_as_identity_only_in_seminar() -> None:
    seminar, twin = make_model(ModelKind.SEMINAR), make_model(ModelKind.TWIN)
    assert torch.equal(seminar.item_encoder.proj["id"].weight, torch.eye(16))
    assert twin.item_encoder.proj is None and twin.query_encoder.proj is None


@pytest.mark.parametrize("kind", list(ModelKind))
def test_every_kind_scores_a_batch(kind: ModelKind) -> None:
    logits = make_model(kind)(*random_batch())
    assert logits.shape == (3, 4) and torch.isfinite(logits).all()


def test_serving_modules_export_without_data_dependent_control_flow() -> None:
    model = make_model().eval()
    b = torch.export.Dim("batch", min=2, max=1024)
    tokens = torch.randint(0, 20, (3, 8))
    text = torch.randn(3, SIZES["text_dim"])
    torch.export.export(model.query_encoder, (tokens, text), dynamic_shapes=({0: b}, {0: b}))
    torch.export.export(model.item_encoder, (torch.tensor([2, 5, 7]),), dynamic_shapes=({0: b},))
    args = (torch.randn(3, 16), torch.randn(3, 16), torch.randn(3, 2, 4, 16), torch.ones(3, 2, 4))
    shapes = ({0: b}, {0: b}, {0: b}, {0: b})
    exported = torch.export.export(model.ranking_head, args, dynamic_shapes=shapes)
    torch.testing.assert_close(exported.module()(*args), model.ranking_head(*args))


# ---- PSU losses -------------------------------------------------------------------------------


def test_info_nce_is_low_for_aligned_pairs_and_high_for_shuffled() -> None:
    torch.manual_seed(0)
    a = torch.randn(32, 16)
    aligned = info_nce(a, a + 0.01 * torch.randn(32, 16), tau=0.05)
    shuffled = info_nce(a, a[torch.randperm(32)], tau=0.05)
    assert aligned < 0.05 < math.log(32) - 1 < shuffled


def test_info_nce_decreases_when_training_aligns_the_pairs() -> None:
    torch.manual_seed(0)
    a = torch.randn(16, 8, requires_grad=True)
    b = torch.randn(16, 8)
    opt = torch.optim.Adam([a], lr=0.05)
    first = info_nce(a, b, 0.05)
    for _ in range(50):
        opt.zero_grad()
        info_nce(a, b, 0.05).backward()
        opt.step()
    assert info_nce(a, b, 0.05) < 0.2 * first
    assert functional.cosine_similarity(a, b).mean() > 0.5  # minimising pulls matched rows together


def test_relevance_loss_pulls_a_query_towards_its_item() -> None:
    # The sign defect of the reference code: a gradient step must raise cos(query, its item).
    model = make_model()
    query = torch.arange(1, 9)
    item = torch.arange(10, 18)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    def cosine() -> float:
        q = model.encode_queries(query)
        return float(functional.cosine_similarity(q, model.item_encoder(item)).mean().detach())

    before, loss_before = cosine(), float(relevance_loss(model, query, item, 0.05).detach())
    for _ in range(5):
        opt.zero_grad()
        relevance_loss(model, query, item, 0.05).backward()
        opt.step()
    assert cosine() > before
    assert float(relevance_loss(model, query, item, 0.05).detach()) < loss_before
    # Recommendation events (query 0) are not search events: no relevance loss from them.
    assert float(relevance_loss(model, torch.zeros(8, dtype=torch.long), item, 0.05)) == 0.0


def test_alignment_loss_decreases_and_ignores_padding() -> None:
    model = make_model()
    items = torch.tensor([0, 0, 1, 1, *range(2, 30)])
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    first = float(alignment_loss(model, items, 0.05).detach())
    for _ in range(30):
        opt.zero_grad()
        alignment_loss(model, items, 0.05).backward()
        opt.step()
    assert float(alignment_loss(model, items, 0.05).detach()) < 0.5 * first
    # PAD/OOV rows change nothing: the same loss with or without them.
    torch.testing.assert_close(
        alignment_loss(model, items, 0.05), alignment_loss(model, items[4:], 0.05)
    )


def test_psu_losses_switch_off_and_g_is_not_pretrained() -> None:
    model = make_model()
    psu = PSU(model, PSUConfig(align_weight=0.0, relevance_weight=0.0))
    losses = psu(*random_batch())
    assert float(losses["align"]) == 0.0 and float(losses["relevance"]) == 0.0
    assert torch.equal(losses["total"], losses["next"])
    assert not model.item_encoder.proj["id"].weight.requires_grad
    with pytest.raises(ValueError, match="tau"):
        PSUConfig(tau=0.0)


# ---- configs and metrics ----------------------------------------------------------------------


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="alpha"):
        ModelConfig(alpha=1.5)
    with pytest.raises(ValueError, match="top_k"):
        ModelConfig(top_k=0)
    with pytest.raises(ValueError, match=r"kind must be one of seminar"):
        ModelConfig(kind="bert")
    with pytest.raises(ValueError, match="nonsense"):
        ModelConfig.from_dict({"nonsense": 1})
    config = ModelConfig(kind=ModelKind.ETA, mlp_hidden=(8,))
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_ranking_metrics_on_hand_built_lists() -> None:
    scores = np.array(
        [
            [0.9, 0.1, 0.2, 0.3],  # rank 0
            [0.5, 0.6, 0.1, 0.7],  # rank 2
            [0.1, 0.1, 0.0, 0.0],  # tie with one negative: pessimistic rank 1
        ]
    )
    m = ranking_metrics(scores)
    assert set(m) == set(METRIC_NAMES)
    assert m["hit@1"] == pytest.approx(1 / 3)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(3)) / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)
    assert m["gauc"] == pytest.approx((1 + 1 / 3 + 2.5 / 3) / 3)
    assert global_auc(np.array([0.1, 0.9, 0.5]), np.array([0, 1, 0])) == 1.0
    assert global_auc(np.array([1.0, 1.0]), np.array([0, 1])) == 0.5
