"""ESU (multi-head target attention over each head's top-K) and the MLP scorer.

The per-head matrices W_Q, W_K, W_V (H, D, D) and W_O (H*D -> D) live here; the GSU reuses
W_Q and W_K through `gsu_query_vectors`, so retrieval and attention score events identically.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from seminar.model.config import ModelConfig


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
        layers: list[nn.Module] = []
        width = 3 * d  # [esu; x_t; esu * x_t]
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

    def forward(
        self, query_emb: Tensor, item_emb: Tensor, topk_emb: Tensor, topk_mask: Tensor
    ) -> Tensor:
        x_t = self.alpha * query_emb + (1.0 - self.alpha) * item_emb  # (B, D)
        interest = self.esu(x_t, topk_emb, topk_mask)  # (B, D)
        features = torch.cat([interest, x_t, interest * x_t], dim=-1)  # (B, 3D)
        return self.mlp(features).squeeze(-1)  # (B,)
