"""`seminar bench pq`: exact GSU vs PQ GSU (torch, faiss fast path) vs raw faiss, per request.

A request is 1 user x 100 candidates x 4 heads, top-50, over that user's whole stored
sequence. Synthetic users (labelled) at L = 1k, 10k, 100k give latency and recall; a trained
MovieLens run (--run) gives recall@50 and the NDCG@10 change of evaluation with the PQ GSU.
faiss benchs style: machine, seed and command printed; warm-up dropped; mean +- std; the exact
anchor row first with a ratio column; recall beside latency.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seminar.machine import cpu_model
from seminar.pq.codebooks import Codebooks, train_codebooks
from seminar.pq.config import PQConfig, ScoringBackend
from seminar.pq.faiss_scan import FaissScanner
from seminar.pq.retriever import PQRetriever
from seminar.pq.store import build_sequence_store
from seminar.pq.synthetic import (
    ITEM_MODALITIES,
    SyntheticSpec,
    synthetic_gsu,
    synthetic_tables,
    synthetic_users,
)

CANDIDATES, HEADS, TOP_K = 100, 4, 50
EXACT = "exact GSU (gather tables + GEMM + top-K + gather)"
FAST = "pq 4-bit faiss fast-scan"
HIGH_RECALL = "pq 8-bit torch_decode + rerank 2K"
FAISS_PQ = "faiss IndexPQ search only (8-bit)"
FAISS_FASTSCAN = "faiss IndexPQFastScan search only (4-bit)"
LENGTHS = (1_000, 10_000, 100_000)
GPU_NOTE = "not measured: no GPU"


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of one benchmark run; `quick()` fits in two minutes on 2 shared cores."""

    lengths: tuple[int, ...] = LENGTHS
    runs: int = 20
    warmup: int = 2
    threads: int = 2
    seed: int = 0
    n_items: int = 20_000
    train_max_rows: int = 20_000
    kmeans_iters: int = 20
    lut_max_length: int = 10_000  # torch_lut is the slow reference: skip it beyond this L
    distributions: bool = True  # recall at 10k for isotropic / low-rank / clustered tables

    def __post_init__(self) -> None:
        if self.runs < 1 or self.warmup < 0 or self.threads < 1:
            raise ValueError("runs and threads must be >= 1, warmup >= 0")
        if not self.lengths or min(self.lengths) < 1:
            raise ValueError(f"lengths must be positive, got {self.lengths}")

    @classmethod
    def quick(cls, **kw: Any) -> BenchConfig:
        return cls(
            runs=8,
            warmup=1,
            n_items=5_000,
            train_max_rows=5_000,
            kmeans_iters=10,
            lut_max_length=1_000,
            distributions=False,
            **kw,
        )


@dataclass
class Row:
    method: str
    length: int
    ms: list[float] = field(default_factory=list)
    recall: float | None = None
    bytes_per_event: int | None = None

    @property
    def mean(self) -> float:
        return float(np.mean(self.ms))

    @property
    def std(self) -> float:
        return float(np.std(self.ms))

    @property
    def median(self) -> float:
        return float(np.median(self.ms))


def machine() -> str:
    cpu = cpu_model()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}; torch threads {torch.get_num_threads()}; {gpu}"


