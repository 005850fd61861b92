"""A trained run (--run): recall@50 of the PQ GSU inside the model's own evaluation, and the
change of test NDCG@10 when the PQ GSU replaces the exact one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seminar.bench.harness import markdown_table
from seminar.bench.pq.config import SERVED
from seminar.bench.pq.gsu import threshold_recall
from seminar.pq.config import PQConfig
from seminar.pq.retriever import PQRetriever


class RecallProbe:
    """A Retriever that returns the PQ choice and records its recall against the exact GSU."""

    def __init__(self, pq: PQRetriever) -> None:
        self.pq = pq
        self.recalls: list[float] = []

    def select(self, u, x_seq, seq_item, seq_query, seq_mask, k):  # type: ignore[no-untyped-def]
        pos, valid = self.pq.select(u, x_seq, seq_item, seq_query, seq_mask, k)
        exact = torch.einsum("bhd,bld->bhl", u, x_seq)  # (B, R, L)
        exact = exact.masked_fill(~seq_mask[:, None, :], float("-inf"))
        real_events = seq_mask.sum(-1)  # (B,)
        for row in range(exact.shape[0]):
            kk = int(min(k, real_events[row]))
            if kk == 0:
                continue
            self.recalls.append(
                threshold_recall(pos[row, :, :kk], valid[row, :, :kk], exact[row], kk)
            )
        return pos, valid


def measure(
    run: Path, data: Path | None, configs: dict[str, PQConfig], log: Callable[[str], None]
) -> dict[str, Any]:
    """Evaluate the run's test split with the exact GSU, then with each PQ configuration."""
    from seminar.data.dataset import PreparedDataset
    from seminar.pq.artifacts import build_pq_retriever
    from seminar.training.checkpoint import load_run
    from seminar.training.evaluate import evaluate_split

    loaded = load_run(run)
    data_path = Path(data) if data is not None else Path(loaded.data.get("path", ""))
    dataset = PreparedDataset.load(data_path)
    name = str(dataset.meta.get("name", data_path.name))
    log(f"{name}: exact GSU evaluation")
    exact = evaluate_split(loaded.model, dataset, "test")
    out: dict[str, Any] = {
        "run": str(run),
        "data": str(data_path),
        "dataset": name,
        "exact": exact,
        "pq": {},
    }
    # codebooks per code shape (and item modalities fused or not), trained once
    trained: dict[tuple[int, int, bool], PQRetriever] = {}
    for label, config in configs.items():
        shape = (config.n_subspaces, config.nbits, config.fused_items)
        if shape not in trained:
            log(f"{name}: training {config.n_subspaces} x {config.nbits}-bit codebooks")
            trained[shape] = build_pq_retriever(loaded.model, dataset, config)
        log(f"{name}: {label}")
        probe = RecallProbe(trained[shape].with_config(config))
        metrics = evaluate_split(loaded.model, dataset, "test", retriever=probe)
        out["pq"][label] = {
            "recall_at_50": float(np.mean(probe.recalls)) if probe.recalls else None,
            "metrics": metrics,
            "ndcg10_relative_change": (metrics["ndcg@10"] - exact["ndcg@10"]) / exact["ndcg@10"],
        }
    return out


def markdown(trained: dict[str, Any]) -> list[str]:
    """The table of PQ configurations on the run's test split, and what moved most."""
    cells = [
        (
            label,
            "—" if result["recall_at_50"] is None else f"{result['recall_at_50']:.3f}",
            f"{result['metrics']['ndcg@10']:.4f}",
            f"{result['ndcg10_relative_change']:+.4f}",
        )
        for label, result in trained["pq"].items()
    ]
    changes = {label: result["ndcg10_relative_change"] for label, result in trained["pq"].items()}
    largest = max(changes, key=lambda label: abs(changes[label]))
    lines = [
        f"{trained['dataset']} (trained run {trained['run']}), test split, exact NDCG@10 = "
        f"{trained['exact']['ndcg@10']:.4f}",
        "",
        markdown_table(("PQ config", "recall@50", "NDCG@10", "relative change"), cells),
        "",
    ]
    if SERVED in changes:
        lines.append(
            f"- The served configuration changes test NDCG@10 by {changes[SERVED]:+.2%} "
            f"({'lower' if changes[SERVED] < 0 else 'not lower'} than the exact GSU's)."
        )
    lines.append(f"- Largest change: {largest}, {changes[largest]:+.2%}.")
    return lines
