"""PQ retrieval on the GPU in Triton-lang: decode codes on chip, one dot for many rows, top-K fused.

Why not a look-up-table kernel: the LUT of one (candidate, head) row is C*k floats (64 KiB at
C = 64, k = 256) and a request has B*H rows (400 at B = 100, H = 4), so LUTs do not fit on
chip and every event would gather C entries per row. Decoding instead turns an event's C code
bytes into its approximate vector x_l (D floats: sum over modalities of the centroids its codes
name) once, and then <u_r, x_l> for a whole tile of rows is one `tl.dot`: the gathers are paid
per (event, row tile), not per (event, row). The centroids (C*k*d floats, 256 KiB at D = 64)
stay in L1/L2; only the codes stream from HBM.

`pq_topk_triton` never writes the (B*H, L) scores: every program scans a
split of the sequence for one tile of rows and keeps each row's running top-K in registers as
sortable int64 keys (score bits above, event position below), merged only when a block holds a
key above the row's current K-th best; the host merges the splits' K-lists with one small
`topk`. `adc_scores_triton` keeps the `adc_scores_lut` contract (full scores); it is the
retriever's GPU path, since on an H200 writing the scores out and letting torch pick the
top-K was 2 to 3 times faster than the fused kernel (reports/gpu.md).

Both read codes one per byte (8-bit, or 4-bit unpacked) or a 4-bit store's fast-scan blocks in
place (`seminar.pq.faiss_scan.pack_fastscan`), launch under the tensors' device, and put every
program on grid axis 0 (axes 1 and 2 stop at 65,535). Runs on a CUDA GPU, or on CPU tensors
under TRITON_INTERPRET=1 (the tests); `triton` is imported lazily so that CPU-only installs
never need it.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch

from seminar.errors import UsageError

BLOCK_EVENTS = 64  # events per step of the scores kernel
MIN_DOT = 16  # tl.dot needs every dim >= 16
# The running top-K state is (rows, next_pow2(K)) int64 per program, and Triton's sort of it
# takes shared memory: K = 64 compiles to 160 KiB on Hopper, K = 128 to 292 KiB, over the 227
# KiB a program may have (`compile_for_gpu` measures it). A longer shortlist goes through
# `adc_scores_triton` and a torch top-K instead.
MAX_TOPK = 64
SHARED_MEMORY_LIMIT = 232_448  # bytes one program may use on a Hopper GPU (H100, H200)
# The row tile of the top-K kernel times its K-list is what one program keeps in registers.
TOPK_STATE = 4096
# Split the sequence so that the grid holds about this many programs (several per SM), but
# never below one block of events per split.
TARGET_PROGRAMS = 512
INT64_MIN = -(2**63)


@dataclass(frozen=True)
class CodeLayout:
    """How a codes tensor holds a sequence: `packed` = 4-bit fast-scan blocks (nb, 16*C)."""

    code_size: int  # C
    packed: bool


def _pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


def _device_guard(tensor: torch.Tensor):
    """Launch on the tensor's GPU, not the current one (a Triton launch uses the current)."""
    if tensor.device.type == "cuda":
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


@functools.cache
def _kernels():
    try:
        import triton

        from seminar.pq import triton_programs
    except ImportError as err:  # pragma: no cover - depends on the machine
        raise UsageError("backend 'triton' needs the `triton` package (Triton-lang)") from err
    return triton, triton_programs.scores_kernel, triton_programs.topk_kernel


def _shape_args(u: torch.Tensor, codes: torch.Tensor, centroids: torch.Tensor, layout: CodeLayout):
    m, s, k, d = centroids.shape
    dim = u.shape[-1]
    if dim != s * d:
        raise ValueError(f"u has D={dim}, the centroids describe D={s * d}")
    if layout.code_size != m * s:
        raise ValueError(f"codes hold C={layout.code_size} per event, the centroids M*S={m * s}")
    if codes.dtype != torch.uint8:
        raise ValueError(f"codes must be uint8, got {codes.dtype}")
    if codes.device != u.device or centroids.device != u.device:
        raise ValueError(
            f"u, codes and centroids must share a device, got {u.device}, {codes.device}, "
            f"{centroids.device}"
        )
    return {
        "S": s,
        "M": m,
        "K": k,
        "SUB": d,
        "D": dim,
        "BLOCK_D": max(MIN_DOT, _pow2(dim)),
        "C": m * s,
        "PACKED": layout.packed,
    }


