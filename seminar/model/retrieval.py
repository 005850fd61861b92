"""The GSU step: which K history events each head attends to (docs/design.md section 4).

Every retriever implements one protocol, so the exact GSU used in training and the PQ GSU used
in serving (seminar.pq) are interchangeable. The second dimension of `u` is "rows per example":
H heads for one target, or C * H when a batch scores C candidates against one shared history.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@runtime_checkable
class Retriever(Protocol):
    def select(
        self,
        u: Tensor,  # (B, H, D) from model.gsu_query_vectors(x_t)
        x_seq: Tensor,  # (B, L, D) exact pair embeddings of the history
        seq_item: Tensor,  # (B, L) int64 item index
        seq_query: Tensor,  # (B, L) int64 query index
        seq_mask: Tensor,  # (B, L) bool, True = real event
        k: int,
    ) -> tuple[Tensor, Tensor]:  # positions (B, H, K) int64, valid (B, H, K) bool
        ...


def topk_positions(scores: Tensor, seq_mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k positions of scores (B, H, L) among real events; padding is never valid.

    When a history has fewer than k real events the remaining slots are returned with
    valid = False (their positions point at padding and must be ignored).
    """
    b, h, length = scores.shape
    mask = seq_mask.unsqueeze(1).expand(b, h, length)  # (B, H, L)
    masked = scores.masked_fill(~mask, float("-inf"))
    take = min(k, length)
    if take == 0:
        positions = torch.zeros(b, h, k, dtype=torch.long, device=scores.device)
        return positions, torch.zeros(b, h, k, dtype=torch.bool, device=scores.device)
    positions = masked.topk(take, dim=-1).indices  # (B, H, take)
    valid = mask.gather(-1, positions)  # (B, H, take)
    if take < k:
        pad = k - take
        positions = torch.cat([positions, positions.new_zeros(b, h, pad)], dim=-1)
        valid = torch.cat([valid, valid.new_zeros(b, h, pad)], dim=-1)
    return positions, valid


def gather_topk(x_seq: Tensor, positions: Tensor) -> Tensor:
    """x_seq (B, L, D) at positions (B, R, K) -> (B, R, K, D)."""
    b, r, k = positions.shape
    flat = positions.reshape(b, r * k, 1).expand(-1, -1, x_seq.shape[-1])  # (B, R*K, D)
    return x_seq.gather(1, flat).reshape(b, r, k, x_seq.shape[-1])  # (B, R, K, D)


class ExactRetriever(nn.Module):
    """TWIN/SEMINAR GSU (and SIM's soft search): r[b, h, l] = <u[b, h], x_seq[b, l]>."""

    def select(self, u, x_seq, seq_item, seq_query, seq_mask, k):  # type: ignore[no-untyped-def]
        scores = torch.einsum("bhd,bld->bhl", u, x_seq)  # (B, H, L)
        return topk_positions(scores, seq_mask, k)


class RecentRetriever(nn.Module):
    """DIN: the k most recent real events, the same for every row."""

    def select(self, u, x_seq, seq_item, seq_query, seq_mask, k):  # type: ignore[no-untyped-def]
        b, length = seq_mask.shape
        # Histories are time-ordered, so the position itself ranks recency.
        recency = torch.arange(length, dtype=u.dtype, device=u.device)  # (L,)
        scores = recency.expand(b, u.shape[1], length)  # (B, H, L)
        return topk_positions(scores, seq_mask, k)


class SimHashRetriever(nn.Module):
    """ETA: top-k by Hamming distance between SimHash signatures of u and x_seq."""

    def __init__(self, dim: int, bits: int, seed: int) -> None:
        super().__init__()
        planes = torch.randn(dim, bits, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("planes", planes)

    def signature(self, x: Tensor) -> Tensor:
        """x (..., D) -> {-1, +1} signature (..., bits)."""
        return torch.where(x @ self.planes >= 0, 1.0, -1.0)

    def select(self, u, x_seq, seq_item, seq_query, seq_mask, k):  # type: ignore[no-untyped-def]
        # Agreements = bits - Hamming distance, so the top agreements are the nearest codes.
        agree = torch.einsum("bhn,bln->bhl", self.signature(u), self.signature(x_seq))  # (B, H, L)
        return topk_positions(agree, seq_mask, k)
