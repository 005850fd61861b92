"""Score the 1 + 99 candidate lists of a split and compute the ranking metrics."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from seminar.data.dataset import PreparedDataset
from seminar.model.retrieval import Retriever
from seminar.model.seminar import SeminarModel
from seminar.training.batches import eval_lists, histories
from seminar.training.metrics import ranking_metrics

# Rows x candidates x heads x history elements scored per chunk: bounds peak memory.
SCORE_BUDGET = 24_000_000


@torch.no_grad()
def score_split(
    model: SeminarModel,
    ds: PreparedDataset,
    split: str,
    *,
    retriever: Retriever | None = None,
    max_history: int = 0,
    max_users: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (U, 100) of every evaluated user's list (target first) and the user indices."""
    if split not in ("test", "valid"):
        raise ValueError(f"split must be 'test' or 'valid', got {split!r}")
    was_training = model.training
    model.eval()
    users, positions, candidates = eval_lists(ds, split, max_users)
    queries, items = model.query_table(), model.item_table()  # (Q, D), (I+2, D)
    starts = np.asarray(ds.seq_offsets)[users]
    lengths = positions - starts
    if max_history > 0:
        lengths = np.minimum(lengths, max_history)
    order = np.argsort(lengths, kind="stable")  # similar lengths share a chunk: less padding
    per_row = candidates.shape[1] * model.config.heads
    scores = np.zeros(candidates.shape, dtype=np.float32)
    bar = tqdm(total=len(users), desc=f"eval {split}", disable=not progress, leave=False)
    first = 0
    while first < len(order):
        # Grow the chunk while the longest history in it keeps the work under the budget.
        last = first + 1
        while (
            last < len(order)
            and (last + 1 - first) * per_row * max(int(lengths[order[last]]), 1) <= SCORE_BUDGET
        ):
            last += 1
        rows = order[first:last]
        seq_item, seq_query, mask = histories(ds, positions[rows], max_history)
        seq_item_t, seq_query_t = torch.from_numpy(seq_item), torch.from_numpy(seq_query)
        x_seq = model.pair(queries[seq_query_t], items[seq_item_t])  # (b, L, D)
        target_query = torch.from_numpy(np.asarray(ds.seq_query)[positions[rows]].astype(np.int64))
        cand = torch.from_numpy(candidates[rows])  # (b, 100)
        logits = model.score_candidates(
            queries[target_query],
            items[cand],
            x_seq,
            seq_item_t,
            seq_query_t,
            torch.from_numpy(mask),
            retriever,
        )
        scores[rows] = logits.numpy()
        bar.update(len(rows))
        first = last
    bar.close()
    model.train(was_training)
    return scores, users


def evaluate_split(
    model: SeminarModel,
    ds: PreparedDataset,
    split: str,
    *,
    retriever: Retriever | None = None,
    max_history: int = 0,
    max_users: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    scores, _ = score_split(
        model,
        ds,
        split,
        retriever=retriever,
        max_history=max_history,
        max_users=max_users,
        progress=progress,
    )
    return ranking_metrics(scores)
