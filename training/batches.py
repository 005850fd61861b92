"""Turn a PreparedDataset into model inputs: training batches and 1 + 99 evaluation lists.

Histories are right-aligned (most recent event last, padding on the left) so that position
order is time order for every retriever.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np
import torch
from torch import Tensor

from seminar.contract import FIRST_ITEM_INDEX
from seminar.data.dataset import PreparedDataset
from seminar.data.splits import sample_negatives
from seminar.errors import UsageError


@dataclass(frozen=True)
class Batch:
    target_query: Tensor  # (B,) int64
    candidates: Tensor  # (B, C) int64, the positive (or the evaluated target) first
    seq_item: Tensor  # (B, L) int64
    seq_query: Tensor  # (B, L) int64
    seq_mask: Tensor  # (B, L) bool

    def inputs(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return self.target_query, self.candidates, self.seq_item, self.seq_query, self.seq_mask

    def __len__(self) -> int:
        return len(self.target_query)


def histories(
    ds: PreparedDataset, positions: np.ndarray, max_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Events strictly before each absolute position (same user), the last max_len of them.

    max_len = 0 means unbounded. Returns seq_item, seq_query (B, L) int64 and mask (B, L) bool,
    L >= 1 (a cold-start row is all padding).
    """
    users = ds.event_user[positions]
    start = np.asarray(ds.seq_offsets)[users]  # (B,)
    lengths = positions - start
    if max_len > 0:
        lengths = np.minimum(lengths, max_len)
    width = max(int(lengths.max(initial=0)), 1)
    index = positions[:, None] - width + np.arange(width)[None, :]  # (B, L) right-aligned
    mask = np.arange(width)[None, :] >= (width - lengths)[:, None]  # (B, L)
    index = np.where(mask, index, 0)
    seq_item = np.where(mask, np.asarray(ds.seq_item)[index], 0).astype(np.int64)
    seq_query = np.where(mask, np.asarray(ds.seq_query)[index], 0).astype(np.int64)
    return seq_item, seq_query, mask


def make_batch(
    ds: PreparedDataset, positions: np.ndarray, candidates: np.ndarray, max_len: int
) -> Batch:
    seq_item, seq_query, mask = histories(ds, positions, max_len)
    return Batch(
        target_query=torch.from_numpy(np.asarray(ds.seq_query)[positions].astype(np.int64)),
        candidates=torch.from_numpy(candidates.astype(np.int64)),
        seq_item=torch.from_numpy(seq_item),
        seq_query=torch.from_numpy(seq_query),
        seq_mask=torch.from_numpy(mask),
    )


def epoch_batches(
    ds: PreparedDataset,
    targets: np.ndarray,
    *,
    batch_size: int,
    negatives: int,
    max_len: int,
    seed: int,
    rank: int = 0,
    world: int = 1,
) -> Iterator[Batch]:
    """Shuffled training batches for one epoch; this rank's share of every global batch.

    The permutation and the negatives are drawn for the global batch from one seeded generator
    that every rank replays, then each rank takes a contiguous slice: the mean of the ranks'
    losses (what DDP's gradient average optimises) equals the single-process loss. The last
    partial batch is dropped so every step splits evenly.
    """
    rng = np.random.default_rng(seed)
    order = targets[rng.permutation(len(targets))]
    share = batch_size // world
    for first in range(0, len(order) - batch_size + 1, batch_size):
        positions = order[first : first + batch_size]
        positives = np.asarray(ds.seq_item)[positions].astype(np.int64)
        # Uniform negatives over the catalog; a rare collision with the positive is kept as noise.
        sampled = rng.integers(FIRST_ITEM_INDEX, ds.n_item_rows, size=(batch_size, negatives))
        candidates = np.concatenate([positives[:, None], sampled], axis=1)  # (B, 1+N)
        mine = slice(rank * share, (rank + 1) * share)
        yield make_batch(ds, positions[mine], candidates[mine], max_len)


