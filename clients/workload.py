"""Real Rank requests from a prepared dataset, for `seminar load` and `seminar perf`.

One request per evaluated user (docs/design.md section 1): the user's external id, the query
text of the user's test event ("" for a recommendation event), and the user's real test
candidate set: the held-out test item first, then its seeded negatives from
`arrays/test_negatives.npy`. Only the documented files are read (memory-mapped):
`user_ids.npy`, `item_ids.npy`, `test_pos.npy`, `test_negatives.npy`, `seq_item.npy`,
`seq_query.npy`, `queries.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seminar.contract import FIRST_ITEM_INDEX
from seminar.errors import DataError, UsageError


@dataclass(frozen=True)
class RankCall:
    """One request: what a client sends to the gateway (or, as rows, to Triton)."""

    user_id: str
    query: str
    candidate_ids: np.ndarray  # (C,) int64 external item ids, the positive first


def load_workload(
    data: str | Path, candidates: int = 100, limit: int | None = None
) -> list[RankCall]:
    """Requests of every evaluated user of a prepared dataset (at most `limit`), in user order."""
    if not 1 <= candidates <= 100:
        raise UsageError(
            f"candidates must be in 1..100 (1 positive + 99 negatives), got {candidates}"
        )
    arrays = Path(data) / "arrays"
    if not arrays.is_dir():
        raise DataError(f"{data}: not a prepared dataset (no arrays/ folder)")

    def npy(name: str) -> np.ndarray:
        path = arrays / name
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: cannot read: {err}") from err

    user_ids, item_ids = npy("user_ids.npy"), npy("item_ids.npy")
    test_pos, negatives = npy("test_pos.npy"), npy("test_negatives.npy")
    seq_item, seq_query = npy("seq_item.npy"), npy("seq_query.npy")
    try:
        queries = json.loads((arrays / "queries.json").read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{arrays / 'queries.json'}: cannot read: {err}") from err

    calls = []
    for u in np.flatnonzero(np.asarray(test_pos) >= 0):
        pos = int(test_pos[u])
        index = np.concatenate([[seq_item[pos]], negatives[u, : candidates - 1]]).astype(np.int64)
        calls.append(
            RankCall(
                user_id=str(int(user_ids[u])),
                query=queries[int(seq_query[pos])],
                candidate_ids=np.asarray(item_ids)[index - FIRST_ITEM_INDEX],  # (C,)
            )
        )
        if limit is not None and len(calls) >= limit:
            break
    if not calls:
        raise DataError(f"{arrays / 'test_pos.npy'}: no evaluated user (every entry is -1)")
    return calls