def _layout(codes: torch.Tensor, packed: bool) -> CodeLayout:
    width = codes.shape[-1]
    if packed and width % 16:
        raise ValueError(f"fast-scan blocks are 16*C bytes wide, got {width}")
    return CodeLayout(width // 16 if packed else width, packed)


def adc_scores_triton(
    u: torch.Tensor, codes: torch.Tensor, centroids: torch.Tensor, packed: bool = False
) -> torch.Tensor:
    """Same contract as `adc_scores_lut` up to float rounding: u (B, H, D), codes (B|1, L, C)
    uint8 (or with `packed`, (B|1, nb, 16*C) fast-scan blocks holding L = 32*nb events)
    -> scores (B, H, L) float32."""
    triton, scores_kernel, _ = _kernels()
    b, h, dim = u.shape
    bc = codes.shape[0]
    if codes.ndim != 3 or bc not in (1, b):
        raise ValueError(f"codes must be (1 or B={b}, L, C), got {tuple(codes.shape)}")
    layout = _layout(codes, packed)
    n_l = codes.shape[1] * (32 if packed else 1)
    args = _shape_args(u, codes, centroids, layout)
    out = torch.empty((b, h, n_l), dtype=torch.float32, device=u.device)
    if n_l == 0 or b == 0:
        return out
    rows_per_seq = b * h if bc == 1 else h
    rows_tile = max(MIN_DOT, min(64, _pow2(rows_per_seq)))
    tiles_per_seq = triton.cdiv(rows_per_seq, rows_tile)
    n_blocks = triton.cdiv(n_l, BLOCK_EVENTS)
    codes = codes.contiguous()
    grid = (bc * tiles_per_seq * n_blocks,)
    with _device_guard(u):
        scores_kernel[grid](
            u.float().reshape(b * h, dim).contiguous(),
            codes,
            centroids.float().contiguous(),
            out,
            n_l,
            rows_per_seq,
            tiles_per_seq,
            n_blocks,
            0 if bc == 1 else codes[0].numel(),
            ROWS=rows_tile,
            BLOCK=BLOCK_EVENTS,
            **args,
        )
    return out


def _topk_tiling(k: int, n_rows: int) -> tuple[int, int]:
    """(K-list length, rows per program) of the top-K kernel for top-`k` over `n_rows` rows."""
    topk = max(MIN_DOT, _pow2(k))
    return topk, max(MIN_DOT, min(64, TOPK_STATE // topk, _pow2(n_rows)))


def compile_for_gpu(
    centroids_shape: tuple[int, int, int, int],
    k: int,
    n_rows: int,
    packed: bool,
    capability: int = 90,
) -> dict[str, dict[str, int]]:
    """Compile both kernels for a CUDA GPU of `capability` (90: Hopper) ahead of time, with no
        GPU: what a launch would compile for top-`k` of `n_rows` (B*H) rows over centroids
        (M, S, k, d). Returns each kernel's PTX size and the shared memory one program takes, which
    a launch refuses above the GPU's limit (SHARED_MEMORY_LIMIT on Hopper). The interpreter (TRITON_INTERPRET=1) skips
        the GPU compiler's passes, so only this shows, on a CPU, that a kernel compiles at all."""
    triton, scores_kernel, topk_kernel = _kernels()
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource

    m, s, _, _ = centroids_shape
    centroids = torch.zeros(centroids_shape)
    u = torch.zeros((1, n_rows, centroids_shape[1] * centroids_shape[3]))
    code_size = m * s
    codes = torch.zeros((1, 16 * code_size if packed else code_size), dtype=torch.uint8)
    shape = _shape_args(u, codes, centroids, _layout(codes, packed))
    topk, rows_tile = _topk_tiling(k, n_rows)
    scores_rows = max(MIN_DOT, min(64, _pow2(n_rows)))
    pointers = {"u_ptr": "*fp32", "codes_ptr": "*u8", "cent_ptr": "*fp32"}
    plans = {
        "scores_kernel": (
            scores_kernel,
            {**shape, "ROWS": scores_rows, "BLOCK": BLOCK_EVENTS},
            {**pointers, "out_ptr": "*fp32"},
        ),
        "topk_kernel": (
            topk_kernel,
            {**shape, "ROWS": rows_tile, "TOPK": topk, "KEY_MIN": INT64_MIN},
            {**pointers, "out_ptr": "*i64"},
        ),
    }
    sizes = {}
    for name, (kernel, constants, kinds) in plans.items():
        signature = {
            arg: "constexpr" if arg in constants else kinds.get(arg, "i32")
            for arg in kernel.arg_names
        }
        compiled = triton.compile(
            ASTSource(kernel, signature, constexprs=constants),
            target=GPUTarget("cuda", capability, 32),
        )
        sizes[name] = {
            "ptx_bytes": len(compiled.asm["ptx"]),
            "shared_bytes": compiled.metadata.shared,
        }
    return sizes


def topk_split_events(n_events: int, n_tiles: int, topk: int, splits: int | None = None) -> int:
    """Events per split of the top-K kernel, a whole number of K-list steps: `splits` parts, or
    by default enough for about TARGET_PROGRAMS programs."""
    if splits is not None and splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    wanted = TARGET_PROGRAMS // max(n_tiles, 1) if splits is None else splits
    n_splits = max(1, min(wanted, -(-n_events // topk)))
    per_split = -(-n_events // n_splits)
    return -(-per_split // topk) * topk


def decode_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int64 keys of `pq_topk_triton` -> (scores float32, positions int64, valid bool)."""
    valid = keys != INT64_MIN
    ordered = (keys >> 32).to(torch.int32)
    bits = ordered ^ ((ordered >> 31) & 0x7FFFFFFF)
    scores = bits.view(torch.float32)
    positions = torch.where(valid, keys & 0xFFFFFFFF, torch.zeros_like(keys))
    return scores, positions, valid


def pq_topk_triton(
    u: torch.Tensor,
    codes: torch.Tensor,
    centroids: torch.Tensor,
    n_events: int,
    k: int,
    packed: bool = False,
    splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-head top-K events of one shared sequence by PQ score, without writing the scores.

    u (B, H, D); codes (L, C) uint8, or with `packed` the sequence's fast-scan blocks
    (ceil(L / 32), 16*C); the first `n_events` events count -> scores (B, H, K) float32
    (descending), positions (B, H, K) int64, valid (B, H, K) bool (False where the sequence has
    fewer than K events; position 0 there), as `masked_topk` over an all-true mask.
    `splits`: how many parts of the sequence are scanned in parallel (default: enough for the
    grid to fill the GPU, `topk_split_events`)."""
    b, h, dim = u.shape
    if codes.ndim != 2:
        raise ValueError(f"codes must be one sequence (L, C) or its blocks, got {codes.shape}")
    if not 1 <= k <= MAX_TOPK:
        raise ValueError(f"k must be in [1, {MAX_TOPK}], got {k}")
    layout = _layout(codes, packed)
    capacity = codes.shape[0] * (32 if packed else 1)
    if not 0 <= n_events <= capacity:
        raise ValueError(f"n_events {n_events} outside [0, {capacity}] of the codes given")
    args = _shape_args(u, codes, centroids, layout)
    triton, _, topk_kernel = _kernels()
    n_rows = b * h
    topk, rows_tile = _topk_tiling(k, n_rows)
    n_tiles = triton.cdiv(max(n_rows, 1), rows_tile)
    split = topk_split_events(max(n_events, 1), n_tiles, topk, splits)
    n_splits = triton.cdiv(max(n_events, 1), split)
    keys = torch.full((n_splits, n_rows, topk), INT64_MIN, dtype=torch.int64, device=u.device)
    if n_events and n_rows:
        with _device_guard(u):
            topk_kernel[(n_splits * n_tiles,)](
                u.float().reshape(n_rows, dim).contiguous(),
                codes.contiguous(),
                centroids.float().contiguous(),
                keys,
                n_events,
                n_rows,
                n_tiles,
                split,
                ROWS=rows_tile,
                TOPK=topk,
                KEY_MIN=INT64_MIN,
                **args,
            )
    # (n_splits, R, TOPK) -> (R, n_splits * TOPK): the best K of every split's K-list
    merged = keys.permute(1, 0, 2).reshape(n_rows, -1).topk(k, dim=-1).values
    scores, positions, valid = decode_keys(merged)
    shape = (b, h, k)
    return scores.reshape(shape), positions.reshape(shape), valid.reshape(shape)
