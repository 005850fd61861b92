"""Fused ADC on the GPU in Triton-lang: gather LUT entries by code and sum them in registers.

The torch reference (`adc_scores_lut`) materialises one (B, H, L) gather per code column; this
kernel reads each event's C codes once per row block and writes only the final (B, H, L)
scores. The LUTs themselves (B, H, C, k) come from one torch einsum (`build_luts`): they are
small (C*k floats per row) and stay in L2 while the kernel streams the codes.

Runs only on a CUDA GPU (or under TRITON_INTERPRET=1 for debugging); `triton` is imported
lazily so that CPU-only installs never need it.
"""

from __future__ import annotations

import functools

import torch

from seminar.errors import UsageError
from seminar.pq.adc import build_luts

BLOCK_L = 128  # events per program


@functools.cache
def _kernel():
    try:
        import triton
        import triton.language as tl
    except ImportError as err:  # pragma: no cover - depends on the machine
        raise UsageError("backend 'triton' needs the `triton` package (Triton-lang)") from err

    @triton.jit
    def adc_kernel(
        lut_ptr,  # (R, C, k) float32, R = B*H rows
        codes_ptr,  # (B|1, L, C) uint8
        out_ptr,  # (R, L) float32
        n_events,  # L
        heads,  # H: row r reads the codes of sequence r // H (or 0 when shared)
        codes_seq_stride,  # L*C, or 0 when every row shares one sequence
        C: tl.constexpr,
        K: tl.constexpr,
        BLOCK_C: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        block = tl.program_id(0)
        row = tl.program_id(1)
        offs_l = block * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,)
        offs_c = tl.arange(0, BLOCK_C)  # (BLOCK_C,)
        l_ok = offs_l < n_events
        c_ok = offs_c < C
        ok = l_ok[:, None] & c_ok[None, :]  # (BLOCK, BLOCK_C)
        seq = (row // heads).to(tl.int64) * codes_seq_stride
        codes = tl.load(
            codes_ptr + seq + offs_l[:, None].to(tl.int64) * C + offs_c[None, :], mask=ok, other=0
        ).to(tl.int32)  # (BLOCK, BLOCK_C)
        # LUT[row, c, codes[l, c]]: one gather per (event, code) from the row's L2-resident LUT
        vals = tl.load(
            lut_ptr + row.to(tl.int64) * (C * K) + offs_c[None, :] * K + codes, mask=ok, other=0.0
        )
        tl.store(out_ptr + row.to(tl.int64) * n_events + offs_l, tl.sum(vals, axis=1), mask=l_ok)

    return triton, adc_kernel


def adc_scores_triton(
    u: torch.Tensor, codes: torch.Tensor, centroids: torch.Tensor
) -> torch.Tensor:
    """Same contract as `adc_scores_lut`: u (B, H, D), codes (B|1, L, C) uint8 -> (B, H, L)."""
    triton, kernel = _kernel()
    b, h, _ = u.shape
    bc, n_l, c = codes.shape
    if bc not in (1, b):
        raise ValueError(f"codes batch {bc} must be 1 or B={b}")
    lut = build_luts(u.float(), centroids.float()).contiguous()  # (B, H, C, k)
    k = lut.shape[-1]
    codes = codes.contiguous()
    out = torch.empty((b, h, n_l), dtype=torch.float32, device=u.device)
    if n_l == 0:
        return out
    grid = (triton.cdiv(n_l, BLOCK_L), b * h)
    kernel[grid](
        lut,
        codes,
        out,
        n_l,
        h,
        0 if bc == 1 else n_l * c,
        C=c,
        K=k,
        BLOCK_C=triton.next_power_of_2(c),
        BLOCK=BLOCK_L,
    )
    return out
