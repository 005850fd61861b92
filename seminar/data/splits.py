"""Evaluation splits, as the SEMINAR reference does them, per user and time-ordered.

Test target = the user's last positive event, validation target = the positive before it; users
with fewer than `min_positives` positives (default 3: test, valid and at least one training
target) are not evaluated (-1). Each evaluated user gets `k` (99) negatives per split: distinct
item indices the user never interacted with (any event, any label, any time), drawn uniformly.

Negatives come from `np.random.default_rng((seed, user_index))`, so they do not depend on how the
users were chunked while writing, and the same seed always gives the same files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seminar.contract import FIRST_ITEM_INDEX


@dataclass(frozen=True)
class SplitConfig:
    seed: int = 0
    negatives: int = 99
    min_positives: int = 3

    def __post_init__(self) -> None:
        if self.negatives < 1:
            raise ValueError(f"negatives must be >= 1, got {self.negatives}")
        if self.min_positives < 2:
            raise ValueError(f"min_positives must be >= 2 (test + valid), got {self.min_positives}")


@dataclass(frozen=True)
class UserSplit:
    test_pos: int  # absolute event index, -1 = not evaluated
    valid_pos: int
    test_negatives: np.ndarray  # (k,) int32 item indices, zeros when not evaluated
    valid_negatives: np.ndarray


def split_user(
    user: int,
    start: int,
    labels: np.ndarray,
    items: np.ndarray,
    n_item_rows: int,
    config: SplitConfig,
) -> UserSplit:
    """Split one user whose events are `[start, start + len(labels))` in time order.

    labels: (L,) int8; items: (L,) int item indices; n_item_rows: I + 2.
    """
    k = config.negatives
    none = np.zeros(k, np.int32)
    positives = np.flatnonzero(labels == 1)
    interacted = np.unique(items)
    if len(positives) < config.min_positives:
        return UserSplit(-1, -1, none, none)
    rng = np.random.default_rng((config.seed, user))
    test_negatives = sample_negatives(rng, interacted, n_item_rows, k)
    valid_negatives = sample_negatives(rng, interacted, n_item_rows, k)
    if test_negatives is None or valid_negatives is None:
        return UserSplit(-1, -1, none, none)
    return UserSplit(
        start + int(positives[-1]), start + int(positives[-2]), test_negatives, valid_negatives
    )


def sample_negatives(
    rng: np.random.Generator, interacted: np.ndarray, n_item_rows: int, k: int
) -> np.ndarray | None:
    """`k` distinct item indices in [2, n_item_rows) not in `interacted` (sorted unique).

    None when fewer than `k` items are left to choose from.
    """
    free = n_item_rows - FIRST_ITEM_INDEX - int(np.count_nonzero(interacted >= FIRST_ITEM_INDEX))
    if free < k:
        return None
    if free < 4 * k:
        # Small catalog left: enumerate what is allowed instead of rejection sampling.
        allowed = np.setdiff1d(np.arange(FIRST_ITEM_INDEX, n_item_rows), interacted)
        return rng.choice(allowed, size=k, replace=False).astype(np.int32)
    # First k distinct allowed items in draw order; a set beats np.isin at this size (k ~ 100).
    blocked = set(interacted.tolist())
    chosen: list[int] = []
    while len(chosen) < k:
        for item in rng.integers(FIRST_ITEM_INDEX, n_item_rows, size=2 * k).tolist():
            if item not in blocked:
                blocked.add(item)
                chosen.append(item)
                if len(chosen) == k:
                    break
    return np.array(chosen, np.int32)
