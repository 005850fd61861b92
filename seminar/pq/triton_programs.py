"""The Triton-lang programs behind `seminar.pq.triton_kernel` (which documents the design and
is the only module that imports this one, lazily: importing it needs `triton`).

Kernels live at module level because Triton's JIT resolves the helpers a kernel calls among its
module's globals.
"""

import triton
import triton.language as tl


@triton.jit
def decode_block(
    codes_ptr,
    cent_ptr,
    offs_l,  # (BLOCK,) event positions
    l_ok,  # (BLOCK,)
    S: tl.constexpr,
    M: tl.constexpr,
    K: tl.constexpr,
    SUB: tl.constexpr,  # d = D / S
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    C: tl.constexpr,
    PACKED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Approximate vectors (BLOCK, BLOCK_D) of a block of events: sum over modalities of
    the centroid sub-vectors their codes name."""
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    sub = offs_d // SUB  # sub-space of each output column
    within = offs_d % SUB
    ok = l_ok[:, None] & d_ok[None, :]
    x = tl.zeros((BLOCK, BLOCK_D), dtype=tl.float32)
    for m in tl.static_range(M):
        col = m * S + sub  # (BLOCK_D,) code column
        if PACKED:
            # fast-scan: block of 32 events, 16 bytes per code column; byte j of a column
            # holds event (j // 2) + 8 * (j % 2) in its low nibble and that + 16 in its high
            event = offs_l % 32
            low = event < 16
            e16 = event % 16
            byte_at = (e16 % 8) * 2 + e16 // 8
            addr = (offs_l // 32).to(tl.int64)[:, None] * (16 * C) + col[None, :] * 16
            byte = tl.load(codes_ptr + addr + byte_at[:, None], mask=ok, other=0).to(tl.int32)
            code = tl.where(low[:, None], byte & 15, byte >> 4)
        else:
            addr = offs_l.to(tl.int64)[:, None] * C + col[None, :]
            code = tl.load(codes_ptr + addr, mask=ok, other=0).to(tl.int32)
        cent = (col[None, :] * K + code) * SUB + within[None, :]
        x += tl.load(cent_ptr + cent, mask=ok, other=0.0)
    return x


@triton.jit
def merge_best(best, keys, ROWS: tl.constexpr, TOPK: tl.constexpr):
    """best (ROWS, TOPK) sorted descending, keys (ROWS, TOPK) in any order -> the TOPK largest
    of both per row, sorted descending. Triton's own bitonic top-K: a hand-written network of
    reshape/permute steps sent the GPU compiler's layout pass into a search that never ended."""
    both = tl.reshape(tl.join(best, keys), (ROWS, 2 * TOPK))
    return tl.topk(both, TOPK, dim=1)


@triton.jit
def scores_kernel(
    u_ptr,  # (R, D) float32, R = B*H rows
    codes_ptr,  # (B|1, ...) one sequence per B, or one shared
    cent_ptr,  # (C*k, d) float32
    out_ptr,  # (R, L) float32
    n_events,
    rows_per_seq,  # R when shared, else H
    tiles_per_seq,
    n_blocks,
    seq_stride,  # elements between sequences in codes, 0 when shared
    S: tl.constexpr,
    M: tl.constexpr,
    K: tl.constexpr,
    SUB: tl.constexpr,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    C: tl.constexpr,
    PACKED: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    tile = pid // n_blocks
    block = pid % n_blocks
    seq = tile // tiles_per_seq
    row_in_seq = (tile % tiles_per_seq) * ROWS + tl.arange(0, ROWS)
    r_ok = row_in_seq < rows_per_seq
    rows = (seq * rows_per_seq + row_in_seq).to(tl.int64)
    offs_l = block * BLOCK + tl.arange(0, BLOCK)
    l_ok = offs_l < n_events
    x = decode_block(
        codes_ptr + seq.to(tl.int64) * seq_stride,
        cent_ptr, offs_l, l_ok, S, M, K, SUB, D, BLOCK_D, C, PACKED, BLOCK,
    )  # fmt: skip
    offs_d = tl.arange(0, BLOCK_D)
    u = tl.load(
        u_ptr + rows[:, None] * D + offs_d[None, :],
        mask=r_ok[:, None] & (offs_d < D)[None, :],
        other=0.0,
    )  # (ROWS, BLOCK_D)
    scores = tl.dot(u, tl.trans(x), input_precision="ieee")  # (ROWS, BLOCK)
    tl.store(
        out_ptr + rows[:, None] * n_events + offs_l[None, :],
        scores,
        mask=r_ok[:, None] & l_ok[None, :],
    )


@triton.jit
def topk_kernel(
    u_ptr,  # (R, D) float32
    codes_ptr,  # one shared sequence
    cent_ptr,
    out_ptr,  # (n_splits, R, TOPK) int64 keys
    n_events,
    n_rows,
    n_tiles,
    split_events,  # events per split, a multiple of TOPK
    S: tl.constexpr,
    M: tl.constexpr,
    K: tl.constexpr,
    SUB: tl.constexpr,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    C: tl.constexpr,
    PACKED: tl.constexpr,
    ROWS: tl.constexpr,
    TOPK: tl.constexpr,  # K-list length (a power of two), also the events per step
    KEY_MIN: tl.constexpr,  # the key of no event
):
    pid = tl.program_id(0)
    split = pid // n_tiles
    tile = pid % n_tiles
    offs_r = tile * ROWS + tl.arange(0, ROWS)
    r_ok = offs_r < n_rows
    offs_d = tl.arange(0, BLOCK_D)
    u = tl.load(
        u_ptr + offs_r.to(tl.int64)[:, None] * D + offs_d[None, :],
        mask=r_ok[:, None] & (offs_d < D)[None, :],
        other=0.0,
    )  # (ROWS, BLOCK_D), loaded once per program
    best = tl.full((ROWS, TOPK), KEY_MIN, tl.int64)
    start = split * split_events
    stop = tl.minimum(start + split_events, n_events)
    for first in range(start, stop, TOPK):
        offs_l = first + tl.arange(0, TOPK)
        l_ok = offs_l < stop
        x = decode_block(
            codes_ptr, cent_ptr, offs_l, l_ok, S, M, K, SUB, D, BLOCK_D, C, PACKED, TOPK
        )
        scores = tl.dot(u, tl.trans(x), input_precision="ieee")  # (ROWS, TOPK)
        # order-preserving int32 of the float, above the position: one int64 sorts both
        bits = scores.to(tl.int32, bitcast=True)
        ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
        keys = (ordered.to(tl.int64) << 32) | offs_l.to(tl.int64)[None, :]
        keys = tl.where(l_ok[None, :], keys, KEY_MIN)
        kth = tl.min(best, axis=1)  # (ROWS,): each row's K-th best so far
        if tl.sum((keys > kth[:, None]).to(tl.int32)) > 0:
            best = merge_best(best, keys, ROWS, TOPK)
    out = out_ptr + (split.to(tl.int64) * n_rows + offs_r.to(tl.int64))[:, None] * TOPK
    tl.store(out + tl.arange(0, TOPK)[None, :], best, mask=r_ok[:, None])
