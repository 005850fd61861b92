"""ESU (multi-head target attention over each head's top-K) and the MLP scorer.

The per-head matrices W_Q, W_K, W_V (H, D, D) and W_O (H*D -> D) live here; the GSU reuses
W_Q and W_K through `gsu_query_vectors`, so retrieval and attention score events identically.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional

from seminar.model.config import ModelConfig

# A recommendation row's query_emb is the shared no-query vector itself: exact in PyTorch and
# ONNX Runtime, within FP16 rounding (2^-11 relative) under TensorRT. Any query's embedding
# differs from it by order 1 in some dimension. Relative to the vector's largest entry.
NO_QUERY_TOLERANCE = 1e-2


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last dim restricted to mask; an all-masked row gives all zeros."""
    weights = torch.softmax(scores.masked_fill(~mask, -1e9), dim=-1)
    return weights * mask.to(weights.dtype)


class RankingHead(nn.Module):
    """(query_emb (B, D), item_emb (B, D), topk_emb (B, H, K, D), topk_mask (B, H, K)) -> logit (B,)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, h = config.dim, config.heads
        self.alpha = config.alpha
        self.scale = 1.0 / math.sqrt(d)
        std = 1.0 / math.sqrt(d)
        self.w_q = nn.Parameter(torch.randn(h, d, d) * std)
        self.w_k = nn.Parameter(torch.randn(h, d, d) * std)
        self.w_v = nn.Parameter(torch.randn(h, d, d) * std)
        self.w_o = nn.Linear(
            h * d, d, bias=False
        )  # no bias: an empty history contributes exactly 0
        self.no_query: nn.Parameter | None = None
        width = 3 * d  # [esu; x_t; esu * x_t]
        if config.query_relevance:
            # SeminarModel ties this to QueryEncoder.no_query (one parameter, two owners), so
            # the exported head carries the vector it recognises recommendation rows by.
            self.no_query = nn.Parameter(torch.zeros(d))
            width += d + 1  # [cos(q, item); q * item]
        layers: list[nn.Module] = []
        for hidden in config.mlp_hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def query_vectors(self, x_t: Tensor) -> Tensor:
        """u[b, h] = W_K[h]^T W_Q[h] x_t[b], so <u, x_l> = <W_Q x_t, W_K x_l>: (B, D) -> (B, H, D)."""
        q = torch.einsum("hed,bd->bhe", self.w_q, x_t)  # (B, H, D)
        return torch.einsum("hed,bhe->bhd", self.w_k, q)  # (B, H, D)

    def esu(self, x_t: Tensor, topk_emb: Tensor, topk_mask: Tensor) -> Tensor:
        """Target attention per head over its K events, heads concatenated and projected: (B, D)."""
        mask = topk_mask > 0  # float 1/0 from serving or bool from training
        u = self.query_vectors(x_t)  # (B, H, D)
        scores = torch.einsum("bhd,bhkd->bhk", u, topk_emb) * self.scale  # (B, H, K)
        weights = masked_softmax(scores, mask)  # (B, H, K)
        # sum_k w_k (W_V x_k) = W_V (sum_k w_k x_k): pool first, project once (K times cheaper).
        pooled = torch.einsum("bhk,bhkd->bhd", weights, topk_emb)  # (B, H, D)
        heads = torch.einsum("hed,bhd->bhe", self.w_v, pooled)  # (B, H, D)
        return self.w_o(heads.flatten(1))  # (B, H*D) -> (B, D)

    def relevance(self, query_emb: Tensor, item_emb: Tensor, no_query: Tensor) -> Tensor:
        """[cos(q, item); q * item] (B, D + 1), all zeros on rows without a query.

        PSU's relevance objective pulls a query towards the items clicked under it by this
        cosine, so it scores query-item fit directly; inside x_t the query is only an offset
        of the item. Zero on recommendation rows: they see the scorer they had without it.
        """
        tolerance = NO_QUERY_TOLERANCE * (1.0 + no_query.abs().amax(dim=0))
        has_query = (query_emb - no_query).abs().amax(dim=-1, keepdim=True) > tolerance
        cosine = (
            functional.normalize(query_emb, dim=-1) * functional.normalize(item_emb, dim=-1)
        ).sum(dim=-1, keepdim=True)  # (B, 1)
        features = torch.cat([cosine, query_emb * item_emb], dim=-1)  # (B, D + 1)
        return features * has_query.to(features.dtype)

    def forward(
        self, query_emb: Tensor, item_emb: Tensor, topk_emb: Tensor, topk_mask: Tensor
    ) -> Tensor:
        x_t = self.alpha * query_emb + (1.0 - self.alpha) * item_emb  # (B, D)
        interest = self.esu(x_t, topk_emb, topk_mask)  # (B, D)
        parts = [interest, x_t, interest * x_t]  # 3 x (B, D)
        if self.no_query is not None:
            parts.append(self.relevance(query_emb, item_emb, self.no_query))  # (B, D + 1)
        return self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)  # (B,)