def training_targets(ds: PreparedDataset, limit: int, seed: int) -> np.ndarray:
    """Absolute event indices of the training targets (a seeded subsample when limit > 0)."""
    targets = ds.train_positions()
    if 0 < limit < len(targets):
        rng = np.random.default_rng(seed + 10_007)
        targets = np.sort(rng.choice(targets, size=limit, replace=False))
    return targets


# Which 1 + N candidate lists an evaluation scores: the dataset's test and validation targets,
# or every searching user's last positive search event (search_lists).
EVAL_SPLITS: Final = ("test", "valid", "search")
# The search split's negatives come from their own seeded streams, never the test split's.
SEARCH_NEGATIVES_STREAM: Final = 1


def eval_lists(
    ds: PreparedDataset, split: str, max_users: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluated users, their target positions and 1 + 99 candidate lists (target first)."""
    if split not in EVAL_SPLITS:
        raise UsageError(f"split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    if split == "search":
        return search_lists(ds, max_users)
    pos_all = np.asarray(ds.test_pos if split == "test" else ds.valid_pos)
    neg_all = np.asarray(ds.test_negatives if split == "test" else ds.valid_negatives)
    users = np.flatnonzero(pos_all >= 0)
    if max_users > 0:
        users = users[:max_users]
    positions = pos_all[users]
    targets = np.asarray(ds.seq_item)[positions].astype(np.int64)
    candidates = np.concatenate([targets[:, None], neg_all[users].astype(np.int64)], axis=1)
    return users, positions, candidates


def search_lists(
    ds: PreparedDataset, max_users: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The search split: every user's last positive search event as the target.

    Its history is everything before it; its negatives are as many as the dataset's own
    (meta.json "negatives"), distinct items the user never interacted with, drawn from
    `default_rng((seed, SEARCH_NEGATIVES_STREAM, user index))`. The test split holds few search
    targets (12 of 608 MovieLens users), so this split is what search figures rest on. Users
    with too few untouched items to sample from are left out, as in the test split.
    """
    query, label = np.asarray(ds.seq_query), np.asarray(ds.seq_label)
    events = np.flatnonzero((query > 0) & (label == 1))
    owners = ds.event_user[events]
    # Events are grouped by user in time order: a user's last search is where the owner changes.
    last = np.append(owners[1:] != owners[:-1], True) if len(events) else np.zeros(0, bool)
    users, positions = owners[last], events[last]
    if max_users > 0:
        users, positions = users[:max_users], positions[:max_users]
    seed, negatives = int(ds.meta.get("seed", 0)), ds.test_negatives.shape[1]
    offsets, items = np.asarray(ds.seq_offsets), np.asarray(ds.seq_item)
    keep, rows = [], []
    for row, user in enumerate(users.tolist()):
        interacted = np.unique(items[offsets[user] : offsets[user + 1]])
        rng = np.random.default_rng((seed, SEARCH_NEGATIVES_STREAM, user))
        sampled = sample_negatives(rng, interacted, ds.n_item_rows, negatives)
        if sampled is not None:
            keep.append(row)
            rows.append(sampled)
    users, positions = users[keep], positions[keep]
    targets = items[positions].astype(np.int64)
    sampled_all = np.array(rows, np.int64).reshape(len(keep), negatives)
    return users, positions, np.concatenate([targets[:, None], sampled_all], axis=1)


def target_is_search(ds: PreparedDataset, positions: np.ndarray) -> np.ndarray:
    """(U,) bool: whether each target event is a search event (its query index is not 0)."""
    return np.asarray(ds.seq_query)[positions] > 0


def is_training_target(ds: PreparedDataset, positions: np.ndarray) -> np.ndarray:
    """(U,) bool: whether each event is a positive the trainer may learn from (one before its
    user's validation target, or any positive of a user who is not evaluated)."""
    users = ds.event_user[positions]
    valid = np.asarray(ds.valid_pos)[users]
    return (np.asarray(ds.seq_label)[positions] == 1) & ((valid < 0) | (positions < valid))
