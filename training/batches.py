"""Turn a PreparedDataset into model inputs: training batches and 1 + 99 evaluation lists.

Histories are right-aligned (most recent event last, padding on the left) so that position
order is time order for every retriever.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from seminar.contract import FIRST_ITEM_INDEX
from seminar.data.dataset import PreparedDataset


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


def eval_lists(
    ds: PreparedDataset, split: str, max_users: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluated users, their target positions and 1 + 99 candidate lists (target first)."""
    pos_all = np.asarray(ds.test_pos if split == "test" else ds.valid_pos)
    neg_all = np.asarray(ds.test_negatives if split == "test" else ds.valid_negatives)
    users = np.flatnonzero(pos_all >= 0)
    if max_users > 0:
        users = users[:max_users]
    positions = pos_all[users]
    targets = np.asarray(ds.seq_item)[positions].astype(np.int64)
    candidates = np.concatenate([targets[:, None], neg_all[users].astype(np.int64)], axis=1)
    return users, positions, candidates
