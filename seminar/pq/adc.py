"""ADC scoring in torch (CPU and CUDA tensors): look-up tables, scores, masked per-head top-K.

Shape letters: B targets (candidates), H heads, D embedding size, M modalities, S sub-spaces,
d = D / S, k centroids, C = M * S codes per event, L events (sequence length), K top-K.
A codes tensor may have a leading 1 instead of B: one user's sequence shared by all targets.
"""

from __future__ import annotations

import torch


def build_luts(u: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """LUT[b, h, m*S + s, j] = <u[b, h] restricted to sub-space s, centroid j of codebook (m, s)>.

    u (B, H, D), centroids (M, S, k, d) -> (B, H, C, k).
    """
    b, h, _ = u.shape
    m, s, k, d = centroids.shape
    # (B, H, D) -> (B, H, S, d)
    us = u.reshape(b, h, s, d)
    lut = torch.einsum("bhsd,mskd->bhmsk", us, centroids)
    # (B, H, M, S, k) -> (B, H, C, k)
    return lut.reshape(b, h, m * s, k)


def adc_scores_lut(lut: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """score[b, h, l] = sum_c LUT[b, h, c, codes[b, l, c]]: the literal ADC.

    lut (B, H, C, k), codes (B or 1, L, C) uint8 -> (B, H, L).
    """
    b, h, c, _ = lut.shape
    n_l = codes.shape[1]
    codes = codes.long()
    scores = lut.new_zeros((b, h, n_l))
    # One code column at a time keeps memory at B*H*L (a single gather would need B*H*L*C).
    for col in range(c):
        # (B|1, L) -> (B, H, L) indices into the k axis of LUT[:, :, col] (B, H, k)
        idx = codes[:, :, col].unsqueeze(1).expand(b, h, n_l)
        scores += torch.gather(lut[:, :, col, :], 2, idx)
    return scores


def decode(codes: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Approximate pair vectors from codes: (B|1, L, C) uint8 -> (B|1, L, D), summed over M."""
    m, s, k, d = centroids.shape
    bc, n_l, c = codes.shape
    # (M, S, k, d) -> (C*k, d); code c of column col sits at row col*k + c
    flat = centroids.reshape(m * s * k, d)
    offsets = torch.arange(c, device=codes.device) * k
    idx = codes.long() + offsets  # (B|1, L, C)
    parts = flat[idx]  # (B|1, L, C, d)
    # (B|1, L, M, S, d) -> sum over M -> (B|1, L, D)
    return parts.reshape(bc, n_l, m, s, d).sum(dim=2).reshape(bc, n_l, s * d)


def adc_scores_decode(
    u: torch.Tensor, codes: torch.Tensor, centroids: torch.Tensor
) -> torch.Tensor:
    """Same scores as `adc_scores_lut` (sum of LUT entries = <u, sum of centroids>) by one GEMM.

    u (B, H, D), codes (B|1, L, C) -> (B, H, L).
    """
    x = decode(codes, centroids)  # (B|1, L, D)
    if x.shape[0] == 1:
        b, h, dim = u.shape
        # (B*H, D) @ (D, L) -> (B, H, L): one GEMM for all targets of one user
        return (u.reshape(b * h, dim) @ x[0].T).reshape(b, h, -1)
    return torch.einsum("bhd,bld->bhl", u, x)


def masked_topk(
    scores: torch.Tensor, mask: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head top-K positions over the valid events.

    scores (B, H, L), mask (B|1, L) bool (True = real event) -> positions (B, H, K) int64,
    valid (B, H, K) bool. Invalid slots (fewer than K real events) hold position 0, valid False.
    """
    b, h, n_l = scores.shape
    pos = torch.zeros((b, h, k), dtype=torch.long, device=scores.device)
    valid = torch.zeros((b, h, k), dtype=torch.bool, device=scores.device)
    kk = min(k, n_l)
    if kk == 0:
        return pos, valid
    neg_inf = torch.finfo(scores.dtype).min
    masked = scores.masked_fill(~mask.unsqueeze(1), neg_inf)  # (B, H, L)
    _, top = masked.topk(kk, dim=-1)  # (B, H, kk)
    # a slot is real only if the event it points at is real (padding is never selected)
    ok = torch.gather(mask.unsqueeze(1).expand(b, h, n_l), 2, top)
    pos[:, :, :kk] = torch.where(ok, top, torch.zeros_like(top))
    valid[:, :, :kk] = ok
    return pos, valid
