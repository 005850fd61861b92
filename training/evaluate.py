"""Score the 1 + 99 candidate lists of a split and compute the ranking metrics.

Users are scored in chunks whose size is bounded by what scoring them really allocates
(`ScoreShape.bytes_per_row`), so evaluation memory does not grow with the number of users, and
short histories do not let a chunk grow past it: the top-K gather holds K slots per head
whatever the history length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypedDict, Unpack

import numpy as np
import torch
from tqdm import tqdm

from seminar.data.dataset import PreparedDataset
from seminar.model.retrieval import Retriever
from seminar.model.seminar import SeminarModel
from seminar.training.batches import eval_lists, histories, target_is_search
from seminar.training.metrics import ranking_metrics

# What one scoring chunk may allocate at its peak, in bytes (the estimate of
# ScoreShape.bytes_per_row times the rows of the chunk).
SCORE_MEMORY_BYTES: Final = 1 << 30
FLOAT_BYTES: Final = 4
INDEX_BYTES: Final = 8


@dataclass(frozen=True)
class ScoreShape:
    """The sizes that decide what scoring one user's candidate list allocates."""

    candidates: int  # C
    heads: int  # H
    top_k: int  # K
    dim: int  # D

    def bytes_per_row(self, length: int) -> int:
        """Upper estimate of the bytes scoring one user with `length` history events holds at
        once (the largest intermediates of SeminarModel.score_candidates, summed)."""
        c, d, k, length = self.candidates, self.dim, self.top_k, max(length, 1)
        retrieval_rows = c * self.heads  # every candidate's heads share the user's history
        gathered = retrieval_rows * k * d * FLOAT_BYTES  # top-K pair embeddings (C*H, K, D)
        # topk values and indices, the valid mask, their padded copies when L < K, and the
        # ESU's attention scores, masked scores and weights.
        selected = retrieval_rows * k * (2 * INDEX_BYTES + 5 * FLOAT_BYTES + 2)
        # GSU scores over the history and their masked copy (C*H, L).
        gsu_scores = 2 * retrieval_rows * length * FLOAT_BYTES
        # Query vectors u (twice: GSU and ESU), their projections, pooled heads.
        per_head = 4 * retrieval_rows * d * FLOAT_BYTES
        # x_seq (L, D), the int64 item / query / index arrays of `histories` and the mask.
        history = length * (d * FLOAT_BYTES + 5 * INDEX_BYTES + 2)
        # Candidate and target pair embeddings, the head's features and MLP activations.
        per_candidate = c * 8 * d * FLOAT_BYTES
        return gathered + selected + gsu_scores + per_head + history + per_candidate


def score_chunks(
    lengths: np.ndarray, shape: ScoreShape, budget: int = SCORE_MEMORY_BYTES
) -> list[slice]:
    """Consecutive chunks of rows (lengths sorted ascending) each within `budget` bytes; a
    single row is a chunk of its own whatever it costs."""
    chunks, first = [], 0
    while first < len(lengths):
        last = first + 1
        # A chunk's histories are padded to its longest, the last one (lengths ascend).
        while (
            last < len(lengths)
            and (last + 1 - first) * shape.bytes_per_row(int(lengths[last])) <= budget
        ):
            last += 1
        chunks.append(slice(first, last))
        first = last
    return chunks


class ScoreOptions(TypedDict, total=False):
    """How a split is scored; the defaults are `_score_lists`'s."""

    retriever: Retriever | None  # None = the model's own GSU
    max_history: int  # most recent events per target, 0 = the full history
    max_users: int  # the first N evaluated users, 0 = all
    without_query: bool  # score every target as a recommendation (query index 0): the ablation
    progress: bool


def score_split(
    model: SeminarModel, ds: PreparedDataset, split: str, **options: Unpack[ScoreOptions]
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (U, 100) of every evaluated user's list (target first) and the user indices.

    split: "test", "valid" or "search" (seminar.training.batches.EVAL_SPLITS).
    """
    scores, users, _ = _score_lists(model, ds, split, **options)
    return scores, users


@torch.no_grad()
def _score_lists(
    model: SeminarModel,
    ds: PreparedDataset,
    split: str,
    *,
    retriever: Retriever | None = None,
    max_history: int = 0,
    max_users: int = 0,
    without_query: bool = False,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """score_split plus the target positions (which say whether each target was a search)."""
    users, positions, candidates = eval_lists(ds, split, max_users)
    was_training = model.training
    model.eval()
    queries, items = model.query_table(), model.item_table()  # (Q, D), (I+2, D)
    starts = np.asarray(ds.seq_offsets)[users]
    lengths = positions - starts
    if max_history > 0:
        lengths = np.minimum(lengths, max_history)
    order = np.argsort(lengths, kind="stable")  # similar lengths share a chunk: less padding
    config = model.config
    shape = ScoreShape(candidates.shape[1], config.heads, config.top_k, config.dim)
    target_queries = np.asarray(ds.seq_query)[positions].astype(np.int64)
    if without_query:
        target_queries = np.zeros_like(target_queries)
    scores = np.zeros(candidates.shape, dtype=np.float32)
    bar = tqdm(total=len(users), desc=f"eval {split}", disable=not progress, leave=False)
    for chunk in score_chunks(lengths[order], shape):
        rows = order[chunk]
        seq_item, seq_query, mask = histories(ds, positions[rows], max_history)
        seq_item_t, seq_query_t = torch.from_numpy(seq_item), torch.from_numpy(seq_query)
        x_seq = model.pair(queries[seq_query_t], items[seq_item_t])  # (b, L, D)
        cand = torch.from_numpy(candidates[rows])  # (b, 100)
        logits = model.score_candidates(
            queries[torch.from_numpy(target_queries[rows])],
            items[cand],
            x_seq,
            seq_item_t,
            seq_query_t,
            torch.from_numpy(mask),
            retriever,
        )
        scores[rows] = logits.numpy()
        bar.update(len(rows))
    bar.close()
    model.train(was_training)
    return scores, users, positions


def evaluate_split(
    model: SeminarModel, ds: PreparedDataset, split: str, **options: Unpack[ScoreOptions]
) -> dict[str, float]:
    scores, _ = score_split(model, ds, split, **options)
    return ranking_metrics(scores)


@dataclass(frozen=True)
class TargetGroups:
    """Metrics of one split for all its users and for its search and recommendation targets
    apart (a group with no user has no metrics); `users` counts each group."""

    metrics: dict[str, dict[str, float]]
    users: dict[str, int]


def evaluate_by_target(
    model: SeminarModel, ds: PreparedDataset, split: str, **options: Unpack[ScoreOptions]
) -> TargetGroups:
    """The split's metrics over all users, over search targets and over rec targets (a target
    is a search when its event has a query), from one scoring pass."""
    scores, _, positions = _score_lists(model, ds, split, **options)
    search = target_is_search(ds, positions)
    members = {"all": np.ones_like(search), "search": search, "rec": ~search}
    return TargetGroups(
        metrics={
            group: ranking_metrics(scores[rows]) for group, rows in members.items() if rows.any()
        },
        users={group: int(rows.sum()) for group, rows in members.items()},
    )
