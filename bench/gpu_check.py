"""`make gpu-check`: everything of ours that needs a GPU, in one run on a bare GPU machine.

Needs only the repository and a Python >= 3.11 with CUDA PyTorch, Triton-lang and numpy (1 or 2):
no venv, no tritonserver, no network, nothing installed. Run from the repository root:

    python3 bench/gpu_check.py --out reports        # writes the `gpu` report (markdown + JSON) under reports/

Parts, each time-boxed (a part that starts after the budget is skipped, one that fails is
recorded with its error, and the report is rewritten after every part):
1. checks: the GPU tests (the Triton-lang kernels against the torch reference, 8-bit codes and
   a 4-bit store's fast-scan blocks; the retriever on CUDA against the CPU one);
2. copy: the device's copy bandwidth (a torch copy), the roofline the kernels are measured by;
3. kernels: fused Triton top-K, Triton scores + torch top-K, torch decode + GEMM, torch LUT and
   the exact GSU (dense embeddings) at L = 1k, 10k, 100k for one request (SYNTHETIC codes);
4. pq_retrieval: the serving path (`BatchRetrieval`) on CUDA in-process, tensors in and out
   through DLPack as the Triton Python backend passes them;
5. tensorrt: the build flags for the installed TensorRT and a small engine's parity, fed an
   all-zero mask row (a cold-start user), where `tensorrt` imports.

`--dry-run` runs the same parts at tiny sizes on the CPU (the kernels under TRITON_INTERPRET=1):
the suite runs it so that this script cannot rot.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a bare checkout: seminar/ is beside bench/
    sys.path.insert(0, str(ROOT))

from seminar.errors import ServiceError  # noqa: E402 - after the path above


def map_stage_packages() -> None:
    """Make `seminar.<stage>` importable from a bare checkout: the stage folders sit beside
    seminar/ (pyproject's package-dir), so the repository root joins seminar's path."""
    import seminar

    if str(ROOT) not in list(seminar.__path__):
        seminar.__path__.append(str(ROOT))


@dataclass(frozen=True)
class GpuCheckConfig:
    """Sizes of one run. One request: `candidates` targets x `heads` GSU heads, events of
    `modalities` x `subspaces` code bytes (8-bit codes), top-`k` per head."""

    lengths: tuple[int, ...] = (1_000, 10_000, 100_000)
    candidates: int = 100
    heads: int = 4
    modalities: int = 4
    subspaces: int = 16
    dim: int = 64
    k: int = 50
    repeats: int = 20
    warmup: int = 3
    copy_mib: int = 1024
    seed: int = 0
    budget_s: float = 420.0  # the run stops starting parts after this (make gpu-check: 8 min)
    device: str = "cuda"

    @classmethod
    def dry_run(cls) -> GpuCheckConfig:
        return cls(
            lengths=(64, 200),
            candidates=3,
            heads=2,
            modalities=2,
            subspaces=4,
            dim=16,
            k=10,
            repeats=1,
            warmup=0,
            copy_mib=1,
            budget_s=120.0,
            device="cpu",
        )

    @property
    def code_bytes(self) -> int:
        return self.modalities * self.subspaces


@dataclass
class Part:
    name: str
    status: str = "not run"  # passed | failed | skipped | not run
    seconds: float = 0.0
    message: str = ""
    data: dict = field(default_factory=dict)


# -- a SYNTHETIC PQ world without faiss (random codebooks, tables and codes) -------------------


def synthetic_retriever(config: GpuCheckConfig, nbits: int, lengths: list[int], device: str):
    """A PQRetriever over random (SYNTHETIC) codebooks, tables and a store of users with
    `lengths` events; needs numpy and torch only."""
    import numpy as np
    import torch

    from seminar.pq.codebooks import QUERY_MODALITY, Codebooks
    from seminar.pq.config import PQConfig, ScoringBackend
    from seminar.pq.retriever import PQRetriever
    from seminar.pq.store import build_sequence_store

    rng = np.random.default_rng(config.seed)
    names = (QUERY_MODALITY, "id", "text", "image", "attributes")[: config.modalities]
    k, s, dim = 1 << nbits, config.subspaces, config.dim
    centroids = rng.standard_normal((len(names), s, k, dim // s)).astype(np.float32)
    rows = 500
    tables = {
        m: torch.from_numpy(rng.standard_normal((rows, dim)).astype(np.float32)) for m in names
    }
    table_codes = {m: rng.integers(0, k, (rows, s)).astype(np.uint8) for m in names}
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    store = build_sequence_store(
        offsets, rng.integers(0, rows, n), rng.integers(0, rows, n), table_codes, names, nbits
    )
    weight = torch.from_numpy(
        rng.standard_normal((dim, config.heads, dim)).astype(np.float32) / dim**0.5
    )
    backend = ScoringBackend.TRITON if device != "cpu" else ScoringBackend.TORCH_LUT
    return PQRetriever(
        Codebooks(names, centroids, nbits, None),
        tables,
        table_codes,
        PQConfig(n_subspaces=s, nbits=nbits, backend=backend),
        store=store,
        gsu_weight=weight,
        k=config.k,
        device=device,
        alpha=0.5,
    )


# -- part 1: the GPU tests ---------------------------------------------------------------------


def check_kernels(config: GpuCheckConfig, device: str) -> list[str]:
    """The Triton-lang kernels against the torch reference on `device` (cpu = interpreted):
    scores and fused top-K, 8-bit codes and 4-bit fast-scan blocks read in place, sequences
    shorter than K and empty. Raises AssertionError naming the case that disagrees."""
    import torch

    from seminar.pq.adc import adc_scores_lut, build_luts, masked_topk
    from seminar.pq.triton_kernel import adc_scores_triton, pq_topk_triton

    done = []
    for nbits in (8, 4):
        retriever = synthetic_retriever(config, nbits, [config.lengths[-1], 3, 0], "cpu")
        centroids = retriever.centroids
        generator = torch.Generator().manual_seed(config.seed)
        u = torch.randn(config.candidates, config.heads, config.dim, generator=generator)
        for user in range(retriever.store.n_users):
            _, _, codes = retriever.store.user(user)
            codes = torch.from_numpy(codes.copy())
            n_events = codes.shape[0]
            want = adc_scores_lut(build_luts(u, centroids), codes[None])
            sequence = codes
            if nbits == 4:  # the store's own fast-scan blocks, read in place by the kernel
                sequence = torch.from_numpy(retriever.store.user_blocks(user).copy())
            packed = nbits == 4
            got = adc_scores_triton(
                u.to(device), sequence[None].to(device), centroids.to(device), packed=packed
            ).cpu()[:, :, :n_events]
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            scores, pos, valid = pq_topk_triton(
                u.to(device),
                sequence.to(device),
                centroids.to(device),
                n_events,
                config.k,
                packed=packed,
                splits=2,
            )
            if n_events == 0:
                assert not valid.any(), f"{nbits}-bit: an empty sequence has no winners"
                done.append(f"{nbits}-bit L=0")
                continue
            want_pos, want_valid = masked_topk(
                want, torch.ones((1, n_events), dtype=torch.bool), config.k
            )
            assert torch.equal(valid.cpu(), want_valid), f"{nbits}-bit L={n_events}: valid slots"
            want_scores = torch.gather(want, 2, want_pos).masked_fill(~want_valid, 0)
            got_scores = scores.cpu().masked_fill(~want_valid, 0)
            torch.testing.assert_close(got_scores, want_scores, rtol=1e-4, atol=1e-4)
            # the same events up to float near-ties: the reference scores of the chosen events
            chosen = torch.gather(want, 2, pos.cpu()).masked_fill(~want_valid, 0)
            torch.testing.assert_close(chosen, want_scores, rtol=1e-4, atol=1e-4)
            done.append(f"{nbits}-bit L={n_events}")
    return done


def check_cuda_retriever(config: GpuCheckConfig) -> list[str]:
    """The retriever on CUDA (resident store; triton, torch_lut, torch_decode) picks the events
    the CPU torch_lut one picks, 8-bit and 4-bit, and copies no codes per request."""
    import torch

    from seminar.pq.config import PQConfig, ScoringBackend

    done = []
    for nbits in (8, 4):
        lengths = [config.lengths[-1], 3, 0]
        cpu = synthetic_retriever(config, nbits, lengths, "cpu")
        x_t = torch.randn(5, config.dim, generator=torch.Generator().manual_seed(1))
        for backend in (
            ScoringBackend.TRITON,
            ScoringBackend.TORCH_LUT,
            ScoringBackend.TORCH_DECODE,
        ):
            gpu = synthetic_retriever(config, nbits, lengths, "cuda").with_config(
                PQConfig(n_subspaces=config.subspaces, nbits=nbits, backend=backend)
            )
            assert gpu.device_store is not None and gpu.device_store.codes.is_cuda
            for user in range(len(lengths)):
                e_cpu, m_cpu = cpu.retrieve(user, x_t)
                e_gpu, m_gpu = gpu.retrieve(user, x_t.cuda())
                assert e_gpu.is_cuda and torch.equal(m_cpu, m_gpu.cpu()), f"{backend} {user}"
                u = cpu.query_vectors(x_t)
                s_cpu = torch.einsum("bhd,bhkd->bhk", u, e_cpu).sort(-1).values
                s_gpu = torch.einsum("bhd,bhkd->bhk", u, e_gpu.cpu()).sort(-1).values
                assert ((s_gpu - s_cpu).abs() < 1e-3).float().mean() >= 0.98, f"{backend} {user}"
            done.append(f"{nbits}-bit {backend.value}")
    return done


def check_device_guard(config: GpuCheckConfig) -> str:
    """The kernels launch on their tensors' GPU, not the current one (needs two GPUs)."""
    import torch

    from seminar.pq.triton_kernel import pq_topk_triton

    if torch.cuda.device_count() < 2:
        return "skipped: one GPU visible, the guard needs a second"
    retriever = synthetic_retriever(config, 8, [config.lengths[0]], "cpu")
    _, _, codes = retriever.store.user(0)
    u = torch.randn(2, config.heads, config.dim)
    args = (torch.from_numpy(codes.copy()), retriever.centroids)
    on0 = pq_topk_triton(u.to("cuda:0"), *(a.to("cuda:0") for a in args), len(codes), config.k)
    with torch.cuda.device(0):
        on1 = pq_topk_triton(u.to("cuda:1"), *(a.to("cuda:1") for a in args), len(codes), config.k)
    assert torch.equal(on0[1].cpu(), on1[1].cpu()), "cuda:1 disagrees with cuda:0"
    return "cuda:1 launched from device 0 agrees"


# -- parts 2 and 3: bandwidth and the kernels --------------------------------------------------


def synchronize(device: str) -> None:
    import torch

    if device != "cpu":
        torch.cuda.synchronize()


def copy_bandwidth(config: GpuCheckConfig) -> dict:
    """GB/s of a device-to-device torch copy (bytes read + written)."""
    import torch

    n = config.copy_mib * 2**20
    source = torch.empty(n, dtype=torch.uint8, device=config.device)
    target = torch.empty_like(source)
    for _ in range(2):
        target.copy_(source)
    synchronize(config.device)
    rounds = max(config.repeats, 1)
    started = time.perf_counter()
    for _ in range(rounds):
        target.copy_(source)
    synchronize(config.device)
    seconds = (time.perf_counter() - started) / rounds
    return {"bytes": 2 * n, "seconds": seconds, "gb_s": 2 * n / seconds / 1e9}


def kernel_methods(config: GpuCheckConfig, n_events: int) -> tuple[dict[str, Callable], dict]:
    """The GSU ways of one request at L = n_events and the bytes each must read at least."""
    import torch

    from seminar.pq.adc import adc_scores_decode, adc_scores_lut, build_luts, masked_topk
    from seminar.pq.triton_kernel import adc_scores_triton, pq_topk_triton

    device, k = config.device, config.k
    generator = torch.Generator().manual_seed(config.seed)
    m, s, dim = config.modalities, config.subspaces, config.dim
    centroids = torch.randn(m, s, 256, dim // s, generator=generator).to(device)
    codes = torch.randint(0, 256, (n_events, m * s), generator=generator, dtype=torch.uint8)
    codes = codes.to(device)
    u = torch.randn(config.candidates, config.heads, dim, generator=generator).to(device)
    dense = torch.randn(n_events, dim, generator=generator).to(device)  # the exact GSU's input
    mask = torch.ones((1, n_events), dtype=torch.bool, device=device)
    rows = config.candidates * config.heads

    def exact():
        scores = (u.reshape(rows, dim) @ dense.T).reshape(config.candidates, config.heads, -1)
        return scores.topk(k, dim=-1)

    methods = {
        "triton fused top-K": lambda: pq_topk_triton(u, codes, centroids, n_events, k),
        "triton scores + topk": lambda: masked_topk(
            adc_scores_triton(u, codes[None], centroids), mask, k
        ),
        "torch decode + GEMM": lambda: masked_topk(
            adc_scores_decode(u, codes[None], centroids), mask, k
        ),
        "torch LUT": lambda: masked_topk(
            adc_scores_lut(build_luts(u, centroids), codes[None]), mask, k
        ),
        "exact GSU (fp32 GEMM)": exact,
    }
    code_bytes = n_events * m * s
    least = {name: code_bytes for name in methods}
    least["exact GSU (fp32 GEMM)"] = n_events * dim * 4
    meta = {"rows": rows, "least_bytes": least, "lookups": rows * n_events * m * s}
    return methods, meta


def time_methods(config: GpuCheckConfig, copy_gb_s: float) -> list[dict]:
    from seminar.bench.harness import time_interleaved

    results = []
    for n_events in config.lengths:
        methods, meta = kernel_methods(config, n_events)

        def synced(call: Callable) -> Callable:
            def run():
                out = call()
                synchronize(config.device)
                return out

            return run

        timings, _ = time_interleaved(
            {name: synced(call) for name, call in methods.items()}, config.repeats, config.warmup
        )
        for name, timing in timings.items():
            seconds = timing.median / 1e3
            gb_s = meta["least_bytes"][name] / seconds / 1e9
            results.append(
                {
                    "events": n_events,
                    "method": name,
                    "median_us": seconds * 1e6,
                    "least_bytes": meta["least_bytes"][name],
                    "gb_s": gb_s,
                    "roofline_pct": 100 * gb_s / copy_gb_s,
                    "lookups_per_s": meta["lookups"] / seconds,
                }
            )
    return results


# -- part 4: pq_retrieval's path in-process ----------------------------------------------------


def retrieval_path(config: GpuCheckConfig) -> dict:
    """BatchRetrieval (what the pq_retrieval model runs) on the device, inputs and outputs
    through DLPack; its winners agree with the CPU torch_lut retriever's."""
    import numpy as np
    import torch
    from torch.utils import dlpack

    lengths = [config.lengths[-1], 0]
    device = config.device
    retriever = synthetic_retriever(config, 8, lengths, device)
    if device == "cpu":  # the dry run: the same path on the CPU's torch backend
        from seminar.pq.config import PQConfig

        retriever = retriever.with_config(
            PQConfig(n_subspaces=config.subspaces, backend="torch_decode")
        )
    reference = synthetic_retriever(config, 8, lengths, "cpu")
    try:
        from seminar.serving.retrieval import BatchRetrieval

        batch = BatchRetrieval(retriever=retriever, alpha=0.5, k=config.k)
        path = "seminar.serving.retrieval.BatchRetrieval"
    except ImportError as error:  # a bare machine may lack what serving imports beside it
        batch = None
        path = f"PQRetriever.retrieve (BatchRetrieval did not import: {error})"
    rows = config.candidates
    generator = torch.Generator().manual_seed(config.seed)
    users = torch.tensor([0] * (rows - 1) + [-1], dtype=torch.long)
    query_emb = torch.randn(rows, config.dim, generator=generator)
    item_emb = torch.randn(rows, config.dim, generator=generator)
    # what python_backend hands a KIND_GPU model: device tensors through DLPack
    inputs = [
        dlpack.from_dlpack(dlpack.to_dlpack(t.to(device))) for t in (users, query_emb, item_emb)
    ]

    def call():
        if batch is not None:
            emb, mask = batch(*inputs)
        else:
            x_t = 0.5 * inputs[1] + 0.5 * inputs[2]
            emb, mask = retriever.retrieve(0, x_t[:-1])
        out = [dlpack.from_dlpack(dlpack.to_dlpack(t.contiguous())) for t in (emb, mask)]
        synchronize(device)
        return out

    call()
    started = time.perf_counter()
    repeats = max(config.repeats, 1)
    for _ in range(repeats):
        emb, mask = call()
    seconds = (time.perf_counter() - started) / repeats
    x_t = 0.5 * query_emb + 0.5 * item_emb
    want_emb, want_valid = reference.retrieve(0, x_t[:-1])
    got_valid = mask[:-1].cpu().bool() if batch is not None else mask.cpu()
    assert torch.equal(got_valid, want_valid), "valid slots differ from the CPU retriever"
    if batch is not None:
        assert float(mask[-1].abs().sum()) == 0.0, "a cold-start row got events"
    u = reference.query_vectors(x_t[:-1])
    got = torch.einsum("bhd,bhkd->bhk", u, emb[: rows - 1].cpu().float()).sort(-1).values
    want = torch.einsum("bhd,bhkd->bhk", u, want_emb).sort(-1).values
    agree = float(((got - want).abs() < 1e-3).float().mean())
    assert agree >= 0.98, f"only {agree:.1%} of the winners' scores agree with the CPU"
    resident = retriever.device_store
    return {
        "path": path,
        "device": str(retriever.device),
        "events": config.lengths[-1],
        "rows": rows,
        "ms_per_batch": seconds * 1e3,
        "winners_agree": agree,
        "resident_bytes": 0 if resident is None else resident.nbytes,
        "numpy": np.__version__,
    }


# -- part 5: TensorRT --------------------------------------------------------------------------


def tensorrt_part(config: GpuCheckConfig, workdir: Path) -> dict:
    """The build plan (flags) the installed TensorRT gets and whether its builder can run here;
    skipped, saying why, where `tensorrt` does not import. The engines themselves and their
    parity gate (an all-zero topk_mask row included) are `seminar build --target gpu`'s, which
    needs the project's venv (onnx, polygraphy, onnxruntime)."""
    del config, workdir
    try:
        import tensorrt
    except ImportError as error:
        raise PartSkipped(f"`import tensorrt` failed: {error}") from None
    from seminar.build.tensorrt import build_plan, unavailable_reason

    plan = build_plan(tensorrt.__version__)
    return {
        "tensorrt": tensorrt.__version__,
        "strongly_typed": plan.strongly_typed,
        "trtexec_precision_flags": plan.trtexec_flags(["LAYER"]),
        "builder": unavailable_reason() or "ready",
    }


class PartSkipped(ServiceError):
    """A part that cannot run here; its message says what is missing."""


# -- the run and its report --------------------------------------------------------------------


def run_parts(config: GpuCheckConfig, out_dir: Path, command: str) -> list[Part]:
    started = time.perf_counter()
    parts: list[Part] = []
    copy_gb_s = {"value": 0.0}

    def part(name: str, body: Callable[[], dict]) -> None:
        record = Part(name)
        parts.append(record)
        if time.perf_counter() - started > config.budget_s:
            record.status, record.message = (
                "skipped",
                f"the {config.budget_s:.0f}-s budget is spent",
            )
        else:
            begun = time.perf_counter()
            try:
                record.data = body()
                record.status = "passed"
            except PartSkipped as why:
                record.status, record.message = "skipped", str(why)
            except Exception as error:  # a failed part is reported, the others still run
                record.status = "failed"
                record.message = f"{type(error).__name__}: {error}"
                record.data = {"traceback": traceback.format_exc(limit=6)}
            record.seconds = time.perf_counter() - begun
        write_report(config, parts, out_dir, command)

    device = config.device

    def checks() -> dict:
        done = {"kernels": check_kernels(config, device)}
        if device == "cpu":
            done["cuda retriever"] = "skipped: the dry run has no CUDA GPU"
        else:
            done["cuda retriever"] = check_cuda_retriever(config)
            done["device guard"] = check_device_guard(config)
        return done

    def copy() -> dict:
        measured = copy_bandwidth(config)
        copy_gb_s["value"] = measured["gb_s"]
        return measured

    part("checks", checks)
    part("copy", copy)
    part("kernels", lambda: {"rows": time_methods(config, copy_gb_s["value"] or float("nan"))})
    part("pq_retrieval", lambda: retrieval_path(config))
    part("tensorrt", lambda: tensorrt_part(config, out_dir))
    return parts


def write_report(config: GpuCheckConfig, parts: list[Part], out_dir: Path, command: str) -> None:
    from seminar.bench.harness import Header, Record, markdown_table, write_record

    lines = ["## Parts", ""]
    lines.append(
        markdown_table(
            ["part", "status", "seconds", "note"],
            [[p.name, p.status, f"{p.seconds:.1f}", p.message.replace("|", "/")] for p in parts],
            align="llrl",
        )
    )
    by_name = {p.name: p for p in parts}
    copy = by_name.get("copy")
    kernels = by_name.get("kernels")
    if copy is not None and copy.status == "passed":
        lines += [
            "",
            f"Device copy bandwidth (torch copy, read + write): {copy.data['gb_s']:.1f} GB/s.",
        ]
    if kernels is not None and kernels.status == "passed":
        rows = kernels.data["rows"]
        lines += ["", "## One request's GSU", ""]
        lines.append(
            markdown_table(
                ["L", "method", "median us", "least bytes", "GB/s", "% of copy", "look-ups/s"],
                [
                    [
                        f"{r['events']:,}",
                        r["method"],
                        f"{r['median_us']:.1f}",
                        f"{r['least_bytes']:,}",
                        f"{r['gb_s']:.1f}",
                        f"{r['roofline_pct']:.1f}",
                        f"{r['lookups_per_s']:.3g}",
                    ]
                    for r in rows
                ],
                align="rlrrrrr",
            )
        )
        lines += ["", *kernel_sentences(rows)]
    for name in ("checks", "pq_retrieval", "tensorrt"):
        found = by_name.get(name)
        if found is not None and found.data:
            lines += ["", f"## {name}", "", "```", _pretty(found.data), "```"]
    setup = (
        f"one request: {config.candidates} candidates x {config.heads} heads, "
        f"{config.code_bytes} code bytes per event (8-bit), D = {config.dim}, top-{config.k}; "
        "SYNTHETIC random codebooks, codes and embeddings",
        "least bytes: what a method must read from device memory at least (the codes; the "
        "exact GSU: the fp32 embeddings); GB/s = least bytes / median time; % of copy = that "
        "against the measured copy bandwidth (the roofline)",
        f"device: {config.device}"
        + (" (dry run: kernels interpreted)" if config.device == "cpu" else ""),
    )
    record = Record(
        title="GPU check",
        header=Header.now([config.seed], command=command),
        setup=setup,
        body="\n".join(lines),
        data={"config": asdict(config), "parts": [asdict(p) for p in parts]},
    )
    write_record(record, out_dir / "gpu")


def kernel_sentences(rows: list[dict]) -> list[str]:
    """What the kernel table says, computed from it: the fastest method at each L and the
    fused kernel's share of the roofline."""
    out = []
    for n_events in sorted({r["events"] for r in rows}):
        at = [r for r in rows if r["events"] == n_events]
        best = min(at, key=lambda r: r["median_us"])
        fused = next(r for r in at if r["method"] == "triton fused top-K")
        out.append(
            f"- L = {n_events:,}: fastest is {best['method']} ({best['median_us']:.1f} us); the "
            f"fused kernel takes {fused['median_us']:.1f} us, {fused['roofline_pct']:.1f}% of "
            f"the copy roofline ({'at least' if fused['roofline_pct'] >= 30 else 'below'} 30%)."
        )
    return out


def _pretty(data: dict) -> str:
    return json.dumps(data, indent=2, default=str)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="report folder")
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny sizes on the CPU (kernels interpreted)"
    )
    args = parser.parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton compiles anything
    map_stage_packages()
    config = GpuCheckConfig.dry_run() if args.dry_run else GpuCheckConfig()
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("gpu-check: torch sees no CUDA GPU (use --dry-run on a CPU)", file=sys.stderr)
            return 2
    command = " ".join(
        ["python3 bench/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]
    )
    parts = run_parts(config, args.out, command)
    for p in parts:
        print(f"{p.name}: {p.status} ({p.seconds:.1f} s) {p.message}")
    print(f"wrote {args.out / 'gpu.md'}")
    return 1 if any(p.status == "failed" for p in parts) else 0


if __name__ == "__main__":
    sys.exit(main())