def timed_interleaved(
    fns: dict[str, Callable[[], Any]], runs: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Milliseconds per call of every function and each one's last result. Calls go round-robin
    (one call of each per round) so that load from other jobs hits every method alike; the
    first `warmup` rounds are dropped."""
    ms: dict[str, list[float]] = {n: [] for n in fns}
    last: dict[str, Any] = {}
    for rnd in range(warmup + runs):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            last[name] = fn()
            if rnd >= warmup:
                ms[name].append((time.perf_counter() - t0) * 1e3)
    return ms, last


def threshold_recall(
    chosen: torch.Tensor, valid: torch.Tensor, exact_scores: torch.Tensor, k: int
) -> float:
    """Share of the K chosen events whose exact score reaches the exact K-th best score.

    chosen, valid (R, K); exact_scores (R, L). Events with equal vectors (a history repeats an
    item) tie, and either one is a correct pick: a position-set overlap would punish that.
    """
    kk = min(k, exact_scores.shape[1])
    kth = exact_scores.topk(kk, dim=-1).values[:, -1:]  # (R, 1)
    got = torch.gather(exact_scores, 1, chosen)  # (R, K)
    scale = exact_scores.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12)
    hit = (got >= kth - 1e-6 * scale) & valid
    return float(hit.sum(dim=-1).float().div(kk).mean())


# -- synthetic lifelong users ------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    tables: dict[str, np.ndarray]
    weight: np.ndarray
    bias: np.ndarray
    codebooks: dict[int, Codebooks]  # nbits -> codebooks


def make_world(spec: SyntheticSpec, cfg: BenchConfig) -> World:
    tables = synthetic_tables(spec)
    books = {
        nbits: train_codebooks(
            tables,
            PQConfig(
                nbits=nbits,
                train_max_rows=cfg.train_max_rows,
                kmeans_iters=cfg.kmeans_iters,
                seed=cfg.seed,
            ),
        )
        for nbits in (8, 4)
    }
    weight, bias = synthetic_gsu(spec)
    return World(tables, weight, bias, books)


def retriever_for(
    world: World, spec: SyntheticSpec, lengths: list[int], config: PQConfig
) -> PQRetriever:
    cb = world.codebooks[config.nbits]
    table_codes = {m: cb.encode(m, t) for m, t in world.tables.items()}
    offsets, item, query = synthetic_users(lengths, spec.n_items, spec.n_queries, seed=spec.seed)
    store = build_sequence_store(offsets, item, query, table_codes, cb.modalities, cb.nbits)
    return PQRetriever(
        cb,
        {m: torch.from_numpy(t) for m, t in world.tables.items()},
        table_codes,
        config,
        store=store,
        gsu_weight=torch.from_numpy(world.weight),
        gsu_bias=torch.from_numpy(world.bias),
        k=TOP_K,
    )


def request_targets(world: World, spec: SyntheticSpec, seed: int) -> torch.Tensor:
    """x_t (100, D) of 100 candidate items under one shared query, as the ranker sends them."""
    rng = np.random.default_rng(seed)
    q = rng.integers(1, spec.n_queries)
    items = rng.integers(0, spec.n_items, CANDIDATES)
    x = world.tables["query"][q][None, :] + sum(
        world.tables[m][items] for m in world.tables if m != "query"
    )
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def exact_gsu(r: PQRetriever, user: int, x_t: torch.Tensor, k: int):
    """The anchor: fetch the sequence's exact embeddings from the tables, one GEMM, top-K,
    gather the winners. Returns positions (B, H, K), valid, embeddings, scores (B*H, L)."""
    item, query, _ = r.user_sequence(user)
    x = r.exact_vectors(item[0], query[0])  # (L, D)
    u = r.query_vectors(x_t)  # (B, H, D)
    b, h, d = u.shape
    scores = u.reshape(b * h, d) @ x.T  # (B*H, L)
    top = scores.topk(min(k, x.shape[0]), dim=-1).indices.reshape(b, h, -1)  # (B, H, K)
    return top, torch.ones_like(top, dtype=torch.bool), x[top], scores


def pq_gsu(r: PQRetriever, user: int, x_t: torch.Tensor, k: int):
    """Our PQ GSU as served (`PQRetriever.retrieve`: codes -> scores -> top-K -> exact
    embeddings of the winners), plus the positions for recall."""
    item, query, codes = r.user_sequence(user)
    u = r.query_vectors(x_t)
    mask = torch.ones(item.shape, dtype=torch.bool)
    pos, valid = r.topk_positions(u, codes, mask, item, query, k)
    emb = r.gather_winners(item, query, pos, valid)
    return pos, valid, emb


def bench_synthetic(
    cfg: BenchConfig, spec: SyntheticSpec, log: Callable[[str], None]
) -> tuple[list[Row], dict]:
    world = make_world(spec, cfg)
    lengths = list(cfg.lengths)
    variants = {
        "pq 8-bit torch_lut (reference ADC)": PQConfig(nbits=8, backend=ScoringBackend.TORCH_LUT),
        "pq 8-bit torch_decode": PQConfig(nbits=8, backend=ScoringBackend.TORCH_DECODE),
        "pq 8-bit faiss IndexPQ": PQConfig(nbits=8, backend=ScoringBackend.FAISS),
        HIGH_RECALL: PQConfig(nbits=8, backend=ScoringBackend.TORCH_DECODE, rerank=2),
        FAST: PQConfig(nbits=4, backend=ScoringBackend.FAISS),
        "pq 4-bit fast-scan + rerank 4K": PQConfig(nbits=4, backend=ScoringBackend.FAISS, rerank=4),
    }
    retrievers = {name: retriever_for(world, spec, lengths, c) for name, c in variants.items()}
    anchor = retrievers["pq 8-bit torch_decode"]
    x_t = request_targets(world, spec, cfg.seed)
    n_mod = len(world.tables)
    rows: list[Row] = []
    for user, length in enumerate(lengths):
        runs = max(2, cfg.runs // 4) if length >= 100_000 else cfg.runs
        methods: dict[str, tuple[Callable[[], Any], int]] = {
            EXACT: (lambda u=user: exact_gsu(anchor, u, x_t, TOP_K), n_mod * spec.dim * 4)
        }
        for name, r in retrievers.items():
            if "torch_lut" in name and length > cfg.lut_max_length:
                continue
            methods[name] = (lambda u=user, r=r: pq_gsu(r, u, x_t, TOP_K), r.store.bytes_per_event)
        # raw faiss on the same codes: index prebuilt (not timed), search only, no gather
        for nbits, label in ((8, FAISS_PQ), (4, FAISS_FASTSCAN)):
            r = retrievers["pq 8-bit torch_decode" if nbits == 8 else FAST]
            _, _, codes = r.store.user(user)
            index = FaissScanner(r.codebooks).index_for(np.ascontiguousarray(codes))
            u = r.query_vectors(x_t).reshape(-1, spec.dim).numpy()
            uq = np.ascontiguousarray(np.tile(u, (1, n_mod)))
            methods[label] = (
                lambda index=index, uq=uq: index.search(uq, TOP_K),
                r.store.bytes_per_event,
            )
        log(
            f"L={length:,}: {len(methods)} methods x ({cfg.warmup} warm-up + {runs} runs), interleaved"
        )
        ms, last = timed_interleaved({n: f for n, (f, _) in methods.items()}, runs, cfg.warmup)
        exact_scores = last[EXACT][3]
        for name, (_, nbytes) in methods.items():
            if name == EXACT:
                rec = 1.0
            elif name in (FAISS_PQ, FAISS_FASTSCAN):
                found = torch.from_numpy(last[name][1])
                rec = threshold_recall(found.clamp(min=0), found >= 0, exact_scores, TOP_K)
            else:
                pos, valid, _ = last[name]
                rec = threshold_recall(
                    pos.reshape(-1, TOP_K), valid.reshape(-1, TOP_K), exact_scores, TOP_K
                )
            rows.append(Row(name, length, ms[name], rec, nbytes))
    return rows, {"fused_x_bytes_per_event": spec.dim * 4, "modalities": n_mod}


def recall_by_distribution(
    cfg: BenchConfig, log: Callable[[str], None]
) -> dict[str, dict[str, float]]:
    """recall@50 at L = 10k for three synthetic table distributions (PQ rows only)."""
    out = {}
    for label, kw in (
        ("isotropic", {"rank": None}),
        ("low-rank 8", {"rank": 8}),
        ("clustered 64", {"clusters": 64, "noise": 0.1}),
    ):
        spec = SyntheticSpec(n_items=cfg.n_items, seed=cfg.seed, **kw)
        log(f"recall by distribution: {label}")
        world = make_world(spec, cfg)
        x_t = request_targets(world, spec, cfg.seed)
        res = {}
        for name, c in (
            ("pq 8-bit", PQConfig(nbits=8, backend=ScoringBackend.TORCH_DECODE)),
            ("pq 4-bit fast-scan", PQConfig(nbits=4, backend=ScoringBackend.FAISS)),
            (
                "pq 4-bit fast-scan + rerank 4K",
                PQConfig(nbits=4, backend=ScoringBackend.FAISS, rerank=4),
            ),
        ):
            r = retriever_for(world, spec, [10_000], c)
            _, _, _, exact_scores = exact_gsu(r, 0, x_t, TOP_K)
            pos, valid, _ = pq_gsu(r, 0, x_t, TOP_K)
            res[name] = threshold_recall(
                pos.reshape(-1, TOP_K), valid.reshape(-1, TOP_K), exact_scores, TOP_K
            )
        out[label] = res
    return out


# -- MovieLens: a trained run --------------------------------------------------------------------


class RecallProbe:
    """A Retriever that returns the PQ choice and records its recall against the exact GSU."""

    def __init__(self, pq: PQRetriever) -> None:
        self.pq = pq
        self.recalls: list[float] = []

    def select(self, u, x_seq, seq_item, seq_query, seq_mask, k):  # type: ignore[no-untyped-def]
        pos, valid = self.pq.select(u, x_seq, seq_item, seq_query, seq_mask, k)
        exact = torch.einsum("bhd,bld->bhl", u, x_seq)  # (B, R, L)
        exact = exact.masked_fill(~seq_mask[:, None, :], float("-inf"))
        b = exact.shape[0]
        n_real = seq_mask.sum(-1)  # (B,)
        for i in range(b):
            kk = int(min(k, n_real[i]))
            if kk == 0:
                continue
            self.recalls.append(threshold_recall(pos[i, :, :kk], valid[i, :, :kk], exact[i], kk))
        return pos, valid


def bench_movielens(
    run: Path, data: Path | None, configs: dict[str, PQConfig], log
) -> dict[str, Any]:
    from seminar.data.dataset import PreparedDataset
    from seminar.pq.artifacts import build_pq_retriever
    from seminar.training.checkpoint import load_run
    from seminar.training.evaluate import evaluate_split

    loaded = load_run(run)
    data_path = Path(data) if data is not None else Path(loaded.data.get("path", ""))
    ds = PreparedDataset.load(data_path)
    log("movielens: exact GSU evaluation")
    exact = evaluate_split(loaded.model, ds, "test")
    out: dict[str, Any] = {"run": str(run), "data": str(data_path), "exact": exact, "pq": {}}
    trained: dict[tuple[int, int], PQRetriever] = {}  # codebooks per code shape, trained once
    for name, config in configs.items():
        shape = (config.n_subspaces, config.nbits)
        if shape not in trained:
            log(f"movielens: training {config.n_subspaces} x {config.nbits}-bit codebooks")
            trained[shape] = build_pq_retriever(loaded.model, ds, config)
        log(f"movielens: {name}")
        probe = RecallProbe(trained[shape].with_config(config))
        metrics = evaluate_split(loaded.model, ds, "test", retriever=probe)
        out["pq"][name] = {
            "recall_at_50": float(np.mean(probe.recalls)) if probe.recalls else None,
            "metrics": metrics,
            "ndcg10_relative_change": (metrics["ndcg@10"] - exact["ndcg@10"]) / exact["ndcg@10"],
        }
    return out


# -- report ----------------------------------------------------------------------------------------


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| L | method | ms / request (mean ± std) | median ms | ratio vs exact (mean) "
        "| ratio (median) | recall@50 | bytes / event |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    anchors = {r.length: r for r in rows if r.method.startswith("exact")}
    for r in rows:
        ratio = r.mean / anchors[r.length].mean
        ratio_med = r.median / anchors[r.length].median
        rec = "—" if r.recall is None else f"{r.recall:.3f}"
        lines.append(
            f"| {r.length:,} | {r.method} | {r.mean:.2f} ± {r.std:.2f} | {r.median:.2f} "
            f"| {ratio:.2f}× | {ratio_med:.2f}× | {rec} | {r.bytes_per_event} |"
        )
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({r.length for r in rows})
    methods = list(dict.fromkeys(r.method for r in rows))
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(lengths), figsize=(5 * len(lengths), 4.5), squeeze=False)
    for ax, length in zip(axes[0], lengths, strict=True):
        for r in (r for r in rows if r.length == length):
            ax.scatter(r.mean, r.recall, s=40, color=colors[r.method], label=r.method)
        ax.set_xscale("log")
        ax.set_xlabel("ms per request (1 user x 100 cand x 4 heads, top-50)")
        ax.set_ylabel("recall@50 vs exact GSU")
        ax.set_title(f"SYNTHETIC user, L = {length:,}")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_bench(
    cfg: BenchConfig, out_dir: Path, run: Path | None, data: Path | None, log: Callable[[str], None]
) -> dict:
    import faiss

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    faiss.omp_set_num_threads(cfg.threads)
    command = (
        " ".join(shlex.quote(a) for a in ["seminar", *sys.argv[1:]])
        if sys.argv
        else "seminar bench pq"
    )
    spec = SyntheticSpec(n_items=cfg.n_items, seed=cfg.seed)
    header = [
        f"machine: {machine()}; load average at start {os.getloadavg()[0]:.1f}",
        f"threads: {cfg.threads}; seed: {cfg.seed}; runs: {cfg.runs} (L=100k: {max(2, cfg.runs // 4)}) after {cfg.warmup} warm-up",
        f"command: {command}",
        f"data: SYNTHETIC users and tables (query + {', '.join(ITEM_MODALITIES)} modalities, "
        f"{spec.n_items:,} items, D={spec.dim}, low rank {spec.rank} + noise {spec.noise}); "
        f"request = 1 user × {CANDIDATES} candidates × {HEADS} heads, top-{TOP_K}",
    ]
    t0 = time.perf_counter()
    rows, extra = bench_synthetic(cfg, spec, log)
    by_dist = recall_by_distribution(cfg, log) if cfg.distributions else None
    movielens = None
    ml_configs = {
        "pq 8-bit torch_decode": PQConfig(nbits=8),
        HIGH_RECALL: PQConfig(nbits=8, rerank=2),
        FAST: PQConfig(nbits=4),
        "pq 4-bit fast-scan + rerank 4K": PQConfig(nbits=4, rerank=4),
    }
    if run is not None:
        movielens = bench_movielens(run, data, ml_configs, log)
    elapsed = time.perf_counter() - t0

    best = FAST
    latency = {}
    for length in cfg.lengths:
        at = {r.method: r for r in rows if r.length == length}
        exact_row = next(r for r in at.values() if r.method.startswith("exact"))
        latency[str(length)] = {
            "exact": exact_row.mean,
            "pq": at[best].mean,
            "faiss": at[FAISS_FASTSCAN].mean,
            "pq_over_exact": at[best].mean / exact_row.mean,
            "median": {
                "exact": exact_row.median,
                "pq": at[best].median,
                "faiss": at[FAISS_FASTSCAN].median,
                "pq_over_exact": at[best].median / exact_row.median,
            },
            "pq_high_recall": at[HIGH_RECALL].mean,
            "pq_high_recall_over_exact": at[HIGH_RECALL].mean / exact_row.mean,
            "gpu": None,
            "all": {
                m: {
                    "mean_ms": r.mean,
                    "std_ms": r.std,
                    "median_ms": r.median,
                    "recall_at_50": r.recall,
                }
                for m, r in at.items()
            },
        }
    syn10k = next((r.recall for r in rows if r.length == 10_000 and r.method == best), None)
    result = {
        "machine": machine(),
        "threads": cfg.threads,
        "seed": cfg.seed,
        "command": command,
        "quick": cfg.runs < BenchConfig().runs,
        "pq_method": best,
        "recall_at_50": {
            "movielens": None if movielens is None else movielens["pq"][best]["recall_at_50"],
            "synthetic_10k": syn10k,
        },
        "recall_at_50_high_recall": {
            "method": HIGH_RECALL,
            "movielens": None
            if movielens is None
            else movielens["pq"][HIGH_RECALL]["recall_at_50"],
            "synthetic_10k": next(
                (r.recall for r in rows if r.length == 10_000 and r.method == HIGH_RECALL), None
            ),
        },
        "ndcg10_relative_change": None
        if movielens is None
        else movielens["pq"][best]["ndcg10_relative_change"],
        "latency_ms": latency,
        "bytes_per_event": {
            "exact": extra["modalities"] * spec.dim * 4,
            "exact_fused_x": extra["fused_x_bytes_per_event"],
            "pq": next(r.bytes_per_event for r in rows if r.method == best),
            "pq_over_exact": next(r.bytes_per_event for r in rows if r.method == best)
            / (extra["modalities"] * spec.dim * 4),
        },
        "gpu": GPU_NOTE if not torch.cuda.is_available() else "see latency_ms[*].gpu",
        "recall_at_50_by_distribution_10k": by_dist,
        "movielens": movielens if movielens is not None else "not measured, pass --run",
        "seconds": elapsed,
    }
    md = ["# PQ GSU benchmark", "", *[f"- {h}" for h in header], "", markdown_table(rows), ""]
    md.append(f"GPU (Triton-lang kernel, torch on CUDA): {result['gpu']}.")
    md.append(
        f"bytes / event: exact = {extra['modalities']} modality components × {spec.dim} × float32; "
        f"a fused x_l would be {spec.dim * 4} B; PQ = one uint8 per (modality, sub-space) code."
    )
    if by_dist:
        md += [
            "",
            "recall@50 at L = 10k by SYNTHETIC table distribution:",
            "",
            "| distribution | " + " | ".join(next(iter(by_dist.values()))) + " |",
            "|---|" + "---:|" * len(next(iter(by_dist.values()))),
        ]
        for dist, res in by_dist.items():
            md.append(f"| {dist} | " + " | ".join(f"{v:.3f}" for v in res.values()) + " |")
    md.append("")
    if movielens is None:
        md.append("movielens: not measured, pass --run")
    else:
        md += [
            "MovieLens (trained run "
            + movielens["run"]
            + "), test split, exact NDCG@10 = "
            + f"{movielens['exact']['ndcg@10']:.4f}",
            "",
            "| PQ config | recall@50 | NDCG@10 | relative change |",
            "|---|---:|---:|---:|",
        ]
        for name, res in movielens["pq"].items():
            md.append(
                f"| {name} | {res['recall_at_50']:.3f} | {res['metrics']['ndcg@10']:.4f} | {res['ndcg10_relative_change']:+.4f} |"
            )
    md.append("")
    md.append(f"![recall vs latency](pq_recall_latency.png)  (took {elapsed:.0f} s)")
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(rows, out_dir / "pq_recall_latency.png")
    (out_dir / "pq.md").write_text("\n".join(md) + "\n")
    (out_dir / "pq.json").write_text(json.dumps(result, indent=2) + "\n")
    result["markdown"] = "\n".join(md)
    return result
